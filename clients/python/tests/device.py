"""Test-only device client, written from protocol.md section 4.1.

It speaks HELLO / WELCOME, receives NOTIFY and TOPIC_NOTIFY, sends ACK, PING,
SUBSCRIBE / UNSUBSCRIBE and UNREGISTER, and reads GOAWAY / ERROR, so tests
can assert what a device really got.
Every read has a bounded timeout.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from pushgate.wire import DEVICE_MAX_BODY, FrameDecoder, encode_frame

HELLO, WELCOME, PING, PONG, NOTIFY, ACK, GOAWAY, ERROR, UNREGISTER = range(1, 10)
SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE_RESULT, TOPIC_NOTIFY = 0x0A, 0x0B, 0x0C, 0x0D


@dataclass
class Notify:
    msg_id: int
    kind: int
    priority: int
    payload: bytes


@dataclass
class TopicNotify:
    msg_id: int
    kind: int
    priority: int
    topic: str
    payload: bytes


@dataclass
class SubscribeResult:
    req_id: int
    status: int


@dataclass
class GoAwayFrame:
    reason: int
    reconnect_ms: int


class DeviceError(Exception):
    """The gateway sent ERROR."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__("ERROR %d: %s" % (code, text))
        self.code = code


class DeviceRefused(ConnectionError):
    """The gateway answered HELLO with GOAWAY."""

    def __init__(self, reason: int, reconnect_ms: int) -> None:
        super().__init__("GOAWAY %d instead of WELCOME" % reason)
        self.reason, self.reconnect_ms = reason, reconnect_ms


class Device:
    """One device connection. ``secret`` defaults to 32 fresh random bytes."""

    def __init__(self, addr: Tuple[str, int], app_id: str = "demo", secret: Optional[bytes] = None,
                 keepalive_s: int = 0, timeout: float = 10.0) -> None:
        self.secret = secret if secret is not None else os.urandom(32)
        self.app_id = app_id
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.timeout = timeout
        self.decoder = FrameDecoder(DEVICE_MAX_BODY)
        app = app_id.encode()
        body = struct.pack(">BHB", 1, keepalive_s, len(app)) + app + bytes([len(self.secret)]) + self.secret
        self.sock.sendall(encode_frame(HELLO, body))
        ftype, body = self.read_frame()
        if ftype == ERROR:
            self.sock.close()
            raise DeviceError(body[0], body[1:].decode())
        if ftype == GOAWAY:  # e.g. a draining node or server_full, instead of WELCOME
            self.sock.close()
            raise DeviceRefused(*struct.unpack(">BI", body))
        assert ftype == WELCOME, "expected WELCOME, got 0x%02x" % ftype
        assert len(body) == 30
        self.token: str = body[:24].hex()
        self.heartbeat_s, self.missed = struct.unpack(">HI", body[24:])
        self._req_id = 0

    def read_frame(self, timeout: Optional[float] = None) -> Tuple[int, bytes]:
        """The next frame; raises socket.timeout / TimeoutError after ``timeout``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            f = self.decoder.next_frame()
            if f is not None:
                return f
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the gateway")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("gateway closed the device connection")
            self.decoder.feed(data)

    def next_event(self, timeout: Optional[float] = None):  # type: ignore[no-untyped-def]
        """A Notify, a TopicNotify, a SubscribeResult, a GoAwayFrame, or "pong";
        raises DeviceError on ERROR."""
        ftype, body = self.read_frame(timeout)
        if ftype == NOTIFY:
            msg_id, kind, prio = struct.unpack_from(">QBB", body)
            return Notify(msg_id, kind, prio, body[10:])
        if ftype == TOPIC_NOTIFY:
            msg_id, kind, prio, t = struct.unpack_from(">QBBB", body)
            return TopicNotify(msg_id, kind, prio, body[11 : 11 + t].decode(), body[11 + t :])
        if ftype == SUBSCRIBE_RESULT:
            return SubscribeResult(*struct.unpack(">HB", body))
        if ftype == GOAWAY:
            return GoAwayFrame(*struct.unpack(">BI", body))
        if ftype == PONG:
            return "pong"
        if ftype == ERROR:
            raise DeviceError(body[0], body[1:].decode())
        raise AssertionError("unexpected device frame 0x%02x" % ftype)

    def recv_notify(self, timeout: Optional[float] = None, ack: bool = True) -> Notify:
        """The next NOTIFY (ACKed unless ``ack=False``)."""
        ev = self.next_event(timeout)
        assert isinstance(ev, Notify), "expected NOTIFY, got %r" % (ev,)
        if ack:
            self.ack(ev.msg_id)
        return ev

    def recv_topic_notify(self, timeout: Optional[float] = None, ack: bool = True) -> TopicNotify:
        """The next TOPIC_NOTIFY (ACKed with the ordinary ACK unless ``ack=False``)."""
        ev = self.next_event(timeout)
        assert isinstance(ev, TopicNotify), "expected TOPIC_NOTIFY, got %r" % (ev,)
        if ack:
            self.ack(ev.msg_id)
        return ev

    def subscribe(self, topic: str, frame: int = SUBSCRIBE) -> int:
        """Sends SUBSCRIBE (or UNSUBSCRIBE) and returns the SUBSCRIBE_RESULT's status."""
        self._req_id += 1
        name = topic.encode()
        self.sock.sendall(encode_frame(frame, struct.pack(">HB", self._req_id, len(name)) + name))
        ev = self.next_event()
        assert isinstance(ev, SubscribeResult) and ev.req_id == self._req_id, ev
        return ev.status

    def unsubscribe(self, topic: str) -> int:
        return self.subscribe(topic, UNSUBSCRIBE)

    def expect_silence(self, seconds: float) -> None:
        """Asserts that no frame arrives within ``seconds``."""
        try:
            ev = self.next_event(seconds)
        except (TimeoutError, socket.timeout):
            return
        raise AssertionError("expected nothing, got %r" % (ev,))

    def ack(self, msg_id: int) -> None:
        self.sock.sendall(encode_frame(ACK, struct.pack(">Q", msg_id)))

    def ping(self) -> None:
        self.sock.sendall(encode_frame(PING))
        assert self.next_event() == "pong"

    def unregister(self) -> GoAwayFrame:
        """Sends UNREGISTER and returns the gateway's GOAWAY (reason 6 once durable)."""
        self.sock.sendall(encode_frame(UNREGISTER))
        ev = self.next_event()
        assert isinstance(ev, GoAwayFrame), ev
        return ev

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
