"""Wake-ups between processes: Redis pub/sub when it is there, polling Postgres when it is not.

Nothing here is durable. Postgres holds the truth (runs, run_events); a message only says
"look again". Two channels:
  iceos:runs:wake    run ids that became claimable or need their worker's attention
                     (StartRun, a signal, a cancel, a finished child);
  iceos:runs:events  `run:seq` pairs: new events were committed (for streams and waiters).
Every process keeps ONE subscription and fans messages out to local waiters; a poll of the
watched runs' progress (one query for all of them) covers lost messages and a dead Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from services.common.db import Database

from . import store

log = logging.getLogger(__name__)

WAKE = "iceos:runs:wake"
EVENTS = "iceos:runs:events"


class Watch:
    """What a waiter holds: `changed` is set on news about the run; `ended` once the run is
    known to have reached a final state (so a WaitRun need not re-read it on every event)."""

    __slots__ = ("changed", "ended", "ended_only")

    def __init__(self, ended_only: bool = False) -> None:
        self.changed = asyncio.Event()
        self.ended = False
        # A waiter for the end only (WaitRun) is not woken by every event.
        self.ended_only = ended_only

    def notify(self, ended: bool = False) -> None:
        if ended:
            self.ended = True
        if ended or not self.ended_only:
            self.changed.set()


class Notifier:
    def __init__(self, db: Database, redis: Any | None, *, poll_s: float = 1.0,
                 degraded_poll_s: float = 0.2) -> None:
        self.db = db
        self.redis = redis
        self.poll_s = poll_s
        self.degraded_poll_s = degraded_poll_s
        self.redis_ok = False
        self._breaker_until = 0.0
        self._watchers: dict[str, set[Watch]] = {}
        self._seen: dict[str, tuple[str, int]] = {}
        self._wake_handlers: list[Callable[[list[str]], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._outbox: dict[str, str] = {}
        self._flush_at: float | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        # Wake-ups to other processes are coalesced: a run's end within this window (WaitRun
        # elsewhere answers), mere progress (streams elsewhere read on) within the longer one.
        self.coalesce_s = 0.01
        self.progress_coalesce_s = 0.05

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._spawn(self._listen())
        self._spawn(self._poll())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- local fan-out ----------------------------------------------------------------------------

    def on_wake(self, handler: Callable[[list[str]], None]) -> None:
        self._wake_handlers.append(handler)

    @contextlib.contextmanager
    def watch(self, run_id: str, *, ended_only: bool = False) -> Iterator[Watch]:
        """A Watch notified whenever the run may have new events or a new state (with
        `ended_only`, when it may have ended)."""
        event = Watch(ended_only)
        self._watchers.setdefault(run_id, set()).add(event)
        if not self._started:
            self.start()
        try:
            yield event
        finally:
            waiters = self._watchers.get(run_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._watchers[run_id]
                    self._seen.pop(run_id, None)

    def events_committed(self, pairs: list[tuple[str, int]], ended: set[str]) -> None:
        """Called by the local worker after a checkpoint commit: wake local waiters at once,
        and other processes through Redis (`run:seq`, or `run:seq:end` for a final state)."""
        for run_id, _ in pairs:
            for watch in self._watchers.get(run_id, ()):
                watch.notify(run_id in ended)
        if pairs and self.redis is not None:
            for run_id, seq in pairs:
                self._outbox[run_id] = f"{run_id}:{seq}:end" if run_id in ended \
                    else f"{run_id}:{seq}"
            loop = asyncio.get_running_loop()
            at = loop.time() + (self.coalesce_s if ended else self.progress_coalesce_s)
            if self._flush_at is None or at < self._flush_at:
                if self._flush_timer is not None:
                    self._flush_timer.cancel()
                self._flush_at = at
                self._flush_timer = loop.call_at(at, self._flush_outbox)

    def _flush_outbox(self) -> None:
        """One message for everything committed in the last few milliseconds."""
        self._flush_at = self._flush_timer = None
        items, self._outbox = self._outbox, {}
        if items:
            self._publish(EVENTS, " ".join(items.values()))

    def wake(self, run_ids: list[str]) -> None:
        """Tell workers (here and elsewhere) to look at these runs."""
        if not run_ids:
            return
        for handler in self._wake_handlers:
            handler(run_ids)
        self._publish(WAKE, " ".join(run_ids))

    # -- Redis ------------------------------------------------------------------------------------

    def _publish(self, channel: str, message: str) -> None:
        if self.redis is None or time.monotonic() < self._breaker_until:
            return
        self._spawn(self._publish_now(channel, message))

    async def _publish_now(self, channel: str, message: str) -> None:
        try:
            await self.redis.publish(channel, message)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - Redis is optional: polling covers it
            self._breaker_until = time.monotonic() + 1.0
            self.redis_ok = False

    async def _listen(self) -> None:
        if self.redis is None:
            return
        # The listener keeps its own view of the subscription: a failed publish may already have
        # cleared `redis_ok`, and the loss must still be logged once, here, where it is seen.
        subscribed = False
        while True:
            pubsub = None
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(WAKE, EVENTS)
                if not self.redis_ok:
                    log.info("redis subscription up")
                subscribed = self.redis_ok = True
                self._breaker_until = 0.0
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - degrade to polling, try again shortly
                if subscribed:
                    log.warning("redis subscription lost (%s); polling Postgres instead",
                                exc.__class__.__name__)
                subscribed = self.redis_ok = False
                await asyncio.sleep(1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        data = message.get("data")
        if isinstance(channel, bytes):
            channel = channel.decode()
        if isinstance(data, bytes):
            data = data.decode()
        if not isinstance(data, str):
            return
        if channel == WAKE:
            ids = data.split()
            for handler in self._wake_handlers:
                handler(ids)
        elif channel == EVENTS:
            for item in data.split():
                parts = item.split(":")
                for watch in self._watchers.get(parts[0], ()):
                    watch.notify(parts[-1] == "end")

    # -- polling ----------------------------------------------------------------------------------

    async def _poll(self) -> None:
        """Compare the watched runs' progress with what was seen, one query for all of them."""
        while True:
            await asyncio.sleep(self.poll_s if self.redis_ok else self.degraded_poll_s)
            ids = list(self._watchers)
            if not ids:
                continue
            try:
                async with self.db.connection() as conn:
                    rows = await store.progress(conn, ids)
            except Exception:  # noqa: BLE001 - the database may be restarting
                continue
            for row in rows:
                now = (row["state"], int(row["last_event_seq"]))
                if self._seen.get(row["id"]) != now:
                    self._seen[row["id"]] = now
                    for watch in self._watchers.get(row["id"], ()):
                        watch.notify(row["state"] in store.TERMINAL_RUN_STATES)
