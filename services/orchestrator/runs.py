"""Runs, the domain: start (validate, pin, insert once per request_id), read, list, cancel,
signal, stream and wait. Transport-free: the servicer (api.py) converts protos; SQL is in
store.py; execution is the engine's."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import psycopg
from google.protobuf import json_format
from iceos.registry.v1 import blueprint_pb2

from services.common import errors, names, pagination
from services.common.blueprint import graph
from services.common.blueprint.validate import validate_blueprint
from services.common.db import Database
from services.common.errors import FieldViolation

from . import filters, providers, store
from .components import Catalog, blueprint_id, blueprint_pin_key
from .config import EngineConfig
from .engine.failures import NodeFailure
from .engine.leaves import schema_errors
from .notify import Notifier

if TYPE_CHECKING:
    from .engine.execution import Execution
    from .engine.worker import Worker

RUN_PATTERN = "projects/{project}/runs/{run}"
# How long StartRun waits for the commit of its insert (Postgres away: it may land later).
CREATE_PATIENCE_S = 10.0
DECISIONS = {1: "APPROVE", 2: "REJECT", 3: "INPUT"}


def run_ids(name: str) -> tuple[str, str]:
    ids = names.parse(name, RUN_PATTERN)
    return ids["project"], ids["run"]


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Prepared:
    """A validated, pinned blueprint ready to become a run."""

    spec: blueprint_pb2.Blueprint
    spec_json: dict[str, Any]
    blueprint_id: str | None
    version: int | None
    pins: dict[str, int]
    # spec_json serialized once (a cached blueprint starts many runs).
    spec_text: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.spec_text = store.dumps(self.spec_json)


@dataclass
class RunView:
    row: dict[str, Any]
    nodes: list[dict[str, Any]]
    attempts: list[dict[str, Any]]


class Runs:
    def __init__(self, db: Database, config: EngineConfig, notifier: Notifier,
                 catalog: Catalog, worker: "Worker | None") -> None:
        self.db = db
        self.config = config
        self.notifier = notifier
        self.catalog = catalog
        self.worker = worker
        self._valid: dict[tuple[str, str, int], Prepared] = {}
        self._active: dict[str, tuple[float, int]] = {}

    # -- start ------------------------------------------------------------------------------------

    async def start(self, *, parent: str, blueprint: str, version: int,
                    inline: blueprint_pb2.Blueprint | None, inputs: dict[str, Any],
                    request_id: str, timeout: timedelta | None, creator: str) -> dict[str, Any]:
        project = names.project_of(parent)
        if version < 0:
            raise errors.InvalidArgument.field("version", "must not be negative")
        if request_id and len(request_id) > 128:
            raise errors.InvalidArgument.field("request_id", "is longer than 128 characters")
        if timeout is not None and timeout.total_seconds() <= 0:
            raise errors.InvalidArgument.field("timeout", "must be positive")
        async with contextlib.AsyncExitStack() as stack:
            taken: list[psycopg.AsyncConnection] = []

            async def connection() -> psycopg.AsyncConnection:
                """A pool connection, taken on first use: a start that finds its blueprint
                validated and its project's count fresh needs none."""
                if not taken:
                    taken.append(await stack.enter_async_context(self.db.connection()))
                return taken[0]

            if request_id:
                existing = await store.run_by_request_id(await connection(), project,
                                                         request_id)
                if existing is not None:
                    return existing
            if inline is not None:
                if version:
                    raise errors.InvalidArgument.field(
                        "version", "applies to a saved blueprint, not to an inline one")
                prepared = await self._prepare_inline(connection, project, inline)
            elif blueprint:
                prepared = await self._prepare_saved(await connection(), project, blueprint,
                                                     version)
            else:
                raise errors.InvalidArgument.field(
                    "blueprint", "is required: a blueprint id or name, or an inline_blueprint",
                    "REQUIRED")
            self._check_inputs(prepared.spec, inputs, "inputs", errors.InvalidArgument)
            await self._check_capacity(connection, project)
        # The pool connection is given back before the insert: it waits for a shared commit.
        return await self._insert(project, prepared, inputs, request_id or None, creator,
                                  self._deadline(prepared.spec, timeout))

    async def _check_capacity(self, connection: Callable[[], Awaitable[psycopg.AsyncConnection]],
                              project: str) -> None:
        """RESOURCE_EXHAUSTED at the project's limit of unfinished runs. Far from the limit a
        count less than a second old (plus the runs started since) is trusted, so a busy
        project does not recount on every start; near it, the count is exact."""
        limit = self.config.max_active_runs_per_project
        now_s = asyncio.get_running_loop().time()
        cached = self._active.get(project)
        if cached is not None and now_s - cached[0] < 1.0 and cached[1] + 1 < 0.9 * limit:
            self._active[project] = (cached[0], cached[1] + 1)
            return
        active = await store.count_active(await connection(), project, limit)
        if active >= limit:
            raise errors.ResourceExhausted(
                f"project {project} has {active} unfinished runs, the most allowed; wait for "
                "some to finish or cancel them", reason="TOO_MANY_ACTIVE_RUNS",
                metadata={"limit": str(limit)})
        if len(self._active) > 10_000:
            self._active.clear()
        self._active[project] = (now_s, active + 1)

    def _deadline(self, spec: blueprint_pb2.Blueprint, timeout: timedelta | None) -> datetime:
        """StartRun's timeout, else the blueprint's run_timeout, else the server default; never
        beyond the server maximum."""
        if timeout is not None:
            seconds = timeout.total_seconds()
        elif spec.HasField("run_timeout") and spec.run_timeout.ToTimedelta().total_seconds() > 0:
            seconds = spec.run_timeout.ToTimedelta().total_seconds()
        else:
            seconds = self.config.run_timeout_s
        return now() + timedelta(seconds=min(seconds, self.config.max_run_timeout_s))

    async def _insert(self, project: str, prepared: Prepared, inputs: dict[str, Any],
                      request_id: str | None, creator: str, deadline: datetime, *,
                      parent_run: str | None = None, parent_node: str | None = None,
                      depth: int = 0) -> dict[str, Any]:
        """Create the run: born claimed by this process's worker when it has room (it starts
        here without a claim round trip), else QUEUED for any worker. With the worker running,
        the insert joins its next checkpoint batch (runs started at once share a commit)."""
        worker = self.worker
        local = worker is not None and worker.capacity() > 0
        run_id = "run-" + secrets.token_hex(8)
        fields = dict(
            run_id=run_id, project_id=project, blueprint_id=prepared.blueprint_id,
            blueprint_version=prepared.version, spec=prepared.spec_json, pins=prepared.pins,
            inputs=inputs, request_id=request_id, creator=creator, deadline=deadline,
            parent_run_id=parent_run, parent_node=parent_node, depth=depth,
            worker_id=worker.config.worker_id if local and worker else None,
            lease_s=self.config.lease_s)
        row: dict[str, Any] | None
        if worker is not None and worker.writer.running:
            record = store.new_run(**fields)  # type: ignore[arg-type]
            try:
                filled = await asyncio.wait_for(worker.writer.create_run(record),
                                                CREATE_PATIENCE_S)
            except TimeoutError:
                raise errors.Unavailable(
                    "the database is unavailable; the run may still be created: retry with "
                    "the same request_id") from None
            row = store.created_row(record, filled) if filled is not None else None
        else:
            async with self.db.connection() as conn:
                row = await store.insert_run(conn, spec_text=prepared.spec_text,
                                             **fields)  # type: ignore[arg-type]
        if row is None:
            # The request_id was taken (a concurrent StartRun won), or this insert was written
            # again after a commit that landed unacknowledged: read what is there.
            async with self.db.connection() as conn:
                row = await store.get_run(conn, project, run_id)
                if row is None:
                    assert request_id is not None
                    existing = await store.run_by_request_id(conn, project, request_id)
                    assert existing is not None
                    return existing
        if local and worker is not None:
            worker.adopt({**row, "prev_state": "QUEUED"}, prepared.spec)
        else:
            self.notifier.wake([row["id"]])
        return row

    async def _prepare_inline(self, connection: Callable[[], Awaitable[psycopg.AsyncConnection]],
                              project: str, inline: blueprint_pb2.Blueprint) -> Prepared:
        key = (project, "inline:" + hashlib.sha256(inline.SerializeToString(
            deterministic=True)).hexdigest(), 0)
        cached = self._valid.get(key)
        if cached is not None:
            return cached
        prepared = await self._prepare_inline_uncached(await connection(), project, inline)
        self._remember(key, prepared)
        return prepared

    def _remember(self, key: tuple[str, str, int], prepared: Prepared) -> None:
        """Keep a validated blueprint whose validity cannot change: one that refers to no
        registry component or blueprint (those may be deleted or move on)."""
        if prepared.pins or any(graph.kind_of(n) == "workflow"
                                for n, _, _ in graph.walk(prepared.spec.nodes)):
            return
        if len(self._valid) > 1000:
            self._valid.clear()
        self._valid[key] = prepared

    async def _prepare_inline_uncached(self, conn: psycopg.AsyncConnection, project: str,
                                       inline: blueprint_pb2.Blueprint) -> Prepared:
        violations = await self._validate(conn, project, inline, "inline_blueprint")
        pins, more = await self._pin_workflows(conn, project, inline, "inline_blueprint")
        violations += more
        if violations:
            raise errors.InvalidArgument(
                "the inline blueprint is not valid: " + "; ".join(
                    f"{v.field}: {v.description}" for v in violations[:3]), violations)
        lookups, component_pins, _ = await self.catalog.resolve(conn, project, inline)
        spec_json = json_format.MessageToDict(inline)
        return Prepared(inline, spec_json, None, None, {**component_pins, **pins})

    async def _prepare_saved(self, conn: psycopg.AsyncConnection, project: str, ref: str,
                             version: int, *, field: str = "blueprint") -> Prepared:
        bid = blueprint_id(ref, project)
        if bid is None:
            raise errors.InvalidArgument.field(
                field, f"{ref!r} is not a blueprint id or a name of the form "
                       f"projects/{project}/blueprints/<id>", "BAD_NAME")
        found = await self.catalog.blueprint(conn, project, bid, version)
        if found is None:
            what = f"version {version} of blueprint {bid!r}" if version else f"blueprint {bid!r}"
            raise errors.NotFound(f"{what} does not exist in projects/{project}",
                                  reason="BLUEPRINT_NOT_FOUND")
        key = (project, bid, found["version"])
        cached = self._valid.get(key)
        if cached is not None:
            return cached
        spec = json_format.ParseDict(found["spec"], blueprint_pb2.Blueprint(),
                                     ignore_unknown_fields=True)
        violations = await self._validate(conn, project, spec, "blueprint")
        pins, more = await self._pin_workflows(conn, project, spec, "blueprint")
        violations += more
        if violations:
            raise errors.FailedPrecondition(
                f"blueprint {bid!r} version {found['version']} cannot run: " + "; ".join(
                    f"{v.field}: {v.description}" for v in violations[:3]),
                reason="BLUEPRINT_NOT_RUNNABLE")
        _, component_pins, _ = await self.catalog.resolve(conn, project, spec)
        prepared = Prepared(spec, found["spec"], bid, found["version"],
                            {**component_pins, **pins})
        self._remember(key, prepared)
        return prepared

    async def _validate(self, conn: psycopg.AsyncConnection, project: str,
                        spec: blueprint_pb2.Blueprint, prefix: str) -> list[FieldViolation]:
        lookup, _, missing = await self.catalog.resolve(conn, project, spec)
        violations = validate_blueprint(spec, prefix=prefix, lookup=lookup.get)
        for node, path, _ in graph.walk(spec.nodes):
            kind = graph.kind_of(node)
            if kind == "tool" and node.tool.version and \
                    f"{node.tool.component}@{node.tool.version}" in missing:
                violations.append(FieldViolation(
                    f"{prefix}.{path}.tool.version",
                    f"version {node.tool.version} of {node.tool.component!r} does not exist",
                    "UNKNOWN_VERSION"))
            model = node.llm.model if kind == "llm" else node.agent.model if kind == "agent" \
                else ""
            if model and providers.resolve(model) is None:
                violations.append(FieldViolation(
                    f"{prefix}.{path}.{kind}.model",
                    f"no provider is configured for {model!r}; use `deterministic` or a "
                    "configured `{provider}/{model}`", "UNKNOWN_PROVIDER"))
        return violations

    async def _pin_workflows(self, conn: psycopg.AsyncConnection, project: str,
                             spec: blueprint_pb2.Blueprint, prefix: str
                             ) -> tuple[dict[str, int], list[FieldViolation]]:
        """Pin the blueprint version every workflow node will start (latest when 0)."""
        pins: dict[str, int] = {}
        violations: list[FieldViolation] = []
        for node, path, _ in graph.walk(spec.nodes):
            if graph.kind_of(node) != "workflow":
                continue
            target = await self._workflow_target(conn, project, node.workflow)
            if target is None:
                continue
            ref, version, field = target
            bid = blueprint_id(ref, project)
            found = await self.catalog.blueprint(conn, project, bid, version) if bid else None
            if found is None:
                violations.append(FieldViolation(
                    f"{prefix}.{path}.workflow.{field}",
                    f"blueprint {ref!r}" + (f" version {version}" if version else "")
                    + " does not exist in this project", "UNKNOWN_BLUEPRINT"))
            elif not version:
                pins[blueprint_pin_key(bid or ref)] = found["version"]
        return pins, violations

    async def _workflow_target(self, conn: psycopg.AsyncConnection, project: str,
                               spec: blueprint_pb2.WorkflowNode
                               ) -> tuple[str, int, str] | None:
        if spec.WhichOneof("target") == "component":
            component = await self.catalog.component(conn, project, spec.component)
            if component is None or component.kind != "workflow":
                return None  # validation reports it
            return (component.field("workflow", "blueprint") or "",
                    int(spec.version or component.field("workflow", "version") or 0),
                    "component")
        return spec.blueprint, int(spec.version), "blueprint"

    @staticmethod
    def _check_inputs(spec: blueprint_pb2.Blueprint, inputs: dict[str, Any], field: str,
                      error: type[errors.InvalidArgument]) -> None:
        if not spec.HasField("input_schema"):
            return
        schema = json_format.MessageToDict(spec.input_schema)
        problems = schema_errors(schema, inputs)
        if problems:
            violations = []
            for problem in problems:
                where, _, text = problem.partition(": ")
                path = field if where == "(root)" else f"{field}.{where}"
                violations.append(FieldViolation(path, text, "SCHEMA"))
            raise error("the inputs do not match the blueprint's input_schema: "
                        + "; ".join(problems[:3]), violations)

    async def start_child(self, ex: "Execution", node: blueprint_pb2.Node,
                          args: dict[str, Any], request_id: str, *, path: str,
                          existing_only: bool) -> str:
        """The child run of a workflow node (created once per request_id); its id."""
        async with self.db.connection() as conn:
            existing = await store.run_by_request_id(conn, ex.project_id, request_id)
            if existing is not None:
                return existing["id"]
            if existing_only:
                raise NodeFailure("CHILD_FAILED", "the child run this node started is gone")
            depth = int(ex.row.get("depth") or 0) + 1
            if depth > self.config.max_run_depth:
                raise NodeFailure("DEPTH_LIMIT", f"starting this child run would nest runs "
                                                 f"{depth} deep; the limit is "
                                                 f"{self.config.max_run_depth}")
            target = await self._workflow_target(conn, ex.project_id, node.workflow)
            if target is None:
                raise NodeFailure("UNKNOWN_COMPONENT", "the workflow component does not exist")
            ref, version, _ = target
            bid = blueprint_id(ref, ex.project_id) or ref
            version = version or ex.pins.get(blueprint_pin_key(bid), 0)
            try:
                prepared = await self._prepare_saved(conn, ex.project_id, ref, version,
                                                     field="workflow.blueprint")
            except errors.IceError as exc:
                raise NodeFailure("CHILD_FAILED", exc.message) from None
            try:
                self._check_inputs(prepared.spec, args, "args", errors.InvalidArgument)
            except errors.InvalidArgument as exc:
                raise NodeFailure("CHILD_INPUT_INVALID", exc.message) from None
        row = await self._insert(ex.project_id, prepared, args, request_id,
                                 ex.row.get("creator") or "",
                                 min(ex.deadline, self._deadline(prepared.spec, None)),
                                 parent_run=ex.run_id, parent_node=path, depth=depth)
        return row["id"]

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, name: str, *, detail: bool = True, spec: bool = True) -> RunView:
        """The run (with its nodes and attempts when `detail`, its blueprint snapshot when
        `spec`)."""
        project, run_id = run_ids(name)
        async with self.db.connection() as conn:
            if not detail:
                row = await store.get_run(conn, project, run_id, spec=spec)
                found = (row, [], []) if row is not None else None
            else:
                found = await store.run_view(conn, project, run_id, spec=spec)
        if found is None:
            raise errors.NotFound(f"{name} does not exist", reason="RUN_NOT_FOUND")
        return RunView(*found)

    async def list(self, *, parent: str, page_size: int, page_token: str,
                   filter_text: str) -> tuple[list[dict[str, Any]], str]:
        project = names.project_of(parent)
        size = pagination.page_size(page_size)
        parsed = filters.parse_run_filter(filter_text, project)
        scope = pagination.scope_for("runs", parent, filter_text)
        after = None
        if page_token:
            state = pagination.decode(page_token, scope=scope)
            try:
                after = (datetime.fromisoformat(state["t"]), str(state["id"]))
            except (KeyError, ValueError, TypeError):
                raise errors.InvalidArgument.field("page_token", "is not valid") from None
        async with self.db.connection() as conn:
            rows = await store.list_runs(conn, project, states=parsed.states,
                                         blueprint_id=parsed.blueprint_id,
                                         time_bounds=parsed.time_bounds, after=after,
                                         limit=size + 1)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = pagination.encode({"t": last["create_time"].isoformat(), "id": last["id"]},
                                      scope=scope)
        return rows, token

    # -- cancel and signals -----------------------------------------------------------------------

    async def cancel(self, name: str, reason: str) -> dict[str, Any]:
        project, run_id = run_ids(name)
        async with self.db.connection() as conn:
            row = await store.request_cancel(conn, project, run_id, reason or "")
        if row is None:
            raise errors.NotFound(f"{name} does not exist", reason="RUN_NOT_FOUND")
        if row["state"] in store.TERMINAL_RUN_STATES:
            return row
        self.notifier.wake([run_id])
        # Most cancels take effect within a moment: answer with the stopped run if so.
        return await self.wait(name, timedelta(seconds=3))

    async def signal(self, name: str, *, node: str, decision: int, value: Any,
                     has_value: bool, comment: str, actor: str) -> dict[str, Any]:
        project, run_id = run_ids(name)
        if decision not in DECISIONS:
            raise errors.InvalidArgument.field("decision", "is required: APPROVE, REJECT or "
                                                           "INPUT", "REQUIRED")
        if not node:
            raise errors.InvalidArgument.field("node", "is required: the path of the waiting "
                                                       "human node", "REQUIRED")
        label = DECISIONS[decision]
        if label == "INPUT" and not has_value:
            raise errors.InvalidArgument.field("input", "is required for HUMAN_DECISION_INPUT",
                                               "REQUIRED")
        async with self.db.connection() as conn:
            row = await store.get_run(conn, project, run_id)
            if row is None:
                raise errors.NotFound(f"{name} does not exist", reason="RUN_NOT_FOUND")
            human = _human_node(row["spec"], node)
            if human is None:
                raise errors.InvalidArgument.field(
                    "node", f"{node!r} is not a human node of this run", "NOT_A_HUMAN_NODE")
            if label == "INPUT":
                schema = human.get("inputSchema") or human.get("input_schema")
                problems = schema_errors(schema, value)
                if problems:
                    raise errors.InvalidArgument(
                        "the input does not match the node's input_schema: "
                        + "; ".join(problems[:3]),
                        [FieldViolation("input" if p.startswith("(root)")
                                        else f"input.{p.partition(': ')[0]}",
                                        p.partition(": ")[2], "SCHEMA") for p in problems])
            async with conn.transaction():
                state = await store.waiting_node(conn, run_id, node)
                if state is None or state["state"] != "WAITING" or \
                        row["state"] in store.TERMINAL_RUN_STATES:
                    now_state = (f"the run is {row['state']}"
                                 if row["state"] in store.TERMINAL_RUN_STATES
                                 else f"it is {state['state']}" if state else
                                 "it has not started")
                    raise errors.FailedPrecondition(
                        f"node {node!r} is not waiting for a signal ({now_state})",
                        reason="NODE_NOT_WAITING")
                inserted = await store.insert_signal(conn, run_id, node, label,
                                                     value if label == "INPUT" else None,
                                                     comment, actor)
            if not inserted:
                raise errors.FailedPrecondition(f"node {node!r} was already answered",
                                                reason="ALREADY_SIGNALLED")
            row = await store.get_run(conn, project, run_id)
        self.notifier.wake([run_id])
        assert row is not None
        return row

    # -- streams and waits ------------------------------------------------------------------------

    async def events(self, name: str, after: int, follow: bool
                     ) -> AsyncIterator[dict[str, Any]]:
        """Events after `after` from Postgres, then (when following) new ones as they are
        committed, until the run has ended and every event was sent."""
        project, run_id = run_ids(name)
        if after < 0:
            raise errors.InvalidArgument.field("after_sequence", "must not be negative")
        async with self.db.connection() as conn:
            row = await store.get_run(conn, project, run_id)
        if row is None:
            raise errors.NotFound(f"{name} does not exist", reason="RUN_NOT_FOUND")
        seq = after
        with self.notifier.watch(run_id) as watch:
            while True:
                watch.changed.clear()
                rows, state, last = await self._read_events(project, run_id, seq)
                for event in rows:
                    seq = event["seq"]
                    yield event
                if rows and seq < last:
                    continue
                if not follow or (state in store.TERMINAL_RUN_STATES and seq >= last):
                    return
                try:
                    await asyncio.wait_for(watch.changed.wait(), 5.0)
                except TimeoutError:
                    pass

    async def _read_events(self, project: str, run_id: str, seq: int
                           ) -> tuple[list[dict[str, Any]], str, int]:
        delay = 0.2
        while True:
            try:
                async with self.db.connection() as conn:
                    row = await store.get_run(conn, project, run_id)
                    rows = await store.events_after(conn, run_id, seq)
                assert row is not None
                return rows, row["state"], int(row["last_event_seq"])
            except errors.Unavailable:
                await asyncio.sleep(delay)  # Postgres restarting: the stream waits for it
                delay = min(delay * 2, 2.0)

    async def wait(self, name: str, timeout: timedelta) -> dict[str, Any]:
        return (await self.wait_view(name, timeout, detail=False)).row

    async def wait_view(self, name: str, timeout: timedelta, *,
                        detail: bool = True) -> RunView:
        """The run once it is final, or as it is when `timeout` passes. Reads Postgres when
        told the run ended (and every few seconds, in case a message was lost), not on every
        event."""
        project, run_id = run_ids(name)
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout.total_seconds()
        with self.notifier.watch(run_id, ended_only=True) as watch:
            while True:
                if self._running_here(project, run_id) and loop.time() < until \
                        and not watch.ended:
                    # Executing in this process and not finished: nothing to read yet.
                    await self._wait_for_end(watch, loop, until)
                    continue
                watch.ended = False  # news from here on is not missed by the read below
                async with self.db.connection() as conn:
                    found = (await store.run_view(conn, project, run_id, spec=False)
                             if detail else
                             await store.get_run(conn, project, run_id, spec=False))
                if found is None:
                    raise errors.NotFound(f"{name} does not exist", reason="RUN_NOT_FOUND")
                view = RunView(*found) if detail else RunView(found, [], [])  # type: ignore[arg-type]
                if view.row["state"] in store.TERMINAL_RUN_STATES or loop.time() >= until:
                    return view
                await self._wait_for_end(watch, loop, until)

    def _running_here(self, project: str, run_id: str) -> bool:
        execution = self.worker.executions.get(run_id) if self.worker is not None else None
        return execution is not None and execution.project_id == project and \
            not execution.finishing

    @staticmethod
    async def _wait_for_end(watch: Any, loop: asyncio.AbstractEventLoop, until: float) -> None:
        """Until the run is reported ended, `until`, or 5 s (then the caller reads again)."""
        recheck = loop.time() + 5.0
        while not watch.ended and loop.time() < min(recheck, until):
            watch.changed.clear()
            try:
                await asyncio.wait_for(watch.changed.wait(), min(recheck, until) - loop.time())
            except TimeoutError:
                pass


def _human_node(spec: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The HumanNode (protobuf JSON) a run path names, or None. Paths: `a`, `c.then.a`,
    `l[2].a`, `p.branches.b.a`."""
    import re
    nodes = spec.get("nodes") or []
    parts = path.split(".")
    node: dict[str, Any] | None = None
    i = 0
    while i < len(parts):
        part = re.sub(r"\[\d+\]$", "", parts[i])
        node = next((n for n in nodes if n.get("id") == part), None)
        if node is None:
            return None
        i += 1
        if i == len(parts):
            break
        if "condition" in node and parts[i] in ("then", "else"):
            nodes = node["condition"].get(parts[i]) or []
            i += 1
        elif "loop" in node and parts[i - 1].endswith("]"):
            nodes = node["loop"].get("body") or []
        elif "parallel" in node and parts[i] == "branches" and i + 1 < len(parts):
            branch = next((b for b in node["parallel"].get("branches") or []
                           if b.get("name") == parts[i + 1]), None)
            if branch is None:
                return None
            nodes = branch.get("nodes") or []
            i += 2
        else:
            return None
    return node.get("human") if node is not None and "human" in node else None
