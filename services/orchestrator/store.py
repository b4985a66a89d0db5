"""SQL for runs: creation, reads, the claim and the lease, checkpoint batches, events, signals.

Durability rules (ARCHITECTURE §5) live in the statements themselves:
- a claim takes rows with FOR UPDATE SKIP LOCKED in one short statement and bumps
  claim_count, which fences every later write of the previous holder;
- a checkpoint batch writes only for runs this worker still holds at the claim it knows
  (row-locked for the statement's duration only), so a worker that lost its lease cannot write;
- a node completion is recorded only while the node is not already completed, and an attempt's
  outcome only once; events are keyed (run, seq), so retrying a batch whose commit was not
  acknowledged changes nothing.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg

from .prepared import PreparedStatement

TERMINAL_RUN_STATES = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
ACTIVE_RUN_STATES = ("QUEUED", "RUNNING", "WAITING")

_RUN_FIELDS = (
    "id", "project_id", "blueprint_id", "blueprint_version", "spec", "pins", "inputs", "state",
    "output", "error", "usage", "request_id", "creator", "parent_run_id", "parent_node", "depth",
    "worker_id", "lease_expires_at", "claim_count", "wake_at", "deadline", "cancel_requested",
    "cancel_reason", "create_time", "start_time", "end_time")


def _last_event_seq(table: str) -> str:
    """The run's last event sequence, read from the log itself (an index probe): checkpoint
    batches do not rewrite the run's row for every event."""
    return (f"(SELECT COALESCE(max(e.seq), 0) FROM run_events e WHERE e.run_id = {table}.id)"
            " AS last_event_seq")


def _run_columns(table: str, *, spec: bool = True) -> str:
    """The run's columns; without `spec` the blueprint snapshot (large, stored out of line)
    is left unread (NULL)."""
    return ", ".join(f"{table}.{c}" if spec or c != "spec" else "NULL::jsonb AS spec"
                     for c in _RUN_FIELDS) + ", " + _last_event_seq(table)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


# -- creation ---------------------------------------------------------------------------------

async def insert_run(conn: psycopg.AsyncConnection, *, run_id: str, project_id: str,
                     blueprint_id: str | None, blueprint_version: int | None,
                     spec: dict[str, Any], pins: dict[str, int], inputs: dict[str, Any],
                     request_id: str | None, creator: str, deadline: datetime,
                     parent_run_id: str | None = None, parent_node: str | None = None,
                     depth: int = 0, worker_id: str | None = None,
                     lease_s: float = 0.0, spec_text: str | None = None
                     ) -> dict[str, Any] | None:
    """Insert a QUEUED run and its RUN_QUEUED event in one statement. With `worker_id` the run
    is born claimed by that worker (it starts here without a claim round trip). Returns the
    run's row (the columns the database filled, the rest as given: the blueprint snapshot is
    not read back), or None when `request_id` was used before (the caller reads that run)."""
    claimed = worker_id is not None
    row = await (await conn.execute(
        """
        WITH ins AS (
          INSERT INTO runs (id, project_id, blueprint_id, blueprint_version, spec, pins, inputs,
                            request_id, creator, parent_run_id, parent_node, depth, deadline,
                            state, worker_id, lease_expires_at, claim_count, start_time)
          SELECT %(id)s::text, %(project)s::text, %(bid)s::text, %(version)s::bigint,
                 %(spec)s::jsonb, %(pins)s::jsonb, %(inputs)s::jsonb, %(rid)s::text,
                 %(creator)s::text, %(parent)s::text, %(pnode)s::text, %(depth)s::int,
                 %(deadline)s::timestamptz, %(state)s::text, %(worker)s::text,
                 CASE WHEN %(claimed)s THEN now() + make_interval(secs => %(lease)s) END,
                 %(claims)s::int, CASE WHEN %(claimed)s THEN now() END
          ON CONFLICT (project_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
          RETURNING id, state, worker_id, lease_expires_at, claim_count, create_time,
                    start_time
        ), ev AS (
          INSERT INTO run_events (run_id, seq, type, payload)
          SELECT id, 1, 'RUN_QUEUED', '{}'::jsonb FROM ins
        )
        SELECT * FROM ins""",
        {"id": run_id, "project": project_id, "bid": blueprint_id, "version": blueprint_version,
         "spec": spec_text if spec_text is not None else dumps(spec), "pins": dumps(pins),
         "inputs": dumps(inputs), "rid": request_id, "creator": creator,
         "parent": parent_run_id, "pnode": parent_node, "depth": depth,
         "deadline": deadline, "state": "RUNNING" if claimed else "QUEUED",
         "worker": worker_id, "claimed": claimed, "lease": lease_s,
         "claims": 1 if claimed else 0})).fetchone()
    if row is None:
        return None
    return created_row(new_run(
        run_id=run_id, project_id=project_id, blueprint_id=blueprint_id,
        blueprint_version=blueprint_version, spec=spec, pins=pins, inputs=inputs,
        request_id=request_id, creator=creator, deadline=deadline, parent_run_id=parent_run_id,
        parent_node=parent_node, depth=depth, worker_id=worker_id, lease_s=lease_s), row)


def new_run(*, run_id: str, project_id: str, blueprint_id: str | None,
            blueprint_version: int | None, spec: dict[str, Any], pins: dict[str, int],
            inputs: dict[str, Any], request_id: str | None, creator: str, deadline: datetime,
            parent_run_id: str | None = None, parent_node: str | None = None, depth: int = 0,
            worker_id: str | None = None, lease_s: float = 0.0) -> dict[str, Any]:
    """A run to create with a checkpoint batch (CheckpointWriter.create_run): QUEUED, or born
    claimed by `worker_id`."""
    return {"id": run_id, "project_id": project_id, "blueprint_id": blueprint_id,
            "blueprint_version": blueprint_version, "spec": spec, "pins": pins,
            "inputs": inputs, "request_id": request_id, "creator": creator,
            "parent_run_id": parent_run_id, "parent_node": parent_node, "depth": depth,
            "deadline": deadline.isoformat(), "worker_id": worker_id, "lease_s": lease_s}


def created_row(record: dict[str, Any], filled: dict[str, Any]) -> dict[str, Any]:
    """The row of a run just created: the record as given (the blueprint snapshot is not read
    back) and the columns the database filled."""
    return {**record, "deadline": datetime.fromisoformat(record["deadline"]), "output": None,
            "error": None, "usage": {}, "wake_at": None, "cancel_requested": False,
            "cancel_reason": None, "last_event_seq": 1, "end_time": None, **filled}


async def run_by_request_id(conn: psycopg.AsyncConnection, project_id: str,
                            request_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(
        f"SELECT {_run_columns('runs')} FROM runs WHERE project_id = %s AND request_id = %s",
        (project_id, request_id))).fetchone()


async def count_active(conn: psycopg.AsyncConnection, project_id: str, limit: int) -> int:
    """Unfinished runs of a project, counted up to `limit`."""
    row = await (await conn.execute(
        "SELECT count(*) AS n FROM (SELECT 1 FROM runs WHERE project_id = %s AND state IN"
        " ('QUEUED', 'RUNNING', 'WAITING') LIMIT %s) t", (project_id, limit))).fetchone()
    return int(row["n"]) if row else 0


async def organization_of(conn: psycopg.AsyncConnection, project_id: str) -> str | None:
    row = await (await conn.execute("SELECT organization_id FROM projects WHERE id = %s",
                                    (project_id,))).fetchone()
    return row["organization_id"] if row else None


# -- reads ------------------------------------------------------------------------------------

async def get_run(conn: psycopg.AsyncConnection, project_id: str,
                  run_id: str, *, spec: bool = True) -> dict[str, Any] | None:
    return await (await conn.execute(
        f"SELECT {_run_columns('runs', spec=spec)} FROM runs WHERE project_id = %s AND id = %s",
        (project_id, run_id))).fetchone()


async def run_view(conn: psycopg.AsyncConnection, project_id: str, run_id: str, *,
                   spec: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]],
                                               list[dict[str, Any]]] | None:
    """A run with its node records and attempts in one round trip."""
    row = await (await conn.execute(
        f"""SELECT {_run_columns('r', spec=spec)},
          (SELECT COALESCE(json_agg(n ORDER BY n.start_time NULLS LAST, n.update_time, n.path),
                           '[]') FROM run_nodes n WHERE n.run_id = r.id) AS node_rows,
          (SELECT COALESCE(json_agg(a ORDER BY a.path, a.attempt), '[]')
             FROM node_attempts a WHERE a.run_id = r.id) AS attempt_rows
        FROM runs r WHERE project_id = %s AND id = %s""", (project_id, run_id),
        prepare=True)).fetchone()  # every WaitRun and GetRun: planned once per connection
    if row is None:
        return None
    nodes, attempts = row.pop("node_rows"), row.pop("attempt_rows")
    for record in nodes:
        for key in ("wake_at", "start_time", "end_time", "update_time"):
            if record.get(key):
                record[key] = datetime.fromisoformat(record[key])
    for record in attempts:
        for key in ("start_time", "end_time"):
            if record.get(key):
                record[key] = datetime.fromisoformat(record[key])
    return row, nodes, attempts


async def checkpoint(conn: psycopg.AsyncConnection,
                     run_id: str) -> tuple[list[dict[str, Any]], int]:
    """What a resuming worker reads: the run's node records and its last event sequence."""
    nodes = await (await conn.execute(
        "SELECT path, node_id, kind, state, attempt, output, error, usage, wake_at, start_time,"
        " end_time FROM run_nodes WHERE run_id = %s"
        " ORDER BY start_time NULLS LAST, update_time, path", (run_id,))).fetchall()
    row = await (await conn.execute(
        "SELECT COALESCE(max(seq), 0) AS seq FROM run_events WHERE run_id = %s",
        (run_id,))).fetchone()
    return nodes, int(row["seq"]) if row else 0


async def list_runs(conn: psycopg.AsyncConnection, project_id: str, *,
                    states: list[str] | None, blueprint_id: str | None,
                    time_bounds: list[tuple[str, datetime]], after: tuple[datetime, str] | None,
                    limit: int) -> list[dict[str, Any]]:
    """Newest first, keyset-paginated on (create_time, id)."""
    where = ["project_id = %s"]
    params: list[Any] = [project_id]
    if states:
        where.append("state = ANY(%s)")
        params.append(states)
    if blueprint_id is not None:
        where.append("blueprint_id = %s")
        params.append(blueprint_id)
    for op, bound in time_bounds:
        assert op in ("<", "<=", ">", ">=", "=")
        where.append(f"create_time {op} %s")
        params.append(bound)
    if after is not None:
        where.append("(create_time, id) < (%s, %s)")
        params.extend(after)
    params.append(limit)
    return await (await conn.execute(
        f"SELECT {_run_columns('runs', spec=False)} FROM runs WHERE {' AND '.join(where)}"
        " ORDER BY create_time DESC, id DESC LIMIT %s", params)).fetchall()


async def events_after(conn: psycopg.AsyncConnection, run_id: str, after: int,
                       limit: int = 500) -> list[dict[str, Any]]:
    return await (await conn.execute(
        "SELECT seq, type, node, payload, time FROM run_events WHERE run_id = %s AND seq > %s"
        " ORDER BY seq LIMIT %s", (run_id, after, limit))).fetchall()


async def progress(conn: psycopg.AsyncConnection, run_ids: list[str]) -> list[dict[str, Any]]:
    """(id, state, last_event_seq) of several runs: what a poll compares."""
    return await (await conn.execute(
        f"SELECT runs.id, runs.state, {_last_event_seq('runs')} FROM runs"
        " WHERE runs.id = ANY(%s)", (run_ids,))).fetchall()


async def signal_for(conn: psycopg.AsyncConnection, run_id: str,
                     node: str) -> dict[str, Any] | None:
    return await (await conn.execute(
        "SELECT decision, input, comment, actor, create_time FROM run_signals"
        " WHERE run_id = %s AND node = %s", (run_id, node))).fetchone()


async def child_run(conn: psycopg.AsyncConnection, run_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(
        "SELECT id, project_id, state, output, error FROM runs WHERE id = %s",
        (run_id,))).fetchone()


# -- the claim and the lease ------------------------------------------------------------------

async def claim(conn: psycopg.AsyncConnection, worker_id: str, lease_s: float,
                limit: int) -> list[dict[str, Any]]:
    """Take up to `limit` claimable runs: QUEUED ones, RUNNING ones whose lease expired (their
    worker died), and WAITING ones whose wake-up time came (a signal, a child run, a timer)."""
    return await (await conn.execute(
        f"""
        UPDATE runs r SET state = 'RUNNING', worker_id = %s,
               lease_expires_at = now() + make_interval(secs => %s),
               claim_count = r.claim_count + 1, wake_at = NULL,
               start_time = COALESCE(r.start_time, now()), update_time = now()
        FROM (SELECT id, state AS prev_state FROM runs
              WHERE state IN ('QUEUED', 'RUNNING', 'WAITING')
                AND (state = 'QUEUED'
                     OR (state = 'RUNNING' AND (lease_expires_at IS NULL
                                                OR lease_expires_at < now()))
                     OR (state = 'WAITING' AND wake_at <= now()))
              ORDER BY create_time LIMIT %s FOR UPDATE SKIP LOCKED) c
        WHERE r.id = c.id
        RETURNING c.prev_state, {', '.join('r.' + c for c in _RUN_FIELDS)}
        """, (worker_id, lease_s, limit))).fetchall()


async def heartbeat(conn: psycopg.AsyncConnection, worker_id: str, run_ids: list[str],
                    lease_s: float) -> list[dict[str, Any]]:
    """Renew the leases this worker still holds; what comes back is what it still owns, with
    the flags it must react to (cancel requested, something to wake for)."""
    return await (await conn.execute(
        "UPDATE runs SET lease_expires_at = now() + make_interval(secs => %s)"
        " WHERE worker_id = %s AND id = ANY(%s) AND state = 'RUNNING'"
        " RETURNING id, claim_count, cancel_requested, cancel_reason, wake_at, deadline",
        (lease_s, worker_id, run_ids))).fetchall()


async def release(conn: psycopg.AsyncConnection, worker_id: str, run_ids: list[str]) -> None:
    """Give runs back (a stopping worker): another worker may claim them at once."""
    await conn.execute(
        "UPDATE runs SET worker_id = NULL, lease_expires_at = NULL, update_time = now()"
        " WHERE worker_id = %s AND id = ANY(%s) AND state = 'RUNNING'", (worker_id, run_ids))


# -- checkpoint batches ---------------------------------------------------------------------

_BATCH = """
WITH doc AS (SELECT $1::jsonb AS b), owned AS (
  -- The fence: only runs this worker still holds at the claim it knows (a newer claim changed
  -- claim_count), row-locked for this statement only. KEY SHARE is enough: a claim (FOR
  -- UPDATE) waits for this statement and then sees the new claim_count, while heartbeats,
  -- cancels and signals do not wait. Nothing of the row is rewritten unless the run itself
  -- changes (_UPDATE_RUNS). A batch written again after an unacknowledged commit finds the run
  -- released by its own first write (same claim, same final state): still ours.
  -- `id = ANY(ids)` makes the plans index probes, whatever the table's size.
  SELECT r.id FROM runs r, jsonb_to_recordset((SELECT b FROM doc) -> 'runs') AS x(
         id text, claim int, state text, release bool)
  WHERE r.id = ANY($3::text[]) AND r.id = x.id AND r.claim_count = x.claim
    AND (r.worker_id = $2::text OR (r.worker_id IS NULL AND x.release AND r.state = x.state))
  FOR KEY SHARE OF r
), nodes AS (
  INSERT INTO run_nodes AS n (run_id, path, node_id, kind, state, attempt, output, error, usage,
                              wake_at, start_time, end_time, update_time)
  SELECT x.run_id, x.path, x.node_id, x.kind, x.state, x.attempt, x.output, x.error,
         COALESCE(x.usage, '{}'::jsonb), x.wake_at, x.start_time, x.end_time, now()
  FROM jsonb_to_recordset((SELECT b FROM doc) -> 'nodes') AS x(
         run_id text, path text, node_id text, kind text, state text, attempt int,
         output jsonb, error jsonb, usage jsonb, wake_at timestamptz, start_time timestamptz,
         end_time timestamptz)
  WHERE x.run_id IN (SELECT id FROM owned)
  ON CONFLICT (run_id, path) DO UPDATE SET
    state = EXCLUDED.state, attempt = EXCLUDED.attempt, output = EXCLUDED.output,
    error = EXCLUDED.error, usage = EXCLUDED.usage, wake_at = EXCLUDED.wake_at,
    start_time = COALESCE(n.start_time, EXCLUDED.start_time), end_time = EXCLUDED.end_time,
    update_time = now()
  WHERE n.state NOT IN ('SUCCEEDED', 'FAILED', 'SKIPPED', 'TIMED_OUT')
), attempts AS (
  INSERT INTO node_attempts AS a (run_id, path, attempt, idempotency_key, worker_id, outcome,
                                  start_time, end_time)
  SELECT x.run_id, x.path, x.attempt, x.key, $2::text, x.outcome, x.start_time, x.end_time
  FROM jsonb_to_recordset((SELECT b FROM doc) -> 'attempts') AS x(
         run_id text, path text, attempt int, key text, outcome text, start_time timestamptz,
         end_time timestamptz)
  WHERE x.run_id IN (SELECT id FROM owned)
  ON CONFLICT (run_id, path, attempt) DO UPDATE SET
    outcome = EXCLUDED.outcome, end_time = EXCLUDED.end_time, worker_id = EXCLUDED.worker_id
  WHERE a.outcome IS NULL
), events AS (
  INSERT INTO run_events (run_id, seq, type, node, payload, time)
  SELECT x.run_id, x.seq, x.type, x.node, x.payload, x.time
  FROM jsonb_to_recordset((SELECT b FROM doc) -> 'events') AS x(
         run_id text, seq bigint, type text, node text, payload jsonb, time timestamptz)
  WHERE x.run_id IN (SELECT id FROM owned)
  ON CONFLICT (run_id, seq) DO NOTHING
)"""

# The runs' own changes (state, output, usage, lease release, parking), for batches that have
# some (a batch of node checkpoints has none and skips this part).
_UPDATE_RUNS = """, updated AS (
  UPDATE runs r SET
    state = COALESCE(x.state, r.state),
    output = CASE WHEN x.set_output THEN x.output ELSE r.output END,
    error = COALESCE(x.error, r.error),
    usage = COALESCE(x.usage, r.usage),
    end_time = COALESCE(x.end_time, r.end_time),
    worker_id = CASE WHEN x.release THEN NULL ELSE r.worker_id END,
    lease_expires_at = CASE WHEN x.release THEN NULL ELSE r.lease_expires_at END,
    wake_at = CASE WHEN x.park THEN LEAST(COALESCE(r.wake_at, x.wake_at), x.wake_at)
                   WHEN x.release THEN NULL ELSE r.wake_at END,
    update_time = now()
  FROM jsonb_to_recordset((SELECT b FROM doc) -> 'runs') AS x(
         id text, changed bool, state text, set_output bool, output jsonb, error jsonb,
         usage jsonb, end_time timestamptz, release bool, park bool, wake_at timestamptz)
  WHERE x.changed AND r.id = ANY($3::text[]) AND r.id = x.id
    AND r.id IN (SELECT id FROM owned)
)"""

# Runs started meanwhile (StartRun, child runs) are inserted with the batch, so concurrent
# starts share its commit. A batch written again after an unacknowledged commit finds them
# (any unique key: DO NOTHING) and reports them not created; the caller reads them then.
_CREATE_RUNS = """, created AS (
  INSERT INTO runs (id, project_id, blueprint_id, blueprint_version, spec, pins, inputs,
                    request_id, creator, parent_run_id, parent_node, depth, deadline, state,
                    worker_id, lease_expires_at, claim_count, start_time)
  SELECT x.id, x.project_id, x.blueprint_id, x.blueprint_version, x.spec, x.pins, x.inputs,
         x.request_id, x.creator, x.parent_run_id, x.parent_node, x.depth, x.deadline,
         CASE WHEN x.worker_id IS NULL THEN 'QUEUED' ELSE 'RUNNING' END, x.worker_id,
         CASE WHEN x.worker_id IS NOT NULL THEN now() + make_interval(secs => x.lease_s) END,
         CASE WHEN x.worker_id IS NOT NULL THEN 1 ELSE 0 END,
         CASE WHEN x.worker_id IS NOT NULL THEN now() END
  FROM jsonb_to_recordset((SELECT b FROM doc) -> 'created') AS x(
         id text, project_id text, blueprint_id text, blueprint_version bigint, spec jsonb,
         pins jsonb, inputs jsonb, request_id text, creator text, parent_run_id text,
         parent_node text, depth int, deadline timestamptz, worker_id text, lease_s float8)
  ON CONFLICT DO NOTHING
  RETURNING id, state, worker_id, lease_expires_at, claim_count, create_time, start_time
), created_events AS (
  INSERT INTO run_events (run_id, seq, type, payload)
  SELECT id, 1, 'RUN_QUEUED', '{}'::jsonb FROM created
)"""


_OWNED = "\nSELECT id, NULL::text FROM owned"
BATCH = PreparedStatement("iceos_checkpoint_batch", _BATCH + _OWNED)
BATCH_CHANGING = PreparedStatement("iceos_checkpoint_batch_changing",
                                   _BATCH + _UPDATE_RUNS + _OWNED)
BATCH_CREATING = PreparedStatement(
    "iceos_checkpoint_batch_creating",
    _BATCH + _UPDATE_RUNS + _CREATE_RUNS + _OWNED
    + " UNION ALL SELECT id, row_to_json(created)::text FROM created")
STATEMENTS = (BATCH, BATCH_CHANGING, BATCH_CREATING)


async def write_batch(conn: psycopg.AsyncConnection, worker_id: str,
                      batch: dict[str, Any]) -> dict[str, Any]:
    """Write one checkpoint batch (node records, attempts, events, run updates of many runs,
    runs to create) in one statement. Returns the runs it was written for (id → True; the
    others are no longer this worker's: their writes were dropped) and the runs it created
    (id → the columns the database filled). `conn` must have STATEMENTS prepared."""
    ids = [r["id"] for r in batch["runs"]]
    statement = BATCH_CREATING if batch.get("created") else \
        BATCH_CHANGING if any(r["changed"] for r in batch["runs"]) else BATCH
    rows = await statement.execute(conn, [dumps(batch), worker_id, text_array(ids)])
    written: dict[str, Any] = {}
    for run_id, created in rows:
        if run_id is None:
            continue
        if created is None:
            written[run_id] = True
        else:
            row = json.loads(created)
            for key in ("lease_expires_at", "create_time", "start_time"):
                if row[key] is not None:
                    row[key] = datetime.fromisoformat(row[key])
            written[run_id] = row
    return written


def text_array(values: list[str]) -> str:
    """A Postgres text[] literal."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for v in values) + "}"


async def wake_parents(conn: psycopg.AsyncConnection, parent_ids: list[str]) -> None:
    """A child run finished: make its parent claimable now if it was parked waiting for it."""
    await conn.execute(
        "UPDATE runs SET wake_at = now(), update_time = now()"
        " WHERE id = ANY(%s) AND state IN ('RUNNING', 'WAITING')", (parent_ids,))


async def cancel_children(conn: psycopg.AsyncConnection, parent_ids: list[str],
                          reason: str) -> list[str]:
    """Ask every unfinished child of these runs to stop; returns the children's ids."""
    rows = await (await conn.execute(
        "UPDATE runs SET cancel_requested = true, cancel_reason = %s, wake_at = now(),"
        " update_time = now() WHERE parent_run_id = ANY(%s)"
        " AND state IN ('QUEUED', 'RUNNING', 'WAITING') RETURNING id",
        (reason, parent_ids))).fetchall()
    return [r["id"] for r in rows]


async def cancel_run_by_id(conn: psycopg.AsyncConnection, run_id: str, reason: str) -> bool:
    row = await (await conn.execute(
        "UPDATE runs SET cancel_requested = true, cancel_reason = %s, wake_at = now(),"
        " update_time = now() WHERE id = %s AND state IN ('QUEUED', 'RUNNING', 'WAITING')"
        " RETURNING id", (reason, run_id))).fetchone()
    return row is not None


# -- cancel and signals -----------------------------------------------------------------------

async def request_cancel(conn: psycopg.AsyncConnection, project_id: str, run_id: str,
                         reason: str) -> dict[str, Any] | None:
    """Mark an unfinished run for cancellation (its worker, or the next one to claim it, stops
    it). A finished run is returned unchanged."""
    await conn.execute(
        "UPDATE runs SET cancel_requested = true, cancel_reason = %s,"
        " wake_at = now(), update_time = now()"
        " WHERE project_id = %s AND id = %s AND state IN ('QUEUED', 'RUNNING', 'WAITING')"
        " AND NOT cancel_requested", (reason, project_id, run_id))
    return await get_run(conn, project_id, run_id)


async def waiting_node(conn: psycopg.AsyncConnection, run_id: str,
                       path: str) -> dict[str, Any] | None:
    return await (await conn.execute(
        "SELECT state, kind FROM run_nodes WHERE run_id = %s AND path = %s FOR UPDATE",
        (run_id, path))).fetchone()


async def insert_signal(conn: psycopg.AsyncConnection, run_id: str, node: str, decision: str,
                        value: Any, comment: str, actor: str) -> bool:
    """Record an answer to a human node; False if the node was answered before."""
    row = await (await conn.execute(
        "INSERT INTO run_signals (run_id, node, decision, input, comment, actor)"
        " VALUES (%s, %s, %s, %s::jsonb, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (run_id, node, decision, dumps(value), comment, actor))).fetchone()
    if row is None:
        return False
    await conn.execute("UPDATE runs SET wake_at = now(), update_time = now() WHERE id = %s",
                       (run_id,))
    return True
