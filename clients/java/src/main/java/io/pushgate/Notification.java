package io.pushgate;

import java.io.IOException;
import java.nio.charset.StandardCharsets;

/**
 * A NOTIFY frame, one notification for this device, or a TOPIC_NOTIFY, a message pushed to a topic
 * the device is in ({@link #topic()} names it; protocol.md sections 4.1 and 10.4). Both are ACKed
 * the same way and share one msg_id space (topic ids have bit 62 set).
 */
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
    /** The topic of a broadcast: every device of the app is in it without subscribing. */
    public static final String BROADCAST = "~all";

    /** Sends the ACK for one msg_id; supplied by whoever delivered the notification. */
    interface Acker {
        void ack(long msgId) throws IOException;
    }

    private final long msgId;
    private final int kind;
    private final int priority;
    private final String topic;
    private final byte[] payload;
    private final Acker acker;

    Notification(long msgId, int kind, int priority, byte[] payload, Acker acker) {
        this(msgId, kind, priority, null, payload, acker);
    }

    Notification(long msgId, int kind, int priority, String topic, byte[] payload, Acker acker) {
        this.msgId = msgId;
        this.kind = kind;
        this.priority = priority;
        this.topic = topic;
        this.payload = payload;
        this.acker = acker;
    }

    /** The same notification, ACKed through {@code other}. */
    Notification withAcker(Acker other) {
        return new Notification(msgId, kind, priority, topic, payload, other);
    }

    /**
     * The topic of a TOPIC_NOTIFY: a name this device is subscribed to, or {@code "~all"} for a
     * broadcast to every device of the app. Null for a notification pushed to this device's token.
     */
    public String topic() {
        return topic;
    }

    /** Whether this came as a TOPIC_NOTIFY (see {@link #topic()}). */
    public boolean isTopic() {
        return topic != null;
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
        return (topic != null ? "TOPIC_NOTIFY topic=" + topic + " msg_id=" : "NOTIFY msg_id=") + msgIdString() + " kind=" + kind + " priority=" + priority + " payload="
                + payload.length + " bytes";
    }
}
