"""Service-to-service credentials: how the orchestrator calls the sandbox (and other services)
with a project's identity while running a run that no user call is attached to.

A service token is `svc1.<payload>.<signature>`: the payload (base64url JSON) names the project,
its organization, the calling service and an expiry; the signature is HMAC-SHA256 under the key
all services share (ICEOS_SERVICE_KEY; the local stack generates one in $ICEOS_HOME). Such a
token authenticates as an editor of that one project and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from . import errors
from .principal import Principal, Role

PREFIX = "svc1."
DEFAULT_TTL_S = 300


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(key: bytes, *, project_id: str, organization_id: str, service: str,
         ttl_s: float = DEFAULT_TTL_S) -> str:
    payload = _b64(json.dumps({"p": project_id, "o": organization_id, "s": service,
                               "exp": int(time.time() + ttl_s)},
                              separators=(",", ":")).encode())
    signature = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    return f"{PREFIX}{payload}.{signature}"


def is_service_token(secret: str) -> bool:
    return secret.startswith(PREFIX)


def verify(key: bytes | None, secret: str) -> Principal:
    if not key:
        raise errors.Unauthenticated("service tokens are not accepted: ICEOS_SERVICE_KEY is "
                                     "not set", reason="TOKEN_UNKNOWN")
    try:
        payload, signature = secret[len(PREFIX):].split(".")
        expected = hmac.new(key, payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(signature)):
            raise ValueError("bad signature")
        claims = json.loads(_unb64(payload))
        project, organization, service, expiry = (str(claims["p"]), str(claims["o"]),
                                                  str(claims["s"]), float(claims["exp"]))
    except (ValueError, KeyError, TypeError):
        raise errors.Unauthenticated("the token is not valid", reason="TOKEN_UNKNOWN") from None
    if expiry < time.time():
        raise errors.Unauthenticated("the token has expired", reason="TOKEN_EXPIRED")
    return Principal(token_id=f"service-{service}", organization_id=organization,
                     project_id=project, role=Role.EDITOR, display_name=f"service {service}")
