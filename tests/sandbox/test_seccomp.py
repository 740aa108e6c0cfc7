"""The BPF program, checked by behaviour in a tiny interpreter and against kernel headers."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from inwall.sandbox import seccomp
from inwall.sandbox.seccomp import (
    ARCHES,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    build_filter,
    decode,
    simulate,
)

EPERM = SECCOMP_RET_ERRNO | errno.EPERM
X86 = ARCHES["x86_64"]
ARM = ARCHES["aarch64"]


@pytest.mark.parametrize("arch", [X86, ARM], ids=lambda a: a.name)
def test_denied_syscalls_answer_eperm(arch: seccomp.Arch) -> None:
    prog = build_filter(arch)
    for name in seccomp.DENIED:
        assert simulate(prog, nr=arch.numbers[name], arch=arch.audit_arch) == EPERM, name


@pytest.mark.parametrize("arch", [X86, ARM], ids=lambda a: a.name)
def test_ordinary_syscalls_allowed(arch: seccomp.Arch) -> None:
    prog = build_filter(arch)
    for nr in (0, 1, 2, 3):  # read/write/open/close on x86; io_setup.. on arm: all harmless
        if nr in arch.numbers.values():
            continue
        assert simulate(prog, nr=nr, arch=arch.audit_arch) == SECCOMP_RET_ALLOW


@pytest.mark.parametrize("arch", [X86, ARM], ids=lambda a: a.name)
def test_socket_family_checked(arch: seccomp.Arch) -> None:
    prog = build_filter(arch)
    for call in ("socket", "socketpair"):
        nr = arch.numbers[call]
        assert simulate(prog, nr=nr, arch=arch.audit_arch, args=(1, 1, 0)) == EPERM  # AF_UNIX
        assert simulate(prog, nr=nr, arch=arch.audit_arch, args=(2, 1, 0)) == SECCOMP_RET_ALLOW  # AF_INET
        assert simulate(prog, nr=nr, arch=arch.audit_arch, args=(10, 1, 0)) == SECCOMP_RET_ALLOW  # AF_INET6


@pytest.mark.parametrize("arch", [X86, ARM], ids=lambda a: a.name)
def test_clone_namespace_flags_and_clone3(arch: seccomp.Arch) -> None:
    prog = build_filter(arch)
    clone = arch.numbers["clone"]
    fork_flags = 0x01200011  # CLONE_CHILD_SETTID|CLONE_CHILD_CLEARTID|SIGCHLD (glibc fork)
    thread_flags = 0x003D0F00
    assert simulate(prog, nr=clone, arch=arch.audit_arch, args=(fork_flags,)) == SECCOMP_RET_ALLOW
    assert simulate(prog, nr=clone, arch=arch.audit_arch, args=(thread_flags,)) == SECCOMP_RET_ALLOW
    for flag in (0x00020000, 0x10000000, 0x20000000, 0x40000000, 0x08000000, 0x04000000, 0x02000000):
        assert simulate(prog, nr=clone, arch=arch.audit_arch, args=(fork_flags | flag,)) == EPERM
    assert simulate(prog, nr=arch.numbers["clone3"], arch=arch.audit_arch) == SECCOMP_RET_ERRNO | errno.ENOSYS


def test_tiocsti_refused() -> None:
    prog = build_filter(X86)
    ioctl = X86.numbers["ioctl"]
    assert simulate(prog, nr=ioctl, arch=X86.audit_arch, args=(0, 0x5412)) == EPERM
    assert simulate(prog, nr=ioctl, arch=X86.audit_arch, args=(0, 0x5401)) == SECCOMP_RET_ALLOW  # TCGETS


def test_foreign_abi_and_x32_refused() -> None:
    prog = build_filter(X86)
    i386 = 0x40000003
    assert simulate(prog, nr=20, arch=i386) == EPERM  # getpid via int 0x80
    assert simulate(prog, nr=39 | 0x40000000, arch=X86.audit_arch) == EPERM  # x32 getpid
    assert simulate(prog, nr=39, arch=X86.audit_arch) == SECCOMP_RET_ALLOW  # native getpid
    arm = build_filter(ARM)
    assert simulate(arm, nr=20, arch=0x40000028) == EPERM  # AArch32


def test_foreign_abi_action_configurable() -> None:
    prog = build_filter(X86, foreign_abi_action=seccomp.SECCOMP_RET_KILL_PROCESS)
    assert simulate(prog, nr=20, arch=0x40000003) == seccomp.SECCOMP_RET_KILL_PROCESS


def test_program_shape() -> None:
    prog = build_filter(X86)
    assert len(prog) % 8 == 0
    insns = decode(prog)
    assert insns[0].code == 0x20 and insns[0].k == 4  # first thing: load arch
    assert all(i.code == 0x06 for i in insns[-3:])  # ends in return blocks


@pytest.mark.parametrize(
    ("arch", "header"),
    [
        (X86, "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        (ARM, "/usr/include/asm-generic/unistd.h"),
    ],
    ids=["x86_64", "aarch64"],
)
def test_numbers_match_kernel_headers(arch: seccomp.Arch, header: str) -> None:
    path = Path(header)
    if not path.exists():
        pytest.skip(f"{header} not installed")
    text = path.read_text()
    table = {m[1]: int(m[2]) for m in re.finditer(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", text)}
    checked = 0
    for name, nr in arch.numbers.items():
        if name in table:
            assert table[name] == nr, name
            checked += 1
    assert checked >= 40
