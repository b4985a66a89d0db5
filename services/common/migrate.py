"""Schema migrations at start (ARCHITECTURE §8).

`ICEOS_RUN_MIGRATIONS=1` runs Alembic `upgrade head` under a Postgres advisory lock, so any number
of processes starting together on an empty database migrate it exactly once; then it logs
`Alembic applied_head=<rev>` and checks that `semantic_memory` exists. `python -m
services.common.migrate --sql` prints the same migrations as SQL for a DBA (offline mode).
"""

from __future__ import annotations

import argparse
import logging
import sys

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .settings import REPO_ROOT, ConfigError, Settings, redact_url, sqlalchemy_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = REPO_ROOT / "migrations"
# pg_advisory_lock key, fixed so every process (of any version) agrees on it.
ADVISORY_LOCK_KEY = 0x1CE0_5000_0001
REQUIRED_TABLE = "semantic_memory"


class SchemaError(RuntimeError):
    """The database is reachable but its schema is not what this build needs."""


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise SchemaError(f"migrations have {len(heads)} heads {heads}; merge them")
    return heads[0]


def current_revision(url: str) -> str | None:
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str) -> str:
    """Migrate to head under the advisory lock; return the applied head revision."""
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool,
                              connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            conn.commit()
            try:
                before = MigrationContext.configure(conn).get_current_revision()
                cfg = alembic_config(url)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
                applied = MigrationContext.configure(conn).get_current_revision()
                if applied != before:
                    log.info("Alembic migrated from %s to %s", before or "an empty schema",
                             applied)
                exists = conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"),
                                      {"t": REQUIRED_TABLE}).scalar()
                conn.commit()
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"),
                             {"key": ADVISORY_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()
    log.info("Alembic applied_head=%s", applied)
    if not exists:
        raise SchemaError(f"table {REQUIRED_TABLE} is missing after migrating to {applied}")
    return str(applied)


def offline_sql(out=sys.stdout) -> None:  # type: ignore[no-untyped-def]
    """Print every migration as SQL (Alembic --sql) without touching a database."""
    cfg = alembic_config("postgresql://offline/iceos")
    cfg.output_buffer = out
    command.upgrade(cfg, "head", sql=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.migrate",
                                     description="Migrate the iceOS schema to head.")
    parser.add_argument("--sql", action="store_true", help="print SQL instead of applying it")
    args = parser.parse_args(argv)
    if args.sql:
        offline_sql()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not settings.database_url:
        print("error: DATABASE_URL is not set", file=sys.stderr)
        return 2
    try:
        upgrade(settings.database_url)
    except sa.exc.OperationalError as exc:
        print(f"error: cannot reach Postgres at {redact_url(settings.database_url)}: "
              f"{str(exc.orig).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

