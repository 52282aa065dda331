"""Framing and frame bodies of the provider port (protocol.md sections 3 and 4).

A frame is ``type:u8 | length:varint | body``. The varint is 7 bits per byte,
least significant group first, at most 3 bytes, shortest form only. All body
integers are big-endian. This module is pure (no sockets): ``encode_*``
functions build frames as bytes, ``FrameDecoder`` splits a byte stream into
``(type, body)`` pairs, and ``parse_*`` functions decode bodies, raising
``ProtocolError`` on anything that does not match its field table.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Tuple

from .errors import ProtocolError

VERSION = 1

PING = 0x03
PONG = 0x04
GOAWAY = 0x07
ERROR = 0x08
AUTH_HELLO = 0x21
CHALLENGE = 0x22
AUTH = 0x23
AUTH_OK = 0x24
PUSH = 0x25
RESULT = 0x26
MULTI_PUSH = 0x27
MULTI_RESULT = 0x28
FEEDBACK = 0x29
FEEDBACK_RESULT = 0x2A
RECEIPT = 0x2B
SUBSCRIBE_RECEIPTS = 0x2C
PUSH_TOPIC = 0x2D
TOPIC_MANAGE = 0x2E
TOPIC_MANAGE_RESULT = 0x2F
TOPIC_STATS = 0x30
TOPIC_STATS_RESULT = 0x31

#: Types a gateway may send on the provider port.
GATEWAY_TYPES = frozenset(
    {
        PONG, GOAWAY, ERROR, CHALLENGE, AUTH_OK, RESULT, MULTI_RESULT, FEEDBACK_RESULT, RECEIPT,
        TOPIC_MANAGE_RESULT, TOPIC_STATS_RESULT,
    }
)

PROVIDER_MAX_BODY = 32768
DEVICE_MAX_BODY = 8192
MAX_VARINT = (1 << 21) - 1
TOKEN_LEN = 24
NONCE_LEN = 32
MAX_PAYLOAD = 4096
MAX_COLLAPSE = 64
MAX_MULTI = 1000
FLAG_RECEIPT = 0x01
#: Fixed bytes of a MULTI_PUSH body besides tokens, collapse id and payload.
MULTI_FIXED = 4 + 2 + 1 + 1 + 1 + 4 + 1
#: Fixed bytes of a PUSH body besides collapse id and payload.
PUSH_FIXED = 4 + TOKEN_LEN + 1 + 1 + 1 + 4 + 1
MAX_TOPIC = 64
#: Fixed bytes of a TOPIC_MANAGE body besides the topic name and the tokens.
TOPIC_MANAGE_FIXED = 4 + 1 + 1 + 2


def encode_varint(n: int) -> bytes:
    """The header length bytes for a body of ``n`` bytes (shortest form)."""
    if not 0 <= n <= MAX_VARINT:
        raise ValueError("frame length %d out of range" % n)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_frame(ftype: int, body: bytes = b"", max_body: int = PROVIDER_MAX_BODY) -> bytes:
    """One complete frame. Refuses bodies above the port maximum."""
    if len(body) > max_body:
        raise ValueError("frame body of %d bytes exceeds the port maximum %d" % (len(body), max_body))
    return bytes([ftype]) + encode_varint(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frames; feed bytes, then pop frames.

    ``next_frame`` returns ``(type, body)`` or ``None`` when more bytes are
    needed. It raises ``ProtocolError`` for a bad length encoding or a body
    above ``max_body`` as soon as the header is complete, without waiting for
    the body (section 3).
    """

    def __init__(self, max_body: int = PROVIDER_MAX_BODY) -> None:
        self.max_body = max_body
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buf)

    def next_frame(self) -> Optional[Tuple[int, bytes]]:
        buf = self._buf
        if len(buf) < 2:
            return None
        length = 0
        pos = 1
        for i in range(3):
            if pos >= len(buf):
                return None
            b = buf[pos]
            pos += 1
            length |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if i > 0 and b == 0:
                    raise ProtocolError("non-shortest frame length encoding")
                break
        else:
            raise ProtocolError("frame length longer than 3 bytes")
        if length > self.max_body:
            raise ProtocolError(
                "frame type 0x%02x announces a %d-byte body, above the port maximum %d"
                % (buf[0], length, self.max_body)
            )
        if len(buf) < pos + length:
            return None
        ftype = buf[0]
        body = bytes(buf[pos : pos + length])
        del buf[: pos + length]
        return ftype, body


def _exact(body: bytes, n: int, name: str) -> None:
    if len(body) != n:
        raise ProtocolError("%s body is %d bytes, expected %d" % (name, len(body), n))


# ---- provider -> gateway ----------------------------------------------------


def encode_auth_hello(app_id: str) -> bytes:
    raw = app_id.encode("ascii")
    if not 1 <= len(raw) <= 64:
        raise ValueError("app id must be 1..64 bytes")
    return encode_frame(AUTH_HELLO, bytes([VERSION, len(raw)]) + raw)


def encode_auth(proof: bytes) -> bytes:
    if len(proof) != 32:
        raise ValueError("proof must be 32 bytes")
    return encode_frame(AUTH, proof)


def _note_tail(kind: int, priority: int, flags: int, expiry: int, collapse: bytes, payload: bytes) -> bytes:
    if len(collapse) > MAX_COLLAPSE:
        raise ValueError("collapse id longer than %d bytes" % MAX_COLLAPSE)
    if not (0 <= kind <= 255 and 0 <= priority <= 255 and 0 <= expiry <= 0xFFFFFFFF):
        raise ValueError("kind and priority are u8, expiry is u32 unix seconds")
    return struct.pack(">BBBIB", kind, priority, flags, expiry, len(collapse)) + collapse + payload


def encode_push(
    req_id: int, token: bytes, kind: int, priority: int, flags: int, expiry: int, collapse: bytes, payload: bytes
) -> bytes:
    if len(token) != TOKEN_LEN:
        raise ValueError("a token is %d bytes" % TOKEN_LEN)
    body = struct.pack(">I", req_id) + token + _note_tail(kind, priority, flags, expiry, collapse, payload)
    return encode_frame(PUSH, body)


def encode_multi_push(
    req_id: int,
    tokens: List[bytes],
    kind: int,
    priority: int,
    flags: int,
    expiry: int,
    collapse: bytes,
    payload: bytes,
) -> bytes:
    if not 1 <= len(tokens) <= MAX_MULTI:
        raise ValueError("a MULTI_PUSH carries 1..%d tokens, not %d" % (MAX_MULTI, len(tokens)))
    for t in tokens:
        if len(t) != TOKEN_LEN:
            raise ValueError("a token is %d bytes" % TOKEN_LEN)
    body = (
        struct.pack(">IH", req_id, len(tokens))
        + b"".join(tokens)
        + _note_tail(kind, priority, flags, expiry, collapse, payload)
    )
    return encode_frame(MULTI_PUSH, body)


def encode_feedback(req_id: int, since_ms: int, after: bytes = bytes(TOKEN_LEN)) -> bytes:
    if len(after) != TOKEN_LEN:
        raise ValueError("a token is %d bytes" % TOKEN_LEN)
    return encode_frame(FEEDBACK, struct.pack(">IQ", req_id, since_ms) + after)


def _topic(name: bytes) -> bytes:
    """The topic field: length byte and name. Only the length is checked here: a
    gateway answers a bad byte with ``bad_topic``, but a bad length with ERROR."""
    if not 1 <= len(name) <= MAX_TOPIC:
        raise ValueError("a topic name is 1..%d bytes, not %d" % (MAX_TOPIC, len(name)))
    return bytes([len(name)]) + name


def encode_push_topic(
    req_id: int, topic: bytes, kind: int, priority: int, flags: int, expiry: int, collapse: bytes, payload: bytes
) -> bytes:
    body = struct.pack(">I", req_id) + _topic(topic) + _note_tail(kind, priority, flags, expiry, collapse, payload)
    return encode_frame(PUSH_TOPIC, body)


def encode_topic_manage(req_id: int, add: bool, topic: bytes, tokens: List[bytes]) -> bytes:
    if not 1 <= len(tokens) <= MAX_MULTI:
        raise ValueError("a TOPIC_MANAGE carries 1..%d tokens, not %d" % (MAX_MULTI, len(tokens)))
    for t in tokens:
        if len(t) != TOKEN_LEN:
            raise ValueError("a token is %d bytes" % TOKEN_LEN)
    body = struct.pack(">IB", req_id, int(add)) + _topic(topic) + struct.pack(">H", len(tokens)) + b"".join(tokens)
    return encode_frame(TOPIC_MANAGE, body)


def encode_topic_stats(req_id: int, msg_id: int) -> bytes:
    return encode_frame(TOPIC_STATS, struct.pack(">IQ", req_id, msg_id))


def encode_ping() -> bytes:
    return encode_frame(PING)


def encode_subscribe_receipts() -> bytes:
    return encode_frame(SUBSCRIBE_RECEIPTS)


# ---- gateway -> provider ----------------------------------------------------


def parse_challenge(body: bytes) -> bytes:
    _exact(body, NONCE_LEN, "CHALLENGE")
    return body


def parse_auth_ok(body: bytes) -> int:
    """max_in_flight."""
    _exact(body, 4, "AUTH_OK")
    return int(struct.unpack(">I", body)[0])


def parse_result(body: bytes) -> Tuple[int, int, int, int]:
    """(req_id, status, msg_id, info)."""
    _exact(body, 21, "RESULT")
    return struct.unpack(">IBQQ", body)


def parse_multi_result(body: bytes) -> Tuple[int, List[Tuple[int, int]]]:
    """(req_id, [(status, msg_id), ...])."""
    if len(body) < 6:
        raise ProtocolError("MULTI_RESULT body is %d bytes, expected at least 6" % len(body))
    req_id, n = struct.unpack_from(">IH", body)
    _exact(body, 6 + 9 * n, "MULTI_RESULT")
    entries = [struct.unpack_from(">BQ", body, 6 + 9 * i) for i in range(n)]
    return req_id, entries


def parse_feedback_result(body: bytes) -> Tuple[int, bool, List[Tuple[bytes, int]]]:
    """(req_id, more, [(token, unregistered_at_ms), ...])."""
    if len(body) < 7:
        raise ProtocolError("FEEDBACK_RESULT body is %d bytes, expected at least 7" % len(body))
    req_id, more, n = struct.unpack_from(">IBH", body)
    if more > 1:
        raise ProtocolError("FEEDBACK_RESULT more byte is %d" % more)
    _exact(body, 7 + 32 * n, "FEEDBACK_RESULT")
    entries = []
    for i in range(n):
        off = 7 + 32 * i
        entries.append((body[off : off + TOKEN_LEN], struct.unpack_from(">Q", body, off + TOKEN_LEN)[0]))
    return req_id, bool(more), entries


def parse_receipt(body: bytes) -> Tuple[bytes, int, int]:
    """(token, msg_id, acked_at_ms)."""
    _exact(body, 40, "RECEIPT")
    return body[:TOKEN_LEN], *struct.unpack_from(">QQ", body, TOKEN_LEN)


def parse_topic_manage_result(body: bytes) -> Tuple[int, List[int]]:
    """(req_id, [subscription status, ...])."""
    if len(body) < 6:
        raise ProtocolError("TOPIC_MANAGE_RESULT body is %d bytes, expected at least 6" % len(body))
    req_id, n = struct.unpack_from(">IH", body)
    _exact(body, 6 + n, "TOPIC_MANAGE_RESULT")
    return req_id, list(body[6:])


def parse_topic_stats_result(body: bytes) -> Tuple[int, bool, int, int]:
    """(req_id, known, sent, acked)."""
    _exact(body, 21, "TOPIC_STATS_RESULT")
    req_id, known, sent, acked = struct.unpack(">IBQQ", body)
    if known > 1:
        raise ProtocolError("TOPIC_STATS_RESULT known byte is %d" % known)
    return req_id, bool(known), sent, acked


def parse_goaway(body: bytes) -> Tuple[int, int]:
    """(reason, reconnect_ms)."""
    _exact(body, 5, "GOAWAY")
    return struct.unpack(">BI", body)


def parse_error(body: bytes) -> Tuple[int, str]:
    """(code, text); the text is for logs only."""
    if not 1 <= len(body) <= 201:
        raise ProtocolError("ERROR body is %d bytes, expected 1..201" % len(body))
    return body[0], body[1:].decode("utf-8", "replace")


def parse_empty(body: bytes, name: str) -> None:
    _exact(body, 0, name)
