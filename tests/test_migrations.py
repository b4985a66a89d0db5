"""Migrations apply, are idempotent, are safe under concurrent start, and print offline SQL."""

from __future__ import annotations

import subprocess
import sys

from services.common import migrate
from services.common.settings import REPO_ROOT
from tests.conftest import db_execute

TABLES = ["organizations", "projects", "api_tokens", "audit_log", "components",
          "component_versions", "blueprints", "blueprint_versions", "runs", "run_nodes",
          "node_attempts", "run_events", "run_signals", "semantic_memory"]


def test_upgrade_creates_every_table_and_is_idempotent(empty_database: str) -> None:
    head = migrate.head_revision()
    assert migrate.current_revision(empty_database) is None
    assert migrate.upgrade(empty_database) == head
    assert migrate.upgrade(empty_database) == head  # second run changes nothing
    rows = db_execute(empty_database, "SELECT tablename FROM pg_tables WHERE schemaname='public'")
    assert set(TABLES) <= {r["tablename"] for r in rows}
    assert db_execute(empty_database, "SELECT version_num FROM alembic_version") == \
        [{"version_num": head}]


def test_semantic_memory_has_vector_column_and_hnsw_index(fresh_database: str) -> None:
    column = db_execute(fresh_database,
                        "SELECT format_type(atttypid, atttypmod) AS t FROM pg_attribute "
                        "WHERE attrelid = 'semantic_memory'::regclass AND attname = 'embedding'")
    assert column == [{"t": "vector(256)"}]
    index = db_execute(fresh_database,
                       "SELECT indexdef FROM pg_indexes WHERE indexname = "
                       "'semantic_memory_embedding'")
    assert "hnsw" in index[0]["indexdef"] and "vector_cosine_ops" in index[0]["indexdef"]


def test_state_columns_refuse_unknown_values(fresh_database: str) -> None:
    import psycopg
    import pytest
    db_execute(fresh_database, "INSERT INTO organizations (id) VALUES ('o')")
    db_execute(fresh_database, "INSERT INTO projects (id, organization_id) VALUES ('p', 'o')")
    with pytest.raises(psycopg.errors.CheckViolation):
        db_execute(fresh_database, "INSERT INTO runs (id, project_id, spec, state) "
                                   "VALUES ('r', 'p', '{}', 'EXPLODED')")


def test_concurrent_migrations_on_an_empty_database_apply_once(empty_database: str) -> None:
    env = {"DATABASE_URL": empty_database, "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-m", "services.common.migrate"], env=env,
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    # Exactly one process ran the upgrade steps; the others found the schema at head.
    ran = [o for o in outputs if "Running upgrade  -> 0001_identity" in o]
    assert len(ran) == 1, outputs
    assert all(f"Alembic applied_head={migrate.head_revision()}" in o for o in outputs)


def test_offline_sql_for_a_dba() -> None:
    result = subprocess.run([sys.executable, "-m", "services.common.migrate", "--sql"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE semantic_memory" in result.stdout
    assert "CREATE EXTENSION IF NOT EXISTS vector" in result.stdout
    assert "INSERT INTO alembic_version" in result.stdout


def test_migrate_command_reports_unreachable_database_clearly() -> None:
    from services.stack.embedded import free_port
    env = {"DATABASE_URL": f"postgresql://u:pw@127.0.0.1:{free_port()}/x", "PATH": "/usr/bin"}
    result = subprocess.run([sys.executable, "-m", "services.common.migrate"], env=env,
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cannot reach Postgres" in result.stderr and "pw" not in result.stderr
    assert "Traceback" not in result.stderr
