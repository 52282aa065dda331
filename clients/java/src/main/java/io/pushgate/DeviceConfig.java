package io.pushgate;

import java.util.Random;
import javax.net.SocketFactory;
import javax.net.ssl.HostnameVerifier;
import javax.net.ssl.SSLSocketFactory;

/** Immutable connection settings for {@link DeviceSession} and {@link DeviceClient}; build with {@link #builder}. */
public final class DeviceConfig {
    final String host;
    final int port;
    final String appId;
    final int keepaliveS;
    final SocketFactory socketFactory;
    final SSLSocketFactory tls;
    final HostnameVerifier hostnameVerifier;
    final int connectTimeoutMs;
    final int handshakeTimeoutMs;
    final int pongTimeoutMs;
    final long backoffBaseMs;
    final long backoffCapMs;
    final AckMode ackMode;
    final int duplicateWindow;
    final Random random;

    private DeviceConfig(Builder b) {
        host = b.host;
        port = b.port;
        appId = b.appId;
        keepaliveS = b.keepaliveS;
        socketFactory = b.socketFactory;
        tls = b.tls;
        hostnameVerifier = b.hostnameVerifier;
        connectTimeoutMs = b.connectTimeoutMs;
        handshakeTimeoutMs = b.handshakeTimeoutMs;
        pongTimeoutMs = b.pongTimeoutMs;
        backoffBaseMs = b.backoffBaseMs;
        backoffCapMs = b.backoffCapMs;
        ackMode = b.ackMode;
        duplicateWindow = b.duplicateWindow;
        random = b.random;
    }

    /** Settings for app {@code appId} on the gateway device port at {@code host:port}. */
    public static Builder builder(String host, int port, String appId) {
        return new Builder(host, port, appId);
    }

    /** The gateway host name or address. */
    public String host() {
        return host;
    }

    /** The gateway device port. */
    public int port() {
        return port;
    }

    /** The app id sent in HELLO. */
    public String appId() {
        return appId;
    }

    /** Builder for {@link DeviceConfig}; every setting but the address and app id has a default. */
    public static final class Builder {
        private final String host;
        private final int port;
        private final String appId;
        private int keepaliveS = 0;
        private SocketFactory socketFactory = SocketFactory.getDefault();
        private SSLSocketFactory tls = null;
        private HostnameVerifier hostnameVerifier = null;
        private int connectTimeoutMs = 10_000;
        private int handshakeTimeoutMs = 15_000;
        private int pongTimeoutMs = 10_000;
        private long backoffBaseMs = 1_000;
        private long backoffCapMs = 300_000;
        private AckMode ackMode = AckMode.AUTO;
        private int duplicateWindow = 1024;
        private Random random = null;

        private Builder(String host, int port, String appId) {
            if (port < 1 || port > 65535) {
                throw new IllegalArgumentException("port " + port);
            }
            if (!validAppId(appId)) {
                throw new IllegalArgumentException("app id must be 1..64 of A-Z a-z 0-9 . _ -: " + appId);
            }
            this.host = host;
            this.port = port;
            this.appId = appId;
        }

        /** Heartbeat interval to ask for in HELLO, seconds; 0 (default) = gateway default. The gateway clamps it. */
        public Builder keepaliveS(int s) {
            if (s < 0 || s > 65535) {
                throw new IllegalArgumentException("keepalive_s " + s);
            }
            keepaliveS = s;
            return this;
        }

        /** Factory for the TCP socket (default {@link SocketFactory#getDefault()}). */
        public Builder socketFactory(SocketFactory f) {
            socketFactory = f;
            return this;
        }

        /** Speak TLS through the platform's default {@link SSLSocketFactory} (system trust store). */
        public Builder tls() {
            return tls((SSLSocketFactory) SSLSocketFactory.getDefault());
        }

        /**
         * Speak TLS through {@code f}, layered over the TCP socket. The certificate must name the host
         * (endpoint identification "HTTPS") unless a {@link #hostnameVerifier} is given instead.
         */
        public Builder tls(SSLSocketFactory f) {
            tls = f;
            return this;
        }

        /** Check the server's name with {@code v} after the handshake instead of endpoint identification (e.g. old Android). */
        public Builder hostnameVerifier(HostnameVerifier v) {
            hostnameVerifier = v;
            return this;
        }

        /** TCP connect timeout, ms (default 10 000). */
        public Builder connectTimeoutMs(int ms) {
            connectTimeoutMs = positive(ms);
            return this;
        }

        /** Longest wait for the TLS handshake and for WELCOME after HELLO, ms (default 15 000). */
        public Builder handshakeTimeoutMs(int ms) {
            handshakeTimeoutMs = positive(ms);
            return this;
        }

        /** How long after a due PING a silent gateway is considered dead, ms (default 10 000). */
        public Builder pongTimeoutMs(int ms) {
            pongTimeoutMs = positive(ms);
            return this;
        }

        /** Reconnect backoff: first step and cap, ms (default 1 s and 300 s, protocol.md section 11.4). */
        public Builder backoff(long baseMs, long capMs) {
            if (baseMs <= 0 || capMs < baseMs) {
                throw new IllegalArgumentException("backoff " + baseMs + ".." + capMs);
            }
            backoffBaseMs = baseMs;
            backoffCapMs = capMs;
            return this;
        }

        /** When notifications are ACKed (default {@link AckMode#AUTO}). */
        public Builder ackMode(AckMode m) {
            ackMode = m;
            return this;
        }

        /** How many recent msg_ids are remembered to drop duplicates (default 1024). */
        public Builder duplicateWindow(int n) {
            duplicateWindow = positive(n);
            return this;
        }

        /** Random source for the backoff jitter (default a new {@link Random}); for tests. */
        public Builder random(Random r) {
            random = r;
            return this;
        }

        /** The settings. */
        public DeviceConfig build() {
            return new DeviceConfig(this);
        }

        private static int positive(int v) {
            if (v <= 0) {
                throw new IllegalArgumentException("must be positive: " + v);
            }
            return v;
        }
    }

    static boolean validAppId(String id) {
        if (id == null || id.isEmpty() || id.length() > 64) {
            return false;
        }
        for (int i = 0; i < id.length(); i++) {
            char c = id.charAt(i);
            boolean ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                    || c == '.' || c == '_' || c == '-';
            if (!ok) {
                return false;
            }
        }
        return true;
    }
}
