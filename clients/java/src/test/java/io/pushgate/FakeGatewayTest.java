package io.pushgate;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.EOFException;
import java.io.IOException;
import java.io.OutputStream;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Hostile or scripted servers: every bad input ends in a defined exception within a bounded time. */
@Timeout(20)
class FakeGatewayTest {
    private static final byte[] SECRET = new byte[16];

    /** A random source whose jitter is always the ceiling, so that delays are exact. */
    private static final java.util.Random MAX_JITTER = new java.util.Random() {
        private static final long serialVersionUID = 1L;

        @Override
        public double nextDouble() {
            return 0.99999999;
        }
    };

    /** A fake that reads HELLO and then writes {@code reply}. */
    private static FakeGateway replying(byte[] reply) throws IOException {
        return new FakeGateway((s, in) -> {
            FakeGateway.readFrame(in);
            OutputStream out = s.getOutputStream();
            out.write(reply);
            out.flush();
            Thread.sleep(3_000); // keep the connection open: the client must not wait for more
        });
    }

    private static IOException connectFails(byte[] reply) throws Exception {
        try (FakeGateway fake = replying(reply)) {
            long t0 = System.nanoTime();
            IOException e = assertThrows(IOException.class, () -> DeviceSession.connect(fake.device().build(), SECRET));
            assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(3), "took too long: " + e);
            return e;
        }
    }

    @Test
    void unknownFrameTypeIsAProtocolError() throws Exception {
        IOException e = connectFails(new byte[] {(byte) 0xff, (byte) 0xff, (byte) 0xff, (byte) 0xff});
        assertEquals(ProtocolException.class, e.getClass(), e.toString());
    }

    @Test
    void clientOnlyFrameTypeIsAProtocolError() throws Exception {
        assertEquals(ProtocolException.class, connectFails(new byte[] {Wire.PING, 0}).getClass());
    }

    @Test
    void oversizedLengthIsRefusedWithoutReadingTheBody() throws Exception {
        // 8193 = 81 40: one above DEVICE_MAX_BODY, no body follows.
        IOException e = connectFails(new byte[] {Wire.WELCOME, (byte) 0x81, 0x40});
        assertEquals(ProtocolException.class, e.getClass());
        assertTrue(e.getMessage().contains("8193"), e.getMessage());
    }

    @Test
    void nonShortestAndFourByteLengthsAreProtocolErrors() throws Exception {
        assertEquals(ProtocolException.class, connectFails(new byte[] {Wire.WELCOME, (byte) 0x80, 0x00}).getClass());
        assertEquals(ProtocolException.class,
                connectFails(new byte[] {Wire.WELCOME, (byte) 0x80, (byte) 0x80, (byte) 0x80, 0x01}).getClass());
    }

    @Test
    void welcomeOfTheWrongLengthIsAProtocolError() throws Exception {
        assertEquals(ProtocolException.class, connectFails(Wire.encode(Wire.WELCOME, new byte[29])).getClass());
    }

    @Test
    void notifyBeforeWelcomeIsAProtocolError() throws Exception {
        byte[] body = new byte[10];
        body[7] = 1;
        assertEquals(ProtocolException.class, connectFails(Wire.encode(Wire.NOTIFY, body)).getClass());
    }

    @Test
    void closeInsideAFrameIsEof() throws Exception {
        try (FakeGateway fake = new FakeGateway((s, in) -> {
            FakeGateway.readFrame(in);
            s.getOutputStream().write(new byte[] {Wire.WELCOME, 30, 1, 2, 3});
            s.getOutputStream().flush();
        })) {
            assertThrows(EOFException.class, () -> DeviceSession.connect(fake.device().build(), SECRET));
        }
    }

    @Test
    void silentServerTimesOutAfterTheHandshakeTimeout() throws Exception {
        try (FakeGateway fake = new FakeGateway((s, in) -> Thread.sleep(5_000))) {
            long t0 = System.nanoTime();
            assertThrows(SocketTimeoutException.class,
                    () -> DeviceSession.connect(fake.device().handshakeTimeoutMs(500).build(), SECRET));
            long ms = (System.nanoTime() - t0) / 1_000_000;
            assertTrue(ms >= 400 && ms < 3_000, ms + " ms");
        }
    }

    @Test
    void garbageAfterWelcomeIsAProtocolErrorInNext() throws Exception {
        byte[] reply = concat(FakeGateway.welcome(60, 3), new byte[] {0x0a, 0x00});
        try (FakeGateway fake = replying(reply); DeviceSession s = DeviceSession.connect(fake.device().build(), SECRET)) {
            assertEquals(3, s.welcome().missed());
            assertEquals(60, s.welcome().heartbeatS());
            assertEquals("11".repeat(24), s.welcome().tokenHex());
            assertThrows(ProtocolException.class, () -> s.next(2_000));
            assertTrue(s.isClosed());
        }
    }

    @Test
    void helloIsExactlyAsSpecified() throws Exception {
        byte[] secret = new byte[16];
        for (int i = 0; i < 16; i++) {
            secret[i] = (byte) (0x11 * i);
        }
        java.util.concurrent.BlockingQueue<Wire.Frame> got = new java.util.concurrent.LinkedBlockingQueue<>();
        try (FakeGateway fake = new FakeGateway((s, in) -> {
            got.add(FakeGateway.readFrame(in));
            s.getOutputStream().write(FakeGateway.welcome(300, 0));
            got.add(FakeGateway.readFrame(in));
            got.add(FakeGateway.readFrame(in));
            got.add(FakeGateway.readFrame(in));
        })) {
            DeviceConfig cfg = DeviceConfig.builder("127.0.0.1", fake.port(), "com.example.chat").keepaliveS(300).build();
            try (DeviceSession s = DeviceSession.connect(cfg, secret)) {
                s.ack(0x11);
                s.ping();
                s.unregister();
                Wire.Frame hello = Recorder.take(got, 2_000, "HELLO");
                assertEquals(Wire.HELLO, hello.type);
                // protocol.md section 12.1, HELLO keepalive 300 s
                assertArrayEquals(WireTest.hex("01 01 2c 10 636f6d2e6578616d706c652e63686174 10 00112233445566778899aabbccddeeff"),
                        hello.body);
                Wire.Frame ack = Recorder.take(got, 2_000, "ACK");
                assertEquals(Wire.ACK, ack.type);
                assertArrayEquals(WireTest.hex("00 00 00 00 00 00 00 11"), ack.body);
                assertEquals(Wire.PING, Recorder.take(got, 2_000, "PING").type);
                Wire.Frame unreg = Recorder.take(got, 2_000, "UNREGISTER");
                assertEquals(Wire.UNREGISTER, unreg.type);
                assertEquals(0, unreg.body.length);
            }
        }
    }

    @Test
    void clientReconnectsWithBackoffAfterGarbageAndCloseStopsIt() throws Exception {
        try (FakeGateway fake = replying(new byte[] {(byte) 0xee, 0})) {
            Recorder r = new Recorder();
            DeviceClient c = DeviceClient.start(fake.device().random(MAX_JITTER).build(), SECRET, r);
            for (int i = 0; i < 3; i++) {
                IOException e = Recorder.take(r.disconnects, 3_000, "disconnect " + i);
                assertEquals(ProtocolException.class, e.getClass(), e.toString());
            }
            // Failed attempts in a row: the jitter ceiling doubles 50, 100, 200, then the 400 cap.
            long[] delays = r.delays.stream().mapToLong(Long::longValue).toArray();
            for (int i = 0; i < delays.length; i++) {
                assertEquals(Math.min(400, 50L << i), delays[i], "delay " + i);
            }
            long t0 = System.nanoTime();
            c.close();
            assertEquals(StopReason.CLOSED, c.awaitStopped(2_000));
            assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(2));
            assertEquals(StopReason.CLOSED, Recorder.take(r.stops, 1_000, "stop"));
            assertEquals(0, c.sessionCount());
        }
    }

    @Test
    void backoffResetsAfterASessionLastedAHeartbeat() throws Exception {
        java.util.concurrent.atomic.AtomicInteger n = new java.util.concurrent.atomic.AtomicInteger();
        try (FakeGateway fake = new FakeGateway((s, in) -> {
            FakeGateway.readFrame(in);
            OutputStream out = s.getOutputStream();
            if (n.incrementAndGet() != 4) {
                out.write(new byte[] {(byte) 0xee, 0}); // garbage: a failed attempt
                return;
            }
            out.write(FakeGateway.welcome(1, 0)); // then one healthy 1 s-heartbeat session of 1.5 s
            long end = System.nanoTime() + 1_500_000_000L;
            s.setSoTimeout(100);
            while (System.nanoTime() < end) {
                try {
                    if (FakeGateway.readFrame(in).type == Wire.PING) {
                        out.write(new byte[] {Wire.PONG, 0});
                    }
                } catch (SocketTimeoutException e) {
                    // keep waiting
                }
            }
        })) {
            Recorder r = new Recorder();
            try (DeviceClient c = DeviceClient.start(fake.device().backoff(50, 10_000).random(MAX_JITTER).build(), SECRET, r)) {
                long[] d = new long[4];
                for (int i = 0; i < 4; i++) {
                    Recorder.take(r.disconnects, 5_000, "disconnect " + i);
                    d[i] = Recorder.take(r.delays, 1_000, "delay " + i);
                }
                assertEquals(1, c.sessionCount());
                // Three failures in a row: 50, 100, 200 ms; after the healthy session: 50 again.
                assertArrayEquals(new long[] {50, 100, 200, 50}, d);
            }
        }
    }

    @Test
    void reconnectNowSkipsTheBackoffWait() throws Exception {
        try (FakeGateway fake = replying(new byte[] {(byte) 0xee, 0})) {
            Recorder r = new Recorder();
            try (DeviceClient c = DeviceClient.start(fake.device().backoff(5_000, 5_000).random(MAX_JITTER).build(), SECRET, r)) {
                Recorder.take(fake.accepts, 3_000, "first connection");
                assertEquals(5_000, Recorder.take(r.delays, 3_000, "delay"));
                long t0 = System.nanoTime();
                c.reconnectNow();
                Recorder.take(fake.accepts, 2_000, "connection right after reconnectNow");
                assertTrue(System.nanoTime() - t0 < 2_000_000_000L);
            }
        }
    }

    @Test
    void serverFullHintIsWaitedForBeforeReconnecting() throws Exception {
        try (FakeGateway fake = replying(FakeGateway.goAway(GoAway.SERVER_FULL, 700))) {
            Recorder r = new Recorder();
            try (DeviceClient c = DeviceClient.start(fake.device().build(), SECRET, r)) {
                long first = Recorder.take(fake.accepts, 3_000, "first connection");
                long second = Recorder.take(fake.accepts, 3_000, "reconnection");
                assertTrue(second - first >= TimeUnit.MILLISECONDS.toNanos(700), (second - first) / 1_000_000 + " ms");
                GoAway g = Recorder.take(r.goAways, 1_000, "GOAWAY");
                assertEquals(GoAway.SERVER_FULL, g.reason());
                assertEquals(700, g.reconnectMs());
                assertTrue(Recorder.take(r.delays, 1_000, "delay") >= 700);
            }
        }
    }

    @Test
    void badCredentialErrorStopsTheClientForGood() throws Exception {
        byte[] text = "secret too short".getBytes(StandardCharsets.UTF_8);
        byte[] body = new byte[1 + text.length];
        body[0] = ErrorCode.BAD_CREDENTIAL;
        System.arraycopy(text, 0, body, 1, text.length);
        try (FakeGateway fake = replying(Wire.encode(Wire.ERROR, body))) {
            Recorder r = new Recorder();
            try (DeviceClient c = DeviceClient.start(fake.device().build(), SECRET, r)) {
                assertEquals(StopReason.REFUSED, c.awaitStopped(3_000));
                ServerErrorException e = Recorder.take(r.errors, 1_000, "ERROR");
                assertEquals(ErrorCode.BAD_CREDENTIAL, e.code());
                assertEquals("secret too short", e.text());
                Recorder.take(fake.accepts, 1_000, "the connection");
                assertNull(fake.accepts.poll(500, TimeUnit.MILLISECONDS), "reconnected after bad_credential");
            }
        }
    }

    @Test
    void unknownGoAwayReasonIsTreatedAsShutdown() throws Exception {
        try (FakeGateway fake = replying(concat(FakeGateway.welcome(60, 0), FakeGateway.goAway(200, 0)))) {
            Recorder r = new Recorder();
            try (DeviceClient c = DeviceClient.start(fake.device().build(), SECRET, r)) {
                assertEquals(200, Recorder.take(r.goAways, 3_000, "GOAWAY").reason());
                Recorder.take(r.welcomes, 3_000, "first WELCOME");
                Recorder.take(r.welcomes, 3_000, "WELCOME after reconnecting");
            }
        }
    }

    @Test
    void deadPathIsDetectedByTheMissingPong() throws Exception {
        // WELCOME with a 1 s heartbeat, then silence: PINGs go unanswered.
        java.util.concurrent.BlockingQueue<Integer> pings = new java.util.concurrent.LinkedBlockingQueue<>();
        try (FakeGateway fake = new FakeGateway((s, in) -> {
            FakeGateway.readFrame(in);
            s.getOutputStream().write(FakeGateway.welcome(1, 0));
            while (true) {
                pings.add(FakeGateway.readFrame(in).type);
            }
        })) {
            Recorder r = new Recorder();
            try (DeviceClient c = DeviceClient.start(fake.device().build(), SECRET, r)) {
                Recorder.take(r.welcomes, 3_000, "WELCOME");
                assertEquals(Wire.PING, Recorder.take(pings, 2_000, "PING"));
                IOException e = Recorder.take(r.disconnects, 5_000, "dead-path disconnect");
                assertEquals(SocketTimeoutException.class, e.getClass(), e.toString());
            }
        }
    }

    static byte[] concat(byte[] a, byte[] b) {
        byte[] out = new byte[a.length + b.length];
        System.arraycopy(a, 0, out, 0, a.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }
}
