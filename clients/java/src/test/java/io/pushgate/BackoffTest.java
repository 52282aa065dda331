package io.pushgate;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.junit.jupiter.api.Test;

/** Reconnect delays follow protocol.md section 11.4. */
class BackoffTest {
    @Test
    void ceilingDoublesFromOneSecondToFiveMinutes() {
        Backoff b = new Backoff(1_000, 300_000, new Random(1));
        assertEquals(1_000, b.ceilingMs(0));
        assertEquals(2_000, b.ceilingMs(1));
        assertEquals(256_000, b.ceilingMs(8));
        assertEquals(300_000, b.ceilingMs(9));
        assertEquals(300_000, b.ceilingMs(30));
    }

    @Test
    void fullJitterSpreadsOverTheWholeRange() {
        Backoff b = new Backoff(1_000, 300_000, new Random(42));
        long min = Long.MAX_VALUE;
        long max = 0;
        for (int i = 0; i < 2_000; i++) {
            long d = b.delayMs(3, 0);
            assertTrue(d >= 0 && d <= 8_000, "delay " + d);
            min = Math.min(min, d);
            max = Math.max(max, d);
        }
        assertTrue(min < 400 && max > 7_600, "not full jitter: " + min + ".." + max);
    }

    @Test
    void aHintIsAlwaysWaitedForWithJitterOnTop() {
        Backoff b = new Backoff(1_000, 300_000, new Random(7));
        for (int i = 0; i < 1_000; i++) {
            long d = b.delayMs(0, 2_000);
            assertTrue(d >= 2_000 && d <= 3_000, "delay " + d);
        }
    }
}
