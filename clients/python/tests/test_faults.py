"""Bad, partial or hostile gateway replies (scripted fake gateway): nothing hangs, errors carry codes,
and after GOAWAY exactly the unanswered requests are re-sent."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from fakegw import SECRET, FakeGateway, Peer

import pushgate
from pushgate import wire

TOKEN = bytes(range(24))
T2 = bytes(range(1, 25))


def until_eof(p: Peer) -> None:
    while p.read() is not None:
        pass


def connect(gw: FakeGateway, **kw) -> pushgate.Provider:
    kw.setdefault("timeout", 5)
    return pushgate.Provider(gw.address, "demo", SECRET, **kw)


@pytest.fixture
def fake(request):
    made = []

    def make(*scripts):
        gw = FakeGateway(*scripts)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.close()


def test_partial_result_times_out(fake):
    def script(p):
        p.login()
        req_id, _, _ = p.read_push()
        full = wire.encode_frame(wire.RESULT, struct.pack(">IBQQ", req_id, 0, 1, 0))
        p.send(full[:9])  # header and part of the body, then silence
        until_eof(p)

    gw = fake(script)
    prov = connect(gw)
    start = time.monotonic()
    with pytest.raises(pushgate.Timeout):
        prov.push(TOKEN, b"x", timeout=0.5)
    assert 0.45 < time.monotonic() - start < 3
    prov.close()
    gw.check()


def test_silent_gateway_during_login_times_out(fake):
    def script(p):
        p.expect(wire.AUTH_HELLO)
        until_eof(p)

    gw = fake(script)
    start = time.monotonic()
    with pytest.raises(pushgate.Timeout):
        connect(gw, connect_timeout=0.5)
    assert time.monotonic() - start < 3
    gw.check()


def test_unknown_frame_type_is_a_protocol_error(fake):
    def script(p):
        p.login()
        p.read_push()
        p.frame(0x0A, b"")
        until_eof(p)

    gw = fake(script)
    prov = connect(gw, reconnect=False)
    with pytest.raises(pushgate.ProtocolError):
        prov.push(TOKEN, b"x")
    with pytest.raises(pushgate.ConnectionLost):
        prov.ping()  # closed, and does not hang
    gw.check()


def test_oversized_length_fails_without_waiting_for_the_body(fake):
    def script(p):
        p.login()
        p.read_push()
        p.send(bytes([wire.RESULT]) + wire.encode_varint(40000))
        until_eof(p)

    gw = fake(script)
    prov = connect(gw, reconnect=False)
    start = time.monotonic()
    with pytest.raises(pushgate.ProtocolError, match="above the port maximum"):
        prov.push(TOKEN, b"x", timeout=5)
    assert time.monotonic() - start < 1
    gw.check()


@pytest.mark.parametrize(
    "reply",
    [
        wire.encode_frame(wire.RESULT, struct.pack(">IBQQ", 999, 0, 1, 0)),  # nobody asked for 999
        wire.encode_frame(wire.RESULT, struct.pack(">IBQ", 1, 0, 1)),  # short body
        wire.encode_frame(wire.MULTI_RESULT, struct.pack(">IH", 1, 0)),  # answer of the wrong kind
        bytes([wire.RESULT, 0x80, 0x00]),  # non-shortest length
    ],
)
def test_malformed_replies_are_protocol_errors(fake, reply):
    def script(p):
        p.login()
        p.read_push()
        p.send(reply)
        until_eof(p)

    gw = fake(script)
    prov = connect(gw, reconnect=False)
    with pytest.raises(pushgate.ProtocolError):
        prov.push(TOKEN, b"x")
    gw.check()


def test_multi_result_with_wrong_entry_count(fake):
    def script(p):
        p.login()
        body = p.expect(wire.MULTI_PUSH)
        req_id, n = struct.unpack_from(">IH", body)
        assert n == 2
        p.frame(wire.MULTI_RESULT, struct.pack(">IH", req_id, 1) + struct.pack(">BQ", 0, 5))
        until_eof(p)

    gw = fake(script)
    prov = connect(gw, reconnect=False)
    with pytest.raises(pushgate.ProtocolError, match="1 entries for 2 tokens"):
        prov.push_many([TOKEN, T2], b"x")
    gw.check()


def test_error_frame_raises_with_code_and_closes(fake):
    def script(p):
        p.login()
        p.read_push()
        p.frame(wire.ERROR, bytes([2]) + b"bad body")

    gw = fake(script)
    prov = connect(gw)
    with pytest.raises(pushgate.ServerError) as e:
        prov.push(TOKEN, b"x")
    assert (e.value.code, e.value.name, e.value.text) == (2, "malformed_frame", "bad body")
    with pytest.raises(pushgate.ServerError):
        prov.ping()  # the provider stays failed; no reconnect after ERROR
    gw.check()
    assert gw.accepted == 1


def test_goaway_resends_exactly_the_unanswered_requests(fake):
    seen2 = []

    def first(p):
        p.login(max_in_flight=8)
        assert p.expect(wire.SUBSCRIBE_RECEIPTS) == b""
        reqs = [p.read_push() for _ in range(3)]
        assert [r[2] for r in reqs] == [b"a", b"b", b"c"]
        p.result(reqs[1][0], msg_id=2**60 + 2)  # b answered, a and c not
        p.goaway(1, 1200)  # longer than the first backoff step (0..1 s) can be

    def second(p):
        p.login(max_in_flight=8)
        assert p.expect(wire.SUBSCRIBE_RECEIPTS) == b""  # subscription renewed
        for _ in range(2):
            req_id, tok, payload = p.read_push()
            seen2.append(payload)
            p.result(req_id, status=1, msg_id=2**63 + len(seen2))
        until_eof(p)

    gw = fake(first, second)
    prov = connect(gw)
    prov.subscribe_receipts()
    start = time.monotonic()
    res = prov.push_all([pushgate.Notification(TOKEN, p) for p in (b"a", b"b", b"c")])
    assert time.monotonic() - start >= 1.2  # the reconnect_ms hint was honoured
    assert seen2 == [b"a", b"c"]  # only the unanswered ones, in their order
    assert [(r.status, r.msg_id) for r in res] == [("queued", 2**63 + 1), ("delivered", 2**60 + 2), ("queued", 2**63 + 2)]
    assert prov.reconnects == 1
    prov.close()
    gw.check()


def test_goaway_without_reconnect_raises(fake):
    def script(p):
        p.login()
        p.read_push()
        p.goaway(1, 0)

    gw = fake(script)
    prov = connect(gw, reconnect=False)
    with pytest.raises(pushgate.GoAway) as e:
        prov.push(TOKEN, b"x")
    assert (e.value.reason, e.value.name) == (1, "shutdown")
    gw.check()


def test_goaway_replaced_is_never_retried(fake):
    def script(p):
        p.login()
        p.read_push()
        p.goaway(2, 0)

    gw = fake(script, until_eof)
    prov = connect(gw)
    with pytest.raises(pushgate.GoAway) as e:
        prov.push(TOKEN, b"x")
    assert e.value.name == "replaced"
    prov.close()
    assert gw.accepted == 1


def test_reset_without_goaway_reports_unknown_outcome_and_does_not_resend(fake):
    second_saw = []

    def first(p):
        p.login()
        a = p.read_push()
        p.read_push()
        p.result(a[0])
        p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST

    def second(p):
        p.login()
        req_id, _, payload = p.read_push()
        second_saw.append(payload)
        p.result(req_id, msg_id=77)
        until_eof(p)

    gw = fake(first, second)
    prov = connect(gw)
    with pytest.raises(pushgate.ConnectionLost) as e:
        prov.push_all([pushgate.Notification(TOKEN, b"1"), pushgate.Notification(TOKEN, b"2")])
    assert len(e.value.unanswered) == 1
    # How far the call got: "1" answered, "2" sent with no answer (unknown), nothing unsent.
    assert [r and r.msg_id for r in e.value.results] == [1, None]
    assert e.value.unsent == []
    # The next call connects again; "2" is not re-sent behind the caller's back.
    assert prov.push(TOKEN, b"3").msg_id == 77
    assert second_saw == [b"3"]
    prov.close()
    gw.check()


def test_gateway_that_stops_reading_cannot_deadlock_the_writer(fake):
    # The fake reads nothing after login while the client writes far more than the socket buffers hold.
    def script(p):
        p.login(max_in_flight=1000)
        time.sleep(1.5)
        until_eof(p)

    gw = fake(script)
    prov = connect(gw, reconnect=False)
    big = b"x" * 32000  # 1000 frames of ~32 KB: far more than loopback socket buffers take
    start = time.monotonic()
    with pytest.raises(pushgate.Timeout) as e:
        prov.push_all([pushgate.Notification(TOKEN, big) for _ in range(1000)], timeout=0.7)
    assert time.monotonic() - start < 3
    assert e.value.results == [None] * 1000
    assert 0 < len(e.value.unsent) < 1000 and e.value.unsent == list(range(1000 - len(e.value.unsent), 1000))
    prov.close()
    gw.check()


def test_ping_replaces_a_silently_closed_connection(fake):
    def first(p):
        p.login()
        # closes without GOAWAY

    def second(p):
        p.login()
        p.expect(wire.PING)
        p.frame(wire.PONG)
        until_eof(p)

    gw = fake(first, second)
    prov = connect(gw)  # the first connection is closed right after AUTH_OK
    assert prov.ping() >= 0
    assert gw.accepted == 2
    prov.close()
    gw.check()


def test_connection_refused_is_connection_lost_and_tried_again_on_next_call(fake):
    gw = fake(lambda p: p.login())
    prov = connect(gw)
    gw.check()  # the only connection is closed (no GOAWAY) ...
    gw.close()  # ... and nobody listens any more
    for _ in range(2):  # each call tries again rather than sticking to a stale error
        with pytest.raises(pushgate.ConnectionLost, match="cannot connect"):
            prov.push(TOKEN, b"x")


def test_out_of_range_fields_are_value_errors(provider):
    for kw in ({"kind": 256}, {"priority": -1}, {"expiry": 2**32}):
        with pytest.raises(ValueError):
            provider.push("00" * 24, b"x", **kw)
    assert provider.ping() >= 0


def test_connection_closed_while_idle_is_replaced_before_a_push(fake):
    second_saw = []

    def second(p):
        p.login()
        req_id, _, payload = p.read_push()
        second_saw.append(payload)
        p.result(req_id, msg_id=2**64 - 1)
        until_eof(p)

    first_closed = threading.Event()

    def first(p):
        p.login()
        p.close()  # without GOAWAY, while the client is idle
        first_closed.set()

    gw = fake(first, second)
    prov = connect(gw)
    assert first_closed.wait(5)
    r = prov.push(TOKEN, b"x")
    assert (r.status, r.msg_id, second_saw) == ("delivered", 2**64 - 1, [b"x"])
    prov.close()
    gw.check()
