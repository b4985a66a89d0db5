"""The sandbox's domain entry point: validate a job, resolve its limits, admit it within the
concurrency bound, and run it in the Python or WASM tier."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import unicodedata
from collections.abc import AsyncIterator
from typing import Any

from services.common import errors
from services.common.settings import Settings

from . import limits as limits_mod
from . import uids
from .limits import ExecutionLimits, RequestedLimits
from .outcome import Job, Language, Outcome
from .pool import ZygoteOptions, ZygotePool
from .python_tier import PythonTier
from .wasm_tier import WasmTier

log = logging.getLogger(__name__)

MAX_SOURCE_BYTES = 1024 * 1024
MAX_MODULE_BYTES = 16 * 1024 * 1024
MAX_INPUT_BYTES = 8 * 1024 * 1024
MAX_IDEMPOTENCY_KEY = 512
# Share of control characters above which a source is binary junk rather than text.
BINARY_CONTROL_SHARE = 0.01


# C0 and C1 control characters other than the whitespace ones (\t \n \v \f \r).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def _control_share(text: str) -> float:
    return len(_CONTROL.findall(text)) / max(1, len(text))


def validate(job: Job) -> None:
    """InvalidArgument listing every problem with the job's own fields."""
    v = errors.Violations()
    if job.language is Language.PYTHON:
        if job.wasm_module:
            v.add("wasm_module", "must be empty for LANGUAGE_PYTHON")
        if not job.source.strip():
            v.add("source", "must not be empty: give Python source defining main(inputs)",
                  "EMPTY_SOURCE")
        elif len(job.source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
            v.add("source", f"is larger than {MAX_SOURCE_BYTES} bytes", "SOURCE_TOO_LARGE")
        elif "\x00" in job.source or _control_share(job.source) > BINARY_CONTROL_SHARE:
            v.add("source", "looks binary, not Python text (it contains NUL or control "
                            "characters)", "BINARY_SOURCE")
    else:
        if job.source:
            v.add("source", "must be empty for LANGUAGE_WASM")
        if not job.wasm_module:
            v.add("wasm_module", "must not be empty: give a WASI module, binary or text",
                  "EMPTY_MODULE")
        elif len(job.wasm_module) > MAX_MODULE_BYTES:
            v.add("wasm_module", f"is larger than {MAX_MODULE_BYTES} bytes", "MODULE_TOO_LARGE")
    if len(job.idempotency_key) > MAX_IDEMPOTENCY_KEY:
        v.add("idempotency_key", f"is longer than {MAX_IDEMPOTENCY_KEY} characters")
    elif any(unicodedata.category(c) in ("Cc", "Cs") for c in job.idempotency_key):
        v.add("idempotency_key", "must not contain control characters")
    v.raise_if_any("the execution request is invalid")


def encode_inputs(inputs: Any) -> str:
    try:
        data = json.dumps(inputs, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise errors.InvalidArgument.field("inputs", f"is not JSON: {exc}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise errors.InvalidArgument.field(
            "inputs", f"is {len(data)} bytes of JSON; the limit is {MAX_INPUT_BYTES}",
            "INPUTS_TOO_LARGE")
    return data


class Sandbox:
    def __init__(self, settings: Settings, *, zygote_options: ZygoteOptions | None = None
                 ) -> None:
        sandbox = settings.sandbox
        self.maximum = limits_mod.server_maximum(sandbox)
        self.concurrency = sandbox.concurrency
        self.queue_wait_s = sandbox.queue_wait_s
        pool_size = min(sandbox.concurrency + 1, uids.BLOCK_SIZE)
        if pool_size < sandbox.concurrency:
            log.warning("ICEOS_SANDBOX_CONCURRENCY is above the zygote pool's maximum; "
                        "Python executions will queue for zygotes",
                        extra={"pool_size": pool_size})
        options = zygote_options or ZygoteOptions(seccomp=not settings.disable_seccomp)
        self._slots = asyncio.Semaphore(sandbox.concurrency)
        self._uids = uids.reserve(pool_size)
        self.pool = ZygotePool(pool_size, self._uids, options)
        self.python = PythonTier(self.pool, acquire_timeout_s=max(sandbox.queue_wait_s, 5.0))
        self.wasm = WasmTier(workers=sandbox.concurrency)
        self.running = 0

    def start(self) -> None:
        self.pool.start()

    async def close(self) -> None:
        await self.pool.close()
        await asyncio.to_thread(self.wasm.close)

    @contextlib.asynccontextmanager
    async def _admitted(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.queue_wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise errors.ResourceExhausted(
                f"the sandbox is already running {self.concurrency} executions, its limit; "
                f"this one waited {self.queue_wait_s:g}s; retry shortly",
                reason="SANDBOX_BUSY", metadata={"concurrency": str(self.concurrency)}
            ) from None
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()

    async def execute(self, job: Job, requested: RequestedLimits) -> Outcome:
        validate(job)
        limits: ExecutionLimits = limits_mod.resolve(requested, self.maximum)
        inputs_json = encode_inputs(job.inputs)
        async with self._admitted():
            if job.language is Language.PYTHON:
                outcome = await self.python.execute(job, inputs_json, limits)
            else:
                outcome = await self.wasm.execute(job, inputs_json, limits)
        log.info("sandbox execution", extra={
            "project": job.project_id, "language": job.language.value,
            "status": outcome.status.value, "wall_ms": round(outcome.usage.wall_s * 1000, 2),
            "cpu_ms": round(outcome.usage.cpu_s * 1000, 2),
            "idempotency_key": job.idempotency_key})
        return outcome
