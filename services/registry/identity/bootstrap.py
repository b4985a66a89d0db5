"""First start on an empty database: the `default` organization and project and an
organization admin token, written to $ICEOS_HOME/admin-token (mode 0600) and printed once.

Running it again refuses loudly (exit 3) instead of minting a second admin token silently; to
rotate the bootstrap token, mint a new admin token with the old one and revoke the old one
(docs/security.md).
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


def write_token_file(home: Path, secret: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "admin-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)
    return path


async def _main(settings: Settings) -> int:
    if not settings.database_url:
        print("error: DATABASE_URL is not set", file=sys.stderr)
        return 2
    db = Database(settings.database_url)
    try:
        secret = await bootstrap(db)
    except AlreadyBootstrapped as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ALREADY_BOOTSTRAPPED
    finally:
        await db.close()
    path = write_token_file(settings.home, secret)
    print(f"Bootstrapped organization '{DEFAULT_ORGANIZATION}' and project "
          f"'{DEFAULT_PROJECT}'.\nAdmin token (shown once, also saved to {path}):\n{secret}")
    return 0


def main() -> int:
    return asyncio.run(_main(Settings.from_env()))
