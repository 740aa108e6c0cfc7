from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
from anthropic import AsyncAnthropic


def mcp_agent(url: str, *, policy: str = "always_allow", name: str = "crm") -> dict[str, Any]:
    return {
        "name": "mcp-agent",
        "model": "inwall-scripted",
        "mcp_servers": [{"type": "url", "name": name, "url": url}],
        "tools": [
            {
                "type": "mcp_toolset",
                "mcp_server_name": name,
                "default_config": {"permission_policy": {"type": policy}},
            }
        ],
    }


async def new_session(client: AsyncAnthropic, agent: dict[str, Any]) -> str:
    env = await client.beta.environments.create(name="mcp", config={"type": "self_hosted"})
    created = await client.beta.agents.create(**agent)
    session = await client.beta.sessions.create(agent=created.id, environment_id=env.id)
    return session.id


async def run_turn(
    client: AsyncAnthropic, session_id: str, lines: list[str], *, timeout: float = 20
) -> tuple[list[Any], str]:
    """Send one scripted user message, wait for its turn to end; return (the turn's events, the answer)."""
    before = [e async for e in client.beta.sessions.events.list(session_id, limit=1000)]
    done = sum(1 for e in before if _ends(e))
    await client.beta.sessions.events.send(
        session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": "\n".join(lines)}]}]
    )
    with anyio.fail_after(timeout):
        while True:
            events = [e async for e in client.beta.sessions.events.list(session_id, limit=1000)]
            if sum(1 for e in events if _ends(e)) > done:
                break
            await anyio.sleep(0.05)
    fresh = events[len(before) :]
    answers = [e for e in fresh if e.type == "agent.message"]
    return fresh, answers[-1].content[0].text if answers else ""


def _ends(e: Any) -> bool:
    return e.type == "session.status_idle" and e.stop_reason.type != "requires_action"


def call(tool: str, args: dict[str, Any] | None = None) -> str:
    return f"call {tool} {json.dumps(args or {})}"


Predicate = Callable[[Any], bool]
