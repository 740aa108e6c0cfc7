"""Classic seccomp BPF for the sandboxed command, assembled in pure Python.

Sans-I/O: this module only turns a policy into bytes (an array of
``struct sock_filter``). ``bwrap --seccomp FD`` loads those bytes itself on
the fast path; the in-sandbox init (``_init.py``) loads the same bytes with
``prctl`` when the egress bridge must keep ``AF_UNIX`` for itself. Building
the program here, rather than shipping a compiled helper or depending on
libseccomp, keeps the filter reviewable and unit-testable on any host.

What the filter refuses, and why:

* any syscall entered through a foreign ABI (``int 0x80`` i386 entry on
  x86-64, AArch32 on arm64) and every x32 syscall number: the per-arch
  number tables differ, so a deny list is only meaningful for the native ABI;
* ``socket``/``socketpair`` with ``AF_UNIX``: host daemons listen on unix
  sockets (a read-only bind of ``/`` still lets a process ``connect`` to them);
* io_uring (``IORING_OP_SOCKET`` etc. would bypass the rules above), ptrace
  and cross-process memory access, every mount API, keyrings, bpf,
  perf_event_open, userfaultfd, namespace creation/entry (``unshare``,
  ``setns``, ``clone`` with ``CLONE_NEW*``; ``clone3`` answers ``ENOSYS`` so
  libc falls back to ``clone`` whose flags the filter can read), module and
  kexec loading, and a handful of host-administration calls;
* ``ioctl(TIOCSTI/TIOCLINUX)``: pushing keystrokes into a terminal the
  command inherited.

Everything else is allowed; denials answer ``EPERM`` so programs that probe
(io_uring, user namespaces) fall back instead of dying.
"""

from __future__ import annotations

import errno
import os
import struct

from inwall.sandbox._frozen import Frozen

__all__ = [
    "ARCHES",
    "Arch",
    "Insn",
    "build_filter",
    "decode",
    "host_arch",
    "simulate",
]

# struct sock_filter opcodes (linux/bpf_common.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# struct seccomp_data offsets (little-endian: the low word of args[i] comes first)
_OFF_NR = 0
_OFF_ARCH = 4


def _off_arg_lo(i: int) -> int:
    return 16 + 8 * i


_X32_SYSCALL_BIT = 0x40000000
_AF_UNIX = 1
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C
# CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET (CLONE_NEWTIME shares
# the exit-signal byte in clone(2), so it can only be asked for via clone3/unshare)
_CLONE_NEW_MASK = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

# Names refused outright (EPERM), in every arch table below.
DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "unshare",
    "setns",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "quotactl_fd",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "syslog",
    "vhangup",
    "nfsservctl",
    "clock_settime",
    "settimeofday",
    "adjtimex",
    "clock_adjtime",
    "fanotify_init",
)


class Arch(Frozen):
    """One native ABI: its audit arch value and the syscall numbers the filter needs."""

    __slots__ = ("audit_arch", "has_x32", "name", "numbers")
    name: str
    audit_arch: int
    numbers: dict[str, int]
    has_x32: bool

    def __init__(self, name: str, audit_arch: int, numbers: dict[str, int], *, has_x32: bool) -> None:
        self._init(name=name, audit_arch=audit_arch, numbers=numbers, has_x32=has_x32)


_X86_64 = {
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "pidfd_getfd": 438,
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "move_mount": 429,
    "open_tree": 428,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "bpf": 321,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "unshare": 272,
    "setns": 308,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "acct": 163,
    "quotactl": 179,
    "quotactl_fd": 443,
    "open_by_handle_at": 304,
    "name_to_handle_at": 303,
    "lookup_dcookie": 212,
    "syslog": 103,
    "vhangup": 153,
    "nfsservctl": 180,
    "clock_settime": 227,
    "settimeofday": 164,
    "adjtimex": 159,
    "clock_adjtime": 305,
    "fanotify_init": 300,
    # argument-checked
    "socket": 41,
    "socketpair": 53,
    "clone": 56,
    "clone3": 435,
    "ioctl": 16,
    # x86-only extras refused outright
    "iopl": 172,
    "ioperm": 173,
    "modify_ldt": 154,
    "uselib": 134,
    "ustat": 136,
    "sysfs": 139,
    "_sysctl": 156,
    "create_module": 174,
    "get_kernel_syms": 177,
    "query_module": 178,
}

_AARCH64 = {
    "ptrace": 117,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "pidfd_getfd": 438,
    "mount": 40,
    "umount2": 39,
    "pivot_root": 41,
    "move_mount": 429,
    "open_tree": 428,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "keyctl": 219,
    "add_key": 217,
    "request_key": 218,
    "bpf": 280,
    "perf_event_open": 241,
    "userfaultfd": 282,
    "unshare": 97,
    "setns": 268,
    "kexec_load": 104,
    "kexec_file_load": 294,
    "init_module": 105,
    "finit_module": 273,
    "delete_module": 106,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "swapon": 224,
    "swapoff": 225,
    "reboot": 142,
    "acct": 89,
    "quotactl": 60,
    "quotactl_fd": 443,
    "open_by_handle_at": 265,
    "name_to_handle_at": 264,
    "lookup_dcookie": 18,
    "syslog": 116,
    "vhangup": 58,
    "nfsservctl": 42,
    "clock_settime": 112,
    "settimeofday": 170,
    "adjtimex": 171,
    "clock_adjtime": 266,
    "fanotify_init": 262,
    "socket": 198,
    "socketpair": 199,
    "clone": 220,
    "clone3": 435,
    "ioctl": 29,
}

_X86_ONLY: tuple[str, ...] = ("iopl", "ioperm", "modify_ldt", "uselib", "ustat", "sysfs", "_sysctl")
_X86_ONLY += ("create_module", "get_kernel_syms", "query_module")

ARCHES: dict[str, Arch] = {
    "x86_64": Arch("x86_64", 0xC000003E, _X86_64, has_x32=True),
    "aarch64": Arch("aarch64", 0xC00000B7, _AARCH64, has_x32=False),
}


def host_arch() -> Arch | None:
    """The filter's description of this machine, or None when inwall has no table for it."""
    machine = os.uname().machine.lower()
    return ARCHES.get({"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine))


class Insn(Frozen):
    """One decoded ``struct sock_filter``."""

    __slots__ = ("code", "jf", "jt", "k")
    code: int
    jt: int
    jf: int
    k: int

    def __init__(self, code: int, jt: int, jf: int, k: int) -> None:
        self._init(code=code, jt=jt, jf=jf, k=k)


# A symbolic instruction: jumps name labels; resolved to relative offsets below.
_Sym = tuple[int, str | None, str | None, int]


def _errno(code: int) -> int:
    return SECCOMP_RET_ERRNO | (code & 0xFFFF)


def build_filter(arch: Arch, *, foreign_abi_action: int | None = None) -> bytes:
    """Assemble the filter for ``arch`` and return the raw ``sock_filter`` array.

    ``foreign_abi_action`` is the return value for syscalls entered through
    another ABI (default ``ERRNO(EPERM)``).
    """
    deny_action = _errno(errno.EPERM)
    foreign = deny_action if foreign_abi_action is None else foreign_abi_action
    n = arch.numbers
    prog: list[tuple[str | None, _Sym]] = []

    def emit(
        code: int, k: int = 0, jt: str | None = None, jf: str | None = None, label: str | None = None
    ) -> None:
        prog.append((label, (code, jt, jf, k)))

    emit(_LD_W_ABS, _OFF_ARCH)
    emit(_JEQ_K, arch.audit_arch, jf="foreign")
    emit(_LD_W_ABS, _OFF_NR)
    if arch.has_x32:
        emit(_JGE_K, _X32_SYSCALL_BIT, jt="deny")
    refused = [*DENIED, *(_X86_ONLY if arch.name == "x86_64" else ())]
    for name in sorted(set(refused), key=lambda s: n[s]):
        emit(_JEQ_K, n[name], jt="deny")
    emit(_JEQ_K, n["socket"], jt="sock")
    emit(_JEQ_K, n["socketpair"], jt="sock")
    emit(_JEQ_K, n["clone"], jt="clone")
    emit(_JEQ_K, n["clone3"], jt="enosys")
    emit(_JEQ_K, n["ioctl"], jt="ioctl")
    emit(_RET_K, SECCOMP_RET_ALLOW)
    emit(_LD_W_ABS, _off_arg_lo(0), label="sock")
    emit(_JEQ_K, _AF_UNIX, jt="deny")
    emit(_RET_K, SECCOMP_RET_ALLOW)
    emit(_LD_W_ABS, _off_arg_lo(0), label="clone")
    emit(_JSET_K, _CLONE_NEW_MASK, jt="deny")
    emit(_RET_K, SECCOMP_RET_ALLOW)
    emit(_LD_W_ABS, _off_arg_lo(1), label="ioctl")
    emit(_JEQ_K, _TIOCSTI, jt="deny")
    emit(_JEQ_K, _TIOCLINUX, jt="deny")
    emit(_RET_K, SECCOMP_RET_ALLOW)
    emit(_RET_K, deny_action, label="deny")
    emit(_RET_K, _errno(errno.ENOSYS), label="enosys")
    emit(_RET_K, foreign, label="foreign")

    labels = {label: i for i, (label, _) in enumerate(prog) if label}
    out = bytearray()
    for i, (_, (code, jt, jf, k)) in enumerate(prog):
        t = labels[jt] - i - 1 if jt else 0
        f = labels[jf] - i - 1 if jf else 0
        if not (0 <= t <= 255 and 0 <= f <= 255):  # pragma: no cover - the program is far shorter
            raise ValueError("seccomp program too long for 8-bit jump offsets")
        out += struct.pack("=HBBI", code, t, f, k)
    return bytes(out)


def decode(prog: bytes) -> list[Insn]:
    """Split raw filter bytes back into instructions (for tests and debugging)."""
    return [Insn(*struct.unpack_from("=HBBI", prog, off)) for off in range(0, len(prog), 8)]


def simulate(prog: bytes, *, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """Run the filter on one syscall in a tiny classic-BPF interpreter; returns the action.

    Only the instructions :func:`build_filter` emits are implemented, which is
    what lets tests check behaviour (not bytes) without loading the filter.
    """
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    insns = decode(prog)
    acc = 0
    pc = 0
    for _ in range(len(insns) + 1):
        ins = insns[pc]
        if ins.code == _LD_W_ABS:
            (acc,) = struct.unpack_from("=I", data, ins.k)
            pc += 1
        elif ins.code in (_JEQ_K, _JGE_K, _JSET_K):
            if ins.code == _JEQ_K:
                taken = acc == ins.k
            elif ins.code == _JGE_K:
                taken = acc >= ins.k
            else:
                taken = bool(acc & ins.k)
            pc += 1 + (ins.jt if taken else ins.jf)
        elif ins.code == _RET_K:
            return ins.k
        else:  # pragma: no cover - build_filter emits nothing else
            raise ValueError(f"unsupported BPF opcode {ins.code:#x}")
    raise ValueError("BPF program did not return")  # pragma: no cover
