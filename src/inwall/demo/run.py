"""The demo: a server, a self-hosted environment, a worker, and a session you can watch.

Everything runs on this machine with embedded defaults (SQLite in a temporary
directory). Without ``ANTHROPIC_API_KEY`` the agent is the scripted model, so
the demo needs no network at all; with a key it is Claude doing a small task.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anthropic import AsyncAnthropic
from rich.console import Console

from inwall.demo.transcript import Transcript
from inwall.server.serve import Bound, serve
from inwall.server.settings import ServerSettings

__all__ = ["DemoResult", "run_demo"]

SCRIPTED_TASK = "\n".join(
    [
        "Please prepare the quarterly note, using every tool once.",
        'call bash {"command": "echo \\"hello from $(uname -s), inside the perimeter\\""}',
        'call write {"file_path": "report.md", "content": "# Quarterly note\\nrevenue: 42\\ncosts: 17\\n"}',
        'call edit {"file_path": "report.md", "old_string": "costs: 17", "new_string": "costs: 19"}',
        'call read {"file_path": "report.md"}',
        'call glob {"pattern": "*.md"}',
        'call grep {"pattern": "revenue"}',
        "call bash {\"command\": \"python3 -c 'print(\\\"margin:\\\", 42 - 19)'\"}",
    ]
)
CLAUDE_TASK = (
    "Write a Python script fib.py that prints the first 15 Fibonacci numbers, run it with python3, "
    "then write its output to fib.txt and show me the file listing of the working directory."
)


@dataclass
class DemoResult:
    session_id: str
    status: str
    event_types: list[str]
    tool_calls: int
    elapsed_s: float

    def as_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "status": self.status,
            "event_types": self.event_types,
            "tool_calls": self.tool_calls,
            "elapsed_s": round(self.elapsed_s, 3),
        }


@contextlib.asynccontextmanager
async def _server(data_dir: Path) -> AsyncIterator[Bound]:
    settings = ServerSettings.from_env(data_dir, port=0, log_level="warning")
    async with anyio.create_task_group() as tg:
        bound: Bound = await tg.start(lambda task_status: serve(settings, task_status=task_status))
        try:
            yield bound
        finally:
            tg.cancel_scope.cancel()


@contextlib.contextmanager
def _worker_process(base_url: str, environment_id: str, key: str, workdir: Path, log: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "INWALL_", "OPENAI_"))}
    env.update(
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_ENVIRONMENT_ID=environment_id,
        ANTHROPIC_ENVIRONMENT_KEY=key,
    )
    with log.open("wb") as errlog:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "inwall.demo.stock_worker", str(workdir)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errlog,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


async def run_demo(console: Console, *, model: str | None = None, timeout_s: float = 180.0) -> DemoResult:
    use_claude = bool(os.environ.get("ANTHROPIC_API_KEY")) and model != "inwall-scripted"
    model_id = model or (os.environ.get("INWALL_DEMO_MODEL", "claude-sonnet-4-5") if use_claude else "inwall-scripted")
    task = CLAUDE_TASK if use_claude else SCRIPTED_TASK
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="inwall-demo-") as tmp:
        root = Path(tmp)
        workdir = root / "workspace"
        workdir.mkdir()
        console.print(f"[bold]inwall demo[/bold] — model [cyan]{model_id}[/cyan], data in {root}")
        async with _server(root / "data") as bound:
            admin_key = (root / "data" / "admin_key").read_text().strip()
            console.print(f"  control plane on {bound.base_url}")
            async with AsyncAnthropic(base_url=bound.base_url, api_key=admin_key) as client:
                env = await client.beta.environments.create(name="demo-perimeter", config={"type": "self_hosted"})
                agent = await client.beta.agents.create(
                    name="demo-agent",
                    model=model_id,
                    system="You are a careful assistant working inside a sandboxed workspace.",
                    tools=[{"type": "agent_toolset_20260401"}],
                )
                minted: Any = await client.post(f"/v1/inwall/environments/{env.id}/keys", cast_to=object, body={})
                with _worker_process(bound.base_url, env.id, minted["key"], workdir, root / "worker.log"):
                    console.print(f"  worker polling environment {env.id}")
                    session = await client.beta.sessions.create(
                        agent=agent.id, environment_id=env.id, title="inwall demo"
                    )
                    status = await _watch(client, session.id, task, Transcript(console), timeout_s)
                events = [e async for e in client.beta.sessions.events.list(session.id, limit=1000)]
        kinds = [e.type for e in events]
        tool_calls = sum(k in ("agent.tool_use", "agent.custom_tool_use", "agent.mcp_tool_use") for k in kinds)
        return DemoResult(session.id, status, kinds, tool_calls, time.monotonic() - started)


async def _watch(client: AsyncAnthropic, session_id: str, task: str, transcript: Transcript, timeout_s: float) -> str:
    """Stream the session live until its turn ends; returns the final status."""
    seen: set[str] = set()
    status = "running"
    with anyio.fail_after(timeout_s):
        async with await client.beta.sessions.events.stream(session_id) as stream:
            await client.beta.sessions.events.send(
                session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": task}]}]
            )
            async for ev in stream:
                if ev.id in seen:
                    continue
                seen.add(ev.id)
                transcript.show(ev)
                if ev.type == "session.status_idle" and ev.stop_reason.type != "requires_action":
                    status = "idle"
                    break
                if ev.type == "session.status_terminated":
                    status = "terminated"
                    break
    return status


def main(*, as_json: bool, model: str | None) -> int:
    console = Console(stderr=as_json, highlight=False)
    try:
        result = anyio.run(lambda: run_demo(console, model=model))
    except TimeoutError:
        console.print("[red]demo timed out: the session did not finish[/red]")
        return 1
    console.print(
        f"\n[bold green]done[/bold green]: session {result.session_id} is {result.status} after "
        f"{result.tool_calls} tool calls in {result.elapsed_s:.1f}s"
    )
    if as_json:
        print(json.dumps(result.as_json()))
    return 0 if result.status == "idle" else 1
