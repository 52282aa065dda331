package io.pushgate;

import java.io.IOException;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/** Test listener: queues every callback so tests can wait for them with a timeout. */
class Recorder implements DeviceListener {
    final BlockingQueue<Notification> notifications = new LinkedBlockingQueue<>();
    final BlockingQueue<Welcome> welcomes = new LinkedBlockingQueue<>();
    final BlockingQueue<GoAway> goAways = new LinkedBlockingQueue<>();
    final BlockingQueue<ServerErrorException> errors = new LinkedBlockingQueue<>();
    final BlockingQueue<IOException> disconnects = new LinkedBlockingQueue<>();
    final BlockingQueue<Long> delays = new LinkedBlockingQueue<>();
    final BlockingQueue<StopReason> stops = new LinkedBlockingQueue<>();
    final AtomicInteger notifyCalls = new AtomicInteger();

    @Override
    public void onNotification(Notification n) {
        notifyCalls.incrementAndGet();
        notifications.add(n);
    }

    @Override
    public void onConnected(Welcome w) {
        welcomes.add(w);
    }

    @Override
    public void onGoAway(GoAway g) {
        goAways.add(g);
    }

    @Override
    public void onServerError(ServerErrorException e) {
        errors.add(e);
    }

    @Override
    public void onDisconnected(IOException cause, long reconnectInMs) {
        disconnects.add(cause == null ? new IOException("(none)") : cause);
        delays.add(reconnectInMs);
    }

    @Override
    public void onStopped(StopReason reason) {
        stops.add(reason);
    }

    /** The next item of {@code q} within {@code ms}, or an AssertionError naming {@code what}. */
    static <T> T take(BlockingQueue<T> q, long ms, String what) throws InterruptedException {
        T v = q.poll(ms, TimeUnit.MILLISECONDS);
        if (v == null) {
            throw new AssertionError("no " + what + " within " + ms + " ms");
        }
        return v;
    }
}
