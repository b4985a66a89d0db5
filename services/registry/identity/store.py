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


# Tokens -----------------------------------------------------------------------------------------

_ACTIVE = "revoke_time IS NULL AND (expire_time IS NULL OR expire_time > now())"


async def get_token(conn: psycopg.AsyncConnection, project_id: str,
                    token_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(
        "SELECT * FROM api_tokens WHERE project_id = %s AND id = %s",
        (project_id, token_id))).fetchone()


async def token_by_request_id(conn: psycopg.AsyncConnection, organization_id: str,
                              request_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(
        "SELECT * FROM api_tokens WHERE organization_id = %s AND request_id = %s",
        (organization_id, request_id))).fetchone()


async def list_tokens(conn: psycopg.AsyncConnection, project_id: str, *, limit: int,
                      after: tuple[datetime, str] | None,
                      include_inactive: bool) -> list[dict[str, Any]]:
    """Oldest first, keyset-paginated on (create_time, id)."""
    sql = "SELECT * FROM api_tokens WHERE project_id = %s"
    params: list[Any] = [project_id]
    if not include_inactive:
        sql += f" AND {_ACTIVE}"
    if after is not None:
        sql += " AND (create_time, id) > (%s, %s)"
        params += list(after)
    sql += " ORDER BY create_time, id LIMIT %s"
    params.append(limit)
    return await (await conn.execute(sql, params)).fetchall()


async def revoke_token(conn: psycopg.AsyncConnection, project_id: str,
                       token_id: str) -> dict[str, Any] | None:
    """Set revoke_time once (a second revoke keeps the first time)."""
    return await (await conn.execute(
        "UPDATE api_tokens SET revoke_time = coalesce(revoke_time, now())"
        " WHERE project_id = %s AND id = %s RETURNING *", (project_id, token_id))).fetchone()


async def revoke_bootstrap_tokens(conn: psycopg.AsyncConnection, org_id: str) -> int:
    cursor = await conn.execute(
        "UPDATE api_tokens SET revoke_time = now() WHERE organization_id = %s"
        " AND creator = 'bootstrap' AND project_id IS NULL AND revoke_time IS NULL", (org_id,))
    return cursor.rowcount


# Organizations and projects -------------------------------------------------------------------

async def get_organization(conn: psycopg.AsyncConnection,
                           org_id: str) -> dict[str, Any] | None:
    return await (await conn.execute("SELECT * FROM organizations WHERE id = %s",
                                      (org_id,))).fetchone()


async def get_project(conn: psycopg.AsyncConnection, project_id: str) -> dict[str, Any] | None:
    return await (await conn.execute("SELECT * FROM projects WHERE id = %s",
                                      (project_id,))).fetchone()


async def project_by_request_id(conn: psycopg.AsyncConnection, org_id: str,
                                request_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(
        "SELECT * FROM projects WHERE organization_id = %s AND request_id = %s",
        (org_id, request_id))).fetchone()


async def list_projects(conn: psycopg.AsyncConnection, org_id: str, *, limit: int,
                        after: str | None, only: str | None = None) -> list[dict[str, Any]]:
    """The organization's projects by id (or just `only`), keyset-paginated on id."""
    sql = "SELECT * FROM projects WHERE organization_id = %s"
    params: list[Any] = [org_id]
    if only is not None:
        sql += " AND id = %s"
        params.append(only)
    if after is not None:
        sql += " AND id > %s"
        params.append(after)
    sql += " ORDER BY id LIMIT %s"
    params.append(limit)
    return await (await conn.execute(sql, params)).fetchall()
