"""`inwall sandbox exec` as a user runs it: a real process, real stdio, real signals."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.sandbox

INWALL = [sys.executable, "-m", "inwall.cli.main"]


def inwall(
    ws: Path, *cmd: str, settings: Path | None = None, **kw: object
) -> subprocess.CompletedProcess[bytes]:
    args = [*INWALL, "sandbox", "exec", "--workdir", str(ws)]
    if settings is not None:
        args += ["--settings", str(settings)]
    return subprocess.run([*args, "--", *cmd], capture_output=True, timeout=30, check=False, **kw)  # type: ignore[call-overload]


def test_exit_status_passes_through(workspace: Path) -> None:
    assert inwall(workspace, "sh", "-c", "echo ran > ran; exit 7").returncode == 7
    assert (workspace / "ran").exists()
    assert inwall(workspace, "true").returncode == 0
    assert inwall(workspace, "sh", "-c", "kill -KILL $$").returncode == 128 + 9


def test_stdio_passes_through(workspace: Path) -> None:
    r = inwall(workspace, "sh", "-c", "tr a-z A-Z; echo err >&2", input=b"hello\n")
    assert r.returncode == 0
    assert r.stdout == b"HELLO\n"
    assert r.stderr == b"err\n"


def test_command_not_found_is_127(workspace: Path) -> None:
    r = inwall(workspace, "no-such-command-inwall")
    assert r.returncode == 127


def test_sigterm_forwarded(workspace: Path) -> None:
    proc = subprocess.Popen(
        [
            *INWALL,
            "sandbox",
            "exec",
            "--workdir",
            str(workspace),
            "--",
            "sh",
            "-c",
            "trap 'echo term > got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready and proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 42
        assert (workspace / "got-term").read_text() == "term\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_unknown_settings_key_is_125_naming_the_key(workspace: Path, tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"filesystem": {"denyRaed": ["~/.ssh"]}}))
    r = inwall(workspace, "sh", "-c", "echo ran > ran", settings=f)
    assert r.returncode == 125
    assert b"filesystem.denyRaed" in r.stderr
    assert not (workspace / "ran").exists()  # refused before running anything


def test_settings_file_applies(workspace: Path, tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"filesystem": {"denyWrite": ["locked.txt"]}}))
    r = inwall(workspace, "sh", "-c", "echo ran > ran; echo x > locked.txt", settings=f)
    assert (workspace / "ran").exists()
    assert r.returncode != 0
    assert not (workspace / "locked.txt").exists()


def test_no_command_is_125(workspace: Path) -> None:
    r = subprocess.run(
        [*INWALL, "sandbox", "exec", "--workdir", str(workspace)], capture_output=True, check=False
    )
    assert r.returncode == 125


@pytest.mark.skipif(os.geteuid() != 0, reason="root-only behaviour")
def test_root_owned_workdir_refused_with_remedy(ws_root: Path) -> None:
    d = ws_root / "rootowned"
    d.mkdir()
    r = inwall(d, "sh", "-c", "echo ran > ran")
    assert r.returncode == 125
    assert b"install -d -o 65534" in r.stderr
    assert not (d / "ran").exists()


def test_no_process_outlives_the_cli(workspace: Path) -> None:
    token = f"{time.monotonic_ns() % 100000}.75"
    r = inwall(workspace, "sh", "-c", f"(sleep {token} >/dev/null 2>&1 &); echo ran > ran")
    assert r.returncode == 0 and (workspace / "ran").exists()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                assert token.encode() not in Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
