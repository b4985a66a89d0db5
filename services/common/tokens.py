"""API token secrets: format, generation and hashing. Secrets are shown once and stored only as
SHA-256 hashes; a short public prefix finds the row without a scan."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

SECRET_PREFIX = "ice_"
# 43 base62 characters ≈ 256 bits of entropy.
_BODY_LENGTH = 43
_ALPHABET = string.ascii_letters + string.digits
# The lookup prefix: "ice_" + 8 characters of the body. Public, unique, safe to display.
LOOKUP_PREFIX_LENGTH = len(SECRET_PREFIX) + 8
SECRET_PATTERN = re.compile(r"^ice_[A-Za-z0-9]{%d}$" % _BODY_LENGTH)


def new_secret() -> str:
    return SECRET_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))


def well_formed(secret: str) -> bool:
    return bool(SECRET_PATTERN.match(secret))


def lookup_prefix(secret: str) -> str:
    return secret[:LOOKUP_PREFIX_LENGTH]


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(secret_hash(secret), bytes(stored_hash))


def new_token_id() -> str:
    """Public token id used in resource names (`projects/p/tokens/{id}`)."""
    return "tok-" + "".join(secrets.choice(string.ascii_lowercase + string.digits)
                            for _ in range(12))
