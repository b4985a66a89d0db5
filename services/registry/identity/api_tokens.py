"""API tokens of a project: mint, list, get, revoke.

Who may do what: the contract lets only admins call these methods, and the interceptor has
already checked that the caller can see the project in `parent`/`name` (else NOT_FOUND). Here:
a token is never minted or revoked with a role above the caller's own, and the secret leaves
this module exactly once, in the mint result.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg

from services.common import errors, names, pagination
from services.common.auth import Authenticator
from services.common.db import Database
from services.common.principal import Principal, Role

from . import store

MAX_DISPLAY_NAME = 200
MAX_REQUEST_ID = 128


def _not_found(name: str) -> errors.NotFound:
    return errors.NotFound(f"{name} not found", reason="TOKEN_NOT_FOUND",
                           metadata={"resource": name})


@dataclass(frozen=True)
class NewToken:
    display_name: str
    # 0 when the caller did not say (a required field).
    role: int
    expire_time: datetime | None


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next_page_token: str


def token_ids(name: str) -> tuple[str, str]:
    ids = names.parse(name, "projects/{project}/tokens/{token}")
    return ids["project"], ids["token"]


def _check_role(principal: Principal, role: int, *, field: str, action: str) -> Role:
    try:
        wanted = Role(role)
    except ValueError:
        raise errors.InvalidArgument.field(
            field, "must be ROLE_VIEWER, ROLE_EDITOR or ROLE_ADMIN", "BAD_ROLE") from None
    if wanted > principal.role:
        raise errors.PermissionDenied(
            f"cannot {action} a {wanted.label} token with a {principal.role.label} token",
            reason="ROLE_ABOVE_OWN", metadata={"requested": wanted.label,
                                               "actual": principal.role.label})
    return wanted


def _validate(token: NewToken, request_id: str) -> None:
    violations = errors.Violations()
    if token.role == 0:
        violations.add("token.role", "is required: ROLE_VIEWER, ROLE_EDITOR or ROLE_ADMIN")
    if len(token.display_name) > MAX_DISPLAY_NAME:
        violations.add("token.display_name", f"is longer than {MAX_DISPLAY_NAME} characters")
    if token.expire_time is not None and token.expire_time <= datetime.now(timezone.utc):
        violations.add("token.expire_time", "is in the past")
    if len(request_id) > MAX_REQUEST_ID:
        violations.add("request_id", f"is longer than {MAX_REQUEST_ID} characters")
    violations.raise_if_any()


class ApiTokens:
    def __init__(self, db: Database, authenticator: Authenticator | None = None) -> None:
        self.db = db
        # This process's verdict cache, emptied for a token as soon as it is revoked here.
        self.authenticator = authenticator

    async def mint(self, principal: Principal, parent: str, token: NewToken,
                   request_id: str = "") -> tuple[dict[str, Any], str]:
        """The new token's row and its secret. A retry with the same request_id returns the
        first token without its secret (it is shown once; revoke and mint again if lost)."""
        project = names.project_of(parent)
        _validate(token, request_id)
        role = _check_role(principal, token.role, field="token.role", action="mint")
        async with self.db.connection() as conn:
            if request_id:
                first = await store.token_by_request_id(conn, principal.organization_id,
                                                        request_id)
                if first is not None:
                    return self._same_request(first, project), ""
            try:
                return await store.insert_token(
                    conn, organization_id=principal.organization_id, project_id=project,
                    role=role, display_name=token.display_name,
                    creator=principal.token_name, expire_time=token.expire_time,
                    request_id=request_id or None)
            except psycopg.errors.UniqueViolation:
                # A concurrent retry with the same request_id won the race.
                first = await store.token_by_request_id(conn, principal.organization_id,
                                                        request_id)
                if first is None:
                    raise
                return self._same_request(first, project), ""

    @staticmethod
    def _same_request(first: dict[str, Any], project: str) -> dict[str, Any]:
        if first["project_id"] != project:
            raise errors.InvalidArgument.field(
                "request_id", "was already used for a token in another project",
                "REQUEST_ID_REUSED")
        return first

    async def get(self, name: str) -> dict[str, Any]:
        project, token_id = token_ids(name)
        async with self.db.connection() as conn:
            row = await store.get_token(conn, project, token_id)
        if row is None:
            raise _not_found(name)
        return row

    async def list(self, parent: str, *, page_size: int, page_token: str,
                   show_inactive: bool) -> Page:
        project = names.project_of(parent)
        limit = pagination.page_size(page_size)
        scope = f"ListTokens/{parent}/{show_inactive}"
        after = None
        if page_token:
            state = pagination.decode(page_token, scope=scope)
            try:
                after = (datetime.fromisoformat(state["after"][0]), str(state["after"][1]))
            except (KeyError, IndexError, TypeError, ValueError):
                raise errors.InvalidArgument.field("page_token", "is malformed",
                                                   "BAD_PAGE_TOKEN") from None
        async with self.db.connection() as conn:
            rows = await store.list_tokens(conn, project, limit=limit + 1, after=after,
                                           include_inactive=show_inactive)
        next_token = ""
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            next_token = pagination.encode(
                {"after": [last["create_time"].isoformat(), last["id"]]}, scope=scope)
        return Page(rows, next_token)

    async def revoke(self, principal: Principal, name: str) -> dict[str, Any]:
        """Idempotent: revoking a revoked token returns it unchanged."""
        project, token_id = token_ids(name)
        async with self.db.transaction() as conn:
            row = await store.get_token(conn, project, token_id)
            if row is None:
                raise _not_found(name)
            _check_role(principal, int(Role.parse(row["role"])), field="name",
                        action="revoke")
            row = await store.revoke_token(conn, project, token_id)
        assert row is not None
        if self.authenticator is not None:
            self.authenticator.forget_token(token_id)
        return row
