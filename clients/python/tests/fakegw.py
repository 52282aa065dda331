"""Test helper: a scripted fake gateway on 127.0.0.1, for replies the real one never sends.

Each accepted connection runs the next script function ``script(peer)``
in a thread; ``Peer`` has blocking, timeout-bounded helpers to read the
client's frames and write raw bytes or frames back.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Callable, List, Optional, Tuple

from pushgate import wire
from pushgate.auth import auth_proof

SECRET = "fake-secret"
NONCE = bytes(range(32))


class Peer:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        self.decoder = wire.FrameDecoder()

    def read(self) -> Optional[Tuple[int, bytes]]:
        """The client's next frame, or None at EOF."""
        while True:
            f = self.decoder.next_frame()
            if f is not None:
                return f
            data = self.sock.recv(65536)
            if not data:
                return None
            self.decoder.feed(data)

    def expect(self, ftype: int) -> bytes:
        f = self.read()
        assert f is not None and f[0] == ftype, "expected 0x%02x, got %r" % (ftype, f)
        return f[1]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, ftype: int, body: bytes = b"") -> None:
        self.send(wire.encode_frame(ftype, body))

    def login(self, max_in_flight: int = 16) -> None:
        hello = self.expect(wire.AUTH_HELLO)
        app = hello[2:].decode()
        self.frame(wire.CHALLENGE, NONCE)
        proof = self.expect(wire.AUTH)
        assert proof == auth_proof(SECRET, app, NONCE)
        self.frame(wire.AUTH_OK, struct.pack(">I", max_in_flight))

    def read_push(self) -> Tuple[int, bytes, bytes]:
        """(req_id, token, payload) of the next frame, which must be a PUSH."""
        body = self.expect(wire.PUSH)
        c = body[35]
        return struct.unpack(">I", body[:4])[0], body[4:28], body[36 + c :]

    def result(self, req_id: int, status: int = 0, msg_id: int = 1, info: int = 0) -> None:
        self.frame(wire.RESULT, struct.pack(">IBQQ", req_id, status, msg_id, info))

    def goaway(self, reason: int, reconnect_ms: int) -> None:
        self.frame(wire.GOAWAY, struct.pack(">BI", reason, reconnect_ms))

    def close(self) -> None:
        self.sock.close()


class FakeGateway:
    """Serves ``scripts`` in order, one per accepted connection."""

    def __init__(self, *scripts: Callable[[Peer], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(15)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.scripts = list(scripts)
        self.errors: List[BaseException] = []
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for script in self.scripts:
            try:
                sock, _ = self.listener.accept()
            except OSError as e:
                self.errors.append(e)
                return
            self.accepted += 1
            peer = Peer(sock)
            try:
                script(peer)
            except BaseException as e:  # reported by check()
                self.errors.append(e)
            finally:
                peer.close()

    def check(self, timeout: float = 10) -> None:
        """Waits for every script to finish and re-raises the first failure."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "fake gateway scripts did not finish"
        if self.errors:
            raise self.errors[0]

    def close(self) -> None:
        self.listener.close()
