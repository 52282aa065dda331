package io.pushgate;

/** ERROR frame codes (protocol.md section 6.2); unknown values are kept as numbers. */
public final class ErrorCode {
    public static final int UNSUPPORTED_VERSION = 1;
    public static final int MALFORMED_FRAME = 2;
    public static final int FRAME_TOO_LARGE = 3;
    public static final int UNKNOWN_FRAME_TYPE = 4;
    public static final int UNEXPECTED_FRAME = 5;
    public static final int HANDSHAKE_TIMEOUT = 6;
    public static final int AUTH_FAILED = 7;
    public static final int UNKNOWN_APP = 8;
    public static final int BAD_CREDENTIAL = 9;
    public static final int INTERNAL = 10;

    private ErrorCode() {}

    /** The protocol name of {@code code}, or {@code "unknown(<n>)"}. */
    public static String name(int code) {
        switch (code) {
            case UNSUPPORTED_VERSION: return "unsupported_version";
            case MALFORMED_FRAME: return "malformed_frame";
            case FRAME_TOO_LARGE: return "frame_too_large";
            case UNKNOWN_FRAME_TYPE: return "unknown_frame_type";
            case UNEXPECTED_FRAME: return "unexpected_frame";
            case HANDSHAKE_TIMEOUT: return "handshake_timeout";
            case AUTH_FAILED: return "auth_failed";
            case UNKNOWN_APP: return "unknown_app";
            case BAD_CREDENTIAL: return "bad_credential";
            case INTERNAL: return "internal";
            default: return "unknown(" + code + ")";
        }
    }

    /**
     * Whether a client must not reconnect automatically after this code (section 11.4):
     * bad_credential, and the configuration errors unsupported_version, unknown_app, auth_failed.
     */
    public static boolean isFinal(int code) {
        return code == BAD_CREDENTIAL || code == UNSUPPORTED_VERSION || code == UNKNOWN_APP || code == AUTH_FAILED;
    }
}
