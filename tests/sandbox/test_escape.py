"""The escape suite: every attempt must FAIL, and every test proves the sandbox ran (a marker).

Each command first writes ``ran`` into its workspace; the test reads it back
from the host, so a sandbox that runs nothing cannot pass.
"""

# ruff: noqa: ASYNC240 - tests inspect host files and start host victims synchronously, on purpose
from __future__ import annotations

import os
import platform
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from inwall.errors import ConfigError
from inwall.sandbox.policy import SandboxSettings
from inwall.sandbox.runner import RunResult, Sandbox, prepare_workdir
from inwall.sandbox.violations import LimitExceeded

pytestmark = [pytest.mark.sandbox, pytest.mark.anyio]

MARK = "echo ran > ran; "


async def sh(
    ws: Path,
    script: str,
    settings: SandboxSettings | None = None,
    *,
    timeout_s: float | None = 20,
    **kw: object,
) -> RunResult:
    async with Sandbox(settings or SandboxSettings.default(), ws, **kw) as sb:  # type: ignore[arg-type]
        return await sb.run(["/bin/sh", "-c", MARK + script], timeout_s=timeout_s)


def ran(ws: Path) -> bool:
    return (ws / "ran").read_text().strip() == "ran"


def py(code: str) -> str:
    """A shell word running ``code`` in the sandbox's python3."""
    return "python3 -c " + repr(code).replace("\\n", "\n")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="root-only files need a root host process")


# --------------------------------------------------------------------------- reading host secrets


@needs_root
async def test_root_only_file_unreadable(ws_root: Path, workspace: Path) -> None:
    secret = ws_root / "root-secret"
    token = secrets.token_hex(8)
    secret.write_text(token)
    secret.chmod(0o600)
    r = await sh(workspace, f"cat {secret}; head -c 100 /etc/shadow; id -u")
    assert ran(workspace)
    assert token.encode() not in r.stdout
    assert b"root:" not in r.stdout
    assert r.stdout.split()[-1] == b"65534"
    assert b"Permission denied" in r.stderr


async def test_other_workspace_invisible(ws_root: Path) -> None:
    mine = prepare_workdir(ws_root / "a")
    other = prepare_workdir(ws_root / "b")
    token = secrets.token_hex(8)
    (other / "secret").write_text(token)
    os.chown(other / "secret", *(os.stat(other)[4:6]))
    r = await sh(mine, f"cat {other}/secret; ls -a {ws_root}", hide_workdir_siblings=True)
    assert ran(mine)
    assert token.encode() not in r.stdout
    assert b"b\n" not in r.stdout.replace(b"ran", b"")  # the sibling is not listed
    assert b"No such file" in r.stderr


async def test_parent_environment_not_inherited(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(8)
    for name in ("ANTHROPIC_API_KEY", "INWALL_ENVIRONMENT_KEY", "GITHUB_TOKEN", "MY_SECRET", "DB_PASSWORD"):
        monkeypatch.setenv(name, f"{name}-{token}")
    settings = SandboxSettings.from_dict(
        {"inwall": {"env_allow": ["ANTHROPIC_API_KEY", "INWALL_*", "GITHUB_TOKEN"]}}
    )
    r = await sh(workspace, "env; cat /proc/*/environ | tr '\\0' '\\n'", settings)
    assert ran(workspace)
    assert token.encode() not in r.stdout + r.stderr
    assert f"HOME={workspace}".encode() in r.stdout  # positive: the allowlisted env is there


async def test_host_proc_of_other_processes_hidden(workspace: Path) -> None:
    host_pid = os.getpid()
    r = await sh(workspace, f"cat /proc/{host_pid}/environ; ls /proc | grep -E '^[0-9]+$' | sort -n")
    assert ran(workspace)
    pids = [int(x) for x in r.stdout.split()]
    assert host_pid not in pids
    assert pids and max(pids) < 100  # only the sandbox's own pid namespace
    assert b"No such file" in r.stderr


# --------------------------------------------------------------------------- writing outside


@pytest.fixture
def outside(ws_root: Path) -> Path:
    """A world-writable host directory outside the workspace (writable without a sandbox)."""
    d = ws_root / "outside"
    d.mkdir()
    d.chmod(0o777)
    return d


async def test_write_outside_directly(workspace: Path, outside: Path) -> None:
    r = await sh(
        workspace, f"echo x > {outside}/direct; echo x > /etc/inwall-escape; touch /usr/inwall-escape"
    )
    assert ran(workspace)
    assert not (outside / "direct").exists()
    assert not Path("/etc/inwall-escape").exists()
    assert b"Read-only file system" in r.stderr


async def test_write_outside_via_symlink(workspace: Path, outside: Path) -> None:
    await sh(workspace, f"ln -s {outside} link; echo x > link/via-link; ln -s {outside}/f2 l2; echo x > l2")
    assert ran(workspace)
    assert (workspace / "link").is_symlink()  # positive: the link itself was made
    assert list(outside.iterdir()) == []


async def test_write_outside_by_rename(workspace: Path, outside: Path) -> None:
    r = await sh(
        workspace,
        "echo data > f; "
        + py(
            "import os\ntry:\n"
            f"    os.rename('f', '{outside}/renamed')\n"
            "except OSError as e:\n    print('ERR', e.errno)"
        )
        + f"; mv f {outside}/mv-renamed",
    )
    assert ran(workspace)
    assert b"ERR" in r.stdout
    assert list(outside.iterdir()) == []
    assert (workspace / "f").exists()


async def test_write_outside_via_proc_self_root(workspace: Path, outside: Path) -> None:
    await sh(
        workspace,
        f"echo x > /proc/self/root{outside}/p; echo x > /proc/1/root{outside}/q; ls /proc/self/root/",
    )
    assert ran(workspace)
    assert list(outside.iterdir()) == []


# --------------------------------------------------------------------------- mandatory denies


async def test_mandatory_denies_existing_and_new(workspace: Path) -> None:
    (workspace / ".git" / "hooks").mkdir(parents=True)
    (workspace / ".git" / "config").write_text("[core]\n")
    (workspace / ".bashrc").write_text("# original\n")
    (workspace / "sub").mkdir()
    (workspace / "sub" / ".profile").write_text("# nested original\n")
    for p in workspace.rglob("*"):
        os.chown(p, *(os.stat(workspace)[4:6]))
    r = await sh(
        workspace,
        "echo evil >> .bashrc; echo evil > .mcp.json; echo evil > .zshrc; "
        "mkdir -p .vscode && echo evil > .vscode/settings.json; "
        "mkdir -p .claude/commands && echo evil > .claude/commands/x.md; "
        "echo evil > .git/hooks/pre-commit; echo evil >> .git/config; "
        "echo evil >> sub/.profile; rm -f .bashrc; mv .git/hooks hooks2; "
        "echo ok > normal.txt",
    )
    assert ran(workspace)
    assert (workspace / "normal.txt").read_text() == "ok\n"  # ordinary writes work
    assert (workspace / ".bashrc").read_text() == "# original\n"
    assert (workspace / "sub" / ".profile").read_text() == "# nested original\n"
    assert (workspace / ".git" / "config").read_text() == "[core]\n"
    assert list((workspace / ".git" / "hooks").iterdir()) == []
    for created_later in (".mcp.json", ".zshrc", ".vscode", ".claude"):
        assert not (workspace / created_later).exists(), created_later  # placeholders cleaned up too
    assert r.violations  # the model is told
    assert any(getattr(v, "op", "") == "write" for v in r.violations)


# --------------------------------------------------------------------------- sockets, privileges, processes


async def test_unix_socket_to_host_daemon(workspace: Path) -> None:
    path = workspace / "daemon.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    os.chmod(path, 0o777)
    srv.listen(1)
    srv.setblocking(False)
    try:
        code = (
            "import socket\n"
            "for fam in ('connect', 'pair'):\n"
            "    try:\n"
            "        if fam == 'pair':\n"
            "            socket.socketpair()\n"
            "        else:\n"
            f"            s = socket.socket(socket.AF_UNIX); s.connect('{path}')\n"
            "        print('CONNECTED', fam)\n"
            "    except OSError as e:\n"
            "        print('DENIED', fam, e.errno)\n"
        )
        r = await sh(workspace, py(code))
        assert ran(workspace)
        assert b"CONNECTED" not in r.stdout
        assert r.stdout.count(b"DENIED") == 2 and b" 1\n" in r.stdout  # EPERM from seccomp
        with pytest.raises(BlockingIOError):
            srv.accept()
    finally:
        srv.close()


@needs_root
async def test_setuid_binary_gives_nothing(ws_root: Path, workspace: Path) -> None:
    suid = workspace / "suid-id"
    suid.write_bytes(Path("/usr/bin/id").read_bytes())
    os.chown(suid, 0, 0)
    suid.chmod(0o4755)
    r = await sh(workspace, "./suid-id -u; ./suid-id -ru; su -c id root </dev/null")
    assert ran(workspace)
    assert r.stdout.split()[-2:] == [b"65534", b"65534"]
    assert b"uid=0" not in r.stdout


async def test_mount_and_unshare_refused(workspace: Path) -> None:
    code = (
        "import os, ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for flag in (0x10000000, 0x00020000, 0x40000000):\n"
        "    print('unshare', libc.unshare(flag), ctypes.get_errno())\n"
        "print('mount', libc.mount(b'none', b'/mnt', b'tmpfs', 0, None), ctypes.get_errno())\n"
    )
    r = await sh(workspace, py(code) + "; unshare -r id; unshare -U true && echo UNSHARED")
    assert ran(workspace)
    assert r.stdout.count(b"unshare -1 1") == 3
    assert b"mount -1 1" in r.stdout
    assert b"UNSHARED" not in r.stdout


async def test_cannot_signal_or_trace_outside_processes(workspace: Path) -> None:
    victim = subprocess.Popen(["sleep", "60"], user=65534 if os.geteuid() == 0 else None)
    try:
        code = (
            "import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            f"print('ptrace', libc.ptrace(16, {victim.pid}, 0, 0), ctypes.get_errno())\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    import time; time.sleep(2); os._exit(0)\n"
            "print('ptrace-child', libc.ptrace(16, pid, 0, 0), ctypes.get_errno())\n"
            "os.kill(pid, 9)\n"
        )
        r = await sh(workspace, f"kill -9 {victim.pid}; echo kill=$?; " + py(code))
        assert ran(workspace)
        assert b"kill=1" in r.stdout or b"kill=127" not in r.stdout
        assert b"ptrace -1 1" in r.stdout and b"ptrace-child -1 1" in r.stdout  # EPERM even for its own child
        assert victim.poll() is None  # still alive
    finally:
        victim.kill()
        victim.wait()


# --------------------------------------------------------------------------- limits


async def test_fork_bomb_capped(workspace: Path) -> None:
    settings = SandboxSettings.default().with_limits(pids=32)
    code = (
        "import os, time\n"
        "kids = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        print('fork failed:', e); break\n"
        "    if pid == 0:\n"
        "        time.sleep(5); os._exit(0)\n"
        "    kids += 1\n"
        "print('KIDS', kids)\n"
    )
    r = await sh(workspace, py(code), settings)
    assert ran(workspace)
    kids = int(r.stdout.split(b"KIDS")[1])
    assert 0 < kids < 32
    assert any(isinstance(v, LimitExceeded) and v.limit == "pids" for v in r.violations)


async def test_pids_limit_is_per_sandbox(workspace: Path, ws_root: Path) -> None:
    """RLIMIT_NPROC is applied inside the user namespace: another sandbox's processes do not count."""
    other = prepare_workdir(ws_root / "other")
    settings = SandboxSettings.default().with_limits(pids=16)
    async with Sandbox(settings, other) as sb:
        holder = await sb.spawn(["/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; cat"])
        try:
            r = await sh(
                workspace, "for i in 1 2 3 4 5 6 7 8; do sleep 0.01 & done; wait; echo forked-ok", settings
            )
            assert ran(workspace)
            assert b"forked-ok" in r.stdout
        finally:
            await holder.terminate(0.5)


async def test_memory_exhaustion(workspace: Path) -> None:
    settings = SandboxSettings.default().with_limits(memory_mb=256)
    r = await sh(workspace, py("x = bytearray(1024 * 1024 * 1024)\nprint('ALLOCATED')"), settings)
    assert ran(workspace)
    assert b"ALLOCATED" not in r.stdout
    assert b"MemoryError" in r.stderr
    assert any(isinstance(v, LimitExceeded) and v.limit == "memory_mb" for v in r.violations)


async def test_disk_exhaustion_single_file(workspace: Path) -> None:
    settings = SandboxSettings.default().with_limits(disk_mb=4)
    r = await sh(workspace, "dd if=/dev/zero of=big bs=1M count=16 2>/dev/null; echo dd=$?", settings)
    assert ran(workspace)
    assert (workspace / "big").stat().st_size <= 4 * 1024 * 1024
    assert (
        any(isinstance(v, LimitExceeded) and v.limit == "disk_mb" for v in r.violations)
        or b"dd=153" in r.stdout
    )


async def test_disk_exhaustion_many_files_reported(workspace: Path) -> None:
    settings = SandboxSettings.default().with_limits(disk_mb=4)
    r = await sh(
        workspace,
        "for i in 1 2 3 4 5 6 7 8; do dd if=/dev/urandom of=f$i bs=1M count=1 2>/dev/null; done",
        settings,
    )
    assert ran(workspace)
    assert any(isinstance(v, LimitExceeded) and v.limit == "disk_mb" for v in r.violations)


async def test_private_tmp_is_size_capped(workspace: Path) -> None:
    settings = SandboxSettings.from_dict({"inwall": {"tmp_mb": 2}})
    r = await sh(workspace, "dd if=/dev/zero of=/tmp/fill bs=1M count=8", settings)
    assert ran(workspace)
    assert b"No space left" in r.stdout + r.stderr


def _host_procs_with(token: str) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(d))
            except OSError:
                continue
    return found


async def test_no_orphans_after_timeout(workspace: Path) -> None:
    token = str(3000 + secrets.randbelow(5000))
    r = await sh(workspace, f"sleep {token}.5 & echo started; sleep {token}.25", timeout_s=0.5)
    assert ran(workspace)
    assert r.timed_out and b"started" in r.stdout
    assert any(isinstance(v, LimitExceeded) and v.limit == "timeout_s" for v in r.violations)
    assert _host_procs_with(f"{token}.5") == []


async def test_no_orphans_after_normal_exit(workspace: Path) -> None:
    token = str(3000 + secrets.randbelow(5000))
    r = await sh(workspace, f"(sleep {token}.5 >/dev/null 2>&1 &) ; echo bye")
    assert ran(workspace)
    assert r.exit_code == 0
    assert _host_procs_with(f"{token}.5") == []


async def test_output_cap(workspace: Path) -> None:
    settings = SandboxSettings.default().with_limits(output_bytes=10_000)
    r = await sh(workspace, "yes hello | head -c 10000000")
    r2 = await sh(workspace, "yes hello | head -c 10000000", settings)
    assert len(r.stdout) == 10_000_000  # control: without the cap it all arrives
    assert len(r2.stdout) <= 10_000 and r2.stdout_truncated
    assert any(isinstance(v, LimitExceeded) and v.limit == "output_bytes" for v in r2.violations)


# --------------------------------------------------------------------------- syscall surface


x86_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 ABI tricks")


@x86_only
async def test_i386_int80_entry_refused(workspace: Path) -> None:
    code = (
        "import ctypes, mmap, os\n"
        "m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "m.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))  # mov eax,20 (getpid); int 0x80; ret\n"
        "addr = ctypes.addressof(ctypes.c_char.from_buffer(m))\n"
        "fn = ctypes.CFUNCTYPE(ctypes.c_int)(addr)\n"
        "print('INT80', fn(), 'PID', os.getpid())\n"
    )
    r = await sh(workspace, py(code))
    assert ran(workspace)
    out = r.stdout.split()
    assert out[out.index(b"INT80") + 1] == b"-1"  # -EPERM, not the pid


@x86_only
async def test_x32_syscall_refused(workspace: Path) -> None:
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('X32', libc.syscall(39 | 0x40000000), ctypes.get_errno())\n"
        "print('NATIVE', libc.syscall(39) > 0)\n"
    )
    r = await sh(workspace, py(code))
    assert ran(workspace)
    assert b"X32 -1 1" in r.stdout and b"NATIVE True" in r.stdout


@x86_only
async def test_dangerous_syscalls_refused(workspace: Path) -> None:
    calls = {"io_uring_setup": 425, "bpf": 321, "keyctl": 250, "userfaultfd": 323, "perf_event_open": 298}
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "buf = ctypes.create_string_buffer(512)\n"
        f"for name, nr in {calls!r}.items():\n"
        "    args = (buf, 0, -1, -1, 0) if name == 'perf_event_open' else (1, buf, 0, 0, 0)\n"
        "    rc = libc.syscall(nr, *args)\n"
        "    print(name, rc, ctypes.get_errno())\n"
        "print('getpid', libc.syscall(39) > 0)\n"
    )
    r = await sh(workspace, py(code))
    assert ran(workspace)
    for name in calls:
        assert f"{name} -1 1".encode() in r.stdout, (name, r.stdout)
    assert b"getpid True" in r.stdout


# --------------------------------------------------------------------------- allowed paths


async def test_workspace_writes_and_common_tools(workspace: Path) -> None:
    r = await sh(
        workspace,
        "mkdir -p d/e && echo alpha > d/e/f.txt && ls d/e && grep -c alpha d/e/f.txt && "
        "sed 's/alpha/beta/' d/e/f.txt && bash -c 'echo from-bash' && "
        + py("import json, pathlib\nprint(json.dumps({'ok': pathlib.Path('d/e/f.txt').read_text().strip()}))")
        + " && echo tmp > /tmp/t && cat /tmp/t",
    )
    assert ran(workspace)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split(b"\n")[:5] == [b"f.txt", b"1", b"beta", b"from-bash", b'{"ok": "alpha"}']
    assert (workspace / "d" / "e" / "f.txt").read_text() == "alpha\n"


async def test_run_stdin_env_cwd_and_exit_code(workspace: Path) -> None:
    (workspace / "sub").mkdir()
    os.chown(workspace / "sub", *(os.stat(workspace)[4:6]))
    async with Sandbox(SandboxSettings.default(), workspace) as sb:
        r = await sb.run(
            ["sh", "-c", "cat; echo $FOO; pwd; exit 7"], stdin=b"in\n", env={"FOO": "bar"}, cwd="sub"
        )
    assert r.stdout == f"in\nbar\n{workspace}/sub\n".encode()
    assert r.exit_code == 7 and r.signal is None and r.violations == []


async def test_spawn_streams_and_terminate(workspace: Path) -> None:
    async with Sandbox(SandboxSettings.default(), workspace) as sb:
        proc = await sb.spawn(
            ["sh", "-c", "trap 'echo bye; exit 3' TERM; while read l; do echo got $l; done"]
        )
        await proc.stdin.send(b"one\n")
        with anyio.fail_after(5):
            assert await proc.stdout.receive() == b"got one\n"
        code = await proc.terminate(grace=5)
    assert code == 3


def test_sandbox_refuses_root_owned_workdir(ws_root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("root-only behaviour")
    d = ws_root / "rootowned"
    d.mkdir()
    with pytest.raises(ConfigError, match="install -d -o 65534"):
        Sandbox(SandboxSettings.default(), d).exec_foreground(["true"])


def test_python_is_available(workspace: Path) -> None:
    assert sys.version_info >= (3, 11)
