"""Service processes: start with and without the database, readiness through an outage,
graceful shutdown that drains in-flight calls, clear errors for bad configuration."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2
from iceos.memory.v1 import memory_pb2, memory_pb2_grpc

from services.common.settings import REPO_ROOT
from services.stack.embedded import EmbeddedPostgres, free_port
from tests.support.processes import ServiceProcess, health_status, wait_for
from tests.support.stack import create_tenant

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _env(database_url: str, redis_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ICEOS_", "DATABASE_URL",
                                                                    "REDIS_URL"))}
    env.update(DATABASE_URL=database_url, ICEOS_RUN_MIGRATIONS="1")
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


@pytest.fixture
def own_postgres(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A Postgres this test may stop and start (not the shared one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = EmbeddedPostgres(tmp_path / "pgdata", free_port(), log_file=tmp_path / "pg.log")
    yield server
    server.stop()


def test_starts_not_serving_without_database_then_serves_when_it_arrives(
        own_postgres: EmbeddedPostgres, tmp_path: Path) -> None:
    service = ServiceProcess("orchestrator", _env(own_postgres.url), tmp_path).start(wait=False)
    try:
        wait_for(lambda: health_status(service.address) is not None, 20, what="listening")
        assert health_status(service.address) == NOT_SERVING
        own_postgres.start()  # the database arrives: the service migrates it and serves
        service.wait_serving(30)
        assert "Alembic applied_head=" in service.logs()
    finally:
        assert service.stop() == 0


def test_readiness_follows_a_database_outage_without_restart(
        own_postgres: EmbeddedPostgres, tmp_path: Path) -> None:
    own_postgres.start()
    service = ServiceProcess("registry", _env(own_postgres.url), tmp_path).start()
    try:
        own_postgres.stop()
        wait_for(lambda: health_status(service.address) == NOT_SERVING, 20,
                 what="NOT_SERVING during the outage")
        own_postgres.start()
        wait_for(lambda: health_status(service.address) == SERVING, 30,
                 what="SERVING after recovery")
        assert service.proc is not None and service.proc.poll() is None
    finally:
        assert service.stop() == 0


def test_require_db_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    url = f"postgresql://iceos:sekret@127.0.0.1:{free_port()}/iceos"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "services.registry"],
                            env=_env(url, ICEOS_REQUIRE_DB="1"), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert time.monotonic() - started < 20
    assert "ICEOS_REQUIRE_DB=1 and Postgres at postgresql://iceos:***@127.0.0.1" in result.stderr
    assert "sekret" not in result.stderr and "Traceback" not in result.stderr


def test_malformed_database_url_exits_with_a_clear_message() -> None:
    result = subprocess.run([sys.executable, "-m", "services.sandbox"],
                            env=_env("mysql://nope/x"), cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "DATABASE_URL scheme 'mysql' is not supported" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_port_is_a_clear_error(postgres: EmbeddedPostgres) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "services.orchestrator"],
                                env=_env(postgres.url, ICEOS_ORCHESTRATOR_PORT=str(port)),
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"orchestrator cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "ICEOS_ORCHESTRATOR_PORT" in result.stderr and "Traceback" not in result.stderr


def test_redis_absent_the_service_still_serves(fresh_database: str, tmp_path: Path) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    service = ServiceProcess("orchestrator", _env(fresh_database, dead_redis), tmp_path).start()
    try:
        tenant = create_tenant(fresh_database)
        with grpc.insecure_channel(service.address) as channel:
            memory = memory_pb2_grpc.MemoryServiceStub(channel).CreateMemory(
                memory_pb2.CreateMemoryRequest(parent=tenant.parent,
                                               memory=memory_pb2.Memory(content="hello")),
                metadata=tenant.md(), timeout=10)
        assert memory.content == "hello"
    finally:
        assert service.stop() == 0


def test_sigterm_during_a_call_lets_the_call_finish(fresh_database: str, tmp_path: Path) -> None:
    service = ServiceProcess("orchestrator", _env(fresh_database), tmp_path).start()
    tenant = create_tenant(fresh_database)
    outcome: dict[str, object] = {}
    # Hold a lock that the call's INSERT must wait for, so the call is in flight at SIGTERM.
    locker = psycopg.connect(fresh_database)
    locker.execute("LOCK TABLE semantic_memory IN ACCESS EXCLUSIVE MODE")

    def call() -> None:
        with grpc.insecure_channel(service.address) as channel:
            try:
                outcome["memory"] = memory_pb2_grpc.MemoryServiceStub(channel).CreateMemory(
                    memory_pb2.CreateMemoryRequest(
                        parent=tenant.parent, memory=memory_pb2.Memory(content="in flight")),
                    metadata=tenant.md(), timeout=30)
            except grpc.RpcError as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    wait_for(lambda: psycopg.connect(fresh_database).execute(
        "SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0] > 0, 10,  # type: ignore[index]
        what="the call to block on the lock")
    service.signal(signal.SIGTERM)
    time.sleep(0.5)
    # Draining: the server stopped taking new calls but this one is still running.
    assert health_status(service.address, timeout=0.5) in (None, NOT_SERVING)
    locker.commit()
    locker.close()
    thread.join(30)
    assert service.proc is not None and service.proc.wait(30) == 0
    assert "error" not in outcome, outcome.get("error")
    assert outcome["memory"].content == "in flight"  # type: ignore[attr-defined]


def test_three_services_start_together_on_an_empty_database(
        empty_database: str, redis_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = _env(empty_database, redis_server.url)
    services = [ServiceProcess(n, env, tmp_path).start(wait=False)
                for n in ("registry", "orchestrator", "sandbox")]
    try:
        for service in services:
            service.wait_serving(60)
        migrated = [s.name for s in services
                    if "Alembic migrated from an empty schema" in s.logs()]
        assert len(migrated) == 1, migrated  # exactly one process ran the migrations
        assert all("Alembic applied_head=" in s.logs() for s in services)
    finally:
        for service in services:
            assert service.stop() == 0


def test_not_serving_until_the_schema_is_at_head(empty_database: str, tmp_path: Path) -> None:
    # Without ICEOS_RUN_MIGRATIONS the service waits for someone else to migrate.
    env = _env(empty_database, ICEOS_RUN_MIGRATIONS="0")
    service = ServiceProcess("registry", env, tmp_path).start(wait=False)
    try:
        wait_for(lambda: health_status(service.address) is not None, 20, what="listening")
        time.sleep(1.5)
        assert health_status(service.address) == NOT_SERVING
        from services.common import migrate
        migrate.upgrade(empty_database)
        service.wait_serving(30)
    finally:
        assert service.stop() == 0
