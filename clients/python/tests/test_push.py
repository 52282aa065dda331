"""PUSH against the real gateway: every status a device can cause, checked on the device too."""

from __future__ import annotations

import time

import pytest
from device import Device

import pushgate
from pushgate import KIND_BACKGROUND, PRIORITY_NORMAL, Notification


def wait_offline(provider, token, limit=10.0):
    """Pushes now-or-never (never stored) until the gateway has seen the device close."""
    deadline = time.monotonic() + limit
    while True:
        r = provider.push(token, b"probe", expiry=0)
        if r.status != "delivered":
            return r
        assert time.monotonic() < deadline, "gateway still sees the device as connected"
        time.sleep(0.01)


def test_delivered_to_online_device(gateway, provider):
    with Device(gateway.device) as dev:
        r = provider.push(dev.token, b'{"m":"hi"}', kind=KIND_BACKGROUND, priority=PRIORITY_NORMAL)
        assert (r.status, r.status_code, r.token) == ("delivered", 0, dev.token)
        assert r.msg_id > 0 and r.info == 0 and r.accepted
        n = dev.recv_notify()
        assert (n.msg_id, n.kind, n.priority, n.payload) == (r.msg_id, KIND_BACKGROUND, PRIORITY_NORMAL, b'{"m":"hi"}')


def test_queued_for_offline_device_then_received_on_connect(gateway, provider):
    secret = b"s" * 32
    with Device(gateway.device, secret=secret) as dev:
        token = dev.token
    wait_offline(provider, token)
    r = provider.push(token, "stored", expiry=pushgate.expiry_in(3600))
    assert r.status == "queued" and r.msg_id > 0
    r2 = provider.push(token, "stored 2")
    assert r2.status == "queued" and r2.msg_id > r.msg_id
    with Device(gateway.device, secret=secret) as dev:
        assert dev.token == token
        got = [dev.recv_notify(), dev.recv_notify()]
        assert [(n.msg_id, n.payload) for n in got] == [(r.msg_id, b"stored"), (r2.msg_id, b"stored 2")]
        dev.expect_silence(0.3)


def test_bad_token(gateway, provider):
    with Device(gateway.device) as dev:
        forged = dev.token[:-2] + ("00" if dev.token[-2:] != "00" else "01")
        r = provider.push(forged, b"x")
        assert (r.status, r.status_code, r.msg_id) == ("bad_token", 2, 0)
        assert not r.accepted
        with pytest.raises(pushgate.PushRefused) as e:
            r.raise_for_status()
        assert (e.value.status, e.value.status_code) == ("bad_token", 2)
        dev.expect_silence(0.3)


def test_payload_too_large(gateway, provider):
    with Device(gateway.device) as dev:
        assert provider.push(dev.token, b"x" * 4096).status == "delivered"
        dev.recv_notify()
        r = provider.push(dev.token, b"x" * 4097)
        assert (r.status, r.status_code, r.msg_id) == ("payload_too_large", 3, 0)
        dev.expect_silence(0.3)


def test_not_delivered_expiry_zero_offline(gateway, provider):
    secret = b"o" * 32
    with Device(gateway.device, secret=secret) as dev:
        token = dev.token
        assert provider.push(token, b"now", expiry=0).status == "delivered"
        dev.recv_notify()
    r = wait_offline(provider, token)
    assert (r.status, r.status_code, r.msg_id) == ("not_delivered", 4, 0)
    with Device(gateway.device, secret=secret) as dev:
        dev.expect_silence(0.5)  # nothing was stored


def test_bad_request_kind(gateway, provider):
    with Device(gateway.device) as dev:
        r = provider.push(dev.token, b"x", kind=7)
        assert (r.status, r.status_code) == ("bad_request", 5)
        r = provider.push(dev.token, b"x", priority=1)
        assert r.status == "bad_request"


def test_collapse_replaces_waiting_notification(gateway, provider):
    secret = b"c" * 32
    with Device(gateway.device, secret=secret) as dev:
        token = dev.token
    wait_offline(provider, token)
    for i in range(3):
        provider.push(token, b"count %d" % i, collapse_id="unread")
    with Device(gateway.device, secret=secret) as dev:
        n = dev.recv_notify()
        assert n.payload == b"count 2"
        dev.expect_silence(0.5)


def test_ping(provider):
    rtt = provider.ping()
    assert 0 <= rtt < 5
    assert provider.ping() >= 0


def test_token_validation(provider):
    with pytest.raises(ValueError):
        provider.push("abc", b"x")
    with pytest.raises(ValueError):
        provider.push(b"\x00" * 23, b"x")
    with pytest.raises(ValueError):
        provider.push("00" * 24, b"x", collapse_id=b"c" * 65)
    assert provider.ping() >= 0  # nothing was sent, the session is fine


def test_notification_dataclass_push_all(gateway, provider):
    with Device(gateway.device) as a, Device(gateway.device) as b:
        res = provider.push_all([Notification(a.token, b"to a"), Notification(b.token, b"to b", expiry=0)])
        assert [(r.token, r.status) for r in res] == [(a.token, "delivered"), (b.token, "delivered")]
        assert a.recv_notify().payload == b"to a"
        assert b.recv_notify().payload == b"to b"
