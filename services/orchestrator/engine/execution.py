"""One claimed run, executed by one worker: DAG scheduling, containers, retries, checkpoints.

The execution contract is services/common/blueprint/graph.py (scopes, run paths, container
outputs). What this module adds:

- Checkpoints. Every node's record (state, attempt, output, error, usage) and its events are
  staged with the worker's CheckpointWriter; a completion is committed before the scheduler
  starts any dependent (a node no sibling depends on commits with the run's next write). A resumed execution reads the records and does not run again a node that
  SUCCEEDED, FAILED, was SKIPPED or TIMED_OUT; a node caught RUNNING re-executes the same attempt
  (same idempotency key); a node CANCELLED by its container (a parallel branch that lost, a
  failing sibling) runs again only if the container itself had not finished.
- Stops. Cancel, the run deadline, parking (nothing left but waiting for people or child runs),
  a lost lease and worker shutdown all cancel the execution's task; `stop_reason` says which,
  and only cancel and deadline write CANCELLED records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from iceos.registry.v1 import blueprint_pb2

from services.common import errors
from services.common.blueprint import expressions, graph, templates

from . import leaves
from .checkpoint import LeaseLost, iso
from .failures import NodeFailure

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)

DONE = ("SUCCEEDED", "FAILED", "SKIPPED", "TIMED_OUT")
LEAF_KINDS = ("tool", "llm", "agent", "code")
_MISSING = object()


def now() -> datetime:
    return datetime.now(timezone.utc)


# An escaped NUL in JSON text (an odd number of backslashes before `u0000`).
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def to_json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), allow_nan=False))


@dataclass
class Outcome:
    state: str
    output: Any = None
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.state == "SUCCEEDED"

    def ref(self) -> dict[str, Any]:
        return {"output": self.output, "error": self.error}


@dataclass
class NodeRecord:
    path: str
    node_id: str
    kind: str
    state: str = "PENDING"
    attempt: int = 0
    output: Any = None
    error: dict[str, Any] | None = None
    usage: dict[str, int] = field(default_factory=dict)
    wake_at: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    # No sibling depends on the node: its completion need not be committed before anything
    # starts, so it joins the next commit of the run (at the latest the run's end). Not stored.
    sink: bool = field(default=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "node_id": self.node_id, "kind": self.kind,
                "state": self.state, "attempt": self.attempt, "output": self.output,
                "error": self.error, "usage": self.usage or None, "wake_at": iso(self.wake_at),
                "start_time": iso(self.start_time), "end_time": iso(self.end_time)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "NodeRecord":
        return cls(path=row["path"], node_id=row["node_id"], kind=row["kind"],
                   state=row["state"], attempt=row["attempt"], output=row["output"],
                   error=row["error"], usage=row["usage"] or {}, wake_at=row["wake_at"],
                   start_time=row["start_time"], end_time=row["end_time"])


@dataclass(frozen=True)
class Context:
    """What expressions and templates at one place see: the run's inputs, the finished nodes
    of the enclosing scopes (`outer`) and of this scope (`local`, filled as siblings finish;
    inner ids shadow outer ones), and inside a loop body `item` and `index`."""

    inputs: dict[str, Any]
    outer: dict[str, dict[str, Any]]
    local: dict[str, dict[str, Any]] = field(default_factory=dict)
    item: Any = _MISSING
    index: int | None = None

    @property
    def refs(self) -> dict[str, dict[str, Any]]:
        return {**self.outer, **self.local} if self.local else self.outer

    def variables(self) -> dict[str, Any]:
        out: dict[str, Any] = {"inputs": self.inputs, "nodes": self.refs}
        if self.item is not _MISSING:
            out["item"] = self.item
            out["index"] = self.index
        return out

    def nested(self, local: dict[str, dict[str, Any]] | None = None, *, item: Any = _MISSING,
               index: int | None = None) -> "Context":
        """The context of a nested scope: this scope's finished nodes become outer ones."""
        if item is _MISSING:
            item, index = self.item, self.index
        return Context(self.inputs, self.refs, local if local is not None else {}, item, index)


@dataclass
class ScopeResult:
    ok: bool
    outputs: dict[str, Any]
    refs: dict[str, dict[str, Any]]
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class ScopePlan:
    """The dependency structure of one list of sibling nodes, computed once per list."""

    by_id: dict[str, blueprint_pb2.Node]
    deps: dict[str, list[str]]  # id → the siblings it depends on
    dependents: dict[str, list[str]]  # id → the siblings that depend on it
    unmet: dict[str, int]  # id → how many dependencies it waits for at the start
    roots: tuple[str, ...]  # ids with no dependency, in blueprint order
    index: dict[str, int]  # id → position in the blueprint

    @classmethod
    def of(cls, nodes: Sequence[blueprint_pb2.Node]) -> "ScopePlan":
        deps = graph.dependency_map(nodes)
        dependents: dict[str, list[str]] = {n.id: [] for n in nodes}
        for node_id, needs in deps.items():
            for dep in needs:
                dependents[dep].append(node_id)
        return cls({n.id: n for n in nodes}, deps, dependents,
                   {node_id: len(needs) for node_id, needs in deps.items()},
                   tuple(n.id for n in nodes if not deps[n.id]),
                   {n.id: i for i, n in enumerate(nodes)})


class _Park(Exception):
    pass


class Execution:
    """Executes one run for as long as this worker holds it."""

    def __init__(self, worker: "Worker", row: dict[str, Any],
                 spec: blueprint_pb2.Blueprint) -> None:
        self.worker = worker
        self.config = worker.config
        self.writer = worker.writer
        self.row = row
        self.run_id: str = row["id"]
        self.project_id: str = row["project_id"]
        self.claim: int = row["claim_count"]
        self.spec = spec
        self.inputs: dict[str, Any] = row["inputs"] or {}
        self.pins: dict[str, int] = row.get("pins") or {}
        self.deadline: datetime = row["deadline"]
        self.prev_state: str = row.get("prev_state") or "QUEUED"
        # The last event's sequence: known for a run born here; read with the checkpoints
        # otherwise (_load).
        self.seq: int = int(row.get("last_event_seq") or 0)
        self.records: dict[str, NodeRecord] = {}
        self.usage: dict[str, int] = dict(row.get("usage") or {})
        self.output_bytes = 0
        self.executions = 0
        self.run_slots = asyncio.Semaphore(self.config.max_nodes_per_run)
        self.stop_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.poked = asyncio.Event()
        self.active_waits: dict[str, NodeRecord] = {}
        self.busy = 0
        self.progressed = False
        self._park_timer: asyncio.TimerHandle | None = None
        self._attempt_start: dict[tuple[str, int], datetime] = {}
        self._parked: dict[str, NodeRecord] = {}
        self.finishing = False

    # -- events and records ---------------------------------------------------------------------

    def emit(self, kind: str, node: str = "", payload: dict[str, Any] | None = None,
             at: datetime | None = None) -> None:
        self.seq += 1
        self.writer.event(self.run_id, self.claim, self.seq, kind, node, payload or {},
                          at or now())

    def stage(self, rec: NodeRecord) -> None:
        self.writer.node(self.run_id, self.claim, rec)

    def stage_attempt(self, rec: NodeRecord, outcome: str | None = None,
                      at: datetime | None = None) -> None:
        key = (rec.path, rec.attempt)
        at = at or now()
        record: dict[str, Any] = {"path": rec.path, "attempt": rec.attempt,
                                  "key": self.idempotency_key(rec), "outcome": outcome}
        if outcome is None:
            self._attempt_start[key] = at
            record["end_time"] = None
            record["start_time"] = at.isoformat()
        else:
            record["end_time"] = at.isoformat()
            record["start_time"] = iso(self._attempt_start.get(key) or rec.start_time or at)
        self.writer.attempt(self.run_id, self.claim, record)

    def idempotency_key(self, rec: NodeRecord) -> str:
        return f"{self.run_id}/{rec.path}/{rec.attempt}"

    async def commit(self) -> None:
        try:
            await self.writer.flush(self.run_id)
        except LeaseLost:
            # Another worker has the run: unwind without staging anything more.
            self.stop_reason = self.stop_reason or "LOST"
            raise

    # -- control from the worker ------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """CANCELLED | TIMED_OUT | PARK | LOST | SHUTDOWN. The first reason wins, except that a
        cancel or the deadline overrides a park in progress; once the run is writing its end,
        only losing the lease or shutting down stop it."""
        if self.finishing and reason not in ("LOST", "SHUTDOWN"):
            return
        if self.stop_reason is not None and not (
                self.stop_reason == "PARK" and reason in ("CANCELLED", "TIMED_OUT")):
            return
        self.stop_reason = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def poke(self) -> None:
        """Something changed outside (a signal, a child run): waiting nodes look again."""
        self.poked.set()

    # -- the run ----------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.call_later(max(0.0, (self.deadline - now()).total_seconds()),
                                   self.request_stop, "TIMED_OUT")
        try:
            if self.prev_state != "QUEUED" or "last_event_seq" not in self.row:
                await self._load()  # a run born here has no checkpoints to read
            await self._run()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            reason = self.stop_reason
            try:
                if reason in ("CANCELLED", "TIMED_OUT"):
                    await self._finish_stopped(reason)
                elif reason == "PARK":
                    await self._park()
                else:
                    self.writer.discard(self.run_id)
            except LeaseLost:
                pass
            except asyncio.CancelledError:
                self.writer.discard(self.run_id)
        except LeaseLost:
            log.info("lost the lease of run %s; another worker has it", self.run_id)
        finally:
            deadline.cancel()
            if self._park_timer is not None:
                self._park_timer.cancel()

    async def _load(self) -> None:
        rows, self.seq = await self.worker.checkpoints(self.run_id)
        self.records = {r["path"]: NodeRecord.from_row(r) for r in rows}
        self.output_bytes = sum(to_json_size(r.output) for r in self.records.values()
                                if r.state == "SUCCEEDED")

    async def _run(self) -> None:
        row = self.row
        if row["cancel_requested"]:
            self.stop_reason = "CANCELLED"
            await self._finish_stopped("CANCELLED")
            return
        if self.deadline <= now():
            self.stop_reason = "TIMED_OUT"
            await self._finish_stopped("TIMED_OUT")
            return
        if self.prev_state == "RUNNING" and self.claim > self.config.max_claims:
            running = [p for p, r in self.records.items() if r.state == "RUNNING"]
            await self._finish("FAILED", error={
                "reason": "WORKER_LOST",
                "message": f"the run's worker stopped {self.claim - 1} times while running it"
                           + (f" (running: {', '.join(running)})" if running else ""),
                "node": running[0] if running else ""})
            return
        if self.prev_state == "QUEUED":
            self.emit("RUN_STARTED", payload={"worker": self.config.worker_id})
        elif self.prev_state == "RUNNING":
            self.emit("RUN_RESUMED", payload={"worker": self.config.worker_id,
                                               "claim": self.claim})
        root = Context(self.inputs, {})
        result = await self.scope(self.spec.nodes, "", "", root)
        if not result.ok:
            await self._finish("FAILED", error=result.error)
            return
        try:
            if self.spec.output:
                output = expressions.evaluate(self.spec.output,
                                              root.nested(result.refs).variables())
            else:
                output = result.outputs
            size = to_json_size(output)
        except expressions.ExpressionError as exc:
            await self._finish("FAILED", error={"reason": "EXPRESSION_ERROR",
                                                "message": f"output: {exc}"})
            return
        except (TypeError, ValueError) as exc:
            await self._finish("FAILED", error={"reason": "BAD_OUTPUT",
                                                "message": f"the run output is not JSON: {exc}"})
            return
        if size > self.config.max_run_output_bytes:
            await self._finish("FAILED", error={
                "reason": "RUN_OUTPUT_TOO_LARGE",
                "message": f"the run output is {size} bytes, more than the limit of "
                           f"{self.config.max_run_output_bytes}"})
            return
        await self._finish("SUCCEEDED", output=output)

    async def _finish(self, state: str, *, output: Any = None,
                      error: dict[str, Any] | None = None) -> None:
        self.finishing = True
        payload: dict[str, Any] = {}
        if state == "SUCCEEDED":
            payload["output"] = output
        elif error:
            payload["error"] = error
        self.emit(f"RUN_{state}", node=(error or {}).get("node", ""), payload=payload)
        update: dict[str, Any] = {"state": state, "end_time": iso(now()), "release": True,
                                  "usage": self.usage or None}
        if state == "SUCCEEDED":
            update["set_output"] = True
            update["output"] = output
        else:
            update["error"] = error
        self.writer.run(self.run_id, self.claim, update,
                        wake_parent=self.row.get("parent_run_id"),
                        cancel_children=None if state == "SUCCEEDED"
                        else f"the parent run {state.lower().replace('_', ' ')}")
        await self.commit()

    async def _finish_stopped(self, reason: str) -> None:
        if reason == "CANCELLED":
            why = self.row.get("cancel_reason") or ""
            self.emit("CANCEL_REQUESTED", payload={"reason": why})
            await self._finish("CANCELLED", error={"reason": "CANCELLED",
                                                   "message": why or "the run was cancelled"})
        else:
            await self._finish("TIMED_OUT", error={
                "reason": "TIMEOUT",
                "message": f"the run deadline ({self.deadline.isoformat()}) passed"})

    async def _park(self) -> None:
        waits = self._parked or dict(self.active_waits)
        waiting = sorted(waits)
        wake = min([r.wake_at for r in waits.values() if r.wake_at] + [self.deadline])
        if self.progressed or self.prev_state != "WAITING":
            self.emit("RUN_WAITING", payload={"nodes": waiting, "wake_time": iso(wake)})
        self.writer.run(self.run_id, self.claim, {"state": "WAITING", "release": True,
                                                  "park": True, "wake_at": iso(wake),
                                                  "usage": self.usage or None})
        await self.commit()

    # -- waiting (human signals, child runs) and parking ------------------------------------------

    def begin_wait(self, rec: NodeRecord) -> None:
        """The node sleeps until something outside changes (callers end the wait before they
        look again, so a node that is working is never taken for a waiting one)."""
        self.active_waits[rec.path] = rec
        self._rearm_park()

    def end_wait(self, rec: NodeRecord) -> None:
        self.active_waits.pop(rec.path, None)

    def _busy(self, delta: int) -> None:
        """Leaf nodes at work (executing or backing off between attempts)."""
        self.busy += delta
        self._rearm_park()

    def _rearm_park(self) -> None:
        """Park only after `park_after_s` with no leaf at work and some node waiting: every
        change restarts the clock."""
        if self._park_timer is not None:
            self._park_timer.cancel()
            self._park_timer = None
        if self.busy == 0 and self.active_waits and self.stop_reason is None:
            self._park_timer = asyncio.get_running_loop().call_later(
                self.config.park_after_s, self._park_if_idle)

    def _park_if_idle(self) -> None:
        self._park_timer = None
        if self.busy == 0 and self.active_waits:
            # The waiting nodes' tasks end with the park: remember what they wait for.
            self._parked = dict(self.active_waits)
            self.request_stop("PARK")

    async def wait_for_change(self, until: datetime | None, *, at_most: float = 5.0) -> None:
        """Sleep until poked, `until`, or `at_most` seconds (a safety re-check)."""
        delay = at_most
        if until is not None:
            delay = max(0.0, min(delay, (until - now()).total_seconds()))
        self.poked.clear()
        try:
            await asyncio.wait_for(self.poked.wait(), delay)
        except TimeoutError:
            pass

    # -- scopes -----------------------------------------------------------------------------------

    async def scope(self, nodes: Sequence[blueprint_pb2.Node], prefix: str, segment: str,
                    ctx: Context) -> ScopeResult:
        """Run one list of sibling nodes as a DAG."""
        plan = self.worker.scope_plan(nodes)
        by_id, deps, dependents = plan.by_id, plan.deps, plan.dependents
        results: dict[str, Outcome] = {}
        # What siblings see: every finished sibling. Validation already limits references to
        # a node's dependency closure, and every node of that closure has finished before the
        # node starts, so one shared mapping serves all (no per-node copy).
        refs: dict[str, dict[str, Any]] = {}
        inner = ctx.nested(refs)
        unmet = dict(plan.unmet)  # dependencies each node still waits for
        ready = list(plan.roots)  # nodes whose dependencies have all finished, not started
        tasks: dict[asyncio.Task[Outcome], str] = {}

        def finished(node_id: str, outcome: Outcome) -> None:
            results[node_id] = outcome
            refs[node_id] = outcome.ref()
            for later in dependents[node_id]:
                unmet[later] -= 1
                if not unmet[later]:
                    ready.append(later)

        def failure(node_id: str, outcome: Outcome) -> ScopeResult | None:
            if outcome.state in ("FAILED", "TIMED_OUT") and \
                    by_id[node_id].on_error != blueprint_pb2.ON_ERROR_CONTINUE:
                error = dict(outcome.error or {})
                error.setdefault("node", graph.run_path(prefix, segment, node_id))
                return ScopeResult(False, {}, {}, error)
            return None

        try:
            while True:
                while ready:
                    if len(ready) > 1:
                        ready.sort(key=plan.index.__getitem__)  # blueprint order
                    starting, ready = ready, []
                    for node_id in starting:
                        path = graph.run_path(prefix, segment, node_id)
                        skipped = [d for d in deps[node_id] if results[d].state == "SKIPPED"]
                        if skipped:
                            finished(node_id, self.skip(by_id[node_id], path,
                                                        f"dependency {skipped[0]} was skipped"))
                        elif len(starting) == 1 and not tasks:
                            # One node and nothing else running (a chain): run it in this
                            # task, saving a task and a wait per node.
                            outcome = await self.node(by_id[node_id], path, inner,
                                                      sink=not dependents[node_id])
                            finished(node_id, outcome)
                            if (failed := failure(node_id, outcome)) is not None:
                                return failed
                        else:
                            task = asyncio.ensure_future(self.node(
                                by_id[node_id], path, inner, sink=not dependents[node_id]))
                            tasks[task] = node_id
                if not tasks:
                    break
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    node_id = tasks.pop(task)
                    outcome = task.result()
                    finished(node_id, outcome)
                    if (failed := failure(node_id, outcome)) is not None:
                        await self._cancel_tasks(tasks)
                        return failed
        finally:
            if tasks:
                await self._cancel_tasks(tasks)
        outputs = {node_id: results[node_id].output for node_id in by_id if node_id in results}
        return ScopeResult(True, outputs, dict(refs))

    async def _cancel_tasks(self, tasks: dict[asyncio.Task[Outcome], str]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()

    def skip(self, node: blueprint_pb2.Node, path: str, reason: str) -> Outcome:
        rec = self.records.get(path)
        if rec is not None and rec.state in DONE:
            return Outcome(rec.state, rec.output, rec.error)
        rec = NodeRecord(path, node.id, graph.kind_of(node), state="SKIPPED", end_time=now())
        self.records[path] = rec
        self.stage(rec)
        self.emit("NODE_SKIPPED", path, {"reason": reason})
        return Outcome("SKIPPED")

    # -- one node ---------------------------------------------------------------------------------

    async def node(self, node: blueprint_pb2.Node, path: str, ctx: Context, *,
                   sink: bool = False) -> Outcome:
        rec = self.records.get(path)
        if rec is not None and rec.state in DONE:
            return Outcome(rec.state, rec.output, rec.error)
        kind = graph.kind_of(node)
        if rec is None:
            rec = self.records[path] = NodeRecord(path, node.id, kind)
        rec.sink = sink
        self.executions += 1
        try:
            if self.executions > self.config.max_node_executions:
                raise NodeFailure("TOO_MANY_NODE_EXECUTIONS",
                                  f"the run executed more than "
                                  f"{self.config.max_node_executions} nodes")
            if kind in LEAF_KINDS:
                return await self._leaf(node, rec, ctx)
            if kind in ("human", "workflow"):
                return await self._waiting_node(node, rec, ctx)
            return await self._container(node, rec, ctx)
        except NodeFailure as failure:
            return await self.complete(rec, failure=failure)
        except (LeaseLost, errors.Unavailable):
            raise  # the run stops here and is resumed from its checkpoints
        except asyncio.CancelledError:
            if rec.state not in DONE and rec.state != "PENDING" and \
                    self.stop_reason in (None, "CANCELLED", "TIMED_OUT"):
                self._cancelled(rec)
            raise

    def _cancelled(self, rec: NodeRecord) -> None:
        if rec.state == "RUNNING" and rec.kind in LEAF_KINDS:
            self.stage_attempt(rec, "CANCELLED")
        rec.state = "CANCELLED"
        rec.end_time = now()
        self.stage(rec)
        self.emit("NODE_CANCELLED", rec.path, {})
        self.end_wait(rec)

    def start(self, rec: NodeRecord, payload: dict[str, Any] | None = None,
              at: datetime | None = None) -> None:
        at = at or now()
        rec.state = "RUNNING"
        rec.error = None
        if rec.start_time is None:
            rec.start_time = at
        self.stage(rec)
        self.emit("NODE_STARTED", rec.path, {"kind": rec.kind, "attempt": rec.attempt,
                                             **(payload or {})}, at)

    def check_output(self, output: Any) -> int:
        try:
            text = json.dumps(output, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise NodeFailure("BAD_OUTPUT", f"the output is not JSON: {exc}") from None
        if "\\u0000" in text and _JSON_NUL.search(text):
            # Postgres refuses it in jsonb: the checkpoint could never be written.
            raise NodeFailure("BAD_OUTPUT", "the output contains a NUL character (\\u0000), "
                                            "which a run's record cannot hold")
        size = len(text)
        limit = self.config.max_node_output_bytes
        if size > limit:
            raise NodeFailure("OUTPUT_TOO_LARGE", f"the output is {size} bytes, more than the "
                                                  f"limit of {limit} bytes per node")
        if self.output_bytes + size > self.config.max_run_output_bytes:
            raise NodeFailure("RUN_OUTPUT_TOO_LARGE",
                              f"the run's outputs would reach {self.output_bytes + size} bytes, "
                              f"more than the limit of {self.config.max_run_output_bytes}")
        return size

    async def complete(self, rec: NodeRecord, output: Any = None, *,
                       failure: NodeFailure | None = None, size: int = 0) -> Outcome:
        """Record the node's completion and commit it before returning (dependents start
        after this). A sink's completion is staged only: it commits with the run's next write
        (its container's completion, the run's end), which nothing can precede."""
        rec.end_time = at = now()
        self.end_wait(rec)
        if failure is None:
            rec.state, rec.output, rec.error = "SUCCEEDED", output, None
            self.output_bytes += size
            if rec.kind in LEAF_KINDS:
                self.stage_attempt(rec, "SUCCEEDED", at)
            self.emit("NODE_SUCCEEDED", rec.path, {"output": output}, at)
        else:
            rec.state = "TIMED_OUT" if failure.timed_out else "FAILED"
            rec.output, rec.error = None, failure.to_json()
            if rec.kind in LEAF_KINDS and rec.attempt:
                self.stage_attempt(rec, rec.state, at)
            self.emit("NODE_TIMED_OUT" if failure.timed_out else "NODE_FAILED", rec.path,
                      {"error": rec.error, "attempt": rec.attempt}, at)
        if rec.usage:
            for key, value in rec.usage.items():
                self.usage[key] = self.usage.get(key, 0) + int(value)
            self.writer.run(self.run_id, self.claim, {"usage": self.usage})
        self.stage(rec)
        self.progressed = True
        if not rec.sink:  # dependents start after this; a sink's completion commits later
            await self.commit()
        return Outcome(rec.state, rec.output, rec.error)

    # -- leaves: tool, llm, agent, code -----------------------------------------------------------

    async def _leaf(self, node: blueprint_pb2.Node, rec: NodeRecord, ctx: Context) -> Outcome:
        execute = leaves.EXECUTORS[rec.kind]
        retry = node.retry
        max_attempts = max(1, retry.max_attempts)
        timeout = (node.timeout.ToTimedelta().total_seconds() if node.HasField("timeout")
                   else self.config.node_timeout_s)
        # A node caught RUNNING by a resume re-executes that same attempt (same key).
        rec.attempt = rec.attempt if rec.state == "RUNNING" and rec.attempt else rec.attempt + 1
        while True:
            at = now()
            self.start(rec, at=at)
            self.stage_attempt(rec, at=at)
            self._busy(+1)
            try:
                async with self.run_slots, self.worker.node_slots:
                    async with asyncio.timeout(timeout):
                        output = await execute(self, node, rec, ctx)
                size = self.check_output(output)
                return await self.complete(rec, output, size=size)
            except NodeFailure as exc:
                failure = exc
            except (LeaseLost, errors.Unavailable):
                raise
            except TimeoutError:
                failure = NodeFailure("TIMEOUT", f"the attempt took longer than {timeout:g}s",
                                      timed_out=True)
            except Exception as exc:  # noqa: BLE001 - our bug must not crash-loop the run
                log.error("node %s of run %s failed unexpectedly", rec.path, self.run_id,
                          exc_info=exc)
                failure = NodeFailure("INTERNAL", f"internal error ({exc.__class__.__name__}); "
                                                  "the operator's logs have the details")
            finally:
                self._busy(-1)
            if not self._retryable(failure, retry, rec.attempt, max_attempts):
                return await self.complete(rec, failure=failure)
            delay = self._backoff(retry, rec.attempt)
            self.stage_attempt(rec, "TIMED_OUT" if failure.timed_out else "FAILED")
            rec.state = "WAITING"
            rec.error = failure.to_json()
            self.stage(rec)
            self.emit("NODE_RETRYING", rec.path, {"attempt": rec.attempt, "delay_s": delay,
                                                  "error": rec.error})
            self._busy(+1)  # backing off is work in progress, not waiting: no parking
            try:
                await asyncio.sleep(delay)
            finally:
                self._busy(-1)
            rec.attempt += 1

    @staticmethod
    def _retryable(failure: NodeFailure, retry: blueprint_pb2.RetryPolicy, attempt: int,
                   max_attempts: int) -> bool:
        if attempt >= max_attempts:
            return False
        reasons = list(retry.retryable_reasons)
        return not reasons or failure.reason in reasons

    @staticmethod
    def _backoff(retry: blueprint_pb2.RetryPolicy, attempt: int) -> float:
        """min(max_backoff, initial * multiplier^(attempt-1)) × U(1 - jitter, 1)."""
        initial = (retry.initial_backoff.ToTimedelta().total_seconds()
                   if retry.HasField("initial_backoff") else 1.0)
        cap = (retry.max_backoff.ToTimedelta().total_seconds()
               if retry.HasField("max_backoff") else 60.0)
        multiplier = retry.multiplier or 2.0
        delay = min(cap, initial * multiplier ** (attempt - 1))
        if retry.jitter:
            delay *= random.uniform(1.0 - retry.jitter, 1.0)
        return delay

    # -- human and workflow nodes: they wait for something outside --------------------------------

    async def _waiting_node(self, node: blueprint_pb2.Node, rec: NodeRecord,
                            ctx: Context) -> Outcome:
        from . import waits
        if rec.kind == "human":
            return await waits.human(self, node, rec, ctx)
        return await waits.workflow(self, node, rec, ctx)

    # -- containers: condition, loop, parallel ----------------------------------------------------

    async def _container(self, node: blueprint_pb2.Node, rec: NodeRecord,
                         ctx: Context) -> Outcome:
        if rec.state != "RUNNING":
            self.start(rec)
        timeout = node.timeout.ToTimedelta().total_seconds() if node.HasField("timeout") else None
        try:
            async with asyncio.timeout(timeout):
                if rec.kind == "condition":
                    output = await self._condition(node, rec, ctx)
                elif rec.kind == "loop":
                    output = await self._loop(node, rec, ctx)
                else:
                    output = await self._parallel(node, rec, ctx)
        except TimeoutError:
            raise NodeFailure("TIMEOUT", f"the {rec.kind} took longer than {timeout:g}s",
                              timed_out=True) from None
        size = self.check_output(output)
        return await self.complete(rec, output, size=size)

    @staticmethod
    def _child_failure(kind: str, error: dict[str, Any] | None) -> NodeFailure:
        error = error or {}
        return NodeFailure(error.get("reason", "FAILED"),
                           f"{error.get('node', 'a nested node')}: {error.get('message', '')}",
                           details=error.get("details"), node=error.get("node", ""))

    def evaluate(self, field: str, source: str, ctx: Context) -> Any:
        try:
            return expressions.evaluate(source, ctx.variables())
        except expressions.ExpressionError as exc:
            raise NodeFailure("EXPRESSION_ERROR", f"{field}: {exc}") from None

    async def _condition(self, node: blueprint_pb2.Node, rec: NodeRecord, ctx: Context) -> Any:
        value = self.evaluate("condition.expression", node.condition.expression, ctx)
        if not isinstance(value, bool):
            raise NodeFailure("EXPRESSION_ERROR", f"condition.expression gave "
                                                  f"{type(value).__name__}, not a bool")
        taken, other = ("then", "else") if value else ("else", "then")
        for sibling in getattr(node.condition, other):
            self.skip(sibling, graph.run_path(rec.path, other, sibling.id),
                      f"the condition chose {taken}")
        result = await self.scope(getattr(node.condition, taken), rec.path, taken, ctx)
        if not result.ok:
            raise self._child_failure("condition", result.error)
        return {"branch": taken, "outputs": result.outputs}

    async def _loop(self, node: blueprint_pb2.Node, rec: NodeRecord, ctx: Context) -> Any:
        loop = node.loop
        items = self.evaluate("loop.items", loop.items, ctx)
        if not isinstance(items, list):
            raise NodeFailure("EXPRESSION_ERROR",
                              f"loop.items gave {type(items).__name__}, not a list")
        limit = loop.max_items or self.config.max_loop_items
        if len(items) > limit:
            raise NodeFailure("LOOP_TOO_MANY_ITEMS",
                              f"loop.items has {len(items)} items, more than max_items "
                              f"{limit}; raise max_items or split the list")
        slots = asyncio.Semaphore(max(1, loop.max_concurrency))

        async def one(index: int, item: Any) -> ScopeResult:
            async with slots:
                return await self.scope(loop.body, f"{rec.path}[{index}]", "",
                                        ctx.nested(item=item, index=index))

        tasks = {asyncio.ensure_future(one(i, item)): i for i, item in enumerate(items)}
        results: dict[int, ScopeResult] = {}
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    index = tasks.pop(task)
                    result = task.result()
                    if not result.ok:
                        raise self._child_failure("loop", result.error)
                    results[index] = result
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        collected = []
        for index, item in enumerate(items):
            result = results[index]
            if loop.collect:
                inner = ctx.nested(result.refs, item=item, index=index)
                collected.append(self.evaluate("loop.collect", loop.collect, inner))
            else:
                collected.append(result.outputs)
        return collected

    async def _parallel(self, node: blueprint_pb2.Node, rec: NodeRecord, ctx: Context) -> Any:
        parallel = node.parallel
        join = parallel.join or blueprint_pb2.JOIN_MODE_ALL
        tasks = {asyncio.ensure_future(self.scope(b.nodes, rec.path, f"branches.{b.name}", ctx)):
                 b.name for b in parallel.branches}
        results: dict[str, ScopeResult] = {}
        last_error: dict[str, Any] | None = None
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: tasks[t]):
                    name = tasks.pop(task)
                    result = task.result()
                    if join == blueprint_pb2.JOIN_MODE_ALL:
                        if not result.ok:
                            raise self._child_failure("parallel", result.error)
                        results[name] = result
                    elif join == blueprint_pb2.JOIN_MODE_ANY or result.ok:
                        if not result.ok:
                            raise self._child_failure("parallel", result.error)
                        return {"branch": name, "outputs": result.outputs}
                    else:
                        last_error = result.error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if join == blueprint_pb2.JOIN_MODE_ALL:
            return {b.name: results[b.name].outputs for b in parallel.branches}
        raise self._child_failure("parallel", {
            **(last_error or {}), "message": "every branch failed; the last: "
                                             + (last_error or {}).get("message", "")})

    # -- helpers for node kinds -------------------------------------------------------------------

    def render(self, field: str, source: str, ctx: Context) -> str:
        try:
            return templates.render(source, ctx.variables())
        except templates.TemplateError as exc:
            raise NodeFailure("TEMPLATE_ERROR", f"{field}: {exc}") from None

    def arguments(self, field: str, args: Any, arg_expressions: Any, ctx: Context) -> dict[str, Any]:
        """Struct args (strings rendered as templates) overlaid with CEL arg_expressions."""
        values, has_templates = self.worker.static_value(args)
        try:
            rendered = (templates.render_value(values, ctx.variables()) if has_templates
                        else dict(values))
        except templates.TemplateError as exc:
            raise NodeFailure("TEMPLATE_ERROR", f"{field}.args: {exc}") from None
        for key, source in arg_expressions.items():
            rendered[key] = self.evaluate(f"{field}.arg_expressions.{key}", source, ctx)
        return rendered

    def timeout_of(self, node: blueprint_pb2.Node) -> float:
        return (node.timeout.ToTimedelta().total_seconds() if node.HasField("timeout")
                else self.config.node_timeout_s)

    def remaining(self) -> timedelta:
        return self.deadline - now()
