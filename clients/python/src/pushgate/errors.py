"""Exceptions raised by the provider client.

Every exception derives from ``PushgateError``. The ones that come from the
gateway carry the protocol's code and its name:

* ``ServerError``: the gateway sent ERROR (``code``, ``name``, ``text``); the
  connection is closed. ``AuthFailed`` is the ``auth_failed`` (7) case.
* ``GoAway``: the gateway sent GOAWAY (``reason``, ``name``, ``reconnect_ms``)
  and the client could not or must not reconnect by itself.
* ``PushRefused``: raised by ``PushResult.raise_for_status()`` for a push the
  gateway did not accept (``status``, ``status_code``).
* ``ConnectionLost``: the connection broke without GOAWAY; ``unanswered``
  lists the req_ids whose outcome is unknown (protocol.md section 9.1).
* ``ProtocolError``: the gateway sent bytes that do not decode.
* ``Timeout``: no answer within the deadline (also a ``TimeoutError``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence

from .codes import error_name, goaway_name, status_name

if TYPE_CHECKING:
    from .types import PushResult


class PushgateError(Exception):
    """Base class of every error raised by this package.

    When ``push``, ``push_all`` or ``push_many`` fails part-way, the error
    also says how far it got: ``results`` has one entry per notification
    (per token for ``push_many``), its ``PushResult`` if answered, else
    None; ``unsent`` lists the positions that were never written to any
    connection, which are safe to push again. A None position not in
    ``unsent`` was sent without an answer: its outcome is unknown.
    Both are None for other calls.
    """

    results: "Optional[List[Optional[PushResult]]]" = None
    unsent: "Optional[List[int]]" = None


class ProtocolError(PushgateError):
    """The gateway sent something that does not match protocol.md; the connection is closed."""


class Timeout(PushgateError, TimeoutError):
    """An answer did not arrive within the deadline. The connection stays usable,
    unless a write was cut short (then it is closed)."""

    #: For a write cut short: how many of its bytes the kernel took.
    written: "Optional[int]" = None


class ConnectionLost(PushgateError, ConnectionError):
    """The connection broke without a GOAWAY.

    ``unanswered`` holds the req_ids of requests sent and not answered: their
    outcome is unknown (they may or may not have been accepted), so they are
    not re-sent automatically.
    """

    def __init__(self, message: str, unanswered: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.unanswered = tuple(unanswered)


class ServerError(PushgateError):
    """The gateway sent ERROR ``code`` (section 6.2) and closed the connection."""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.name = error_name(code)
        self.text = text
        super().__init__("gateway error %d %s: %s" % (code, self.name, text))


class AuthFailed(ServerError):
    """ERROR ``auth_failed`` (7): the app secret is wrong. Do not retry until it is fixed."""


class GoAway(PushgateError):
    """The gateway sent GOAWAY ``reason`` (section 6.3) and the client did not reconnect."""

    def __init__(self, reason: int, reconnect_ms: int, detail: str = "") -> None:
        self.reason = reason
        self.name = goaway_name(reason)
        self.reconnect_ms = reconnect_ms
        msg = "gateway sent goaway %d %s (reconnect_ms %d)" % (reason, self.name, reconnect_ms)
        super().__init__(msg + (": " + detail if detail else ""))


class PushRefused(PushgateError):
    """A push was not accepted: ``status`` is the status name, ``status_code`` its code.
    For a push to a topic, ``topic`` names it and ``token`` is empty."""

    def __init__(self, status_code: int, token: str, info: int = 0, *, topic: str = "") -> None:
        self.status_code = status_code
        self.status = status_name(status_code)
        self.token = token
        self.topic = topic
        self.info = info
        to = "topic %s" % topic if topic else token
        super().__init__("push to %s refused: %s (%d), info %d" % (to, self.status, status_code, info))


def server_error(code: int, text: str) -> ServerError:
    """The ServerError subclass for ``code``."""
    return AuthFailed(code, text) if code == 7 else ServerError(code, text)
