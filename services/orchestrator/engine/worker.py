"""The run worker of one orchestrator process: claims runs, keeps their leases, executes them.

- Claim: a short `FOR UPDATE SKIP LOCKED` statement takes up to the free capacity, woken by
  Redis (StartRun, signals, cancels, finished children) or by polling every `poll_s`.
- Lease: one heartbeat statement renews every held run every lease/3 seconds and returns the
  flags to react to (cancel requested, something to wake for). A run missing from the answer is
  no longer ours: its execution stops without writing.
- Nothing holds a row lock while nodes execute; checkpoints go through the CheckpointWriter.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from iceos.registry.v1 import blueprint_pb2

from services.common import errors
from services.common.blueprint.templates import has_template
from services.common.db import Database
from services.common.settings import Settings

from .. import store
from ..components import Catalog, Component
from ..config import EngineConfig
from ..notify import Notifier
from ..sandbox import SandboxClient
from .checkpoint import CheckpointWriter
from .execution import Execution, ScopePlan
from .failures import NodeFailure

if TYPE_CHECKING:
    from ..runs import Runs

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, db: Database, settings: Settings, config: EngineConfig,
                 notifier: Notifier, catalog: Catalog) -> None:
        self.db = db
        self.settings = settings
        self.config = config
        self.notifier = notifier
        self.catalog = catalog
        self.writer = CheckpointWriter(db, config.worker_id, notifier)
        self.sandbox = SandboxClient(settings.sandbox_address, settings.service_key)
        self.executions: dict[str, Execution] = {}
        self.node_slots = asyncio.Semaphore(config.max_nodes_per_worker)
        self.runs: "Runs | None" = None
        self._claim_now = asyncio.Event()
        self._beat_now = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._organizations: dict[str, str] = {}
        self._specs: dict[tuple[str, str, int], blueprint_pb2.Blueprint] = {}
        self._static: dict[int, tuple[Any, Any, bool]] = {}
        self._checked: dict[tuple[int, str, int], Any] = {}
        self._plans: dict[int, tuple[Any, ScopePlan]] = {}
        self._stopping = False
        self._started = False
        # Runs may be claimable that this worker had no room for: claim again as soon as an
        # execution ends (otherwise an ending execution claims nothing; wake-ups and the poll
        # find new work).
        self._backlog = False

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self) -> None:
        """The background task: claim and heartbeat until cancelled."""
        self.writer.start()
        self._started = True
        self.notifier.on_wake(self._on_wake)
        self.notifier.start()
        log.info("run worker started", extra={"worker": self.config.worker_id})
        await asyncio.gather(self._claim_loop(), self._heartbeat_loop())

    async def shutdown(self) -> None:
        """Stop executing (without writing) and give the leases back so another worker resumes
        the runs at once."""
        self._stopping = True
        held = list(self.executions)
        for execution in list(self.executions.values()):
            execution.request_stop("SHUTDOWN")
        await asyncio.gather(*(t for t in self._tasks), return_exceptions=True)
        if held:
            try:
                async with self.db.connection() as conn:
                    await store.release(conn, self.config.worker_id, held)
            except Exception:  # noqa: BLE001 - the leases expire anyway
                log.warning("could not release %d leases at stop", len(held))
        await self.writer.stop()
        await self.sandbox.close()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- capacity and adoption --------------------------------------------------------------------

    def capacity(self) -> int:
        if self._stopping or not self._started:
            return 0
        return max(0, self.config.max_runs_per_worker - len(self.executions))

    def adopt(self, row: dict[str, Any], spec: blueprint_pb2.Blueprint | None = None) -> None:
        """Execute a run this worker has just claimed (or was born claimed by it; then the
        caller passes the blueprint it validated)."""
        if row["id"] in self.executions:
            return
        try:
            spec = spec if spec is not None else self.spec_of(row)
        except Exception as exc:  # noqa: BLE001 - a stored spec we cannot read: fail the run
            log.error("run %s has an unreadable blueprint", row["id"], exc_info=exc)
            spec = blueprint_pb2.Blueprint()
        execution = Execution(self, row, spec)
        self.executions[row["id"]] = execution
        execution.task = self.spawn(self._execute(execution))

    async def _execute(self, execution: Execution) -> None:
        try:
            await execution.run()
        except Exception as exc:  # noqa: BLE001 - leave the run to be resumed elsewhere
            log.error("execution of run %s crashed; its lease will expire and another worker "
                      "resumes it", execution.run_id, exc_info=exc)
            self.writer.discard(execution.run_id)
        finally:
            self.executions.pop(execution.run_id, None)
            if self._backlog and not self._stopping:
                self._claim_now.set()  # a slot came free and runs may be waiting for one

    def static_value(self, message: Any) -> tuple[Any, bool]:
        """A Struct of the blueprint (tool args, …) as Python, and whether any string in it is
        a template; converted once per message. The cache keeps the message alive, so its id is
        not reused while cached. Callers must not modify the value."""
        key = id(message)
        hit = self._static.get(key)
        if hit is not None and hit[0] is message:
            return hit[1], hit[2]
        value = json_format.MessageToDict(message) if message.fields else {}
        has_templates = has_template(value)
        if len(self._static) > 10_000:
            self._static.clear()
        self._static[key] = (message, value, has_templates)
        return value, has_templates

    def scope_plan(self, nodes: Any) -> ScopePlan:
        """The plan of a list of sibling nodes of a blueprint, made once per list (cached like
        static_value: the cache keeps the list alive, so its id is not reused)."""
        hit = self._plans.get(id(nodes))
        if hit is not None and hit[0] is nodes:
            return hit[1]
        plan = ScopePlan.of(nodes)
        if len(self._plans) > 2000:
            self._plans.clear()
        self._plans[id(nodes)] = (nodes, plan)
        return plan

    def args_checked(self, message: Any, component: Component) -> bool:
        hit = self._checked.get((id(message), component.ref, component.version))
        return hit is not None and hit is message

    def remember_checked(self, message: Any, component: Component) -> None:
        """These blueprint-fixed arguments satisfied this component version's schema (a tool
        that ran with them got past validation)."""
        if len(self._checked) > 10_000:
            self._checked.clear()
        self._checked[(id(message), component.ref, component.version)] = message

    def spec_of(self, row: dict[str, Any]) -> blueprint_pb2.Blueprint:
        key = (row["project_id"], row["blueprint_id"] or "", row["blueprint_version"] or 0)
        if row["blueprint_id"] and key in self._specs:
            return self._specs[key]
        spec = json_format.ParseDict(row["spec"], blueprint_pb2.Blueprint(),
                                     ignore_unknown_fields=True)
        if row["blueprint_id"]:
            if len(self._specs) > 1000:
                self._specs.clear()
            self._specs[key] = spec
        return spec

    # -- claim and heartbeat ----------------------------------------------------------------------

    def _on_wake(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            execution = self.executions.get(run_id)
            if execution is not None:
                execution.poke()
                self._beat_now.set()  # read the cancel flag now, not at the next beat
            else:
                self._claim_now.set()

    async def _claim_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._claim_now.wait(), self.config.poll_s)
            except TimeoutError:
                pass
            self._claim_now.clear()
            if self.capacity() <= 0:
                # Told of claimable runs while full: claim when an execution ends.
                self._backlog = self._started and not self._stopping
                continue
            try:
                while (free := self.capacity()) > 0:
                    wanted = min(free, 100)
                    async with self.db.connection() as conn:
                        rows = await store.claim(conn, self.config.worker_id,
                                                 self.config.lease_s, wanted)
                    for row in rows:
                        self.adopt(row)
                    # A full answer may have left more behind.
                    self._backlog = len(rows) >= wanted
                    if not self._backlog:
                        break
            except errors.Unavailable:
                await asyncio.sleep(self.config.poll_s)
            except Exception as exc:  # noqa: BLE001 - keep claiming
                log.error("claim failed", exc_info=exc)
                await asyncio.sleep(self.config.poll_s)

    async def _heartbeat_loop(self) -> None:
        interval = self.config.lease_s / 3
        while True:
            try:
                await asyncio.wait_for(self._beat_now.wait(), interval)
            except TimeoutError:
                pass
            self._beat_now.clear()
            held = {run_id: ex for run_id, ex in self.executions.items()
                    if ex.stop_reason is None}
            if not held:
                continue
            try:
                async with self.db.connection() as conn:
                    rows = await store.heartbeat(conn, self.config.worker_id, list(held),
                                                 self.config.lease_s)
            except Exception:  # noqa: BLE001 - the database may be away; fences keep us safe
                continue
            alive = {row["id"]: row for row in rows}
            for run_id, execution in held.items():
                row = alive.get(run_id)
                if row is None or row["claim_count"] != execution.claim:
                    if execution.task is not None and not execution.task.done() and \
                            run_id in self.executions:
                        log.warning("run %s is no longer ours; stopping it here", run_id)
                        execution.request_stop("LOST")
                elif row["cancel_requested"]:
                    execution.row["cancel_reason"] = row.get("cancel_reason") or \
                        execution.row.get("cancel_reason")
                    execution.request_stop("CANCELLED")
                elif row["wake_at"] is not None:
                    execution.poke()

    # -- services the node kinds use --------------------------------------------------------------

    async def _read(self, query: Any, *args: Any, patience_s: float = 60.0) -> Any:
        """Run a read, waiting out a short database outage (a restart) instead of failing the
        node; after `patience_s` the outage is the node's problem (UNAVAILABLE)."""
        delay, waited = 0.1, 0.0
        while True:
            try:
                async with self.db.connection() as conn:
                    return await query(conn, *args)
            except errors.Unavailable:
                if waited >= patience_s:
                    raise
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 2.0)

    async def checkpoints(self, run_id: str) -> tuple[list[dict[str, Any]], int]:
        """The run's node records and its last event sequence."""
        return await self._read(store.checkpoint, run_id, patience_s=float("inf"))

    async def component(self, project_id: str, ref: str, version: int = 0) -> Component | None:
        if ref.startswith("builtins/"):
            return await self.catalog.component(None, project_id, ref)  # type: ignore[arg-type]
        return await self._read(self.catalog.component, project_id, ref, version)

    async def organization_of(self, project_id: str) -> str:
        if project_id not in self._organizations:
            found = await self._read(store.organization_of, project_id)
            self._organizations[project_id] = found or ""
        return self._organizations[project_id]

    async def signal(self, run_id: str, path: str) -> dict[str, Any] | None:
        return await self._read(store.signal_for, run_id, path)

    async def child_state(self, run_id: str) -> dict[str, Any] | None:
        return await self._read(store.child_run, run_id)

    async def cancel_run(self, run_id: str, reason: str) -> None:
        try:
            async with self.db.connection() as conn:
                await store.cancel_run_by_id(conn, run_id, reason)
        except errors.Unavailable:
            return  # the parent's end cancels its children again
        self.notifier.wake([run_id])

    async def start_child(self, ex: Execution, node: blueprint_pb2.Node, args: dict[str, Any],
                          request_id: str, *, path: str, existing_only: bool) -> str:
        assert self.runs is not None
        try:
            return await self.runs.start_child(ex, node, args, request_id, path=path,
                                               existing_only=existing_only)
        except NodeFailure:
            raise
        except errors.IceError as exc:
            raise NodeFailure(exc.reason if exc.reason != "INVALID_ARGUMENT"
                              else "CHILD_INPUT_INVALID", exc.message) from None
