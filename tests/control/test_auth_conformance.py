"""Credentials through the official SDK: API keys, environment keys, and what each one can reach."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anthropic
import pytest
from anthropic import AsyncAnthropic, omit

from tests.helpers import Server, events_of, mint_env_key, user_message

pytestmark = pytest.mark.anyio

NO_HEARTBEAT = "NO_HEARTBEAT"


async def test_no_credential_is_401(client: AsyncAnthropic) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await client.beta.agents.list(extra_headers={"Authorization": omit})
    assert caught.value.status_code == 401
    assert caught.value.type == "authentication_error"


async def test_bad_key_is_401_and_not_echoed(shared_server: Server) -> None:
    server = shared_server
    bad = "sk-inwall-admin-this-is-not-a-real-key-0123456789"
    async with server.client(bad) as client:
        for call in (client.beta.agents.list, client.beta.environments.list, client.beta.sessions.list):
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await call()
            assert caught.value.status_code == 401
            assert bad not in caught.value.response.text
            assert bad[-12:] not in caught.value.response.text


async def test_x_api_key_header_is_accepted(shared_server: Server, client: AsyncAnthropic) -> None:
    """curl users send ``x-api-key``; the SDK sends a Bearer token. Both authenticate."""
    server = shared_server
    agents = await client.beta.agents.list(
        extra_headers={"Authorization": omit, "x-api-key": server.admin_key}
    )
    assert agents.next_page is None or agents.data


@dataclass
class Tenant:
    env_id: str
    key: str
    session_id: str
    work_id: str


@dataclass
class TwoEnvs:
    admin: AsyncAnthropic
    agent_id: str
    a: Tenant
    b: Tenant


@pytest.fixture
async def two(client: AsyncAnthropic) -> AsyncIterator[TwoEnvs]:
    agent = await client.beta.agents.create(
        name="t", model="inwall-scripted", tools=[{"type": "agent_toolset_20260401"}]
    )
    tenants = []
    for name in ("a", "b"):
        env = await client.beta.environments.create(name=name)
        key = await mint_env_key(client, env.id)
        session = await client.beta.sessions.create(agent=agent.id, environment_id=env.id)
        [item] = [w async for w in client.beta.environments.work.list(env.id)]
        tenants.append(Tenant(env.id, key, session.id, item.id))
    yield TwoEnvs(client, agent.id, tenants[0], tenants[1])


async def test_environment_key_reaches_nothing_of_another_environment(
    shared_server: Server, two: TwoEnvs
) -> None:
    server = shared_server
    a, b = two.a, two.b
    async with server.client(a.key) as key_a:
        work = key_a.beta.environments.work
        # Positive control: A's key serves A's queue and reads A's session.
        assert (await work.stats(a.env_id)).depth == 1
        assert (await key_a.beta.sessions.retrieve(a.session_id)).id == a.session_id
        assert await events_of(key_a, a.session_id) == []

        denied: dict[str, Callable[[], Awaitable[object]]] = {
            "poll": lambda: work.poll(b.env_id),
            "stats": lambda: work.stats(b.env_id),
            "list": lambda: work.list(b.env_id),
            "retrieve": lambda: work.retrieve(b.work_id, environment_id=b.env_id),
            "ack": lambda: work.ack(b.work_id, environment_id=b.env_id),
            "heartbeat": lambda: work.heartbeat(
                b.work_id, environment_id=b.env_id, expected_last_heartbeat=NO_HEARTBEAT
            ),
            "stop": lambda: work.stop(b.work_id, environment_id=b.env_id, force=True),
            "environment": lambda: key_a.beta.environments.retrieve(b.env_id),
            "session": lambda: key_a.beta.sessions.retrieve(b.session_id),
            "events": lambda: key_a.beta.sessions.events.list(b.session_id),
            "tool_result": lambda: key_a.beta.sessions.events.send(
                b.session_id,
                events=[{"type": "user.tool_result", "tool_use_id": "sevt_x", "content": []}],
            ),
            # A's item named under B's environment path is not B's either.
            "cross-path": lambda: work.retrieve(a.work_id, environment_id=b.env_id),
        }
        for name, call in denied.items():
            with pytest.raises((anthropic.NotFoundError, anthropic.PermissionDeniedError)) as caught:
                await call()
            assert caught.value.status_code in (403, 404), name

    # Nothing of B moved: its item is still queued and un-polled, its session untouched.
    stats = await two.admin.beta.environments.work.stats(b.env_id)
    assert (stats.depth, stats.pending) == (1, 0)
    item = await two.admin.beta.environments.work.retrieve(b.work_id, environment_id=b.env_id)
    assert item.state == "queued"
    assert await events_of(two.admin, b.session_id) == []


async def test_environment_key_may_not_manage(shared_server: Server, two: TwoEnvs) -> None:
    server = shared_server
    a = two.a
    agents_before = [x.id async for x in two.admin.beta.agents.list(include_archived=True)]
    envs_before = [x.id async for x in two.admin.beta.environments.list(include_archived=True)]
    async with server.client(a.key) as key_a:
        forbidden: dict[str, Callable[[], Awaitable[object]]] = {
            "create agent": lambda: key_a.beta.agents.create(name="x", model="inwall-scripted"),
            "list agents": key_a.beta.agents.list,
            "create environment": lambda: key_a.beta.environments.create(name="x"),
            "create session": lambda: key_a.beta.sessions.create(agent=two.agent_id, environment_id=a.env_id),
            "user.message": lambda: key_a.beta.sessions.events.send(
                a.session_id, events=[user_message("hi")]
            ),
            "user.interrupt": lambda: key_a.beta.sessions.events.send(
                a.session_id, events=[{"type": "user.interrupt"}]
            ),
            "archive session": lambda: key_a.beta.sessions.archive(a.session_id),
            "mint key": lambda: key_a.post(
                f"/v1/inwall/environments/{a.env_id}/keys", cast_to=object, body={}
            ),
        }
        for name, call in forbidden.items():
            with pytest.raises(anthropic.PermissionDeniedError) as caught:
                await call()
            assert caught.value.status_code == 403, name
            assert caught.value.type == "permission_error", name
    assert await events_of(two.admin, a.session_id) == []
    assert [x.id async for x in two.admin.beta.agents.list(include_archived=True)] == agents_before
    assert [x.id async for x in two.admin.beta.environments.list(include_archived=True)] == envs_before


async def test_keys_are_shown_once_and_stored_hashed(shared_server: Server, client: AsyncAnthropic) -> None:
    server = shared_server
    env = await client.beta.environments.create(name="k")
    key1 = await mint_env_key(client, env.id)
    key2 = await mint_env_key(client, env.id)
    assert key1 != key2
    agent = await client.beta.agents.create(name="k", model="inwall-scripted")
    session = await client.beta.sessions.create(agent=agent.id, environment_id=env.id)

    async with server.client(key1) as c1, server.client(key2) as c2:
        # Positive control: both keys work.
        assert (await c1.beta.environments.work.stats(env.id)).depth == 1
        assert (await c2.beta.environments.work.stats(env.id)).depth == 1

    raw_bodies = [
        await (await client.beta.environments.with_raw_response.retrieve(env.id)).text(),
        await (await client.beta.environments.with_raw_response.list()).text(),
        await (await client.beta.environments.work.with_raw_response.list(env.id)).text(),
        await (await client.beta.environments.work.with_raw_response.stats(env.id)).text(),
        await (await client.beta.sessions.with_raw_response.retrieve(session.id)).text(),
    ]
    for body in raw_bodies:
        for key in (key1, key2, server.admin_key):
            assert key not in body

    # Stored hashed: the plaintext is nowhere in the data directory's database files.
    data_dir = server.bound.plane.settings.data_dir
    db_files = [p for p in data_dir.iterdir() if p.is_file() and p.name != "admin_key"]
    assert db_files
    for path in db_files:
        blob = path.read_bytes()
        for key in (key1, key2, server.admin_key):
            assert key.encode() not in blob, path.name


async def test_a_deleted_environments_key_reaches_nothing(
    shared_server: Server, client: AsyncAnthropic
) -> None:
    server = shared_server
    env = await client.beta.environments.create(name="gone")
    key = await mint_env_key(client, env.id)
    async with server.client(key) as worker:
        assert await worker.beta.environments.work.poll(env.id) is None
        await client.beta.environments.delete(env.id)
        # The key row is deleted; the server's 5 s credential cache may still know it, in which case
        # the request authenticates and then finds no environment. Either way it is refused.
        with pytest.raises((anthropic.AuthenticationError, anthropic.NotFoundError)):
            await worker.beta.environments.work.poll(env.id)
        with pytest.raises((anthropic.AuthenticationError, anthropic.NotFoundError)):
            await worker.beta.environments.work.stats(env.id)
