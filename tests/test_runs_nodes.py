"""Node kinds alone and nested, error handling, retries, timeouts and limits, executed by the
real orchestrator process of the session stack."""

from __future__ import annotations

import time

import pytest

from tests.support.runs import (State, event_types, events, node_state, nodes, py,
                                run_and_wait, save_blueprint, start, stub, tool, wait)

T = "builtins/json_transform"


def jt(node_id: str, expression: str, value=None, **extra):  # type: ignore[no-untyped-def]
    args = {"expression": expression}
    if value is not None:
        args["input"] = value
    return tool(node_id, T, args, **extra)


@pytest.fixture
def api(stack):  # type: ignore[no-untyped-def]
    with stack.channel("orchestrator") as channel:
        yield stub(channel)


def test_llm_deterministic_same_prompt_same_answer_with_usage(api, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [{"id": "ask", "llm": {"model": "deterministic",
                                            "prompt": "Summarise {{ inputs.topic }}"}},
                      {"id": "shaped", "llm": {
                          "model": "deterministic", "prompt": "Classify {{ inputs.topic }}",
                          "responseSchema": {"type": "object", "required": ["label", "score"],
                                             "properties": {"label": {"enum": ["a", "b"]},
                                                            "score": {"type": "number"}}}}}]}
    first = run_and_wait(api, tenant, spec, {"topic": "durable runs"})
    second = run_and_wait(api, tenant, spec, {"topic": "durable runs"})
    other = run_and_wait(api, tenant, spec, {"topic": "something else"})
    assert first.state == State.RUN_STATE_SUCCEEDED
    answer = py(first.output)["ask"]
    assert answer == py(second.output)["ask"] != py(other.output)["ask"]
    assert "Summarise durable runs" in answer
    shaped = py(first.output)["shaped"]
    assert shaped["label"] in ("a", "b") and isinstance(shaped["score"], (int, float))
    usage = nodes(first)["ask"].usage
    assert usage.prompt_tokens == 3 and usage.total_tokens == usage.prompt_tokens + \
        usage.completion_tokens > 3
    assert first.usage.total_tokens == sum(n.usage.total_tokens for n in first.nodes)


def test_agent_follows_a_scripted_plan_with_tools(api, tenant) -> None:  # type: ignore[no-untyped-def]
    plan = ('<plan>[{"call": "builtins/json_transform", "args": {"expression": "input * 2", '
            '"input": {{ inputs.n }}}}, {"call": "builtins/nope", "args": {}}, '
            '{"answer": "double is $1"}]</plan>')
    spec = {"nodes": [{"id": "agent", "agent": {"model": "deterministic", "prompt": plan,
                                                "tools": [T]}}]}
    run = run_and_wait(api, tenant, spec, {"n": 21})
    assert run.state == State.RUN_STATE_SUCCEEDED, run.error
    out = py(run.output)["agent"]
    assert out["answer"] == 'double is {"result": 42}'
    assert out["turns"] == 3
    assert [s["tool"] for s in out["steps"]] == [T, "builtins/nope"]
    assert "unknown tool" in out["steps"][1]["result"]["error"]
    assert nodes(run)["agent"].usage.total_tokens > 0


def test_agent_that_never_answers_stops_at_max_iterations(api, tenant) -> None:  # type: ignore[no-untyped-def]
    steps = ",".join(['{"call": "builtins/json_transform", "args": {"expression": "1"}}'] * 5)
    spec = {"nodes": [{"id": "loopy", "agent": {"model": "deterministic", "tools": [T],
                                                "prompt": f"<plan>[{steps}]</plan>",
                                                "maxIterations": 3}}]}
    run = run_and_wait(api, tenant, spec)
    assert run.state == State.RUN_STATE_FAILED
    assert run.error.reason == "AGENT_MAX_ITERATIONS" and run.error.node == "loopy"


def test_condition_runs_one_branch_and_skips_the_other(api, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [{"id": "check", "condition": {
        "expression": "inputs.n > 10",
        "then": [jt("big", "'big'")], "else": [jt("small", "'small'")]}},
        jt("after", "'after'", dependsOn=["check"])]}
    run = run_and_wait(api, tenant, spec, {"n": 42})
    assert py(run.output)["check"] == {"branch": "then",
                                       "outputs": {"big": {"result": "big"}}}
    assert node_state(run, "check.then.big") == "SUCCEEDED"
    assert node_state(run, "check.else.small") == "SKIPPED"
    run = run_and_wait(api, tenant, spec, {"n": 1})
    assert py(run.output)["check"]["branch"] == "else"
    assert node_state(run, "check.then.big") == "SKIPPED"


def test_loop_keeps_order_with_concurrency_and_collect(api, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [{"id": "each", "loop": {
        "items": "inputs.xs", "maxConcurrency": 4, "collect": "nodes.sq.output.result",
        "body": [tool("sq", T, {"expression": "input * input"}) | {"tool": {
            "component": T, "args": {"expression": "input * input"},
            "argExpressions": {"input": "item"}}}]}}],
        "output": "nodes.each.output"}
    run = run_and_wait(api, tenant, spec, {"xs": list(range(12))})
    assert run.state == State.RUN_STATE_SUCCEEDED
    assert py(run.output) == [i * i for i in range(12)]
    assert node_state(run, "each[11].sq") == "SUCCEEDED"
    default_collect = {"nodes": [{"id": "l", "loop": {"items": "[1, 2]", "body": [
        jt("x", "'a'"), jt("y", "'b'", dependsOn=["x"])]}}]}
    out = py(run_and_wait(api, tenant, default_collect).output)["l"]
    assert out == [{"x": {"result": "a"}, "y": {"result": "b"}}] * 2


def test_runaway_loop_fails_clearly(api, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [{"id": "many", "loop": {"items": "inputs.xs", "maxItems": 10,
                                              "body": [jt("x", "item")]}}]}
    run = run_and_wait(api, tenant, spec, {"xs": list(range(11))})
    assert run.state == State.RUN_STATE_FAILED
    assert run.error.reason == "LOOP_TOO_MANY_ITEMS"
    assert "11 items" in run.error.message and "10" in run.error.message
    assert not any(n.path.startswith("many[") for n in run.nodes)


def test_parallel_join_modes(api, tenant) -> None:  # type: ignore[no-untyped-def]
    def spec(join: str, slow_fails: bool = False):  # type: ignore[no-untyped-def]
        return {"nodes": [{"id": "fan", "parallel": {"join": join, "branches": [
            {"name": "fast", "nodes": [jt("f", "'fast'")]},
            {"name": "slow", "nodes": [tool("s", "builtins/test_record",
                                            {"label": "slow", "sleep_s": 2})]},
            {"name": "broken", "nodes": [jt("b", "1 / 0")]} if slow_fails else
            {"name": "ok", "nodes": [jt("o", "'ok'")]}]}}]}

    all_run = run_and_wait(api, tenant, spec("JOIN_MODE_ALL"))
    out = py(all_run.output)["fan"]
    assert out["fast"] == {"f": {"result": "fast"}} and out["slow"]["s"]["label"] == "slow"
    any_run = run_and_wait(api, tenant, spec("JOIN_MODE_FIRST_SUCCESS", slow_fails=True))
    assert any_run.state == State.RUN_STATE_SUCCEEDED
    assert py(any_run.output)["fan"] == {"branch": "fast", "outputs": {"f": {"result": "fast"}}}
    assert node_state(any_run, "fan.branches.slow.s") == "CANCELLED"
    all_fail = run_and_wait(api, tenant, spec("JOIN_MODE_ALL", slow_fails=True))
    assert all_fail.state == State.RUN_STATE_FAILED
    assert all_fail.error.node == "fan.branches.broken.b"


def test_nested_loop_inside_parallel_branch_inside_condition(api, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [
        jt("seed", "[1, 2, 3]"),
        {"id": "gate", "dependsOn": ["seed"], "condition": {
            "expression": "size(nodes.seed.output.result) > 0",
            "then": [{"id": "fan", "parallel": {"branches": [
                {"name": "sums", "nodes": [{"id": "each", "loop": {
                    "items": "nodes.seed.output.result", "collect": "nodes.add.output.result",
                    "body": [{"id": "add", "tool": {"component": T,
                                                    "args": {"expression": "input + 100"},
                                                    "argExpressions": {"input": "item"}}}]}}]},
                {"name": "talk", "nodes": [{"id": "say", "llm": {
                    "model": "deterministic", "prompt": "{{ nodes.seed.output.result }}"}}]}]}}],
            "else": [jt("none", "'none'")]}}],
        "output": "nodes.gate.output.outputs.fan.sums.each"}
    run = run_and_wait(api, tenant, spec)
    assert run.state == State.RUN_STATE_SUCCEEDED, run.error
    assert py(run.output) == [101, 102, 103]
    assert node_state(run, "gate.then.fan.branches.sums.each[2].add") == "SUCCEEDED"
    assert node_state(run, "gate.then.fan.branches.talk.say") == "SUCCEEDED"
    assert node_state(run, "gate.else.none") == "SKIPPED"


def test_on_error_continue_exposes_the_error_and_skips_propagate(api, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [
        jt("bad", "1 / 0", onError="ON_ERROR_CONTINUE"),
        tool("sees", T, {"expression": "input"}, dependsOn=["bad"]) | {"tool": {
            "component": T, "args": {"expression": "input"},
            "argExpressions": {"input": "nodes.bad.error.reason"}}},
        {"id": "never", "condition": {"expression": "false", "then": [jt("t", "1")]}},
        {"id": "gate", "condition": {"expression": "true", "else": [jt("e", "1")],
                                     "then": [jt("x", "1")]}}]}
    run = run_and_wait(api, tenant, spec)
    assert run.state == State.RUN_STATE_SUCCEEDED
    assert node_state(run, "bad") == "FAILED"
    assert py(run.output)["sees"] == {"result": "BAD_EXPRESSION"}
    assert py(run.output)["bad"] is None
    dependent_of_skip = {"nodes": [{"id": "c", "condition": {
        "expression": "false", "then": [jt("a", "1"), jt("b", "2", dependsOn=["a"])],
        "else": [jt("z", "0")]}}]}
    run = run_and_wait(api, tenant, dependent_of_skip)
    assert node_state(run, "c.then.a") == "SKIPPED"


def test_failure_fails_the_run_and_stops_dependents(api, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [tool("boom", "builtins/test_raise", {"message": "kaboom"}),
                      jt("after", "1", dependsOn=["boom"])]}
    run = run_and_wait(api, tenant, spec)
    assert run.state == State.RUN_STATE_FAILED
    assert run.error.reason == "TOOL_ERROR" and "RuntimeError: kaboom" in run.error.message
    assert run.error.node == "boom"
    assert "after" not in nodes(run)
    assert event_types(events(api, tenant, run.name))[-1] == "RUN_FAILED"


def test_non_json_and_over_limit_outputs_fail_clearly(api, tenant) -> None:  # type: ignore[no-untyped-def]
    run = run_and_wait(api, tenant, {"nodes": [tool("odd", "builtins/test_bad_output")]})
    assert run.error.reason == "BAD_OUTPUT" and "not JSON" in run.error.message
    big = run_and_wait(api, tenant, {"nodes": [tool("big", "builtins/test_big_output",
                                                    {"bytes": 3 * 1024 * 1024})]})
    assert big.state == State.RUN_STATE_FAILED
    assert big.error.reason == "OUTPUT_TOO_LARGE" and "limit" in big.error.message
    # A NUL character cannot be stored in a run's record: the node fails at once, clearly.
    nul = run_and_wait(api, tenant, {"nodes": [jt("nul", '"a\\u0000b"')]})
    assert nul.state == State.RUN_STATE_FAILED
    assert nul.error.reason == "BAD_OUTPUT" and "NUL" in nul.error.message


def test_retries_back_off_then_succeed(api, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [tool("flaky", "builtins/test_flaky", {"fail_times": 2},
                           retry={"maxAttempts": 4, "initialBackoff": "0.2s",
                                  "maxBackoff": "1s", "multiplier": 2.0, "jitter": 0.1})]}
    began = time.monotonic()
    run = run_and_wait(api, tenant, spec)
    assert run.state == State.RUN_STATE_SUCCEEDED
    assert py(run.output)["flaky"] == {"attempt": 3}
    flaky = nodes(run)["flaky"]
    assert flaky.attempt == 3
    assert [a.outcome for a in flaky.attempts] == ["FAILED", "FAILED", "SUCCEEDED"]
    assert len({a.idempotency_key for a in flaky.attempts}) == 3
    gaps = [(b.start_time.ToDatetime() - a.end_time.ToDatetime()).total_seconds()
            for a, b in zip(flaky.attempts, flaky.attempts[1:])]
    assert 0.17 <= gaps[0] and 0.35 <= gaps[1]  # 0.2 s then 0.4 s, less at most 10 % jitter
    assert time.monotonic() - began >= 0.5
    types = event_types(events(api, tenant, run.name))
    assert types.count("NODE_RETRYING") == 2


def test_retryable_reasons_limit_retries(api, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [tool("flaky", "builtins/test_flaky", {"fail_times": 1, "reason": "NOPE"},
                           retry={"maxAttempts": 3, "initialBackoff": "0.05s",
                                  "retryableReasons": ["TIMEOUT"]})]}
    run = run_and_wait(api, tenant, spec)
    assert run.state == State.RUN_STATE_FAILED and run.error.reason == "NOPE"
    assert nodes(run)["flaky"].attempt == 1


def test_node_timeout_then_retry_then_give_up(api, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [tool("hang", "builtins/test_record", {"label": "hang", "sleep_s": 30},
                           timeout="0.5s", retry={"maxAttempts": 2, "initialBackoff": "0.1s"})]}
    began = time.monotonic()
    run = run_and_wait(api, tenant, spec)
    assert time.monotonic() - began < 20
    assert run.state == State.RUN_STATE_FAILED and run.error.reason == "TIMEOUT"
    hang = nodes(run)["hang"]
    assert hang.state == run.nodes[0].state and node_state(run, "hang") == "TIMED_OUT"
    assert [a.outcome for a in hang.attempts] == ["TIMED_OUT", "TIMED_OUT"]


def test_run_deadline_times_the_run_out(api, tenant) -> None:  # type: ignore[no-untyped-def]
    spec = {"nodes": [tool("hang", "builtins/test_record", {"label": "deadline",
                                                             "sleep_s": 30})]}
    run = wait(api, tenant, start(api, tenant, spec=spec, timeout_s=1).name, 30)
    assert run.state == State.RUN_STATE_TIMED_OUT
    assert node_state(run, "hang") == "CANCELLED"
    assert event_types(events(api, tenant, run.name))[-1] == "RUN_TIMED_OUT"


def test_workflow_node_runs_a_pinned_child(stack, api, tenant) -> None:  # type: ignore[no-untyped-def]
    child = {"nodes": [jt("double", "input * 2") | {"tool": {
        "component": T, "args": {"expression": "input * 2"},
        "argExpressions": {"input": "inputs.n"}}}],
        "inputSchema": {"type": "object", "required": ["n"]},
        "output": "nodes.double.output.result"}
    save_blueprint(stack, tenant, "doubler", child)
    spec = {"nodes": [{"id": "sub", "workflow": {"blueprint": "doubler",
                                                 "argExpressions": {"n": "inputs.n"}}},
                      jt("plus", "input + 1", dependsOn=["sub"]) | {"tool": {
                          "component": T, "args": {"expression": "input + 1"},
                          "argExpressions": {"input": "nodes.sub.output"}}}],
            "output": "nodes.plus.output.result"}
    run = run_and_wait(api, tenant, spec, {"n": 20})
    assert run.state == State.RUN_STATE_SUCCEEDED, run.error
    assert py(run.output) == 41
    children = [r for r in api.ListRuns(
        __import__("iceos.orchestrator.v1.orchestrator_pb2", fromlist=["x"]).ListRunsRequest(
            parent=tenant.parent, filter='blueprint = "doubler"'), metadata=tenant.md()).runs]
    assert len(children) == 1 and children[0].parent_run == run.name
    bad = run_and_wait(api, tenant, {"nodes": [{"id": "sub", "workflow": {
        "blueprint": "doubler", "args": {"m": 1}}}]})
    assert bad.state == State.RUN_STATE_FAILED
    assert bad.error.reason == "CHILD_INPUT_INVALID"
