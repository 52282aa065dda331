package io.pushgate;

import java.io.BufferedInputStream;
import java.io.Closeable;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLPeerUnverifiedException;
import javax.net.ssl.SSLSocket;

/**
 * One device connection, blocking and without reconnection: HELLO, WELCOME, then NOTIFY (and
 * TOPIC_NOTIFY), SUBSCRIBE_RESULT and PONG frames read by {@link #next(long)}. {@link DeviceClient} builds on it; use this class directly
 * only for full control. Reading must happen on one thread; the send methods are thread-safe.
 */
public final class DeviceSession implements Closeable {
    /** What {@link #next(long)} read. */
    public static final class Event {
        /**
         * NOTIFY (a TOPIC_NOTIFY too: its notification has a {@link Notification#topic()}), PONG, or
         * SUBSCRIBE_RESULT; GOAWAY and ERROR end the session and are thrown instead.
         */
        public enum Type { NOTIFY, PONG, SUBSCRIBE_RESULT }

        private final Type type;
        private final Notification notification;
        private final int reqId;
        private final int status;

        Event(Type type, Notification notification) {
            this(type, notification, 0, 0);
        }

        Event(Type type, Notification notification, int reqId, int status) {
            this.type = type;
            this.notification = notification;
            this.reqId = reqId;
            this.status = status;
        }

        /** The frame type read. */
        public Type type() {
            return type;
        }

        /** The notification for {@link Type#NOTIFY}, else null. */
        public Notification notification() {
            return notification;
        }

        /** For {@link Type#SUBSCRIBE_RESULT}: the req_id that {@link #subscribe} or {@link #unsubscribe} returned. */
        public int reqId() {
            return reqId;
        }

        /** For {@link Type#SUBSCRIBE_RESULT}: the status, see {@link SubscriptionStatus}. */
        public int status() {
            return status;
        }
    }

    private final Socket socket;
    private final InputStream in;
    private final OutputStream out;
    private final Welcome welcome;
    private final Object writeLock = new Object();
    private volatile long lastSentNanos;
    private volatile long lastReceivedNanos;
    private volatile long lastPingNanos;
    private volatile boolean closed;
    private final AtomicInteger nextReqId = new AtomicInteger();

    private DeviceSession(Socket socket, InputStream in, OutputStream out, Welcome welcome, long helloNanos) {
        this.socket = socket;
        this.in = in;
        this.out = out;
        this.welcome = welcome;
        this.lastSentNanos = helloNanos;
        this.lastReceivedNanos = System.nanoTime();
        this.lastPingNanos = helloNanos;
    }

    /**
     * Connects (TLS if configured), sends HELLO with {@code secret} (16..64 bytes) and waits for
     * WELCOME. Throws {@link GoAwayException} or {@link ServerErrorException} if the gateway refuses,
     * {@link ProtocolException} for undecodable bytes, {@link SocketTimeoutException} if no answer
     * comes within the handshake timeout, or another {@link IOException} if the connection fails.
     */
    public static DeviceSession connect(DeviceConfig cfg, byte[] secret) throws IOException {
        if (!DeviceSecret.validLength(secret.length)) {
            throw new IllegalArgumentException("device secret must be 16..64 bytes, not " + secret.length);
        }
        Socket socket = cfg.socketFactory.createSocket();
        try {
            socket.connect(new InetSocketAddress(cfg.host, cfg.port), cfg.connectTimeoutMs);
            socket.setTcpNoDelay(true);
            socket.setSoTimeout(cfg.handshakeTimeoutMs);
            if (cfg.tls != null) {
                SSLSocket ssl = (SSLSocket) cfg.tls.createSocket(socket, cfg.host, cfg.port, true);
                if (cfg.hostnameVerifier == null) {
                    SSLParameters p = ssl.getSSLParameters();
                    p.setEndpointIdentificationAlgorithm("HTTPS");
                    ssl.setSSLParameters(p);
                }
                socket = ssl;
                ssl.startHandshake();
                if (cfg.hostnameVerifier != null && !cfg.hostnameVerifier.verify(cfg.host, ssl.getSession())) {
                    throw new SSLPeerUnverifiedException("certificate does not match " + cfg.host);
                }
            }
            InputStream in = new BufferedInputStream(socket.getInputStream());
            OutputStream out = socket.getOutputStream();
            long helloNanos = System.nanoTime();
            out.write(Wire.hello(cfg.keepaliveS, cfg.appId, secret));
            out.flush();
            int type = in.read();
            if (type < 0) {
                throw new EOFException("gateway closed the connection before WELCOME");
            }
            Wire.Frame f = Wire.readAfterType(type, in);
            switch (f.type) {
                case Wire.WELCOME:
                    return new DeviceSession(socket, in, out, Wire.welcome(f.body), helloNanos);
                case Wire.GOAWAY:
                    throw new GoAwayException(Wire.goAway(f.body));
                case Wire.ERROR:
                    throw Wire.error(f.body);
                default:
                    throw new ProtocolException(String.format("frame type 0x%02x before WELCOME", f.type));
            }
        } catch (IOException | RuntimeException e) {
            closeQuietly(socket);
            throw e;
        }
    }

    /** The WELCOME this session began with. */
    public Welcome welcome() {
        return welcome;
    }

    /**
     * The next frame from the gateway, waiting at most {@code timeoutMs} (0 = forever) for it to
     * begin; null if none began in time (the session stays usable). GOAWAY and ERROR are thrown as
     * {@link GoAwayException} / {@link ServerErrorException}; after any exception the session is closed.
     */
    public Event next(long timeoutMs) throws IOException {
        try {
            socket.setSoTimeout((int) Math.min(Integer.MAX_VALUE, timeoutMs));
            int type;
            try {
                type = in.read();
            } catch (SocketTimeoutException e) {
                return null;
            }
            if (type < 0) {
                throw new EOFException("gateway closed the connection");
            }
            // A frame has begun: the rest must follow promptly.
            socket.setSoTimeout(Math.max(1, (int) Math.min(Integer.MAX_VALUE, Math.max(timeoutMs, 10_000))));
            Wire.Frame f = Wire.readAfterType(type, in);
            lastReceivedNanos = System.nanoTime();
            switch (f.type) {
                case Wire.NOTIFY:
                    return new Event(Event.Type.NOTIFY, Wire.notify(f.body, this::ack));
                case Wire.TOPIC_NOTIFY:
                    return new Event(Event.Type.NOTIFY, Wire.topicNotify(f.body, this::ack));
                case Wire.SUBSCRIBE_RESULT: {
                    int[] r = Wire.subscribeResult(f.body);
                    return new Event(Event.Type.SUBSCRIBE_RESULT, null, r[0], r[1]);
                }
                case Wire.PONG:
                    Wire.exact("PONG", f.body, 0);
                    return new Event(Event.Type.PONG, null);
                case Wire.GOAWAY:
                    throw new GoAwayException(Wire.goAway(f.body));
                case Wire.ERROR:
                    throw Wire.error(f.body);
                default:
                    throw new ProtocolException(String.format("frame type 0x%02x after WELCOME", f.type));
            }
        } catch (IOException | RuntimeException e) {
            close();
            throw e;
        }
    }

    /**
     * Sends SUBSCRIBE for {@code topic} (1..64 bytes, else {@link IllegalArgumentException}) and
     * returns its req_id; {@link #next} returns the answer as a {@link Event.Type#SUBSCRIBE_RESULT}
     * with that req_id (answers come in request order).
     */
    public int subscribe(String topic) throws IOException {
        int reqId = nextReqId.incrementAndGet() & 0xffff;
        subscribe(true, reqId, topic);
        return reqId;
    }

    /** As {@link #subscribe}, for UNSUBSCRIBE. */
    public int unsubscribe(String topic) throws IOException {
        int reqId = nextReqId.incrementAndGet() & 0xffff;
        subscribe(false, reqId, topic);
        return reqId;
    }

    /** Sends SUBSCRIBE ({@code subscribe} true) or UNSUBSCRIBE with the caller's req_id. */
    void subscribe(boolean subscribe, int reqId, String topic) throws IOException {
        send(Wire.subscribe(subscribe, reqId, topic));
    }

    /** Sends ACK for {@code msgId}. */
    public void ack(long msgId) throws IOException {
        send(Wire.ack(msgId));
    }

    /** Sends PING; the gateway answers PONG. */
    public void ping() throws IOException {
        lastPingNanos = System.nanoTime();
        send(Wire.ping());
    }

    /** Sends UNREGISTER; the gateway answers GOAWAY unregistered once it is recorded. */
    public void unregister() throws IOException {
        send(Wire.unregister());
    }

    /**
     * Sends PING if the heartbeat is due: nothing sent for heartbeat_s, or nothing received for
     * heartbeat_s and no PING since (to probe the path). Returns whether it pinged.
     */
    public boolean heartbeatIfDue() throws IOException {
        return heartbeatIfDue(0);
    }

    /** As {@link #heartbeatIfDue()}, counting a PING as due up to {@code slackNanos} early. */
    boolean heartbeatIfDue(long slackNanos) throws IOException {
        long now = System.nanoTime();
        long every = heartbeatNanos() - slackNanos;
        boolean sendDue = now - lastSentNanos >= every;
        boolean probeDue = now - lastReceivedNanos >= every && lastPingNanos - lastReceivedNanos < 0;
        if (sendDue || probeDue) {
            ping();
            return true;
        }
        return false;
    }

    /** The heartbeat interval in force (at least 1 s), in nanoseconds. */
    long heartbeatNanos() {
        return Math.max(1, welcome.heartbeatS()) * 1_000_000_000L;
    }

    /** Writes one encoded frame. */
    void send(byte[] frame) throws IOException {
        synchronized (writeLock) {
            if (closed) {
                throw new IOException("session closed");
            }
            try {
                out.write(frame);
                out.flush();
            } catch (IOException e) {
                close();
                throw e;
            }
            lastSentNanos = System.nanoTime();
        }
    }

    /** Whether {@link #close()} was called or the session failed. */
    public boolean isClosed() {
        return closed;
    }

    /** Closes the connection (idempotent); a blocked {@link #next} then throws. */
    @Override
    public void close() {
        closed = true;
        closeQuietly(socket);
    }

    private static void closeQuietly(Socket s) {
        try {
            s.close();
        } catch (IOException ignored) {
            // nothing useful to do
        }
    }
}
