"""WASM executions with wasmtime: fuel for CPU, a linear-memory cap, an epoch deadline for wall
time, WASI preview 1 with no preopened directories, no sockets, no inherited stdio or
environment; JSON in on stdin, JSON out on stdout.

Why in this process, on a worker thread, and not in a zygote child: a WASM guest is isolated by
wasmtime itself — it can touch only its own bounds-checked linear memory and the host functions
we link (WASI, configured with nothing to reach), and fuel, the epoch deadline and the store
limits bound its CPU, time and memory. A process hop would add a fork and IPC (milliseconds)
to an execution that otherwise takes well under one. The price is that a wasmtime bug would be a
bug in this process; Python, which has no such runtime boundary, never runs here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
import wasmtime

from services.common import errors

from .limits import STREAM_BYTES, ExecutionLimits
from .outcome import (ExecutionError, Job, Outcome, Status, Usage, decode_output,
                      refuse_constant, too_deep)

WASI_MODULE = "wasi_snapshot_preview1"
EPOCH_TICK_S = 0.005
CACHE_ENTRIES = 64
MAX_TABLE_ELEMENTS = 100_000
WASM_PAGE = 64 * 1024


@dataclass
class CompiledModule:
    digest: str
    module: wasmtime.Module
    pre: wasmtime.InstancePre


class _Capture:
    """A WASI output stream kept in memory up to `cap` bytes; the rest is counted, not kept."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0
        self.overflow = False

    def __call__(self, data: bytes) -> int:
        room = self.cap - self.size
        if len(data) > room:
            self.overflow = True
            data = data[:max(room, 0)]
        if data:
            self.parts.append(data)
            self.size += len(data)
        return None  # type: ignore[return-value]  # "all of it written"

    def value(self) -> bytes:
        return b"".join(self.parts)


class _EpochTicker:
    """Advances the engine's epoch while executions are running, so each store's deadline
    (counted in ticks) passes in wall time."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self.engine = engine
        self.active = 0
        self.cond = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="wasm-epoch", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while self.active == 0 and not self.stopped:
                    self.cond.wait()
                if self.stopped:
                    return
            time.sleep(EPOCH_TICK_S)
            self.engine.increment_epoch()

    def enter(self) -> None:
        with self.cond:
            self.active += 1
            self.cond.notify()

    def leave(self) -> None:
        with self.cond:
            self.active -= 1

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()


class WasmTier:
    def __init__(self, workers: int) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()
        self._cache: OrderedDict[str, CompiledModule] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wasm")
        self._ticker = _EpochTicker(self.engine)

    def close(self) -> None:
        self._ticker.stop()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def execute(self, job: Job, inputs_json: str, limits: ExecutionLimits) -> Outcome:
        # One hop to a worker thread for both compile (usually a cache hit) and run.
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._compile_and_run, job, inputs_json, limits)

    def _compile_and_run(self, job: Job, inputs_json: str, limits: ExecutionLimits) -> Outcome:
        return self._run(self.compile(job.wasm_module), inputs_json, job.idempotency_key, limits)

    # -- compilation ------------------------------------------------------------------------

    def compile(self, data: bytes) -> CompiledModule:
        """The module for these bytes (binary or text format), from the cache when seen before.
        An unusable module is InvalidArgument on `wasm_module`."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None:
                self._cache.move_to_end(digest)
                return cached
        compiled = CompiledModule(digest, *self._compile(data))
        with self._lock:
            self._cache[digest] = compiled
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, data: bytes) -> tuple[wasmtime.Module, wasmtime.InstancePre]:
        def refuse(description: str) -> errors.InvalidArgument:
            return errors.InvalidArgument.field("wasm_module", description, "INVALID_WASM")

        source: bytes | str = data
        if not data.startswith(b"\0asm"):
            try:
                source = data.decode("utf-8")
            except UnicodeDecodeError:
                raise refuse("is neither a WebAssembly binary (it does not start with \\0asm) "
                             "nor WebAssembly text") from None
        try:
            module = wasmtime.Module(self.engine, source)
        except wasmtime.WasmtimeError as exc:
            raise refuse(f"is not a valid WebAssembly module: {_first_line(str(exc))}") from None
        for imported in module.imports:
            if imported.module != WASI_MODULE:
                raise refuse(f"imports {imported.module}.{imported.name}; the sandbox provides "
                             f"only WASI preview 1 ({WASI_MODULE})")
        start = [e for e in module.exports if e.name == "_start"]
        if not start or not isinstance(start[0].type, wasmtime.FuncType):
            raise refuse("exports no _start function; build a WASI command module")
        try:
            pre = self.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise refuse(f"cannot be linked against WASI preview 1: {_first_line(str(exc))}"
                         ) from None
        return module, pre

    # -- execution --------------------------------------------------------------------------

    def _run(self, compiled: CompiledModule, inputs_json: str, idempotency_key: str,
             limits: ExecutionLimits) -> Outcome:
        stdout = _Capture(max(limits.max_output_bytes, STREAM_BYTES))
        stderr = _Capture(STREAM_BYTES)
        stdin = os.memfd_create("iceos-wasm-stdin", os.MFD_CLOEXEC)
        store: wasmtime.Store | None = None
        outcome = Outcome(status=Status.ERROR)
        fuel_left = limits.fuel
        memory_bytes = 0
        self._ticker.enter()
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            os.write(stdin, inputs_json.encode("utf-8", "surrogatepass"))
            os.lseek(stdin, 0, os.SEEK_SET)
            wasi = wasmtime.WasiConfig()
            wasi.argv = ["main.wasm"]
            wasi.env = [("ICEOS_IDEMPOTENCY_KEY", idempotency_key)] if idempotency_key else []
            wasi.stdin_file = f"/proc/self/fd/{stdin}"
            wasi.stdout_custom = stdout
            wasi.stderr_custom = stderr
            store = wasmtime.Store(self.engine)
            store.set_wasi(wasi)
            store.set_fuel(limits.fuel)
            store.set_epoch_deadline(max(1, math.ceil(limits.timeout_s / EPOCH_TICK_S)))
            store.set_limits(memory_size=limits.memory_bytes,
                             table_elements=MAX_TABLE_ELEMENTS, instances=1, tables=4,
                             memories=1)
            try:
                instance = compiled.pre.instantiate(store)
            except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
                text = str(exc)
                if "memory" in text and ("limit" in text or "exceed" in text
                                         or "size" in text):
                    _fail(outcome, Status.MEMORY_LIMIT, "MemoryLimit",
                          f"the module needs more than the {limits.memory_mb} MiB memory "
                          f"limit: {_first_line(text)}")
                else:
                    _fail(outcome, Status.ERROR, "InstantiationError", _first_line(text))
                return outcome
            memory = instance.exports(store).get("memory")
            exit_code = 0
            trap: wasmtime.Trap | None = None
            try:
                instance.exports(store)["_start"](store)  # type: ignore[operator]
            except wasmtime.ExitTrap as exc:
                exit_code = exc.code
            except wasmtime.Trap as exc:
                trap = exc
            except wasmtime.WasmtimeError as exc:
                _fail(outcome, Status.ERROR, "WasmError", _first_line(str(exc)),
                      traceback=str(exc))
                return outcome
            if isinstance(memory, wasmtime.Memory):
                memory_bytes = memory.data_len(store)
            fuel_left = store.get_fuel()
            if trap is not None:
                self._trap(outcome, trap, limits, memory_bytes)
            elif exit_code != 0:
                _fail(outcome, Status.ERROR, "Exit",
                      f"the module exited with status {exit_code}")
            else:
                self._result(outcome, stdout, limits)
            return outcome
        finally:
            self._ticker.leave()
            outcome.usage = Usage(wall_s=time.perf_counter() - started,
                                  cpu_s=time.thread_time() - cpu_started,
                                  peak_memory_bytes=memory_bytes,
                                  fuel_consumed=max(0, limits.fuel - fuel_left))
            outcome.stdout = decode_output(stdout.value()[:STREAM_BYTES])
            outcome.stdout_truncated = stdout.overflow or stdout.size > STREAM_BYTES
            outcome.stderr = decode_output(stderr.value())
            outcome.stderr_truncated = stderr.overflow
            if store is not None:
                store.close()
            os.close(stdin)

    def _trap(self, outcome: Outcome, trap: wasmtime.Trap, limits: ExecutionLimits,
              memory_bytes: int) -> None:
        code = trap.trap_code
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            _fail(outcome, Status.CPU_LIMIT, "CpuLimit",
                  f"the module used all of its {limits.fuel} units of fuel")
        elif code == wasmtime.TrapCode.INTERRUPT:
            _fail(outcome, Status.TIMEOUT, "Timeout",
                  f"the module ran past the {limits.timeout_s:g}s wall-clock limit")
        elif memory_bytes + WASM_PAGE > limits.memory_bytes:
            # memory.grow answers -1 at the cap and the guest then traps; a full memory is the
            # evidence that the cap, not a bug, ended it.
            _fail(outcome, Status.MEMORY_LIMIT, "MemoryLimit",
                  f"the module trapped with its memory at the {limits.memory_mb} MiB limit: "
                  f"{_first_line(trap.message)}", traceback=str(trap))
        else:
            _fail(outcome, Status.ERROR, "Trap", _first_line(trap.message),
                  traceback=str(trap))

    def _result(self, outcome: Outcome, stdout: _Capture, limits: ExecutionLimits) -> None:
        data = stdout.value()
        if stdout.overflow or len(data) > limits.max_output_bytes:
            _fail(outcome, Status.OUTPUT_LIMIT, "OutputLimit",
                  f"the module wrote more than the {limits.max_output_bytes}-byte limit on "
                  "stdout")
            return
        if not data.strip():
            _fail(outcome, Status.ERROR, "NonJSONResult",
                  "the module wrote nothing on stdout; it must write one JSON value")
            return
        try:
            result = json.loads(data, parse_constant=refuse_constant)
        except (ValueError, RecursionError) as exc:
            _fail(outcome, Status.ERROR, "NonJSONResult", f"stdout is not JSON: {exc}")
            return
        deep = too_deep(result)
        if deep is not None:
            _fail(outcome, Status.ERROR, deep.type, deep.message)
            return
        outcome.status = Status.OK
        outcome.result = result


def _first_line(text: str) -> str:
    """The informative part of a wasmtime error: the trap cause, or its lines joined."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("wasm trap:"):
            return line
    lines = [line for line in lines if not line.startswith(("Caused by", "error while"))]
    return "; ".join(lines)[:500] or "error"


def _fail(outcome: Outcome, status: Status, type_: str, message: str,
          traceback: str = "") -> None:
    outcome.status = status
    outcome.error = ExecutionError(type=type_, message=message, traceback=traceback)
