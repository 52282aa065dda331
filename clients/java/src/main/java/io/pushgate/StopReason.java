package io.pushgate;

/** Why a {@link DeviceClient} stopped for good (it never reconnects after these). */
public enum StopReason {
    /** The app called {@link DeviceClient#close()}. */
    CLOSED,
    /** GOAWAY replaced: another connection with the same secret took over. */
    REPLACED,
    /** GOAWAY unregistered: the UNREGISTER was recorded. */
    UNREGISTERED,
    /** ERROR bad_credential, unsupported_version, unknown_app or auth_failed: fix the configuration. */
    REFUSED
}
