import io.pushgate.DeviceClient;
import io.pushgate.DeviceConfig;
import io.pushgate.FileSecretStore;
import io.pushgate.SubscriptionStatus;
import java.io.File;

/** Subscribes to the topic "news" and prints every topic message, broadcasts ("~all") included. */
public class SubscribeNews {
    public static void main(String[] args) throws Exception {
        String host = args.length > 0 ? args[0] : "127.0.0.1";
        int port = args.length > 1 ? Integer.parseInt(args[1]) : 7700;
        DeviceConfig config = DeviceConfig.builder(host, port, "demo").build();
        FileSecretStore secret = new FileSecretStore(new File("pushgate-device.secret"));

        DeviceClient client = DeviceClient.start(config, secret, n -> {
            if (n.isTopic()) { // a TOPIC_NOTIFY: ACKed and de-duplicated like any notification
                System.out.println("[" + n.topic() + "] " + n.payloadText());
            }
        });
        // Subscriptions are durable: once is enough, not on every connection. This call blocks until
        // the gateway answers, so never make it in a listener callback (there: subscribeAsync).
        int status = client.subscribe("news");
        System.out.println("subscribe news: " + SubscriptionStatus.name(status)); // "ok"
        Runtime.getRuntime().addShutdownHook(new Thread(client::close));
        System.out.println("stopped: " + client.awaitStopped(Long.MAX_VALUE));
    }
}
