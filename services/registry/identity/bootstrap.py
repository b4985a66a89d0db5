"""First start on an empty database: the `default` organization and project and an
organization admin token, written to $ICEOS_HOME/admin-token (mode 0600) and printed once.

Running it again refuses loudly (exit 3) instead of minting a second admin token silently.
`bootstrap --rotate` (an operator with database access) replaces the bootstrap admin token: it
revokes every active bootstrap token and mints a new one, written and printed the same way; the
old one stops working everywhere within the auth cache bound (docs/security.md).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from services.common.db import Database
from services.common.principal import Role
from services.common.settings import Settings

from . import store

DEFAULT_ORGANIZATION = "default"
DEFAULT_PROJECT = "default"
EXIT_ALREADY_BOOTSTRAPPED = 3


class AlreadyBootstrapped(RuntimeError):
    pass


async def bootstrap(db: Database) -> str:
    """Create the defaults and return the admin token's secret."""
    async with db.transaction() as conn:
        # Serialise concurrent bootstraps; the loser sees the organization and refuses.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('iceos-bootstrap'))")
        if await store.organization_exists(conn, DEFAULT_ORGANIZATION):
            raise AlreadyBootstrapped(
                f"organization {DEFAULT_ORGANIZATION!r} already exists: this database was "
                "bootstrapped before. Use the admin token from then (see docs/security.md to "
                "rotate it).")
        await store.create_organization(conn, DEFAULT_ORGANIZATION, "Default organization")
        await store.create_project(conn, DEFAULT_PROJECT, DEFAULT_ORGANIZATION,
                                   "Default project")
        _, secret = await store.insert_token(
            conn, organization_id=DEFAULT_ORGANIZATION, project_id=None, role=Role.ADMIN,
            display_name="bootstrap admin", creator="bootstrap")
    return secret


async def rotate(db: Database) -> tuple[str, int]:
    """Revoke the active bootstrap admin tokens and mint a new one: (secret, revoked count)."""
    async with db.transaction() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('iceos-bootstrap'))")
        if not await store.organization_exists(conn, DEFAULT_ORGANIZATION):
            raise NotBootstrapped("this database was never bootstrapped; run "
                                  "`python -m services.registry bootstrap` first")
        revoked = await store.revoke_bootstrap_tokens(conn, DEFAULT_ORGANIZATION)
        _, secret = await store.insert_token(
            conn, organization_id=DEFAULT_ORGANIZATION, project_id=None, role=Role.ADMIN,
            display_name="bootstrap admin", creator="bootstrap")
    return secret, revoked


class NotBootstrapped(RuntimeError):
    pass


def write_token_file(home: Path, secret: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "admin-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)
    return path


async def _main(settings: Settings, rotating: bool) -> int:
    if not settings.database_url:
        print("error: DATABASE_URL is not set", file=sys.stderr)
        return 2
    db = Database(settings.database_url)
    try:
        if rotating:
            secret, revoked = await rotate(db)
        else:
            secret = await bootstrap(db)
    except AlreadyBootstrapped as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ALREADY_BOOTSTRAPPED
    except NotBootstrapped as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await db.close()
    path = write_token_file(settings.home, secret)
    if rotating:
        print(f"Revoked {revoked} bootstrap admin token(s) (they stop working within the auth "
              f"cache bound).\nNew admin token (shown once, also saved to {path}):\n{secret}")
    else:
        print(f"Bootstrapped organization '{DEFAULT_ORGANIZATION}' and project "
              f"'{DEFAULT_PROJECT}'.\nAdmin token (shown once, also saved to {path}):\n{secret}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[2:] if argv is None else argv
    if argv not in ([], ["--rotate"]):
        print("usage: python -m services.registry bootstrap [--rotate]", file=sys.stderr)
        return 2
    return asyncio.run(_main(Settings.from_env(), rotating=argv == ["--rotate"]))
