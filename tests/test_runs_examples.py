"""The shipped example blueprints run as documented, and one blueprint using every node kind runs
to SUCCEEDED with its events streamed in order and resumable after a reconnect."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from iceos.orchestrator.v1 import orchestrator_pb2
from iceos.registry.v1 import blueprint_pb2

from services.common.blueprint.authoring import load_blueprint
from services.common.settings import REPO_ROOT
from tests.support.processes import wait_for
from tests.support.runs import (State, event_types, events, get, py, run_and_wait,
                                save_blueprint, start, stub, wait)

EXAMPLES = REPO_ROOT / "examples" / "blueprints"


def example(name: str) -> dict:  # type: ignore[type-arg]
    spec = load_blueprint((EXAMPLES / f"{name}.yaml").read_text(), source=name)
    return json_format.MessageToDict(spec)


@pytest.fixture
def api(stack):  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        yield stub(channel)


@pytest.mark.parametrize("name, inputs, check", [
    ("hello", {"name": "Ada"}, lambda out: out.endswith("!") and "ADA" in out),
    ("llm", {"message": "my invoice is wrong"},
     lambda out: out["category"] in ("billing", "bug", "question", "other")
     and 1 <= out["urgency"] <= 5),
    ("condition", {"text": "short"}, lambda out: out["branch"] == "else"),
    ("code", {"text": "a bb ccc"}, lambda out: out == {"words": 3, "longest": "ccc"}),
    ("parallel", {"topic": "tabs"},
     lambda out: set(out) == {"pro", "con"} and out["pro"] != out["con"]
     and all(isinstance(v, str) and v for v in out.values())),
    ("loop", {"names": ["Ada", "Bo", "Cy"]},
     lambda out: [o["name"] for o in out] == ["Ada", "Bo", "Cy"] and all(o["ok"] for o in out)),
])
def test_examples_run_as_documented(api, tenant, name, inputs, check) -> None:  # type: ignore[no-untyped-def]
    run = run_and_wait(api, tenant, example(name), inputs)
    assert run.state == State.RUN_STATE_SUCCEEDED, run.error
    assert check(py(run.output)), py(run.output)


def test_workflow_and_human_examples(stack, api, tenant) -> None:  # type: ignore[no-untyped-def]
    save_blueprint(stack, tenant, "hello", example("hello"))
    run = run_and_wait(api, tenant, example("workflow"), {"first": "Ada", "second": "Bo"})
    assert run.state == State.RUN_STATE_SUCCEEDED, run.error
    assert [x.endswith("!") for x in py(run.output)] == [True, True]
    human = start(api, tenant, spec=example("human"), inputs={"customer": "Ada", "amount": 12})
    wait_for(lambda: get(api, tenant, human.name).state == State.RUN_STATE_WAITING, 30,
             what="the refund approval to wait")
    request = orchestrator_pb2.SignalRunRequest(
        name=human.name, node="approve", decision=blueprint_pb2.HUMAN_DECISION_INPUT)
    json_format.ParseDict({"reason": "damaged"}, request.input)
    api.SignalRun(request, metadata=tenant.md())
    done = wait(api, tenant, human.name)
    assert done.state == State.RUN_STATE_SUCCEEDED, done.error
    assert py(done.output)["decision"]["input"] == {"reason": "damaged"}


EVERY_KIND = {
    "inputSchema": {"type": "object", "required": ["xs"]},
    "output": "{'loop': nodes.fan.output.numbers.each, 'route': nodes.route.output.branch,"
              " 'approved': nodes.ask.output.decision, 'child': nodes.child.output,"
              " 'agent': nodes.helper.output.answer, 'code': nodes.calc.output}",
    "nodes": [
        {"id": "seed", "tool": {"component": "builtins/json_transform",
                                "args": {"expression": "input.size()"},
                                "argExpressions": {"input": "inputs.xs"}}},
        {"id": "route", "dependsOn": ["seed"], "condition": {
            "expression": "nodes.seed.output.result > 2",
            "then": [{"id": "many", "llm": {"model": "deterministic", "prompt": "many"}}],
            "else": [{"id": "few", "llm": {"model": "deterministic", "prompt": "few"}}]}},
        {"id": "fan", "parallel": {"branches": [
            {"name": "numbers", "nodes": [{"id": "each", "loop": {
                "items": "inputs.xs", "maxConcurrency": 2, "collect": "nodes.sq.output.result",
                "body": [{"id": "sq", "tool": {"component": "builtins/json_transform",
                                               "args": {"expression": "input * input"},
                                               "argExpressions": {"input": "item"}}}]}}]},
            {"name": "words", "nodes": [{"id": "say", "llm": {
                "model": "deterministic", "prompt": "{{ inputs.xs }}"}}]}]}},
        {"id": "helper", "agent": {"model": "deterministic", "tools": ["builtins/json_transform"],
                                   "prompt": '<plan>[{"call": "builtins/json_transform", "args":'
                                             ' {"expression": "1 + 1"}}, {"answer": "two is'
                                             ' $last"}]</plan>'}},
        {"id": "child", "workflow": {"blueprint": "kinds-child",
                                     "argExpressions": {"n": "nodes.seed.output.result"}},
         "dependsOn": ["seed"]},
        {"id": "calc", "dependsOn": ["seed"], "code": {
            "source": "def main(inputs):\n    return inputs['n'] + 1\n",
            "argExpressions": {"n": "nodes.seed.output.result"}}},
        {"id": "ask", "dependsOn": ["route", "fan", "helper", "child", "calc"],
         "human": {"prompt": "ok with {{ nodes.child.output }}?"}},
    ]}


def test_a_blueprint_with_every_kind_runs_and_streams_resumably(stack, api, tenant) -> None:  # type: ignore[no-untyped-def]
    save_blueprint(stack, tenant, "kinds-child", {
        "nodes": [{"id": "twice", "tool": {"component": "builtins/json_transform",
                                           "args": {"expression": "input * 2"},
                                           "argExpressions": {"input": "inputs.n"}}}],
        "output": "nodes.twice.output.result"})
    run = start(api, tenant, spec=EVERY_KIND, inputs={"xs": [1, 2, 3]})
    wait_for(lambda: get(api, tenant, run.name).state == State.RUN_STATE_WAITING, 60,
             what="the human node to wait")
    first = events(api, tenant, run.name)  # a client that read this far, then went away
    api.SignalRun(orchestrator_pb2.SignalRunRequest(
        name=run.name, node="ask", decision=blueprint_pb2.HUMAN_DECISION_APPROVE),
        metadata=tenant.md())
    rest = events(api, tenant, run.name, after=first[-1].sequence, follow=True)
    done = wait(api, tenant, run.name)
    assert done.state == State.RUN_STATE_SUCCEEDED, done.error
    assert py(done.output) == {"loop": [1, 4, 9], "route": "then", "approved": "APPROVE",
                               "child": 6, "agent": 'two is {"result": 2}', "code": 4}
    everything = first + rest
    assert [e.sequence for e in everything] == list(range(1, done.last_event_sequence + 1))
    types = event_types(everything)
    assert types[0] == "RUN_QUEUED" and types[-1] == "RUN_SUCCEEDED"
    assert {"NODE_SKIPPED", "RUN_WAITING", "NODE_SIGNALLED"} <= set(types)
    kinds = {n.kind for n in done.nodes}
    assert kinds == {"tool", "condition", "llm", "parallel", "loop", "agent", "workflow",
                     "human", "code"}
