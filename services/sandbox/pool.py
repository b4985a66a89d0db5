"""The zygote pool, seen from the service: start the zygotes, hand an idle one to each Python
execution, and replace any that dies (the pool refills itself)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from services.common import errors
from services.common.settings import REPO_ROOT

from .child import protocol
from .uids import UidBlock

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# `-I -S`: no environment variables, no user or site packages; the standard library and the
# package below only.
_BOOTSTRAP = ("import sys; sys.path.insert(0, {root!r}); "
              "from services.sandbox.child import zygote; zygote.main()")


@dataclass(frozen=True)
class ZygoteOptions:
    seccomp: bool = True
    # tmpfs for the working directories of one zygote's executions.
    scratch_bytes: int = 256 * MIB
    python: str = sys.executable
    start_timeout_s: float = 30.0


class ZygoteFailed(Exception):
    """A zygote could not start, or died or stopped answering."""


class Zygote:
    """One zygote process and its control socket."""

    def __init__(self, slot: int, uid: int, options: ZygoteOptions) -> None:
        self.slot = slot
        self.uid = uid
        self.options = options
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None
        self.pid = 0
        self.isolation: dict[str, bool] = {}
        self.dead = False
        self.died: asyncio.Future[None] | None = None
        self._messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.died = loop.create_future()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = {
            "ctl_fd": theirs.fileno(), "uid": self.uid, "gid": self.uid,
            "seccomp": self.options.seccomp, "scratch_bytes": self.options.scratch_bytes,
            "extra_ro": sorted({sys.base_prefix, sys.base_exec_prefix}),
            "drop_paths": [str(REPO_ROOT)],
        }
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.options.python, "-I", "-S", "-X", "utf8", "-c",
                _BOOTSTRAP.format(root=str(REPO_ROOT)), json.dumps(config),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env={}, cwd="/",
                pass_fds=(theirs.fileno(),), start_new_session=True)
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self._reader = asyncio.create_task(self._read())
        first = await self.next_message(self.options.start_timeout_s)
        if first is None:
            raise ZygoteFailed("the zygote exited or hung while starting")
        if first.get("op") == "fatal":
            raise ZygoteFailed(f"the zygote cannot sandbox: {first.get('message')}")
        self.isolation = first.get("isolation", {})
        self.pid = int(first.get("pid", 0))

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.sock is not None
        while True:
            try:
                data = await loop.sock_recv(self.sock, protocol.MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                self.dead = True
                self._messages.put_nowait(None)
                if self.died is not None and not self.died.done():
                    self.died.set_result(None)
                return
            self._messages.put_nowait(protocol.decode(data))

    async def next_message(self, timeout: float) -> dict[str, Any] | None:
        """The zygote's next message, or None when it died or said nothing within `timeout`."""
        if self.dead and self._messages.empty():
            return None
        try:
            async with asyncio.timeout(timeout):
                return await self._messages.get()
        except TimeoutError:
            return None

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        if self.sock is None or self.dead:
            raise ZygoteFailed("the zygote is gone")
        try:
            socket.send_fds(self.sock, [protocol.encode(message)], fds or [])
        except OSError as exc:
            raise ZygoteFailed(f"cannot reach the zygote: {exc}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float = 5.0) -> None:
        """Closing the socket asks the zygote to kill its execution, clean up and exit."""
        if self.sock is not None:
            self.sock.close()
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


class ZygotePool:
    def __init__(self, size: int, uids: UidBlock, options: ZygoteOptions) -> None:
        self.size = size
        self.uids = uids
        self.options = options
        self.live: dict[int, Zygote] = {}
        self.isolation: dict[str, bool] | None = None
        self.last_error: str | None = None
        self.started = asyncio.Event()
        self._idle: asyncio.Queue[Zygote] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._supervise(slot)) for slot in range(self.size)]

    async def _supervise(self, slot: int) -> None:
        backoff = 0.2
        while not self._closing:
            zygote = Zygote(slot, self.uids.uid(slot), self.options)
            try:
                await zygote.start()
            except (ZygoteFailed, OSError) as exc:
                self.last_error = str(exc)
                log.error("sandbox zygote failed to start", extra={"slot": slot,
                                                                   "error": str(exc)})
                zygote.kill()
                await zygote.stop(1.0)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.2
            if self.isolation is None:
                log.info("sandbox zygotes isolated", extra={"isolation": zygote.isolation})
                if not all(zygote.isolation.values()):
                    log.warning("sandbox isolation is degraded",
                                extra={"isolation": zygote.isolation})
            self.isolation = zygote.isolation
            self.live[slot] = zygote
            self._idle.put_nowait(zygote)
            self.started.set()
            assert zygote.died is not None
            await zygote.died
            self.live.pop(slot, None)
            zygote.kill()
            await zygote.stop(1.0)
            if not self._closing:
                log.warning("sandbox zygote exited; starting a replacement",
                            extra={"slot": slot, "pid": zygote.pid})

    async def acquire(self, timeout: float) -> Zygote:
        """An idle zygote, waiting up to `timeout` (longer while the pool first starts)."""
        loop = asyncio.get_running_loop()
        if not self.started.is_set():
            timeout = max(timeout, self.options.start_timeout_s)
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            try:
                async with asyncio.timeout(max(remaining, 0)):
                    zygote = await self._idle.get()
            except TimeoutError:
                if not self.live and self.last_error:
                    raise errors.Unavailable(
                        f"the Python sandbox is not available: {self.last_error}") from None
                raise errors.ResourceExhausted(
                    "no sandbox interpreter became free in time; retry shortly",
                    reason="SANDBOX_BUSY") from None
            if not zygote.dead:
                return zygote

    def give_back(self, zygote: Zygote) -> None:
        """Return a zygote that was handed out but given no work."""
        self._idle.put_nowait(zygote)

    def release(self, zygote: Zygote) -> None:
        """Back to the idle queue once the zygote reports it cleaned up; otherwise replace it."""
        async def wait_ready() -> None:
            message = await zygote.next_message(30.0)
            if message is not None and message.get("op") == "ready" and not self._closing:
                self._idle.put_nowait(zygote)
            else:
                zygote.kill()

        task = asyncio.create_task(wait_ready())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(z.stop() for z in list(self.live.values())),
                             return_exceptions=True)
        self.uids.release()
