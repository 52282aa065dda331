"""A real drain in the middle of a pipelined stream: every request gets exactly one result,
and re-sending the unanswered ones after GOAWAY duplicates nothing."""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, List, Set

from device import Device, GoAwayFrame, Notify
from gateway import Gateway

import pushgate
from pushgate import Notification

N = 20000


class Phone(threading.Thread):
    """A device that ACKs everything and reconnects (same secret) after GOAWAY or a close."""

    def __init__(self, addr, secret: bytes, seen: threading.Event, limit: float = 40.0) -> None:
        super().__init__(daemon=True)
        self.addr, self.secret, self.seen, self.limit = addr, secret, seen, limit
        self.dev = Device(addr, secret=secret)
        self.token = self.dev.token
        self.got: Dict[bytes, Set[int]] = {}  # payload -> msg_ids it came with
        self.stop = threading.Event()
        self.error: "BaseException | None" = None

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    ev = self.dev.next_event(timeout=0.2)
                except TimeoutError:
                    continue
                except (ConnectionError, OSError):
                    ev = GoAwayFrame(0, 0)
                if isinstance(ev, Notify):
                    self.got.setdefault(ev.payload, set()).add(ev.msg_id)
                    self.dev.ack(ev.msg_id)
                    self.seen.set()
                elif isinstance(ev, GoAwayFrame):
                    self.dev.close()
                    self.dev = self._reconnect(deadline)
        except BaseException as e:
            self.error = e
        finally:
            self.dev.close()

    def _reconnect(self, deadline: float) -> Device:
        while True:
            try:
                return Device(self.addr, secret=self.secret, timeout=5)
            except (ConnectionError, OSError):  # DeviceRefused included: the old node is draining
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the next node is not up yet: poll for it


def test_drain_mid_stream_loses_and_duplicates_nothing(tmp_path):
    data = tmp_path / "data"
    a = Gateway(data, store=None)
    b = None
    phones: List[Phone] = []
    try:
        seen = threading.Event()
        phones = [Phone(a.device, os.urandom(32), seen) for _ in range(20)]
        for p in phones:
            p.start()
        # N requests; every 20th goes to a phone (50 per phone), the rest name forged tokens.
        notes = []
        for i in range(N):
            token = phones[(i // 20) % 20].token if i % 20 == 0 else os.urandom(24)
            notes.append(Notification(token, b"p%d" % i))
        prov = pushgate.Provider(a.provider_address, "demo", a.secret, timeout=60, reconnect_timeout=30)
        out: Dict[str, object] = {}

        def pusher() -> None:
            try:
                out["res"] = prov.push_all(notes, timeout=60)
            except BaseException as e:
                out["err"] = e

        t = threading.Thread(target=pusher, daemon=True)
        t.start()
        assert seen.wait(20), "no delivery before the drain"
        a.sigterm()
        assert a.wait() == 0
        b = Gateway(data, store=None, device_listen="%s:%d" % a.device, provider_listen=a.provider_address)
        t.join(60)
        assert not t.is_alive()
        assert "err" not in out, out.get("err")
        res: List[pushgate.PushResult] = out["res"]  # type: ignore[assignment]
        # One GOAWAY in the middle of the call, which then went on with the new node.
        assert len(res) == N and prov.reconnects == 1
        statuses = {r.status for i, r in enumerate(res) if i % 20}
        assert statuses <= {"bad_token", "unavailable"}, statuses
        accepted = {n.payload: r for n, r in zip(notes, res) if r.accepted}
        refused = [n.payload for i, (n, r) in enumerate(zip(notes, res)) if i % 20 == 0 and not r.accepted]
        assert all(res[i].status in ("delivered", "queued", "unavailable") for i in range(0, N, 20))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(len(p.got) for p in phones) < len(accepted):
            time.sleep(0.05)  # phones receive on their own threads
        for p in phones:
            p.stop.set()
            p.join(10)
            assert p.error is None, p.error
        got = {payload: ids for p in phones for payload, ids in p.got.items()}
        # Every accepted push arrived, under the one msg_id its result named: none was pushed twice.
        assert {k: {r.msg_id} for k, r in accepted.items()} == got
        assert not set(refused) & set(got)
        print("resent %d, unavailable %d" % (prov.resent, sum(r.status == "unavailable" for r in res)))
        prov.close()
    finally:
        for p in phones:
            p.stop.set()
        a.stop()
        if b is not None:
            b.stop()
