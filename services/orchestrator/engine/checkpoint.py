"""The checkpoint writer: one per worker, shared by all the runs it executes (group commit).

Executions stage node records, attempt records, events and run updates; the writer commits
everything staged (for every run) in ONE statement, then resolves the futures of those who
wait. Concurrent runs therefore share commits — the main lever for throughput — and a node costs
at most one commit: its start is staged, not written, and lands with its completion (which is
committed before any dependent starts) unless something else is written first. What nobody
waits for (the start of a slow node) is written within `linger_s`, so streams see it promptly.
The writer starts a batch as soon as someone waits and none is in flight (no latency added when
idle); under load, what is staged while a batch is in flight forms the next one. One batch is in
flight at a time, so a run's writes commit in the order staged.

A batch is idempotent (see store.write_batch), so a batch whose commit was not acknowledged
(Postgres restarting) is simply written again until it lands. A run this worker no longer holds
(another worker claimed it after our lease expired) gets LeaseLost and nothing of it is written;
the other runs of the batch commit. A batch the database refuses (not an outage: a value it
rejects) is split into one statement per run, so only the run at fault is given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from services.common import errors
from services.common.db import Database

from .. import store
from ..notify import Notifier

log = logging.getLogger(__name__)

# Postgres is away or restarting: keep the batch and write it again.
_OUTAGES = (errors.Unavailable, psycopg.OperationalError, psycopg.InterfaceError, TimeoutError)


class LeaseLost(Exception):
    """This worker no longer holds the run; stop executing it without writing."""


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(eq=False)
class _RunBatch:
    claim: int
    nodes: dict[str, Any] = field(default_factory=dict)
    attempts: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    run: dict[str, Any] | None = None
    wake_parent: str | None = None
    cancel_children_reason: str | None = None
    last_seq: int = 0
    # A run to insert (StartRun, a child run), as store.new_run makes it.
    create: dict[str, Any] | None = None
    # One future per flush() waiting for this batch (a cancelled waiter cancels only its own).
    waiters: list[asyncio.Future[Any]] = field(default_factory=list)

    def resolve(self, error: BaseException | None = None, result: Any = None) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(result)
                else:
                    waiter.set_exception(error)
        self.waiters = []


class CheckpointWriter:
    def __init__(self, db: Database, worker_id: str, notifier: Notifier, *,
                 linger_s: float = 0.02) -> None:
        self.db = db
        self.worker_id = worker_id
        self.notifier = notifier
        self.linger_s = linger_s
        self._pending: dict[str, _RunBatch] = {}
        self._inflight: dict[str, _RunBatch] = {}
        self._dirty = asyncio.Event()
        self._linger: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        await self._drop_connection()

    # -- staging ----------------------------------------------------------------------------------

    def _batch(self, run_id: str, claim: int) -> _RunBatch:
        batch = self._pending.get(run_id)
        if batch is None:
            batch = self._pending[run_id] = _RunBatch(claim)
            if self._linger is None:
                self._linger = asyncio.get_running_loop().call_later(self.linger_s,
                                                                     self._lingered)
        return batch

    def _lingered(self) -> None:
        # Not cancelled when a batch is written before it fires: one timer per linger period,
        # not one per batch.
        self._linger = None
        if self._pending:
            self._dirty.set()

    def node(self, run_id: str, claim: int, record: Any) -> None:
        """Stage a node's record: an object with `path` and `to_json()`, serialized when the
        batch is written, so a node staged twice before a commit is written once, as it is
        then."""
        self._batch(run_id, claim).nodes[record.path] = record

    def attempt(self, run_id: str, claim: int, record: dict[str, Any]) -> None:
        batch = self._batch(run_id, claim)
        key = (record["path"], record["attempt"])
        previous = batch.attempts.get(key)
        batch.attempts[key] = {**previous, **record} if previous else record

    def event(self, run_id: str, claim: int, seq: int, kind: str, node: str,
              payload: dict[str, Any], time: datetime) -> None:
        batch = self._batch(run_id, claim)
        batch.events.append({"run_id": run_id, "seq": seq, "type": kind, "node": node,
                             "payload": payload, "time": time.isoformat()})
        if seq > batch.last_seq:
            batch.last_seq = seq

    def run(self, run_id: str, claim: int, update: dict[str, Any], *,
            wake_parent: str | None = None, cancel_children: str | None = None) -> None:
        batch = self._batch(run_id, claim)
        batch.run = {**batch.run, **update} if batch.run else update
        if wake_parent:
            batch.wake_parent = wake_parent
        if cancel_children:
            batch.cancel_children_reason = cancel_children

    async def flush(self, run_id: str) -> None:
        """Wait until everything staged so far for the run is committed. Raises LeaseLost."""
        batch = self._pending.get(run_id) or self._inflight.get(run_id)
        if batch is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        self._dirty.set()
        await waiter

    async def create_run(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Insert a run (and its RUN_QUEUED event) with the next batch, so that the runs
        started at once share commits. Returns the columns the database filled, or None when
        the run's request_id was used before."""
        batch = self._batch(record["id"], 0)
        batch.create = record
        waiter = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        self._dirty.set()
        result: dict[str, Any] | None = await waiter
        return result

    def discard(self, run_id: str) -> None:
        """Drop what is staged for a run this worker gave up."""
        batch = self._pending.pop(run_id, None)
        if batch is not None:
            batch.resolve(LeaseLost(run_id))

    # -- writing ----------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self._pending:
                continue
            self._inflight, self._pending = self._pending, {}
            batches = self._inflight
            try:
                written, refused = await self._write(batches)
            except Exception as exc:  # noqa: BLE001 - a bug, not an outage: give the runs up
                log.error("checkpoint batch failed; abandoning its runs", exc_info=exc)
                written, refused = {}, {run_id: exc for run_id in batches}
            committed: list[tuple[str, int]] = []
            ended: set[str] = set()
            woken: list[str] = []
            for run_id, batch in batches.items():
                if batch.create is not None:
                    if run_id in refused:
                        batch.resolve(refused[run_id])
                    else:  # None: its request_id was taken
                        batch.resolve(result=written.get(run_id))
                elif run_id in written:
                    if batch.last_seq:
                        committed.append((run_id, batch.last_seq))
                    if batch.run and batch.run.get("state") in store.TERMINAL_RUN_STATES:
                        ended.add(run_id)
                    if batch.wake_parent:
                        woken.append(batch.wake_parent)
                    batch.resolve()
                else:
                    batch.resolve(LeaseLost(run_id))
            self._inflight = {}
            self.commits += 1
            if committed:
                self.notifier.events_committed(committed, ended)
            if woken:
                self.notifier.wake(woken)

    async def _write(self, batches: dict[str, _RunBatch]
                     ) -> tuple[dict[str, Any], dict[str, Exception]]:
        """Write the batches in one statement. Returns what was written (run id → True, or the
        new row of a created run; a run missing is not ours) and what the database refused
        (run id → its error): a batch it refuses is written again one run at a time."""
        try:
            return await self._write_retrying(batches), {}
        except Exception as exc:  # noqa: BLE001 - refused, not an outage (those are retried)
            if len(batches) == 1:
                run_id = next(iter(batches))
                log.error("the database refused the checkpoint of run %s; giving the run up "
                          "here (its lease expires and it is resumed)", run_id, exc_info=exc)
                return {}, {run_id: exc}
        written: dict[str, Any] = {}
        refused: dict[str, Exception] = {}
        for run_id, batch in batches.items():
            one, failed = await self._write({run_id: batch})
            written.update(one)
            refused.update(failed)
        return written, refused

    async def _write_retrying(self, batches: dict[str, _RunBatch]) -> dict[str, Any]:
        payload = {
            "nodes": [{"run_id": run_id, **record.to_json()} for run_id, b in batches.items()
                      for record in b.nodes.values()],
            "attempts": [{"run_id": run_id, **record} for run_id, b in batches.items()
                         for record in b.attempts.values()],
            "events": [e for b in batches.values() for e in b.events],
            "runs": [{"id": run_id, "claim": b.claim, "changed": b.run is not None,
                      **(b.run or {})} for run_id, b in batches.items() if b.create is None],
        }
        created = [b.create for b in batches.values() if b.create is not None]
        if created:
            payload["created"] = created
        parents = [b.wake_parent for b in batches.values() if b.wake_parent]
        cancels = [(run_id, b.cancel_children_reason) for run_id, b in batches.items()
                   if b.cancel_children_reason]
        delay = 0.05
        while True:
            try:
                conn = await self._connection()
                if not parents and not cancels:
                    return await store.write_batch(conn, self.worker_id, payload)
                children: list[str] = []
                async with conn.transaction():
                    owned = await store.write_batch(conn, self.worker_id, payload)
                    if parents:
                        await store.wake_parents(conn, parents)
                    for run_id, reason in cancels:
                        if run_id in owned and reason:
                            children += await store.cancel_children(conn, [run_id], reason)
                if children:
                    self.notifier.wake(children)
                return owned
            except _OUTAGES:
                # Postgres is away: keep the batch and try again; leases decide afterwards.
                await self._drop_connection()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception:
                if self._conn is not None and self._conn.info.transaction_status != \
                        psycopg.pq.TransactionStatus.IDLE:
                    await self._drop_connection()
                raise

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        """The writer's own connection: one batch at a time needs no pool, and skipping the
        pool's per-checkout health query halves the round trips of a commit. The batch
        statement is prepared on it once."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            conn = await psycopg.AsyncConnection.connect(
                self.db.url, autocommit=True, row_factory=dict_row, connect_timeout=5,
                prepare_threshold=0)
            # One statement, run thousands of times: plan it once.
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            for statement in store.STATEMENTS:
                await statement.prepare(conn)
            self._conn = conn
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
