"""The control plane killed with SIGKILL mid-turn resumes every turn from what it had committed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from anthropic import AsyncAnthropic

from tests.agent.models.fake_model_apis import API_KEY, Reply, anthropic_message, serve_fake
from tests.helpers import ServerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def _setup(client: AsyncAnthropic, model: str) -> tuple[str, str, str, str]:
    env = await client.beta.environments.create(name="restart", config={"type": "self_hosted"})
    agent = await client.beta.agents.create(name="a", model=model, tools=[{"type": "agent_toolset_20260401"}])
    minted = await client.post(f"/v1/inwall/environments/{env.id}/keys", cast_to=object, body={})
    session = await client.beta.sessions.create(agent=agent.id, environment_id=env.id)
    return env.id, agent.id, minted["key"], session.id  # type: ignore[index]


async def _events(client: AsyncAnthropic, session_id: str) -> list:  # type: ignore[type-arg]
    return [e async for e in client.beta.sessions.events.list(session_id, limit=1000)]


async def _until(client: AsyncAnthropic, session_id: str, pred, timeout: float = 30) -> list:  # type: ignore[no-untyped-def,type-arg]
    with anyio.fail_after(timeout):
        while True:
            try:
                events = await _events(client, session_id)
            except Exception:  # the server is restarting
                events = []
            if pred(events):
                return events
            await anyio.sleep(0.05)


def _ended(events: list) -> bool:  # type: ignore[type-arg]
    return any(e.type == "session.status_idle" and e.stop_reason.type == "end_turn" for e in events)


def _start_worker(base_url: str, env_id: str, key: str, workdir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(ANTHROPIC_BASE_URL=base_url, ANTHROPIC_ENVIRONMENT_ID=env_id, ANTHROPIC_ENVIRONMENT_KEY=key)
    return subprocess.Popen(
        [sys.executable, "-m", "inwall.demo.stock_worker", str(workdir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class Follower:
    """A client following a session as the SDK's runner does: stream, reconcile with the list, dedupe."""

    def __init__(self, base_url: str, key: str, session_id: str) -> None:
        self.base_url, self.key, self.session_id = base_url, key, session_id
        self.seen: dict[str, str] = {}  # id -> type, in the order first seen
        self.reconnects = 0

    def _take(self, ev: object) -> None:
        self.seen.setdefault(ev.id, ev.type)  # type: ignore[attr-defined]

    async def run(self) -> None:
        while True:
            try:
                async with AsyncAnthropic(base_url=self.base_url, api_key=self.key, max_retries=0) as client:
                    async with await client.beta.sessions.events.stream(self.session_id) as stream:
                        async for ev in client.beta.sessions.events.list(self.session_id, limit=1000):
                            self._take(ev)
                        async for ev in stream:
                            self._take(ev)
                            if ev.type == "session.status_idle" and ev.stop_reason.type == "end_turn":
                                return
            except Exception:  # the server is down: reconnect, as the SDK does
                self.reconnects += 1
                await anyio.sleep(0.2)


async def test_kill_while_a_worker_runs_a_tool(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    await server.start()
    workdir = tmp_path / "work"
    workdir.mkdir()
    worker = None
    try:
        async with AsyncAnthropic(
            base_url=server.base_url, api_key=server.admin_key, max_retries=0
        ) as client:
            env_id, _, key, session_id = await _setup(client, "inwall-scripted")
            worker = _start_worker(server.base_url, env_id, key, workdir)
            follower = Follower(server.base_url, server.admin_key, session_id)
            script = "\n".join(
                [
                    "call bash " + json.dumps({"command": "sleep 1.5; echo slow > slow.txt; echo slow"}),
                    "call bash " + json.dumps({"command": "cat slow.txt"}),
                ]
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(follower.run)
                await client.beta.sessions.events.send(
                    session_id,
                    events=[{"type": "user.message", "content": [{"type": "text", "text": script}]}],
                )
                await _until(client, session_id, lambda ev: any(e.type == "agent.tool_use" for e in ev))
                server.kill()  # mid-turn: the first bash is running on the worker
                await server.start()
                events = await _until(client, session_id, _ended, timeout=60)
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(10)
        server.terminate()

    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), "no event may be duplicated"
    # The following client lived through the crash: after deduping by id it saw every event, once.
    assert follower.reconnects >= 1
    assert list(follower.seen) == ids
    assert [e.type for e in events].count("agent.tool_use") == 2, "the turn must not re-issue tool calls"
    answer = [e for e in events if e.type == "agent.message"][-1].content[0].text
    assert answer.splitlines() == ["bash [4 chars]: slow", "bash [4 chars]: slow"]


async def test_kill_while_the_model_is_thinking(tmp_path: Path) -> None:
    async with serve_fake("anthropic") as fake:
        fake.push(Reply(hang=True), anthropic_message([{"type": "text", "text": "after the restart"}]))
        env = {"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": API_KEY}
        server = ServerProcess(tmp_path / "data", env=env)
        await server.start()
        try:
            async with AsyncAnthropic(
                base_url=server.base_url, api_key=server.admin_key, max_retries=0
            ) as client:
                _, _, _, session_id = await _setup(client, "claude-test-model")
                await client.beta.sessions.events.send(
                    session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}]
                )
                with anyio.fail_after(15):
                    while not fake.seen:
                        await anyio.sleep(0.02)
                server.kill()  # the model call is in flight and nothing of it was committed
                await server.start()
                events = await _until(client, session_id, _ended)
                session = await client.beta.sessions.retrieve(session_id)
        finally:
            server.terminate()
    messages = [e for e in events if e.type == "agent.message"]
    assert [m.content[0].text for m in messages] == ["after the restart"]
    assert session.status == "idle"
    assert len(fake.seen) == 2  # the interrupted call was made again, once
    user_messages = [e for e in events if e.type == "user.message"]
    assert len(user_messages) == 1 and user_messages[0].processed_at is not None
