package io.pushgate;

import java.io.IOException;
import java.security.SecureRandom;

/** Creates and loads the per-install device secret (protocol.md section 7.2). */
public final class DeviceSecret {
    /** Length of a freshly generated secret, the recommended 32 bytes. */
    public static final int LENGTH = 32;

    private DeviceSecret() {}

    /**
     * The secret kept in {@code store}; on first use a fresh 32-byte secret from
     * {@link SecureRandom} is generated and saved first.
     */
    public static byte[] loadOrCreate(SecretStore store) throws IOException {
        byte[] secret = store.load();
        if (secret != null) {
            if (!validLength(secret.length)) {
                throw new IOException("stored device secret has " + secret.length + " bytes, 16..64 expected");
            }
            return secret;
        }
        secret = generate();
        store.save(secret);
        return secret;
    }

    /** A fresh random 32-byte secret. */
    public static byte[] generate() {
        byte[] secret = new byte[LENGTH];
        new SecureRandom().nextBytes(secret);
        return secret;
    }

    /** Whether a secret of {@code len} bytes is acceptable to the gateway (16..64). */
    public static boolean validLength(int len) {
        return len >= 16 && len <= 64;
    }
}
