package io.pushgate;

import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;

/** Test fixture: a loopback ServerSocket that runs a script on every accepted connection. */
final class FakeGateway implements AutoCloseable {
    /** What the fake does with one connection. */
    interface Script {
        void run(Socket s, DataInputStream in) throws Exception;
    }

    private final ServerSocket server;
    private final Thread acceptor;
    /** System.nanoTime() of every accept. */
    final BlockingQueue<Long> accepts = new LinkedBlockingQueue<>();
    /** Exceptions of scripts (a failing script fails the test that checks this). */
    final BlockingQueue<Throwable> failures = new LinkedBlockingQueue<>();

    FakeGateway(Script script) throws IOException {
        server = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
        acceptor = new Thread(() -> {
            while (!server.isClosed()) {
                try {
                    Socket s = server.accept();
                    accepts.add(System.nanoTime());
                    Thread t = new Thread(() -> {
                        try (Socket c = s) {
                            c.setSoTimeout(10_000);
                            script.run(c, new DataInputStream(c.getInputStream()));
                        } catch (Throwable e) {
                            failures.add(e);
                        }
                    }, "fake-conn");
                    t.setDaemon(true);
                    t.start();
                } catch (IOException e) {
                    return;
                }
            }
        }, "fake-accept");
        acceptor.setDaemon(true);
        acceptor.start();
    }

    int port() {
        return server.getLocalPort();
    }

    DeviceConfig.Builder device() {
        return DeviceConfig.builder("127.0.0.1", port(), "demo").connectTimeoutMs(2_000).handshakeTimeoutMs(2_000)
                .pongTimeoutMs(1_000).backoff(50, 400);
    }

    /** Reads one client frame: type and body (device-port limits). */
    static Wire.Frame readFrame(InputStream in) throws IOException {
        int type = in.read();
        if (type < 0) {
            throw new IOException("client closed");
        }
        int len = 0;
        int shift = 0;
        int b;
        do {
            b = in.read();
            len |= (b & 0x7f) << shift;
            shift += 7;
        } while ((b & 0x80) != 0);
        byte[] body = new byte[len];
        new DataInputStream(in).readFully(body);
        return new Wire.Frame(type, body);
    }

    /** A WELCOME with an all-0x11 token. */
    static byte[] welcome(int heartbeatS, long missed) {
        byte[] body = new byte[30];
        java.util.Arrays.fill(body, 0, 24, (byte) 0x11);
        body[24] = (byte) (heartbeatS >> 8);
        body[25] = (byte) heartbeatS;
        body[26] = (byte) (missed >>> 24);
        body[27] = (byte) (missed >>> 16);
        body[28] = (byte) (missed >>> 8);
        body[29] = (byte) missed;
        return Wire.encode(Wire.WELCOME, body);
    }

    static byte[] goAway(int reason, long reconnectMs) {
        byte[] body = {(byte) reason, (byte) (reconnectMs >>> 24), (byte) (reconnectMs >>> 16), (byte) (reconnectMs >>> 8),
            (byte) reconnectMs};
        return Wire.encode(Wire.GOAWAY, body);
    }

    @Override
    public void close() throws IOException {
        server.close();
    }
}
