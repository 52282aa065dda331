package io.pushgate;

/** When {@link DeviceClient} ACKs a notification. */
public enum AckMode {
    /** ACK as soon as the listener's {@code onNotification} returns normally (not if it throws). */
    AUTO,
    /** The app calls {@link Notification#ack()} (or {@link DeviceClient#ack(long)}) itself, from any thread. */
    MANUAL
}
