"""Run engine benchmark (`make bench-runs`), one run, side by side on one embedded Postgres:

(a) per-node overhead: a chain of 50 no-op nodes end to end — iceOS through the service
    (gRPC StartRun + WaitRun against a real orchestrator process, every node checkpointed),
    the same chain as plain asyncio calls (the floor), a DBOS workflow of 50 steps, and a
    LangGraph graph of 50 nodes with its Postgres checkpointer;
(b) throughput of concurrent 5-node runs: iceOS with one and with two orchestrator
    processes (the client spreads StartRun over them), against LangGraph (async, pooled).

Targets, as ratios in the same run: iceOS per-node overhead ≤ ½ LangGraph's; iceOS
throughput ≥ 4× LangGraph's. Prints a table; writes bench/results/runs.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf import duration_pb2, json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from iceos.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from iceos.registry.v1 import blueprint_pb2

from services.common import migrate
from services.common.principal import Role
from services.common.settings import REPO_ROOT
from services.registry.identity import store as identity_store
from services.stack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

CHAIN = 50
CHAIN_RUNS = 24
FANOUT_NODES = 5
THROUGHPUT_RUNS = 600
CONCURRENCY = 200
RESULTS = REPO_ROOT / "bench" / "results" / "runs.json"


def chain_blueprint(count: int) -> blueprint_pb2.Blueprint:
    nodes = []
    for i in range(count):
        node: dict[str, Any] = {"id": f"n{i}", "tool": {
            "component": "builtins/json_transform", "args": {"expression": "input",
                                                             "input": i}}}
        if i:
            node["dependsOn"] = [f"n{i - 1}"]
        nodes.append(node)
    return json_format.ParseDict({"nodes": nodes, "output": f"nodes.n{count - 1}.output"},
                                 blueprint_pb2.Blueprint())


# -- the iceOS side -----------------------------------------------------------------------------

def make_tenant(url: str) -> tuple[str, str]:
    async def go() -> tuple[str, str]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            conn.row_factory = psycopg.rows.dict_row
            org, project = f"org-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"
            await identity_store.create_organization(conn, org)
            await identity_store.create_project(conn, project, org)
            _, secret = await identity_store.insert_token(
                conn, organization_id=org, project_id=project, role=Role.EDITOR,
                display_name="bench", creator="bench")
            return project, secret
    return asyncio.run(go())


class Orchestrator:
    def __init__(self, url: str, redis_url: str, workdir: Path) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env.update({"DATABASE_URL": url, "REDIS_URL": redis_url, "ICEOS_HOME": str(workdir),
                    "ICEOS_ORCHESTRATOR_PORT": str(self.port), "ICEOS_LOG_LEVEL": "WARNING",
                    "ICEOS_WORKER_MAX_RUNS": "1000", "ICEOS_SERVICE_KEY": "bench-key"})
        self.log = open(workdir / f"orchestrator-{self.port}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "services.orchestrator"], env=env,
                                     cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                    status = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(
                            service="iceos.orchestrator.v1.OrchestratorService"), timeout=1)
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the orchestrator did not start; see its log in " + str(workdir))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


async def ice_runs(addresses: list[str], token: str, project: str,
                   blueprint: blueprint_pb2.Blueprint, count: int,
                   concurrency: int) -> tuple[float, int]:
    """Start `count` runs (at most `concurrency` in flight), wait for each; (seconds, ok)."""
    md = [("authorization", f"Bearer {token}")]
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [orchestrator_pb2_grpc.OrchestratorServiceStub(c) for c in channels]
    slots = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        api = stubs[i % len(stubs)]
        async with slots:
            run = await api.StartRun(orchestrator_pb2.StartRunRequest(
                parent=f"projects/{project}", inline_blueprint=blueprint), metadata=md)
            done = await api.WaitRun(orchestrator_pb2.WaitRunRequest(
                name=run.name, timeout=duration_pb2.Duration(seconds=120)), metadata=md)
            ok += done.state == 4  # RUN_STATE_SUCCEEDED

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - began
    for channel in channels:
        await channel.close()
    return elapsed, ok


ROUNDS = 4  # measurements alternate between the systems, so load drift hits all alike


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def ice_chain_round(address: str, token: str, project: str, runs: int) -> float:
    elapsed, ok = asyncio.run(ice_runs([address], token, project, chain_blueprint(CHAIN),
                                       runs, 1))
    assert ok == runs, f"only {ok} of {runs} chain runs succeeded"
    return elapsed / runs / CHAIN


async def ice_throughput_round(addresses: list[str], token: str, project: str,
                               runs: int) -> float:
    elapsed, ok = await ice_runs(addresses, token, project, chain_blueprint(FANOUT_NODES),
                                 runs, CONCURRENCY)
    assert ok == runs, f"only {ok} of {runs} runs succeeded"
    return runs / elapsed


# -- the floor --------------------------------------------------------------------------------------

def asyncio_chain() -> float:
    async def noop(value: Any) -> Any:
        return value

    async def chain() -> Any:
        value: Any = 0
        for i in range(CHAIN):
            value = await noop(i)
        return value

    async def many() -> float:
        began = time.perf_counter()
        for _ in range(1000):
            await chain()
        return (time.perf_counter() - began) / 1000 / CHAIN

    return asyncio.run(many())


# -- DBOS -------------------------------------------------------------------------------------------

class Dbos:
    """A DBOS workflow of CHAIN steps (each step's output checkpointed in Postgres)."""

    def __init__(self, url: str) -> None:
        from dbos import DBOS
        self.dbos = DBOS
        DBOS(config={"name": "bench-runs", "system_database_url": url,
                     "log_level": "WARNING", "console_log_level": "WARNING"})

        @DBOS.step()
        def noop(value: int) -> int:
            return value

        @DBOS.workflow()
        def chain() -> int:
            value = 0
            for i in range(CHAIN):
                value = noop(i)
            return value

        self.chain = chain
        DBOS.launch()
        for _ in range(3):
            chain()

    def round(self, runs: int) -> float:
        began = time.perf_counter()
        for _ in range(runs):
            self.chain()
        return (time.perf_counter() - began) / runs / CHAIN

    def close(self) -> None:
        self.dbos.destroy()


# -- LangGraph --------------------------------------------------------------------------------------

def _graph(count: int):  # type: ignore[no-untyped-def]
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        value: int

    graph = StateGraph(State)
    for i in range(count):
        graph.add_node(f"n{i}", lambda state, i=i: {"value": i})
        graph.add_edge(START if i == 0 else f"n{i - 1}", f"n{i}")
    graph.add_edge(f"n{count - 1}", END)
    return graph


class LangGraphChain:
    """A LangGraph graph of CHAIN nodes compiled with the (sync) PostgresSaver."""

    def __init__(self, url: str) -> None:
        from langgraph.checkpoint.postgres import PostgresSaver
        self._saver_cm = PostgresSaver.from_conn_string(url)
        saver = self._saver_cm.__enter__()
        saver.setup()
        self.app = _graph(CHAIN).compile(checkpointer=saver)
        for _ in range(3):
            self._one()

    def _one(self) -> None:
        self.app.invoke({"value": -1}, {"configurable": {"thread_id": uuid.uuid4().hex}})

    def round(self, runs: int) -> float:
        began = time.perf_counter()
        for _ in range(runs):
            self._one()
        return (time.perf_counter() - began) / runs / CHAIN

    def close(self) -> None:
        self._saver_cm.__exit__(None, None, None)


async def throughput_rounds(url: str, addresses: list[str], token: str,
                            project: str) -> dict[str, list[float]]:
    """Alternate iceOS (1 and 2 orchestrators) and LangGraph (AsyncPostgresSaver, pooled)."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    found: dict[str, list[float]] = {"ice1": [], "ice2": [], "langgraph": []}
    async with AsyncConnectionPool(url, max_size=20, open=False, kwargs={
            "autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}) as pool:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        app = _graph(FANOUT_NODES).compile(checkpointer=saver)
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one() -> None:
            async with slots:
                await app.ainvoke({"value": -1},
                                  {"configurable": {"thread_id": uuid.uuid4().hex}})

        async def langgraph_round(runs: int) -> float:
            began = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(runs)))
            return runs / (time.perf_counter() - began)

        await langgraph_round(50)  # warm up
        await ice_throughput_round(addresses, token, project, 50)
        per_round = THROUGHPUT_RUNS // ROUNDS
        for _ in range(ROUNDS):
            found["ice1"].append(await ice_throughput_round(addresses[:1], token, project,
                                                            per_round))
            found["langgraph"].append(await langgraph_round(per_round))
            found["ice2"].append(await ice_throughput_round(addresses, token, project,
                                                            per_round))
    return found


# -- the run ----------------------------------------------------------------------------------------

def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-runs-") as tmp:
        work = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            postgres = EmbeddedPostgres(work / "pgdata", free_port(), log_file=work / "pg.log")
        postgres.start()
        redis = EmbeddedRedis(free_port(), work / "redis")
        redis.start()
        procs: list[Orchestrator] = []
        closers: list[Any] = []
        try:
            ice_url = postgres.url
            migrate.upgrade(ice_url)
            project, token = make_tenant(ice_url)
            procs = [Orchestrator(ice_url, redis.url, work), Orchestrator(ice_url, redis.url,
                                                                          work)]
            lg_url = postgres.create_database("langgraph")
            dbos = Dbos(postgres.create_database("dbos_sys"))
            closers.append(dbos)
            graph = LangGraphChain(lg_url)
            closers.append(graph)
            ice_chain_round(procs[0].address, token, project, 3)  # warm up
            per_round = CHAIN_RUNS // ROUNDS
            chains: dict[str, list[float]] = {"ice": [], "dbos": [], "langgraph": []}
            for _ in range(ROUNDS):
                chains["ice"].append(ice_chain_round(procs[0].address, token, project,
                                                     per_round))
                chains["langgraph"].append(graph.round(per_round))
                chains["dbos"].append(dbos.round(per_round))
            throughput = asyncio.run(throughput_rounds(lg_url, [p.address for p in procs],
                                                       token, project))
            results: dict[str, Any] = {
                "iceos_chain_ms_per_node": median(chains["ice"]) * 1000,
                "dbos_chain_ms_per_node": median(chains["dbos"]) * 1000,
                "langgraph_chain_ms_per_node": median(chains["langgraph"]) * 1000,
                "asyncio_chain_ms_per_node": asyncio_chain() * 1000,
                "iceos_runs_per_s_1_process": median(throughput["ice1"]),
                "iceos_runs_per_s_2_processes": median(throughput["ice2"]),
                "langgraph_runs_per_s": median(throughput["langgraph"]),
                "rounds": {"chain_ms_per_node": {k: [round(x * 1000, 4) for x in v]
                                                 for k, v in chains.items()},
                           "runs_per_s": {k: [round(x, 1) for x in v]
                                          for k, v in throughput.items()}},
            }
        finally:
            for closer in closers:
                closer.close()
            for proc in procs:
                proc.stop()
            redis.stop()
            postgres.stop()

    best_ice = max(results["iceos_runs_per_s_1_process"], results["iceos_runs_per_s_2_processes"])
    ratios = {
        "per_node_overhead_vs_langgraph": results["iceos_chain_ms_per_node"]
        / results["langgraph_chain_ms_per_node"],
        "throughput_vs_langgraph": best_ice / results["langgraph_runs_per_s"],
    }
    targets = {"per_node_overhead_vs_langgraph": "<= 0.5", "throughput_vs_langgraph": ">= 4.0"}
    met = {"per_node_overhead_vs_langgraph": ratios["per_node_overhead_vs_langgraph"] <= 0.5,
           "throughput_vs_langgraph": ratios["throughput_vs_langgraph"] >= 4.0}
    report = {
        "benchmark": "runs", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "parameters": {"chain_nodes": CHAIN, "chain_runs": CHAIN_RUNS, "rounds": ROUNDS,
                       "throughput_nodes_per_run": FANOUT_NODES,
                       "throughput_runs": THROUGHPUT_RUNS, "client_concurrency": CONCURRENCY,
                       "postgres": "embedded, fsync=on, one server for all systems",
                       "figures": "medians of the rounds; systems alternate round by round"},
        "results": results, "ratios": ratios, "targets": targets, "targets_met": met,
        "command": "make bench-runs",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    rows = [
        ("(a) chain of 50 no-op nodes", "per node", ""),
        ("asyncio calls (floor)", f"{results['asyncio_chain_ms_per_node']:.4f} ms", ""),
        ("iceOS via the service", f"{results['iceos_chain_ms_per_node']:.3f} ms",
         f"{ratios['per_node_overhead_vs_langgraph']:.2f}x LangGraph (target <= 0.5)"),
        ("DBOS steps", f"{results['dbos_chain_ms_per_node']:.3f} ms", ""),
        ("LangGraph + PostgresSaver", f"{results['langgraph_chain_ms_per_node']:.3f} ms", ""),
        ("(b) concurrent 5-node runs", "runs/s", ""),
        ("iceOS, 1 orchestrator", f"{results['iceos_runs_per_s_1_process']:.0f}", ""),
        ("iceOS, 2 orchestrators", f"{results['iceos_runs_per_s_2_processes']:.0f}",
         f"{ratios['throughput_vs_langgraph']:.1f}x LangGraph (target >= 4)"),
        ("LangGraph + AsyncPostgresSaver", f"{results['langgraph_runs_per_s']:.0f}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, figure, note in rows:
        print(f"{name:<{width}}  {figure:>12}  {note}")
    print(f"wrote {RESULTS.relative_to(REPO_ROOT)}")
