"""SQL for organizations, projects and tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from services.common import tokens
from services.common.principal import Role


async def create_organization(conn: psycopg.AsyncConnection, org_id: str,
                              display_name: str = "") -> None:
    await conn.execute(
        "INSERT INTO organizations (id, display_name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (org_id, display_name))


async def create_project(conn: psycopg.AsyncConnection, project_id: str, org_id: str,
                         display_name: str = "", request_id: str | None = None) -> dict[str, Any]:
    row = await (await conn.execute(
        "INSERT INTO projects (id, organization_id, display_name, request_id)"
        " VALUES (%s, %s, %s, %s) RETURNING *",
        (project_id, org_id, display_name, request_id))).fetchone()
    assert row is not None
    return row


async def insert_token(conn: psycopg.AsyncConnection, *, organization_id: str,
                       project_id: str | None, role: Role, display_name: str, creator: str,
                       expire_time: datetime | None = None,
                       request_id: str | None = None) -> tuple[dict[str, Any], str]:
    """Mint a token: returns the stored row and the plaintext secret (never stored)."""
    for _ in range(5):  # the lookup prefix is random; retry the rare collision
        secret = tokens.new_secret()
        try:
            async with conn.transaction():
                row = await (await conn.execute(
                    "INSERT INTO api_tokens (id, organization_id, project_id, prefix,"
                    " secret_sha256, role, display_name, creator, expire_time, request_id)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
                    (tokens.new_token_id(), organization_id, project_id,
                     tokens.lookup_prefix(secret), tokens.secret_hash(secret), role.label,
                     display_name, creator, expire_time, request_id))).fetchone()
            assert row is not None
            return row, secret
        except psycopg.errors.UniqueViolation as exc:
            if "prefix" not in str(exc.diag.constraint_name or ""):
                raise
    raise RuntimeError("could not allocate a unique token prefix")


async def organization_exists(conn: psycopg.AsyncConnection, org_id: str) -> bool:
    row = await (await conn.execute("SELECT 1 FROM organizations WHERE id = %s",
                                    (org_id,))).fetchone()
    return row is not None
