"""Zygote-level isolation, set up once when a zygote starts so forking stays cheap.

As root the zygote enters new mount, network, IPC and UTS namespaces and pivots into a small
root: a tmpfs holding read-only binds of the system directories and the Python installation, a
few device nodes, a sized tmpfs /tmp for the executions' working directories, and nothing else —
no /proc, no /home, no repository, no service data. Every child it forks inherits an empty
network namespace (loopback down) and that view of the filesystem, then drops to the zygote's
own unprivileged uid.

Without root it tries a user + network namespace (no network); the filesystem stays the host's,
and the uid cannot change. What was achieved is reported to the service, which logs it.
"""

from __future__ import annotations

import os

from . import libc

# Top-level directories bound read-only when they are directories (replicated when symlinks,
# as on merged-/usr systems).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
DEVICES = ("null", "zero", "full", "random", "urandom")
RO = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_RDONLY


def _bind_ro(source: str, target: str) -> None:
    libc.mount(source, target, None, libc.MS_BIND | libc.MS_REC)
    libc.mount(None, target, None, libc.MS_REMOUNT | libc.MS_BIND | RO)


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)


def unshare_namespaces() -> bool:
    """New mount, network, IPC and UTS namespaces; False where not permitted (e.g. a container
    without CAP_SYS_ADMIN), in which case nothing changed."""
    try:
        libc.unshare(libc.CLONE_NEWNS | libc.CLONE_NEWNET | libc.CLONE_NEWIPC
                     | libc.CLONE_NEWUTS)
    except OSError:
        return False
    return True


def build_root(extra_ro: list[str], scratch_bytes: int, uid: int, gid: int) -> None:
    """Pivot into the minimal root described above. Runs as root, single-threaded, after
    unshare_namespaces()."""
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    # The new root is mounted over /tmp: only this namespace sees it.
    root = "/tmp"
    libc.mount("tmpfs", root, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "size=4m,mode=0755")
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            os.mkdir(root + path, 0o755)
            _bind_ro(path, root + path)
    for path in extra_ro:
        path = os.path.realpath(path)
        if not os.path.isdir(path) or _under(path, SYSTEM_DIRS):
            continue
        os.makedirs(root + path, 0o755, exist_ok=True)
        _bind_ro(path, root + path)
    os.mkdir(root + "/dev", 0o755)
    for name in DEVICES:
        with open(f"{root}/dev/{name}", "w"):
            pass
        libc.mount(f"/dev/{name}", f"{root}/dev/{name}", None, libc.MS_BIND)
    os.mkdir(root + "/etc", 0o755)
    with open(root + "/etc/passwd", "w") as f:
        f.write(f"root:x:0:0:root:/:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}::/tmp:"
                "/usr/sbin/nologin\n")
    with open(root + "/etc/group", "w") as f:
        f.write(f"root:x:0:\nsandbox:x:{gid}:\n")
    os.mkdir(root + "/tmp", 0o711)
    libc.mount("tmpfs", root + "/tmp", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
               f"size={scratch_bytes},mode=0711")

    old_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    new_root = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fchdir(new_root)
        libc.pivot_root(".", ".")
        os.fchdir(old_root)
        libc.mount(None, ".", None, libc.MS_SLAVE | libc.MS_REC)
        libc.umount2(".", libc.MNT_DETACH)
    finally:
        os.close(old_root)
        os.close(new_root)
    os.chdir("/")
    libc.mount("tmpfs", "/", "tmpfs", libc.MS_REMOUNT | RO)


def enter_user_netns() -> bool:
    """Unprivileged fallback: a user namespace mapping our own uid, with an empty network
    namespace. False when the kernel does not allow it."""
    uid, gid = os.getuid(), os.getgid()
    try:
        libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWNET)
    except OSError:
        return False
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")
    return True


def kill_uid(uid: int) -> None:
    """SIGKILL every process running as `uid` (a fork bomb's members included) from a helper
    that takes that uid: kill(-1) reaches exactly the processes that uid may signal."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            # kill(-1) holds the task list while it signals, so no member forks past it; a
            # second pass is belt and braces.
            for _ in range(2):
                try:
                    os.kill(-1, 9)
                except ProcessLookupError:
                    break
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
