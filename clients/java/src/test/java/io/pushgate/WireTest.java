package io.pushgate;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.util.Arrays;
import org.junit.jupiter.api.Test;

/** The codec against the hex examples of protocol.md. */
class WireTest {
    /** Bytes from hex with optional spaces. */
    static byte[] hex(String s) {
        byte[] b = Hex.decode(s.replace(" ", ""));
        if (b == null) {
            throw new IllegalArgumentException(s);
        }
        return b;
    }

    private static Wire.Frame decode(byte[] frame) throws IOException {
        ByteArrayInputStream in = new ByteArrayInputStream(frame);
        return Wire.readAfterType(in.read(), in);
    }

    @Test
    void lengthExamplesOfSection3() throws IOException {
        int[] lens = {0, 10, 127, 128, 4106, 8192};
        String[] enc = {"00", "0a", "7f", "8001", "8a20", "8040"};
        for (int i = 0; i < lens.length; i++) {
            byte[] frame = Wire.encode(Wire.NOTIFY, new byte[lens[i]]);
            assertArrayEquals(hex("05" + enc[i]), Arrays.copyOf(frame, 1 + enc[i].length() / 2), "length " + lens[i]);
            assertEquals(lens[i], decode(frame).body.length);
        }
    }

    @Test
    void helloExampleOfSection4() {
        byte[] secret = hex("00112233445566778899aabbccddeeff");
        assertArrayEquals(hex("01 25 01 00 00 10 636f6d2e6578616d706c652e63686174 10 00112233445566778899aabbccddeeff"),
                Wire.hello(0, "com.example.chat", secret));
    }

    @Test
    void clientFramesOfSection4() {
        assertArrayEquals(hex("03 00"), Wire.ping());
        assertArrayEquals(hex("09 00"), Wire.unregister());
        assertArrayEquals(hex("06 08 00 00 00 00 00 00 00 01"), Wire.ack(1));
        assertArrayEquals(hex("06 08 ff ff ff ff ff ff ff fe"), Wire.ack(-2L), "u64 above Long.MAX_VALUE");
    }

    @Test
    void welcomeExampleOfSection12() throws IOException {
        Wire.Frame f = decode(hex("02 1e 000d96d7dccbac4ae2e1cfd3e3a243fb4f80167395a9c985 01 2c 00 00 00 02"));
        Welcome w = Wire.welcome(f.body);
        assertEquals("000d96d7dccbac4ae2e1cfd3e3a243fb4f80167395a9c985", w.tokenHex());
        assertEquals(300, w.heartbeatS());
        assertEquals(2, w.missed());
    }

    @Test
    void missedIsUnsigned() throws IOException {
        Wire.Frame f = decode(hex("02 1e 000d96d7dccbac4ae2e1cfd3e3a243fb4f80167395a9c985 ff ff ff ff ff ff"));
        assertEquals(65535, Wire.welcome(f.body).heartbeatS());
        assertEquals(4294967295L, Wire.welcome(f.body).missed());
    }

    @Test
    void notifyExamplesOfSection12() throws IOException {
        Notification n = Wire.notify(decode(hex("05 14 0000000000000011 00 0a 7b226d223a226869227d")).body, id -> { });
        assertEquals(17, n.msgId());
        assertEquals(Notification.KIND_ALERT, n.kind());
        assertEquals(Notification.PRIORITY_HIGH, n.priority());
        assertEquals("{\"m\":\"hi\"}", n.payloadText());
        Notification big = Wire.notify(decode(hex("05 0a ffffffffffffffff 01 05")).body, id -> { });
        assertEquals("18446744073709551615", big.msgIdString());
        assertEquals(0, big.payload().length);
        assertThrows(ProtocolException.class, () -> Wire.notify(hex("0000000000000000 00 0a"), id -> { }), "msg_id 0");
        assertThrows(ProtocolException.class, () -> Wire.notify(hex("0000000000000001 00"), id -> { }), "short body");
    }

    @Test
    void topicFramesOfSection4() throws IOException {
        assertArrayEquals(hex("0a 07 0001 04 6e657773"), Wire.subscribe(true, 1, "news"));
        assertArrayEquals(hex("0b 07 0002 04 6e657773"), Wire.subscribe(false, 2, "news"));
        assertArrayEquals(new int[] {1, SubscriptionStatus.OK}, Wire.subscribeResult(decode(hex("0c 03 0001 00")).body));
        Notification n = Wire.topicNotify(decode(hex("0d 19 4000000000000001 00 0a 04 6e657773 7b226d223a226869227d")).body, id -> { });
        assertEquals((1L << 62) + 1, n.msgId());
        assertEquals("news", n.topic());
        assertTrue(n.isTopic());
        assertEquals(Notification.KIND_ALERT, n.kind());
        assertEquals(Notification.PRIORITY_HIGH, n.priority());
        assertEquals("{\"m\":\"hi\"}", n.payloadText());
        assertEquals(null, Wire.notify(hex("0000000000000001 00 0a"), id -> { }).topic());
        assertThrows(ProtocolException.class, () -> Wire.topicNotify(hex("0000000000000001 00 0a 04 6e657773"), id -> { }),
                "no bit 62: not a topic message id");
        assertThrows(ProtocolException.class, () -> Wire.topicNotify(hex("4000000000000001 00 0a 00 6e"), id -> { }), "topic length 0");
        assertThrows(ProtocolException.class, () -> Wire.topicNotify(hex("4000000000000001 00 0a 05 6e657773"), id -> { }),
                "topic past the body");
        assertThrows(ProtocolException.class, () -> Wire.subscribeResult(hex("0001")));
        assertThrows(IllegalArgumentException.class, () -> Wire.subscribe(true, 1, ""));
        assertThrows(IllegalArgumentException.class, () -> Wire.subscribe(true, 1, "t".repeat(65)));
    }

    @Test
    void goAwayAndErrorExamples() throws IOException {
        GoAway g = Wire.goAway(decode(hex("07 05 01 00 00 07 d0")).body);
        assertEquals(GoAway.SHUTDOWN, g.reason());
        assertEquals(2000, g.reconnectMs());
        assertEquals("shutdown", g.reasonName());
        assertEquals(4294967295L, Wire.goAway(hex("02 ff ff ff ff")).reconnectMs());
        ServerErrorException e = Wire.error(decode(hex("08 2a 05 6672616d6520747970652030783032206e6f7420616c6c6f77656420696e2074686973207374617465")).body);
        assertEquals(ErrorCode.UNEXPECTED_FRAME, e.code());
        assertEquals("frame type 0x02 not allowed in this state", e.text());
        assertThrows(ProtocolException.class, () -> Wire.error(new byte[0]));
        assertThrows(ProtocolException.class, () -> Wire.goAway(new byte[4]));
    }

    @Test
    void badHeadersAreProtocolErrors() {
        assertThrows(ProtocolException.class, () -> decode(hex("05 80 00")), "non-shortest 0");
        assertThrows(ProtocolException.class, () -> decode(hex("05 80 80 80 01")), "fourth length byte");
        assertThrows(ProtocolException.class, () -> decode(hex("05 81 40")), "8193 > DEVICE_MAX_BODY");
        assertThrows(ProtocolException.class, () -> decode(hex("21 00")), "provider-port type");
        assertThrows(ProtocolException.class, () -> decode(hex("0a 00")), "SUBSCRIBE: a device's frame");
        assertThrows(ProtocolException.class, () -> decode(hex("00 00")), "type 0");
        assertThrows(java.io.EOFException.class, () -> decode(hex("05 0a 00")), "truncated body");
    }

    @Test
    void encodeRefusesOversizedBodies() {
        assertThrows(IllegalArgumentException.class, () -> Wire.encode(Wire.NOTIFY, new byte[8193]));
    }
}
