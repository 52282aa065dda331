package io.pushgate;

import java.io.IOException;
import java.nio.charset.StandardCharsets;

/** A NOTIFY frame: one notification for this device (protocol.md section 4.1). */
public final class Notification {
    /** Kind 0: shown to the user. */
    public static final int KIND_ALERT = 0;
    /** Kind 1: updates a counter or tile. */
    public static final int KIND_BADGE = 1;
    /** Kind 2: wakes the app silently with data. */
    public static final int KIND_BACKGROUND = 2;
    /** Priority 10: delivered at once. */
    public static final int PRIORITY_HIGH = 10;
    /** Priority 5: may have been held briefly to coalesce writes. */
    public static final int PRIORITY_NORMAL = 5;

    /** Sends the ACK for one msg_id; supplied by whoever delivered the notification. */
    interface Acker {
        void ack(long msgId) throws IOException;
    }

    private final long msgId;
    private final int kind;
    private final int priority;
    private final byte[] payload;
    private final Acker acker;

    Notification(long msgId, int kind, int priority, byte[] payload, Acker acker) {
        this.msgId = msgId;
        this.kind = kind;
        this.priority = priority;
        this.payload = payload;
        this.acker = acker;
    }

    /** The same notification, ACKed through {@code other}. */
    Notification withAcker(Acker other) {
        return new Notification(msgId, kind, priority, payload, other);
    }

    /** The message id, an unsigned 64-bit value (see {@link #msgIdString()}). */
    public long msgId() {
        return msgId;
    }

    /** The msg_id printed as an unsigned decimal number. */
    public String msgIdString() {
        return Long.toUnsignedString(msgId);
    }

    /** The kind code (0 alert, 1 badge, 2 background; others are passed through). */
    public int kind() {
        return kind;
    }

    /** The priority (10 high, 5 normal), informational. */
    public int priority() {
        return priority;
    }

    /** The provider's payload, unchanged (a copy). */
    public byte[] payload() {
        return payload.clone();
    }

    /** The payload decoded as UTF-8 (malformed sequences replaced). */
    public String payloadText() {
        return new String(payload, StandardCharsets.UTF_8);
    }

    /**
     * Acknowledges this notification. Needed only with {@link AckMode#MANUAL} or on a bare
     * {@link DeviceSession}; ACKing twice is harmless.
     */
    public void ack() throws IOException {
        acker.ack(msgId);
    }

    @Override
    public String toString() {
        return "NOTIFY msg_id=" + msgIdString() + " kind=" + kind + " priority=" + priority + " payload="
                + payload.length + " bytes";
    }
}
