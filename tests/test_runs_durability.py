"""Crashes and outages: a worker SIGKILLed mid-run, Postgres restarted mid-run, Redis killed while
a client streams. Each test has its own database and orchestrator processes."""

from __future__ import annotations


import threading
import time
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest
from iceos.orchestrator.v1 import orchestrator_pb2

from services.common import migrate
from services.orchestrator.testing_tools import _TABLE
from services.stack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from tests.support.processes import wait_for
from tests.support.runs import (State, event_types, orchestrator_env, orchestrators, py,
                                start, stub, tool, wait)
from tests.support.stack import create_tenant


def rows(url: str, sql: str, params: tuple = ()) -> list[dict]:  # type: ignore[type-arg]
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def chain(count: int, **args) -> dict:  # type: ignore[no-untyped-def,type-arg]
    nodes = []
    for i in range(count):
        node = tool(f"n{i}", "builtins/test_record", {"label": f"n{i}", **args})
        if i:
            node["dependsOn"] = [f"n{i - 1}"]
        nodes.append(node)
    return {"nodes": nodes, "output": f"nodes.n{count - 1}.output.label"}


def test_worker_killed_mid_run_loses_nothing_and_repeats_no_completed_node(
        fresh_database, redis_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """50 runs over two orchestrator processes; one is SIGKILLed while nodes run. The survivor
    takes the dead worker's runs over when their leases expire and finishes them."""
    url = fresh_database
    rows(url, _TABLE)
    tenant = create_tenant(url)
    env = orchestrator_env(url, redis_server.url, tmp_path, ICEOS_RUN_LEASE_S="2",
                           ICEOS_RUN_POLL_S="0.2")
    spec = chain(5, sleep_s=0.4)
    with orchestrators(2, env, tmp_path) as (victim, survivor):
        channels = [__import__("grpc").insecure_channel(p.address) for p in (victim, survivor)]
        apis = [stub(c) for c in channels]
        names = [start(apis[i % 2], tenant, spec=spec, request_id=f"crash-{i}").name
                 for i in range(50)]
        victim_pid = str(victim.proc.pid)  # type: ignore[union-attr]

        def victim_busy() -> bool:
            calls = rows(url, "SELECT count(*) AS n FROM test_tool_calls WHERE phase = 'call'"
                              " AND split_part(worker_id, ':', 2) = %s", (victim_pid,))
            return calls[0]["n"] >= 40

        wait_for(victim_busy, 60, what="the victim to be mid-run")
        victim.kill()
        runs = [wait(apis[1], tenant, name, 120) for name in names]
        for channel in channels:
            channel.close()

    assert [State.Name(r.state) for r in runs] == ["RUN_STATE_SUCCEEDED"] * 50
    assert all(py(r.output) == "n4" for r in runs)
    ids = [r.name.split("/")[-1] for r in runs]
    resumed = [r for r in runs if r.claim_count > 1]
    assert resumed, "the kill should have left runs for the survivor to resume"

    # Every node completed exactly once (one SUCCEEDED attempt per node).
    done = rows(url, "SELECT run_id, path, count(*) FILTER (WHERE outcome = 'SUCCEEDED') AS ok"
                     " FROM node_attempts WHERE run_id = ANY(%s) GROUP BY run_id, path", (ids,))
    assert len(done) == 50 * 5 and all(d["ok"] == 1 for d in done)

    # No completed node executed twice: a node ran again only if the victim was running it when
    # it died, and no call happened after the node's completion was recorded.
    calls = rows(url, "SELECT c.idempotency_key, c.worker_id, c.time, n.end_time FROM"
                      " test_tool_calls c JOIN run_nodes n ON c.idempotency_key ="
                      " n.run_id || '/' || n.path || '/' || n.attempt WHERE c.phase = 'call'")
    by_key: dict[str, list[dict]] = defaultdict(list)  # type: ignore[type-arg]
    for call in calls:
        by_key[call["idempotency_key"]].append(call)
        assert call["time"] <= call["end_time"], call
    assert len(by_key) == 250
    repeated = {k: v for k, v in by_key.items() if len(v) > 1}
    for key, repeats in repeated.items():
        assert len(repeats) == 2, key
        first, second = sorted(repeats, key=lambda c: c["time"])
        assert first["worker_id"].split(":")[1] == victim_pid, key
        assert second["worker_id"].split(":")[1] != victim_pid, key
    # The victim had at most one node of each of its runs in flight, and some were (at least
    # once: those re-ran under the same idempotency key).
    assert 1 <= len(repeated) <= 25
    print(f"resumed runs: {len(resumed)}, re-executed in-flight nodes: {len(repeated)}")

    # No run was executed by two workers at once: per run, every call of the victim precedes
    # every call of the survivor, and the survivor's first act was a RUN_RESUMED.
    per_run: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))  # type: ignore[type-arg]
    for call in calls:
        run_id = call["idempotency_key"].split("/")[0]
        per_run[run_id][call["worker_id"]].append(call["time"])
    for run_id, workers in per_run.items():
        spans = sorted((min(t), max(t)) for t in workers.values())
        for (_, end), (begin, _) in zip(spans, spans[1:]):
            assert end <= begin, run_id
    for run in resumed:
        evs = rows(url, "SELECT seq, type FROM run_events WHERE run_id = %s ORDER BY seq",
                   (run.name.split("/")[-1],))
        assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
        assert "RUN_RESUMED" in [e["type"] for e in evs]


@pytest.fixture
def own_postgres(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = EmbeddedPostgres(tmp_path / "pgdata", free_port(), log_file=tmp_path / "pg.log")
    server.start()
    migrate.upgrade(server.url)
    yield server
    server.stop()


def test_runs_finish_after_postgres_restarts_mid_run(own_postgres, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = own_postgres.url
    tenant = create_tenant(url)
    env = orchestrator_env(url, None, tmp_path, ICEOS_RUN_LEASE_S="5", ICEOS_RUN_POLL_S="0.3")
    spec = chain(6, sleep_s=0.5, record=False)
    with orchestrators(1, env, tmp_path) as (proc,):
        import grpc
        with grpc.insecure_channel(proc.address) as channel:
            api = stub(channel)
            names = [start(api, tenant, spec=spec).name for _ in range(10)]

            def progressed() -> bool:
                done = rows(url, "SELECT count(*) AS n FROM run_nodes WHERE state = 'SUCCEEDED'")
                return done[0]["n"] >= 10

            wait_for(progressed, 60, what="the runs to be under way")
            own_postgres.stop()
            time.sleep(2)
            own_postgres.start()
            runs = [wait(api, tenant, name, 120) for name in names]
    assert [State.Name(r.state) for r in runs] == ["RUN_STATE_SUCCEEDED"] * 10
    assert all(py(r.output) == "n5" for r in runs)
    for run in runs:
        evs = rows(url, "SELECT seq FROM run_events WHERE run_id = %s ORDER BY seq",
                   (run.name.split("/")[-1],))
        assert [e["seq"] for e in evs] == list(range(1, run.last_event_sequence + 1))


def test_stream_continues_when_redis_dies(fresh_database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    redis = EmbeddedRedis(free_port(), tmp_path / "redis")
    redis.start()
    try:
        url = fresh_database
        tenant = create_tenant(url)
        env = orchestrator_env(url, redis.url, tmp_path, ICEOS_RUN_POLL_S="0.5")
        with orchestrators(1, env, tmp_path) as (proc,):
            import grpc
            with grpc.insecure_channel(proc.address) as channel:
                api = stub(channel)
                run = start(api, tenant, spec=chain(10, sleep_s=0.4, record=False))
                received: list = []  # type: ignore[type-arg]
                first_done = threading.Event()

                def follow() -> None:
                    for event in api.StreamRunEvents(orchestrator_pb2.StreamRunEventsRequest(
                            name=run.name), metadata=tenant.md(), timeout=90):
                        received.append(event)
                        if event_types([event]) == ["NODE_SUCCEEDED"]:
                            first_done.set()

                reader = threading.Thread(target=follow)
                reader.start()
                assert first_done.wait(30)
                redis.kill()
                reader.join(90)
                assert not reader.is_alive()
                after = api.WaitRun(orchestrator_pb2.WaitRunRequest(name=run.name),
                                    metadata=tenant.md())
            logs = proc.logs()
        assert after.state == State.RUN_STATE_SUCCEEDED
        assert [e.sequence for e in received] == list(range(1, after.last_event_sequence + 1))
        assert event_types(received)[-1] == "RUN_SUCCEEDED"
        assert event_types(received).count("NODE_SUCCEEDED") == 10
        assert "redis subscription lost" in logs
    finally:
        redis.stop()

