package io.pushgate;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Topics (protocol.md 10.4) against a real gateway, pushed with {@code pushgate push --topic}. */
@Timeout(30)
class TopicsTest extends OneGateway {
    private static final long TOPIC_BIT = 1L << 62;

    /** Every notification (NOTIFY or TOPIC_NOTIFY) {@code s} reads within {@code ms}, unACKed. */
    private static List<Notification> drain(DeviceSession s, long ms) throws Exception {
        List<Notification> got = new ArrayList<>();
        long deadline = System.currentTimeMillis() + ms;
        while (System.currentTimeMillis() < deadline) {
            DeviceSession.Event ev = s.next(Math.max(1, deadline - System.currentTimeMillis()));
            if (ev != null && ev.type() == DeviceSession.Event.Type.NOTIFY) {
                got.add(ev.notification());
            }
        }
        return got;
    }

    @Test
    void aSubscribedClientGetsTheTopicPushWithItsTopicAndAcksIt() throws Exception {
        byte[] secret = DeviceSecret.generate();
        Recorder r = new Recorder();
        long first;
        try (DeviceClient c = DeviceClient.start(gw.device().build(), secret, r)) {
            Recorder.take(r.welcomes, 5_000, "WELCOME");
            assertEquals(SubscriptionStatus.OK, c.subscribe("news"));
            assertEquals(SubscriptionStatus.OK, c.subscribe("news"), "subscribing again is ok");
            GatewayProcess.PushResult res = gw.pushTopic("news", "{\"m\":\"extra\"}", "--kind", "background");
            assertEquals("queued", res.status, res.raw);
            assertTrue((res.msgId & TOPIC_BIT) != 0, res.raw);
            Notification n = Recorder.take(r.notifications, 5_000, "topic notification");
            assertEquals("news", n.topic());
            assertTrue(n.isTopic());
            assertEquals(res.msgId, n.msgId());
            assertEquals(Notification.KIND_BACKGROUND, n.kind());
            assertEquals("{\"m\":\"extra\"}", n.payloadText());
            first = n.msgId();
            // The listener returned for the first before the client read the second: its ACK is out.
            gw.pushTopic("news", "second");
            assertEquals("second", Recorder.take(r.notifications, 5_000, "second topic notification").payloadText());
        }
        try (DeviceSession s = DeviceSession.connect(gw.device().build(), secret)) {
            for (Notification again : drain(s, 1_000)) {
                assertNotEquals(first, again.msgId(), "the ACKed topic message came again");
            }
        }
    }

    @Test
    void aTopicMessageNotAckedIsSentAgainOnTheNextSessionAndNotOnceAcked() throws Exception {
        byte[] secret = DeviceSecret.generate();
        long id;
        try (DeviceSession s = DeviceSession.connect(gw.device().build(), secret)) {
            int req = s.subscribe("scores");
            DeviceSession.Event ev = s.next(5_000);
            assertEquals(DeviceSession.Event.Type.SUBSCRIBE_RESULT, ev.type());
            assertEquals(req, ev.reqId());
            assertEquals(SubscriptionStatus.OK, ev.status());
            id = gw.pushTopic("scores", "1-0").msgId;
            Notification n = GatewayTest.nextNotify(s);
            assertEquals(id, n.msgId());
            assertEquals("scores", n.topic());
        }
        try (DeviceSession s = DeviceSession.connect(gw.device().build(), secret)) {
            Notification n = GatewayTest.nextNotify(s);
            assertEquals(id, n.msgId(), "at least once: the unACKed topic message again");
            assertEquals("scores", n.topic());
            n.ack(); // the ordinary ACK
            s.ping();
            assertEquals(DeviceSession.Event.Type.PONG, s.next(5_000).type());
        }
        try (DeviceSession s = DeviceSession.connect(gw.device().build(), secret)) {
            assertEquals(List.of(), drain(s, 1_000));
        }
    }

    @Test
    void unsubscribeStopsTheTopicsMessages() throws Exception {
        Recorder r = new Recorder();
        try (DeviceClient c = DeviceClient.start(gw.device().build(), DeviceSecret.generate(), r)) {
            Recorder.take(r.welcomes, 5_000, "WELCOME");
            assertEquals(SubscriptionStatus.OK, c.subscribe("weather"));
            gw.pushTopic("weather", "rain");
            assertEquals("rain", Recorder.take(r.notifications, 5_000, "topic notification").payloadText());
            assertEquals(SubscriptionStatus.OK, c.unsubscribe("weather"));
            assertEquals(SubscriptionStatus.OK, c.unsubscribe("weather"), "unsubscribing again is ok");
            assertEquals("queued", gw.pushTopic("weather", "sun").status);
            assertNull(r.notifications.poll(1_000, TimeUnit.MILLISECONDS));
        }
    }

    @Test
    void aBroadcastReachesEveryDeviceWithoutSubscribing() throws Exception {
        // Its own gateway: a broadcast reaches every later device of the app on its first connection.
        try (GatewayProcess own = new GatewayProcess(Files.createDirectories(dir.resolve("broadcast")),
                GatewayProcess.FAST_CONFIG, 0)) {
            Recorder r = new Recorder();
            try (DeviceClient c = DeviceClient.start(own.device().build(), DeviceSecret.generate(), r)) {
                Recorder.take(r.welcomes, 5_000, "WELCOME");
                GatewayProcess.PushResult res = own.pushTopic(Notification.BROADCAST, "v2 is out");
                assertEquals("queued", res.status, res.raw);
                Notification n = Recorder.take(r.notifications, 5_000, "broadcast");
                assertEquals("~all", n.topic());
                assertEquals(res.msgId, n.msgId());
                assertEquals("v2 is out", n.payloadText());
                Recorder later = new Recorder();
                try (DeviceClient d = DeviceClient.start(own.device().build(), DeviceSecret.generate(), later)) {
                    Notification m = Recorder.take(later.notifications, 5_000, "broadcast on a first connection");
                    assertEquals(res.msgId, m.msgId());
                }
            }
        }
    }

    @Test
    void badNamesGiveBadTopic() throws Exception {
        Recorder r = new Recorder();
        try (DeviceClient c = DeviceClient.start(gw.device().build(), DeviceSecret.generate(), r)) {
            Recorder.take(r.welcomes, 5_000, "WELCOME");
            assertEquals(SubscriptionStatus.BAD_TOPIC, c.subscribe("has space"));
            assertEquals(SubscriptionStatus.BAD_TOPIC, c.subscribe("caf\u00e9"));
            assertEquals(SubscriptionStatus.BAD_TOPIC, c.subscribe(Notification.BROADCAST), "~all needs no subscription");
            assertEquals(SubscriptionStatus.BAD_TOPIC, c.unsubscribe("~other"));
            assertEquals("bad_topic", SubscriptionStatus.name(SubscriptionStatus.BAD_TOPIC));
            // A length outside 1..64 would be an ERROR that ends the session: refused before sending.
            assertThrows(IllegalArgumentException.class, () -> c.subscribe(""));
            assertThrows(IllegalArgumentException.class, () -> c.subscribeAsync("t".repeat(65)));
            assertEquals(SubscriptionStatus.OK, c.subscribe("t".repeat(64)));
            assertEquals(1, c.sessionCount());
        }
    }

    @Test
    void subscribeAsyncWorksFromACallbackWhereTheBlockingFormIsRefused() throws Exception {
        CountDownLatch started = new CountDownLatch(1);
        AtomicReference<DeviceClient> client = new AtomicReference<>();
        BlockingQueue<Object> seen = new LinkedBlockingQueue<>();
        Recorder r = new Recorder() {
            @Override
            public void onConnected(Welcome w) {
                super.onConnected(w);
                try {
                    started.await();
                    seen.add(client.get().subscribeAsync("from-callback"));
                    client.get().subscribe("blocking");
                } catch (Exception | Error e) {
                    seen.add(e);
                }
            }
        };
        try (DeviceClient c = DeviceClient.start(gw.device().build(), DeviceSecret.generate(), r)) {
            client.set(c);
            started.countDown();
            CompletableFuture<?> f = (CompletableFuture<?>) Recorder.take(seen, 5_000, "future");
            assertEquals(IllegalStateException.class, Recorder.take(seen, 5_000, "refusal").getClass());
            assertEquals(SubscriptionStatus.OK, f.get(5, TimeUnit.SECONDS));
            gw.pushTopic("from-callback", "hi");
            assertEquals("from-callback", Recorder.take(r.notifications, 5_000, "topic notification").topic());
        }
    }

    @Test
    void aRequestCutOffByABrokenConnectionIsSentOnTheNextSession() throws Exception {
        Recorder r = new Recorder();
        try (DeviceClient c = DeviceClient.start(gw.device().build(), DeviceSecret.generate(), r)) {
            Recorder.take(r.welcomes, 5_000, "WELCOME");
            c.dropConnection();
            CompletableFuture<Integer> f = c.subscribeAsync("after-drop");
            Recorder.take(r.welcomes, 5_000, "second WELCOME");
            assertEquals(SubscriptionStatus.OK, f.get(5, TimeUnit.SECONDS));
            gw.pushTopic("after-drop", "made it");
            assertEquals("made it", Recorder.take(r.notifications, 5_000, "topic notification").payloadText());
        }
    }

    @Test
    void pendingRequestsFailOnceTheClientStops() throws Exception {
        Recorder r = new Recorder();
        DeviceClient c = DeviceClient.start(gw.device().build(), DeviceSecret.generate(), r);
        Recorder.take(r.welcomes, 5_000, "WELCOME");
        c.close();
        assertEquals(StopReason.CLOSED, c.awaitStopped(5_000));
        assertThrows(java.io.IOException.class, () -> c.subscribe("too-late", 1_000));
    }
}
