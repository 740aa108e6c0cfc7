"""Environments through the official SDK: self-hosted only, full lifecycle, and the SDK's typed errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anthropic
import pytest
from anthropic import AsyncAnthropic
from anthropic.types.beta import BetaSelfHostedConfig
from anthropic.types.beta.beta_environment_archived_error import BetaEnvironmentArchivedError
from anthropic.types.beta.beta_environment_not_found_error import BetaEnvironmentNotFoundError
from anthropic.types.beta.beta_invalid_config_type_change_error import BetaInvalidConfigTypeChangeError

pytestmark = pytest.mark.anyio

CLOUD = {
    "type": "cloud",
    "networking": {"type": "unrestricted"},
    "packages": {"type": "packages", "pip": ["pandas"]},
}


async def test_create_self_hosted(client: AsyncAnthropic) -> None:
    env = await client.beta.environments.create(
        name="lab", description="bench", metadata={"site": "a"}, config={"type": "self_hosted"}
    )
    assert env.type == "environment"
    assert env.id.startswith("env_")
    assert isinstance(env.config, BetaSelfHostedConfig)
    assert (env.name, env.description, env.metadata) == ("lab", "bench", {"site": "a"})
    assert env.archived_at is None
    assert env.created_at
    assert env.updated_at

    fetched = await client.beta.environments.retrieve(env.id)
    assert fetched.model_dump() == env.model_dump()


async def test_cloud_config_is_refused_clearly(client: AsyncAnthropic) -> None:
    before = [e.id async for e in client.beta.environments.list(include_archived=True)]
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.beta.environments.create(name="cloudy", config=CLOUD)  # type: ignore[arg-type]
    assert caught.value.type == "invalid_request_error"
    message = caught.value.message
    assert "cloud" in message
    assert "self_hosted" in message
    assert [e.id async for e in client.beta.environments.list(include_archived=True)] == before


async def test_list_update_archive(client: AsyncAnthropic) -> None:
    before = {e.id async for e in client.beta.environments.list()}
    envs = [await client.beta.environments.create(name=f"e{i}") for i in range(3)]
    page = await client.beta.environments.list(limit=2)
    assert len(page.data) == 2
    assert page.next_page
    walked = [e.id async for e in client.beta.environments.list(limit=2)]
    assert len(walked) == len(set(walked))
    assert set(walked) == before | {e.id for e in envs}
    assert walked[:3] == [e.id for e in reversed(envs)], "newest first"

    env = envs[0]
    updated = await client.beta.environments.update(
        env.id, name="renamed", description="now described", metadata={"k": "v", "gone": "x"}
    )
    assert (updated.name, updated.description, updated.metadata) == (
        "renamed",
        "now described",
        {"k": "v", "gone": "x"},
    )
    updated = await client.beta.environments.update(env.id, metadata={"gone": None})
    assert updated.metadata == {"k": "v"}
    assert updated.name == "renamed"  # omitted: preserved
    updated = await client.beta.environments.update(env.id, description=None)
    assert updated.description is None

    archived = await client.beta.environments.archive(env.id)
    assert archived.archived_at is not None
    assert env.id not in [e.id async for e in client.beta.environments.list()]
    assert env.id in [e.id async for e in client.beta.environments.list(include_archived=True)]
    with pytest.raises(BetaEnvironmentArchivedError):
        await client.beta.environments.update(env.id, name="nope")

    agent = await client.beta.agents.create(name="a", model="inwall-scripted")
    with pytest.raises(BetaEnvironmentArchivedError):
        await client.beta.sessions.create(agent=agent.id, environment_id=env.id)


async def test_delete(client: AsyncAnthropic) -> None:
    env = await client.beta.environments.create(name="doomed")
    deleted = await client.beta.environments.delete(env.id)
    assert (deleted.id, deleted.type) == (env.id, "environment_deleted")
    with pytest.raises(BetaEnvironmentNotFoundError) as caught:
        await client.beta.environments.retrieve(env.id)
    assert caught.value.status_code == 404
    assert caught.value.error_code == "environment_not_found"


async def test_delete_refuses_while_sessions_live(client: AsyncAnthropic) -> None:
    env = await client.beta.environments.create(name="busy")
    agent = await client.beta.agents.create(name="a", model="inwall-scripted")
    session = await client.beta.sessions.create(agent=agent.id, environment_id=env.id)
    with pytest.raises(anthropic.ConflictError):
        await client.beta.environments.delete(env.id)
    await client.beta.sessions.archive(session.id)
    deleted = await client.beta.environments.delete(env.id)
    assert deleted.type == "environment_deleted"


async def test_missing_environment_is_the_typed_sdk_error(client: AsyncAnthropic) -> None:
    missing = "env_00000000000000000000000000"
    agent = await client.beta.agents.create(name="a", model="inwall-scripted")
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "retrieve": lambda: client.beta.environments.retrieve(missing),
        "update": lambda: client.beta.environments.update(missing, name="x"),
        "archive": lambda: client.beta.environments.archive(missing),
        "delete": lambda: client.beta.environments.delete(missing),
        "stats": lambda: client.beta.environments.work.stats(missing),
        "work.list": lambda: client.beta.environments.work.list(missing),
        "work.poll": lambda: client.beta.environments.work.poll(missing),
        "sessions.create": lambda: client.beta.sessions.create(agent=agent.id, environment_id=missing),
    }
    for name, call in calls.items():
        with pytest.raises(BetaEnvironmentNotFoundError) as caught:
            await call()
        assert caught.value.status_code == 404, name


async def test_changing_config_type_is_the_typed_sdk_error(client: AsyncAnthropic) -> None:
    env = await client.beta.environments.create(name="fixed", config={"type": "self_hosted"})
    with pytest.raises(BetaInvalidConfigTypeChangeError):
        await client.beta.environments.update(env.id, config=CLOUD)  # type: ignore[arg-type]
