"""Shared fixtures: one embedded Postgres (with pgvector) and one Redis per test session, a live
stack of real service processes behind a real Envoy, fresh migrated databases, and tenants."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from services.common import migrate
from services.stack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from tests.support.stack import LiveStack, Tenant, create_tenant

TEMPLATE_DB = "iceos_template"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("ICE_SKIP_STRESS") == "1":
        skip = pytest.mark.skip(reason="ICE_SKIP_STRESS=1")
        for item in items:
            if "stress" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("iceos")


@pytest.fixture(scope="session")
def postgres(workdir: Path) -> Iterator[EmbeddedPostgres]:
    """The session's Postgres 18 + pgvector. Database `iceos` serves the shared stack; the
    migrated template `iceos_template` makes fresh databases cheap."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = EmbeddedPostgres(workdir / "pgdata", free_port(),
                                  log_file=workdir / "postgres.log")
    server.start()
    url = server.create_database(TEMPLATE_DB)
    migrate.upgrade(url)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(free_port(), workdir / "redis")
    server.start()
    yield server
    server.stop()


def new_database(postgres: EmbeddedPostgres, migrated: bool = True) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    return postgres.create_database(name, template=TEMPLATE_DB if migrated else None)


@pytest.fixture
def fresh_database(postgres: EmbeddedPostgres) -> str:
    """A new database already migrated to head (copied from the template)."""
    return new_database(postgres)


@pytest.fixture
def empty_database(postgres: EmbeddedPostgres) -> str:
    """A new database with no schema at all."""
    return new_database(postgres, migrated=False)


@pytest.fixture(scope="session")
def stack(postgres: EmbeddedPostgres, redis_server: EmbeddedRedis,
          workdir: Path) -> Iterator[LiveStack]:
    """Registry, orchestrator and sandbox processes plus Envoy, shared by the session."""
    live = LiveStack(database_url=postgres.url, redis_url=redis_server.url,
                     workdir=workdir / "stack", extra_env={"ICE_DISABLE_SECCOMP": "0",
                                                          # test-only built-in tools (runs)
                                                          "ICEOS_TEST_TOOLS": "1"})
    live.start()
    yield live
    live.stop()


@pytest.fixture
def tenant(stack: LiveStack) -> Tenant:
    """A fresh project in a fresh organization, with an admin, editor and viewer token."""
    return stack.tenant()


@pytest.fixture
def other_tenant(stack: LiveStack) -> Tenant:
    """A second, unrelated tenant for isolation tests."""
    return stack.tenant()


@pytest.fixture
def edge_channel(stack: LiveStack) -> Iterator[grpc.Channel]:
    with stack.channel() as channel:
        yield channel


def db_execute(url: str, sql: str, params: tuple = ()) -> list[dict]:  # type: ignore[type-arg]
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


__all__ = ["create_tenant", "db_execute"]
