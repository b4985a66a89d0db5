"""Opaque, tamper-checked page tokens (aip.dev/158) for every List method.

    token = pagination.encode({"after": [create_time, id]}, scope=f"ListTokens/{parent}")
    state = pagination.decode(request.page_token, scope=f"ListTokens/{parent}")

A token is the JSON state plus an HMAC-SHA256 over it and the scope, URL-safe base64. Put in the
scope everything the token must not be reused with (method, parent, filter, ordering): a token
from another list, another filter or edited by hand raises errors.InvalidArgument on
`page_token`. The state is signed, not encrypted: keep secrets out of it.

The key: derived from ICEOS_SECRET_KEY when set, else a random key kept in the database (table
`instance_keys`), so every replica of every service agrees. `load_key` is called once at service
start (services/common/server.py); until then (and in processes without a database) a random
per-process key is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Any

from . import errors

_VERSION = "1"
_MAC_BYTES = 16
_KEY_NAME = "page_token"
_key: bytes = secrets.token_bytes(32)


def encode(state: dict[str, Any], *, scope: str) -> str:
    payload = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    body = _b64(payload)
    return f"{_VERSION}.{body}.{_b64(_mac(scope, body))}"


def decode(token: str, *, scope: str) -> dict[str, Any]:
    """The state of a token made by `encode` with the same scope, else InvalidArgument."""
    try:
        version, body, mac = token.split(".")
        # Compared as text: a MAC spelled differently (base64's spare bits) is not accepted.
        valid = version == _VERSION and hmac.compare_digest(mac, _b64(_mac(scope, body)))
        state = json.loads(_unb64(body)) if valid else None
    except (ValueError, binascii.Error, UnicodeDecodeError):
        state = None
    if not isinstance(state, dict):
        raise errors.InvalidArgument.field(
            "page_token", "is not a page token of this list; pass next_page_token from the "
                          "previous response unchanged, with the same request fields",
            "BAD_PAGE_TOKEN")
    return state


def page_size(requested: int, *, default: int = 50, maximum: int = 1000) -> int:
    """AIP-158 page size: 0 means the default, larger than the maximum is clamped, negative is
    an error."""
    if requested < 0:
        raise errors.InvalidArgument.field("page_size", "must not be negative")
    return min(requested or default, maximum)


def set_key(key: bytes) -> None:
    global _key
    _key = key


async def load_key(db: Any, secret_key: str | None) -> None:
    """Use ICEOS_SECRET_KEY (derived) or the database's page-token key, creating it once."""
    if secret_key:
        set_key(hmac.new(secret_key.encode(), b"iceos page tokens v1", hashlib.sha256).digest())
        return
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO instance_keys (name, key) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (_KEY_NAME, secrets.token_bytes(32)))
        row = await (await conn.execute("SELECT key FROM instance_keys WHERE name = %s",
                                        (_KEY_NAME,))).fetchone()
    set_key(bytes(row["key"]))


def _mac(scope: str, body: str) -> bytes:
    return hmac.new(_key, f"{scope}\n{body}".encode(), hashlib.sha256).digest()[:_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
