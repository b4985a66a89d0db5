"""Opaque, tamper-checked page tokens (AIP-158).

A token is base64url(JSON state) + "." + an HMAC over it and a scope string. The scope binds a
token to the list it came from (e.g. "blueprints:projects/p:filter=<hash>") so a token cannot be
replayed against another collection or filter; a modified or foreign token is INVALID_ARGUMENT.
The key is the services' shared key (ICEOS_SERVICE_KEY, else ICEOS_SECRET_KEY), so any replica
accepts any other's tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from . import errors

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50

_key: bytes = b"iceos-page-tokens"


def configure(key: bytes | None) -> None:
    """Set the signing key (called once at service start)."""
    global _key
    if key:
        _key = hashlib.sha256(b"iceos-page-tokens:" + key).digest()


def _sign(body: str, scope: str) -> str:
    digest = hmac.new(_key, f"{scope}\x00{body}".encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def encode(state: dict[str, Any], *, scope: str) -> str:
    body = base64.urlsafe_b64encode(
        json.dumps(state, separators=(",", ":"), default=str).encode()).rstrip(b"=").decode()
    return f"{body}.{_sign(body, scope)}"


def decode(token: str, *, scope: str, field: str = "page_token") -> dict[str, Any]:
    """The state inside `token`; INVALID_ARGUMENT if it was altered or is from another list."""
    bad = errors.InvalidArgument.field(
        field, "is not a page token from this list (it was altered, or the filter or parent "
               "changed); start again without page_token", "BAD_PAGE_TOKEN")
    try:
        body, signature = token.split(".")
        if not hmac.compare_digest(signature, _sign(body, scope)):
            raise bad
        state = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, TypeError):
        raise bad from None
    if not isinstance(state, dict):
        raise bad
    return state


def page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE,
              maximum: int = MAX_PAGE_SIZE, field: str = "page_size") -> int:
    if requested < 0 or requested > maximum:
        raise errors.InvalidArgument.field(field, f"must be between 0 and {maximum} "
                                                  f"(0 means {default})", "OUT_OF_RANGE")
    return requested or default


def scope_for(kind: str, parent: str, filter_text: str = "") -> str:
    return f"{kind}:{parent}:{hashlib.sha256(filter_text.encode()).hexdigest()[:16]}"


async def load_key(db: Any) -> None:
    """Without a configured key (ICEOS_SERVICE_KEY / ICEOS_SECRET_KEY, see `configure`), sign
    with a random key this database keeps for itself (table `instance_keys`, made once), so every
    replica agrees and no installation signs with the well-known default. Called once the schema
    is ready (services/common/server.py)."""
    if _key != b"iceos-page-tokens":  # configure() set one
        return
    import secrets
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO instance_keys (name, key) VALUES ('page_token', %s) "
            "ON CONFLICT DO NOTHING", (secrets.token_bytes(32),))
        row = await (await conn.execute(
            "SELECT key FROM instance_keys WHERE name = 'page_token'")).fetchone()
    configure(bytes(row["key"]))
