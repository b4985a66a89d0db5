"""Built-in tools for tests and benchmarks only, registered when ICEOS_TEST_TOOLS=1 (never in
production). They make faults reproducible: a tool that records each call with its idempotency
key (to count executions across crashes), sleeps (cancellation, timeouts), fails a number of
times (retries), raises, returns non-JSON or returns a large output."""

from __future__ import annotations

import asyncio
from typing import Any

from services.common.builtins import BuiltinTool, ToolContext, ToolError, get
from services.common.builtins.catalog import register

_TABLE = """CREATE TABLE IF NOT EXISTS test_tool_calls (
    id bigserial PRIMARY KEY, idempotency_key text NOT NULL, worker_id text NOT NULL,
    label text NOT NULL DEFAULT '', phase text NOT NULL, time timestamptz NOT NULL DEFAULT now())"""
_ready: set[int] = set()


async def _record(ctx: ToolContext, label: str, phase: str) -> None:
    db = ctx.extra["db"]
    async with db.connection() as conn:
        if id(db) not in _ready:
            await conn.execute(_TABLE)
            _ready.add(id(db))
        await conn.execute(
            "INSERT INTO test_tool_calls (idempotency_key, worker_id, label, phase)"
            " VALUES (%s, %s, %s, %s)", (ctx.idempotency_key, ctx.extra.get("worker_id", ""),
                                         label, phase))


async def _test_record(args: dict[str, Any], ctx: ToolContext) -> Any:
    label = str(args.get("label", ""))
    record = args.get("record", True)
    if record:
        await _record(ctx, label, "call")
    if args.get("sleep_s"):
        await asyncio.sleep(float(args["sleep_s"]))
        if record:
            await _record(ctx, label, "done")
    return {"key": ctx.idempotency_key, "label": label, "value": args.get("value")}


async def _test_flaky(args: dict[str, Any], ctx: ToolContext) -> Any:
    attempt = int(ctx.idempotency_key.rsplit("/", 1)[-1] or 1)
    if attempt <= int(args.get("fail_times", 1)):
        raise ToolError(f"failing on purpose (attempt {attempt})",
                        str(args.get("reason", "TOOL_ERROR")), retryable=True)
    return {"attempt": attempt}


async def _test_raise(args: dict[str, Any], ctx: ToolContext) -> Any:
    raise RuntimeError(str(args.get("message", "boom")))


async def _test_bad_output(args: dict[str, Any], ctx: ToolContext) -> Any:
    return {"not_json": {1, 2, 3}}


async def _test_big_output(args: dict[str, Any], ctx: ToolContext) -> Any:
    return {"data": "x" * int(args.get("bytes", 0))}


async def _test_echo(args: dict[str, Any], ctx: ToolContext) -> Any:
    return args


_ANY = {"type": "object"}
TOOLS = [
    BuiltinTool("test_record", "Test: record calls", "Records each call (idempotency key, "
                "worker) in test_tool_calls unless `record` is false; optionally sleeps.",
                _ANY, _ANY, _test_record),
    BuiltinTool("test_flaky", "Test: flaky", "Fails `fail_times` attempts, then succeeds.",
                _ANY, _ANY, _test_flaky),
    BuiltinTool("test_raise", "Test: raise", "Raises an exception.", _ANY, _ANY, _test_raise),
    BuiltinTool("test_bad_output", "Test: non-JSON output", "Returns a value that is not JSON.",
                _ANY, _ANY, _test_bad_output),
    BuiltinTool("test_big_output", "Test: big output", "Returns `bytes` characters.", _ANY,
                _ANY, _test_big_output),
    BuiltinTool("test_echo", "Test: echo", "Returns its arguments.", _ANY, _ANY, _test_echo),
]


def install() -> None:
    for tool in TOOLS:
        if get(tool.name) is None:
            register(tool)
