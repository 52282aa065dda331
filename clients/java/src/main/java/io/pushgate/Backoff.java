package io.pushgate;

import java.util.Random;

/**
 * Reconnect delays of protocol.md section 11.4: "full jitter"
 * {@code random(0, min(cap, base * 2^attempt))}, and at least a GOAWAY's {@code reconnect_ms}.
 */
public final class Backoff {
    private final long baseMs;
    private final long capMs;
    private final Random random;

    /** Delays from {@code baseMs} doubling to {@code capMs} (the protocol's are 1 000 and 300 000). */
    public Backoff(long baseMs, long capMs, Random random) {
        this.baseMs = baseMs;
        this.capMs = capMs;
        this.random = random;
    }

    /** The upper bound of the jitter for {@code attempt} failed attempts in a row. */
    public long ceilingMs(int attempt) {
        long ceiling = baseMs;
        for (int i = 0; i < attempt && ceiling < capMs; i++) {
            ceiling *= 2;
        }
        return Math.min(capMs, ceiling);
    }

    /**
     * The delay before the next connection attempt: a uniform random value in
     * {@code [0, ceilingMs(attempt)]}, plus {@code hintMs} (a GOAWAY's reconnect_ms, 0 = none) so
     * that a hint is always honoured and reconnects after it are still spread out.
     */
    public long delayMs(int attempt, long hintMs) {
        long ceiling = ceilingMs(attempt);
        long jitter = (long) (random.nextDouble() * (ceiling + 1));
        return Math.max(0, hintMs) + Math.min(ceiling, jitter);
    }
}
