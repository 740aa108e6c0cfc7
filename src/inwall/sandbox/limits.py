"""Resource limits: rlimits applied inside the namespaces, cgroup v2 where delegated.

Why rlimits are set *inside* the sandbox (``prlimit`` wraps the command, or
the init sets them before ``exec``) and not on bwrap: since Linux 5.14
``RLIMIT_NPROC`` is counted per (user namespace, uid), and the limit in force
when a user namespace is created caps the count one level up. Set on bwrap,
``pids`` would count every process the host uid runs (all sandboxes of uid
65534 together); set inside, each sandbox gets its own count and the host
level stays unlimited.

What each limit really enforces on a host without cgroup v2 (documented in
the report too):

* ``memory_mb`` -> ``RLIMIT_AS`` per process (address space, not RSS);
  with ``pids`` it bounds the total. With cgroup v2: ``memory.max`` for the
  whole sandbox, swap off.
* ``pids`` -> ``RLIMIT_NPROC`` per sandbox (above) or ``pids.max``.
* ``cpu_s`` -> ``RLIMIT_CPU`` (SIGXCPU, then SIGKILL one second later).
* ``open_files`` -> ``RLIMIT_NOFILE``.
* ``disk_mb`` -> ``RLIMIT_FSIZE`` (no single file larger; SIGXFSZ), the
  private ``/tmp`` tmpfs is size-capped, and the workspace is measured after
  each command (and periodically during ``run``) and reported/killed when
  over. A quota-capable filesystem per workspace is the real answer; this is
  the best a plain directory allows.
* ``timeout_s`` and ``output_bytes`` are enforced by the runner.
"""

from __future__ import annotations

import os

from inwall.sandbox.policy import MIB

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from inwall.sandbox.policy import Limits

__all__ = [
    "Cgroup",
    "dir_usage_bytes",
    "prlimit_argv",
    "rlimit_table",
]


def rlimit_table(limits: Limits) -> list[tuple[str, int, int]]:
    """(name, soft, hard) for every limit that maps to an rlimit; names as ``prlimit`` spells them."""
    out: list[tuple[str, int, int]] = [("core", 0, 0)]
    if limits.pids is not None:
        out.append(("nproc", limits.pids, limits.pids))
    if limits.open_files is not None:
        out.append(("nofile", limits.open_files, limits.open_files))
    if limits.memory_mb is not None:
        b = limits.memory_mb * MIB
        out.append(("as", b, b))
    if limits.cpu_s is not None:
        out.append(("cpu", limits.cpu_s, limits.cpu_s + 1))
    if limits.disk_mb is not None:
        b = limits.disk_mb * MIB
        out.append(("fsize", b, b))
    return out


def prlimit_argv(prlimit: str, limits: Limits) -> list[str]:
    """The ``prlimit ... --`` prefix that applies ``limits`` to the command it execs."""
    return [prlimit, *(f"--{name}={soft}:{hard}" for name, soft, hard in rlimit_table(limits)), "--"]


def dir_usage_bytes(path: str | os.PathLike[str], *, max_entries: int = 200_000) -> int:
    """Allocated bytes under ``path`` (st_blocks), not following symlinks; bounded walk."""
    total = 0
    budget = max_entries
    stack = [os.fspath(path)]
    while stack and budget > 0:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                budget -= 1
                if budget <= 0:
                    break
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return total


class Cgroup:
    """One child cgroup (v2) per sandbox: memory.max, swap off, pids.max; removed on close."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls, parent: str, name: str, limits: Limits) -> Cgroup:
        p = os.path.join(parent, name)
        os.mkdir(p, 0o755)
        cg = cls(p)
        if limits.memory_mb is not None:
            cg._write("memory.max", str(limits.memory_mb * MIB))
            cg._write("memory.swap.max", "0", optional=True)
        if limits.pids is not None:
            cg._write("pids.max", str(limits.pids))
        return cg

    def _write(self, name: str, value: str, *, optional: bool = False) -> None:
        try:
            with open(os.path.join(self.path, name), "w") as f:
                f.write(value)
        except OSError:
            if not optional:
                raise

    def attach(self, pid: int) -> None:
        self._write("cgroup.procs", str(pid))

    def events(self) -> dict[str, int]:
        """Counters from memory.events and pids.events (``oom_kill``, ``max`` ...)."""
        out: dict[str, int] = {}
        for fname, prefix in (("memory.events", "memory."), ("pids.events", "pids.")):
            try:
                with open(os.path.join(self.path, fname)) as f:
                    text = f.read()
            except OSError:
                continue
            for line in text.splitlines():
                k, _, v = line.partition(" ")
                if v.strip().isdigit():
                    out[prefix + k] = int(v)
        return out

    def pids(self) -> Iterator[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                text = f.read()
        except OSError:
            return
        for line in text.split():
            if line.isdigit():
                yield int(line)

    def kill_all(self) -> None:
        """cgroup.kill where the kernel has it (5.14+); the runner also kills bwrap."""
        self._write("cgroup.kill", "1", optional=True)

    def remove(self) -> None:
        try:
            os.rmdir(self.path)
        except OSError:
            return
