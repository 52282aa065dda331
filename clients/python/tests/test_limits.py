"""Gateway limits seen through the client: idle GOAWAY (transparent), rate limiting, server_full."""

from __future__ import annotations

import pytest
from device import Device
from gateway import Gateway

import pushgate


def gateway_with(tmp_path, limits: str) -> Gateway:
    cfg = tmp_path / "gw.toml"
    cfg.write_text("[limits]\n" + limits)
    return Gateway(tmp_path / "data", config=cfg)


def test_idle_goaway_is_followed_by_a_transparent_reconnect(tmp_path):
    # The idle check first runs at the handshake deadline, so shorten that too.
    gw = gateway_with(tmp_path, "provider_idle_s = 1\nhandshake_timeout_ms = 1500\n")
    try:
        with pushgate.Provider(gw.provider_address, "demo", gw.secret, timeout=10) as p:
            # Reading for 3 s: the gateway's GOAWAY idle_timeout arrives after ~1 s of silence,
            # the client logs in again and keeps waiting.
            assert p.next_receipt(timeout=3) is None
            assert p.reconnects >= 1
            with Device(gw.device) as dev:
                assert p.push(dev.token, b"after idle").status == "delivered"
                assert dev.recv_notify().payload == b"after idle"
    finally:
        gw.stop()


def test_idle_goaway_without_reconnect_names_idle_timeout(tmp_path):
    # The idle check first runs at the handshake deadline, so shorten that too.
    gw = gateway_with(tmp_path, "provider_idle_s = 1\nhandshake_timeout_ms = 1500\n")
    try:
        p = pushgate.Provider(gw.provider_address, "demo", gw.secret, timeout=10, reconnect=False)
        with pytest.raises(pushgate.GoAway) as e:
            p.next_receipt(timeout=5)
        assert (e.value.reason, e.value.name) == (3, "idle_timeout")
    finally:
        gw.stop()


def test_rate_limited_status_carries_retry_after(tmp_path):
    gw = gateway_with(tmp_path, "pushes_per_app_per_s = 1\npushes_per_app_burst = 2\n")
    try:
        with pushgate.Provider(gw.provider_address, "demo", gw.secret, timeout=10) as p:
            with Device(gw.device) as dev:
                res = p.push_all([pushgate.Notification(dev.token, b"%d" % i) for i in range(6)])
                limited = [r for r in res if r.status == "rate_limited"]
                assert sum(r.accepted for r in res) >= 1 and limited
                assert all(r.status_code == 6 and r.msg_id == 0 and r.info > 0 for r in limited)
    finally:
        gw.stop()


def test_server_full_goaway_before_challenge(tmp_path):
    gw = gateway_with(tmp_path, "max_connections = 1\nserver_full_retry_ms = 1234\n")
    try:
        with Device(gw.device):
            with pytest.raises(pushgate.GoAway) as e:
                pushgate.Provider(gw.provider_address, "demo", gw.secret, connect_timeout=5)
            assert (e.value.reason, e.value.name, e.value.reconnect_ms) == (4, "server_full", 1234)
    finally:
        gw.stop()
