package io.pushgate;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The most recent msg_ids seen, with whether each was ACKed, so that notifications repeated
 * after a reconnect (at-least-once delivery, protocol.md section 10) reach the listener once.
 * Thread-safe; evicts the oldest id beyond its capacity.
 */
final class DuplicateFilter {
    private final Map<Long, Boolean> seen;

    DuplicateFilter(final int capacity) {
        this.seen = new LinkedHashMap<Long, Boolean>(16, 0.75f, false) {
            private static final long serialVersionUID = 1L;

            @Override
            protected boolean removeEldestEntry(Map.Entry<Long, Boolean> eldest) {
                return size() > capacity;
            }
        };
    }

    /** Null if {@code msgId} is new, else whether it was ACKed. */
    synchronized Boolean lookup(long msgId) {
        return seen.get(msgId);
    }

    /** Records {@code msgId} as handed to the app, ACKed or not yet. */
    synchronized void record(long msgId, boolean acked) {
        Boolean was = seen.get(msgId);
        seen.put(msgId, acked || (was != null && was));
    }

    /** How many ids are remembered. */
    synchronized int size() {
        return seen.size();
    }
}
