"""MULTI_PUSH and pipelined PUSHes: per-token statuses in order, every result matched to its request."""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, List

from device import Device, Notify
from gateway import Gateway
from test_push import wait_offline

import pushgate
from pushgate import Notification


class Collector(threading.Thread):
    """Reads and ACKs a device's notifications until ``want`` arrived or ``limit`` s passed."""

    def __init__(self, dev: Device, want: int, limit: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.dev, self.want, self.limit = dev, want, limit
        self.got: List[Notify] = []
        self.error: "BaseException | None" = None

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        try:
            while len(self.got) < self.want:
                self.got.append(self.dev.recv_notify(timeout=max(0.01, deadline - time.monotonic())))
        except BaseException as e:  # reported by the test
            self.error = e


def test_multi_push_statuses_in_token_order(gateway, provider):
    with Device(gateway.device, secret=b"off" * 8) as gone:
        offline = gone.token
    wait_offline(provider, offline)
    with Device(gateway.device) as a, Device(gateway.device) as b:
        bogus = os.urandom(24).hex()
        tokens = [a.token, offline, bogus, b.token, a.token]
        res = provider.push_many(tokens, b'{"sync":1}', expiry=0, collapse_id="")
        assert [r.token for r in res] == tokens
        assert [r.status for r in res] == ["delivered", "not_delivered", "bad_token", "delivered", "delivered"]
        assert [r.status_code for r in res] == [0, 4, 2, 0, 0]
        assert res[1].msg_id == res[2].msg_id == 0
        assert res[0].msg_id != res[4].msg_id and all(r.info == 0 for r in res)
        assert [n.msg_id for n in (a.recv_notify(), a.recv_notify())] == [res[0].msg_id, res[4].msg_id]
        assert b.recv_notify().msg_id == res[3].msg_id
    # With an expiry the offline token's copy is stored.
    res = provider.push_many([offline], b"later")
    assert res[0].status == "queued"


def test_multi_push_over_1000_tokens_is_split(gateway, provider):
    with Device(gateway.device) as a:
        bogus = [os.urandom(24) for _ in range(2498)]
        tokens = [a.token] + bogus + [a.token]
        res = provider.push_many(tokens, b"all")
        assert len(res) == 2500
        assert res[0].status == res[-1].status == "delivered"
        assert {r.status for r in res[1:-1]} == {"bad_token"}
        assert [r.token for r in res[1:-1]] == [t.hex() for t in bogus]
        assert provider.peak_in_flight >= 2  # the three MULTI_PUSH frames were pipelined
        assert [a.recv_notify().msg_id, a.recv_notify().msg_id] == [res[0].msg_id, res[-1].msg_id]


def test_5000_pipelined_pushes_each_result_matches_its_request(gateway, provider):
    # 50 devices get 96 each: within the per-device queue cap (100), so none is dropped.
    devices = [Device(gateway.device) for _ in range(50)]
    try:
        # 5000 requests round-robin over the devices; every 25th names a forged
        # token instead and must get bad_token, exactly at its position.
        bad_positions = set(range(7, 5000, 25))
        full: List[Notification] = []
        for i in range(5000):
            if i in bad_positions:
                full.append(Notification(os.urandom(24), b"bad%d" % i))
            else:
                full.append(Notification(devices[i % len(devices)].token, b"n%d" % i))
        expect_bad = sorted(bad_positions)
        collectors = [Collector(d, sum(1 for n in full if n.token == d.token)) for d in devices]
        for c in collectors:
            c.start()
        start = time.monotonic()
        res = provider.push_all(full, timeout=60)
        elapsed = time.monotonic() - start
        assert len(res) == 5000
        assert [i for i, r in enumerate(res) if r.status == "bad_token"] == expect_bad
        for n, r in zip(full, res):
            assert r.token == pushgate.token_bytes(n.token).hex()
        assert all(r.accepted for i, r in enumerate(res) if i not in bad_positions)
        assert 1 < provider.peak_in_flight <= provider.max_in_flight
        # What each device received is exactly what its results said: msg_id -> payload.
        want: Dict[str, Dict[int, bytes]] = {d.token: {} for d in devices}
        for n, r in zip(full, res):
            if r.accepted:
                want[r.token][r.msg_id] = n.payload
        for d, c in zip(devices, collectors):
            c.join(40)
            assert c.error is None, c.error
            assert {n.msg_id: n.payload for n in c.got} == want[d.token]
        print("5000 pushes in %.2f s, peak in flight %d" % (elapsed, provider.peak_in_flight))
    finally:
        for d in devices:
            d.close()


def test_client_honours_a_small_in_flight_window(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text("[limits]\nprovider_max_in_flight = 4\n")
    gw = Gateway(tmp_path / "data", config=cfg)
    try:
        with pushgate.Provider(gw.provider_address, "demo", gw.secret, timeout=20) as p:
            assert p.max_in_flight == 4
            with Device(gw.device) as dev:
                c = Collector(dev, 200)
                c.start()
                res = p.push_all([Notification(dev.token, b"%d" % i) for i in range(200)])
                assert all(r.accepted for r in res)
                assert p.peak_in_flight == 4
                c.join(30)
                assert c.error is None, c.error
                assert sorted(n.msg_id for n in c.got) == sorted(r.msg_id for r in res)
    finally:
        gw.stop()
