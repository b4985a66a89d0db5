"""The forked child: confine itself, then run the user's `main(inputs)` once and report.

Order matters. The child reads its payload, rewires fds 0-3 and closes everything else (the
zygote's control socket included), enters its working directory, sets its rlimits, drops to the
zygote's unprivileged uid, arranges to die with the zygote, installs the seccomp filter and
clears its environment. Only then is the user's source compiled.
"""

from __future__ import annotations

import builtins
import io
import json
import linecache
import os
import resource
import signal
import sys
import traceback
from typing import Any, NoReturn

from . import libc

FILENAME = "main.py"
RESULT_FD = 3
NPROC = 32
NOFILE = 64
FSIZE_BYTES = 64 * 1024 * 1024
MAX_MESSAGE_CHARS = 4000
MAX_TRACEBACK_CHARS = 16000
EXIT_SETUP_FAILED = 70


class CappedOutput(io.RawIOBase):
    """stdout/stderr: keep the first `cap` bytes, count the rest, never block or fail."""

    def __init__(self, fd: int, cap: int) -> None:
        super().__init__()
        self.fd = fd
        self.left = cap
        self.truncated = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if size > self.left:
            self.truncated = True
        chunk = view[: self.left]
        while len(chunk):
            try:
                written = os.write(self.fd, chunk)
            except OSError:
                self.left = 0
                self.truncated = True
                break
            chunk = chunk[written:]
            self.left -= written
        return size


def _read_all(fd: int) -> bytes:
    parts = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while len(view):
        try:
            view = view[os.write(fd, view):]
        except BrokenPipeError:
            return


def _confine(run: dict, config: dict, fds: list[int], workdir: str) -> dict:  # type: ignore[type-arg]
    payload_fd, result_fd, stdout_fd, stderr_fd = fds
    os.setsid()
    payload = json.loads(_read_all(payload_fd))
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    os.dup2(result_fd, RESULT_FD)
    os.closerange(RESULT_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    os.chdir(workdir)

    cpu = max(1, int(-(-run["cpu_s"] // 1)))  # whole seconds, rounded up
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_NPROC, (NPROC, NPROC))
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_BYTES, FSIZE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (run["memory_bytes"], run["memory_bytes"]))

    zygote = os.getppid()
    if config["drop_privileges"]:
        uid, gid = config["uid"], config["gid"]
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    # After the uid change: changing credentials clears the parent-death signal.
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote:
        os._exit(EXIT_SETUP_FAILED)
    if config["seccomp"]:
        config["seccomp_filter"].install()
    else:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)

    os.environ.clear()
    os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/bin:/bin",
                       "LANG": "C.UTF-8"})
    if payload.get("idempotency_key"):
        os.environ["ICEOS_IDEMPOTENCY_KEY"] = payload["idempotency_key"]
    sys.argv = [FILENAME]
    return payload  # type: ignore[no-any-return]


def _user_frames(te: traceback.TracebackException, seen: set[int] | None = None) -> None:
    """Keep only the user's frames, in this exception and the ones it chains to."""
    seen = set() if seen is None else seen
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if f.filename == FILENAME])
    for chained in (te.__cause__, te.__context__):
        if chained is not None:
            _user_frames(chained, seen)


def _error(exc: BaseException, *, status: str = "error", type_name: str | None = None,
           message: str | None = None) -> dict:  # type: ignore[type-arg]
    line = 0
    text = ""
    try:
        te = traceback.TracebackException.from_exception(exc)
        _user_frames(te)
        text = "".join(te.format())
        if isinstance(exc, SyntaxError):
            line = exc.lineno or 0
        elif te.stack:
            line = te.stack[-1].lineno or 0
    except BaseException:  # noqa: BLE001 - a report without a traceback beats no report
        pass
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "…" + text[-MAX_TRACEBACK_CHARS:]
    if message is None:
        try:
            message = str(exc)
        except BaseException:  # noqa: BLE001 - __str__ is user code too
            message = ""
    return {"status": status, "type": type_name or type(exc).__name__,
            "message": message[:MAX_MESSAGE_CHARS], "traceback": text, "line": line}


def _run_user_code(payload: dict, max_output: int) -> dict:  # type: ignore[type-arg]
    source = payload["source"]
    linecache.cache[FILENAME] = (len(source), None, source.splitlines(True), FILENAME)
    try:
        code = compile(source, FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return _error(exc)
    namespace: dict[str, Any] = {"__name__": "__sandbox__", "__builtins__": builtins,
                                 "__file__": FILENAME}
    try:
        exec(code, namespace)
        main = namespace.get("main")
        if main is None:
            return {"status": "error", "type": "MainNotFound", "traceback": "", "line": 0,
                    "message": "the source defines no function main(inputs)"}
        if not callable(main):
            return {"status": "error", "type": "MainNotFound", "traceback": "", "line": 0,
                    "message": f"main is a {type(main).__name__}, not a function"}
        result = main(payload["inputs"])
        if hasattr(result, "__await__"):
            import asyncio
            result = asyncio.run(result)  # type: ignore[arg-type]
    except MemoryError as exc:
        return _error(exc, status="memory_limit")
    except BaseException as exc:  # noqa: BLE001 - everything the user's code raises is a result
        return _error(exc)
    try:
        data = json.dumps(result, allow_nan=False, separators=(",", ":"))
    except MemoryError as exc:
        return _error(exc, status="memory_limit")
    except (TypeError, ValueError, RecursionError) as exc:
        return {"status": "error", "type": "NonJSONResult", "traceback": "", "line": 0,
                "message": f"main returned a value that is not JSON: {exc}"[:MAX_MESSAGE_CHARS]}
    if len(data) > max_output:
        return {"status": "output_limit", "type": "OutputLimit", "traceback": "", "line": 0,
                "message": f"the result is {len(data)} bytes of JSON; the limit is "
                           f"{max_output}", "_raw": None}
    return {"status": "ok", "_raw": data}


def child_main(run: dict, config: dict, fds: list[int], workdir: str) -> NoReturn:  # type: ignore[type-arg]
    """Entry point after fork. Never returns."""
    code = EXIT_SETUP_FAILED
    try:
        payload = _confine(run, config, fds, workdir)
        # Headroom so a MemoryError can still be reported.
        reserve = bytearray(256 * 1024)
        stdout = CappedOutput(1, run["stdout_bytes"])
        stderr = CappedOutput(2, run["stderr_bytes"])
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(stdout), encoding="utf-8",
                                      errors="backslashreplace")
        sys.stderr = io.TextIOWrapper(io.BufferedWriter(stderr), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        try:
            report = _run_user_code(payload, run["max_output_bytes"])
        except MemoryError as exc:
            del reserve
            report = _error(exc, status="memory_limit")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - the user may have closed or replaced it
                pass
        raw = report.pop("_raw", None)
        report["stdout_truncated"] = stdout.truncated
        report["stderr_truncated"] = stderr.truncated
        envelope = json.dumps(report, separators=(",", ":"))
        if raw is not None:
            envelope = envelope[:-1] + ',"result":' + raw + "}"
        _write_all(RESULT_FD, envelope.encode())
        code = 0
    except BaseException as exc:  # noqa: BLE001 - setup failed: say so on stderr, exit 70
        try:
            os.write(2, f"sandbox setup failed: {type(exc).__name__}: {exc}\n".encode())
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)
