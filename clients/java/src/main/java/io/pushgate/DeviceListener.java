package io.pushgate;

import java.io.IOException;

/**
 * Callbacks of a {@link DeviceClient}, all on its single connection thread, in order. Return
 * promptly: while a callback runs the socket is not read (a gateway may then send GOAWAY
 * slow_consumer). Only {@link #onNotification} must be implemented.
 */
@FunctionalInterface
public interface DeviceListener {
    /**
     * A new notification (duplicates of already-delivered msg_ids are filtered out): pushed to this
     * device's token, or to a topic it is in ({@link Notification#topic()} is then its name, or
     * {@code "~all"} for a broadcast). With
     * {@link AckMode#AUTO} it is ACKed when this returns normally; if this throws, it is not ACKed
     * and the gateway sends it again after the next reconnect.
     */
    void onNotification(Notification n);

    /** A session began. Send {@link Welcome#tokenHex()} to your backend if it changed; resync if {@link Welcome#missed()} &gt; 0. */
    default void onConnected(Welcome welcome) {}

    /** The gateway sent GOAWAY; {@link #onDisconnected} or {@link #onStopped} follows. */
    default void onGoAway(GoAway goAway) {}

    /** The gateway sent ERROR (code and text); {@link #onDisconnected} or {@link #onStopped} follows. */
    default void onServerError(ServerErrorException error) {}

    /** A session ended or a connection attempt failed; the next attempt comes in {@code reconnectInMs}. */
    default void onDisconnected(IOException cause, long reconnectInMs) {}

    /** The client stopped for good and will not reconnect. */
    default void onStopped(StopReason reason) {}

    /** {@link #onNotification} threw; the notification was not ACKed. */
    default void onListenerError(Notification n, RuntimeException e) {}
}
