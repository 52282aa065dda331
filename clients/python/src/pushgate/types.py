"""Result and request types: plain dataclasses, tokens as 48-digit lowercase hex.

msg_ids are u64 values and can exceed 2**53: they are always Python ``int``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

from .codes import ACCEPTED, KIND_ALERT, PRIORITY_HIGH, status_name, subscription_name
from .errors import PushRefused
from .wire import TOKEN_LEN

#: A token as 48 hex digits or as its 24 raw bytes.
TokenLike = Union[str, bytes, bytearray]

#: Lifetime of a stored notification when ``expiry`` is not given: one day.
DEFAULT_TTL_S = 86400


def token_bytes(token: TokenLike) -> bytes:
    """The 24 raw bytes of a token given as hex or bytes; ``ValueError`` otherwise."""
    if isinstance(token, str):
        try:
            raw = bytes.fromhex(token)
        except ValueError:
            raise ValueError("token %r is not hex" % token) from None
    else:
        raw = bytes(token)
    if len(raw) != TOKEN_LEN:
        raise ValueError("a token is %d bytes (48 hex digits), got %d bytes" % (TOKEN_LEN, len(raw)))
    return raw


def expiry_in(seconds: int) -> int:
    """The absolute expiry (unix seconds) ``seconds`` from now."""
    return int(time.time()) + seconds


@dataclass(frozen=True)
class Notification:
    """One PUSH. ``expiry`` is absolute unix seconds; ``0`` means now or never;
    ``None`` means ``DEFAULT_TTL_S`` from the moment it is sent.
    ``receipt=True`` asks for a RECEIPT when the device ACKs."""

    token: TokenLike
    payload: bytes = b""
    kind: int = KIND_ALERT
    priority: int = PRIORITY_HIGH
    expiry: Optional[int] = None
    collapse_id: bytes = b""
    receipt: bool = False


@dataclass(frozen=True)
class PushResult:
    """The outcome of a push to one token.

    ``status`` is the status name (``"delivered"``, ``"queued"``, ...,
    ``"unknown(<n>)"`` for a code this client does not know), ``status_code``
    the code, ``msg_id`` the id the device sees (0 unless accepted), ``info``
    the RESULT's info (retry-after ms, or unregister time in unix ms; always 0
    for MULTI_PUSH entries, which carry none).
    """

    token: str
    status: str
    status_code: int
    msg_id: int
    info: int = 0

    @classmethod
    def of(cls, token: bytes, code: int, msg_id: int, info: int = 0) -> "PushResult":
        return cls(token.hex(), status_name(code), code, msg_id, info)

    @property
    def accepted(self) -> bool:
        """True for ``delivered`` and ``queued``."""
        return self.status_code in ACCEPTED

    def raise_for_status(self) -> "PushResult":
        """Returns self if accepted, else raises ``PushRefused``."""
        if not self.accepted:
            raise PushRefused(self.status_code, self.token, self.info)
        return self


@dataclass(frozen=True)
class TopicResult:
    """The outcome of a push to a topic (PUSH_TOPIC, answered by a RESULT).

    As ``PushResult``, for ``topic`` instead of a token. ``queued``: the
    message is in the topic's log (durably), not yet delivered to anyone;
    ``delivered`` (expiry 0): handed to the subscribers connected at that
    moment, possibly none. ``msg_id`` has bit 62 set (protocol.md 10.4).
    """

    topic: str
    status: str
    status_code: int
    msg_id: int
    info: int = 0

    @classmethod
    def of(cls, topic: str, code: int, msg_id: int, info: int = 0) -> "TopicResult":
        return cls(topic, status_name(code), code, msg_id, info)

    @property
    def accepted(self) -> bool:
        """True for ``delivered`` and ``queued``."""
        return self.status_code in ACCEPTED

    def raise_for_status(self) -> "TopicResult":
        """Returns self if accepted, else raises ``PushRefused`` (with ``topic`` set)."""
        if not self.accepted:
            raise PushRefused(self.status_code, "", self.info, topic=self.topic)
        return self


@dataclass(frozen=True)
class TopicManageResult:
    """One token's outcome in a ``manage_topic`` call: a subscription status
    (protocol.md 6.5, not the push statuses): ``"ok"``, ``"bad_topic"``,
    ``"topic_limit"``, ``"bad_token"``, ``"unregistered"``, ``"store_failed"``,
    ``"unavailable"``, or ``"unknown(<n>)"``."""

    token: str
    status: str
    status_code: int

    @classmethod
    def of(cls, token: bytes, code: int) -> "TopicManageResult":
        return cls(token.hex(), subscription_name(code), code)

    @property
    def ok(self) -> bool:
        """True when the token is (add) or is not (remove) in the topic, durably."""
        return self.status_code == 0


class TopicStats(NamedTuple):
    """What this node counted for one topic message (TOPIC_STATS_RESULT).

    ``known`` is False once the node no longer remembers the id (both counts
    are then 0); ``sent`` counts TOPIC_NOTIFY frames written to devices (a
    repeat after a reconnect counts again), ``acked`` the ACKs that took effect.
    """

    known: bool
    sent: int
    acked: int


@dataclass(frozen=True)
class Receipt:
    """A device ACKed a notification pushed with ``receipt=True``."""

    token: str
    msg_id: int
    acked_at_ms: int


@dataclass(frozen=True)
class FeedbackEntry:
    """A token of this app that unregistered at ``unregistered_at_ms`` (unix ms)."""

    token: str
    unregistered_at_ms: int
