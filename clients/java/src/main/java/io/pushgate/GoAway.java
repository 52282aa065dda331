package io.pushgate;

/** A GOAWAY frame: the gateway is closing a healthy connection (protocol.md sections 4.1, 6.3). */
public final class GoAway {
    public static final int SHUTDOWN = 1;
    public static final int REPLACED = 2;
    public static final int IDLE_TIMEOUT = 3;
    public static final int SERVER_FULL = 4;
    public static final int SLOW_CONSUMER = 5;
    public static final int UNREGISTERED = 6;
    public static final int RATE_LIMITED = 7;

    private final int reason;
    private final long reconnectMs;

    /** A GOAWAY with {@code reason} and a reconnect hint in milliseconds (u32; 0 = no hint). */
    public GoAway(int reason, long reconnectMs) {
        this.reason = reason;
        this.reconnectMs = reconnectMs;
    }

    /** The reason code; unknown codes are kept and treated as shutdown. */
    public int reason() {
        return reason;
    }

    /** The reconnect hint in milliseconds, 0 = none. */
    public long reconnectMs() {
        return reconnectMs;
    }

    /** Whether the client must not reconnect automatically: {@code replaced} and {@code unregistered}. */
    public boolean isFinal() {
        return reason == REPLACED || reason == UNREGISTERED;
    }

    /** The protocol name of the reason, or {@code "unknown(<n>)"}. */
    public String reasonName() {
        return reasonName(reason);
    }

    /** The protocol name of a reason code. */
    public static String reasonName(int reason) {
        switch (reason) {
            case SHUTDOWN: return "shutdown";
            case REPLACED: return "replaced";
            case IDLE_TIMEOUT: return "idle_timeout";
            case SERVER_FULL: return "server_full";
            case SLOW_CONSUMER: return "slow_consumer";
            case UNREGISTERED: return "unregistered";
            case RATE_LIMITED: return "rate_limited";
            default: return "unknown(" + reason + ")";
        }
    }

    @Override
    public String toString() {
        return "GOAWAY " + reasonName() + " reconnect_ms=" + reconnectMs;
    }
}
