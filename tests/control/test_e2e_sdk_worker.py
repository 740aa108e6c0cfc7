"""The official SDK end to end: its client drives a session, its stock EnvironmentWorker serves the tools."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from anthropic import AsyncAnthropic
from anthropic.lib.environments import EnvironmentWorker

from tests.helpers import Server

pytestmark = pytest.mark.anyio


async def test_stock_worker_serves_a_scripted_session(server: Server, tmp_path: Path) -> None:
    async with server.client() as client, server.client() as worker_client:
        await _scenario(client, worker_client, tmp_path)


async def _scenario(client: AsyncAnthropic, worker_client: AsyncAnthropic, tmp_path: Path) -> None:
    env = await client.beta.environments.create(name="e2e", config={"type": "self_hosted"})
    agent = await client.beta.agents.create(
        name="scripted", model="inwall-scripted", tools=[{"type": "agent_toolset_20260401"}]
    )
    minted = await client.post(f"/v1/inwall/environments/{env.id}/keys", cast_to=object, body={})
    env_key = minted["key"]  # type: ignore[index]
    session = await client.beta.sessions.create(agent=agent.id, environment_id=env.id)
    assert session.status == "idle"

    script = "\n".join(
        [
            "call bash " + json.dumps({"command": "echo hello from bash"}),
            "call write " + json.dumps({"file_path": "note.txt", "content": "written"}),
            "call read " + json.dumps({"file_path": "note.txt"}),
        ]
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    worker = EnvironmentWorker(
        worker_client, environment_id=env.id, environment_key=env_key, workdir=workdir, max_idle=5
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": script}]}]
        )
        with anyio.fail_after(30):
            while True:
                events = [e async for e in client.beta.sessions.events.list(session.id, limit=1000)]
                idle = [
                    e for e in events if e.type == "session.status_idle" and e.stop_reason.type == "end_turn"
                ]
                if idle:
                    break
                await anyio.sleep(0.1)
        tg.cancel_scope.cancel()

    types = [e.type for e in events]
    assert types.count("agent.tool_use") == 3
    assert types.count("user.tool_result") == 3
    answer = [e for e in events if e.type == "agent.message"][-1].content[0].text
    lines = answer.splitlines()
    assert lines[0] == "bash [15 chars]: hello from bash"
    assert lines[1] == "write [25 chars]: wrote 7 bytes to note.txt"
    assert lines[2] == "read [7 chars]: written"
    assert (workdir / "note.txt").read_text() == "written"
