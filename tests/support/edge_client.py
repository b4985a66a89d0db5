"""Plain HTTP/1.1 requests to the edge with full control of the path (no client-side
normalisation), and the bad credentials of the auth test matrix."""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg

from services.common.principal import Role
from services.registry.identity import store as identity_store


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)


def request(address: str, method: str, path: str, *, headers: dict[str, str] | None = None,
            body: bytes | None = None, timeout: float = 30.0) -> Reply:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body is not None:
            try:
                conn.send(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the edge answered before reading it all (413): read the answer
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        conn.close()


def unknown_secret() -> str:
    alphabet = string.ascii_letters + string.digits
    return "ice_" + "".join(secrets.choice(alphabet) for _ in range(43))


def dead_tokens(database_url: str, organization_id: str, project_id: str) -> dict[str, str]:
    """An expired and a revoked admin token of the project: {"expired": secret, ...}."""
    async def mint() -> dict[str, str]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            conn.row_factory = psycopg.rows.dict_row
            _, expired = await identity_store.insert_token(
                conn, organization_id=organization_id, project_id=project_id, role=Role.ADMIN,
                display_name="expired", creator="tests",
                expire_time=datetime.now(timezone.utc) - timedelta(minutes=1))
            row, revoked = await identity_store.insert_token(
                conn, organization_id=organization_id, project_id=project_id, role=Role.ADMIN,
                display_name="revoked", creator="tests")
            await identity_store.revoke_token(conn, project_id, row["id"])
            return {"expired": expired, "revoked": revoked}
    return asyncio.run(mint())


def bad_credentials(database_url: str, organization_id: str,
                    project_id: str) -> dict[str, tuple[str | None, str]]:
    """case -> (Authorization header or None, ErrorInfo reason the edge/services give)."""
    dead = dead_tokens(database_url, organization_id, project_id)
    return {
        "no header": (None, "MISSING_CREDENTIALS"),
        "bearer with nothing": ("Bearer", "MISSING_CREDENTIALS"),
        "not bearer": ("Basic dXNlcjpwYXNz", "BAD_SCHEME"),
        "wrong format": ("Bearer not-an-iceos-token", "TOKEN_MALFORMED"),
        "unknown": (f"Bearer {unknown_secret()}", "TOKEN_UNKNOWN"),
        "expired": (f"Bearer {dead['expired']}", "TOKEN_EXPIRED"),
        "revoked": (f"Bearer {dead['revoked']}", "TOKEN_REVOKED"),
    }
