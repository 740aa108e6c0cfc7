"""Mount planning and argv building, without running bubblewrap."""

from __future__ import annotations

import os
from pathlib import Path

from inwall.sandbox.bwrap import BwrapConfig, Mount, build_argv, plan_filesystem
from inwall.sandbox.policy import FilesystemPolicy

UID = os.geteuid()
GID = os.getegid()


def _plan(ws: Path, fs: FilesystemPolicy | None = None, **kw: object) -> list[Mount]:
    return plan_filesystem(
        fs or FilesystemPolicy(), str(ws), home=str(ws.parent), uid=UID, gid=GID, **kw
    ).mounts  # type: ignore[arg-type]


def test_base_layout_then_workdir(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    mounts = _plan(ws)
    ops = [(m.op, m.dest) for m in mounts]
    assert ops[0] == ("ro-bind", "/")
    assert ("tmpfs", "/tmp") in ops and ("proc", "/proc") in ops and ("tmpfs", "/run") in ops
    assert ops.index(("bind", str(ws))) > ops.index(("tmpfs", "/tmp"))


def test_mandatory_denies_cover_missing_paths(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".git" / "hooks").mkdir(parents=True)
    (ws / ".git" / "config").write_text("[core]\n")
    (ws / ".bashrc").write_text("x")
    plan = plan_filesystem(FilesystemPolicy(), str(ws), home=str(tmp_path), uid=UID, gid=GID)
    by_dest = {m.dest: m.op for m in plan.mounts}
    assert by_dest[str(ws / ".bashrc")] == "ro-bind"  # exists: bound onto itself
    assert by_dest[str(ws / ".mcp.json")] == "devnull"  # missing file: placeholder
    assert by_dest[str(ws / ".vscode")] == "tmpfs-ro"  # missing dir: empty read-only dir
    assert by_dest[str(ws / ".claude")] == "tmpfs-ro"  # first missing component of .claude/commands
    assert by_dest[str(ws / ".git" / "hooks")] == "ro-bind"
    assert by_dest[str(ws / ".git" / "config")] == "ro-bind"
    assert str(ws / ".mcp.json") in plan.placeholders
    assert str(ws / ".bashrc") not in plan.placeholders


def test_allow_git_config(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".git").mkdir(parents=True)
    (ws / ".git" / "config").write_text("")
    dests = {m.dest for m in _plan(ws, FilesystemPolicy(allow_git_config=True))}
    assert str(ws / ".git" / "config") not in dests
    assert str(ws / ".git" / "hooks") in dests


def test_nested_dangerous_files_found(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "a" / "b" / ".git" / "hooks").mkdir(parents=True)
    (ws / "a" / ".zshrc").write_text("")
    (ws / "node_modules" / "x").mkdir(parents=True)
    (ws / "node_modules" / "x" / ".bashrc").write_text("")
    dests = {m.dest for m in _plan(ws)}
    assert str(ws / "a" / ".zshrc") in dests
    assert str(ws / "a" / "b" / ".git" / "hooks") in dests
    assert str(ws / "node_modules" / "x" / ".bashrc") not in dests


def test_read_precedence_by_depth(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    secret = tmp_path / "home" / "proj" / "secret"
    secret.mkdir(parents=True)
    ws.mkdir()
    fs = FilesystemPolicy(
        deny_read=[str(tmp_path / "home"), str(secret)],
        allow_read=[str(tmp_path / "home" / "proj")],
    )
    ops = [(m.op, m.dest) for m in _plan(ws, fs)]
    i_deny = ops.index(("tmpfs", str(tmp_path / "home")))
    assert ops[-1] == ("remount-ro", str(tmp_path / "home"))  # read-only once the allow is bound
    i_allow = ops.index(("ro-bind", str(tmp_path / "home" / "proj")))
    i_inner = ops.index(("tmpfs-ro", str(secret)))
    assert i_deny < i_allow < i_inner  # a deny more specific than the allow still wins


def test_deny_write_wins_and_missing_denies_get_placeholders(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "config").mkdir(parents=True)
    plan = plan_filesystem(
        FilesystemPolicy(deny_write=[".env", "config/production.json", "new/dir/file"]),
        str(ws),
        home=str(tmp_path),
        uid=UID,
        gid=GID,
    )
    by_dest = {m.dest: m.op for m in plan.mounts}
    assert by_dest[str(ws / ".env")] == "devnull"
    assert by_dest[str(ws / "config" / "production.json")] == "devnull"
    assert by_dest[str(ws / "new")] == "tmpfs-ro"


def test_private_tmp_not_rebound(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    ops = [(m.op, m.dest) for m in _plan(ws, FilesystemPolicy(allow_write=[".", "/tmp"]))]
    assert ("bind", "/tmp") not in ops


def test_hide_siblings(tmp_path: Path) -> None:
    ws = tmp_path / "root" / "ws"
    ws.mkdir(parents=True)
    ops = [(m.op, m.dest) for m in _plan(ws, hide_workdir_siblings=True)]
    assert ops.index(("tmpfs", str(ws.parent))) < ops.index(("bind", str(ws)))


def test_build_argv() -> None:
    argv = build_argv(
        BwrapConfig(
            bwrap="/usr/bin/bwrap",
            mounts=[
                Mount("ro-bind", "/", "/"),
                Mount("tmpfs", "/tmp", size=1024),
                Mount("devnull", "/w/.bashrc"),
            ],
            chdir="/w",
            command=["prlimit", "--", "true"],
            seccomp_fd=5,
            status_fd=6,
            data_files={"/run/inwall/x": 7},
        )
    )
    assert argv[0] == "/usr/bin/bwrap"
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"):
        assert flag in argv
    assert "--die-with-parent" in argv and "--new-session" in argv and "--disable-userns" in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--seccomp") + 1] == "5"
    assert argv[argv.index("--json-status-fd") + 1] == "6"
    s = " ".join(argv)
    assert "--size 1024 --tmpfs /tmp" in s
    assert "--ro-bind /dev/null /w/.bashrc" in s
    assert "--ro-bind-data 7 /run/inwall/x" in s
    assert argv[-4:] == ["--", "prlimit", "--", "true"]
