"""Topics against the real gateway: push_topic, manage_topic, topic_stats (protocol.md 10.4),
checked on devices that subscribed (or were subscribed) with the raw device client."""

from __future__ import annotations

import time

import pytest
from device import Device
from gateway import Gateway

import pushgate
from pushgate import BROADCAST, KIND_BACKGROUND, PRIORITY_NORMAL

TOPIC_BIT = 1 << 62
DEMO_SECRET = "topics-test-demo-app-secret"
OTHER_SECRET = "topics-test-other-app-secret"


@pytest.fixture
def two_apps(tmp_path):
    """A gateway serving the apps "demo" and "other"."""
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[[apps]]\nid = "demo"\nsecret = "%s"\n\n[[apps]]\nid = "other"\nsecret = "%s"\n' % (DEMO_SECRET, OTHER_SECRET)
    )
    gw = Gateway(tmp_path / "data", store="memory", config=cfg)
    yield gw
    gw.kill()


def forge(token: str) -> str:
    return token[:-2] + ("00" if token[-2:] != "00" else "01")


def stats_when(provider, msg_id, want, limit=5.0):
    """topic_stats until it equals ``want`` (the counts move as devices are written to and ACK)."""
    deadline = time.monotonic() + limit
    while True:
        got = provider.topic_stats(msg_id)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def test_subscribed_device_gets_push_topic_and_others_do_not(gateway, provider):
    with Device(gateway.device) as sub, Device(gateway.device) as other:
        assert sub.subscribe("news") == 0
        r = provider.push_topic("news", b'{"m":"extra"}', kind=KIND_BACKGROUND, priority=PRIORITY_NORMAL)
        assert (r.topic, r.status, r.status_code, r.info) == ("news", "queued", 1, 0)
        assert r.accepted and r.raise_for_status() is r
        assert r.msg_id & TOPIC_BIT and r.msg_id < 1 << 63
        n = sub.recv_topic_notify()
        assert (n.msg_id, n.topic, n.kind, n.priority, n.payload) == (
            r.msg_id, "news", KIND_BACKGROUND, PRIORITY_NORMAL, b'{"m":"extra"}')
        other.expect_silence(0.3)


def test_topic_stats_count_writes_and_acks(gateway, provider):
    with Device(gateway.device) as a, Device(gateway.device) as b:
        assert a.subscribe("scores") == 0 and b.subscribe("scores") == 0
        r = provider.push_topic("scores", "1-0")
        assert r.status == "queued"
        na = a.recv_topic_notify()  # ACKed
        nb = b.recv_topic_notify(ack=False)
        assert na.msg_id == nb.msg_id == r.msg_id
        assert stats_when(provider, r.msg_id, (True, 2, 1)) == (True, 2, 1)
        b.ack(nb.msg_id)
        stats = stats_when(provider, r.msg_id, (True, 2, 2))
        assert stats == (True, 2, 2)
        known, sent, acked = stats
        assert (stats.known, stats.sent, stats.acked) == (known, sent, acked)
    assert provider.topic_stats(TOPIC_BIT + 123456) == (False, 0, 0)


def test_unsubscribed_device_gets_no_more(gateway, provider):
    with Device(gateway.device) as dev:
        assert dev.subscribe("news") == 0
        assert provider.push_topic("news", b"one").status == "queued"
        assert dev.recv_topic_notify().payload == b"one"
        assert dev.unsubscribe("news") == 0
        assert provider.push_topic("news", b"two").status == "queued"
        dev.expect_silence(0.5)


def test_broadcast_reaches_every_device_without_subscribing(gateway, provider):
    with Device(gateway.device) as a, Device(gateway.device) as b:
        r = provider.push_topic(BROADCAST, b"v2 is out")
        assert r.status == "queued" and r.topic == "~all"
        for dev in (a, b):
            n = dev.recv_topic_notify()
            assert (n.msg_id, n.topic, n.payload) == (r.msg_id, "~all", b"v2 is out")


def test_expiry_zero_reaches_connected_subscribers_only(gateway, provider):
    with Device(gateway.device) as dev:
        assert dev.subscribe("live") == 0
        r = provider.push_topic("live", b"now", expiry=0)
        assert r.status == "delivered" and r.msg_id & TOPIC_BIT
        assert dev.recv_topic_notify().msg_id == r.msg_id


def test_bad_names_give_bad_topic(gateway, provider):
    with Device(gateway.device) as dev:
        for name in ("has space", "caf\u00e9", "~other", "a/b"):
            r = provider.push_topic(name, b"x")
            assert (r.status, r.status_code, r.msg_id) == ("bad_topic", 10, 0), name
            with pytest.raises(pushgate.PushRefused) as e:
                r.raise_for_status()
            assert (e.value.status, e.value.topic, e.value.token) == ("bad_topic", name, "")
        for name in ("has space", BROADCAST, "~other"):
            res = provider.manage_topic(name, [dev.token])
            assert [(m.status, m.status_code, m.ok) for m in res] == [("bad_topic", 1, False)], name
        assert dev.subscribe("has space") == 1  # the device's own SUBSCRIBE agrees
        dev.expect_silence(0.3)
    for name in ("", "t" * 65):  # a length outside 1..64 would be an ERROR: refused before sending
        with pytest.raises(ValueError):
            provider.push_topic(name, b"x")
        with pytest.raises(ValueError):
            provider.manage_topic(name, ["00" * 24])
    assert provider.ping() >= 0  # nothing was sent, the session is fine


def test_manage_topic_good_forged_and_other_apps_tokens(two_apps):
    gw = two_apps
    with Device(gw.device) as dev, Device(gw.device, app_id="other") as foreign, \
            pushgate.Provider(gw.provider_address, "demo", DEMO_SECRET) as p:
        res = p.manage_topic("deals", [dev.token, forge(dev.token), foreign.token])
        assert [(m.token, m.status, m.status_code) for m in res] == [
            (dev.token, "ok", 0), (forge(dev.token), "bad_token", 3), (foreign.token, "bad_token", 3)]
        assert [m.ok for m in res] == [True, False, False]
        r = p.push_topic("deals", b"half price")
        assert r.status == "queued"
        assert dev.recv_topic_notify().payload == b"half price"  # added by the provider, not by itself
        foreign.expect_silence(0.3)
        assert [m.status for m in p.manage_topic("deals", [dev.token], add=False)] == ["ok"]
        assert p.push_topic("deals", b"gone").status == "queued"
        dev.expect_silence(0.5)
        with pushgate.Provider(gw.provider_address, "other", OTHER_SECRET) as q:
            # The same name in another app is another topic.
            assert q.manage_topic("deals", [foreign.token, dev.token])[1].status == "bad_token"
            assert q.push_topic("deals", b"other app").status == "queued"
            assert foreign.recv_topic_notify().payload == b"other app"
            dev.expect_silence(0.3)


def test_manage_topic_splits_into_frames_of_1000_tokens(gateway, provider):
    with Device(gateway.device) as dev:
        forged = ["%048x" % i for i in range(1, 2500)]
        tokens = forged[:1200] + [dev.token] + forged[1200:]
        res = provider.manage_topic("big", tokens)
        assert [m.token for m in res] == tokens
        assert [i for i, m in enumerate(res) if m.ok] == [1200]
        assert all(m.status == "bad_token" for i, m in enumerate(res) if i != 1200)
        assert provider.peak_in_flight >= 2  # the three frames were pipelined
        assert provider.manage_topic("big", []) == []
        r = provider.push_topic("big", b"to the one real device")
        assert dev.recv_topic_notify().msg_id == r.msg_id


def test_topic_receipts_with_the_device_token(gateway, provider):
    provider.subscribe_receipts()
    with Device(gateway.device) as dev:
        assert dev.subscribe("news") == 0
        r = provider.push_topic("news", b"with receipt", receipt=True)
        dev.recv_topic_notify()
        rc = provider.next_receipt(timeout=10)
        assert rc is not None and (rc.token, rc.msg_id) == (dev.token, r.msg_id)


def test_direct_and_topic_messages_to_one_device_all_arrive_under_their_ids(gateway, provider):
    """More than the device window (64) of both kinds together: each arrives once, by its msg_id."""
    with Device(gateway.device) as dev:
        assert provider.manage_topic("mixed", [dev.token])[0].ok
        results = []
        for i in range(50):
            results.append(provider.push_topic("mixed", b"t%d" % i))
            results.append(provider.push(dev.token, b"d%d" % i))
        assert all(r.accepted for r in results)
        got = {}
        for _ in range(100):
            ev = dev.next_event()
            dev.ack(ev.msg_id)
            got[ev.msg_id] = ev.payload
        assert got == {r.msg_id: (b"t%d" if i % 2 == 0 else b"d%d") % (i // 2) for i, r in enumerate(results)}
