"""Helpers for the run tests: blueprints from dicts, starting and waiting for runs, saved
blueprints, dedicated orchestrator processes on their own database.

`save_blueprint` saves blueprints through the registry API (CreateBlueprint / UpdateBlueprint).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf import duration_pb2, json_format
from iceos.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc, run_pb2
from iceos.registry.v1 import blueprint_pb2

from services.common.convert import dict_to_struct
from tests.support.processes import ServiceProcess, wait_for
from tests.support.stack import SERVICE_KEY, Tenant

State = run_pb2.RunState
TERMINAL = (State.RUN_STATE_SUCCEEDED, State.RUN_STATE_FAILED, State.RUN_STATE_CANCELLED,
            State.RUN_STATE_TIMED_OUT)


def bp(spec: dict[str, Any]) -> blueprint_pb2.Blueprint:
    return json_format.ParseDict(spec, blueprint_pb2.Blueprint())


def tool(node_id: str, component: str, args: dict[str, Any] | None = None,
         **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "tool": {"component": component, "args": args or {}}, **extra}


def stub(channel: grpc.Channel) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
    return orchestrator_pb2_grpc.OrchestratorServiceStub(channel)


def start(api: orchestrator_pb2_grpc.OrchestratorServiceStub, tenant: Tenant, *,
          spec: dict[str, Any] | None = None, blueprint: str = "", version: int = 0,
          inputs: dict[str, Any] | None = None, request_id: str = "",
          timeout_s: float | None = None) -> run_pb2.Run:
    request = orchestrator_pb2.StartRunRequest(parent=tenant.parent, inputs=dict_to_struct(inputs),
                                               request_id=request_id, version=version)
    if spec is not None:
        request.inline_blueprint.CopyFrom(bp(spec))
    else:
        request.blueprint = blueprint
    if timeout_s is not None:
        request.timeout.CopyFrom(duration_pb2.Duration(seconds=int(timeout_s),
                                                       nanos=int(timeout_s % 1 * 1e9)))
    return api.StartRun(request, metadata=tenant.md(), timeout=30)


def wait(api: orchestrator_pb2_grpc.OrchestratorServiceStub, tenant: Tenant, name: str,
         timeout_s: float = 60) -> run_pb2.Run:
    """WaitRun until the run ends (several calls if needed); fails the test on a timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        run = api.WaitRun(orchestrator_pb2.WaitRunRequest(
            name=name, timeout=duration_pb2.Duration(seconds=max(1, int(min(left, 30))))),
            metadata=tenant.md(), timeout=60)
        if run.state in TERMINAL:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} still {State.Name(run.state)} after {timeout_s}s")


def get(api: orchestrator_pb2_grpc.OrchestratorServiceStub, tenant: Tenant,
        name: str) -> run_pb2.Run:
    return api.GetRun(orchestrator_pb2.GetRunRequest(name=name), metadata=tenant.md(),
                      timeout=30)


def run_and_wait(api: orchestrator_pb2_grpc.OrchestratorServiceStub, tenant: Tenant,
                 spec: dict[str, Any], inputs: dict[str, Any] | None = None,
                 timeout_s: float = 60) -> run_pb2.Run:
    return wait(api, tenant, start(api, tenant, spec=spec, inputs=inputs).name, timeout_s)


def py(message: Any) -> Any:
    """A protobuf Value/Struct as plain Python."""
    return json_format.MessageToDict(message)


def nodes(run: run_pb2.Run) -> dict[str, run_pb2.NodeRun]:
    return {n.path: n for n in run.nodes}


def node_state(run: run_pb2.Run, path: str) -> str:
    return run_pb2.NodeState.Name(nodes(run)[path].state).removeprefix("NODE_STATE_")


def events(api: orchestrator_pb2_grpc.OrchestratorServiceStub, tenant: Tenant, name: str,
           after: int = 0, follow: bool = False, timeout_s: float = 60) -> list[run_pb2.RunEvent]:
    return list(api.StreamRunEvents(orchestrator_pb2.StreamRunEventsRequest(
        name=name, after_sequence=after, no_follow=not follow), metadata=tenant.md(),
        timeout=timeout_s))


def event_types(evs: list[run_pb2.RunEvent]) -> list[str]:
    return [run_pb2.RunEventType.Name(e.type).removeprefix("RUN_EVENT_TYPE_") for e in evs]


def save_blueprint(stack: Any, tenant: Tenant, blueprint_id: str,
                   spec: dict[str, Any]) -> int:
    """Create the blueprint through the registry API, or add a version to it; returns the
    version number."""
    from iceos.registry.v1 import registry_pb2, registry_pb2_grpc
    with stack.channel("registry") as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        name = f"{tenant.parent}/blueprints/{blueprint_id}"
        try:
            current = registry.GetBlueprint(registry_pb2.GetBlueprintRequest(name=name),
                                            metadata=tenant.md(), timeout=30)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            created = registry.CreateBlueprint(registry_pb2.CreateBlueprintRequest(
                parent=tenant.parent, blueprint_id=blueprint_id, blueprint=bp(spec)),
                metadata=tenant.md(), timeout=30)
            return int(created.version)
        update = bp(spec)
        update.name, update.etag = name, current.etag
        updated = registry.UpdateBlueprint(registry_pb2.UpdateBlueprintRequest(
            blueprint=update), metadata=tenant.md(), timeout=30)
        return int(updated.version)


def tool_calls(database_url: str, label: str | None = None) -> list[dict[str, Any]]:
    """Rows the test_record / test tools wrote (empty if none yet)."""
    with psycopg.connect(database_url, autocommit=True,
                         row_factory=psycopg.rows.dict_row) as conn:
        exists = conn.execute("SELECT to_regclass('test_tool_calls') IS NOT NULL AS ok"
                              ).fetchone()
        if not exists or not exists["ok"]:
            return []
        if label is None:
            return conn.execute("SELECT * FROM test_tool_calls ORDER BY id").fetchall()
        return conn.execute("SELECT * FROM test_tool_calls WHERE label = %s ORDER BY id",
                            (label,)).fetchall()


def orchestrator_env(database_url: str, redis_url: str | None, workdir: Path,
                     **extra: str) -> dict[str, str]:
    import os
    env = dict(os.environ)
    env.update({"DATABASE_URL": database_url, "ICEOS_HOME": str(workdir),
                "ICEOS_LOG_LEVEL": "INFO", "ICEOS_SERVICE_KEY": SERVICE_KEY.decode(),
                "ICEOS_TEST_TOOLS": "1", "ICEOS_RUN_MIGRATIONS": "0"})
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


@contextmanager
def orchestrators(count: int, env: dict[str, str], workdir: Path
                  ) -> Iterator[list[ServiceProcess]]:
    """`count` orchestrator processes on their own ports, stopped (or killed) at the end."""
    procs = [ServiceProcess("orchestrator", dict(env), workdir / "logs") for _ in range(count)]
    try:
        for proc in procs:
            proc.start(wait=False)
        for proc in procs:
            proc.wait_serving(60)
        yield procs
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop(timeout=15)


__all__ = ["wait_for"]
