"""OrchestratorService through the edge and directly: StartRun (saved, pinned, inline,
idempotent), GetRun, ListRuns, CancelRun, WaitRun, StreamRunEvents (gRPC and NDJSON), bad input,
roles and tenant isolation."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import pytest
from iceos.orchestrator.v1 import orchestrator_pb2

from services.common.principal import Role
from tests.support.errors import violation_descriptions
from tests.support.runs import (State, event_types, events, get, nodes, py, save_blueprint,
                                start, stub, tool, wait)

ECHO = {"nodes": [tool("greet", "builtins/template",
                       {"template": "Hello {{ inputs.name }}"})],
        "inputSchema": {"type": "object", "required": ["name"],
                        "properties": {"name": {"type": "string", "maxLength": 20}}},
        "output": "nodes.greet.output.text"}


def test_saved_blueprint_runs_latest_or_pinned_version(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    save_blueprint(stack, tenant, "hello", ECHO)
    v2 = {**ECHO, "output": "'v2: ' + nodes.greet.output.text"}
    assert save_blueprint(stack, tenant, "hello", v2) == 2
    with stack.channel() as channel:
        api = stub(channel)
        latest = wait(api, tenant, start(api, tenant, blueprint="hello",
                                         inputs={"name": "Ada"}).name)
        assert latest.state == State.RUN_STATE_SUCCEEDED
        assert latest.blueprint == f"{tenant.parent}/blueprints/hello"
        assert latest.blueprint_version == 2
        assert py(latest.output) == "v2: Hello Ada"
        pinned = wait(api, tenant, start(api, tenant, blueprint=f"{tenant.parent}/blueprints/hello",
                                         version=1, inputs={"name": "Bo"}).name)
        assert pinned.blueprint_version == 1
        assert py(pinned.output) == "Hello Bo"
        full = api.GetRun(orchestrator_pb2.GetRunRequest(
            name=pinned.name, view=orchestrator_pb2.RUN_VIEW_FULL), metadata=tenant.md())
        assert full.blueprint_snapshot.output == "nodes.greet.output.text"
        assert not get(api, tenant, pinned.name).HasField("blueprint_snapshot")


def test_run_record_has_nodes_attempts_timings_and_events(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [tool("a", "builtins/json_transform", {"expression": "input + 1",
                                                            "input": 1}),
                      tool("b", "builtins/json_transform", {"expression": "input * 10"},
                           dependsOn=["a"]) | {"tool": {
                          "component": "builtins/json_transform",
                          "args": {"expression": "input * 10"},
                          "argExpressions": {"input": "nodes.a.output.result"}}}]}
    with stack.channel("orchestrator") as channel:
        api = stub(channel)
        run = wait(api, tenant, start(api, tenant, spec=spec).name)
        assert run.state == State.RUN_STATE_SUCCEEDED
        assert py(run.output) == {"a": {"result": 2}, "b": {"result": 20}}
        b = nodes(run)["b"]
        assert b.attempt == 1 and b.kind == "tool"
        assert b.start_time.ToDatetime() >= nodes(run)["a"].end_time.ToDatetime()
        assert [a.idempotency_key for a in b.attempts] == [f"{run.name.split('/')[-1]}/b/1"]
        assert b.attempts[0].outcome == "SUCCEEDED"
        evs = events(api, tenant, run.name)
        assert [e.sequence for e in evs] == list(range(1, len(evs) + 1))
        assert event_types(evs) == ["RUN_QUEUED", "RUN_STARTED", "NODE_STARTED",
                                    "NODE_SUCCEEDED", "NODE_STARTED", "NODE_SUCCEEDED",
                                    "RUN_SUCCEEDED"]
        assert run.last_event_sequence == len(evs)
        # Replay from a sequence number (a reconnecting client).
        tail = events(api, tenant, run.name, after=4)
        assert [e.sequence for e in tail] == list(range(5, len(evs) + 1))


def test_request_id_makes_start_idempotent(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        api = stub(channel)
        first = start(api, tenant, spec=ECHO, inputs={"name": "x"}, request_id="once-1")
        second = start(api, tenant, spec=ECHO, inputs={"name": "x"}, request_id="once-1")
        assert first.name == second.name and second.request_id == "once-1"
        listed = api.ListRuns(orchestrator_pb2.ListRunsRequest(parent=tenant.parent),
                              metadata=tenant.md())
        assert [r.name for r in listed.runs] == [first.name]


def test_unknown_blueprint_or_version_is_not_found(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    save_blueprint(stack, tenant, "only-one", ECHO)
    with stack.channel() as channel:
        api = stub(channel)
        with pytest.raises(grpc.RpcError) as info:
            start(api, tenant, blueprint="nope")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            start(api, tenant, blueprint="only-one", version=7, inputs={"name": "x"})
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "version 7" in info.value.details()


def test_inputs_failing_the_schema_are_invalid_with_paths(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        api = stub(channel)
        with pytest.raises(grpc.RpcError) as info:
            start(api, tenant, spec=ECHO, inputs={"name": "x" * 30})
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs.name" in violation_descriptions(info.value)
        with pytest.raises(grpc.RpcError) as info:
            start(api, tenant, spec=ECHO, inputs={})
        assert "inputs" in violation_descriptions(info.value)
        assert "name" in violation_descriptions(info.value)["inputs"]
        with pytest.raises(grpc.RpcError):
            start(api, tenant, spec=ECHO, inputs={"name": 3})
        listed = api.ListRuns(orchestrator_pb2.ListRunsRequest(parent=tenant.parent),
                              metadata=tenant.md())
        assert list(listed.runs) == []  # nothing half-written


def test_invalid_inline_blueprint_lists_every_violation(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [tool("a", "builtins/nope"),
                      tool("b", "builtins/template", {"template": "{{ nodes.c.output }}"},
                           dependsOn=["ghost"]),
                      {"id": "c", "llm": {"model": "nowhere/model", "prompt": "hi"}}]}
    with stack.channel() as channel:
        with pytest.raises(grpc.RpcError) as info:
            start(stub(channel), tenant, spec=spec)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violation_descriptions(info.value)
    assert set(found) >= {"inline_blueprint.nodes[0].tool.component",
                          "inline_blueprint.nodes[1].depends_on[0]",
                          "inline_blueprint.nodes[1].tool.args.template",
                          "inline_blueprint.nodes[2].llm.model"}


def test_list_runs_filters_and_pages(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    save_blueprint(stack, tenant, "listed", ECHO)
    bad = {"nodes": [tool("x", "builtins/json_transform", {"expression": "1 / 0"})]}
    with stack.channel() as channel:
        api = stub(channel)
        good = [wait(api, tenant, start(api, tenant, blueprint="listed",
                                        inputs={"name": str(i)}).name) for i in range(3)]
        failed = wait(api, tenant, start(api, tenant, spec=bad).name)
        assert failed.state == State.RUN_STATE_FAILED
        seen, token = [], ""
        while True:
            page = api.ListRuns(orchestrator_pb2.ListRunsRequest(
                parent=tenant.parent, page_size=2, page_token=token), metadata=tenant.md())
            seen += [r.name for r in page.runs]
            token = page.next_page_token
            if not token:
                break
        assert seen == [failed.name] + [r.name for r in reversed(good)]
        only = api.ListRuns(orchestrator_pb2.ListRunsRequest(
            parent=tenant.parent, filter='state = SUCCEEDED AND blueprint = "listed"'),
            metadata=tenant.md())
        assert {r.name for r in only.runs} == {r.name for r in good}
        after = good[1].create_time.ToJsonString()
        newer = api.ListRuns(orchestrator_pb2.ListRunsRequest(
            parent=tenant.parent, filter=f'create_time > "{after}"'), metadata=tenant.md())
        assert {r.name for r in newer.runs} == {good[2].name, failed.name}
        with pytest.raises(grpc.RpcError) as info:
            api.ListRuns(orchestrator_pb2.ListRunsRequest(parent=tenant.parent,
                                                          filter="colour = red"),
                         metadata=tenant.md())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            api.ListRuns(orchestrator_pb2.ListRunsRequest(
                parent=tenant.parent, page_token=token or "forged.token"), metadata=tenant.md())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cancelling_a_finished_run_returns_it_unchanged(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        api = stub(channel)
        run = wait(api, tenant, start(api, tenant, spec=ECHO, inputs={"name": "z"}).name)
        again = api.CancelRun(orchestrator_pb2.CancelRunRequest(name=run.name),
                              metadata=tenant.md())
        assert again.state == State.RUN_STATE_SUCCEEDED
        assert not again.cancel_requested
        assert again.last_event_sequence == run.last_event_sequence


def test_unknown_run_and_other_tenants_are_not_found(stack, tenant, other_tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        api = stub(channel)
        run = wait(api, tenant, start(api, tenant, spec=ECHO, inputs={"name": "me"}).name)
        for name, who in ((f"{tenant.parent}/runs/run-0000", tenant),
                          (run.name, other_tenant)):
            with pytest.raises(grpc.RpcError) as info:
                get(api, who, name)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as info:
                events(api, who, name)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            api.StartRun(orchestrator_pb2.StartRunRequest(parent=tenant.parent,
                                                          inline_blueprint=run.blueprint_snapshot),
                         metadata=tenant.md(Role.VIEWER))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        listed = api.ListRuns(orchestrator_pb2.ListRunsRequest(parent=other_tenant.parent),
                              metadata=other_tenant.md())
        assert list(listed.runs) == []


def test_json_start_wait_and_ndjson_events_through_the_edge(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    def call(method: str, path: str, body: dict | None = None) -> dict:  # type: ignore[type-arg]
        request = urllib.request.Request(
            f"{stack.edge.url}/v1/{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={**tenant.headers(), "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    run = call("POST", f"{tenant.parent}/runs", {
        "inlineBlueprint": ECHO, "inputs": {"name": "curl"}, "requestId": "json-1"})
    assert run["state"] in ("RUN_STATE_QUEUED", "RUN_STATE_RUNNING")
    done = call("POST", f"{run['name']}:wait", {"timeout": "20s"})
    assert done["state"] == "RUN_STATE_SUCCEEDED"
    assert done["output"] == "Hello curl"
    request = urllib.request.Request(f"{stack.edge.url}/v1/{run['name']}/events",
                                     headers=tenant.headers())
    with urllib.request.urlopen(request, timeout=30) as response:
        lines = [json.loads(line) for line in response.read().decode().splitlines() if line]
    assert [int(line["sequence"]) for line in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["type"] == "RUN_EVENT_TYPE_RUN_SUCCEEDED"
    with pytest.raises(urllib.error.HTTPError) as info:
        call("POST", f"{tenant.parent}/runs", {"blueprint": "missing"})
    assert info.value.code == 404
