"""Sessions through the official SDK: create forms, list filters and order, update, archive, delete."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import anyio
import pytest
from anthropic import AsyncAnthropic
from anthropic.types.beta import BetaManagedAgentsAgentToolset20260401, BetaManagedAgentsCustomTool

from tests.helpers import events_of, user_message, wait_for_event

pytestmark = pytest.mark.anyio

CUSTOM_TOOL: Any = {
    "type": "custom",
    "name": "lookup",
    "description": "Look something up.",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
}


@dataclass
class World:
    client: AsyncAnthropic
    env_id: str
    agent_id: str


async def _world(client: AsyncAnthropic) -> World:
    env = await client.beta.environments.create(name="s")
    agent = await client.beta.agents.create(
        name="s", model="inwall-scripted", system="v1", tools=[{"type": "agent_toolset_20260401"}]
    )
    return World(client, env.id, agent.id)


@pytest.fixture
async def world(client: AsyncAnthropic) -> AsyncIterator[World]:
    yield await _world(client)


async def test_create_by_id_pins_the_latest_version(world: World) -> None:
    c = world.client
    await c.beta.agents.update(world.agent_id, system="v2")
    session = await c.beta.sessions.create(
        agent=world.agent_id, environment_id=world.env_id, title="t", metadata={"k": "v"}
    )
    assert session.type == "session"
    assert session.id.startswith("sesn_")
    assert session.status == "idle"
    assert session.environment_id == world.env_id
    assert (session.title, session.metadata) == ("t", {"k": "v"})
    assert (session.agent.id, session.agent.version, session.agent.system) == (world.agent_id, 2, "v2")
    assert session.agent.model.id == "inwall-scripted"
    assert isinstance(session.agent.tools[0], BetaManagedAgentsAgentToolset20260401)
    assert (session.resources, session.vault_ids, session.outcome_evaluations) == ([], [], [])
    assert session.archived_at is None

    fetched = await c.beta.sessions.retrieve(session.id)
    assert fetched.id == session.id
    assert fetched.agent.model_dump() == session.agent.model_dump()


async def test_create_with_a_pinned_version(world: World) -> None:
    c = world.client
    await c.beta.agents.update(world.agent_id, system="v2")
    session = await c.beta.sessions.create(
        agent={"type": "agent", "id": world.agent_id, "version": 1}, environment_id=world.env_id
    )
    assert (session.agent.version, session.agent.system) == (1, "v1")
    latest = await c.beta.sessions.create(
        agent={"type": "agent", "id": world.agent_id}, environment_id=world.env_id
    )
    assert (latest.agent.version, latest.agent.system) == (2, "v2")
    with pytest.raises(anthropic.NotFoundError):
        await c.beta.sessions.create(
            agent={"type": "agent", "id": world.agent_id, "version": 9}, environment_id=world.env_id
        )


async def test_create_with_overrides_replaces_tools(world: World) -> None:
    c = world.client
    session = await c.beta.sessions.create(
        agent={
            "type": "agent_with_overrides",
            "id": world.agent_id,
            "tools": [CUSTOM_TOOL],
            "system": "override",
        },
        environment_id=world.env_id,
    )
    [tool] = session.agent.tools
    assert isinstance(tool, BetaManagedAgentsCustomTool)
    assert tool.name == "lookup"
    assert session.agent.system == "override"
    assert session.agent.id == world.agent_id
    # The agent itself is untouched.
    agent = await c.beta.agents.retrieve(world.agent_id)
    assert (agent.version, agent.system) == (1, "v1")
    assert isinstance(agent.tools[0], BetaManagedAgentsAgentToolset20260401)


async def test_create_refuses_an_archived_agent(world: World) -> None:
    await world.client.beta.agents.archive(world.agent_id)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await world.client.beta.sessions.create(agent=world.agent_id, environment_id=world.env_id)
    assert "archived" in caught.value.message


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"budget": {"type": "limit", "max_list_cost": {"amount": "1.00", "currency": "USD"}}}, "budget"),
        ({"resources": [{"type": "file", "file_id": "file_1"}]}, "resources"),
        ({"vault_ids": ["vlt_1"]}, "vault_ids"),
    ],
)
async def test_unsupported_fields_are_refused_clearly(
    world: World, extra: dict[str, Any], needle: str
) -> None:
    c = world.client
    before = [s.id async for s in c.beta.sessions.list(include_archived=True)]
    with pytest.raises(anthropic.BadRequestError) as caught:
        await c.beta.sessions.create(agent=world.agent_id, environment_id=world.env_id, **extra)
    assert caught.value.type == "invalid_request_error"
    assert needle in caught.value.message
    assert "not supported" in caught.value.message
    assert [s.id async for s in c.beta.sessions.list(include_archived=True)] == before


async def test_list_filters_order_and_pages(fresh_client: AsyncAnthropic) -> None:
    world = await _world(fresh_client)
    c = world.client
    other_agent = await c.beta.agents.create(name="other", model="inwall-scripted")
    created = [
        (await c.beta.sessions.create(agent=world.agent_id, environment_id=world.env_id)).id for _ in range(4)
    ]
    other = (await c.beta.sessions.create(agent=other_agent.id, environment_id=world.env_id)).id
    everything = [*created, other]

    # A running session: a bash call waiting for a worker that never comes.
    running = created[1]
    await c.beta.sessions.events.send(
        running,
        events=[user_message("call bash " + json.dumps({"command": "true"}))],
    )
    await wait_for_event(c, running, lambda e: e.type == "agent.tool_use")
    assert (await c.beta.sessions.retrieve(running)).status == "running"
    # A terminated one.
    archived = created[2]
    await c.beta.sessions.archive(archived)

    desc = [s.id async for s in c.beta.sessions.list()]
    assert desc == [x for x in reversed(everything) if x != archived], "default order is newest first"
    asc = [s.id async for s in c.beta.sessions.list(order="asc")]
    assert asc == list(reversed(desc))

    first = await c.beta.sessions.list(limit=2, order="asc")
    assert [s.id for s in first.data] == asc[:2]
    assert first.next_page
    assert [s.id async for s in c.beta.sessions.list(limit=2, order="asc")] == asc
    assert [s.id async for s in c.beta.sessions.list(limit=1)] == desc

    assert [s.id async for s in c.beta.sessions.list(statuses=["running"])] == [running]
    idle_or_running = {s.id async for s in c.beta.sessions.list(statuses=["idle", "running"])}
    assert idle_or_running == set(everything) - {archived}
    assert [s.id async for s in c.beta.sessions.list(statuses=["terminated"])] == []
    assert [s.id async for s in c.beta.sessions.list(statuses=["terminated"], include_archived=True)] == [
        archived
    ]
    assert [s.id async for s in c.beta.sessions.list(agent_id=other_agent.id)] == [other]
    mine = [
        s.id async for s in c.beta.sessions.list(agent_id=world.agent_id, order="asc", include_archived=True)
    ]
    assert mine == created
    with pytest.raises(anthropic.BadRequestError):
        await c.beta.sessions.list(statuses=["sleeping"])  # type: ignore[list-item]  # deliberately invalid


async def test_update_title_and_metadata(world: World) -> None:
    c = world.client
    session = await c.beta.sessions.create(
        agent=world.agent_id, environment_id=world.env_id, metadata={"keep": "1", "drop": "2"}
    )
    updated = await c.beta.sessions.update(session.id, title="renamed", metadata={"drop": None, "add": "3"})
    assert updated.title == "renamed"
    assert updated.metadata == {"keep": "1", "add": "3"}
    again = await c.beta.sessions.retrieve(session.id)
    assert (again.title, again.metadata) == ("renamed", {"keep": "1", "add": "3"})

    [event] = [e for e in await events_of(c, session.id) if e.type == "session.updated"]
    assert event.title == "renamed"
    assert event.metadata == {"keep": "1", "add": "3"}

    cleared = await c.beta.sessions.update(session.id, title=None)
    assert cleared.title is None
    assert cleared.metadata == {"keep": "1", "add": "3"}


async def test_archive_terminates(world: World) -> None:
    c = world.client
    session = await c.beta.sessions.create(agent=world.agent_id, environment_id=world.env_id)
    archived = await c.beta.sessions.archive(session.id)
    assert archived.status == "terminated"
    assert archived.archived_at is not None
    assert (await c.beta.sessions.retrieve(session.id)).status == "terminated"
    types = [e.type for e in await events_of(c, session.id)]
    assert types.count("session.status_terminated") == 1
    # Its work item is stopped, and it takes no more input.
    [item] = [w async for w in c.beta.environments.work.list(world.env_id)]
    assert item.state == "stopped"
    with pytest.raises(anthropic.BadRequestError):
        await c.beta.sessions.events.send(session.id, events=[user_message("hello?")])
    # Archiving again is harmless.
    assert (await c.beta.sessions.archive(session.id)).status == "terminated"
    types = [e.type for e in await events_of(c, session.id)]
    assert types.count("session.status_terminated") == 1


async def test_delete(world: World) -> None:
    c = world.client
    session = await c.beta.sessions.create(agent=world.agent_id, environment_id=world.env_id)
    keep = await c.beta.sessions.create(agent=world.agent_id, environment_id=world.env_id)
    deleted = await c.beta.sessions.delete(session.id)
    assert (deleted.id, deleted.type) == (session.id, "session_deleted")
    with pytest.raises(anthropic.NotFoundError):
        await c.beta.sessions.retrieve(session.id)
    with pytest.raises(anthropic.NotFoundError):
        await c.beta.sessions.events.list(session.id)
    with pytest.raises(anthropic.NotFoundError):
        await c.beta.sessions.delete(session.id)
    listed = [s.id async for s in c.beta.sessions.list(include_archived=True)]
    assert keep.id in listed
    assert session.id not in listed
    items = {w.data.id: w.state async for w in c.beta.environments.work.list(world.env_id)}
    assert items == {session.id: "stopped", keep.id: "queued"}


async def test_delete_mid_turn_ends_the_turn_for_good(world: World) -> None:
    """The turn waiting for a worker stops with the delete: it queues no new work item afterwards."""
    c = world.client
    session = await c.beta.sessions.create(agent=world.agent_id, environment_id=world.env_id)
    await c.beta.sessions.events.send(session.id, events=[user_message('call bash {"command": "true"}')])
    with anyio.fail_after(10):
        while (await c.beta.sessions.retrieve(session.id)).status != "running":
            await anyio.sleep(0.02)
    await c.beta.sessions.delete(session.id)
    await anyio.sleep(2.5)  # more than two of the runner's wait slices (1 s in tests)
    states = [w.state async for w in c.beta.environments.work.list(world.env_id) if w.data.id == session.id]
    assert states and set(states) == {"stopped"}
