"""A zygote: a pre-started, minimal interpreter that forks one child per execution.

Started by the service as `python -I -S -X utf8 -c <bootstrap>` with a cleared environment, it
imports only the standard library and this package, isolates itself once (jail.py), then
serves `run` messages one at a time: fork a child (runner.py), watch its pidfd against the wall
clock, report how it ended, then kill whatever the execution left behind, reap it, and delete
its working directory. It never reads the user's payload or output (see protocol.py), so what it
forks from is the same clean state every time.
"""

from __future__ import annotations

import gc
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time

from . import jail, libc, protocol, runner, seccomp

# Modules user code commonly imports, loaded once here so each child does not pay for them.
PRELOAD = ("json", "re", "math", "datetime", "collections", "itertools", "functools", "typing",
           "decimal", "fractions", "random", "hashlib", "base64", "string", "statistics",
           "dataclasses", "enum", "textwrap", "copy", "operator", "struct", "bisect", "heapq",
           "ctypes", "traceback", "linecache", "io", "time")


class Zygote:
    def __init__(self, config: dict) -> None:  # type: ignore[type-arg]
        self.config = config
        self.ctl = socket.socket(fileno=config["ctl_fd"])
        self.uid: int = config["uid"]
        self.gid: int = config["gid"]
        self.root = os.geteuid() == 0
        self.workbase = tempfile.gettempdir()
        self.child_config = {"uid": self.uid, "gid": self.gid, "drop_privileges": self.root,
                             "seccomp": config["seccomp"], "seccomp_filter": None}

    def send(self, message: dict) -> None:  # type: ignore[type-arg]
        try:
            self.ctl.send(protocol.encode(message))
        except OSError:
            sys.exit(0)  # the service is gone

    def isolate(self) -> dict:  # type: ignore[type-arg]
        isolation = {"mount": False, "network": False, "uid": self.root,
                     "seccomp": bool(self.config["seccomp"])}
        if self.root:
            jail.kill_uid(self.uid)  # whatever a predecessor with this uid left behind
            if jail.unshare_namespaces():
                jail.build_root(self.config["extra_ro"], self.config["scratch_bytes"],
                                self.uid, self.gid)
                isolation.update(mount=True, network=True)
                self.workbase = "/tmp"
        else:
            isolation["network"] = jail.enter_user_netns()
        if self.config["seccomp"]:
            self.child_config["seccomp_filter"] = seccomp.Prepared()
            self._probe_seccomp()
        return isolation

    def _probe_seccomp(self) -> None:
        """Fail at start, not per execution, where the kernel refuses the filter."""
        pid = os.fork()
        if pid == 0:
            try:
                self.child_config["seccomp_filter"].install()
                os._exit(0)
            finally:
                os._exit(1)
        if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
            raise OSError("the kernel refused the seccomp filter")

    def serve(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.ctl, protocol.MAX_MESSAGE, 4)
            except InterruptedError:
                continue
            if not data:
                return  # the service closed the socket: stop
            message = protocol.decode(data)
            if message.get("op") == "run" and len(fds) == len(protocol.FDS):
                self.run(message, fds)
            else:
                for fd in fds:
                    os.close(fd)

    def _kill_group(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def run(self, message: dict, fds: list[int]) -> None:  # type: ignore[type-arg]
        # Random, not counted: the name must not tell the code how many ran before it.
        workdir = f"{self.workbase}/run-{os.urandom(8).hex()}"
        os.mkdir(workdir, 0o700)
        if self.root:
            os.chown(workdir, self.uid, self.gid)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            runner.child_main(message, self.child_config, fds, workdir)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(self.ctl, select.POLLIN)
        deadline = started + float(message["timeout_s"])
        timed_out = cancelled = service_gone = False
        exited = False
        while not (exited or timed_out or cancelled or service_gone):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for fd, _ in poller.poll(max(1, int(remaining * 1000) + 1)):
                if fd == pidfd:
                    exited = True
                elif fd == self.ctl.fileno():
                    data = self.ctl.recv(protocol.MAX_MESSAGE)
                    if not data:
                        service_gone = True
                    elif protocol.decode(data).get("op") == "cancel":
                        cancelled = True
        if not exited:
            self._kill_group(pid)
        _, status, usage = os.wait4(pid, 0)
        wall = time.monotonic() - started
        os.close(pidfd)
        self._kill_group(pid)
        if service_gone:
            self.cleanup(workdir)
            sys.exit(0)
        self.send({
            "op": "exit",
            "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "timed_out": timed_out, "cancelled": cancelled, "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_bytes": usage.ru_maxrss * 1024,
            "uid": self.uid if self.root else os.getuid(),
        })
        self.cleanup(workdir)
        self.send({"op": "ready"})

    def cleanup(self, workdir: str) -> None:
        """Kill and reap everything the execution started, then delete its directory."""
        if self.root:
            jail.kill_uid(self.uid)
        deadline = time.monotonic() + 2.0
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.001)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    config = json.loads(sys.argv[1])
    parent = os.getppid()
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit(0)
    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    for name in PRELOAD:
        __import__(name)
    zygote = Zygote(config)
    try:
        isolation = zygote.isolate()
    except Exception as exc:  # noqa: BLE001 - report why this zygote cannot sandbox
        zygote.send({"op": "fatal", "message": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)
    # Nothing beyond the standard library is importable from here on.
    sys.path[:] = [p for p in sys.path if p not in config.get("drop_paths", ())]
    # What exists now is shared with every child; keep the collector from touching (and so
    # copying) those pages in each of them.
    gc.collect()
    gc.freeze()
    zygote.send({"op": "ready", "isolation": isolation, "pid": os.getpid()})
    zygote.serve()
