"""A worker SIGKILLed mid-call is replaced: the lease lapses; another restores the snapshot and reruns it."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inwall.audit import verify_file
from tests.helpers import Server, fast_settings, running_server, wait_for_events, wait_until

from .conftest import Env, WorkerProcess, end_turn, make_env, wait_for_path
from .test_e2e import results, script, start_session

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox, pytest.mark.slow]


@pytest.fixture
async def short_lease_server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(fast_settings(tmp_path / "data", lease_ttl_s=2)) as srv:
        yield srv


def processes_in(root: Path) -> list[int]:
    """Pids whose working directory is under ``root`` (what a dead worker's sandbox would leave)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd.startswith(str(root)):
                found.append(int(entry))
    return found


async def test_a_killed_worker_is_replaced_and_the_workspace_survives(
    short_lease_server: Server, ws_root: Path, workers: list[WorkerProcess]
) -> None:
    server = short_lease_server
    async with server.client() as client:
        env: Env = await make_env(client)
        sid = await start_session(
            env,
            script(
                ("write", {"file_path": "note.txt", "content": "written before the crash"}),
                ("bash", {"command": "touch running; sleep 2; echo finished; ls"}),
                ("read", {"file_path": "note.txt"}),
            ),
        )
        store = str(ws_root / "snapshots")
        a = WorkerProcess(
            server.base_url, env, ws_root / "a", "--snapshot-dir", store, "--max-idle", "30", log_name="a.log"
        )
        workers.append(a.start())
        marker = ws_root / "a" / "sessions" / sid / "running"
        await wait_for_path(marker)
        a.signal(signal.SIGKILL)
        assert await a.wait() == -signal.SIGKILL

        # bubblewrap dies with its parent: nothing of the sandbox is left running
        async def sandbox_gone() -> bool:
            return not processes_in(ws_root / "a" / "sessions")

        await wait_until(sandbox_gone, within=10)

        b = WorkerProcess(
            server.base_url, env, ws_root / "b", "--snapshot-dir", store, "--max-idle", "2", log_name="b.log"
        )
        workers.append(b.start())
        events = await wait_for_events(client, sid, end_turn, within=90)

    types = [e.type for e in events]
    assert "session.status_rescheduled" in types
    assert types.index("session.status_rescheduled") < len(types) - 1 - types[::-1].index(
        "session.status_running"
    )
    got = results(events)
    assert got == [
        (False, "wrote 24 bytes to note.txt"),
        (
            False,
            "finished\nnote.txt\nrunning",
        ),  # the interrupted call, run again by B; A's result never posted
        (False, "written before the crash"),
    ]
    b_ws = ws_root / "b" / "sessions" / sid
    assert (b_ws / "note.txt").read_text() == "written before the crash"
    assert await b.stop() == 0
    b_audit = [json.loads(line) for line in (ws_root / "b" / "audit.jsonl").read_text().splitlines()]
    restored = [r for r in b_audit if r["kind"] == "workspace_restored"]
    assert len(restored) == 1 and restored[0]["session_id"] == sid and restored[0]["files"] == 1
    assert verify_file(ws_root / "b" / "audit.jsonl").ok
    assert verify_file(
        ws_root / "a" / "audit.jsonl"
    ).ok  # a SIGKILL leaves a shorter chain, never a broken one
