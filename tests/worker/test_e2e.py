"""``inwall server`` + ``inwall worker`` (a real child process) + the official SDK as the client.

The scripted model (``inwall-scripted``) makes the calls a test writes as
``call TOOL {json}`` lines and answers with one ``TOOL [N chars]: TEXT`` line
per result, so the answer shows exactly what the model received.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from inwall.audit import verify_file
from inwall.worker.config import WorkerConfig
from inwall.worker.program import Worker, run_worker
from inwall.worker.runtime import INTERRUPTED
from tests.helpers import Server, answer_text, events_of, user_message, wait_for_events
from tests.sandbox.egress.helpers import http_origin

from .conftest import Env, WorkerProcess, end_turn, wait_for_path

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]


def script(*calls: tuple[str, dict[str, Any]]) -> str:
    return "\n".join(f"call {tool} {json.dumps(args)}" for tool, args in calls)


async def start_session(env: Env, text: str) -> str:
    session = await env.client.beta.sessions.create(agent=env.agent_id, environment_id=env.environment_id)
    await env.client.beta.sessions.events.send(session.id, events=[user_message(text)])
    return session.id


def results(events: list[Any]) -> list[tuple[bool, str]]:
    return [
        (bool(e.is_error), "\n".join(b.text for b in e.content if b.type == "text"))
        for e in events
        if e.type == "user.tool_result"
    ]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_the_worker_serves_all_six_tools(
    server: Server, env: Env, ws_root: Path, workers: list[WorkerProcess]
) -> None:
    sid = await start_session(
        env,
        script(
            ("bash", {"command": "echo hello; id -u"}),
            ("write", {"file_path": "notes/a.txt", "content": "alpha\nbeta\n"}),
            ("read", {"file_path": "notes/a.txt", "view_range": [2, 2]}),
            ("edit", {"file_path": "notes/a.txt", "old_string": "beta", "new_string": "gamma"}),
            ("glob", {"pattern": "**/*.txt"}),
            ("grep", {"pattern": "gam+a"}),
            ("bash", {"command": "cat notes/a.txt; echo $HOME"}),
        ),
    )
    worker = WorkerProcess(server.base_url, env, ws_root / "w", "--max-idle", "2")
    workers.append(worker.start())
    events = await wait_for_events(env.client, sid, end_turn, within=60)
    ws = ws_root / "w" / "sessions" / sid
    uid = "65534" if os.geteuid() == 0 else str(os.geteuid())
    expected = [
        ("bash", f"hello\n{uid}"),
        ("write", "wrote 11 bytes to notes/a.txt"),
        ("read", "beta"),
        ("edit", "edited notes/a.txt (1 replacement(s))"),
        ("glob", f"{ws}/notes/a.txt"),
        ("grep", f"{ws}/notes/a.txt:2:gamma\n"),
        ("bash", f"alpha\ngamma\n{ws}"),
    ]
    assert answer_text(events) == "\n".join(f"{tool} [{len(text)} chars]: {text}" for tool, text in expected)
    assert (ws / "notes" / "a.txt").read_text() == "alpha\ngamma\n"
    assert await worker.stop() == 0
    audit = ws_root / "w" / "audit.jsonl"
    verified = await anyio.run_process(
        [sys.executable, "-m", "inwall.cli.main", "audit", "verify", str(audit)], check=False
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    recs = records(audit)
    calls = [r for r in recs if r["kind"] == "tool_call"]
    assert [c["tool"] for c in calls] == ["bash", "write", "read", "edit", "glob", "grep", "bash"]
    assert all(c["session_id"] == sid and c["work_id"].startswith("work") for c in calls)
    assert {"worker_started", "session_claimed", "snapshot", "session_released", "worker_stopped"} <= {
        r["kind"] for r in recs
    }
    for text in (audit.read_text(), worker.log()):
        assert env.key not in text  # the environment key is never written anywhere


@pytest.mark.slow
async def test_sessions_run_concurrently_and_cannot_see_each_other(
    server: Server, env: Env, ws_root: Path, workers: list[WorkerProcess]
) -> None:
    slow = await start_session(
        env,
        script(
            ("write", {"file_path": "secret.txt", "content": "slow's secret"}),
            ("bash", {"command": "sleep 3; cat secret.txt"}),
        ),
    )
    slow_ws = ws_root / "w" / "sessions" / slow
    fast = await start_session(
        env,
        script(
            (
                "bash",
                {"command": "sleep 1; ls -a .. | grep -c sesn_; cat ../" + slow + "/secret.txt; echo rc=$?"},
            ),
            ("read", {"file_path": f"{slow_ws}/secret.txt"}),
            ("bash", {"command": "ls " + str(slow_ws)}),
            ("write", {"file_path": "mine.txt", "content": "fast's own"}),
            ("read", {"file_path": "mine.txt"}),
        ),
    )
    workers.append(WorkerProcess(server.base_url, env, ws_root / "w", "--max-idle", "2").start())
    fast_events = await wait_for_events(env.client, fast, end_turn, within=60)
    assert not end_turn(await events_of(env.client, slow))  # served at the same time, not one after the other
    got = results(fast_events)
    assert got[0][1].startswith("1\ncat: ../" + slow + "/secret.txt: No such file or directory\nrc=1")
    assert got[1] == (True, f"read: path '{slow_ws}/secret.txt' is outside the session's working directory")
    assert got[2][0] and "No such file or directory" in got[2][1]
    assert got[4] == (False, "fast's own")  # positive control
    slow_events = await wait_for_events(env.client, slow, end_turn, within=60)
    assert results(slow_events)[1] == (False, "slow's secret")


async def test_escape_attempts_fail_and_the_model_sees_why(
    server: Server, env: Env, ws_root: Path, workers: list[WorkerProcess]
) -> None:
    sid = await start_session(
        env,
        script(
            ("write", {"file_path": "inside.txt", "content": "inside"}),
            ("read", {"file_path": "/etc/shadow"}),
            ("bash", {"command": "cat /etc/shadow"}),
            ("write", {"file_path": "../outside.txt", "content": "x"}),
            ("bash", {"command": "ln -s /etc/passwd pw && ln -s " + str(ws_root) + " up && echo linked"}),
            ("read", {"file_path": "pw"}),
            ("write", {"file_path": "up/planted.txt", "content": "x"}),
            (
                "bash",
                {"command": "echo x > ../outside2.txt; mv inside.txt ../moved.txt; echo x > up/planted2.txt"},
            ),
            (
                "bash",
                {
                    "command": "env | grep -c ANTHROPIC; "
                    "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c ANTHROPIC"
                },
            ),
            ("read", {"file_path": "inside.txt"}),
        ),
    )
    workers.append(WorkerProcess(server.base_url, env, ws_root / "w", "--max-idle", "2").start())
    events = await wait_for_events(env.client, sid, end_turn, within=60)
    got = results(events)
    assert got[0] == (False, "wrote 6 bytes to inside.txt")
    assert got[1] == (True, "read: path '/etc/shadow' is outside the session's working directory")
    assert got[2][0] and "cat: /etc/shadow: Permission denied" in got[2][1]
    assert "<sandbox_violations>\ndeny file-access /etc/shadow (Permission denied)" in got[2][1]
    assert got[3] == (True, "write: path '../outside.txt' is outside the session's working directory")
    assert got[4] == (False, "linked")
    assert got[5] == (True, "read: path 'pw' is outside the session's working directory")
    assert got[6] == (True, "write: path 'up/planted.txt' is outside the session's working directory")
    assert got[7][0] and got[7][1].count("Read-only file system") + got[7][1].count("Permission denied") >= 3
    assert got[8] == (True, "0\n0")  # no ANTHROPIC_* variable anywhere in the sandbox (grep -c exits 1)
    assert got[9] == (False, "inside")  # positive control: the workspace itself works
    leftovers = set(os.listdir(ws_root / "w" / "sessions")) | set(os.listdir(ws_root))
    assert not leftovers & {"outside.txt", "outside2.txt", "moved.txt", "planted.txt", "planted2.txt"}
    transcript = json.dumps([e.model_dump(mode="json") for e in events])
    assert env.key not in transcript


async def test_egress_follows_the_allowlist(
    server: Server, env: Env, ws_root: Path, workers: list[WorkerProcess]
) -> None:
    async with http_origin() as allowed, http_origin() as other:
        settings = ws_root / "srt-settings.json"
        settings.write_text(json.dumps({"network": {"allowedDomains": [f"localhost:{allowed.port}"]}}))
        curl = "curl -sS --max-time 10 --noproxy '' -w ' code=%{http_code}'"
        sid = await start_session(
            env,
            script(
                ("bash", {"command": f"{curl} http://localhost:{allowed.port}/"}),
                ("bash", {"command": f"{curl} http://localhost:{other.port}/"}),
            ),
        )
        w = WorkerProcess(
            server.base_url, env, ws_root / "w", "--max-idle", "2", "--sandbox-settings", str(settings)
        )
        workers.append(w.start())
        events = await wait_for_events(env.client, sid, end_turn, within=60)
        ok, denied = results(events)
        assert ok == (False, "hello from origin\n code=200")
        assert (
            f"inwall sandbox: egress to localhost:{other.port} denied" in denied[1]
            and "code=403" in denied[1]
        )
        assert f"<sandbox_violations>\ndeny network-outbound localhost:{other.port}" in denied[1]
        assert allowed.connections == 1 and other.connections == 0
        assert await w.stop() == 0
    audit = ws_root / "w" / "audit.jsonl"
    decisions = [(r.get("decision"), r.get("port")) for r in records(audit) if r["kind"] == "egress"]
    assert ("allowed", allowed.port) in decisions and ("denied", other.port) in decisions
    assert verify_file(audit).ok


@pytest.mark.slow
async def test_sigterm_drains_the_call_in_flight(
    server: Server, env: Env, ws_root: Path, workers: list[WorkerProcess]
) -> None:
    sid = await start_session(
        env,
        script(
            ("bash", {"command": "touch started; sleep 2; echo slept"}),
            ("bash", {"command": "echo after; cat started && echo still-there"}),
        ),
    )
    first = WorkerProcess(server.base_url, env, ws_root / "a", "--max-idle", "30")
    workers.append(first.start())
    await wait_for_path(ws_root / "a" / "sessions" / sid / "started")
    first.signal(signal.SIGTERM)
    assert await first.wait(within=20) == 0, first.log()[-3000:]
    events = await events_of(env.client, sid)
    # the call in flight finished and its result was posted
    assert results(events)[:1] == [(False, "slept")], first.log()[-3000:]
    kinds = [r["kind"] for r in records(ws_root / "a" / "audit.jsonl")]
    assert kinds.index("worker_draining") < kinds.index("worker_stopped")
    assert verify_file(ws_root / "a" / "audit.jsonl").ok
    # the session is not stranded: another worker (another host) picks it up from the snapshot
    second = WorkerProcess(
        server.base_url,
        env,
        ws_root / "b",
        "--max-idle",
        "2",
        "--snapshot-dir",
        str(ws_root / "a" / "snapshots"),
    )
    workers.append(second.start())
    events = await wait_for_events(env.client, sid, end_turn, within=60)
    assert results(events)[1] == (False, "after\nstill-there"), second.log()[-3000:]


async def test_run_worker_in_process(server: Server, env: Env, ws_root: Path) -> None:
    """The programmatic entry: ``run_worker`` is ready when ``start`` returns and drains on ``shutdown``."""
    config = WorkerConfig.resolve(
        base_url=server.base_url,
        environment_id=env.environment_id,
        environment_key=env.key,
        workdir=ws_root / "inproc",
        env={},
        max_idle=1.0,
    )
    shutdown = anyio.Event()
    async with anyio.create_task_group() as tg:
        worker: Worker = await tg.start(
            lambda task_status: run_worker(config, shutdown=shutdown, task_status=task_status)
        )
        sid = await start_session(env, script(("bash", {"command": "echo in-process"})))
        events = await wait_for_events(env.client, sid, end_turn, within=60)
        assert results(events) == [(False, "in-process")]
        shutdown.set()
    assert worker.failed is None and worker.claimed >= 1
    assert verify_file(ws_root / "inproc" / "audit.jsonl").ok


async def test_a_drain_that_times_out_reports_the_call_as_interrupted(
    server: Server, env: Env, ws_root: Path, workers: list[WorkerProcess]
) -> None:
    sid = await start_session(env, script(("bash", {"command": "touch started; sleep 60"})))
    w = WorkerProcess(server.base_url, env, ws_root / "w", "--drain-timeout", "0.5")
    workers.append(w.start())
    await wait_for_path(ws_root / "w" / "sessions" / sid / "started")
    w.signal(signal.SIGTERM)
    assert await w.wait(within=20) == 0, w.log()[-3000:]
    events = await events_of(env.client, sid)
    assert results(events) == [(True, f"bash: {INTERRUPTED}")]  # reported, never silently lost
    outcomes = [r.get("outcome") for r in records(ws_root / "w" / "audit.jsonl") if r["kind"] == "tool_call"]
    assert outcomes == ["interrupted"]


async def test_a_host_that_cannot_sandbox_is_refused(ws_root: Path) -> None:
    settings = ws_root / "bad.json"
    settings.write_text(json.dumps({"bwrapPath": "/nonexistent/bwrap"}))
    proc = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "inwall.cli.main",
            "worker",
            "--base-url",
            "http://127.0.0.1:9",
            "--environment-id",
            "env_x",
            "--workdir",
            str(ws_root / "w"),
            "--sandbox-settings",
            str(settings),
        ],
        env={**os.environ, "ANTHROPIC_ENVIRONMENT_KEY": "k"},
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert (
        "refusing to start, tools cannot be sandboxed here" in err and "bwrapPath /nonexistent/bwrap" in err
    )
