package io.pushgate;

/** A WELCOME frame: the device's token, the heartbeat interval in force and the missed count. */
public final class Welcome {
    private final byte[] token;
    private final int heartbeatS;
    private final long missed;

    Welcome(byte[] token, int heartbeatS, long missed) {
        this.token = token.clone();
        this.heartbeatS = heartbeatS;
        this.missed = missed;
    }

    /** The 24-byte device token (a copy). */
    public byte[] token() {
        return token.clone();
    }

    /** The token as 48 lowercase hex digits, the form to send to the app's backend. */
    public String tokenHex() {
        return Hex.encode(token);
    }

    /** The heartbeat interval in force, seconds: PING whenever nothing was sent for this long. */
    public int heartbeatS() {
        return heartbeatS;
    }

    /** Notifications dropped by the per-device cap since the last connection (u32); &gt; 0 means resync. */
    public long missed() {
        return missed;
    }

    @Override
    public String toString() {
        return "WELCOME token=" + tokenHex() + " heartbeat_s=" + heartbeatS + " missed=" + missed;
    }
}
