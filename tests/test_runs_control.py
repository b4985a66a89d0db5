"""Cancel, human signals and child runs: cancellation stops a running node, human nodes wait
(the run parks) until approved, rejected, answered or timed out, and cancelling a parent
cancels its children."""

from __future__ import annotations

import time

import grpc
import pytest
from iceos.orchestrator.v1 import orchestrator_pb2
from iceos.registry.v1 import blueprint_pb2

from tests.support.processes import wait_for
from tests.support.runs import (State, event_types, events, get, node_state, nodes, py,
                                save_blueprint, start, stub, tool, tool_calls, wait)

APPROVAL = {"nodes": [
    {"id": "draft", "llm": {"model": "deterministic", "prompt": "Draft for {{ inputs.who }}"}},
    {"id": "review", "dependsOn": ["draft"], "human": {
        "prompt": "Send this to {{ inputs.who }}? {{ nodes.draft.output }}",
        "inputSchema": {"type": "object", "required": ["note"],
                        "properties": {"note": {"type": "string"}}}}},
    {"id": "send", "dependsOn": ["review"], "tool": {
        "component": "builtins/json_transform", "args": {"expression": "input"},
        "argExpressions": {"input": "nodes.review.output"}}}],
    "output": "nodes.send.output.result"}


@pytest.fixture
def api(stack):  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        yield stub(channel)


def signal(api, tenant, name, node, decision, value=None, comment=""):  # type: ignore[no-untyped-def]
    request = orchestrator_pb2.SignalRunRequest(name=name, node=node, decision=decision,
                                                comment=comment)
    if value is not None:
        from google.protobuf import json_format
        json_format.ParseDict(value, request.input)
    return api.SignalRun(request, metadata=tenant.md(), timeout=30)


def waiting(api, tenant, name):  # type: ignore[no-untyped-def]
    return wait_for(lambda: get(api, tenant, name).state == State.RUN_STATE_WAITING, 30,
                    what="the run to park WAITING")


def test_cancel_stops_a_running_node(api, stack, tenant) -> None:  # type: ignore[no-untyped-def]
    label = f"cancel-{tenant.project_id}"
    spec = {"nodes": [tool("slow", "builtins/test_record", {"label": label, "sleep_s": 3}),
                      tool("after", "builtins/test_record", {"label": label},
                           dependsOn=["slow"])]}
    run = start(api, tenant, spec=spec)
    wait_for(lambda: tool_calls(stack.database_url, label), 30, what="the slow node to start")
    cancelled = api.CancelRun(orchestrator_pb2.CancelRunRequest(name=run.name, reason="enough"),
                              metadata=tenant.md(), timeout=30)
    assert cancelled.cancel_requested
    done = wait(api, tenant, run.name)
    assert done.state == State.RUN_STATE_CANCELLED
    assert done.error.reason == "CANCELLED" and done.error.message == "enough"
    assert node_state(done, "slow") == "CANCELLED"
    assert nodes(done)["slow"].attempts[0].outcome == "CANCELLED"
    time.sleep(3.5)  # longer than the node would have slept: it must not have finished
    assert [c["phase"] for c in tool_calls(stack.database_url, label)] == ["call"]
    types = event_types(events(api, tenant, run.name))
    assert types[-3:] == ["NODE_CANCELLED", "CANCEL_REQUESTED", "RUN_CANCELLED"]
    again = api.CancelRun(orchestrator_pb2.CancelRunRequest(name=run.name),
                          metadata=tenant.md())
    assert again.state == State.RUN_STATE_CANCELLED
    assert again.last_event_sequence == done.last_event_sequence


def test_human_approve_with_input_resumes_the_parked_run(api, tenant) -> None:  # type: ignore[no-untyped-def]
    run = start(api, tenant, spec=APPROVAL, inputs={"who": "Ada"})
    waiting(api, tenant, run.name)
    parked = get(api, tenant, run.name)
    assert node_state(parked, "review") == "WAITING"
    evs = events(api, tenant, run.name)
    waiting_event = [e for e in evs if e.node == "review" and
                     event_types([e]) == ["NODE_WAITING"]][0]
    assert "Send this to Ada?" in py(waiting_event.payload)["prompt"]
    with pytest.raises(grpc.RpcError) as info:  # the input must satisfy input_schema
        signal(api, tenant, run.name, "review", blueprint_pb2.HUMAN_DECISION_INPUT, {"x": 1})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    answered = signal(api, tenant, run.name, "review", blueprint_pb2.HUMAN_DECISION_INPUT,
                      {"note": "ship it"}, comment="looks good")
    assert "review" in nodes(answered)  # the answer comes with the run's node records
    done = wait(api, tenant, run.name)
    assert done.state == State.RUN_STATE_SUCCEEDED, done.error
    out = py(done.output)
    assert out["decision"] == "INPUT" and out["input"] == {"note": "ship it"}
    assert out["comment"] == "looks good" and out["actor"].startswith(f"{tenant.parent}/tokens/")
    assert done.claim_count >= 2  # parked, then claimed again by the signal
    types = event_types(events(api, tenant, run.name))
    assert "RUN_WAITING" in types and "NODE_SIGNALLED" in types
    with pytest.raises(grpc.RpcError) as info:  # no longer waiting
        signal(api, tenant, run.name, "review", blueprint_pb2.HUMAN_DECISION_APPROVE)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not waiting" in info.value.details()


def test_human_reject_fails_the_node(api, tenant) -> None:  # type: ignore[no-untyped-def]
    run = start(api, tenant, spec=APPROVAL, inputs={"who": "Bo"})
    waiting(api, tenant, run.name)
    signal(api, tenant, run.name, "review", blueprint_pb2.HUMAN_DECISION_REJECT,
           comment="not today")
    done = wait(api, tenant, run.name)
    assert done.state == State.RUN_STATE_FAILED
    assert done.error.reason == "REJECTED" and "not today" in done.error.message
    assert done.error.node == "review" and "send" not in nodes(done)


def test_signal_errors_are_clear(api, tenant) -> None:  # type: ignore[no-untyped-def]
    run = start(api, tenant, spec=APPROVAL, inputs={"who": "Cy"})
    with pytest.raises(grpc.RpcError) as info:
        signal(api, tenant, run.name, "draft", blueprint_pb2.HUMAN_DECISION_APPROVE)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a human node" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        signal(api, tenant, run.name, "review", blueprint_pb2.HUMAN_DECISION_INPUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    waiting(api, tenant, run.name)
    signal(api, tenant, run.name, "review", blueprint_pb2.HUMAN_DECISION_APPROVE)
    with pytest.raises(grpc.RpcError) as info:
        signal(api, tenant, run.name, "review", blueprint_pb2.HUMAN_DECISION_APPROVE)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert wait(api, tenant, run.name).state == State.RUN_STATE_SUCCEEDED


def test_human_timeout_applies_the_declared_default(api, tenant) -> None:  # type: ignore[no-untyped-def]
    def spec(decision: str, **extra):  # type: ignore[no-untyped-def]
        return {"nodes": [{"id": "ask", "timeout": "1s", "human": {
            "prompt": "anyone?", "timeoutDecision": decision, **extra}}]}

    approved = wait(api, tenant, start(api, tenant, spec=spec("HUMAN_DECISION_APPROVE")).name)
    assert approved.state == State.RUN_STATE_SUCCEEDED
    assert py(approved.output)["ask"]["actor"] == "timeout"
    default = wait(api, tenant, start(api, tenant, spec=spec(
        "HUMAN_DECISION_INPUT", timeoutInput={"plan": "B"})).name)
    assert py(default.output)["ask"]["input"] == {"plan": "B"}
    silent = wait(api, tenant, start(api, tenant, spec=spec("HUMAN_DECISION_UNSPECIFIED")).name)
    assert silent.state == State.RUN_STATE_FAILED and silent.error.reason == "HUMAN_TIMEOUT"
    assert node_state(silent, "ask") == "TIMED_OUT"


def test_cancelling_a_waiting_run_and_a_parent_cancels_the_child(api, stack, tenant) -> None:  # type: ignore[no-untyped-def]
    save_blueprint(stack, tenant, "needs-human", {
        "nodes": [{"id": "ok", "human": {"prompt": "ok?"}}]})
    parent = start(api, tenant, spec={"nodes": [
        {"id": "child", "workflow": {"blueprint": "needs-human"}}]})

    def child_run():  # type: ignore[no-untyped-def]
        listed = api.ListRuns(orchestrator_pb2.ListRunsRequest(
            parent=tenant.parent, filter='blueprint = "needs-human"'), metadata=tenant.md())
        return listed.runs[0] if listed.runs else None

    child = wait_for(child_run, 30, what="the child run")
    assert child.parent_run == parent.name and child.parent_node == "child"
    waiting(api, tenant, child.name)
    waiting(api, tenant, parent.name)
    api.CancelRun(orchestrator_pb2.CancelRunRequest(name=parent.name, reason="stop all"),
                  metadata=tenant.md())
    assert wait(api, tenant, parent.name).state == State.RUN_STATE_CANCELLED
    done = wait(api, tenant, child.name)
    assert done.state == State.RUN_STATE_CANCELLED
    assert "parent" in done.error.message


def test_child_run_outcome_reaches_the_parent_and_depth_is_limited(api, stack, tenant) -> None:  # type: ignore[no-untyped-def]
    save_blueprint(stack, tenant, "asks", {
        "nodes": [{"id": "ok", "human": {"prompt": "ok?"}}], "output": "'child done'"})
    parent = start(api, tenant, spec={"nodes": [
        {"id": "child", "workflow": {"blueprint": "asks"}}], "output": "nodes.child.output"})
    child = wait_for(lambda: next(iter(api.ListRuns(orchestrator_pb2.ListRunsRequest(
        parent=tenant.parent, filter='blueprint = "asks"'), metadata=tenant.md()).runs), None),
        30, what="the child run")
    waiting(api, tenant, child.name)
    signal(api, tenant, child.name, "ok", blueprint_pb2.HUMAN_DECISION_APPROVE)
    done = wait(api, tenant, parent.name)
    assert done.state == State.RUN_STATE_SUCCEEDED and py(done.output) == "child done"
    # Runs nest through a chain of blueprints (the registry refuses cycles) until the depth
    # limit (8) stops the ninth level.
    save_blueprint(stack, tenant, "level-9", {"nodes": [{"id": "leaf", "tool": {
        "component": "builtins/json_transform", "args": {"expression": "1"}}}]})
    for level in range(8, -1, -1):
        save_blueprint(stack, tenant, f"level-{level}", {"nodes": [
            {"id": "down", "workflow": {"blueprint": f"level-{level + 1}"}}]})
    deep = wait(api, tenant, start(api, tenant, blueprint="level-0").name, 90)
    assert deep.state == State.RUN_STATE_FAILED
    assert deep.error.reason == "CHILD_FAILED"
    chain = [next(iter(api.ListRuns(orchestrator_pb2.ListRunsRequest(
        parent=tenant.parent, filter=f'blueprint = "level-{level}"'),
        metadata=tenant.md()).runs), None) for level in range(10)]
    assert all(run is not None for run in chain[:9]) and chain[9] is None
    assert chain[8].error.reason == "DEPTH_LIMIT"
    assert "limit is 8" in chain[8].error.message
