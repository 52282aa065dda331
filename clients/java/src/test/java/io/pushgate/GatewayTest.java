package io.pushgate;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** The client against one real gateway process (1 s minimum heartbeat). */
@Timeout(30)
class GatewayTest extends OneGateway {
    private static DeviceSession session(byte[] secret) throws Exception {
        return DeviceSession.connect(gw.device().build(), secret);
    }

    /** The next NOTIFY on {@code s} within 5 s, skipping PONGs. */
    static Notification nextNotify(DeviceSession s) throws Exception {
        long deadline = System.currentTimeMillis() + 5_000;
        while (System.currentTimeMillis() < deadline) {
            DeviceSession.Event ev = s.next(Math.max(1, deadline - System.currentTimeMillis()));
            if (ev != null && ev.type() == DeviceSession.Event.Type.NOTIFY) {
                return ev.notification();
            }
        }
        throw new AssertionError("no NOTIFY within 5 s");
    }

    @Test
    void tokenIsStableForTheSameSecretAndDiffersForAnother() throws Exception {
        byte[] secret = DeviceSecret.generate();
        String first;
        try (DeviceSession s = session(secret)) {
            first = s.welcome().tokenHex();
            assertTrue(first.matches("[0-9a-f]{48}"), first);
            assertEquals(0, s.welcome().missed());
        }
        try (DeviceSession s = session(secret)) {
            assertEquals(first, s.welcome().tokenHex());
        }
        try (DeviceSession s = session(DeviceSecret.generate())) {
            assertNotEquals(first, s.welcome().tokenHex());
        }
    }

    @Test
    void secretStoreKeepsTheTokenAcrossClients() throws Exception {
        FileSecretStore store = new FileSecretStore(dir.resolve("stable.secret").toFile());
        String[] tokens = new String[2];
        for (int i = 0; i < 2; i++) {
            Recorder r = new Recorder();
            try (DeviceClient c = DeviceClient.start(gw.device().build(), store, r)) {
                tokens[i] = Recorder.take(r.welcomes, 5_000, "WELCOME").tokenHex();
            }
        }
        assertEquals(tokens[0], tokens[1]);
    }

    @Test
    void keepaliveIsClampedByTheGateway() throws Exception {
        try (DeviceSession s = DeviceSession.connect(gw.device().keepaliveS(0).build(), DeviceSecret.generate())) {
            assertEquals(60, s.welcome().heartbeatS(), "0 asks for the gateway default");
        }
        try (DeviceSession s = DeviceSession.connect(gw.device().keepaliveS(65535).build(), DeviceSecret.generate())) {
            assertEquals(1800, s.welcome().heartbeatS(), "clamped to heartbeat.max_s");
        }
    }

    @Test
    void pushedNotificationIsDeliveredAndOnceAckedNotSentAgain() throws Exception {
        byte[] secret = DeviceSecret.generate();
        try (DeviceSession s = session(secret)) {
            String token = s.welcome().tokenHex();
            GatewayProcess.PushResult res = gw.push(token, "{\"m\":\"hi\"}", "--kind", "badge", "--priority", "high");
            assertEquals("delivered", res.status, res.raw);
            Notification n = nextNotify(s);
            assertEquals(res.msgId, n.msgId());
            assertEquals(Long.toUnsignedString(res.msgId), n.msgIdString());
            assertEquals(Notification.KIND_BADGE, n.kind());
            assertEquals(Notification.PRIORITY_HIGH, n.priority());
            assertArrayEquals("{\"m\":\"hi\"}".getBytes(StandardCharsets.UTF_8), n.payload());
            n.ack();
            s.ping(); // the gateway handles frames in order: after PONG the ACK was processed
            assertEquals(DeviceSession.Event.Type.PONG, s.next(5_000).type());
        }
        try (DeviceSession s = session(secret)) {
            GatewayProcess.PushResult marker = gw.push(s.welcome().tokenHex(), "marker");
            Notification n = nextNotify(s);
            assertEquals("marker", n.payloadText(), "the ACKed notification came again");
            assertEquals(marker.msgId, n.msgId());
        }
    }

    @Test
    void unackedNotificationIsSentAgainAfterReconnect() throws Exception {
        byte[] secret = DeviceSecret.generate();
        long id;
        try (DeviceSession s = session(secret)) {
            gw.push(s.welcome().tokenHex(), "again");
            id = nextNotify(s).msgId();
        }
        try (DeviceSession s = session(secret)) {
            Notification n = nextNotify(s);
            assertEquals(id, n.msgId());
            assertEquals("again", n.payloadText());
        }
    }

    @Test
    void clientDropsTheRepeatOfAnAckedNotification() throws Exception {
        byte[] secret = DeviceSecret.generate();
        Recorder r = new Recorder();
        // MANUAL: the app ACKs after "processing"; the gateway still repeats the id after a reconnect
        // when the ACK did not reach it, which the client must filter out.
        try (DeviceClient c = DeviceClient.start(gw.device().ackMode(AckMode.MANUAL).build(), secret, r)) {
            String token = Recorder.take(r.welcomes, 5_000, "WELCOME").tokenHex();
            gw.push(token, "once");
            Notification n = Recorder.take(r.notifications, 5_000, "notification");
            c.dropConnection(); // lost before the app ACKed
            Recorder.take(r.welcomes, 5_000, "second WELCOME");
            n.ack();
            GatewayProcess.PushResult marker = gw.push(token, "marker");
            Notification next = Recorder.take(r.notifications, 5_000, "marker");
            assertEquals(marker.msgId, next.msgId(), "the repeat of " + n.msgIdString() + " reached the listener");
            next.ack();
            assertEquals(2, r.notifyCalls.get());
        }
        // Both ACKs reached the gateway: a fresh session gets nothing but a new marker.
        try (DeviceSession s = session(secret)) {
            GatewayProcess.PushResult marker = gw.push(s.welcome().tokenHex(), "marker2");
            assertEquals(marker.msgId, nextNotify(s).msgId());
        }
    }

    @Test
    void aThrowingListenerLeavesTheNotificationUnackedSoItComesAgain() throws Exception {
        byte[] secret = DeviceSecret.generate();
        java.util.concurrent.BlockingQueue<Notification> seen = new java.util.concurrent.LinkedBlockingQueue<>();
        java.util.concurrent.atomic.AtomicBoolean fail = new java.util.concurrent.atomic.AtomicBoolean(true);
        Recorder r = new Recorder() {
            @Override
            public void onNotification(Notification n) {
                seen.add(n);
                if (fail.getAndSet(false)) {
                    throw new IllegalStateException("app crashed while processing");
                }
            }
        };
        try (DeviceClient c = DeviceClient.start(gw.device().build(), secret, r)) {
            String token = Recorder.take(r.welcomes, 5_000, "WELCOME").tokenHex();
            long id = gw.push(token, "retry me").msgId;
            assertEquals(id, Recorder.take(seen, 5_000, "first delivery").msgId());
            c.dropConnection();
            assertEquals(id, Recorder.take(seen, 5_000, "delivery after reconnect").msgId());
            GatewayProcess.PushResult marker = gw.push(token, "marker");
            assertEquals(marker.msgId, Recorder.take(seen, 5_000, "marker").msgId());
        }
    }

    @Test
    void reconnectNowReplacesTheSessionWithTheSameToken() throws Exception {
        Recorder r = new Recorder();
        try (DeviceClient c = DeviceClient.start(gw.device().build(), DeviceSecret.generate(), r)) {
            String token = Recorder.take(r.welcomes, 5_000, "WELCOME").tokenHex();
            c.reconnectNow();
            assertEquals(token, Recorder.take(r.welcomes, 3_000, "second WELCOME").tokenHex());
            assertEquals(0, Recorder.take(r.delays, 1_000, "delay"));
            assertEquals(2, c.sessionCount());
            assertEquals("delivered", gw.push(token, "after").status);
            assertEquals("after", Recorder.take(r.notifications, 5_000, "notification").payloadText());
        }
    }

    @Test
    void autoAckClientReceivesAndAcks() throws Exception {
        byte[] secret = DeviceSecret.generate();
        Recorder r = new Recorder();
        try (DeviceClient c = DeviceClient.start(gw.device().build(), secret, r)) {
            String token = Recorder.take(r.welcomes, 5_000, "WELCOME").tokenHex();
            GatewayProcess.PushResult res = gw.push(token, "auto");
            assertEquals("delivered", res.status);
            assertEquals(res.msgId, Recorder.take(r.notifications, 5_000, "notification").msgId());
        }
        try (DeviceSession s = session(secret)) {
            GatewayProcess.PushResult marker = gw.push(s.welcome().tokenHex(), "marker");
            assertEquals(marker.msgId, nextNotify(s).msgId(), "the auto-ACK did not reach the gateway");
        }
    }

    @Test
    void offlineDeviceGetsTheQueuedNotificationOnConnect() throws Exception {
        byte[] secret = DeviceSecret.generate();
        String token;
        try (DeviceSession s = session(secret)) {
            token = s.welcome().tokenHex();
        }
        GatewayProcess.PushResult res = gw.push(token, "while you were away");
        assertEquals("queued", res.status, res.raw);
        GatewayProcess.PushResult now = gw.push(token, "now or never", "--expiry-s", "0");
        assertEquals("not_delivered", now.status, now.raw);
        Recorder r = new Recorder();
        try (DeviceClient c = DeviceClient.start(gw.device().build(), secret, r)) {
            Notification n = Recorder.take(r.notifications, 5_000, "queued notification");
            assertEquals(res.msgId, n.msgId());
            assertEquals("while you were away", n.payloadText());
            GatewayProcess.PushResult marker = gw.push(token, "marker");
            assertEquals(marker.msgId, Recorder.take(r.notifications, 5_000, "marker").msgId(),
                    "the expiry-0 push must not have been stored");
        }
    }

    @Test
    void welcomeReportsNotificationsDroppedByTheQueueCap() throws Exception {
        byte[] secret = DeviceSecret.generate();
        String token;
        try (DeviceSession s = session(secret)) {
            token = s.welcome().tokenHex();
        }
        long[] ids = new long[5];
        for (int i = 0; i < 5; i++) {
            GatewayProcess.PushResult res = gw.push(token, "n" + i);
            assertEquals("queued", res.status, res.raw);
            ids[i] = res.msgId;
        }
        Recorder r = new Recorder();
        try (DeviceClient c = DeviceClient.start(gw.device().build(), secret, r)) {
            assertEquals(2, Recorder.take(r.welcomes, 5_000, "WELCOME").missed(), "cap 3, 5 pushed");
            for (int i = 2; i < 5; i++) {
                Notification n = Recorder.take(r.notifications, 5_000, "notification " + i);
                assertEquals(ids[i], n.msgId(), "the oldest are dropped, the rest come in order");
            }
        }
        try (DeviceSession s = session(secret)) {
            assertEquals(0, s.welcome().missed(), "reset once reported");
        }
    }

    @Test
    void heartbeatsKeepTheConnectionPastTheIdleLimit() throws Exception {
        Recorder r = new Recorder();
        try (DeviceClient c = DeviceClient.start(gw.device().keepaliveS(1).build(), DeviceSecret.generate(), r)) {
            Welcome w = Recorder.take(r.welcomes, 5_000, "WELCOME");
            assertEquals(1, w.heartbeatS());
            // Three idle limits (1.5 s each) pass; without PINGs the gateway would have said idle_timeout.
            assertNull(r.disconnects.poll(4_500, java.util.concurrent.TimeUnit.MILLISECONDS), "connection lost");
            assertTrue(c.isConnected());
            assertEquals(1, c.sessionCount());
            assertEquals("delivered", gw.push(w.tokenHex(), "still here").status);
            assertEquals("still here", Recorder.take(r.notifications, 5_000, "notification").payloadText());
        }
    }

    @Test
    void silentDeviceIsClosedWithIdleTimeout() throws Exception {
        // The control for the heartbeat test: a session that never PINGs is cut off.
        try (DeviceSession s = DeviceSession.connect(gw.device().keepaliveS(1).build(), DeviceSecret.generate())) {
            long t0 = System.nanoTime();
            GoAwayException e = assertThrows(GoAwayException.class, () -> s.next(6_000));
            assertEquals(GoAway.IDLE_TIMEOUT, e.goAway().reason());
            long ms = (System.nanoTime() - t0) / 1_000_000;
            assertTrue(ms >= 1_400 && ms < 4_000, "idle_timeout after " + ms + " ms, expected 1.5 s (2 s: first check)");
        }
    }

    @Test
    void secondConnectionReplacesTheFirstWhichStops() throws Exception {
        byte[] secret = DeviceSecret.generate();
        Recorder r = new Recorder();
        try (DeviceClient c = DeviceClient.start(gw.device().build(), secret, r)) {
            Recorder.take(r.welcomes, 5_000, "WELCOME");
            try (DeviceSession other = session(secret)) {
                GoAway g = Recorder.take(r.goAways, 5_000, "GOAWAY");
                assertEquals(GoAway.REPLACED, g.reason());
                assertEquals(StopReason.REPLACED, c.awaitStopped(5_000));
                assertEquals(1, c.sessionCount(), "reconnected after replaced");
                // The replacing session is the device now and stays so.
                GatewayProcess.PushResult res = gw.push(other.welcome().tokenHex(), "to the new one");
                assertEquals("delivered", res.status);
                assertEquals(res.msgId, nextNotify(other).msgId());
            }
        }
    }

    @Test
    void unregisterEndsWithGoAwayUnregisteredAndPushesAreRefused() throws Exception {
        byte[] secret = DeviceSecret.generate();
        Recorder r = new Recorder();
        String token;
        try (DeviceClient c = DeviceClient.start(gw.device().build(), secret, r)) {
            token = Recorder.take(r.welcomes, 5_000, "WELCOME").tokenHex();
            c.unregister();
            assertEquals(StopReason.UNREGISTERED, c.awaitStopped(5_000));
            assertEquals(GoAway.UNREGISTERED, Recorder.take(r.goAways, 1_000, "GOAWAY").reason());
            assertEquals(1, c.sessionCount());
        }
        assertEquals("unregistered", gw.push(token, "gone?").status);
        // Registering again with the same secret lifts the tombstone.
        try (DeviceSession s = session(secret)) {
            assertEquals(token, s.welcome().tokenHex());
            assertEquals("delivered", gw.push(token, "back").status);
            assertEquals("back", nextNotify(s).payloadText());
        }
    }

    @Test
    void unknownAppIsAnErrorFrameAndTheClientStops() throws Exception {
        DeviceConfig cfg = DeviceConfig.builder("127.0.0.1", gw.devicePort, "no.such.app").backoff(50, 1_000).build();
        ServerErrorException e = assertThrows(ServerErrorException.class, () -> DeviceSession.connect(cfg, DeviceSecret.generate()));
        assertEquals(ErrorCode.UNKNOWN_APP, e.code());
        assertTrue(e.getMessage().contains("unknown_app"), e.getMessage());
        Recorder r = new Recorder();
        try (DeviceClient c = DeviceClient.start(cfg, DeviceSecret.generate(), r)) {
            assertEquals(StopReason.REFUSED, c.awaitStopped(5_000));
            assertEquals(ErrorCode.UNKNOWN_APP, Recorder.take(r.errors, 1_000, "ERROR").code());
            assertEquals(0, c.sessionCount());
        }
    }
}
