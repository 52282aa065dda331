"""The codec against protocol.md's own examples: hex frames, varint lengths, the auth proof."""

from __future__ import annotations

import re
import struct
from typing import List, Tuple

import pytest
from gateway import REPO

from pushgate import wire
from pushgate.auth import auth_proof
from pushgate.errors import ProtocolError

DOC = (REPO / "protocol.md").read_text()


def blocks(tag: str) -> List[str]:
    return re.findall(r"```%s\n(.*?)```" % re.escape(tag), DOC, re.S)


def hex_bytes(block: str) -> bytes:
    return bytes.fromhex(" ".join(line.split("#", 1)[0] for line in block.splitlines()))


def frames(tag: str, max_body: int) -> List[Tuple[int, bytes, bytes]]:
    """(type, body, raw frame) of every frame in every block with this tag."""
    out = []
    for b in blocks(tag):
        data = hex_bytes(b)
        dec = wire.FrameDecoder(max_body)
        dec.feed(data)
        pos = 0
        while dec.buffered():
            f = dec.next_frame()
            assert f is not None, "partial frame in protocol.md block:\n" + b
            hdr = 1 + len(wire.encode_varint(len(f[1])))
            out.append((f[0], f[1], data[pos : pos + hdr + len(f[1])]))
            pos += hdr + len(f[1])
    return out


PROVIDER = frames("hex provider", wire.PROVIDER_MAX_BODY)


def test_doc_has_provider_examples():
    assert len(PROVIDER) >= 15
    assert len(frames("hex device", wire.DEVICE_MAX_BODY)) >= 10


def test_length_examples():
    (block,) = blocks("text length-examples")
    for line in block.strip().splitlines():
        n, enc = line.split("=")
        assert wire.encode_varint(int(n)) == bytes.fromhex(enc), line
        dec = wire.FrameDecoder(1 << 21)
        dec.feed(b"\x26" + bytes.fromhex(enc) + bytes(int(n)))
        assert dec.next_frame() == (0x26, bytes(int(n)))


def test_auth_example():
    (block,) = blocks("text auth-example")
    kv = dict(re.findall(r"(\w+)\s*=\s*(\S+)", block))
    assert auth_proof(kv["app_secret"], kv["app_id"], bytes.fromhex(kv["nonce"])) == bytes.fromhex(kv["proof"])


@pytest.mark.parametrize("ftype,body,raw", PROVIDER, ids=lambda v: "%02x" % v if isinstance(v, int) else "")
def test_provider_example_frames(ftype, body, raw):
    """Client frames re-encode byte for byte; gateway frames parse."""
    if ftype == wire.AUTH_HELLO:
        assert wire.encode_auth_hello(body[2:].decode()) == raw
    elif ftype == wire.AUTH:
        assert wire.encode_auth(body) == raw
    elif ftype == wire.PUSH:
        req_id, = struct.unpack_from(">I", body)
        kind, prio, flags, expiry, c = struct.unpack_from(">BBBIB", body, 28)
        assert wire.encode_push(req_id, body[4:28], kind, prio, flags, expiry, body[36 : 36 + c], body[36 + c :]) == raw
    elif ftype == wire.MULTI_PUSH:
        req_id, n = struct.unpack_from(">IH", body)
        toks = [body[6 + 24 * i : 30 + 24 * i] for i in range(n)]
        off = 6 + 24 * n
        kind, prio, flags, expiry, c = struct.unpack_from(">BBBIB", body, off)
        note = body[off + 8 :]
        assert wire.encode_multi_push(req_id, toks, kind, prio, flags, expiry, note[:c], note[c:]) == raw
    elif ftype == wire.FEEDBACK:
        req_id, since = struct.unpack_from(">IQ", body)
        assert wire.encode_feedback(req_id, since, body[12:]) == raw
    elif ftype == wire.PUSH_TOPIC:
        req_id, t = struct.unpack_from(">IB", body)
        kind, prio, flags, expiry, c = struct.unpack_from(">BBBIB", body, 5 + t)
        note = body[13 + t :]
        assert wire.encode_push_topic(req_id, body[5 : 5 + t], kind, prio, flags, expiry, note[:c], note[c:]) == raw
    elif ftype == wire.TOPIC_MANAGE:
        req_id, op, t = struct.unpack_from(">IBB", body)
        (n,) = struct.unpack_from(">H", body, 6 + t)
        toks = [body[8 + t + 24 * i : 32 + t + 24 * i] for i in range(n)]
        assert wire.encode_topic_manage(req_id, op == 1, body[6 : 6 + t], toks) == raw
    elif ftype == wire.TOPIC_STATS:
        req_id, msg_id = struct.unpack(">IQ", body)
        assert wire.encode_topic_stats(req_id, msg_id) == raw
    elif ftype == wire.TOPIC_MANAGE_RESULT:
        assert wire.parse_topic_manage_result(body) == (9, [0, 4])
    elif ftype == wire.TOPIC_STATS_RESULT:
        assert wire.parse_topic_stats_result(body) == (10, True, 3, 2)
    elif ftype == wire.PING:
        assert wire.encode_ping() == raw
    elif ftype == wire.SUBSCRIBE_RECEIPTS:
        assert wire.encode_subscribe_receipts() == raw
    elif ftype == wire.CHALLENGE:
        assert len(wire.parse_challenge(body)) == 32
    elif ftype == wire.AUTH_OK:
        assert wire.parse_auth_ok(body) == 1024
    elif ftype == wire.RESULT:
        req_id, status, msg_id, info = wire.parse_result(body)
        assert req_id in (1, 2, 7, 8)
        if req_id == 8:  # the PUSH_TOPIC's: a topic message id has bit 62 set
            assert (status, msg_id) == (1, (1 << 62) + 1)
    elif ftype == wire.MULTI_RESULT:
        assert wire.parse_multi_result(body) == (3, [(0, 20), (4, 0)])
    elif ftype == wire.FEEDBACK_RESULT:
        req_id, more, entries = wire.parse_feedback_result(body)
        assert (req_id, more, entries[0][1]) == (5, False, 1798761612345)
    elif ftype == wire.RECEIPT:
        assert wire.parse_receipt(body)[1:] == (20, 1798761601234)
    elif ftype == wire.ERROR:
        assert wire.parse_error(body) == (7, "authentication failed")
    elif ftype == wire.PONG:
        wire.parse_empty(body, "PONG")
    elif ftype == wire.GOAWAY:
        wire.parse_goaway(body)
    else:
        pytest.fail("provider example of unexpected type 0x%02x" % ftype)


@pytest.mark.parametrize("data", [b"\x26\x80\x00", b"\x26\x80\x80\x80\x01", b"\x26\x81\x80\x02"])
def test_decoder_refuses_bad_lengths(data):
    dec = wire.FrameDecoder()
    dec.feed(data)
    with pytest.raises(ProtocolError):
        dec.next_frame()


def test_decoder_waits_for_partial_frames():
    frame = wire.encode_frame(wire.RESULT, bytes(21))
    dec = wire.FrameDecoder()
    for i in range(len(frame) - 1):
        dec.feed(frame[i : i + 1])
        assert dec.next_frame() is None
    dec.feed(frame[-1:])
    assert dec.next_frame() == (wire.RESULT, bytes(21))


def test_encoder_refuses_what_the_gateway_would_reject():
    with pytest.raises(ValueError):
        wire.encode_multi_push(1, [], 0, 10, 0, 0, b"", b"")
    with pytest.raises(ValueError):
        wire.encode_multi_push(1, [bytes(24)] * 1001, 0, 10, 0, 0, b"", b"")
    with pytest.raises(ValueError):
        wire.encode_push(1, bytes(24), 0, 10, 0, 0, b"", bytes(wire.PROVIDER_MAX_BODY))
    with pytest.raises(ValueError):
        wire.encode_auth_hello("")
    for name in (b"", b"t" * 65):
        with pytest.raises(ValueError):
            wire.encode_push_topic(1, name, 0, 10, 0, 0, b"", b"")
        with pytest.raises(ValueError):
            wire.encode_topic_manage(1, True, name, [bytes(24)])
    with pytest.raises(ValueError):
        wire.encode_topic_manage(1, True, b"news", [])
    with pytest.raises(ValueError):
        wire.encode_topic_manage(1, True, b"news", [bytes(24)] * 1001)


def test_topic_answers_that_do_not_match_their_table_are_refused():
    with pytest.raises(ProtocolError):
        wire.parse_topic_manage_result(struct.pack(">IH", 9, 2) + b"\x00")
    with pytest.raises(ProtocolError):
        wire.parse_topic_stats_result(struct.pack(">IBQQ", 10, 2, 0, 0))
    with pytest.raises(ProtocolError):
        wire.parse_topic_stats_result(bytes(20))
