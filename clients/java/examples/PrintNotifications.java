import io.pushgate.DeviceClient;
import io.pushgate.DeviceConfig;
import io.pushgate.DeviceListener;
import io.pushgate.FileSecretStore;
import io.pushgate.Notification;
import io.pushgate.Welcome;
import java.io.File;

/** Registers as a device of the app "demo" and prints every notification it receives. */
public class PrintNotifications {
    public static void main(String[] args) throws Exception {
        String host = args.length > 0 ? args[0] : "127.0.0.1";
        int port = args.length > 1 ? Integer.parseInt(args[1]) : 7700;
        DeviceConfig config = DeviceConfig.builder(host, port, "demo").build(); // .tls() for a TLS listener
        // On Android: new File(context.getFilesDir(), "pushgate.secret")
        FileSecretStore secret = new FileSecretStore(new File("pushgate-device.secret"));

        DeviceClient client = DeviceClient.start(config, secret, new DeviceListener() {
            @Override
            public void onConnected(Welcome w) {
                System.out.println("token " + w.tokenHex() + " (send it to your backend), heartbeat "
                        + w.heartbeatS() + " s, missed " + w.missed());
            }

            @Override
            public void onNotification(Notification n) {
                // Returns normally, so the client ACKs it (AckMode.AUTO, the default).
                System.out.println("[msg " + n.msgIdString() + "] kind " + n.kind() + ": " + n.payloadText());
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(client::close));
        System.out.println("stopped: " + client.awaitStopped(Long.MAX_VALUE));
    }
}
