"""Unprivileged uids for sandboxed children, one per zygote, reserved machine-wide.

Each zygote's children run as a uid no other process uses, so RLIMIT_NPROC counts exactly one
execution's processes, `kill(-1)` from that uid reaps exactly them, and two executions cannot
signal, trace or read each other. Several sandbox services may share a machine (tests run
many): each reserves a block of uids by holding an flock on the block's lock file for its
lifetime; a crashed service's block frees itself.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from dataclasses import dataclass

from services.common import errors

UID_BASE = 200_000
BLOCK_SIZE = 64
BLOCKS = 4096


@dataclass
class UidBlock:
    first: int
    size: int
    _lock_fd: int

    def uid(self, slot: int) -> int:
        if not 0 <= slot < self.size:
            raise ValueError(f"slot {slot} outside the uid block")
        return self.first + slot if self._lock_fd >= 0 else self.first

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def reserve(slots: int, lock_dir: str | None = None) -> UidBlock:
    """A block of `slots` uids. Without root the children keep the service's uid (the zygote
    cannot change it), so nothing is reserved."""
    if os.geteuid() != 0:
        return UidBlock(os.getuid(), slots, -1)
    if slots > BLOCK_SIZE:
        raise ValueError(f"at most {BLOCK_SIZE} zygotes per service")
    directory = lock_dir or os.path.join(tempfile.gettempdir(), "iceos-sandbox-uids")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for index in range(BLOCKS):
        fd = os.open(os.path.join(directory, f"{index}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return UidBlock(UID_BASE + index * BLOCK_SIZE, slots, fd)
    raise errors.Unavailable("no free sandbox uid block: too many sandbox services running")
