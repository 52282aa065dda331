package io.pushgate;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** A gateway drained with SIGTERM and started again on the same port (durable store, same token key). */
@Timeout(60)
class RestartTest {
    @TempDir
    Path dir;

    @Test
    void clientReconnectsToTheRestartedGatewayAndQueuedNotificationsSurvive() throws Exception {
        byte[] onlineSecret = DeviceSecret.generate();
        byte[] offlineSecret = DeviceSecret.generate();
        Recorder r = new Recorder();
        GatewayProcess first = new GatewayProcess(dir, GatewayProcess.FAST_CONFIG, 0, "durable");
        GatewayProcess second = null;
        try (DeviceClient c = DeviceClient.start(first.device().build(), onlineSecret, r)) {
            String token = Recorder.take(r.welcomes, 5_000, "WELCOME").tokenHex();
            String offlineToken;
            try (DeviceSession s = DeviceSession.connect(first.device().build(), offlineSecret)) {
                offlineToken = s.welcome().tokenHex();
            }
            GatewayProcess.PushResult queued = first.push(offlineToken, "stored before the restart");
            assertEquals("queued", queued.status, queued.raw);

            first.stop(); // SIGTERM: drain
            GoAway g = Recorder.take(r.goAways, 5_000, "GOAWAY");
            assertEquals(GoAway.SHUTDOWN, g.reason());
            assertTrue(g.reconnectMs() <= 200, "hint within drain.spread_ms: " + g);
            assertTrue(Recorder.take(r.delays, 1_000, "reconnect delay") >= g.reconnectMs());
            // Reconnection attempts fail while no gateway listens; then a new one takes the port.
            IOException refused = Recorder.take(r.disconnects, 5_000, "disconnect after GOAWAY");
            assertEquals(GoAwayException.class, refused.getClass());
            Recorder.take(r.disconnects, 5_000, "a failed reconnection attempt");

            second = new GatewayProcess(dir, GatewayProcess.FAST_CONFIG, first.devicePort, "durable");
            Welcome again = Recorder.take(r.welcomes, 10_000, "WELCOME from the new gateway");
            assertEquals(token, again.tokenHex(), "same token key, same token");
            assertEquals(2, c.sessionCount());
            GatewayProcess.PushResult res = second.push(token, "after the restart");
            assertEquals("delivered", res.status, res.raw);
            assertEquals("after the restart", Recorder.take(r.notifications, 5_000, "notification").payloadText());

            try (DeviceSession s = DeviceSession.connect(second.device().build(), offlineSecret)) {
                Notification n = GatewayTest.nextNotify(s);
                assertEquals(queued.msgId, n.msgId());
                assertEquals("stored before the restart", n.payloadText());
            }
        } finally {
            first.close();
            if (second != null) {
                second.close();
            }
        }
    }
}
