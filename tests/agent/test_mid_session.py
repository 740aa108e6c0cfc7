"""Tools and MCP servers change mid-session without losing the conversation."""

from __future__ import annotations

from pathlib import Path

import anthropic
import anyio
import pytest

from tests.helpers import fast_settings, running_server, serve_asgi
from tests.mcp.conftest import call, mcp_agent, new_session, run_turn
from tests.mcp.servers import CrmState, make_app

pytestmark = pytest.mark.anyio


async def test_an_mcp_server_swapped_in_mid_session_is_called(tmp_path: Path) -> None:
    first, second = CrmState(), CrmState(tools=["swapped"])
    async with serve_asgi(make_app(first)) as a, serve_asgi(make_app(second)) as b:
        async with running_server(fast_settings(tmp_path)) as server, server.client() as client:
            session_id = await new_session(client, mcp_agent(f"{a}/mcp"))
            _, answer = await run_turn(client, session_id, [call("mcp__crm__t0")])
            assert answer == "mcp__crm__t0 [5 chars]: t0 ok"
            before = await client.beta.sessions.retrieve(session_id)

            swapped = mcp_agent(f"{b}/mcp")
            updated = await client.beta.sessions.update(
                session_id, agent={"mcp_servers": swapped["mcp_servers"], "tools": swapped["tools"]}
            )
            assert updated.agent.mcp_servers[0].url == f"{b}/mcp"
            assert updated.agent.version == before.agent.version  # no new agent version

            _events, answer = await run_turn(
                client, session_id, [call("mcp__crm__swapped"), call("mcp__crm__t0")]
            )
            history = [e async for e in client.beta.sessions.events.list(session_id, limit=1000)]
    lines = answer.splitlines()
    assert lines[0] == "mcp__crm__swapped [10 chars]: swapped ok"
    assert "not available" in lines[1]  # the old server's tools are gone with it
    assert ("swapped", {}) in second.calls
    updates = [e for e in history if e.type == "session.updated"]
    assert len(updates) == 1 and updates[0].agent.mcp_servers[0].url == f"{b}/mcp"
    # The transcript is untouched: the first turn is still there, in order, before the change.
    kinds = [e.type for e in history]
    assert kinds.index("session.updated") > kinds.index("agent.mcp_tool_result")
    assert (
        next(e.content[0].text for e in history if e.type == "agent.message")
        == "mcp__crm__t0 [5 chars]: t0 ok"
    )


async def test_changes_are_refused_while_a_turn_runs(tmp_path: Path) -> None:
    async with running_server(fast_settings(tmp_path)) as server, server.client() as client:
        env = await client.beta.environments.create(name="busy", config={"type": "self_hosted"})
        agent = await client.beta.agents.create(
            name="a", model="inwall-scripted", tools=[{"type": "agent_toolset_20260401"}]
        )
        session = await client.beta.sessions.create(agent=agent.id, environment_id=env.id)
        await client.beta.sessions.events.send(
            session.id,
            events=[
                {
                    "type": "user.message",
                    "content": [{"type": "text", "text": call("bash", {"command": "true"})}],
                }
            ],
        )
        with anyio.fail_after(10):  # no worker: the turn waits for one, running
            while (await client.beta.sessions.retrieve(session.id)).status != "running":
                await anyio.sleep(0.05)
        with pytest.raises(anthropic.ConflictError, match="interrupt"):
            await client.beta.sessions.update(session.id, agent={"tools": []})
        await client.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
        with anyio.fail_after(10):
            while (await client.beta.sessions.retrieve(session.id)).status != "idle":
                await anyio.sleep(0.05)
        # Idle now: the change goes through.
        updated = await client.beta.sessions.update(
            session.id,
            agent={
                "tools": [{"type": "agent_toolset_20260401", "configs": [{"name": "bash", "enabled": False}]}]
            },
        )
        assert updated.agent.tools[0].configs[0].enabled is False
        # A disabled tool cannot run even if the model asks for it.
        events, answer = await run_turn(client, session.id, [call("bash", {"command": "touch nope"})])
    assert answer == "bash [52 chars]: Error: tool 'bash' is not available in this session."
    refused = [e for e in events if e.type == "agent.tool_use"]
    assert refused and refused[0].evaluated_permission == "deny"
