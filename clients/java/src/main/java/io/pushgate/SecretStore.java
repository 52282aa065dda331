package io.pushgate;

import java.io.IOException;

/**
 * Where the app keeps its per-install device secret (protocol.md section 7.2): private storage
 * that survives restarts. Losing the secret means a new token.
 */
public interface SecretStore {
    /** The stored secret, or {@code null} if none was stored yet. */
    byte[] load() throws IOException;

    /** Stores {@code secret}, replacing any previous one. */
    void save(byte[] secret) throws IOException;
}
