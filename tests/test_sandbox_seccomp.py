"""The seccomp filter itself, installed in a forked child of the test process: what it refuses,
and that ordinary Python (threads, fork, exec, AF_UNIX sockets) keeps working under it."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import socket
import subprocess
import threading

import pytest

from services.sandbox.child import libc, seccomp

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"),
                                reason="no syscall table for this machine")


def in_filtered_child(probe) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """Run `probe()` in a forked child under the filter; return what it returned."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            seccomp.install()
            os.write(write, json.dumps(probe()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    return json.loads(data)  # type: ignore[no-any-return]


def errno_of(call) -> int:  # type: ignore[no-untyped-def]
    try:
        call()
    except OSError as exc:
        return exc.errno or -1
    return 0


def test_dangerous_calls_are_refused_with_eperm() -> None:
    def probe() -> dict:  # type: ignore[type-arg]
        c = ctypes.CDLL(None, use_errno=True)

        def raw(result: int) -> int:
            return ctypes.get_errno() if result == -1 else 0

        return {
            "inet": errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
            "inet6": errno_of(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)),
            "netlink": errno_of(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),
            "packet": errno_of(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
            "ptrace": raw(c.ptrace(0, 0, 0, 0)),
            "unshare": errno_of(lambda: libc.unshare(libc.CLONE_NEWNET)),
            "user_ns_clone": errno_of(lambda: libc.unshare(libc.CLONE_NEWUSER)),
            # Harmless even unfiltered: no such target (ENOENT without the filter).
            "mount": errno_of(lambda: libc.mount("tmpfs", "/nonexistent-iceos", "tmpfs", 0)),
            "setsid": errno_of(os.setsid),
            "setpgid": errno_of(lambda: os.setpgid(0, 0)),
            "chroot": errno_of(lambda: os.chroot("/")),
            "keyctl": raw(c.syscall(250 if platform.machine() == "x86_64" else 219, 0, 0)),
            "bpf": raw(c.syscall(321 if platform.machine() == "x86_64" else 280, 0, 0, 0)),
            "shmget": raw(c.shmget(0, 4096, 0o1600)),  # IPC_PRIVATE | IPC_CREAT | 0600
            "msgget": raw(c.msgget(0, 0o1600)),
        }

    found = in_filtered_child(probe)
    assert found == dict.fromkeys(found, 1), found  # every one EPERM


def test_ordinary_python_still_works_under_the_filter() -> None:
    def probe() -> dict:  # type: ignore[type-arg]
        seen = []
        thread = threading.Thread(target=lambda: seen.append("thread"))
        thread.start()
        thread.join()
        child = os.fork()
        if child == 0:
            os._exit(7)
        left, right = socket.socketpair()
        left.sendall(b"ping")
        unix = socket.socket(socket.AF_UNIX)
        unix.close()
        return {"thread": seen, "fork": os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]),
                "socketpair": right.recv(4).decode(),
                "exec": subprocess.run(["echo", "ok"], capture_output=True,
                                       text=True).stdout.strip()}

    assert in_filtered_child(probe) == {"thread": ["thread"], "fork": 7, "socketpair": "ping",
                                        "exec": "ok"}


def test_an_unknown_machine_is_refused_not_unfiltered() -> None:
    with pytest.raises(seccomp.Unsupported):
        seccomp.build("riscv64")
