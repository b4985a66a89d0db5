"""Python executions: hand one to an idle zygote, stream its output back, and say precisely how
it ended. No user code runs in this process: the zygote's forked child compiles and runs it."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
from typing import Any

from services.common import errors

from .child import runner
from .limits import STREAM_BYTES, ExecutionLimits
from .outcome import (ExecutionError, Job, Outcome, Status, Usage, decode_output,
                      refuse_constant, safe_text, too_deep)
from .pool import Zygote, ZygoteFailed, ZygotePool

log = logging.getLogger(__name__)

# Room for the envelope around a result of max_output_bytes.
ENVELOPE_SLACK = 64 * 1024
# How long past its own wall-clock limit an execution may go before the service gives up on
# the zygote (the zygote enforces the limit; this catches a zygote that stopped answering).
BACKSTOP_S = 10.0
_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "out of memory")


class PipeReader:
    """Reads a non-blocking pipe on the event loop, keeping at most `cap` bytes. Past the cap
    it stops reading and closes its end, so a flood cannot cost this process more."""

    def __init__(self, fd: int, cap: int) -> None:
        self.fd = fd
        self.cap = cap
        self.data = bytearray()
        self.overflow = False
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        os.set_blocking(fd, False)
        self.loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close()
            return
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.data += chunk[:room]
            self.overflow = True
            self.close()
            return
        self.data += chunk

    def close(self) -> None:
        if not self.done.done():
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.done.set_result(None)


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("iceos-payload", os.MFD_CLOEXEC)
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def classify(report: dict[str, Any], envelope: bytes, envelope_overflow: bool,
             stdout: PipeReader, stderr: PipeReader, limits: ExecutionLimits) -> Outcome:
    """How the execution ended, from the zygote's exit report and the child's envelope."""
    parsed: dict[str, Any] = {}
    if envelope and not envelope_overflow:
        try:
            parsed = json.loads(envelope, parse_constant=refuse_constant)
        except (ValueError, RecursionError):
            parsed = {"status": "error", "type": "NonJSONResult",
                      "message": "the result could not be read back as JSON"}
        if not isinstance(parsed, dict):
            parsed = {}
    outcome = Outcome(
        status=Status.ERROR,
        stdout=decode_output(stdout.data), stderr=decode_output(stderr.data),
        stdout_truncated=stdout.overflow or bool(parsed.get("stdout_truncated")),
        stderr_truncated=stderr.overflow or bool(parsed.get("stderr_truncated")),
        usage=Usage(wall_s=float(report.get("wall_s", 0.0)), cpu_s=float(report.get("cpu_s", 0.0)),
                    peak_memory_bytes=int(report.get("maxrss_bytes", 0))))
    sig = report.get("signal")
    cpu_limit = max(1, math.ceil(limits.cpu_s))

    if report.get("cancelled"):
        return _fail(outcome, Status.KILLED, "Cancelled", "the execution was cancelled")
    if report.get("timed_out"):
        return _fail(outcome, Status.TIMEOUT, "Timeout",
                     f"the code ran past the {limits.timeout_s:g}s wall-clock limit; its "
                     "processes were killed")
    if envelope_overflow:
        return _fail(outcome, Status.OUTPUT_LIMIT, "OutputLimit",
                     f"the result is larger than the {limits.max_output_bytes}-byte limit")
    status = parsed.get("status")
    if status == "ok" and "result" in parsed:
        result = parsed["result"]
        deep = too_deep(result)
        if deep is not None:
            return _fail(outcome, Status.ERROR, deep.type, deep.message)
        outcome.status = Status.OK
        outcome.result = result
        return outcome
    if status in ("error", "memory_limit", "output_limit"):
        outcome.status = {"error": Status.ERROR, "memory_limit": Status.MEMORY_LIMIT,
                          "output_limit": Status.OUTPUT_LIMIT}[status]
        line = parsed.get("line")
        outcome.error = ExecutionError(
            type=safe_text(parsed.get("type")) or "Error",
            message=safe_text(parsed.get("message")),
            traceback=safe_text(parsed.get("traceback")),
            line=line if isinstance(line, int) and 0 <= line < 2**31 else 0)
        if status == "memory_limit" and not outcome.error.message:
            outcome.error.message = f"the code hit the {limits.memory_mb} MiB memory limit"
        return outcome
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL
                                 and outcome.usage.cpu_s >= cpu_limit - 0.05):
        return _fail(outcome, Status.CPU_LIMIT, "CpuLimit",
                     f"the code used more than {cpu_limit}s of CPU time")
    crashed = sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS) or (
        report.get("code") not in (None, 0))
    if crashed and any(hint in outcome.stderr for hint in _MEMORY_HINTS):
        return _fail(outcome, Status.MEMORY_LIMIT, "MemoryError",
                     f"the code hit the {limits.memory_mb} MiB memory limit")
    if sig:
        name = signal.Signals(sig).name if sig in signal.Signals.__members__.values() else sig
        return _fail(outcome, Status.KILLED, "Killed", f"the process was killed by {name}")
    code = report.get("code")
    if code == runner.EXIT_SETUP_FAILED and outcome.stderr.startswith("sandbox setup failed"):
        log.error("sandbox child setup failed", extra={"detail": outcome.stderr[:500]})
        raise errors.Unavailable("the sandbox could not set up the execution; see the logs")
    return _fail(outcome, Status.ERROR, "Exit",
                 f"the process exited with status {code} before main returned")


def _fail(outcome: Outcome, status: Status, type_: str, message: str) -> Outcome:
    outcome.status = status
    outcome.error = ExecutionError(type=type_, message=message)
    return outcome


class PythonTier:
    def __init__(self, pool: ZygotePool, acquire_timeout_s: float) -> None:
        self.pool = pool
        self.acquire_timeout_s = acquire_timeout_s

    async def execute(self, job: Job, inputs_json: str, limits: ExecutionLimits) -> Outcome:
        zygote = await self.pool.acquire(self.acquire_timeout_s)
        exchange = asyncio.ensure_future(self._exchange(zygote, job, inputs_json, limits))
        try:
            return await asyncio.shield(exchange)
        except asyncio.CancelledError:
            # The caller went away: stop the execution; the exchange finishes in the
            # background and returns the zygote to the pool.
            if not zygote.dead:
                try:
                    zygote.send({"op": "cancel"})
                except ZygoteFailed:
                    pass
            exchange.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise

    async def _exchange(self, zygote: Zygote, job: Job, inputs_json: str,
                        limits: ExecutionLimits) -> Outcome:
        payload = json.dumps({"source": job.source, "idempotency_key": job.idempotency_key},
                             ensure_ascii=False)
        # Inputs are already JSON: splice them in rather than decode and re-encode.
        payload = payload[:-1] + ',"inputs":' + inputs_json + "}"
        child_fds: list[int] = []
        readers: list[PipeReader] = []
        sent = False
        try:
            child_fds.append(_memfd(payload.encode("utf-8", "surrogatepass")))
            for cap in (limits.max_output_bytes + ENVELOPE_SLACK, STREAM_BYTES, STREAM_BYTES):
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                child_fds.append(write_end)
                readers.append(PipeReader(read_end, cap))
            header = {"op": "run", "timeout_s": limits.timeout_s,
                      "memory_bytes": limits.memory_bytes, "cpu_s": limits.cpu_s,
                      "max_output_bytes": limits.max_output_bytes,
                      "stdout_bytes": STREAM_BYTES, "stderr_bytes": STREAM_BYTES}
            try:
                zygote.send(header, child_fds)
                sent = True
            finally:
                for fd in child_fds:
                    os.close(fd)
                child_fds.clear()
            report = await zygote.next_message(limits.timeout_s + BACKSTOP_S)
            if report is None or report.get("op") != "exit":
                zygote.kill()  # its supervisor starts a replacement
                log.error("sandbox zygote stopped answering during an execution",
                          extra={"slot": zygote.slot, "pid": zygote.pid})
                raise errors.Unavailable("the sandbox worker died during the execution; "
                                         "retry")
            self.pool.release(zygote)
            # The zygote killed every leftover process, so the pipes reach EOF promptly.
            await asyncio.wait([r.done for r in readers], timeout=5.0)
            result, stdout, stderr = readers
            return classify(report, bytes(result.data), result.overflow, stdout, stderr, limits)
        except ZygoteFailed as exc:
            zygote.kill()
            raise errors.Unavailable(f"the sandbox worker failed: {exc}") from None
        finally:
            for fd in child_fds:
                os.close(fd)
            for reader in readers:
                reader.close()
            if not sent and not zygote.dead:
                self.pool.give_back(zygote)
