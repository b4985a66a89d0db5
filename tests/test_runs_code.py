"""Code nodes and Python and WASM tool components run in the sandbox service (never in the
orchestrator), called with a service token for the run's project and the node's idempotency key."""

from __future__ import annotations

import time

import grpc
import pytest
import wasmtime
from google.protobuf import json_format, struct_pb2
from iceos.registry.v1 import component_pb2, registry_pb2, registry_pb2_grpc
from iceos.orchestrator.v1 import orchestrator_pb2

from tests.support.errors import violations
from tests.support.processes import wait_for
from tests.support.runs import State, get, node_state, nodes, py, run_and_wait, start, stub, wait
from tests.support.sandbox import EXAMPLES


@pytest.fixture
def api(stack):  # type: ignore[no-untyped-def]
    with stack.channel("orchestrator") as channel:
        yield stub(channel)


def code(node_id: str, source: str, args=None, **extra):  # type: ignore[no-untyped-def]
    return {"id": node_id, "code": {"source": source, "args": args or {}}, **extra}


def test_code_node_returns_its_value_and_sees_the_idempotency_key(api, tenant) -> None:  # type: ignore[no-untyped-def]
    source = ("import os\n"
              "def main(inputs):\n"
              "    return {'sum': inputs['a'] + inputs['b'],\n"
              "            'key': os.environ.get('ICEOS_IDEMPOTENCY_KEY')}\n")
    spec = {"nodes": [{"id": "add", "code": {"source": source, "args": {"a": 2},
                                             "argExpressions": {"b": "inputs.b"}}}]}
    run = run_and_wait(api, tenant, spec, {"b": 40})
    assert run.state == State.RUN_STATE_SUCCEEDED, run.error
    out = py(run.output)["add"]
    assert out["sum"] == 42
    assert out["key"] == f"{run.name.split('/')[-1]}/add/1"


def test_code_that_raises_or_hangs_fails_the_node_clearly(api, tenant) -> None:  # type: ignore[no-untyped-def]
    raises = run_and_wait(api, tenant, {"nodes": [code(
        "boom", "def main(inputs):\n    return 1 / 0\n")]})
    assert raises.state == State.RUN_STATE_FAILED
    assert raises.error.reason == "CODE_ERROR" and "ZeroDivisionError" in raises.error.message
    assert "traceback" in py(nodes(raises)["boom"].error.details)
    hangs = run_and_wait(api, tenant, {"nodes": [code(
        "spin", "def main(inputs):\n    while True:\n        pass\n", timeout="2s")]})
    assert hangs.state == State.RUN_STATE_FAILED
    assert hangs.error.reason == "TIMEOUT"


def test_python_tool_component_runs_in_the_sandbox(stack, api, tenant) -> None:  # type: ignore[no-untyped-def]
    tool = json_format.ParseDict({"displayName": "Word count", "description": "count words",
                                  "tool": {"pythonSource": "def main(inputs):\n"
                                                           "    return {'count': len("
                                                           "inputs['text'].split())}\n",
                                           "inputSchema": {"type": "object",
                                                           "required": ["text"]}}},
                                 component_pb2.Component())
    with stack.channel("registry") as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).CreateComponent(
            registry_pb2.CreateComponentRequest(parent=tenant.parent, component_id="words",
                                                component=tool), metadata=tenant.md())
    run = run_and_wait(api, tenant, {"nodes": [{"id": "count", "tool": {
        "component": "words", "args": {"text": "one two three"}}}]})
    assert run.state == State.RUN_STATE_SUCCEEDED, run.error
    assert py(run.output)["count"] == {"count": 3}


def test_wasm_tool_component_runs_in_the_sandbox(stack, api, tenant) -> None:  # type: ignore[no-untyped-def]
    module = bytes(wasmtime.wat2wasm((EXAMPLES / "echo.wat").read_text()))
    tool = component_pb2.Component(
        display_name="Echo", description="echo the inputs back",
        tool=component_pb2.ToolSpec(wasm_module=module, input_schema=json_format.ParseDict(
            {"type": "object", "required": ["text"]}, struct_pb2.Struct())))
    with stack.channel("registry") as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).CreateComponent(
            registry_pb2.CreateComponentRequest(parent=tenant.parent, component_id="echo",
                                                component=tool), metadata=tenant.md())
    run = run_and_wait(api, tenant, {"nodes": [{"id": "echo", "tool": {
        "component": "echo", "args": {"text": "hi"}, "argExpressions": {"n": "inputs.n"}}}]},
        {"n": 7})
    assert run.state == State.RUN_STATE_SUCCEEDED, run.error
    assert py(run.output)["echo"] == {"echo": {"text": "hi", "n": 7}}
    # Arguments that contradict the tool's input schema are refused before anything runs.
    with pytest.raises(grpc.RpcError) as refused:
        start(api, tenant, spec={"nodes": [{"id": "echo", "tool": {
            "component": "echo", "args": {"other": 1}}}]})
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(refused.value) == [("inline_blueprint.nodes[0].tool.args",
                                          "MISSING_ARGUMENT")]


def test_cancel_stops_running_code(api, tenant) -> None:  # type: ignore[no-untyped-def]
    run = start(api, tenant, spec={"nodes": [code(
        "spin", "def main(inputs):\n    while True:\n        pass\n", timeout="25s")]})
    wait_for(lambda: node_state(get(api, tenant, run.name), "spin") == "RUNNING"
             if get(api, tenant, run.name).nodes else False, 30, what="the code to run")
    began = time.monotonic()
    api.CancelRun(orchestrator_pb2.CancelRunRequest(name=run.name), metadata=tenant.md())
    done = wait(api, tenant, run.name)
    assert done.state == State.RUN_STATE_CANCELLED
    assert time.monotonic() - began < 10  # not the 25 s the code would have been given
    assert node_state(done, "spin") == "CANCELLED"
