package io.pushgate;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import org.junit.jupiter.api.Test;

/** Recent msg_ids are remembered up to the window. */
class DuplicateFilterTest {
    @Test
    void remembersAckStateAndEvictsTheOldest() {
        DuplicateFilter f = new DuplicateFilter(3);
        f.record(1, false);
        f.record(2, true);
        assertEquals(Boolean.FALSE, f.lookup(1));
        f.record(1, true);
        f.record(1, false); // an ACK is never forgotten
        assertEquals(Boolean.TRUE, f.lookup(1));
        f.record(3, true);
        f.record(4, true);
        assertNull(f.lookup(1), "the oldest id is evicted");
        assertEquals(3, f.size());
        assertEquals(Boolean.TRUE, f.lookup(4));
        f.record(-1L, true); // msg_ids are unsigned: 2^64-1 is a valid id
        assertEquals(Boolean.TRUE, f.lookup(-1L));
    }
}
