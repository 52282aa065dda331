"""Provider authentication proof (protocol.md section 8)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Union

LABEL = b"pushgate/auth/v1"


def auth_proof(secret: Union[str, bytes], app_id: str, nonce: bytes) -> bytes:
    """``HMAC-SHA256(secret, "pushgate/auth/v1" || u8 len(app_id) || app_id || nonce)``.

    A ``str`` secret is used as its UTF-8 bytes, as configured on the gateway.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    app = app_id.encode("ascii")
    return hmac.new(key, LABEL + bytes([len(app)]) + app + bytes(nonce), hashlib.sha256).digest()
