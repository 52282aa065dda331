package io.pushgate;

import java.io.IOException;

/** The gateway sent GOAWAY and closed the connection; {@link #goAway()} says whether to reconnect. */
public class GoAwayException extends IOException {
    private static final long serialVersionUID = 1L;
    private final transient GoAway goAway;

    /** Wraps the GOAWAY frame received. */
    public GoAwayException(GoAway goAway) {
        super("gateway " + goAway);
        this.goAway = goAway;
    }

    /** The GOAWAY frame received. */
    public GoAway goAway() {
        return goAway;
    }
}
