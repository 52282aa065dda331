package io.pushgate;

import java.io.IOException;

/** The gateway sent bytes this client cannot decode (protocol.md section 3): the connection is closed. */
public class ProtocolException extends IOException {
    private static final long serialVersionUID = 1L;

    /** A decoding failure described by {@code message}. */
    public ProtocolException(String message) {
        super(message);
    }
}
