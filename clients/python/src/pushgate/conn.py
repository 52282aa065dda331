"""One non-blocking connection (plain TCP or TLS) with deadline-bounded I/O.

Writes never block the reader: while a write waits for room, whatever the
gateway sends is read into the frame decoder, so a provider that pipelines
can never deadlock against a gateway that stops reading at its in-flight
limit (protocol.md section 9.1). Every wait takes an absolute deadline
(``time.monotonic()``); ``None`` is never used internally.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from typing import Optional, Tuple

from .errors import Timeout
from .wire import PROVIDER_MAX_BODY, FrameDecoder

_CHUNK = 16384


class Closed(Exception):
    """The peer closed the connection or it failed (``cause`` holds the OSError, if any)."""

    def __init__(self, cause: Optional[BaseException] = None) -> None:
        super().__init__(str(cause) if cause else "connection closed by the gateway")
        self.cause = cause


class Conn:
    """A connected socket and its frame decoder."""

    def __init__(
        self,
        host: str,
        port: int,
        connect_timeout: float,
        ssl_context: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        max_body: int = PROVIDER_MAX_BODY,
    ) -> None:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.decoder = FrameDecoder(max_body)
        self.eof: Optional[Closed] = None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- reading ---------------------------------------------------------------

    def _read_available(self) -> bool:
        """Reads what the socket has now; True if bytes arrived. Records EOF."""
        if self.eof is not None:
            return False
        got = False
        while True:
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                return got
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
                self.eof = Closed(e)
                return got
            except OSError as e:
                self.eof = Closed(e)
                return got
            if not data:
                self.eof = Closed()
                return got
            self.decoder.feed(data)
            got = True

    def _pending_tls(self) -> int:
        return self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0

    def poll(self) -> None:
        """Reads whatever has already arrived, without waiting."""
        self._read_available()

    def recv_frame(self, deadline: float) -> Optional[Tuple[int, bytes]]:
        """The next frame, or None when ``deadline`` passes first.

        Raises ``Closed`` once the connection is closed and no complete frame
        is left, and ``ProtocolError`` for undecodable bytes.
        """
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame
            if self.eof is not None:
                raise self.eof
            if self._pending_tls():
                self._read_available()
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], left)
            if r:
                self._read_available()

    # -- writing ---------------------------------------------------------------

    def send(self, data: bytes, deadline: float) -> None:
        """Writes all of ``data``, reading incoming bytes meanwhile.

        Raises ``Timeout`` if the gateway does not take the bytes before
        ``deadline`` and ``Closed`` if the connection fails.
        """
        view = memoryview(data)
        while view:
            if self.eof is not None:
                raise self.eof
            try:
                n = self.sock.send(view[:_CHUNK])
                view = view[n:]
                continue
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                # The gateway may have said GOAWAY or ERROR before closing: keep what it sent.
                self._read_available()
                if self.eof is None:
                    self.eof = Closed(e)
                raise self.eof from e
            left = deadline - time.monotonic()
            if left <= 0:
                err = Timeout("the gateway did not take %d of %d bytes in time" % (len(view), len(data)))
                err.written = len(data) - len(view)
                raise err
            r, w, _ = select.select([self.sock], [self.sock], [], left)
            if r:
                self._read_available()
