"""The blocking provider client: login, pipelined pushes, topics, feedback, receipts.

``Provider`` holds one authenticated connection for one app. Every call is
bounded by a timeout. Requests (PUSH, MULTI_PUSH, FEEDBACK, PUSH_TOPIC,
TOPIC_MANAGE, TOPIC_STATS) are pipelined up to the gateway's
``max_in_flight`` from AUTH_OK and answers are matched by req_id, so they
may arrive in any order.

What happens when the connection ends, exactly:

* **GOAWAY** ``shutdown``, ``server_full``, ``idle_timeout``,
  ``slow_consumer``, ``rate_limited`` or an unknown reason (with
  ``reconnect=True``, the default): the client closes the socket, waits
  the longer of ``reconnect_ms`` and the full-jitter backoff of section 11.4,
  connects to the same address again, logs in again, sends
  SUBSCRIBE_RECEIPTS again if it had subscribed, and **re-sends every
  request that had not been answered** (every kind alike, with new
  req_ids), then the call continues as if nothing happened.
  This is safe with pushgate because a draining gateway stops reading,
  answers every request it has read, and only then sends GOAWAY: a request
  without an answer at GOAWAY was never read. Reconnecting gives up after
  ``reconnect_timeout`` seconds and raises ``GoAway``. A PING waiting for
  its PONG is sent again on the new connection.
* **GOAWAY** ``replaced`` or ``unregistered`` (device reasons) or
  ``reconnect=False``: raises ``GoAway``; nothing is re-sent.
* **ERROR**: raises ``ServerError`` (``AuthFailed`` for ``auth_failed``);
  the provider is closed for good, nothing is re-sent.
* **The connection breaks without GOAWAY** (reset, EOF): raises
  ``ConnectionLost`` listing the req_ids whose outcome is unknown; they are
  **not** re-sent, because they may have been accepted (section 9.1). The
  next call connects again (with ``reconnect=True``). A connection that is
  found closed at the start of a call, before the call wrote anything, is
  replaced at once (nothing is at stake), and a ``ping`` whose connection
  breaks is retried once on a new connection.
* **Timeout**: raises ``Timeout``; the connection stays open and late
  answers to the abandoned requests are discarded (a write cut short by the
  timeout closes the connection instead, as the stream is then broken).

A push call that fails part-way attaches ``results`` and ``unsent`` to the
exception (see ``PushgateError``).

Statuses such as ``unavailable`` or ``rate_limited`` are results, not errors:
they are returned as they are, never retried by the client.
"""

from __future__ import annotations

import random
import ssl
import struct
import time
from collections import OrderedDict, deque
from typing import Callable, Deque, Iterable, Iterator, List, Optional, Sequence, Tuple, Union, cast

from . import wire
from .auth import auth_proof
from .codes import KIND_ALERT, PRIORITY_HIGH
from .conn import Closed, Conn
from .errors import ConnectionLost, GoAway, ProtocolError, PushgateError, Timeout, server_error
from .types import (
    DEFAULT_TTL_S,
    FeedbackEntry,
    Notification,
    PushResult,
    Receipt,
    TokenLike,
    TopicManageResult,
    TopicResult,
    TopicStats,
    expiry_in,
    token_bytes,
)

#: GOAWAY reasons after which the client never reconnects by itself.
NO_RECONNECT = frozenset({2, 6})
#: Receipts kept for ``take_receipts``; past this the oldest are dropped.
MAX_BUFFERED_RECEIPTS = 100_000

Address = Union[str, Tuple[str, int]]


def parse_address(address: Address) -> Tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or ``(host, port)`` as ``(host, port)``."""
    if isinstance(address, tuple):
        return address[0], int(address[1])
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("address %r is not host:port" % address)
    return host.strip("[]"), int(port)


class _Request:
    """One request frame (PUSH, MULTI_PUSH, FEEDBACK, PUSH_TOPIC, TOPIC_MANAGE,
    TOPIC_STATS): its frame type, body without req_id, and answer."""

    __slots__ = ("ftype", "tail", "tokens", "topic", "reply", "abandoned", "written")

    def __init__(self, ftype: int, tail: bytes, tokens: Sequence[bytes] = (), topic: str = "") -> None:
        self.ftype = ftype
        self.tail = tail
        self.tokens = tokens
        self.topic = topic
        self.reply: object = None
        self.abandoned = False
        #: Ever written to a connection (so its outcome is unknown if unanswered).
        self.written = False

    def frame(self, req_id: int) -> bytes:
        return wire.encode_frame(self.ftype, struct.pack(">I", req_id) + self.tail)


def _payload(p: Union[bytes, bytearray, str]) -> bytes:
    return p.encode("utf-8") if isinstance(p, str) else bytes(p)


def _topic_name(topic: Union[bytes, str]) -> Tuple[bytes, str]:
    """The name's bytes (1..64, else ``ValueError``) and its text for results."""
    raw = _payload(topic)
    if not 1 <= len(raw) <= wire.MAX_TOPIC:
        raise ValueError("a topic name is 1..%d bytes, not %d" % (wire.MAX_TOPIC, len(raw)))
    return raw, topic if isinstance(topic, str) else raw.decode("utf-8", "replace")


class Provider:
    """An authenticated provider connection for one app.

    ``address`` is ``"host:port"`` or ``(host, port)``; ``secret`` the app
    secret as configured on the gateway. ``ssl_context`` turns on TLS
    (``server_hostname`` defaults to the host). ``timeout`` bounds every call
    (seconds), ``connect_timeout`` each connect and login. See the module
    docstring for what ``reconnect`` retries.

    Not thread-safe: use one ``Provider`` per thread (each is one connection).
    """

    def __init__(
        self,
        address: Address,
        app_id: str,
        secret: Union[str, bytes],
        *,
        ssl_context: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        reconnect: bool = True,
        reconnect_timeout: float = 60.0,
    ) -> None:
        self.host, self.port = parse_address(address)
        self.app_id = app_id
        self._secret = secret
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.max_in_flight = 0
        #: How many times the client reconnected after a GOAWAY.
        self.reconnects = 0
        #: The most requests this client has had unanswered at once (diagnostics).
        self.peak_in_flight = 0
        #: Requests re-sent on a new connection after a GOAWAY (diagnostics).
        self.resent = 0
        self._conn: Optional[Conn] = None
        self._broken: Optional[PushgateError] = None
        self._next_id = 1
        self._queue: Deque[_Request] = deque()
        self._sent: "OrderedDict[int, _Request]" = OrderedDict()
        self._receipts: Deque[Receipt] = deque()
        self._subscribed = False
        self._pongs = 0
        self._generation = 0
        self._user_closed = False
        self._conn = self._login()

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> "Provider":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection. Unanswered requests are forgotten."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._user_closed = True
        self._broken = self._broken or ConnectionLost("provider closed")

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._sent)

    def _login(self) -> Conn:
        """Connects and authenticates; returns the ready connection."""
        try:
            conn = Conn(self.host, self.port, self.connect_timeout, self._ssl, self._server_hostname)
        except ssl.SSLError:
            raise
        except OSError as e:
            raise ConnectionLost("cannot connect to %s:%d: %s" % (self.host, self.port, e)) from e
        try:
            deadline = time.monotonic() + self.connect_timeout
            conn.send(wire.encode_auth_hello(self.app_id), deadline)
            nonce = wire.parse_challenge(self._handshake_frame(conn, wire.CHALLENGE, deadline))
            conn.send(wire.encode_auth(auth_proof(self._secret, self.app_id, nonce)), deadline)
            self.max_in_flight = max(1, wire.parse_auth_ok(self._handshake_frame(conn, wire.AUTH_OK, deadline)))
            if self._subscribed:
                conn.send(wire.encode_subscribe_receipts(), deadline)
        except Closed as e:
            conn.close()
            raise ConnectionLost("connection closed during login: %s" % e) from e.cause
        except BaseException:
            conn.close()
            raise
        self._generation += 1
        return conn

    @staticmethod
    def _handshake_frame(conn: Conn, want: int, deadline: float) -> bytes:
        got = conn.recv_frame(deadline)
        if got is None:
            raise Timeout("no %s from the gateway within the connect timeout" % ("CHALLENGE" if want == wire.CHALLENGE else "AUTH_OK"))
        ftype, body = got
        if ftype == want:
            return body
        if ftype == wire.ERROR:
            raise server_error(*wire.parse_error(body))
        if ftype == wire.GOAWAY:
            raise GoAway(*wire.parse_goaway(body), detail="during login")
        raise ProtocolError("unexpected frame type 0x%02x during login" % ftype)

    def _ensure(self) -> Conn:
        if self._conn is not None:
            return self._conn
        if isinstance(self._broken, ConnectionLost) and self.reconnect and not self._user_closed:
            broken, self._broken = self._broken, None
            try:
                self._conn = self._login()
            except ConnectionLost:
                self._broken = broken  # try again on the next call
                raise
            except PushgateError as e:
                self._broken = e
                raise
            return self._conn
        raise self._broken or ConnectionLost("not connected")

    # -- public API ------------------------------------------------------------

    def push(
        self,
        token: TokenLike,
        payload: Union[bytes, str] = b"",
        *,
        kind: int = KIND_ALERT,
        priority: int = PRIORITY_HIGH,
        expiry: Optional[int] = None,
        collapse_id: Union[bytes, str] = b"",
        receipt: bool = False,
        timeout: Optional[float] = None,
    ) -> PushResult:
        """Pushes one notification (PUSH) and waits for its RESULT.

        ``expiry`` is absolute unix seconds, ``0`` for now-or-never, default
        one day from now. ``payload`` and ``collapse_id`` may be ``str`` (UTF-8).
        """
        n = Notification(token, _payload(payload), kind, priority, expiry, _payload(collapse_id), receipt)
        return self.push_all([n], timeout=timeout)[0]

    def push_all(self, notifications: Iterable[Notification], *, timeout: Optional[float] = None) -> List[PushResult]:
        """Pipelines one PUSH per notification, up to ``max_in_flight`` at once.

        Returns one ``PushResult`` per notification, in the order given,
        whatever order the gateway answered in. ``timeout`` bounds the whole call.
        """
        reqs = []
        for n in notifications:
            tok = token_bytes(n.token)
            body = wire.encode_push(
                0, tok, n.kind, n.priority, int(n.receipt), self._expiry(n.expiry),
                _payload(n.collapse_id), _payload(n.payload),
            )
            reqs.append(_Request(wire.PUSH, _tail(body), (tok,)))
        try:
            self._run(reqs, timeout)
        except PushgateError as e:
            e.results = [cast(Optional[PushResult], r.reply) for r in reqs]
            e.unsent = [i for i, r in enumerate(reqs) if not r.written]
            raise
        return [cast(PushResult, r.reply) for r in reqs]

    def push_many(
        self,
        tokens: Iterable[TokenLike],
        payload: Union[bytes, str] = b"",
        *,
        kind: int = KIND_ALERT,
        priority: int = PRIORITY_HIGH,
        expiry: Optional[int] = None,
        collapse_id: Union[bytes, str] = b"",
        receipt: bool = False,
        timeout: Optional[float] = None,
    ) -> List[PushResult]:
        """One notification to many tokens (MULTI_PUSH, up to 1000 tokens a frame).

        Any number of tokens: they are split into as many MULTI_PUSH frames as
        the limits require, pipelined. Returns one ``PushResult`` per token in
        the order given (``info`` is 0: MULTI_RESULT carries none).
        """
        toks = [token_bytes(t) for t in tokens]
        if not toks:
            return []
        payload_b, collapse_b = _payload(payload), _payload(collapse_id)
        room = wire.PROVIDER_MAX_BODY - wire.MULTI_FIXED - len(collapse_b) - len(payload_b)
        per_frame = min(wire.MAX_MULTI, room // wire.TOKEN_LEN)
        if per_frame < 1:
            raise ValueError("payload of %d bytes leaves no room for a token in a frame" % len(payload_b))
        exp = self._expiry(expiry)
        reqs = []
        for i in range(0, len(toks), per_frame):
            chunk = toks[i : i + per_frame]
            body = wire.encode_multi_push(0, chunk, kind, priority, int(receipt), exp, collapse_b, payload_b)
            reqs.append(_Request(wire.MULTI_PUSH, _tail(body), chunk))
        try:
            self._run(reqs, timeout)
        except PushgateError as e:
            e.results, e.unsent = [], []
            for r in reqs:
                if not r.written:
                    e.unsent.extend(range(len(e.results), len(e.results) + len(r.tokens)))
                e.results.extend(cast(List[PushResult], r.reply) if r.reply is not None else [None] * len(r.tokens))
            raise
        return [res for r in reqs for res in cast(List[PushResult], r.reply)]

    def feedback(self, since_ms: int = 0, *, timeout: Optional[float] = None) -> List[FeedbackEntry]:
        """Every token of this app unregistered at or after ``since_ms`` (unix ms),
        oldest first, following the gateway's pages (FEEDBACK)."""
        out: List[FeedbackEntry] = []
        after = bytes(wire.TOKEN_LEN)
        while True:
            req = _Request(wire.FEEDBACK, _tail(wire.encode_feedback(0, since_ms, after)))
            self._run([req], timeout)
            more, entries = cast(Tuple[bool, List[Tuple[bytes, int]]], req.reply)
            out.extend(FeedbackEntry(t.hex(), at) for t, at in entries)
            if not (more and entries):
                return out
            after, since_ms = entries[-1]

    def push_topic(
        self,
        topic: Union[bytes, str],
        payload: Union[bytes, str] = b"",
        *,
        kind: int = KIND_ALERT,
        priority: int = PRIORITY_HIGH,
        expiry: Optional[int] = None,
        collapse_id: Union[bytes, str] = b"",
        receipt: bool = False,
        timeout: Optional[float] = None,
    ) -> TopicResult:
        """Pushes one notification to every device in ``topic`` (PUSH_TOPIC) and
        waits for its RESULT. ``"~all"`` (``pushgate.BROADCAST``) is every device
        of the app. The options are those of ``push``; the collapse id is per topic.

        ``queued`` means the message is in the topic's log; with ``expiry=0``,
        ``delivered`` means it went to the subscribers connected at that moment.
        A name that breaks the rule is answered ``bad_topic``; one outside 1..64
        bytes raises ``ValueError`` before anything is sent.
        """
        raw, name = _topic_name(topic)
        body = wire.encode_push_topic(
            0, raw, kind, priority, int(receipt), self._expiry(expiry), _payload(collapse_id), _payload(payload)
        )
        req = _Request(wire.PUSH_TOPIC, _tail(body), topic=name)
        self._run([req], timeout)
        return cast(TopicResult, req.reply)

    def manage_topic(
        self,
        topic: Union[bytes, str],
        tokens: Iterable[TokenLike],
        add: bool = True,
        *,
        timeout: Optional[float] = None,
    ) -> List[TopicManageResult]:
        """Subscribes (``add=True``) or unsubscribes the devices of ``tokens`` to
        or from ``topic`` (TOPIC_MANAGE), connected or not.

        Any number of tokens: split into frames of 1000, pipelined. Returns one
        ``TopicManageResult`` per token, in the order given, with a subscription
        status (protocol.md 6.5): ``ok``, ``bad_token``, ``unregistered``, ... and
        ``bad_topic`` for every token if the name is refused. Idempotent, so a
        call that failed part-way may simply be made again.
        """
        raw, name = _topic_name(topic)
        toks = [token_bytes(t) for t in tokens]
        if not toks:
            return []
        reqs = []
        for i in range(0, len(toks), wire.MAX_MULTI):
            chunk = toks[i : i + wire.MAX_MULTI]
            reqs.append(_Request(wire.TOPIC_MANAGE, _tail(wire.encode_topic_manage(0, add, raw, chunk)), chunk, name))
        self._run(reqs, timeout)
        return [res for r in reqs for res in cast(List[TopicManageResult], r.reply)]

    def topic_stats(self, msg_id: int, *, timeout: Optional[float] = None) -> TopicStats:
        """``(known, sent, acked)`` for a topic message id from ``push_topic``
        (TOPIC_STATS): this node's counts of TOPIC_NOTIFY frames written and of
        ACKs taken. ``known`` is False once the node has forgotten the id."""
        if not 0 <= msg_id <= 0xFFFFFFFFFFFFFFFF:
            raise ValueError("msg_id %d is not a u64" % msg_id)
        req = _Request(wire.TOPIC_STATS, _tail(wire.encode_topic_stats(0, msg_id)))
        self._run([req], timeout)
        return cast(TopicStats, req.reply)

    def subscribe_receipts(self) -> None:
        """Asks for this app's delivery receipts on this connection (SUBSCRIBE_RECEIPTS).

        Receipts are then collected whenever the client reads; get them with
        ``next_receipt`` or ``take_receipts``. Sent again after a reconnect.
        """
        self._check_alive()
        conn = self._ensure()
        self._subscribed = True
        self._guard(lambda: conn.send(wire.encode_subscribe_receipts(), self._deadline(None)))

    def next_receipt(self, timeout: Optional[float] = None) -> Optional[Receipt]:
        """The next receipt, waiting up to ``timeout`` seconds; None if none came."""
        deadline = self._deadline(timeout)
        while not self._receipts:
            if not self._read_one(deadline):
                return None
        return self._receipts.popleft()

    def receipts(self, idle_timeout: float) -> Iterator[Receipt]:
        """Subscribes (if not yet), then yields receipts as they arrive and
        stops once none has come for ``idle_timeout`` seconds."""
        if not self._subscribed:
            self.subscribe_receipts()
        while True:
            r = self.next_receipt(timeout=idle_timeout)
            if r is None:
                return
            yield r

    def take_receipts(self) -> List[Receipt]:
        """Receipts received so far (without waiting), oldest first; forgets them."""
        self._ensure()
        self._guard(self._drain_available)
        out = list(self._receipts)
        self._receipts.clear()
        return out

    def ping(self, *, timeout: Optional[float] = None) -> float:
        """Sends PING, waits for PONG, returns the round trip in seconds.
        The gateway closes a provider silent for 300 s; ping when idle."""
        deadline = self._deadline(timeout)
        start = time.monotonic()
        try:
            return self._ping(deadline, start)
        except ConnectionLost as e:
            # Nothing was at stake: with reconnect on, a dead connection is replaced once.
            if e.unanswered or not self.reconnect or self._user_closed:
                raise
            return self._ping(deadline, start)

    def _ping(self, deadline: float, start: float) -> float:
        while True:
            self._check_alive()
            conn = self._ensure()
            gen, want = self._generation, self._pongs + 1
            self._guard(lambda: conn.send(wire.encode_ping(), deadline))
            while self._pongs < want and self._generation == gen:
                if not self._read_one(deadline):
                    raise Timeout("no PONG within the timeout")
            if self._generation == gen:
                return time.monotonic() - start

    # -- engine ----------------------------------------------------------------

    def _deadline(self, timeout: Optional[float]) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    @staticmethod
    def _expiry(expiry: Optional[int]) -> int:
        return expiry_in(DEFAULT_TTL_S) if expiry is None else expiry

    def _take_id(self) -> int:
        while True:
            i = self._next_id
            self._next_id = i + 1 if i < 0xFFFFFFFF else 1
            if i not in self._sent:
                return i

    def _run(self, reqs: List[_Request], timeout: Optional[float]) -> None:
        """Queues ``reqs`` and drives the connection until all are answered."""
        deadline = self._deadline(timeout)
        self._check_alive()
        self._queue.extend(reqs)
        try:
            for r in reqs:
                while r.reply is None:
                    self._flush(deadline)
                    if r.reply is None and not self._read_one(deadline):
                        raise Timeout("%d of %d requests unanswered within the timeout" % (
                            sum(1 for x in reqs if x.reply is None), len(reqs)))
        except BaseException:
            for r in reqs:
                r.abandoned = True
            self._queue = deque(r for r in self._queue if not r.abandoned)
            raise

    def _check_alive(self) -> None:
        """Files what already arrived (a GOAWAY, say) before anything is written.

        A connection found closed here had nothing of this call at stake, so
        with ``reconnect`` on it is replaced at once instead of raising.
        """
        self._ensure()
        try:
            self._guard(self._drain_available)
        except ConnectionLost as e:
            if e.unanswered or not self.reconnect or self._user_closed:
                raise
            self._ensure()
            self._guard(self._drain_available)

    def _flush(self, deadline: float) -> None:
        """Writes queued requests while the in-flight window has room."""
        if not self._queue or len(self._sent) >= self.max_in_flight:
            return
        conn = self._ensure()
        out, batch = [], []
        while self._queue and len(self._sent) < self.max_in_flight:
            r = self._queue.popleft()
            i = self._take_id()
            self._sent[i] = r
            r.written = True
            out.append(r.frame(i))
            batch.append(r)
        self.peak_in_flight = max(self.peak_in_flight, len(self._sent))
        try:
            self._guard(lambda: conn.send(b"".join(out), deadline))
        except Timeout as e:
            # Frames the kernel did not take whole never reached the gateway.
            if e.written is not None:
                end = 0
                for r, f in zip(batch, out):
                    end += len(f)
                    if end > e.written:
                        r.written = False
            raise

    def _drain_available(self) -> None:
        """Files every frame that has already arrived, without waiting."""
        conn = self._conn
        if conn is None:
            return
        conn.poll()
        while conn is self._conn and conn.decoder.buffered():
            got = conn.decoder.next_frame()
            if got is None:
                break
            self._dispatch(*got)
        if conn is self._conn and conn.eof is not None and not conn.decoder.buffered():
            self._lost(conn.eof)

    def _read_one(self, deadline: float) -> bool:
        """Reads and files one frame; False if the deadline passed first."""
        conn = self._ensure()
        try:
            got = conn.recv_frame(deadline)
        except Closed as e:
            self._lost(e)
        except ProtocolError:
            self._fail(None)
            raise
        if got is None:
            return False

        def file_all() -> None:
            # This frame, then every complete frame already buffered.
            self._dispatch(*got)
            while conn is self._conn:
                more = conn.decoder.next_frame()
                if more is None:
                    break
                self._dispatch(*more)

        self._guard(file_all)
        return True

    def _guard(self, fn: Callable[[], None]) -> None:
        """Runs ``fn``; a closed connection becomes GOAWAY handling or ConnectionLost."""
        conn = self._conn
        try:
            fn()
        except Closed as e:
            if conn is None or conn is not self._conn:
                raise ConnectionLost(str(e)) from None
            # A GOAWAY or ERROR may sit in the decoder before the close.
            while True:
                try:
                    got = conn.decoder.next_frame()
                except ProtocolError:
                    got = None
                if got is None:
                    break
                self._dispatch(*got)
                if conn is not self._conn:
                    return
            self._lost(e)
        except ProtocolError:
            self._fail(None)
            raise
        except Timeout:
            # Only a write times out here: a partly written frame leaves the stream unusable.
            if conn is not None and conn is self._conn:
                self._fail(ConnectionLost("write timed out; connection closed", list(self._sent)))
            raise

    def _lost(self, e: Closed) -> None:
        unanswered = [i for i, r in self._sent.items() if not r.abandoned]
        err = ConnectionLost("connection to the gateway lost (%s); %d requests unanswered, outcome unknown"
                             % (e, len(unanswered)), unanswered)
        self._fail(err)
        raise err

    def _fail(self, err: Optional[PushgateError]) -> None:
        """Closes the connection for good; sent requests are abandoned (outcome unknown)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for r in self._sent.values():
            r.abandoned = True
        self._sent.clear()
        self._broken = err or ConnectionLost("connection closed after a protocol error")

    def _dispatch(self, ftype: int, body: bytes) -> None:
        if ftype == wire.RESULT:
            req_id, status, msg_id, info = wire.parse_result(body)
            r = self._answer(req_id, wire.PUSH, wire.PUSH_TOPIC)
            if r is not None and r.ftype == wire.PUSH_TOPIC:
                r.reply = TopicResult.of(r.topic, status, msg_id, info)
            elif r is not None:
                r.reply = PushResult.of(r.tokens[0], status, msg_id, info)
        elif ftype == wire.MULTI_RESULT:
            req_id, entries = wire.parse_multi_result(body)
            r = self._answer(req_id, wire.MULTI_PUSH)
            if r is not None:
                if len(entries) != len(r.tokens):
                    raise ProtocolError("MULTI_RESULT %d has %d entries for %d tokens" % (req_id, len(entries), len(r.tokens)))
                r.reply = [PushResult.of(t, s, m) for t, (s, m) in zip(r.tokens, entries)]
        elif ftype == wire.FEEDBACK_RESULT:
            req_id, more, page = wire.parse_feedback_result(body)
            r = self._answer(req_id, wire.FEEDBACK)
            if r is not None:
                r.reply = (more, page)
        elif ftype == wire.TOPIC_MANAGE_RESULT:
            req_id, statuses = wire.parse_topic_manage_result(body)
            r = self._answer(req_id, wire.TOPIC_MANAGE)
            if r is not None:
                if len(statuses) != len(r.tokens):
                    raise ProtocolError("TOPIC_MANAGE_RESULT %d has %d statuses for %d tokens"
                                        % (req_id, len(statuses), len(r.tokens)))
                r.reply = [TopicManageResult.of(t, s) for t, s in zip(r.tokens, statuses)]
        elif ftype == wire.TOPIC_STATS_RESULT:
            req_id, known, sent, acked = wire.parse_topic_stats_result(body)
            r = self._answer(req_id, wire.TOPIC_STATS)
            if r is not None:
                r.reply = TopicStats(known, sent, acked)
        elif ftype == wire.RECEIPT:
            tok, msg_id, at = wire.parse_receipt(body)
            if len(self._receipts) >= MAX_BUFFERED_RECEIPTS:
                self._receipts.popleft()
            self._receipts.append(Receipt(tok.hex(), msg_id, at))
        elif ftype == wire.PONG:
            wire.parse_empty(body, "PONG")
            self._pongs += 1
        elif ftype == wire.ERROR:
            code, text = wire.parse_error(body)
            err = server_error(code, text)
            self._fail(err)
            raise err
        elif ftype == wire.GOAWAY:
            self._on_goaway(*wire.parse_goaway(body))
        else:
            raise ProtocolError("unexpected frame type 0x%02x from the gateway" % ftype)

    def _answer(self, req_id: int, *want: int) -> Optional[_Request]:
        r = self._sent.pop(req_id, None)
        if r is None:
            raise ProtocolError("answer for req_id %d, which is not outstanding" % req_id)
        if r.ftype not in want:
            raise ProtocolError("req_id %d answered by the wrong kind of frame" % req_id)
        return None if r.abandoned else r

    def _on_goaway(self, reason: int, reconnect_ms: int) -> None:
        """Reconnects, logs in again and re-queues unanswered requests, or raises GoAway."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        resend = [r for r in self._sent.values() if not r.abandoned]
        self._sent.clear()
        if not self.reconnect or reason in NO_RECONNECT:
            for r in resend:
                r.abandoned = True
            err = GoAway(reason, reconnect_ms)
            self._broken = err
            raise err
        self._queue.extendleft(reversed(resend))
        self.resent += len(resend)
        give_up = time.monotonic() + self.reconnect_timeout
        attempt = 0
        wait = reconnect_ms / 1000.0
        last: Optional[BaseException] = None
        while True:
            # Section 11.4: full jitter, 1 s doubling to 5 min, at least the hint.
            delay = max(wait, random.uniform(0, min(300.0, 2.0**attempt)))
            left = give_up - time.monotonic()
            if left <= 0 or wait > left:
                err = GoAway(reason, reconnect_ms, detail="reconnect failed: %s" % last)
                self._broken = err
                raise err
            time.sleep(min(delay, left))
            try:
                self._conn = self._login()
                self.reconnects += 1
                return
            except GoAway as e:
                last, wait = e, e.reconnect_ms / 1000.0
            except (OSError, ConnectionLost, Timeout) as e:
                last, wait = e, 0.0
            except PushgateError as e:
                self._broken = e
                raise
            attempt += 1


def _tail(frame: bytes) -> bytes:
    """A request frame's body after its 4-byte req_id (the header is 1 type byte + varint)."""
    pos = 1
    while frame[pos] & 0x80:
        pos += 1
    return frame[pos + 1 + 4 :]
