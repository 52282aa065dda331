package io.pushgate;

import java.io.IOException;

/** The gateway sent ERROR (it considers that this client broke the protocol) and closed the connection. */
public class ServerErrorException extends IOException {
    private static final long serialVersionUID = 1L;
    private final int code;
    private final String text;

    /** An ERROR frame with {@code code} (section 6.2) and its human-readable {@code text}. */
    public ServerErrorException(int code, String text) {
        super("gateway ERROR " + ErrorCode.name(code) + " (" + code + "): " + text);
        this.code = code;
        this.text = text;
    }

    /** The error code, see {@link ErrorCode}. */
    public int code() {
        return code;
    }

    /** The error text, for logs only (never parse it). */
    public String text() {
        return text;
    }
}
