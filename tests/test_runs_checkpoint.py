"""The checkpoint writer's group commit against a real Postgres: runs share a batch, but a run
whose lease was taken, or whose data the database refuses, is given up alone — the other runs of
the same batch commit; runs created together share one commit."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from services.common.db import Database
from services.orchestrator import store
from services.orchestrator.engine.checkpoint import CheckpointWriter, LeaseLost
from services.orchestrator.engine.execution import NodeRecord
from services.orchestrator.notify import Notifier
from tests.support.stack import create_tenant

WORKER = "worker-under-test"


def now() -> datetime:
    return datetime.now(timezone.utc)


def rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


async def born_claimed(url: str, project: str, count: int) -> list[str]:
    """Runs inserted as StartRun does when this worker has room: RUNNING, claimed by WORKER."""
    ids = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True,
                                                     row_factory=dict_row) as conn:
        for i in range(count):
            row = await store.insert_run(
                conn, run_id=f"run-ckpt-{i}-{now().timestamp()}", project_id=project,
                blueprint_id=None, blueprint_version=None, spec={"nodes": []}, pins={},
                inputs={}, request_id=None, creator="tests",
                deadline=now() + timedelta(hours=1), worker_id=WORKER, lease_s=60)
            assert row is not None
            ids.append(row["id"])
    return ids


def stage_node(writer: CheckpointWriter, run_id: str, path: str, output: Any,
               seq: int) -> None:
    """What an execution stages when a leaf node completes: record, attempt, two events."""
    at = now()
    writer.node(run_id, 1, NodeRecord(path, path, "tool", state="SUCCEEDED", attempt=1,
                                      output=output, start_time=at, end_time=at))
    writer.attempt(run_id, 1, {"path": path, "attempt": 1, "key": f"{run_id}/{path}/1",
                               "outcome": "SUCCEEDED", "start_time": at.isoformat(),
                               "end_time": at.isoformat()})
    writer.event(run_id, 1, seq, "NODE_STARTED", path, {"kind": "tool", "attempt": 1}, at)
    writer.event(run_id, 1, seq + 1, "NODE_SUCCEEDED", path, {"output": output}, at)


async def outcome(awaitable: Any) -> str:
    try:
        await awaitable
        return "committed"
    except LeaseLost:
        return "lost"


def with_writer(url: str, body: Any) -> Any:
    async def main() -> Any:
        db = Database(url)
        writer = CheckpointWriter(db, WORKER, Notifier(db, None))
        writer.start()
        try:
            return await body(writer)
        finally:
            await writer.stop()
            await db.close()
    return asyncio.run(main())


def test_a_run_whose_lease_was_taken_writes_nothing_and_the_others_commit(
        fresh_database: str) -> None:
    url = fresh_database
    project = create_tenant(url).project_id
    kept, taken = asyncio.run(born_claimed(url, project, 2))

    async def body(writer: CheckpointWriter) -> list[str]:
        stage_node(writer, kept, "a", {"n": 1}, 2)
        stage_node(writer, taken, "a", {"n": 2}, 2)
        # Another worker claims `taken` after our lease expired (claim_count moves on).
        rows(url, "UPDATE runs SET claim_count = claim_count + 1, worker_id = 'other'"
                  " WHERE id = %s", (taken,))
        return list(await asyncio.gather(outcome(writer.flush(kept)),
                                         outcome(writer.flush(taken))))

    assert with_writer(url, body) == ["committed", "lost"]
    assert rows(url, "SELECT run_id, state FROM run_nodes ORDER BY run_id") == \
        [{"run_id": kept, "state": "SUCCEEDED"}]
    assert [r["run_id"] for r in rows(url, "SELECT DISTINCT run_id FROM run_events"
                                           " WHERE seq > 1")] == [kept]
    assert rows(url, "SELECT count(*) AS n FROM node_attempts WHERE run_id = %s",
                (taken,)) == [{"n": 0}]


def test_a_run_the_database_refuses_is_given_up_alone(fresh_database: str) -> None:
    url = fresh_database
    project = create_tenant(url).project_id
    good, bad = asyncio.run(born_claimed(url, project, 2))

    async def body(writer: CheckpointWriter) -> list[str]:
        stage_node(writer, good, "a", "fine", 2)
        stage_node(writer, bad, "a", "nul \x00 inside", 2)  # jsonb refuses \u0000
        first = list(await asyncio.gather(outcome(writer.flush(good)),
                                          outcome(writer.flush(bad))))
        # The writer goes on: the next batch of the good run commits.
        stage_node(writer, good, "b", "after", 4)
        return first + [await outcome(writer.flush(good))]

    assert with_writer(url, body) == ["committed", "lost", "committed"]
    assert rows(url, "SELECT run_id, path FROM run_nodes ORDER BY path") == \
        [{"run_id": good, "path": "a"}, {"run_id": good, "path": "b"}]
    assert rows(url, "SELECT count(*) AS n FROM run_events WHERE run_id = %s AND seq > 1",
                (bad,)) == [{"n": 0}]


def test_runs_started_together_share_one_commit(fresh_database: str) -> None:
    url = fresh_database
    project = create_tenant(url).project_id

    def record(run_id: str, request_id: str | None) -> dict[str, Any]:
        return store.new_run(run_id=run_id, project_id=project, blueprint_id=None,
                             blueprint_version=None, spec={"nodes": []}, pins={}, inputs={"i": 1},
                             request_id=request_id, creator="tests",
                             deadline=now() + timedelta(hours=1), worker_id=WORKER, lease_s=60)

    async def body(writer: CheckpointWriter) -> tuple[list[Any], int]:
        before = writer.commits
        created = await asyncio.gather(*(writer.create_run(record(f"run-new-{i}", rid))
                                         for i, rid in enumerate(["once", "once", None])))
        return list(created), writer.commits - before

    created, commits = with_writer(url, body)
    assert commits == 1
    assert created[0] is not None and created[2] is not None
    assert created[1] is None  # the request_id was taken by the first
    assert created[0]["state"] == "RUNNING" and created[0]["claim_count"] == 1
    stored = rows(url, "SELECT r.id, r.state, r.worker_id, e.type FROM runs r"
                       " JOIN run_events e ON e.run_id = r.id ORDER BY r.id")
    assert stored == [{"id": "run-new-0", "state": "RUNNING", "worker_id": WORKER,
                       "type": "RUN_QUEUED"},
                      {"id": "run-new-2", "state": "RUNNING", "worker_id": WORKER,
                       "type": "RUN_QUEUED"}]


def test_state_values_are_still_checked(fresh_database: str) -> None:
    url = fresh_database
    project = create_tenant(url).project_id
    (run,) = asyncio.run(born_claimed(url, project, 1))
    with pytest.raises(psycopg.errors.CheckViolation):
        rows(url, "INSERT INTO run_nodes (run_id, path, node_id, kind, state)"
                  " VALUES (%s, 'x', 'x', 'tool', 'EXPLODED')", (run,))
    with pytest.raises(psycopg.errors.CheckViolation):
        rows(url, "INSERT INTO run_events (run_id, seq, type) VALUES (%s, 0, 'X')", (run,))
