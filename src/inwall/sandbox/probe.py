"""Can this host sandbox? Find out once, and say exactly what to install or enable.

The cheap checks (files and sysctls) run on every ``inwall sandbox exec``;
the deep check (start one real bubblewrap) runs when a sandbox fails to start,
in tests and in ``check_host(deep=True)``, so the common path pays nothing and
a failure still gets a precise diagnosis. There is never an unsandboxed
fallback: an unusable host raises :class:`~inwall.errors.SandboxUnavailable`.
"""

from __future__ import annotations

import os

from inwall.errors import SandboxUnavailable
from inwall.sandbox._frozen import Frozen

__all__ = ["HostReport", "check_host", "find_executable", "reset_cache"]

_SBIN_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def find_executable(name: str, extra: tuple[str, ...] = _SBIN_PATH) -> str | None:
    """``shutil.which`` without importing shutil (start-up time)."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d] + list(extra)
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


class Cgroup2(Frozen):
    """A delegated cgroup v2 directory where inwall may create one child per sandbox."""

    __slots__ = ("controllers", "path")
    path: str
    controllers: frozenset[str]

    def __init__(self, path: str, controllers: frozenset[str]) -> None:
        self._init(path=path, controllers=controllers)


class HostReport(Frozen):
    """What :func:`check_host` found; ``problems`` carry the remedy in their text."""

    __slots__ = ("arch", "bwrap", "cgroup2", "euid", "notes", "prlimit", "problems")
    bwrap: str | None
    prlimit: str | None
    arch: str | None
    euid: int
    cgroup2: Cgroup2 | None
    problems: tuple[str, ...]
    notes: tuple[str, ...]

    def __init__(
        self,
        *,
        bwrap: str | None,
        prlimit: str | None,
        arch: str | None,
        euid: int,
        cgroup2: Cgroup2 | None,
        problems: tuple[str, ...] = (),
        notes: tuple[str, ...] = (),
    ) -> None:
        self._init(
            bwrap=bwrap,
            prlimit=prlimit,
            arch=arch,
            euid=euid,
            cgroup2=cgroup2,
            problems=problems,
            notes=notes,
        )

    @property
    def ok(self) -> bool:
        return not self.problems

    def require(self) -> None:
        """Raise ``SandboxUnavailable`` listing every problem with its remedy."""
        if self.problems:
            raise SandboxUnavailable("cannot sandbox on this host:\n  - " + "\n  - ".join(self.problems))


def _userns_problems() -> list[str]:
    out: list[str] = []
    max_ns = _read("/proc/sys/user/max_user_namespaces")
    if max_ns is not None and max_ns.isdigit() and int(max_ns) == 0:
        out.append("user namespaces are disabled: run `sysctl -w user.max_user_namespaces=15000`")
    clone = _read("/proc/sys/kernel/unprivileged_userns_clone")
    if clone == "0":
        out.append(
            "unprivileged user namespaces are disabled: run `sysctl -w kernel.unprivileged_userns_clone=1` "
            "(persist it in /etc/sysctl.d/)"
        )
    apparmor = _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    if apparmor == "1":
        out.append(
            "AppArmor restricts unprivileged user namespaces (Ubuntu 24.04+): run "
            "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or install an AppArmor profile "
            "granting `userns` to /usr/bin/bwrap"
        )
    return out


def _find_cgroup2() -> Cgroup2 | None:
    """The v2 cgroup of this process, if it is writable and delegates memory and pids to children."""
    mounts = _read("/proc/self/mounts") or ""
    roots = [line.split()[1] for line in mounts.splitlines() if line.split()[2:3] == ["cgroup2"]]
    rel = None
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        if line.startswith("0::"):
            rel = line[3:]
    if not roots or rel is None:
        return None
    for root in roots:
        d = os.path.normpath(root + "/" + rel)
        enabled = frozenset((_read(os.path.join(d, "cgroup.subtree_control")) or "").split())
        if {"memory", "pids"} <= enabled and os.access(d, os.W_OK):
            return Cgroup2(d, enabled)
    return None


def _deep_problems(bwrap: str, run_as: tuple[int, int] | None) -> list[str]:
    import subprocess

    argv = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--",
        "/bin/true",
    ]
    uid, gid = run_as if run_as is not None else (None, None)
    try:
        proc = subprocess.run(  # noqa: S603 - a fixed argv
            argv,
            capture_output=True,
            timeout=10,
            check=False,
            user=uid,
            group=gid,
            extra_groups=[] if run_as is not None else None,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return [f"bubblewrap at {bwrap} could not start: {exc}"]
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        hint = "enable unprivileged user namespaces (see the sysctls above) or install bubblewrap setuid"
        if "setting up uid map" in err or "Operation not permitted" in err:
            hint = (
                "the kernel refused a user namespace: check `sysctl user.max_user_namespaces`, "
                "`kernel.unprivileged_userns_clone`, `kernel.apparmor_restrict_unprivileged_userns`, "
                "and that containers grant CAP_SYS_ADMIN/seccomp permission for unshare"
            )
        return [f"bubblewrap cannot create a sandbox ({err or f'exit {proc.returncode}'}): {hint}"]
    return []


_CACHE: dict[tuple[bool, str | None, tuple[int, int] | None], HostReport] = {}


def check_host(
    *, deep: bool = False, bwrap_path: str | None = None, run_as: tuple[int, int] | None = None
) -> HostReport:
    """Inspect the host (cached per arguments for the life of the process)."""
    key = (deep, bwrap_path, run_as)
    hit = _CACHE.get(key)
    if hit is None:
        hit = _CACHE[key] = _check_host(deep=deep, bwrap_path=bwrap_path, run_as=run_as)
    return hit


def _check_host(*, deep: bool, bwrap_path: str | None, run_as: tuple[int, int] | None) -> HostReport:
    from inwall.sandbox.seccomp import host_arch

    problems: list[str] = []
    notes: list[str] = []
    bwrap = bwrap_path if bwrap_path and os.access(bwrap_path, os.X_OK) else None
    if bwrap_path and bwrap is None:
        problems.append(f"bwrapPath {bwrap_path} is not an executable file")
    elif bwrap is None:
        bwrap = find_executable("bwrap")
        if bwrap is None:
            problems.append(
                "bubblewrap is not installed: `apt-get install bubblewrap` (Debian/Ubuntu), "
                "`dnf install bubblewrap` (Fedora), `pacman -S bubblewrap` (Arch)"
            )
    prlimit = find_executable("prlimit")
    if prlimit is None:
        problems.append("prlimit (util-linux) is not installed: `apt-get install util-linux`")
    arch = host_arch()
    if arch is None:
        problems.append(
            f"no seccomp syscall table for {os.uname().machine}: inwall supports x86_64 and aarch64"
        )
    problems.extend(_userns_problems())
    if deep and bwrap and not problems:
        problems.extend(_deep_problems(bwrap, run_as))
    cg = _find_cgroup2()
    if cg is None:
        notes.append("no delegated cgroup v2 with memory+pids: memory and pids use rlimits")
    return HostReport(
        bwrap=bwrap,
        prlimit=prlimit,
        arch=arch.name if arch else None,
        euid=os.geteuid(),
        cgroup2=cg,
        problems=tuple(problems),
        notes=tuple(notes),
    )


def reset_cache() -> None:
    _CACHE.clear()
