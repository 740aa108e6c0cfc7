"""The self-hosted work queue through the official SDK: poll, ack, heartbeat, stop, leases, stats, secrets."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anthropic
import anyio
import pytest
from anthropic import AsyncAnthropic
from anthropic.types.beta.environments import BetaSelfHostedWork
from anthropic.types.beta.environments.beta_heartbeat_precondition_failed_error import (
    BetaHeartbeatPreconditionFailedError,
)

from tests.helpers import (
    Server,
    decode_secret,
    events_of,
    fast_settings,
    mint_env_key,
    running_server_in_thread,
    user_message,
    wait_until,
)

pytestmark = pytest.mark.anyio

NO_HEARTBEAT = "NO_HEARTBEAT"


@dataclass
class Queue:
    """An environment, an agent, and an SDK client holding the environment's key."""

    admin: AsyncAnthropic
    worker: AsyncAnthropic
    env_id: str
    agent_id: str

    async def session(self) -> str:
        return (await self.admin.beta.sessions.create(agent=self.agent_id, environment_id=self.env_id)).id

    async def poll(self, **kw: object) -> BetaSelfHostedWork | None:
        return await self.worker.beta.environments.work.poll(self.env_id, **kw)  # type: ignore[arg-type]

    async def claim(self) -> BetaSelfHostedWork:
        item = await self.poll()
        assert item is not None
        await self.worker.beta.environments.work.ack(item.id, environment_id=self.env_id)
        return item


@contextlib.asynccontextmanager
async def _queue(server: Server, admin: AsyncAnthropic) -> AsyncIterator[Queue]:
    env = await admin.beta.environments.create(name="q", config={"type": "self_hosted"})
    agent = await admin.beta.agents.create(
        name="q", model="inwall-scripted", tools=[{"type": "agent_toolset_20260401"}]
    )
    key = await mint_env_key(admin, env.id)
    async with server.client(key) as worker:
        yield Queue(admin, worker, env.id, agent.id)


@pytest.fixture
async def q(shared_server: Server, client: AsyncAnthropic) -> AsyncIterator[Queue]:
    async with _queue(shared_server, client) as queue:
        yield queue


async def test_empty_poll_is_none(q: Queue) -> None:
    assert await q.poll() is None
    assert await q.poll(block_ms=20) is None
    assert await q.poll(block_ms=1) is None
    assert await q.poll(block_ms=50, reclaim_older_than_ms=0) is None


async def test_block_ms_bounds(q: Queue) -> None:
    await q.session()
    for block_ms in (0, 1000, -5):
        with pytest.raises(anthropic.BadRequestError) as caught:
            await q.poll(block_ms=block_ms)
        assert "block_ms" in caught.value.message
    # A refused poll claimed nothing: the item is still there for a good poll.
    assert await q.poll(block_ms=999) is not None


async def test_a_new_session_queues_an_item(q: Queue) -> None:
    session_id = await q.session()
    item = await q.poll()
    assert item is not None
    assert item.type == "work"
    assert item.environment_id == q.env_id
    assert item.state == "queued"
    assert item.data.type == "session"
    assert item.data.id == session_id
    assert item.secret
    assert item.acknowledged_at is None
    # One live item per session: nothing else is queued.
    assert await q.poll() is None


async def test_blocking_poll_wakes_when_work_arrives(q: Queue) -> None:
    got: list[BetaSelfHostedWork | None] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def poller() -> None:
                # A long-poll that starts empty; re-poll a few times so a slow start cannot miss the item.
                for _ in range(20):
                    item = await q.poll(block_ms=999)
                    if item is not None:
                        got.append(item)
                        return

            tg.start_soon(poller)
            session_id = await q.session()
    assert got
    assert got[0] is not None
    assert got[0].data.id == session_id


async def test_lease_protocol(q: Queue) -> None:
    await q.session()
    work = q.worker.beta.environments.work
    item = await q.poll()
    assert item is not None

    acked = await work.ack(item.id, environment_id=q.env_id)
    assert acked.state == "starting"
    assert acked.acknowledged_at is not None
    assert acked.secret is None  # the secret is shown at poll time only
    with pytest.raises(anthropic.ConflictError):
        await work.ack(item.id, environment_id=q.env_id)

    first = await work.heartbeat(item.id, environment_id=q.env_id, expected_last_heartbeat=NO_HEARTBEAT)
    assert first.type == "work_heartbeat"
    assert first.lease_extended is True
    assert first.state == "active"
    assert first.last_heartbeat
    assert first.ttl_seconds == 30

    second = await work.heartbeat(
        item.id, environment_id=q.env_id, expected_last_heartbeat=first.last_heartbeat
    )
    assert second.lease_extended is True
    assert second.state == "active"
    assert second.last_heartbeat != first.last_heartbeat

    for stale in (first.last_heartbeat, NO_HEARTBEAT):
        with pytest.raises(BetaHeartbeatPreconditionFailedError) as caught:
            await work.heartbeat(item.id, environment_id=q.env_id, expected_last_heartbeat=stale)
        err = caught.value
        assert err.status_code == 412
        assert err.error_code == "heartbeat_precondition_failed"
        assert err.details.current_state.state == "active"
        assert err.details.current_state.last_heartbeat == second.last_heartbeat
        assert err.details.current_state.lease_extended is False

    current = await q.admin.beta.environments.work.retrieve(item.id, environment_id=q.env_id)
    assert current.state == "active"
    assert current.started_at is not None
    assert current.latest_heartbeat_at is not None


async def test_stop_graceful_then_forced(q: Queue) -> None:
    await q.session()
    work = q.worker.beta.environments.work
    item = await q.claim()
    beat = await work.heartbeat(item.id, environment_id=q.env_id, expected_last_heartbeat=NO_HEARTBEAT)

    stopping = await work.stop(item.id, environment_id=q.env_id)
    assert stopping.state == "stopping"
    assert stopping.stop_requested_at is not None
    assert stopping.stopped_at is None

    # The worker learns it must stop: no extension, state stopping (the precondition is not compared).
    told = await work.heartbeat(item.id, environment_id=q.env_id, expected_last_heartbeat=beat.last_heartbeat)
    assert (told.lease_extended, told.state) == (False, "stopping")
    told = await work.heartbeat(item.id, environment_id=q.env_id, expected_last_heartbeat="stale-value")
    assert (told.lease_extended, told.state) == (False, "stopping")

    stopped = await work.stop(item.id, environment_id=q.env_id, force=True)
    assert stopped.state == "stopped"
    assert stopped.stopped_at is not None

    with pytest.raises(anthropic.ConflictError) as caught:
        await work.stop(item.id, environment_id=q.env_id)
    assert caught.value.status_code == 409
    with pytest.raises(anthropic.ConflictError):
        await work.stop(item.id, environment_id=q.env_id, force=True)
    told = await work.heartbeat(item.id, environment_id=q.env_id, expected_last_heartbeat=NO_HEARTBEAT)
    assert (told.lease_extended, told.state) == (False, "stopped")


async def test_stopping_a_queued_item_stops_it_at_once(q: Queue) -> None:
    await q.session()
    [item] = [w async for w in q.admin.beta.environments.work.list(q.env_id)]
    stopped = await q.admin.beta.environments.work.stop(item.id, environment_id=q.env_id)
    assert stopped.state == "stopped"
    assert await q.poll() is None


async def test_unacked_items_are_reclaimable(q: Queue) -> None:
    await q.session()
    item = await q.poll()
    assert item is not None
    assert await q.poll() is None, "a polled, un-acked item is not handed out again before the reclaim age"

    stats = await q.admin.beta.environments.work.stats(q.env_id)
    assert (stats.depth, stats.pending) == (0, 1)

    async def reclaim() -> BetaSelfHostedWork | None:
        return await q.poll(block_ms=200, reclaim_older_than_ms=100)

    again = await wait_until(reclaim, within=5)
    assert again.id == item.id
    assert again.secret
    await q.worker.beta.environments.work.ack(again.id, environment_id=q.env_id)
    stats = await q.admin.beta.environments.work.stats(q.env_id)
    assert (stats.depth, stats.pending) == (0, 0)


async def test_stats(q: Queue) -> None:
    stats_of = q.admin.beta.environments.work.stats
    empty = await stats_of(q.env_id)
    assert empty.type == "work_queue_stats"
    assert (empty.depth, empty.pending, empty.oldest_queued_at, empty.workers_polling) == (0, 0, None, 0)

    s1 = await q.session()
    s2 = await q.session()
    items = {w.data.id: w async for w in q.admin.beta.environments.work.list(q.env_id)}
    stats = await stats_of(q.env_id)
    assert (stats.depth, stats.pending) == (2, 0)
    assert stats.oldest_queued_at == items[s1].created_at

    first = await q.poll(anthropic_worker_id="worker-a")
    assert first is not None
    assert first.data.id == s1, "the queue is first in, first out"
    stats = await stats_of(q.env_id)
    assert (stats.depth, stats.pending, stats.workers_polling) == (1, 1, 1)

    second = await q.poll(anthropic_worker_id="worker-b")
    assert second is not None
    assert second.data.id == s2
    assert await q.poll(anthropic_worker_id="worker-b") is None
    assert await q.poll(anthropic_worker_id="worker-c") is None
    stats = await stats_of(q.env_id)
    assert (stats.depth, stats.pending, stats.workers_polling) == (0, 2, 3)
    assert stats.oldest_queued_at == items[s1].created_at

    await q.worker.beta.environments.work.ack(first.id, environment_id=q.env_id)
    stats = await stats_of(q.env_id)
    assert (stats.depth, stats.pending) == (0, 1)
    assert stats.oldest_queued_at == items[s2].created_at
    # The environment key may read its own queue's stats too.
    assert (await q.worker.beta.environments.work.stats(q.env_id)).pending == 1


async def test_list_retrieve_update_metadata(q: Queue) -> None:
    sessions = {await q.session() for _ in range(3)}
    work = q.admin.beta.environments.work
    first = await work.list(q.env_id, limit=2)
    assert len(first.data) == 2
    assert first.next_page
    items = [w async for w in work.list(q.env_id, limit=2)]
    assert {w.data.id for w in items} == sessions
    assert len({w.id for w in items}) == 3
    assert all(w.secret is None for w in items), "listing never reveals item secrets"

    item = items[0]
    fetched = await work.retrieve(item.id, environment_id=q.env_id)
    assert fetched.model_dump() == item.model_dump()

    updated = await work.update(item.id, environment_id=q.env_id, metadata={"host": "h1", "slot": "3"})
    assert updated.metadata == {"host": "h1", "slot": "3"}
    updated = await work.update(item.id, environment_id=q.env_id, metadata={"slot": None, "rack": "r9"})
    assert updated.metadata == {"host": "h1", "rack": "r9"}
    assert (await work.retrieve(item.id, environment_id=q.env_id)).metadata == {"host": "h1", "rack": "r9"}

    with pytest.raises(anthropic.NotFoundError):
        await work.retrieve("work_00000000000000000000000000", environment_id=q.env_id)
    # Work metadata is an operator's (API key) business; the worker's key may not change it.
    with pytest.raises(anthropic.PermissionDeniedError):
        await q.worker.beta.environments.work.update(item.id, environment_id=q.env_id, metadata={"x": "y"})


async def test_secret_carries_a_session_scoped_token(shared_server: Server, q: Queue) -> None:
    server = shared_server
    mine = await q.session()
    other = await q.session()
    item = await q.poll()
    assert item is not None
    assert item.data.id == mine
    assert item.secret is not None
    token = decode_secret(item.secret)["sessions_token"]
    assert isinstance(token, str)
    assert token
    other_item = await q.poll()
    assert other_item is not None
    assert other_item.data.id == other
    await q.worker.beta.environments.work.ack(item.id, environment_id=q.env_id)

    async with server.client(token) as scoped:
        # Positive: it reads its own session and holds its own item's lease.
        session = await scoped.beta.sessions.retrieve(mine)
        assert session.id == mine
        assert [e.type for e in await events_of(scoped, mine)] == []
        beat = await scoped.beta.environments.work.heartbeat(
            item.id, environment_id=q.env_id, expected_last_heartbeat=NO_HEARTBEAT
        )
        assert beat.lease_extended is True

        # Negative: nothing else.
        with pytest.raises(anthropic.NotFoundError):
            await scoped.beta.sessions.retrieve(other)
        with pytest.raises(anthropic.NotFoundError):
            await scoped.beta.sessions.events.list(other)
        with pytest.raises((anthropic.NotFoundError, anthropic.PermissionDeniedError)):
            await scoped.beta.environments.work.poll(q.env_id)
        with pytest.raises((anthropic.NotFoundError, anthropic.PermissionDeniedError)):
            await scoped.beta.environments.work.heartbeat(
                other_item.id, environment_id=q.env_id, expected_last_heartbeat=NO_HEARTBEAT
            )
        with pytest.raises(anthropic.PermissionDeniedError):
            await scoped.beta.sessions.create(agent=q.agent_id, environment_id=q.env_id)
        with pytest.raises(anthropic.PermissionDeniedError):
            await scoped.beta.sessions.events.send(mine, events=[user_message("hi")])

        # The token dies with its item.
        await scoped.beta.environments.work.stop(item.id, environment_id=q.env_id, force=True)
        with pytest.raises(anthropic.AuthenticationError):
            await scoped.beta.sessions.retrieve(mine)


async def test_forged_session_token_is_refused(shared_server: Server, q: Queue) -> None:
    server = shared_server
    await q.session()
    item = await q.poll()
    assert item is not None
    assert item.secret is not None
    token = decode_secret(item.secret)["sessions_token"]
    payload, _, sig = token.partition(".")
    forged = payload + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    async with server.client(forged) as scoped, server.client(token) as genuine:
        with pytest.raises(anthropic.AuthenticationError):
            await scoped.beta.sessions.retrieve(item.data.id)
        assert (await genuine.beta.sessions.retrieve(item.data.id)).id == item.data.id


# -- lease expiry needs its own server: a 1 s lease ------------------------------------------


@pytest.fixture(scope="module")
def short_lease_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = fast_settings(tmp_path_factory.mktemp("lease") / "data", lease_ttl_s=1)
    with running_server_in_thread(settings) as srv:
        yield srv


@pytest.fixture
async def short_lease(short_lease_server: Server) -> AsyncIterator[Queue]:
    async with short_lease_server.client() as admin, _queue(short_lease_server, admin) as queue:
        yield queue


async def test_lapsed_lease_returns_the_item_and_reschedules_the_session(short_lease: Queue) -> None:
    q = short_lease
    admin = q.admin
    session_id = await q.session()
    # Give the session a turn that needs a worker: it runs, then waits for the bash result.
    await admin.beta.sessions.events.send(
        session_id,
        events=[user_message("call bash " + json.dumps({"command": "true"}))],
    )

    async def running() -> bool:
        return (await admin.beta.sessions.retrieve(session_id)).status == "running"

    await wait_until(running, within=5)

    item = await q.claim()  # acked, and then never a heartbeat
    assert (await admin.beta.environments.work.retrieve(item.id, environment_id=q.env_id)).state == "starting"

    async def rescheduled() -> bool:
        return (await admin.beta.sessions.retrieve(session_id)).status == "rescheduling"

    await wait_until(rescheduled, within=5)
    events = await events_of(admin, session_id)
    assert "session.status_rescheduled" in [e.type for e in events]
    assert (await admin.beta.environments.work.retrieve(item.id, environment_id=q.env_id)).state == "queued"

    again = await q.poll()
    assert again is not None
    assert again.id == item.id
    assert again.acknowledged_at is None
    assert again.secret
    await q.worker.beta.environments.work.ack(again.id, environment_id=q.env_id)
    assert (await admin.beta.sessions.retrieve(session_id)).status == "running"
    types = [e.type for e in await events_of(admin, session_id)]
    after = types[types.index("session.status_rescheduled") + 1 :]
    assert "session.status_running" in after


@pytest.mark.slow
async def test_heartbeats_keep_a_short_lease(short_lease: Queue) -> None:
    q = short_lease
    await q.session()
    item = await q.claim()
    work = q.worker.beta.environments.work
    beat = await work.heartbeat(item.id, environment_id=q.env_id, expected_last_heartbeat=NO_HEARTBEAT)
    assert beat.ttl_seconds == 1
    # Beat well inside the TTL across more than two TTLs' worth of reaper passes: the lease holds.
    deadline = anyio.current_time() + 2.0
    with anyio.fail_after(10):
        while anyio.current_time() < deadline:
            await anyio.sleep(0.2)
            beat = await work.heartbeat(
                item.id, environment_id=q.env_id, expected_last_heartbeat=beat.last_heartbeat
            )
            assert (beat.lease_extended, beat.state) == (True, "active")
    assert (await q.admin.beta.environments.work.retrieve(item.id, environment_id=q.env_id)).state == "active"


async def test_the_old_holder_of_a_lapsed_lease_gets_412(short_lease: Queue) -> None:
    q = short_lease
    await q.session()
    item = await q.claim()
    work = q.worker.beta.environments.work
    beat = await work.heartbeat(item.id, environment_id=q.env_id, expected_last_heartbeat=NO_HEARTBEAT)

    async def lapsed() -> bool:
        current = await q.admin.beta.environments.work.retrieve(item.id, environment_id=q.env_id)
        return current.state == "queued"

    await wait_until(lapsed, within=5)
    with pytest.raises(BetaHeartbeatPreconditionFailedError) as caught:
        await work.heartbeat(item.id, environment_id=q.env_id, expected_last_heartbeat=beat.last_heartbeat)
    state = caught.value.details.current_state
    assert state.state == "queued"
    assert state.last_heartbeat is None
    # The next worker claims it afresh.
    again = await q.claim()
    assert again.id == item.id
    fresh = await work.heartbeat(item.id, environment_id=q.env_id, expected_last_heartbeat=NO_HEARTBEAT)
    assert fresh.lease_extended is True


async def test_a_message_to_a_dormant_session_queues_new_work(q: Queue) -> None:
    session_id = await q.session()
    first = await q.claim()
    await q.worker.beta.environments.work.stop(first.id, environment_id=q.env_id, force=True)
    assert await q.poll() is None

    await q.admin.beta.sessions.events.send(session_id, events=[user_message("wake up")])
    item = await q.poll(block_ms=999)
    assert item is not None
    assert item.id != first.id
    assert item.data.id == session_id
    assert item.state == "queued"
    # One live item per session, however many messages arrive.
    await q.admin.beta.sessions.events.send(session_id, events=[user_message("again")])
    assert await q.poll() is None
    items = [w async for w in q.admin.beta.environments.work.list(q.env_id) if w.data.id == session_id]
    assert sorted(w.state for w in items) == ["queued", "stopped"]
