"""Nodes that wait for something outside the run: a person (human) or a child run (workflow).

While such a node waits it counts as blocked; when nothing else in the run can make progress the
execution parks the run (WAITING, lease released) and the signal, the child's end, a timeout or
the deadline wakes it on whichever worker claims it next. Their timeouts are measured from the
node's recorded start (run_nodes.wake_at), so a park and resume does not restart them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from iceos.registry.v1 import blueprint_pb2

from .checkpoint import iso
from .failures import NodeFailure

if TYPE_CHECKING:
    from .execution import Context, Execution, NodeRecord, Outcome

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


def _now():  # type: ignore[no-untyped-def]
    from .execution import now
    return now()


def _next_attempt(rec: "NodeRecord") -> int:
    """A node caught RUNNING by a resume keeps its attempt; a new or cancelled one takes the
    next."""
    return rec.attempt if rec.state == "RUNNING" and rec.attempt else rec.attempt + 1


async def _begin(ex: "Execution", node: blueprint_pb2.Node, rec: "NodeRecord",
                 payload: dict[str, Any]) -> None:
    """Start a waiting node: RUNNING → WAITING, with its timeout as wake_at."""
    if rec.state == "CANCELLED":
        rec.start_time = None
    rec.attempt = _next_attempt(rec)
    ex.start(rec)
    rec.state = "WAITING"
    if node.HasField("timeout"):
        assert rec.start_time is not None
        rec.wake_at = rec.start_time + node.timeout.ToTimedelta()
    ex.stage(rec)
    ex.emit("NODE_WAITING", rec.path, {**payload, "timeout_time": iso(rec.wake_at)})


# -- human --------------------------------------------------------------------------------------

async def human(ex: "Execution", node: blueprint_pb2.Node, rec: "NodeRecord",
                ctx: "Context") -> "Outcome":
    spec = node.human
    if rec.state != "WAITING":
        payload: dict[str, Any] = {"prompt": ex.render("human.prompt", spec.prompt, ctx)}
        if spec.HasField("input_schema"):
            payload["input_schema"] = json_format.MessageToDict(spec.input_schema)
        await _begin(ex, node, rec, payload)
        await ex.commit()  # SignalRun accepts answers only for nodes WAITING in Postgres
    while True:
        signal = await ex.worker.signal(ex.run_id, rec.path)
        if signal is not None:
            ex.emit("NODE_SIGNALLED", rec.path, {
                "decision": signal["decision"], "comment": signal["comment"],
                "actor": signal["actor"]})
            return await _decide(ex, rec, signal["decision"], signal["input"],
                                 signal["comment"], signal["actor"])
        if rec.wake_at is not None and _now() >= rec.wake_at:
            return await _timed_out(ex, spec, rec)
        ex.begin_wait(rec)
        try:
            await ex.wait_for_change(rec.wake_at)
        finally:
            ex.end_wait(rec)


async def _decide(ex: "Execution", rec: "NodeRecord", decision: str, value: Any, comment: str,
                  actor: str) -> "Outcome":
    if decision == "REJECT":
        raise NodeFailure("REJECTED", f"rejected by {actor or 'a person'}"
                                      + (f": {comment}" if comment else ""))
    output = {"decision": decision, "input": value, "comment": comment, "actor": actor}
    return await ex.complete(rec, output, size=ex.check_output(output))


async def _timed_out(ex: "Execution", spec: blueprint_pb2.HumanNode,
                     rec: "NodeRecord") -> "Outcome":
    decision = spec.timeout_decision
    if decision == blueprint_pb2.HUMAN_DECISION_UNSPECIFIED:
        raise NodeFailure("HUMAN_TIMEOUT", "nobody answered before the node's timeout",
                          timed_out=True)
    name = blueprint_pb2.HumanDecision.Name(decision).removeprefix("HUMAN_DECISION_")
    ex.emit("NODE_SIGNALLED", rec.path, {"decision": name, "comment": "timeout",
                                         "actor": "timeout"})
    value = (json_format.MessageToDict(spec.timeout_input)
             if decision == blueprint_pb2.HUMAN_DECISION_INPUT else None)
    return await _decide(ex, rec, name, value, "no answer before the timeout", "timeout")


# -- workflow -----------------------------------------------------------------------------------

async def workflow(ex: "Execution", node: blueprint_pb2.Node, rec: "NodeRecord",
                   ctx: "Context") -> "Outcome":
    worker = ex.worker
    first = rec.state != "WAITING"
    attempt = _next_attempt(rec) if first else rec.attempt
    # One child per attempt: a resume finds the child it started before by this id.
    request_id = f"child:{ex.run_id}/{rec.path}/{attempt}"
    args = (ex.arguments("workflow", node.workflow.args, node.workflow.arg_expressions, ctx)
            if first else {})
    child = await worker.start_child(ex, node, args, request_id, path=rec.path,
                                     existing_only=not first)
    if first:
        await _begin(ex, node, rec, {"child_run": f"projects/{ex.project_id}/runs/{child}"})
        await ex.commit()
    try:
        with worker.notifier.watch(child) as watch:
            while True:
                state = await worker.child_state(child)
                if state is not None and state["state"] in TERMINAL:
                    return await _child_done(ex, rec, child, state)
                if rec.wake_at is not None and _now() >= rec.wake_at:
                    await worker.cancel_run(child, "the workflow node timed out")
                    raise NodeFailure("TIMEOUT", "the child run did not finish within the "
                                                 "node's timeout", timed_out=True)
                ex.begin_wait(rec)
                try:
                    await _either(ex, watch, rec.wake_at)
                finally:
                    ex.end_wait(rec)
    except asyncio.CancelledError:
        if ex.stop_reason is None:  # the node itself was cancelled (a container decided)
            worker.spawn(worker.cancel_run(child, "the parent node was cancelled"))
        raise


async def _either(ex: "Execution", watch: Any, until: Any) -> None:
    """Wait until the child is reported ended, the execution is poked, `until` passes, or
    5 seconds (a safety re-check)."""
    loop = asyncio.get_running_loop()
    limit = 5.0 if until is None else max(0.0, min(5.0, (until - _now()).total_seconds()))
    deadline = loop.time() + limit
    watch.ended = False
    ex.poked.clear()
    while not watch.ended and not ex.poked.is_set() and loop.time() < deadline:
        watch.changed.clear()
        waiters = [asyncio.ensure_future(watch.changed.wait()),
                   asyncio.ensure_future(ex.poked.wait())]
        try:
            await asyncio.wait(waiters, timeout=deadline - loop.time(),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


async def _child_done(ex: "Execution", rec: "NodeRecord", child: str,
                      state: dict[str, Any]) -> "Outcome":
    name = f"projects/{ex.project_id}/runs/{child}"
    if state["state"] == "SUCCEEDED":
        output = state["output"]
        return await ex.complete(rec, output, size=ex.check_output(output))
    error = state["error"] or {}
    reason = {"FAILED": "CHILD_FAILED", "CANCELLED": "CHILD_CANCELLED",
              "TIMED_OUT": "CHILD_TIMED_OUT"}[state["state"]]
    raise NodeFailure(reason, f"the child run {name} ended {state['state']}: "
                              f"{error.get('message', '')}".rstrip(": "),
                      details={"run": name, "error": error})

