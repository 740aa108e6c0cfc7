"""Turn a filesystem policy into bubblewrap mount operations and an argv.

Two steps with different jobs: :func:`plan_filesystem` looks at the host
(which paths exist, what they really point to, which dangerous files are in
the writable roots) and returns plain data; :func:`build_argv` is pure and
turns that data into bwrap's command line, so tests can check the exact
argv without running anything.

Mount order is the policy: later mounts cover earlier ones. Operations are
sorted by path depth, so a more specific rule always wins over the region it
sits in; at one path, deny-read < allow-read < allow-write < deny-write, which
gives srt's precedence (allowRead beats denyRead, denyWrite beats allowWrite).
Mandatory write denies come after everything, so no allowWrite can reopen them.

A protected path that does not exist yet is covered by a read-only
placeholder (``/dev/null`` for a file name, an empty read-only tmpfs for a
directory), so the command cannot create it either. bwrap creates the mount
point on the host; the runner removes those empty placeholders afterwards.
"""

# ruff: noqa: S108 - /tmp, /var/tmp and /dev/shm here are mount points inside the sandbox, not temp files
from __future__ import annotations

import os
import stat

from inwall.sandbox._frozen import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from inwall.sandbox.policy import FilesystemPolicy

__all__ = [
    "DANGEROUS_DIRECTORIES",
    "DANGEROUS_FILES",
    "BwrapConfig",
    "FsPlan",
    "Mount",
    "build_argv",
    "plan_filesystem",
]

# srt's mandatory write denies (sandbox-utils DANGEROUS_FILES / getDangerousDirectories)
DANGEROUS_FILES = (
    ".gitconfig",
    ".gitmodules",
    ".bashrc",
    ".bash_profile",
    ".zshrc",
    ".zprofile",
    ".profile",
    ".ripgreprc",
    ".mcp.json",
)
DANGEROUS_DIRECTORIES = (".vscode", ".idea", ".claude/commands", ".claude/agents")
_SCAN_SKIP = frozenset({"node_modules"})
_SCAN_MAX_ENTRIES = 20000
_PRIVATE_TMP = ("/tmp", "/var/tmp")


class Mount(Frozen):
    """One mount operation: ro-bind | bind | devnull | tmpfs | tmpfs-ro | remount-ro | dev | proc."""

    __slots__ = ("dest", "op", "size", "src")
    op: str
    dest: str
    src: str | None
    size: int | None

    def __init__(self, op: str, dest: str, src: str | None = None, *, size: int | None = None) -> None:
        self._init(op=op, dest=dest, src=src, size=size)


class FsPlan:
    """Mounts, plus the host-side placeholders bwrap will create and the writable roots."""

    __slots__ = ("mounts", "placeholders", "writable")

    def __init__(self) -> None:
        self.mounts: list[Mount] = []
        #: host paths bwrap will create as mount points (did not exist before the run)
        self.placeholders: list[str] = []
        #: the writable roots after policy resolution (for diagnostics and tests)
        self.writable: list[str] = []


def _depth(p: str) -> int:
    return 0 if p == "/" else p.count("/")


def _expand(raw: str, *, workdir: str, home: str) -> str:
    if raw == "~" or raw.startswith("~/"):
        raw = home + raw[1:]
    if not raw.startswith("/"):
        raw = os.path.join(workdir, raw)
    return os.path.normpath(raw)


def _is_glob(p: str) -> bool:
    return any(c in p for c in "*?[")


def _resolve_entries(entries: Iterable[str], *, workdir: str, home: str, globs: bool) -> list[str]:
    """Absolute real paths for policy entries; globs expand to what exists now (srt's Linux rule)."""
    out: list[str] = []
    for raw in entries:
        p = _expand(raw, workdir=workdir, home=home)
        if p.endswith("/**"):
            p = p[:-3] or "/"
        if _is_glob(p):
            if not globs:
                continue
            first = p.split("/")[1] if p.count("/") >= 1 else ""
            if _is_glob(first):
                continue  # srt skips patterns with no literal directory to start from
            import glob

            matches = glob.glob(p, recursive=True, include_hidden=True)[:_SCAN_MAX_ENTRIES]
            out.extend(os.path.realpath(m) for m in matches)
        else:
            out.append(os.path.realpath(p))
    return out


def _lexists(p: str) -> bool:
    return os.path.lexists(p)


def _first_missing(p: str) -> str:
    parts = p.split("/")
    cur = ""
    for part in parts[1:]:
        cur = f"{cur}/{part}"
        if not _lexists(cur):
            return cur
    return p


def _under(p: str, root: str) -> bool:
    return p == root or p.startswith(root.rstrip("/") + "/")


def _can_create_in(directory: str, uid: int, gid: int) -> bool:
    """Could ``uid`` create an entry in ``directory`` (DAC only; groups are cleared in the sandbox)?"""
    try:
        st = os.stat(directory)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if uid == 0:
        return True
    if uid == os.geteuid():
        return os.access(directory, os.W_OK | os.X_OK)
    if st.st_uid == uid:
        return bool(st.st_mode & 0o300 == 0o300)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o030 == 0o030)
    return bool(st.st_mode & 0o003 == 0o003)


def _deny_mount(p: str) -> Mount:
    """Hide ``p``: an empty read-only tmpfs for a directory, ``/dev/null`` for anything else."""
    if os.path.isdir(p):
        return Mount("tmpfs-ro", p)
    return Mount("devnull", p)


def _scan_dangerous(root: str, max_depth: int, allow_git_config: bool) -> list[str]:
    """Existing dangerous files/dirs below ``root`` (depth 1..max_depth); depth 0 is handled apart."""
    found: list[str] = []
    budget = _SCAN_MAX_ENTRIES
    stack: list[tuple[str, int]] = [(root, 0)]
    dirs_wanted = {d.split("/")[0] for d in DANGEROUS_DIRECTORIES}
    while stack and budget > 0:
        d, depth = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                budget -= 1
                if budget <= 0:
                    break
                if depth >= 1:
                    if e.name in DANGEROUS_FILES:
                        found.append(e.path)
                    elif e.name in dirs_wanted:
                        for dd in DANGEROUS_DIRECTORIES:
                            cand = os.path.join(d, dd)
                            if dd.startswith(e.name) and os.path.isdir(cand):
                                found.append(cand)
                    elif e.name == ".git" and e.is_dir(follow_symlinks=False):
                        found.append(os.path.join(e.path, "hooks"))
                        if not allow_git_config:
                            found.append(os.path.join(e.path, "config"))
                if e.name in _SCAN_SKIP or e.name == ".git":
                    continue
                if depth + 1 < max_depth + 1 and e.is_dir(follow_symlinks=False):
                    stack.append((e.path, depth + 1))
    return [p for p in found if _lexists(p)]


def plan_filesystem(
    fs: FilesystemPolicy,
    workdir: str,
    *,
    home: str,
    uid: int,
    gid: int,
    hide_workdir_siblings: bool = False,
    tmp_bytes: int | None = None,
) -> FsPlan:
    """Inspect the host and produce the mounts that express ``fs`` for ``workdir``."""
    plan = FsPlan()
    m = plan.mounts
    m.append(Mount("ro-bind", "/", "/"))
    m.append(Mount("dev", "/dev"))
    m.append(Mount("tmpfs", "/dev/shm", size=64 << 20))
    m.append(Mount("remount-ro", "/dev"))
    m.append(Mount("proc", "/proc"))
    m.append(Mount("tmpfs", "/tmp", size=tmp_bytes))
    if os.path.isdir("/var/tmp") and not os.path.islink("/var/tmp"):
        m.append(Mount("tmpfs", "/var/tmp", size=tmp_bytes))
    # host daemons' sockets and runtime state live under /run (defence in depth:
    # seccomp already refuses AF_UNIX sockets)
    m.append(Mount("tmpfs", "/run", size=1 << 20))

    deny_read = _resolve_entries(fs.deny_read, workdir=workdir, home=home, globs=True)
    allow_read = _resolve_entries(fs.allow_read, workdir=workdir, home=home, globs=True)
    allow_write = _resolve_entries(fs.allow_write, workdir=workdir, home=home, globs=False)
    deny_write = _resolve_entries(fs.deny_write, workdir=workdir, home=home, globs=True)
    if hide_workdir_siblings:
        parent = os.path.dirname(workdir)
        if parent != "/":
            deny_read.append(parent)
        allow_read.append(workdir)

    ops: list[tuple[int, int, str]] = []  # (depth, rank, path)
    for p in deny_read:
        if _lexists(p) and p != "/":
            ops.append((_depth(p), 0, p))
    for p in allow_read:
        if _lexists(p):
            ops.append((_depth(p), 1, p))
    writable: list[str] = []
    for p in allow_write:
        if any(p == t for t in _PRIVATE_TMP):
            continue  # the private tmpfs is already writable; the host's /tmp stays out of reach
        if os.path.isdir(p) or os.path.isfile(p):
            ops.append((_depth(p), 2, p))
            writable.append(p)
    for p in deny_write:
        ops.append((_depth(p), 3, p))
    ops.sort()
    remount_later: list[str] = []
    for i, (_, rank, p) in enumerate(ops):
        if rank == 0:
            if os.path.isdir(p) and any(_under(q, p) and q != p for _, r, q in ops[i + 1 :] if r > 0):
                # something is bound back beneath: bwrap must create mount points in
                # this tmpfs, so it is made read-only only after everything is in place
                m.append(Mount("tmpfs", p, size=1 << 20))
                remount_later.append(p)
            else:
                m.append(_deny_mount(p))
        elif rank == 1:
            m.append(Mount("ro-bind", p, p))
        elif rank == 2:
            m.append(Mount("bind", p, p))
        else:
            _protect(plan, p, writable, uid, gid)

    for root in writable:
        if not os.path.isdir(root):
            continue
        for name in DANGEROUS_FILES:
            _protect(plan, os.path.join(root, name), writable, uid, gid)
        for d in DANGEROUS_DIRECTORIES:
            _protect(plan, os.path.join(root, d), writable, uid, gid, as_dir=True)
        git = os.path.join(root, ".git")
        if os.path.isdir(git) and not os.path.islink(git):
            _protect(plan, os.path.join(git, "hooks"), writable, uid, gid, as_dir=True)
            if not fs.allow_git_config:
                _protect(plan, os.path.join(git, "config"), writable, uid, gid)
        for p in _scan_dangerous(root, fs.mandatory_deny_search_depth, fs.allow_git_config):
            _protect(plan, p, writable, uid, gid)

    for p in _resolve_entries(fs.deny_read_always, workdir=workdir, home=home, globs=True):
        if _lexists(p):
            m.append(_deny_mount(p))
    m.extend(Mount("remount-ro", p) for p in remount_later)
    plan.writable = writable
    return plan


def _protect(
    plan: FsPlan, p: str, writable: Sequence[str], uid: int, gid: int, *, as_dir: bool = False
) -> None:
    """Make ``p`` unwritable if it sits in a writable root; cover it with a placeholder if missing."""
    if not any(_under(p, w) for w in writable):
        return
    if any(x.dest == p for x in plan.mounts if x.op in ("ro-bind", "devnull", "tmpfs-ro")):
        return
    if _lexists(p):
        real = os.path.realpath(p)
        if not any(_under(real, w) for w in writable):
            return  # a symlink out of the writable area: its target is read-only already
        plan.mounts.append(Mount("ro-bind", real, real))
        return
    missing = _first_missing(p)
    if not _can_create_in(os.path.dirname(missing), uid, gid):
        return  # the sandbox user cannot create it either
    if missing == p and not as_dir:
        plan.mounts.append(Mount("devnull", p))
    else:
        plan.mounts.append(Mount("tmpfs-ro", missing))
    plan.placeholders.append(missing)


class BwrapConfig(Frozen):
    """Everything :func:`build_argv` needs; file descriptors are already open in the caller.

    ``data_files`` maps a sandbox path to an fd whose content bwrap copies there read-only.
    """

    __slots__ = (
        "block_fd",
        "bwrap",
        "chdir",
        "command",
        "data_files",
        "disable_userns",
        "extra_ro_binds",
        "hostname",
        "mounts",
        "seccomp_fd",
        "share_net",
        "status_fd",
    )
    bwrap: str
    mounts: Sequence[Mount]
    chdir: str
    command: Sequence[str]
    share_net: bool
    seccomp_fd: int | None
    status_fd: int | None
    block_fd: int | None
    data_files: Mapping[str, int]
    extra_ro_binds: Sequence[tuple[str, str]]
    disable_userns: bool
    hostname: str

    def __init__(
        self,
        *,
        bwrap: str,
        mounts: Sequence[Mount],
        chdir: str,
        command: Sequence[str],
        share_net: bool = False,
        seccomp_fd: int | None = None,
        status_fd: int | None = None,
        block_fd: int | None = None,
        data_files: Mapping[str, int] | None = None,
        extra_ro_binds: Sequence[tuple[str, str]] = (),
        disable_userns: bool = True,
        hostname: str = "inwall",
    ) -> None:
        self._init(
            bwrap=bwrap,
            mounts=tuple(mounts),
            chdir=chdir,
            command=tuple(command),
            share_net=share_net,
            seccomp_fd=seccomp_fd,
            status_fd=status_fd,
            block_fd=block_fd,
            data_files=dict(data_files or {}),
            extra_ro_binds=tuple(extra_ro_binds),
            disable_userns=disable_userns,
            hostname=hostname,
        )


def build_argv(cfg: BwrapConfig) -> list[str]:
    """bwrap's argv for ``cfg``: new user/pid/net/ipc/uts(/cgroup) namespaces, no caps, new session."""
    a: list[str] = [cfg.bwrap, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    a += ["--unshare-cgroup-try"]
    if not cfg.share_net:
        a.append("--unshare-net")
    if cfg.disable_userns:
        a.append("--disable-userns")
    a += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", cfg.hostname]
    for mnt in cfg.mounts:
        if mnt.op == "ro-bind":
            a += ["--ro-bind", mnt.src or mnt.dest, mnt.dest]
        elif mnt.op == "bind":
            a += ["--bind", mnt.src or mnt.dest, mnt.dest]
        elif mnt.op == "devnull":
            a += ["--ro-bind", "/dev/null", mnt.dest]
        elif mnt.op == "tmpfs":
            if mnt.size:
                a += ["--size", str(mnt.size)]
            a += ["--tmpfs", mnt.dest]
        elif mnt.op == "tmpfs-ro":
            a += ["--perms", "0555", "--size", "4096", "--tmpfs", mnt.dest, "--remount-ro", mnt.dest]
        elif mnt.op == "remount-ro":
            a += ["--remount-ro", mnt.dest]
        elif mnt.op == "dev":
            a += ["--dev", mnt.dest]
        elif mnt.op == "proc":
            a += ["--proc", mnt.dest]
        else:  # pragma: no cover - plan_filesystem emits nothing else
            raise ValueError(f"unknown mount op {mnt.op}")
    for src, dest in cfg.extra_ro_binds:
        a += ["--ro-bind", src, dest]
    for dest, fd in cfg.data_files.items():
        a += ["--perms", "0444", "--ro-bind-data", str(fd), dest]
    if cfg.seccomp_fd is not None:
        a += ["--seccomp", str(cfg.seccomp_fd)]
    if cfg.status_fd is not None:
        a += ["--json-status-fd", str(cfg.status_fd)]
    if cfg.block_fd is not None:
        a += ["--block-fd", str(cfg.block_fd)]
    a += ["--chdir", cfg.chdir, "--", *cfg.command]
    return a
