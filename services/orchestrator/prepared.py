"""A prepared statement executed through libpq directly (psycopg.pq), for the one statement the
engine runs thousands of times a second: the checkpoint batch.

psycopg's cursor machinery (query conversion, parameter adaptation, row makers, a timer per
wait) costs several times the round trip on this path; here parameters are already text and
the answer is a column of text. Errors are psycopg's own: OperationalError when the connection
is lost, the SQLSTATE's class (DataError, IntegrityError, …) when the statement fails.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)


class PreparedStatement:
    """`sql` (with $1, $2, … placeholders), prepared once per connection by `prepare`."""

    def __init__(self, name: str, sql: str) -> None:
        self.name = name
        self.sql = sql

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(f"PREPARE {self.name} AS {self.sql}")

    async def execute(self, conn: psycopg.AsyncConnection[Any],
                      params: list[str | None]) -> list[tuple[str | None, ...]]:
        """The rows it returns, as text."""
        pgconn = conn.pgconn
        pgconn.send_query_prepared(self.name.encode(),
                                   [p.encode() if p is not None else None for p in params])
        while pgconn.flush():
            await _ready(pgconn.socket, write=True)
        while True:
            pgconn.consume_input()
            if not pgconn.is_busy():
                break
            await _ready(pgconn.socket)
        failure: psycopg.Error | None = None
        rows: list[tuple[str | None, ...]] = []
        while (result := pgconn.get_result()) is not None:
            if result.status not in _OK:
                failure = failure or pg_errors.error_from_result(result)
            elif result.status == pq.ExecStatus.TUPLES_OK:
                columns = range(result.nfields)
                for i in range(result.ntuples):
                    rows.append(tuple(None if (value := result.get_value(i, j)) is None
                                      else value.decode() for j in columns))
        if failure is not None:
            raise failure
        return rows


def _ready(fd: int, *, write: bool = False) -> asyncio.Future[None]:
    """A future done when `fd` is readable (or writable); cancelling it stops the watch."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else \
        (loop.add_reader, loop.remove_reader)

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    add(fd, ready)
    future.add_done_callback(lambda _: remove(fd))
    return future
