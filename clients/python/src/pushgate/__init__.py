"""pushgate provider client: push notifications through a pushgate gateway.

Standard library only. ``Provider`` is the entry point::

    with Provider("127.0.0.1:7701", "demo", secret) as p:
        print(p.push(token, b'{"m":"hi"}').status)
"""

from .codes import (
    BROADCAST,
    KIND_ALERT,
    KIND_BACKGROUND,
    KIND_BADGE,
    PRIORITY_HIGH,
    PRIORITY_NORMAL,
    error_name,
    goaway_name,
    status_name,
    subscription_name,
)
from .errors import (
    AuthFailed,
    ConnectionLost,
    GoAway,
    ProtocolError,
    PushgateError,
    PushRefused,
    ServerError,
    Timeout,
)
from .provider import Provider
from .types import (
    DEFAULT_TTL_S,
    FeedbackEntry,
    Notification,
    PushResult,
    Receipt,
    TopicManageResult,
    TopicResult,
    TopicStats,
    expiry_in,
    token_bytes,
)

__all__ = [
    "Provider",
    "Notification",
    "PushResult",
    "Receipt",
    "FeedbackEntry",
    "TopicResult",
    "TopicManageResult",
    "TopicStats",
    "PushgateError",
    "ProtocolError",
    "ServerError",
    "AuthFailed",
    "GoAway",
    "ConnectionLost",
    "PushRefused",
    "Timeout",
    "KIND_ALERT",
    "KIND_BADGE",
    "KIND_BACKGROUND",
    "PRIORITY_HIGH",
    "PRIORITY_NORMAL",
    "DEFAULT_TTL_S",
    "BROADCAST",
    "status_name",
    "subscription_name",
    "error_name",
    "goaway_name",
    "expiry_in",
    "token_bytes",
]
__version__ = "0.1.0"
