"""FEEDBACK after UNREGISTER (with paging), receipts after ACK, and login failures."""

from __future__ import annotations

import time

import pytest
from device import Device

import pushgate


def now_ms() -> int:
    return int(time.time() * 1000)


def test_feedback_lists_unregistered_device_and_push_says_unregistered(gateway, provider):
    before = now_ms()
    with Device(gateway.device) as dev:
        token = dev.token
        g = dev.unregister()
        assert (g.reason, g.reconnect_ms) == (6, 0)
    after = now_ms()
    fb = provider.feedback(before - 1000)
    assert [e.token for e in fb] == [token]
    assert before - 5 <= fb[0].unregistered_at_ms <= after + 5
    assert provider.feedback(after + 60_000) == []
    r = provider.push(token, b"x")
    assert (r.status, r.status_code, r.msg_id, r.info) == ("unregistered", 8, 0, fb[0].unregistered_at_ms)


def test_feedback_follows_pages(gateway, provider):
    # More than one page (800 entries) of tombstones; 850 connections stay under the
    # default per-source burst (1000) of the gateway's connection rate limit.
    start = now_ms()
    tokens = []
    for _ in range(850):
        with Device(gateway.device) as dev:
            tokens.append(dev.token)
            assert dev.unregister().reason == 6
    fb = provider.feedback(start - 1000, timeout=30)
    assert sorted(e.token for e in fb) == sorted(tokens)
    assert len({e.token for e in fb}) == 850  # no entry twice across pages
    keys = [(e.unregistered_at_ms, e.token) for e in fb]
    assert keys == sorted(keys)  # (time, token) order, oldest first


def test_receipt_after_ack(gateway, provider):
    provider.subscribe_receipts()
    with Device(gateway.device) as dev:
        r = provider.push(dev.token, b"with receipt", receipt=True)
        assert r.status == "delivered"
        assert provider.next_receipt(timeout=0.3) is None  # not ACKed yet
        n = dev.recv_notify(ack=False)
        before = now_ms()
        dev.ack(n.msg_id)
        rc = provider.next_receipt(timeout=10)
        assert rc is not None
        assert (rc.token, rc.msg_id) == (dev.token, r.msg_id)
        assert before - 5 <= rc.acked_at_ms <= now_ms() + 5
        # A push without the flag gives no receipt.
        provider.push(dev.token, b"no receipt")
        dev.recv_notify()
        assert provider.ping() >= 0
        assert provider.take_receipts() == []


def test_receipts_wait_for_a_subscriber(gateway, provider):
    with Device(gateway.device) as dev:
        ids = [provider.push(dev.token, b"%d" % i, receipt=True).msg_id for i in range(3)]
        for _ in ids:
            dev.recv_notify()
        dev.ping()  # the ACKs have been read
    # Nobody subscribed yet: the receipts wait in the gateway, then come to this subscriber.
    got = []
    for rc in provider.receipts(idle_timeout=2):
        got.append(rc.msg_id)
        if len(got) == 3:
            break
    assert sorted(got) == sorted(ids)


def test_auth_failure_raises_auth_failed(gateway):
    with pytest.raises(pushgate.AuthFailed) as e:
        pushgate.Provider(gateway.provider_address, "demo", "not-the-secret", timeout=5)
    assert (e.value.code, e.value.name) == (7, "auth_failed")
    assert isinstance(e.value, pushgate.ServerError)


def test_unknown_app_raises_with_code(gateway):
    with pytest.raises(pushgate.ServerError) as e:
        pushgate.Provider(gateway.provider_address, "no-such-app", gateway.secret, timeout=5)
    assert (e.value.code, e.value.name) == (8, "unknown_app")
    assert not isinstance(e.value, pushgate.AuthFailed)


def test_receipts_for_multi_push(gateway, provider):
    # protocol.md 10.1 allows the receipt flag on MULTI_PUSH (its field table says "send 0").
    provider.subscribe_receipts()
    with Device(gateway.device) as a, Device(gateway.device) as b:
        res = provider.push_many([a.token, b.token], b"both", receipt=True)
        assert [r.status for r in res] == ["delivered", "delivered"]
        a.recv_notify()
        b.recv_notify()
        got = {}
        while len(got) < 2:
            rc = provider.next_receipt(timeout=10)
            assert rc is not None, got
            got[rc.token] = rc.msg_id
        assert got == {a.token: res[0].msg_id, b.token: res[1].msg_id}
