"""Protocol code tables (protocol.md section 6) and their names.

Codes are plain ``int`` values on the wire. A client must accept values it
does not know, so lookups never fail: an unknown code is named
``"unknown(<n>)"``.
"""

from __future__ import annotations

from typing import Dict

#: Push status (RESULT.status, MULTI_RESULT entries), section 6.1.
STATUS: Dict[int, str] = {
    0: "delivered",
    1: "queued",
    2: "bad_token",
    3: "payload_too_large",
    4: "not_delivered",
    5: "bad_request",
    6: "rate_limited",
    7: "unavailable",
    8: "unregistered",
    9: "store_failed",
    10: "bad_topic",
    11: "topic_limit",
}

#: Subscription status (TOPIC_MANAGE_RESULT entries), section 6.5: a code space
#: of its own, so a name may have another value here than in ``STATUS``.
SUBSCRIPTION: Dict[int, str] = {
    0: "ok",
    1: "bad_topic",
    2: "topic_limit",
    3: "bad_token",
    4: "unregistered",
    5: "store_failed",
    6: "unavailable",
}

#: ERROR.code, section 6.2.
ERROR: Dict[int, str] = {
    1: "unsupported_version",
    2: "malformed_frame",
    3: "frame_too_large",
    4: "unknown_frame_type",
    5: "unexpected_frame",
    6: "handshake_timeout",
    7: "auth_failed",
    8: "unknown_app",
    9: "bad_credential",
    10: "internal",
}

#: GOAWAY.reason, section 6.3.
GOAWAY: Dict[int, str] = {
    1: "shutdown",
    2: "replaced",
    3: "idle_timeout",
    4: "server_full",
    5: "slow_consumer",
    6: "unregistered",
    7: "rate_limited",
}

#: Notification kinds, section 6.4.
KIND_ALERT = 0
KIND_BADGE = 1
KIND_BACKGROUND = 2

#: The two priorities, section 4.
PRIORITY_HIGH = 10
PRIORITY_NORMAL = 5

#: Statuses whose msg_id is nonzero: the notification was accepted.
ACCEPTED = frozenset({0, 1})

#: The topic every device of the app is in without subscribing (section 10.4).
BROADCAST = "~all"


def _name(table: Dict[int, str], code: int) -> str:
    return table.get(code, "unknown(%d)" % code)


def status_name(code: int) -> str:
    """The name of a push status, e.g. ``0 -> "delivered"``."""
    return _name(STATUS, code)


def subscription_name(code: int) -> str:
    """The name of a subscription status, e.g. ``3 -> "bad_token"`` (section 6.5)."""
    return _name(SUBSCRIPTION, code)


def error_name(code: int) -> str:
    """The name of an ERROR code, e.g. ``7 -> "auth_failed"``."""
    return _name(ERROR, code)


def goaway_name(code: int) -> str:
    """The name of a GOAWAY reason, e.g. ``1 -> "shutdown"``."""
    return _name(GOAWAY, code)
