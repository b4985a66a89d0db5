"""The sandbox's seccomp filter: classic BPF built here and installed with prctl, so no
libseccomp is needed. Installed by each forked child just before it runs user code.

What it refuses (EPERM unless noted): debugging other processes (ptrace, process_vm_*),
mounts and root changes, kernel modules, kexec, bpf, perf_event_open, userfaultfd, the kernel
keyring, namespace changes (setns, unshare, clone with CLONE_NEW* flags), reboot and swap,
clock and host-name changes, io_uring (it can bypass the socket rule), leaving the process group
(setsid, setpgid: the wall-clock kill targets the group), System V IPC and POSIX message queues
(they would outlive the execution), and every socket family except
AF_UNIX (no network even where no network namespace could be made). clone3 answers ENOSYS so
libc falls back to clone, whose flags a classic filter can inspect. A foreign architecture
(e.g. 32-bit syscalls on x86_64) kills the process.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

from . import libc

SECCOMP_MODE_FILTER = 2
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARG0 = 16  # low 32 bits on little-endian machines

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

AF_UNIX = 1
X32_SYSCALL_BIT = 0x40000000
NAMESPACE_FLAGS = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
                   | 0x40000000 | 0x00000080)  # CLONE_NEWNS … CLONE_NEWNET, CLONE_NEWTIME

_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# name: (x86_64, aarch64); None where the call does not exist on that machine.
# From asm/unistd_64.h and asm-generic/unistd.h.
DENIED: dict[str, tuple[int | None, int | None]] = {
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "process_madvise": (440, 440), "pidfd_getfd": (438, 438), "kcmp": (312, 272),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "mount_setattr": (442, 442), "move_mount": (429, 429), "open_tree": (428, 428),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "keyctl": (250, 219),
    "add_key": (248, 217), "request_key": (249, 218), "setns": (308, 268),
    "unshare": (272, 97), "reboot": (169, 142), "swapon": (167, 224), "swapoff": (168, 225),
    "acct": (163, 89), "quotactl": (179, 60), "quotactl_fd": (443, 443),
    "lookup_dcookie": (212, 18), "syslog": (103, 116), "vhangup": (153, 58),
    "iopl": (172, None), "ioperm": (173, None), "settimeofday": (164, 170),
    "clock_settime": (227, 112), "clock_adjtime": (305, 266), "adjtimex": (159, 171),
    "sethostname": (170, 161), "setdomainname": (171, 162), "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264), "fanotify_init": (300, 262),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "nfsservctl": (180, 42), "uselib": (134, None),
    "_sysctl": (156, None), "setsid": (112, 157), "setpgid": (109, 154),
    # System V IPC objects and POSIX message queues outlive their creator in the zygote's IPC
    # namespace: one execution could leave data there for the next.
    "shmget": (29, 194), "shmat": (30, 196), "shmctl": (31, 195), "shmdt": (67, 197),
    "semget": (64, 190), "semop": (65, 193), "semctl": (66, 191), "semtimedop": (220, 192),
    "msgget": (68, 186), "msgsnd": (69, 189), "msgrcv": (70, 188), "msgctl": (71, 187),
    "mq_open": (240, 180), "mq_unlink": (241, 181), "mq_timedsend": (242, 182),
    "mq_timedreceive": (243, 183), "mq_notify": (244, 184), "mq_getsetattr": (245, 185),
}
_SOCKET = (41, 198)
_CLONE = (56, 220)
_CLONE3 = (435, 435)


class Unsupported(RuntimeError):
    """The machine has no syscall table here; the sandbox refuses to run unfiltered."""


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def build(machine: str | None = None) -> bytes:
    """The filter program for `machine` (default: this one) as packed sock_filter entries."""
    machine = machine or platform.machine()
    if machine not in _ARCH:
        raise Unsupported(f"no seccomp syscall table for {machine}")
    column = 0 if machine == "x86_64" else 1
    deny_perm = RET_ERRNO | errno.EPERM
    prog = [
        _insn(_LD_W_ABS, _OFFSET_ARCH),
        _insn(_JEQ_K, _ARCH[machine], jt=1, jf=0),
        _insn(_RET_K, RET_KILL_PROCESS),
        _insn(_LD_W_ABS, _OFFSET_NR),
    ]
    if machine == "x86_64":
        prog += [_insn(_JGE_K, X32_SYSCALL_BIT, jt=0, jf=1), _insn(_RET_K, deny_perm)]
    for numbers in DENIED.values():
        number = numbers[column]
        if number is not None:
            prog += [_insn(_JEQ_K, number, jt=0, jf=1), _insn(_RET_K, deny_perm)]
    prog += [_insn(_JEQ_K, _CLONE3[column], jt=0, jf=1),
             _insn(_RET_K, RET_ERRNO | errno.ENOSYS)]
    # socket(family, …): AF_UNIX only. Each branch returns: the accumulator now holds an arg.
    prog += [_insn(_JEQ_K, _SOCKET[column], jt=0, jf=4),
             _insn(_LD_W_ABS, _OFFSET_ARG0),
             _insn(_JEQ_K, AF_UNIX, jt=0, jf=1),
             _insn(_RET_K, RET_ALLOW),
             _insn(_RET_K, deny_perm)]
    # clone(flags, …): no new namespaces.
    prog += [_insn(_JEQ_K, _CLONE[column], jt=0, jf=4),
             _insn(_LD_W_ABS, _OFFSET_ARG0),
             _insn(_JSET_K, NAMESPACE_FLAGS, jt=0, jf=1),
             _insn(_RET_K, deny_perm),
             _insn(_RET_K, RET_ALLOW)]
    prog.append(_insn(_RET_K, RET_ALLOW))
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Prepared:
    """A filter laid out in memory, ready for prctl. The zygote prepares it once, so each forked
    child only makes the two prctl calls (building ctypes objects in a fresh fork costs more
    than the kernel's work)."""

    def __init__(self, program: bytes | None = None) -> None:
        program = program if program is not None else build()
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // 8, ctypes.addressof(self._buffer))
        self.address = ctypes.addressof(self._fprog)

    def install(self) -> None:
        """Install on the calling thread (and its future children). Irreversible."""
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        libc.prctl(libc.PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self.address)


def install(program: bytes | None = None) -> None:
    """Build and install the filter on the calling thread. Irreversible."""
    Prepared(program).install()
