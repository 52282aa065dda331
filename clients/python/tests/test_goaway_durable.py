"""GOAWAY from a really draining gateway (SIGTERM), a rolling restart, and the durable store."""

from __future__ import annotations

import time

import pytest
from device import Device, GoAwayFrame
from gateway import Gateway

import pushgate


def test_sigterm_gives_goaway_shutdown(gateway):
    prov = pushgate.Provider(gateway.provider_address, "demo", gateway.secret, reconnect=False, timeout=10)
    assert prov.ping() >= 0
    with Device(gateway.device) as dev:
        gateway.sigterm()
        ev = dev.next_event(timeout=10)
        assert isinstance(ev, GoAwayFrame) and ev.reason == 1  # devices get GOAWAY shutdown too
        assert gateway.wait() == 0  # drained and exited: our GOAWAY was sent before
    with pytest.raises(pushgate.GoAway) as e:
        prov.push(dev.token, b"x")
    assert (e.value.reason, e.value.name) == (1, "shutdown")
    with pytest.raises(pushgate.GoAway):
        prov.ping()  # stays failed, no hang


def test_goaway_reconnect_gives_up_when_the_gateway_stays_down(gateway):
    prov = pushgate.Provider(gateway.provider_address, "demo", gateway.secret, reconnect_timeout=1.5, timeout=10)
    gateway.sigterm()
    gateway.wait()
    start = time.monotonic()
    with pytest.raises(pushgate.GoAway) as e:
        prov.ping()
    assert e.value.name == "shutdown" and "reconnect failed" in str(e.value)
    assert time.monotonic() - start < 5


def test_rolling_restart_is_transparent_with_the_durable_store(tmp_path):
    data = tmp_path / "data"
    a = Gateway(data, store=None)  # the default store: durable
    device_at, provider_at = "%s:%d" % a.device, a.provider_address
    b = None
    try:
        prov = pushgate.Provider(provider_at, "demo", a.secret, timeout=20, reconnect_timeout=20)
        secret = b"d" * 32
        with Device(a.device, secret=secret) as dev:
            token = dev.token
            first = prov.push(token, b"before")
            assert first.status == "delivered"
            assert dev.recv_notify(ack=False).payload == b"before"  # read, never ACKed
            a.sigterm()
            assert isinstance(dev.next_event(), GoAwayFrame)
        assert a.wait() == 0
        # Offline now and the node is down: this push waits in the client for the new node.
        b = Gateway(data, store=None, device_listen=device_at, provider_listen=provider_at)
        assert b.secret == a.secret and b.provider == a.provider
        r = prov.push(token, b"after restart")
        assert prov.reconnects == 1
        assert r.status == "queued"
        with Device(b.device, secret=secret) as dev:
            assert dev.token == token  # same token key in the data dir
            got = [dev.recv_notify(), dev.recv_notify()]
            # The unACKed one survived the restart on disk, then the new one, in order.
            assert [(n.msg_id, n.payload) for n in got] == [(first.msg_id, b"before"), (r.msg_id, b"after restart")]
        prov.close()
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_durable_store_keeps_queued_notifications_across_restart(tmp_path):
    data = tmp_path / "data"
    a = Gateway(data, store="durable")
    try:
        with Device(a.device, secret=b"q" * 32) as dev:
            token = dev.token
        with pushgate.Provider(a.provider_address, "demo", a.secret, timeout=20) as prov:
            deadline = time.monotonic() + 10
            while prov.push(token, b"probe", expiry=0).status == "delivered":
                assert time.monotonic() < deadline
            res = prov.push_many([token], b"kept")
            assert res[0].status == "queued"
    finally:
        a.stop()
    b = Gateway(data, store="durable")
    try:
        with Device(b.device, secret=b"q" * 32) as dev:
            assert dev.token == token
            n = dev.recv_notify()
            assert (n.msg_id, n.payload) == (res[0].msg_id, b"kept")
    finally:
        b.stop()
