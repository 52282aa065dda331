package io.pushgate;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.util.Base64;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLHandshakeException;
import javax.net.ssl.SSLPeerUnverifiedException;
import javax.net.ssl.SSLSocketFactory;
import javax.net.ssl.TrustManagerFactory;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** TLS on the gateway's device listener, with a self-signed certificate made by the JDK's keytool. */
@Timeout(60)
class TlsTest {
    @TempDir
    static Path dir;
    static GatewayProcess gw;
    static SSLSocketFactory trusting;

    @BeforeAll
    static void start() throws Exception {
        Path ks = dir.resolve("gw.p12");
        String keytool = Path.of(System.getProperty("java.home"), "bin", "keytool").toString();
        Process p = new ProcessBuilder(keytool, "-genkeypair", "-alias", "gw", "-keyalg", "RSA", "-keysize", "2048",
                "-dname", "CN=localhost", "-ext", "SAN=ip:127.0.0.1,dns:localhost", "-validity", "2",
                "-keystore", ks.toString(), "-storetype", "PKCS12", "-storepass", "changeit", "-keypass", "changeit")
                .redirectErrorStream(true).start();
        assertTrue(p.waitFor(30, TimeUnit.SECONDS), "keytool hung");
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertEquals(0, p.exitValue(), out);
        KeyStore store = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(ks.toFile())) {
            store.load(in, "changeit".toCharArray());
        }
        Certificate cert = store.getCertificate("gw");
        java.security.Key key = store.getKey("gw", "changeit".toCharArray());
        Path certPem = dir.resolve("cert.pem");
        Path keyPem = dir.resolve("key.pem");
        Files.writeString(certPem, pem("CERTIFICATE", cert.getEncoded()));
        Files.writeString(keyPem, pem("PRIVATE KEY", key.getEncoded())); // PKCS#8
        gw = new GatewayProcess(dir, GatewayProcess.FAST_CONFIG + "\n[tls]\ncert = \"" + certPem + "\"\nkey = \"" + keyPem
                + "\"\ndevice = true\n", 0);

        KeyStore trust = KeyStore.getInstance("PKCS12");
        trust.load(null, null);
        trust.setCertificateEntry("gw", cert);
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(null, tmf.getTrustManagers(), null);
        trusting = ctx.getSocketFactory();
    }

    @AfterAll
    static void stop() throws Exception {
        if (gw != null) {
            gw.close();
        }
    }

    private static String pem(String label, byte[] der) {
        return "-----BEGIN " + label + "-----\n" + Base64.getMimeEncoder(64, "\n".getBytes(StandardCharsets.US_ASCII)).encodeToString(der)
                + "\n-----END " + label + "-----\n";
    }

    @Test
    void registersAndReceivesOverTls() throws Exception {
        Recorder r = new Recorder();
        try (DeviceClient c = DeviceClient.start(gw.device().tls(trusting).build(), DeviceSecret.generate(), r)) {
            String token = Recorder.take(r.welcomes, 10_000, "WELCOME over TLS").tokenHex();
            GatewayProcess.PushResult res = gw.push(token, "encrypted");
            assertEquals("delivered", res.status, res.raw);
            assertEquals("encrypted", Recorder.take(r.notifications, 5_000, "notification").payloadText());
            assertEquals(1, c.sessionCount());
        }
    }

    @Test
    void anUntrustedCertificateIsRefused() {
        // The platform trust store does not know the self-signed certificate.
        assertThrows(SSLHandshakeException.class,
                () -> DeviceSession.connect(gw.device().tls().build(), DeviceSecret.generate()).close());
    }

    @Test
    void aHostnameVerifierReplacesEndpointIdentification() {
        assertThrows(SSLPeerUnverifiedException.class, () -> DeviceSession.connect(
                gw.device().tls(trusting).hostnameVerifier((host, session) -> false).build(), DeviceSecret.generate()).close());
    }

    @Test
    void plaintextOnTheTlsPortFailsFast() {
        long t0 = System.nanoTime();
        IOException e = assertThrows(IOException.class, () -> DeviceSession.connect(gw.device().build(), DeviceSecret.generate()).close());
        assertTrue(e instanceof ProtocolException || e instanceof java.io.EOFException || e instanceof java.net.SocketException, e.toString());
        assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(4), "took too long");
    }
}
