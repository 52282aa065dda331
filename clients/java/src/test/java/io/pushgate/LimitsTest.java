package io.pushgate;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** The gateway's admission limits: GOAWAY server_full and rate_limited, then reconnection after the hint. */
@Timeout(30)
class LimitsTest {
    @TempDir
    Path dir;

    @Test
    void serverFullIsRetriedAfterTheHintUntilThereIsRoom() throws Exception {
        try (GatewayProcess gw = new GatewayProcess(Files.createDirectory(dir.resolve("full")),
                GatewayProcess.fastConfig("max_devices = 1\nserver_full_retry_ms = 600\n"), 0)) {
            Recorder r = new Recorder();
            DeviceSession first = DeviceSession.connect(gw.device().build(), DeviceSecret.generate());
            try (DeviceClient c = DeviceClient.start(gw.device().build(), DeviceSecret.generate(), r)) {
                GoAway g = Recorder.take(r.goAways, 5_000, "GOAWAY");
                long refusedAt = System.nanoTime();
                assertEquals(GoAway.SERVER_FULL, g.reason());
                assertEquals(600, g.reconnectMs());
                assertTrue(Recorder.take(r.delays, 1_000, "delay") >= 600);
                first.close(); // room for one device again
                Welcome w = Recorder.take(r.welcomes, 10_000, "WELCOME once there is room");
                assertTrue(System.nanoTime() - refusedAt >= 550_000_000L, "reconnected before the hint");
                assertEquals("delivered", gw.push(w.tokenHex(), "in").status);
                assertEquals("in", Recorder.take(r.notifications, 5_000, "notification").payloadText());
            } finally {
                first.close();
            }
        }
    }

    @Test
    void rateLimitedConnectionIsRetriedAfterTheHint() throws Exception {
        try (GatewayProcess gw = new GatewayProcess(Files.createDirectory(dir.resolve("rate")),
                GatewayProcess.fastConfig("connections_per_source_per_s = 1\nconnections_per_source_burst = 1\n"), 0)) {
            // Use up the allowance: sessions until one is refused (the first ones are admitted).
            java.util.List<DeviceSession> admitted = new java.util.ArrayList<>();
            GoAwayException refused = null;
            try {
                for (int i = 0; i < 5 && refused == null; i++) {
                    try {
                        admitted.add(DeviceSession.connect(gw.device().build(), DeviceSecret.generate()));
                    } catch (GoAwayException e) {
                        refused = e;
                    }
                }
                assertTrue(refused != null, "5 connections at once were all admitted");
                assertEquals(GoAway.RATE_LIMITED, refused.goAway().reason());
                assertTrue(admitted.size() >= 1);
                Recorder r = new Recorder();
                try (DeviceClient c = DeviceClient.start(gw.device().build(), DeviceSecret.generate(), r)) {
                    GoAway g = Recorder.take(r.goAways, 5_000, "GOAWAY");
                    long refusedAt = System.nanoTime();
                    assertEquals(GoAway.RATE_LIMITED, g.reason());
                    assertTrue(g.reconnectMs() > 0 && g.reconnectMs() <= 5_000, g.toString());
                    Recorder.take(r.welcomes, 10_000, "WELCOME after the hint");
                    assertTrue(System.nanoTime() - refusedAt >= (g.reconnectMs() - 50) * 1_000_000, "reconnected before the hint");
                }
            } finally {
                admitted.forEach(DeviceSession::close);
            }
        }
    }
}
