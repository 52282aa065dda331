package io.pushgate;

/**
 * SUBSCRIBE_RESULT statuses (protocol.md section 6.5), answered to {@link DeviceClient#subscribe}
 * and {@link DeviceClient#unsubscribe}. A code space of its own: not the push statuses.
 * Unknown values are kept as numbers; treat them as a temporary failure.
 */
public final class SubscriptionStatus {
    /** Done, durably: the device is (SUBSCRIBE) or is not (UNSUBSCRIBE) in the topic; also when nothing changed. */
    public static final int OK = 0;
    /** The name breaks the rule of section 10.4, or is reserved ({@code ~all}, any {@code ~} name); do not retry it. */
    public static final int BAD_TOPIC = 1;
    /** The device is in {@code limits.topics_per_device} topics already; unsubscribe from one first. */
    public static final int TOPIC_LIMIT = 2;
    /** Only in a provider's TOPIC_MANAGE; listed for completeness. */
    public static final int BAD_TOKEN = 3;
    /** Only in a provider's TOPIC_MANAGE; listed for completeness. */
    public static final int UNREGISTERED = 4;
    /** The gateway could not record the change (disk full, I/O error); retry later. */
    public static final int STORE_FAILED = 5;
    /** The gateway is draining or cannot reach its cluster engine; retry later. */
    public static final int UNAVAILABLE = 6;

    private SubscriptionStatus() {}

    /** The protocol name of {@code code}, or {@code "unknown(<n>)"}. */
    public static String name(int code) {
        switch (code) {
            case OK: return "ok";
            case BAD_TOPIC: return "bad_topic";
            case TOPIC_LIMIT: return "topic_limit";
            case BAD_TOKEN: return "bad_token";
            case UNREGISTERED: return "unregistered";
            case STORE_FAILED: return "store_failed";
            case UNAVAILABLE: return "unavailable";
            default: return "unknown(" + code + ")";
        }
    }
}
