"""Token authentication and project scoping, shared by every service.

Each service authenticates every call itself (the edge is not the only lock). Verified tokens are
cached for `auth_cache_ttl_s` (ICEOS_AUTH_CACHE_TTL_S, default 2 s, never more than 5 s): that is
the bound on how long a revoked token keeps working anywhere. The edge reuses a Check verdict
only for what is left of the registry's cache entry (`Verdict.reusable_s`), so it adds nothing
to the bound (docs/security.md). Expiry is checked on every call, cached or not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from . import errors, service_auth, tokens
from .db import Database
from .principal import Principal, Role

log = logging.getLogger(__name__)

# last_use_time is advisory; writing it on every call would turn each read into a write.
_LAST_USE_WRITE_INTERVAL_S = 60.0
# The documented revocation bound: no setting may make a cached verdict live longer.
MAX_CACHE_TTL_S = 5.0


@dataclass(frozen=True)
class Verdict:
    principal: Principal
    # How much longer this verdict may be reused without asking Postgres again: the rest of its
    # cache entry, never past the token's expiry. 0 for tokens that are not cached.
    reusable_s: float


class Authenticator:
    def __init__(self, db: Database, cache_ttl_s: float = 2.0,
                 service_key: bytes | None = None) -> None:
        self.db = db
        self.service_key = service_key
        self.cache_ttl_s = cache_ttl_s
        self._tokens: dict[str, tuple[float, Principal]] = {}
        self._projects: dict[str, tuple[float, str | None]] = {}
        self._last_use_written: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.cache_ttl_s = min(max(self.cache_ttl_s, 0.0), MAX_CACHE_TTL_S)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an `authorization` header value, or Unauthenticated saying why."""
        secret = parse_bearer(authorization)
        if service_auth.is_service_token(secret):
            return service_auth.verify(self.service_key, secret)
        now = time.monotonic()
        cached = self._tokens.get(secret)
        if cached and cached[0] > now:
            principal = cached[1]
        else:
            principal = await self._load(secret)
            self._tokens[secret] = (now + self.cache_ttl_s, principal)
            if len(self._tokens) > 10_000:
                self._tokens = {k: v for k, v in self._tokens.items() if v[0] > now}
        if principal.expire_time and principal.expire_time <= datetime.now(timezone.utc):
            raise errors.Unauthenticated("the token has expired", reason="TOKEN_EXPIRED")
        self._note_use(principal.token_id, now)
        return principal

    async def verify(self, authorization: str | None) -> Verdict:
        """`authenticate`, also saying how long the answer may be reused (the edge's ext_authz
        verdict cache)."""
        principal = await self.authenticate(authorization)
        cached = self._tokens.get(parse_bearer(authorization))
        reusable = cached[0] - time.monotonic() if cached and cached[1] is principal else 0.0
        if principal.expire_time:
            left = (principal.expire_time - datetime.now(timezone.utc)).total_seconds()
            reusable = min(reusable, left)
        return Verdict(principal, max(reusable, 0.0))

    async def _load(self, secret: str) -> Principal:
        async with self.db.connection() as conn:
            row = await (await conn.execute(
                "SELECT id, organization_id, project_id, role, display_name, secret_sha256,"
                " expire_time, revoke_time FROM api_tokens WHERE prefix = %s",
                (tokens.lookup_prefix(secret),))).fetchone()
        if row is None or not tokens.matches(secret, row["secret_sha256"]):
            raise errors.Unauthenticated("the token is not valid", reason="TOKEN_UNKNOWN")
        if row["revoke_time"] is not None:
            raise errors.Unauthenticated("the token has been revoked", reason="TOKEN_REVOKED")
        return Principal(token_id=row["id"], organization_id=row["organization_id"],
                         project_id=row["project_id"], role=Role.parse(row["role"]),
                         display_name=row["display_name"], expire_time=row["expire_time"])

    def _note_use(self, token_id: str, now: float) -> None:
        if now - self._last_use_written.get(token_id, -1e9) < _LAST_USE_WRITE_INTERVAL_S:
            return
        self._last_use_written[token_id] = now
        task = asyncio.get_running_loop().create_task(self._write_last_use(token_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_last_use(self, token_id: str) -> None:
        try:
            async with self.db.connection() as conn:
                await conn.execute("UPDATE api_tokens SET last_use_time = now() WHERE id = %s",
                                   (token_id,))
        except Exception:  # advisory only
            log.debug("could not record last_use_time", exc_info=True)

    def forget(self, secret: str | None = None) -> None:
        """Drop cached verdicts (all, or one secret's) in this process."""
        if secret is None:
            self._tokens.clear()
        else:
            self._tokens.pop(secret, None)

    def forget_token(self, token_id: str) -> None:
        """Drop a token's cached verdict in this process (after revoking it here)."""
        self._tokens = {k: v for k, v in self._tokens.items() if v[1].token_id != token_id}

    async def check_project(self, principal: Principal, project_id: str) -> None:
        """NOT_FOUND unless the principal may see the project (names of other tenants' projects
        must not leak, so existence and permission answer alike)."""
        if principal.project_id is not None:
            if principal.project_id != project_id:
                raise project_not_found(project_id)
            return
        now = time.monotonic()
        cached = self._projects.get(project_id)
        if cached and cached[0] > now:
            organization = cached[1]
        else:
            async with self.db.connection() as conn:
                row = await (await conn.execute(
                    "SELECT organization_id FROM projects WHERE id = %s",
                    (project_id,))).fetchone()
            organization = row["organization_id"] if row else None
            self._projects[project_id] = (now + self.cache_ttl_s, organization)
        if organization != principal.organization_id:
            raise project_not_found(project_id)


def project_not_found(project_id: str) -> errors.NotFound:
    return errors.NotFound(f"project {project_id!r} not found", reason="PROJECT_NOT_FOUND",
                           metadata={"resource": f"projects/{project_id}"})


def parse_bearer(authorization: str | None) -> str:
    if not authorization:
        raise errors.Unauthenticated(
            "missing Authorization header; send 'Authorization: Bearer <token>'",
            reason="MISSING_CREDENTIALS")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise errors.Unauthenticated("the Authorization scheme must be Bearer",
                                     reason="BAD_SCHEME")
    secret = value.strip()
    if not secret:
        raise errors.Unauthenticated("the Bearer token is empty", reason="MISSING_CREDENTIALS")
    if not tokens.well_formed(secret) and not service_auth.is_service_token(secret):
        raise errors.Unauthenticated("the token is malformed; iceOS tokens look like ice_…",
                                     reason="TOKEN_MALFORMED")
    return secret
