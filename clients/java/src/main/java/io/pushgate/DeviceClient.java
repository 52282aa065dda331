package io.pushgate;

import java.io.Closeable;
import java.io.IOException;
import java.net.SocketTimeoutException;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * A device's long-lived gateway connection: connects, says HELLO, keeps the heartbeat, hands each
 * new notification to a {@link DeviceListener}, ACKs it (see {@link AckMode}), drops duplicates,
 * and reconnects with backoff (protocol.md section 11.4) until it is closed or the gateway says
 * not to come back (GOAWAY replaced or unregistered, ERROR bad_credential and configuration errors).
 * Topic messages (TOPIC_NOTIFY) reach the same listener, with {@link Notification#topic()} set;
 * {@link #subscribe} and {@link #unsubscribe} change the device's topics.
 * One connection thread reads and runs the callbacks; a timer thread sends PINGs.
 */
public final class DeviceClient implements Closeable {
    /** How long {@link #subscribe(String)} and {@link #unsubscribe(String)} wait for the answer. */
    public static final long DEFAULT_SUBSCRIBE_TIMEOUT_MS = 30_000;

    private final DeviceConfig cfg;
    private final byte[] secret;
    private final DeviceListener listener;
    private final DuplicateFilter duplicates;
    private final Backoff backoff;
    private final Thread worker;
    private final ScheduledThreadPoolExecutor timer;
    private final Object lock = new Object();
    private final Object waitLock = new Object();
    private boolean wakeRequested; // guarded by waitLock
    private final CountDownLatch stopped = new CountDownLatch(1);
    private final AtomicInteger sessions = new AtomicInteger();
    private DeviceSession session; // guarded by lock
    private volatile Welcome welcome;
    private volatile StopReason stopReason;
    private volatile boolean closing;
    private volatile boolean unregistering;
    /** SUBSCRIBE / UNSUBSCRIBE requests waiting for their answer, by req_id, in request order. */
    private final Map<Integer, PendingSub> pendingSubs = new LinkedHashMap<>(); // guarded by subLock
    private final Object subLock = new Object();
    private int nextSubId; // guarded by subLock
    private IOException subsClosed; // guarded by subLock; set once the client stopped

    /** One SUBSCRIBE or UNSUBSCRIBE until its SUBSCRIBE_RESULT. */
    private static final class PendingSub {
        final boolean subscribe;
        final String topic;
        final CompletableFuture<Integer> result = new CompletableFuture<>();
        DeviceSession sentOn; // the session it was last written to

        PendingSub(boolean subscribe, String topic) {
            this.subscribe = subscribe;
            this.topic = topic;
        }
    }

    private DeviceClient(DeviceConfig cfg, byte[] secret, DeviceListener listener) {
        if (!DeviceSecret.validLength(secret.length)) {
            throw new IllegalArgumentException("device secret must be 16..64 bytes, not " + secret.length);
        }
        this.cfg = cfg;
        this.secret = secret.clone();
        this.listener = listener;
        this.duplicates = new DuplicateFilter(cfg.duplicateWindow);
        this.backoff = new Backoff(cfg.backoffBaseMs, cfg.backoffCapMs, cfg.random != null ? cfg.random : new Random());
        this.timer = new ScheduledThreadPoolExecutor(1, r -> {
            Thread t = new Thread(r, "pushgate-heartbeat");
            t.setDaemon(true);
            return t;
        });
        this.timer.setRemoveOnCancelPolicy(true);
        this.worker = new Thread(this::run, "pushgate-device");
        this.worker.setDaemon(true);
    }

    /** Starts a client whose secret lives in {@code store} (created there on first use). */
    public static DeviceClient start(DeviceConfig cfg, SecretStore store, DeviceListener listener) throws IOException {
        return start(cfg, DeviceSecret.loadOrCreate(store), listener);
    }

    /** Starts a client with the given 16..64-byte secret. Connecting happens on the client's thread. */
    public static DeviceClient start(DeviceConfig cfg, byte[] secret, DeviceListener listener) {
        DeviceClient c = new DeviceClient(cfg, secret, listener);
        c.worker.start();
        return c;
    }

    /** The WELCOME of the current or last session, null before the first one. */
    public Welcome welcome() {
        return welcome;
    }

    /** Whether a session is established right now. */
    public boolean isConnected() {
        synchronized (lock) {
            return session != null;
        }
    }

    /** How many sessions (WELCOMEs) this client has had so far. */
    public int sessionCount() {
        return sessions.get();
    }

    /** Why the client stopped, or null while it runs. */
    public StopReason stopReason() {
        return stopReason;
    }

    /** Waits up to {@code timeoutMs} for the client to stop; its reason, or null if still running. */
    public StopReason awaitStopped(long timeoutMs) throws InterruptedException {
        stopped.await(timeoutMs, TimeUnit.MILLISECONDS);
        return stopReason;
    }

    /**
     * ACKs {@code msgId} (for {@link AckMode#MANUAL}); callable from any thread. If no session is up
     * the ACK is remembered and sent when the gateway repeats the notification after reconnecting.
     */
    public void ack(long msgId) {
        duplicates.record(msgId, true);
        DeviceSession s = current();
        if (s != null) {
            try {
                s.ack(msgId);
            } catch (IOException e) {
                // The session is gone; the connection thread reconnects and the repeat is ACKed then.
            }
        }
    }

    /**
     * Sends UNREGISTER (the app was uninstalled or the user opted out); the client stops with
     * {@link StopReason#UNREGISTERED} once the gateway confirms (see {@link #awaitStopped}). If the
     * connection breaks first, UNREGISTER is sent again on the next session. Registering again
     * later with the same secret gives the same token.
     */
    public void unregister() throws IOException {
        unregistering = true;
        DeviceSession s = current();
        if (s != null) {
            s.unregister();
        }
    }

    /**
     * Subscribes this device to {@code topic} of its app (SUBSCRIBE) and waits up to
     * {@link #DEFAULT_SUBSCRIBE_TIMEOUT_MS} for the answer; see {@link #subscribe(String, long)}.
     */
    public int subscribe(String topic) throws IOException, InterruptedException {
        return subscribe(topic, DEFAULT_SUBSCRIBE_TIMEOUT_MS);
    }

    /**
     * Subscribes this device to {@code topic} and returns the gateway's status, a
     * {@link SubscriptionStatus}: {@code OK} once the subscription is durable (also when the device
     * was subscribed already), {@code BAD_TOPIC} for a name that breaks the rule (1..64 bytes of
     * {@code A-Z a-z 0-9 - _ . ~ %}, no {@code ~} name: {@code ~all} needs no subscription),
     * {@code TOPIC_LIMIT}, {@code STORE_FAILED} or {@code UNAVAILABLE}. Subscriptions last until
     * unsubscribed or UNREGISTER, across reconnects: there is no need to subscribe on every session.
     * While no session is up the request waits for the next one; one cut off by a broken
     * connection is sent again (SUBSCRIBE is idempotent).
     *
     * @throws IllegalArgumentException if the name is not 1..64 bytes (UTF-8)
     * @throws IllegalStateException when called on the connection thread (from a listener
     *     callback, which would block the reading of the answer): use {@link #subscribeAsync} there
     * @throws SocketTimeoutException if no answer came within {@code timeoutMs} (the request stays
     *     queued and may still take effect)
     * @throws IOException if the client stopped before the answer
     */
    public int subscribe(String topic, long timeoutMs) throws IOException, InterruptedException {
        notOnWorker();
        return await(subscribeAsync(topic), timeoutMs);
    }

    /** As {@link #subscribe(String, long)} without waiting: the future completes with the status. */
    public CompletableFuture<Integer> subscribeAsync(String topic) {
        return request(true, topic);
    }

    /** Unsubscribes from {@code topic} (UNSUBSCRIBE); waits as {@link #subscribe(String)}. */
    public int unsubscribe(String topic) throws IOException, InterruptedException {
        return unsubscribe(topic, DEFAULT_SUBSCRIBE_TIMEOUT_MS);
    }

    /**
     * Unsubscribes from {@code topic} and returns the status ({@code OK} also when the device was
     * not in it). Once {@code OK} is returned no message pushed to the topic afterwards reaches this
     * device; one already on its way may still arrive (and is ACKed as usual). Otherwise as
     * {@link #subscribe(String, long)}.
     */
    public int unsubscribe(String topic, long timeoutMs) throws IOException, InterruptedException {
        notOnWorker();
        return await(unsubscribeAsync(topic), timeoutMs);
    }

    /** As {@link #unsubscribe(String, long)} without waiting: the future completes with the status. */
    public CompletableFuture<Integer> unsubscribeAsync(String topic) {
        return request(false, topic);
    }

    private CompletableFuture<Integer> request(boolean subscribe, String topic) {
        Wire.topicBytes(topic); // refuse a bad length now, not on the connection thread
        PendingSub p = new PendingSub(subscribe, topic);
        synchronized (subLock) {
            if (subsClosed != null) {
                p.result.completeExceptionally(subsClosed);
                return p.result;
            }
            int id;
            do {
                nextSubId = (nextSubId + 1) & 0xffff;
                id = nextSubId;
            } while (pendingSubs.containsKey(id));
            DeviceSession s = current();
            // Only behind older requests already on this session, so that the gateway sees them in
            // order (a subscribe and an unsubscribe of one topic); else resendSubs sends them all.
            boolean inOrder = s != null;
            for (PendingSub older : pendingSubs.values()) {
                inOrder &= older.sentOn == s;
            }
            pendingSubs.put(id, p);
            if (inOrder) {
                send(s, id, p);
            }
        }
        return p.result;
    }

    /** Writes one pending request to {@code s}; a failure leaves it for the next session. */
    private static void send(DeviceSession s, int id, PendingSub p) {
        try {
            s.subscribe(p.subscribe, id, p.topic);
            p.sentOn = s;
        } catch (IOException e) {
            // The session is gone: the request goes out on the next one.
        }
    }

    private void notOnWorker() {
        if (Thread.currentThread() == worker) {
            throw new IllegalStateException("subscribe/unsubscribe would block the connection thread; use the async form");
        }
    }

    private static int await(CompletableFuture<Integer> f, long timeoutMs) throws IOException, InterruptedException {
        try {
            return f.get(timeoutMs, TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            throw new SocketTimeoutException("no SUBSCRIBE_RESULT within " + timeoutMs + " ms");
        } catch (ExecutionException e) {
            if (e.getCause() instanceof IOException) {
                throw (IOException) e.getCause();
            }
            throw new IOException(e.getCause());
        }
    }

    /** Sends, on a new session, every request not yet answered, oldest first. */
    private void resendSubs(DeviceSession s) {
        synchronized (subLock) {
            for (Map.Entry<Integer, PendingSub> e : pendingSubs.entrySet()) {
                if (e.getValue().sentOn != s) {
                    send(s, e.getKey(), e.getValue());
                }
            }
        }
    }

    private void onSubscribeResult(DeviceSession s, int reqId, int status) {
        PendingSub p;
        synchronized (subLock) {
            p = pendingSubs.get(reqId);
            if (p == null || p.sentOn != s) {
                return; // an answer to nothing outstanding on this session
            }
            pendingSubs.remove(reqId);
        }
        p.result.complete(status);
    }

    private void failSubs(StopReason reason) {
        synchronized (subLock) {
            subsClosed = new IOException("device client stopped (" + reason + ")");
            for (PendingSub p : pendingSubs.values()) {
                p.result.completeExceptionally(subsClosed);
            }
            pendingSubs.clear();
        }
    }

    /**
     * Replaces the connection now, without backoff: for app-level events such as a network change
     * or the app coming to the foreground. Does nothing once the client has stopped.
     */
    public void reconnectNow() {
        synchronized (waitLock) {
            wakeRequested = true;
            waitLock.notifyAll();
        }
        dropConnection();
    }

    /** Stops the client and closes its connection; waits up to 5 s for its thread unless called from a callback. */
    @Override
    public void close() {
        closing = true;
        synchronized (waitLock) {
            waitLock.notifyAll();
        }
        DeviceSession s = current();
        if (s != null) {
            s.close();
        }
        if (Thread.currentThread() != worker) {
            try {
                worker.join(5_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /** Breaks the current connection as a network failure would (tests). */
    void dropConnection() {
        DeviceSession s = current();
        if (s != null) {
            s.close();
        }
    }

    private DeviceSession current() {
        synchronized (lock) {
            return session;
        }
    }

    private void run() {
        StopReason reason = null;
        int attempt = 0;
        try {
            while (reason == null && !closing) {
                IOException cause = null;
                long hintMs = 0;
                long upNanos = -1;
                DeviceSession s = null;
                try {
                    s = DeviceSession.connect(cfg, secret);
                    synchronized (lock) {
                        if (closing) {
                            break;
                        }
                        session = s;
                    }
                    welcome = s.welcome();
                    sessions.incrementAndGet();
                    long began = System.nanoTime();
                    try {
                        runSession(s);
                    } finally {
                        upNanos = System.nanoTime() - began;
                    }
                } catch (GoAwayException e) {
                    cause = e;
                    GoAway g = e.goAway();
                    callback(() -> listener.onGoAway(g));
                    if (g.reason() == GoAway.REPLACED) {
                        reason = StopReason.REPLACED;
                    } else if (g.reason() == GoAway.UNREGISTERED) {
                        reason = StopReason.UNREGISTERED;
                    } else {
                        hintMs = g.reconnectMs();
                    }
                } catch (ServerErrorException e) {
                    cause = e;
                    callback(() -> listener.onServerError(e));
                    if (ErrorCode.isFinal(e.code())) {
                        reason = StopReason.REFUSED;
                    }
                } catch (IOException e) {
                    cause = e;
                } finally {
                    synchronized (lock) {
                        if (session == s) {
                            session = null;
                        }
                    }
                    if (s != null) {
                        s.close();
                    }
                }
                if (reason != null || closing) {
                    break;
                }
                if (upNanos >= 0 && s != null && upNanos >= s.heartbeatNanos()) {
                    attempt = 0; // the session stayed up a full heartbeat interval
                }
                boolean woken = takeWake();
                long delay = woken ? 0 : backoff.delayMs(attempt, hintMs);
                attempt = woken ? 0 : Math.min(attempt + 1, 30);
                final IOException why = cause;
                callback(() -> listener.onDisconnected(why, delay));
                if (woken) {
                    continue;
                }
                if (waitOrWake(delay)) {
                    attempt = 0;
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } finally {
            if (reason == null) {
                reason = StopReason.CLOSED;
            }
            stopReason = reason;
            failSubs(reason);
            timer.shutdownNow();
            final StopReason r = reason;
            callback(() -> listener.onStopped(r));
            stopped.countDown();
        }
    }

    /** Whether {@link #reconnectNow()} was called since the last check (and clears it). */
    private boolean takeWake() {
        synchronized (waitLock) {
            boolean w = wakeRequested;
            wakeRequested = false;
            return w;
        }
    }

    /** Waits {@code ms} unless closed or woken first; true if woken by {@link #reconnectNow()}. */
    private boolean waitOrWake(long ms) throws InterruptedException {
        long end = System.nanoTime() + ms * 1_000_000;
        synchronized (waitLock) {
            while (!closing && !wakeRequested) {
                long left = (end - System.nanoTime()) / 1_000_000;
                if (left <= 0) {
                    return false;
                }
                waitLock.wait(left);
            }
            boolean w = wakeRequested;
            wakeRequested = false;
            return w;
        }
    }

    /** Runs one established session until it ends (always by an exception). */
    private void runSession(DeviceSession s) throws IOException {
        long hbMs = s.heartbeatNanos() / 1_000_000;
        long tickMs = Math.max(50, Math.min(1_000, hbMs / 10));
        ScheduledFuture<?> heartbeat = timer.scheduleWithFixedDelay(() -> {
            try {
                s.heartbeatIfDue(tickMs * 1_000_000);
            } catch (IOException e) {
                s.close(); // the reader sees the failure and reconnects
            }
        }, tickMs, tickMs, TimeUnit.MILLISECONDS);
        try {
            resendSubs(s);
            Welcome w = s.welcome();
            callback(() -> listener.onConnected(w));
            if (unregistering) {
                s.unregister();
            }
            // Something arrives at least every heartbeat (our PING's PONG) unless the path is dead.
            long readTimeoutMs = hbMs + tickMs + cfg.pongTimeoutMs;
            while (true) {
                DeviceSession.Event ev = s.next(readTimeoutMs);
                if (ev == null) {
                    s.close();
                    throw new SocketTimeoutException("nothing from the gateway for " + readTimeoutMs + " ms despite PING");
                }
                if (ev.type() == DeviceSession.Event.Type.NOTIFY) {
                    deliver(s, ev.notification()); // NOTIFY and TOPIC_NOTIFY alike
                } else if (ev.type() == DeviceSession.Event.Type.SUBSCRIBE_RESULT) {
                    onSubscribeResult(s, ev.reqId(), ev.status());
                }
            }
        } finally {
            heartbeat.cancel(false);
        }
    }

    /** Hands a notification to the listener unless it is a duplicate, and ACKs per the ack mode. */
    private void deliver(DeviceSession s, Notification fromWire) throws IOException {
        long id = fromWire.msgId();
        Boolean acked = duplicates.lookup(id);
        if (acked != null) {
            // A repeat after a reconnect. ACK it if the app already did (always so in AUTO mode);
            // in MANUAL mode an ACK still pending reaches the gateway when the app sends it.
            if (acked) {
                s.ack(id);
            }
            return;
        }
        Notification n = fromWire.withAcker(this::ack);
        try {
            listener.onNotification(n);
        } catch (RuntimeException e) {
            callback(() -> listener.onListenerError(n, e));
            return;
        }
        if (cfg.ackMode == AckMode.AUTO) {
            duplicates.record(id, true);
            s.ack(id);
        } else {
            duplicates.record(id, false);
        }
    }

    private static void callback(Runnable r) {
        try {
            r.run();
        } catch (RuntimeException e) {
            // A throwing callback must not kill the connection thread.
        }
    }
}
