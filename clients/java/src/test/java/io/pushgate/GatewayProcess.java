package io.pushgate;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** Test fixture: the real pushgate binary on loopback ports, and its {@code push} CLI. */
final class GatewayProcess implements AutoCloseable {
    private static final Pattern LISTEN = Pattern.compile("devices on 127\\.0\\.0\\.1:(\\d+), providers on (127\\.0\\.0\\.1:\\d+)");
    private static final Pattern SECRET = Pattern.compile("with secret (\\S+)");
    private static final Pattern JSON_STATUS = Pattern.compile("\"status\":\"([a-z_]+)\"");
    private static final Pattern JSON_MSG_ID = Pattern.compile("\"msg_id\":(\\d+)");

    final Path dataDir;
    final Process process;
    final int devicePort;
    final String providerAddr;
    final String appSecret;
    private final List<String> stdout = new ArrayList<>();

    /** The binary: $PUSHGATE_BIN, else target/debug/pushgate of the repository (cwd or two levels up). */
    static String binary() {
        String env = System.getenv("PUSHGATE_BIN");
        if (env != null && !env.isEmpty()) {
            return env;
        }
        for (String p : new String[] {"target/debug/pushgate", "../../target/debug/pushgate"}) {
            if (new File(p).canExecute()) {
                return new File(p).getAbsolutePath();
            }
        }
        throw new IllegalStateException("no gateway binary: set PUSHGATE_BIN or run cargo build");
    }

    /**
     * Starts a gateway with the memory store in {@code dataDir}, the TOML {@code config} (null =
     * none) and the device port {@code devicePort} (0 = any free one); waits up to 15 s for it.
     */
    GatewayProcess(Path dataDir, String config, int devicePort) throws IOException, InterruptedException {
        this(dataDir, config, devicePort, "memory");
    }

    /** As above with {@code store} = "memory" or "durable" (in {@code dataDir}). */
    GatewayProcess(Path dataDir, String config, int devicePort, String store) throws IOException, InterruptedException {
        this.dataDir = dataDir;
        List<String> cmd = new ArrayList<>(List.of(binary(), "serve",
                "--device-listen", "127.0.0.1:" + devicePort, "--provider-listen", "127.0.0.1:0",
                "--admin-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir", dataDir.toString(),
                "--store", store));
        if (config != null) {
            Path cfg = dataDir.resolve("gateway.toml");
            Files.writeString(cfg, config);
            cmd.add("--config");
            cmd.add(cfg.toString());
        }
        ProcessBuilder pb = new ProcessBuilder(cmd);
        pb.redirectError(ProcessBuilder.Redirect.appendTo(dataDir.resolve("gateway.log").toFile()));
        process = pb.start();
        BlockingQueue<String> lines = new LinkedBlockingQueue<>();
        Thread reader = new Thread(() -> {
            try (BufferedReader r = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))) {
                String line;
                while ((line = r.readLine()) != null) {
                    synchronized (stdout) {
                        stdout.add(line);
                    }
                    lines.add(line);
                }
            } catch (IOException ignored) {
                // the process ended
            }
        }, "gateway-stdout");
        reader.setDaemon(true);
        reader.start();
        int port = -1;
        String provider = null;
        String secret = null;
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
        while (true) {
            String line = lines.poll(200, TimeUnit.MILLISECONDS);
            if (line == null && !process.isAlive() && lines.isEmpty()) {
                throw new IOException("gateway exited with " + process.exitValue() + "; stdout " + stdout() + "; log " + log());
            }
            if (line == null && System.nanoTime() < deadline) {
                continue;
            }
            if (line == null) {
                process.destroyForcibly();
                throw new IOException("gateway did not report its admin listener within 15 s; stdout " + stdout()
                        + "; log " + log());
            }
            Matcher m = LISTEN.matcher(line);
            if (m.find()) {
                port = Integer.parseInt(m.group(1));
                provider = m.group(2);
            }
            m = SECRET.matcher(line);
            if (m.find()) {
                secret = m.group(1);
            }
            if (line.contains("pushgate: admin on")) {
                break;
            }
        }
        if (port < 0 || secret == null) {
            process.destroyForcibly();
            throw new IOException("unexpected gateway output: " + stdout());
        }
        this.devicePort = port;
        this.providerAddr = provider;
        this.appSecret = secret;
    }

    /**
     * Config for fast tests: 1 s minimum heartbeat, short drain spread. The handshake timeout is
     * short too because the gateway's first idle check of a device happens at the handshake
     * deadline (see the README's notes on the server), so with the default 10 s a silent device
     * would survive 10 s and the heartbeat test could not fail. At most 3 notifications wait per
     * device, so that the missed count can be tested.
     */
    static final String FAST_CONFIG = fastConfig("");

    /** {@link #FAST_CONFIG} with more lines (newline-terminated) in its {@code [limits]} table. */
    static String fastConfig(String moreLimits) {
        return "[heartbeat]\nmin_s = 1\n\n[limits]\nhandshake_timeout_ms = 2000\ndevice_queue_cap = 3\n" + moreLimits
                + "\n[drain]\nspread_ms = 200\ntimeout_ms = 5000\n";
    }

    /** A device config for the demo app on this gateway, with short test timeouts and backoff. */
    DeviceConfig.Builder device() {
        return DeviceConfig.builder("127.0.0.1", devicePort, "demo")
                .connectTimeoutMs(2_000).handshakeTimeoutMs(5_000).pongTimeoutMs(3_000).backoff(50, 1_000);
    }

    /** The result of one {@code pushgate push --json}. */
    static final class PushResult {
        final String status;
        final long msgId;
        final String raw;

        PushResult(String status, long msgId, String raw) {
            this.status = status;
            this.msgId = msgId;
            this.raw = raw;
        }

        @Override
        public String toString() {
            return raw;
        }
    }

    /** Pushes {@code payload} to {@code tokenHex} with the CLI ({@code extra} flags appended), within 15 s. */
    PushResult push(String tokenHex, String payload, String... extra) throws IOException, InterruptedException {
        return runPush(List.of("--token", tokenHex), payload, extra);
    }

    /** Pushes {@code payload} to {@code topic} ({@code pushgate push --topic}; "~all" broadcasts), within 15 s. */
    PushResult pushTopic(String topic, String payload, String... extra) throws IOException, InterruptedException {
        return runPush(List.of("--topic", topic), payload, extra);
    }

    private PushResult runPush(List<String> target, String payload, String... extra) throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>(List.of(binary(), "push", "--addr", providerAddr, "--app", "demo", "--json"));
        cmd.addAll(target);
        cmd.addAll(List.of(extra));
        cmd.add("--");
        cmd.add(payload);
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        pb.environment().put("PUSHGATE_APP_SECRET", appSecret);
        Process p = pb.start();
        if (!p.waitFor(15, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new IOException("pushgate push did not finish within 15 s");
        }
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
        Matcher s = JSON_STATUS.matcher(out);
        Matcher m = JSON_MSG_ID.matcher(out);
        if (!s.find() || !m.find()) {
            throw new IOException("unexpected push output (exit " + p.exitValue() + "): " + out);
        }
        return new PushResult(s.group(1), Long.parseUnsignedLong(m.group(1)), out);
    }

    /** SIGTERM (the gateway drains: GOAWAY shutdown to every device) and waits up to 10 s for the exit. */
    void stop() throws InterruptedException {
        process.destroy();
        if (!process.waitFor(10, TimeUnit.SECONDS)) {
            process.destroyForcibly();
            process.waitFor(5, TimeUnit.SECONDS);
        }
    }

    String stdout() {
        synchronized (stdout) {
            return String.join("\n", stdout);
        }
    }

    String log() {
        try {
            return Files.readString(dataDir.resolve("gateway.log"));
        } catch (IOException e) {
            return "(no log: " + e + ")";
        }
    }

    @Override
    public void close() throws InterruptedException {
        if (process.isAlive()) {
            stop();
        }
    }
}
