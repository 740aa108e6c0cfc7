"""Agents through the official SDK: versions, update, archive, list, and what the server rejects."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from anthropic import AsyncAnthropic
from anthropic.types.beta import (
    BetaManagedAgentsAgentToolset20260401,
    BetaManagedAgentsCustomTool,
    BetaManagedAgentsMCPToolset,
    BetaManagedAgentsModelConfig,
)

pytestmark = pytest.mark.anyio

CUSTOM_TOOL: Any = {
    "type": "custom",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_create_resolves_model_and_tool_defaults(client: AsyncAnthropic) -> None:
    agent = await client.beta.agents.create(
        name="defaults",
        model="inwall-scripted",
        tools=[
            {
                "type": "agent_toolset_20260401",
                "configs": [{"name": "bash"}, {"name": "read", "enabled": False}],
            },
            {"type": "mcp_toolset", "mcp_server_name": "docs", "configs": [{"name": "search"}]},
            CUSTOM_TOOL,
        ],
        mcp_servers=[{"type": "url", "name": "docs", "url": "http://127.0.0.1:9/mcp"}],
    )
    assert agent.type == "agent"
    assert agent.id
    assert agent.version == 1
    # A bare model string comes back in object form.
    assert isinstance(agent.model, BetaManagedAgentsModelConfig)
    assert agent.model.id == "inwall-scripted"
    assert agent.metadata == {}
    assert agent.execution_identity.type == "service_account"
    assert agent.archived_at is None

    toolset, mcp, custom = agent.tools
    assert isinstance(toolset, BetaManagedAgentsAgentToolset20260401)
    assert toolset.default_config.enabled is True
    assert toolset.default_config.permission_policy.type == "always_allow"
    by_name = {c.name: c for c in toolset.configs}
    assert set(by_name) == {"bash", "read"}
    for name, cfg in by_name.items():
        assert cfg.type == name, "every config entry carries `type` (else the SDK parses it as bash)"
        assert cfg.permission_policy.type == "always_allow"
    assert by_name["bash"].enabled is True
    assert by_name["read"].enabled is False

    assert isinstance(mcp, BetaManagedAgentsMCPToolset)
    assert mcp.mcp_server_name == "docs"
    assert mcp.default_config.enabled is True
    assert mcp.default_config.permission_policy.type == "always_ask"
    assert [(c.name, c.enabled, c.permission_policy.type) for c in mcp.configs] == [
        ("search", True, "always_ask")
    ]

    assert isinstance(custom, BetaManagedAgentsCustomTool)
    assert custom.name == "get_weather"
    assert custom.input_schema.required == ["city"]
    assert [(s.name, s.url) for s in agent.mcp_servers] == [("docs", "http://127.0.0.1:9/mcp")]


async def test_explicit_policies_are_kept(client: AsyncAnthropic) -> None:
    agent = await client.beta.agents.create(
        name="policies",
        model={"id": "inwall-scripted", "effort": "low"},
        tools=[
            {
                "type": "agent_toolset_20260401",
                "default_config": {"permission_policy": {"type": "always_ask"}},
                "configs": [{"name": "glob", "type": "glob", "permission_policy": {"type": "always_allow"}}],
            }
        ],
    )
    assert agent.model.effort is not None
    assert agent.model.effort.type == "low"
    toolset = agent.tools[0]
    assert isinstance(toolset, BetaManagedAgentsAgentToolset20260401)
    assert toolset.default_config.permission_policy.type == "always_ask"
    [glob] = toolset.configs
    assert (glob.type, glob.permission_policy.type) == ("glob", "always_allow")


async def test_retrieve_latest_and_pinned_versions(client: AsyncAnthropic) -> None:
    agent = await client.beta.agents.create(name="v", model="inwall-scripted", system="first")
    v2 = await client.beta.agents.update(agent.id, version=1, system="second")
    assert v2.version == 2

    latest = await client.beta.agents.retrieve(agent.id)
    assert (latest.version, latest.system) == (2, "second")
    pinned = await client.beta.agents.retrieve(agent.id, version=1)
    assert (pinned.version, pinned.system) == (1, "first")
    with pytest.raises(anthropic.NotFoundError):
        await client.beta.agents.retrieve(agent.id, version=3)
    with pytest.raises(anthropic.NotFoundError):
        await client.beta.agents.retrieve("agent_does_not_exist")


async def test_update_makes_a_version_only_when_something_changed(client: AsyncAnthropic) -> None:
    agent = await client.beta.agents.create(
        name="same", model="inwall-scripted", description="d", metadata={"team": "a"}
    )
    unchanged = await client.beta.agents.update(agent.id, version=1, name="same", description="d")
    assert unchanged.version == 1
    unchanged = await client.beta.agents.update(agent.id, metadata={"team": "a"})
    assert unchanged.version == 1

    changed = await client.beta.agents.update(agent.id, version=1, metadata={"team": None, "owner": "ct"})
    assert changed.version == 2
    assert changed.metadata == {"owner": "ct"}
    assert changed.name == "same"  # omitted fields are preserved
    assert changed.description == "d"

    cleared = await client.beta.agents.update(agent.id, description="")
    assert cleared.version == 3
    assert cleared.description is None

    versions = [v async for v in client.beta.agents.versions.list(agent.id)]
    assert sorted(v.version for v in versions) == [1, 2, 3]
    assert all(v.id == agent.id for v in versions)
    assert {v.version: v.metadata for v in versions} == {
        1: {"team": "a"},
        2: {"owner": "ct"},
        3: {"owner": "ct"},
    }


async def test_stale_version_is_a_conflict(client: AsyncAnthropic) -> None:
    agent = await client.beta.agents.create(name="occ", model="inwall-scripted")
    await client.beta.agents.update(agent.id, version=1, system="won")
    with pytest.raises(anthropic.ConflictError) as caught:
        await client.beta.agents.update(agent.id, version=1, system="lost")
    assert caught.value.status_code == 409
    assert (await client.beta.agents.retrieve(agent.id)).system == "won"


async def test_archive(client: AsyncAnthropic) -> None:
    agent = await client.beta.agents.create(name="old", model="inwall-scripted")
    archived = await client.beta.agents.archive(agent.id)
    assert archived.archived_at is not None
    assert (await client.beta.agents.retrieve(agent.id)).archived_at is not None
    listed = [a.id async for a in client.beta.agents.list()]
    assert agent.id not in listed
    listed = [a.id async for a in client.beta.agents.list(include_archived=True)]
    assert agent.id in listed
    with pytest.raises(anthropic.BadRequestError):
        await client.beta.agents.update(agent.id, system="too late")


async def test_list_walks_every_page(fresh_client: AsyncAnthropic) -> None:
    client = fresh_client
    ids = {(await client.beta.agents.create(name=f"a{i}", model="inwall-scripted")).id for i in range(5)}

    first = await client.beta.agents.list(limit=2)
    assert len(first.data) == 2
    assert first.next_page
    pages = [first]
    while pages[-1].has_next_page():
        assert len(pages) < 10
        pages.append(await pages[-1].get_next_page())
    assert pages[-1].next_page is None
    seen = [a.id for p in pages for a in p.data]
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == ids

    auto = [a.id async for a in client.beta.agents.list(limit=2)]
    assert auto == seen


async def test_versions_list_pages(client: AsyncAnthropic) -> None:
    agent = await client.beta.agents.create(name="many", model="inwall-scripted")
    for i in range(4):
        await client.beta.agents.update(agent.id, system=f"s{i}")
    first = await client.beta.agents.versions.list(agent.id, limit=2)
    assert len(first.data) == 2
    assert first.next_page
    all_versions = [v.version async for v in client.beta.agents.versions.list(agent.id, limit=2)]
    assert sorted(all_versions) == [1, 2, 3, 4, 5]


async def test_unknown_field_is_named(client: AsyncAnthropic) -> None:
    before = [a.id async for a in client.beta.agents.list(include_archived=True)]
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.beta.agents.create(name="x", model="inwall-scripted", extra_body={"temperature_knob": 3})
    assert caught.value.type == "invalid_request_error"
    assert "temperature_knob" in caught.value.message
    assert [a.id async for a in client.beta.agents.list(include_archived=True)] == before


@pytest.mark.parametrize(
    ("tools", "servers", "needle"),
    [
        pytest.param(
            [], [{"type": "url", "name": "lonely", "url": "http://127.0.0.1:9"}], "lonely", id="unreferenced"
        ),
        pytest.param(
            [{"type": "mcp_toolset", "mcp_server_name": "ghost"}], [], "ghost", id="unknown-server-in-toolset"
        ),
        pytest.param(
            [{"type": "mcp_toolset", "mcp_server_name": "dup"}],
            [
                {"type": "url", "name": "dup", "url": "http://127.0.0.1:9/a"},
                {"type": "url", "name": "dup", "url": "http://127.0.0.1:9/b"},
            ],
            "unique",
            id="duplicate-server-names",
        ),
        pytest.param([CUSTOM_TOOL, CUSTOM_TOOL], [], "unique", id="duplicate-custom-tool-names"),
    ],
)
async def test_invalid_tool_configuration(
    client: AsyncAnthropic, tools: list[Any], servers: list[Any], needle: str
) -> None:
    before = [a.id async for a in client.beta.agents.list(include_archived=True)]
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.beta.agents.create(name="bad", model="inwall-scripted", tools=tools, mcp_servers=servers)
    assert needle in caught.value.message
    assert [a.id async for a in client.beta.agents.list(include_archived=True)] == before


async def test_update_cannot_orphan_an_mcp_server(client: AsyncAnthropic) -> None:
    agent = await client.beta.agents.create(
        name="mcp",
        model="inwall-scripted",
        tools=[{"type": "mcp_toolset", "mcp_server_name": "docs"}],
        mcp_servers=[{"type": "url", "name": "docs", "url": "http://127.0.0.1:9/mcp"}],
    )
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.beta.agents.update(agent.id, tools=[])
    assert "docs" in caught.value.message
    assert (await client.beta.agents.retrieve(agent.id)).version == 1
