package io.pushgate;

import java.io.ByteArrayOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;

/** Frame codec of protocol.md section 3 and the device-port bodies of section 4.1. */
final class Wire {
    static final int HELLO = 0x01;
    static final int WELCOME = 0x02;
    static final int PING = 0x03;
    static final int PONG = 0x04;
    static final int NOTIFY = 0x05;
    static final int ACK = 0x06;
    static final int GOAWAY = 0x07;
    static final int ERROR = 0x08;
    static final int UNREGISTER = 0x09;
    static final int SUBSCRIBE = 0x0a;
    static final int UNSUBSCRIBE = 0x0b;
    static final int SUBSCRIBE_RESULT = 0x0c;
    static final int TOPIC_NOTIFY = 0x0d;

    /** DEVICE_MAX_BODY: the device port's largest body, both directions. */
    static final int MAX_BODY = 8192;
    static final int VERSION = 1;
    static final int TOKEN_LEN = 24;
    /** A topic name is 1..64 bytes (section 4, common field rules). */
    static final int MAX_TOPIC = 64;
    /** Bit 62 of a msg_id: set on every topic message id, never on a direct one (section 10.4). */
    static final long TOPIC_ID_BIT = 1L << 62;

    private Wire() {}

    /** One frame as read from the wire. */
    static final class Frame {
        final int type;
        final byte[] body;

        Frame(int type, byte[] body) {
            this.type = type;
            this.body = body;
        }
    }

    /** The complete frame bytes: type, varint length, body. */
    static byte[] encode(int type, byte[] body) {
        if (body.length > MAX_BODY) {
            throw new IllegalArgumentException("body of " + body.length + " bytes above " + MAX_BODY);
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream(body.length + 4);
        out.write(type);
        int len = body.length;
        do {
            int b = len & 0x7f;
            len >>>= 7;
            out.write(len != 0 ? b | 0x80 : b);
        } while (len != 0);
        out.write(body, 0, body.length);
        return out.toByteArray();
    }

    /**
     * Reads the rest of a frame whose type byte was already read: length (at most 3 bytes, shortest
     * form, at most 8192) and body. Unknown or client-only types are refused before the body is read.
     */
    static Frame readAfterType(int type, InputStream in) throws IOException {
        if (type != WELCOME && type != PONG && type != NOTIFY && type != GOAWAY && type != ERROR
                && type != SUBSCRIBE_RESULT && type != TOPIC_NOTIFY) {
            throw new ProtocolException(String.format("frame type 0x%02x is not one a gateway sends on the device port", type));
        }
        int len = 0;
        int n = 0;
        int b;
        do {
            b = in.read();
            if (b < 0) {
                throw new EOFException("connection closed inside a frame header");
            }
            if (++n > 3) {
                throw new ProtocolException("frame length longer than 3 bytes");
            }
            len |= (b & 0x7f) << (7 * (n - 1));
        } while ((b & 0x80) != 0);
        if (n > 1 && b == 0) {
            throw new ProtocolException("frame length not in its shortest form");
        }
        if (len > MAX_BODY) {
            throw new ProtocolException("frame body of " + len + " bytes above the device port maximum " + MAX_BODY);
        }
        byte[] body = new byte[len];
        int off = 0;
        while (off < len) {
            int r = in.read(body, off, len - off);
            if (r < 0) {
                throw new EOFException("connection closed inside a frame body");
            }
            off += r;
        }
        return new Frame(type, body);
    }

    static byte[] hello(int keepaliveS, String appId, byte[] secret) {
        byte[] app = appId.getBytes(StandardCharsets.US_ASCII);
        byte[] body = new byte[5 + app.length + secret.length];
        body[0] = VERSION;
        body[1] = (byte) (keepaliveS >>> 8);
        body[2] = (byte) keepaliveS;
        body[3] = (byte) app.length;
        System.arraycopy(app, 0, body, 4, app.length);
        body[4 + app.length] = (byte) secret.length;
        System.arraycopy(secret, 0, body, 5 + app.length, secret.length);
        return encode(HELLO, body);
    }

    static byte[] ack(long msgId) {
        byte[] body = new byte[8];
        putU64(body, 0, msgId);
        return encode(ACK, body);
    }

    static byte[] ping() {
        return encode(PING, new byte[0]);
    }

    static byte[] unregister() {
        return encode(UNREGISTER, new byte[0]);
    }

    /**
     * SUBSCRIBE or UNSUBSCRIBE ({@code subscribe} false). Only the name's length is checked here
     * (1..64 UTF-8 bytes, else {@link IllegalArgumentException}): the gateway answers another length
     * with ERROR, but a bad byte with status bad_topic.
     */
    static byte[] subscribe(boolean subscribe, int reqId, String topic) {
        byte[] name = topicBytes(topic);
        byte[] body = new byte[3 + name.length];
        body[0] = (byte) (reqId >>> 8);
        body[1] = (byte) reqId;
        body[2] = (byte) name.length;
        System.arraycopy(name, 0, body, 3, name.length);
        return encode(subscribe ? SUBSCRIBE : UNSUBSCRIBE, body);
    }

    static byte[] topicBytes(String topic) {
        byte[] name = topic.getBytes(StandardCharsets.UTF_8);
        if (name.length < 1 || name.length > MAX_TOPIC) {
            throw new IllegalArgumentException("a topic name is 1.." + MAX_TOPIC + " bytes, not " + name.length);
        }
        return name;
    }

    /** A SUBSCRIBE_RESULT body: {req_id, status}. */
    static int[] subscribeResult(byte[] body) throws ProtocolException {
        exact("SUBSCRIBE_RESULT", body, 3);
        return new int[] {u16(body, 0), body[2] & 0xff};
    }

    static Welcome welcome(byte[] body) throws ProtocolException {
        exact("WELCOME", body, 30);
        byte[] token = new byte[TOKEN_LEN];
        System.arraycopy(body, 0, token, 0, TOKEN_LEN);
        return new Welcome(token, u16(body, 24), u32(body, 26));
    }

    static Notification notify(byte[] body, Notification.Acker acker) throws ProtocolException {
        if (body.length < 10) {
            throw new ProtocolException("NOTIFY body of " + body.length + " bytes, at least 10 expected");
        }
        long msgId = u64(body, 0);
        if (msgId == 0) {
            throw new ProtocolException("NOTIFY with msg_id 0");
        }
        byte[] payload = new byte[body.length - 10];
        System.arraycopy(body, 10, payload, 0, payload.length);
        return new Notification(msgId, body[8] & 0xff, body[9] & 0xff, payload, acker);
    }

    static Notification topicNotify(byte[] body, Notification.Acker acker) throws ProtocolException {
        if (body.length < 12) {
            throw new ProtocolException("TOPIC_NOTIFY body of " + body.length + " bytes, at least 12 expected");
        }
        long msgId = u64(body, 0);
        if ((msgId & TOPIC_ID_BIT) == 0) {
            throw new ProtocolException("TOPIC_NOTIFY with msg_id " + Long.toUnsignedString(msgId) + " (bit 62 not set)");
        }
        int t = body[10] & 0xff;
        if (t < 1 || t > MAX_TOPIC || body.length < 11 + t) {
            throw new ProtocolException("TOPIC_NOTIFY topic length " + t + " in a body of " + body.length + " bytes");
        }
        String topic = new String(body, 11, t, StandardCharsets.UTF_8);
        byte[] payload = new byte[body.length - 11 - t];
        System.arraycopy(body, 11 + t, payload, 0, payload.length);
        return new Notification(msgId, body[8] & 0xff, body[9] & 0xff, topic, payload, acker);
    }

    static GoAway goAway(byte[] body) throws ProtocolException {
        exact("GOAWAY", body, 5);
        return new GoAway(body[0] & 0xff, u32(body, 1));
    }

    static ServerErrorException error(byte[] body) throws ProtocolException {
        if (body.length < 1) {
            throw new ProtocolException("ERROR frame with an empty body");
        }
        return new ServerErrorException(body[0] & 0xff, new String(body, 1, body.length - 1, StandardCharsets.UTF_8));
    }

    static void exact(String what, byte[] body, int len) throws ProtocolException {
        if (body.length != len) {
            throw new ProtocolException(what + " body of " + body.length + " bytes, " + len + " expected");
        }
    }

    static int u16(byte[] b, int off) {
        return ((b[off] & 0xff) << 8) | (b[off + 1] & 0xff);
    }

    static long u32(byte[] b, int off) {
        return ((long) u16(b, off) << 16) | u16(b, off + 2);
    }

    static long u64(byte[] b, int off) {
        return (u32(b, off) << 32) | u32(b, off + 4);
    }

    static void putU64(byte[] b, int off, long v) {
        for (int i = 7; i >= 0; i--) {
            b[off + i] = (byte) v;
            v >>>= 8;
        }
    }
}
