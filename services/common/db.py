"""The Postgres store every service shares: an async psycopg pool with pgvector types, and a
watcher that tracks whether the database is reachable and at the expected schema head."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import psycopg
from pgvector.psycopg import register_vector_async
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from . import errors

log = logging.getLogger(__name__)


async def _configure(conn: psycopg.AsyncConnection) -> None:
    try:
        await register_vector_async(conn)
    except psycopg.ProgrammingError:
        # The vector extension is not installed yet (schema not migrated): the connection is
        # still useful for readiness checks; vector columns are simply not adapted.
        pass


# A connection given back to the pool less than this long ago is handed out again without the
# health check's round trip (the check would double the cost of a short query on a busy path).
# One that broke in that second fails its next call with UNAVAILABLE and is replaced.
_RECENTLY_USED_S = 1.0


async def _check(conn: psycopg.AsyncConnection) -> None:
    returned = getattr(conn, "_iceos_returned", None)
    if returned is not None and time.monotonic() - returned < _RECENTLY_USED_S \
            and not conn.broken:
        return
    await AsyncConnectionPool.check_connection(conn)


class Database:
    """A lazily-opened pool. Queries raise errors.Unavailable while Postgres is unreachable, so
    callers get UNAVAILABLE instead of a hang or a traceback."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10,
                 connect_timeout: float = 5.0) -> None:
        self.url = url
        self.pool = AsyncConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, configure=_configure,
            kwargs={"autocommit": True, "row_factory": dict_row,
                    "connect_timeout": max(1, int(connect_timeout))},
            timeout=connect_timeout, check=_check,
            reconnect_timeout=0,
        )
        self._opened = False

    async def open(self) -> None:
        if not self._opened:
            await self.pool.open(wait=False)
            self._opened = True

    async def close(self) -> None:
        if self._opened:
            await self.pool.close()
            self._opened = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled autocommit connection; use `conn.transaction()` for atomic work."""
        await self.open()
        try:
            async with self.pool.connection() as conn:
                try:
                    yield conn
                finally:
                    # When it was given back (see _check). Stamped here rather than in a pool
                    # `reset` hook, which would cost a pool worker task per checkout.
                    conn._iceos_returned = time.monotonic()  # type: ignore[attr-defined]
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            log.warning("database unavailable: %s", exc.__class__.__name__)
            raise errors.Unavailable("the database is unavailable; retry shortly") from None
        except TimeoutError:
            raise errors.Unavailable("the database is unavailable; retry shortly") from None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def ping(self) -> bool:
        try:
            async with self.connection() as conn:
                await conn.execute("SELECT 1")
            return True
        except errors.Unavailable:
            return False


async def schema_ready(db: Database, head: str, required_table: str = "semantic_memory") -> bool:
    """True when Postgres answers and the schema is at this build's Alembic head (and the
    table the launch plan checks exists)."""
    try:
        async with db.connection() as conn:
            row = await (await conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL AS ok, (SELECT version_num FROM"
                " alembic_version LIMIT 1) AS rev", (required_table,))).fetchone()
            return bool(row and row["ok"] and row["rev"] == head)
    except (errors.Unavailable, psycopg.Error):
        return False


async def watch_readiness(db: Database, head: str,
                          on_change: Callable[[bool], Awaitable[None] | None],
                          interval: float = 1.0) -> None:
    """Poll the database forever, calling on_change(ready) whenever readiness flips."""
    ready: bool | None = None
    while True:
        now = await schema_ready(db, head)
        if now != ready:
            ready = now
            log.info("database %s", "ready" if now else "not ready")
            result = on_change(now)
            if asyncio.iscoroutine(result):
                await result
        await asyncio.sleep(interval)
