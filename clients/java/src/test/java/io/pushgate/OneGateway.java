package io.pushgate;

import java.nio.file.Path;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.io.TempDir;

/** A test class sharing one real gateway process (1 s minimum heartbeat) among its tests. */
abstract class OneGateway {
    @TempDir
    static Path dir;
    static GatewayProcess gw;

    @BeforeAll
    static void start() throws Exception {
        gw = new GatewayProcess(dir, GatewayProcess.FAST_CONFIG, 0);
    }

    @AfterAll
    static void stop() throws Exception {
        if (gw != null) {
            gw.close();
            gw = null;
        }
    }
}
