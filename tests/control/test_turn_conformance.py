"""The turn loop through the official SDK and its stock EnvironmentWorker, with the ``inwall-scripted`` model.

The scripted model's contract (issue 2): each ``call TOOL {json}`` line of the latest user message is one
tool call, in order; then one text answer with a line ``TOOL [N chars]: TEXT`` per tool result it received.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest
from anthropic import AsyncAnthropic
from anthropic.lib.environments import EnvironmentWorker

from tests.helpers import (
    Server,
    answer_text,
    events_of,
    fast_settings,
    mint_env_key,
    running_server_in_thread,
    user_message,
    wait_for_events,
    wait_until,
)

pytestmark = pytest.mark.anyio


def call(tool: str, **arguments: Any) -> str:
    return f"call {tool} {json.dumps(arguments)}"


def ended(events: list[Any]) -> bool:
    return any(e.type == "session.status_idle" and e.stop_reason.type == "end_turn" for e in events)


def requires_action(events: list[Any]) -> bool:
    return any(e.type == "session.status_idle" and e.stop_reason.type == "requires_action" for e in events)


@dataclass
class Session:
    server: Server
    client: AsyncAnthropic
    env_id: str
    id: str

    async def send(self, *events: Any) -> Any:
        return await self.client.beta.sessions.events.send(self.id, events=list(events))

    async def until(self, done: Any, within: float = 10.0) -> list[Any]:
        return await wait_for_events(self.client, self.id, done, within=within)

    @contextlib.asynccontextmanager
    async def worker(self, workdir: Path) -> AsyncIterator[None]:
        """The SDK's stock EnvironmentWorker serving this environment until the block exits."""
        key = await mint_env_key(self.client, self.env_id)
        async with self.server.client() as worker_client, anyio.create_task_group() as tg:
            worker = EnvironmentWorker(
                worker_client, environment_id=self.env_id, environment_key=key, workdir=workdir, max_idle=5
            )
            tg.start_soon(worker.run)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()


async def new_session(server: Server, client: AsyncAnthropic, tools: list[Any]) -> Session:
    env = await client.beta.environments.create(name="turn", config={"type": "self_hosted"})
    agent = await client.beta.agents.create(name="turn", model="inwall-scripted", tools=tools)
    session = await client.beta.sessions.create(agent=agent.id, environment_id=env.id)
    return Session(server, client, env.id, session.id)


TOOLSET: Any = {"type": "agent_toolset_20260401"}
ASK_BASH: Any = {
    "type": "agent_toolset_20260401",
    "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}],
}
WEATHER: Any = {
    "type": "custom",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_custom_tool_round_trip(shared_server: Server, client: AsyncAnthropic) -> None:
    s = await new_session(shared_server, client, [WEATHER])
    await s.send(user_message(call("get_weather", city="Paris")))
    events = await s.until(requires_action)

    [use] = [e for e in events if e.type == "agent.custom_tool_use"]
    assert (use.name, use.input) == ("get_weather", {"city": "Paris"})
    [idle] = [e for e in events if e.type == "session.status_idle"]
    assert idle.stop_reason.type == "requires_action"
    assert idle.stop_reason.event_ids == [use.id]
    assert (await client.beta.sessions.retrieve(s.id)).status == "idle"
    assert not ended(events)

    await s.send(
        {
            "type": "user.custom_tool_result",
            "custom_tool_use_id": use.id,
            "content": [{"type": "text", "text": "sunny, 21C"}],
        }
    )
    events = await s.until(ended)
    assert answer_text(events) == "get_weather [10 chars]: sunny, 21C"
    assert (await client.beta.sessions.retrieve(s.id)).status == "idle"

    with pytest.raises(anthropic.BadRequestError):
        await s.send({"type": "user.custom_tool_result", "custom_tool_use_id": use.id, "content": []})


async def test_always_ask_then_allow_runs_on_the_sdk_worker(
    shared_server: Server, client: AsyncAnthropic, tmp_path: Path
) -> None:
    s = await new_session(shared_server, client, [ASK_BASH])
    async with s.worker(tmp_path):
        await s.send(user_message(call("bash", command="echo confirmed > proof.txt; echo confirmed")))
        events = await s.until(requires_action)
        [use] = [e for e in events if e.type == "agent.tool_use"]
        assert use.name == "bash"
        assert use.evaluated_permission == "ask"
        [idle] = [e for e in events if e.type == "session.status_idle"]
        assert idle.stop_reason.event_ids == [use.id]
        # The worker holds an ask-gated call: nothing ran, nothing was posted.
        assert "user.tool_result" not in [e.type for e in events]
        assert not (tmp_path / "proof.txt").exists()

        await s.send({"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "allow"})
        events = await s.until(ended, within=20)
    [result] = [e for e in events if e.type == "user.tool_result"]
    assert result.tool_use_id == use.id
    assert answer_text(events) == "bash [9 chars]: confirmed"
    assert (tmp_path / "proof.txt").read_text() == "confirmed\n"
    with pytest.raises(anthropic.ConflictError):
        await s.send({"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "deny"})


async def test_always_ask_then_deny_tells_the_model(shared_server: Server, client: AsyncAnthropic) -> None:
    s = await new_session(shared_server, client, [ASK_BASH])
    await s.send(user_message(call("bash", command="rm -rf /tmp/never")))
    events = await s.until(requires_action)
    [use] = [e for e in events if e.type == "agent.tool_use"]
    assert use.evaluated_permission == "ask"

    await s.send(
        {
            "type": "user.tool_confirmation",
            "tool_use_id": use.id,
            "result": "deny",
            "deny_message": "not today",
        }
    )
    events = await s.until(ended)
    denial = "The user denied this tool call. Reason: not today"
    assert answer_text(events) == f"bash [{len(denial)} chars]: {denial}"
    assert "user.tool_result" not in [e.type for e in events]
    with pytest.raises(anthropic.ConflictError):
        await s.send({"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "allow"})


async def test_a_result_for_a_denied_call_is_refused(shared_server: Server, client: AsyncAnthropic) -> None:
    s = await new_session(shared_server, client, [ASK_BASH])
    await s.send(user_message(call("bash", command="rm -rf /tmp/never")))
    events = await s.until(requires_action)
    [use] = [e for e in events if e.type == "agent.tool_use"]
    await s.send({"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "deny"})
    await s.until(ended)
    before = [e.id for e in await events_of(client, s.id)]
    try:
        with pytest.raises(anthropic.BadRequestError):
            await s.send(
                {
                    "type": "user.tool_result",
                    "tool_use_id": use.id,
                    "content": [{"type": "text", "text": "ran anyway"}],
                }
            )
    finally:
        after = [e.id for e in await events_of(client, s.id)]
    assert after == before


async def test_calling_a_tool_the_session_lacks_returns_an_error_result(
    shared_server: Server, client: AsyncAnthropic
) -> None:
    disabled_bash: Any = {"type": "agent_toolset_20260401", "configs": [{"name": "bash", "enabled": False}]}
    s = await new_session(shared_server, client, [disabled_bash])
    await s.send(user_message(call("nosuch_tool", x=1) + "\n" + call("bash", command="echo hi")))
    events = await s.until(ended)

    uses = [e for e in events if e.type == "agent.tool_use"]
    assert [u.name for u in uses] == ["nosuch_tool", "bash"]
    assert all(u.evaluated_permission == "deny" for u in uses)
    results = {e.tool_use_id: e for e in events if e.type == "agent.tool_result"}
    assert set(results) == {u.id for u in uses}
    lines = []
    for use in uses:
        result = results[use.id]
        assert result.is_error is True
        text = "\n".join(b.text for b in result.content if b.type == "text")
        assert use.name in text
        lines.append(f"{use.name} [{len(text)} chars]: {text}")
    assert answer_text(events) == "\n".join(lines)
    # No worker was ever needed for refused calls.
    assert "user.tool_result" not in [e.type for e in events]


@pytest.fixture(scope="module")
def lease_3s_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a 3 s lease: the SDK worker retries a refused result for one lease TTL, not 30 s."""
    settings = fast_settings(tmp_path_factory.mktemp("lease3") / "data", lease_ttl_s=3)
    with running_server_in_thread(settings) as srv:
        yield srv


@pytest.fixture
async def lease_3s(lease_3s_server: Server) -> AsyncIterator[tuple[Server, AsyncAnthropic]]:
    async with lease_3s_server.client() as c:
        yield lease_3s_server, c


@pytest.mark.slow
async def test_interrupt_during_a_long_bash(lease_3s: tuple[Server, AsyncAnthropic], tmp_path: Path) -> None:
    server, client = lease_3s
    s = await new_session(server, client, [TOOLSET])
    workdir = tmp_path / "work"
    workdir.mkdir()
    # A `sleep 30` the test can end early: the SDK worker shields an in-flight tool from cancellation,
    # so a real 30 s sleep would hold the test's teardown for 30 s.
    long_bash = (
        "touch started; for i in $(seq 600); do [ -e release ] && break; sleep 0.05; done; echo released"
    )
    async with s.worker(workdir):
        await s.send(user_message(call("bash", command=long_bash)))

        async def started() -> bool:
            return (workdir / "started").exists()

        await wait_until(started, within=15)
        events = await events_of(client, s.id)
        [use] = [e for e in events if e.type == "agent.tool_use"]
        assert (await client.beta.sessions.retrieve(s.id)).status == "running"

        await s.send({"type": "user.interrupt"})
        events = await s.until(ended, within=5)
        assert not (workdir / "release").exists(), "the bash call was still running when the turn ended"
        # Closed with the result event workers understand, so no worker runs it later.
        [result] = [e for e in events if e.type == "user.tool_result"]
        assert result.tool_use_id == use.id
        assert result.is_error is True
        assert (await client.beta.sessions.retrieve(s.id)).status == "idle"
        [interrupt] = [e for e in events if e.type == "user.interrupt"]
        assert interrupt.processed_at is not None

        # The session is usable again at once.
        before = {e.id for e in events}
        await s.send(user_message("are you there?"))
        events = await s.until(lambda evs: ended([e for e in evs if e.id not in before]))
        assert answer_text(events) == "(no tool calls)"
        (workdir / "release").touch()  # let the worker's bash finish; its late result must not land
    events = await events_of(client, s.id)
    [only] = [e for e in events if e.type == "user.tool_result"]
    assert only.id == result.id, "the worker's late result must not land"


async def test_interrupt_while_idle_is_harmless(shared_server: Server, client: AsyncAnthropic) -> None:
    s = await new_session(shared_server, client, [TOOLSET])
    await s.send({"type": "user.interrupt"})
    events = await s.until(lambda evs: all(e.processed_at is not None for e in evs))
    assert [e.type for e in events] == ["user.interrupt"]
    assert (await client.beta.sessions.retrieve(s.id)).status == "idle"
    await s.send(user_message("hello"))
    events = await s.until(ended)
    assert answer_text(events) == "(no tool calls)"


async def test_tools_run_in_order_on_the_sdk_worker(
    shared_server: Server, client: AsyncAnthropic, tmp_path: Path
) -> None:
    s = await new_session(shared_server, client, [TOOLSET])
    script = "\n".join(
        [
            call("write", file_path="a.txt", content="alpha\nbeta\n"),
            call("edit", file_path="a.txt", old_string="beta", new_string="gamma"),
            call("read", file_path="a.txt"),
            call("bash", command="cat a.txt | wc -l"),
        ]
    )
    async with s.worker(tmp_path):
        await s.send(user_message(script))
        events = await s.until(ended, within=20)
    uses = [e for e in events if e.type == "agent.tool_use"]
    assert [u.name for u in uses] == ["write", "edit", "read", "bash"]
    results = [e for e in events if e.type == "user.tool_result"]
    assert [r.tool_use_id for r in results] == [u.id for u in uses]
    lines = answer_text(events).splitlines()
    assert [line.split(" ", 1)[0] for line in lines[:2]] == ["write", "edit"]
    assert "alpha" in answer_text(events)
    assert "gamma" in answer_text(events)
    assert lines[-1] == "bash [1 chars]: 2"
    assert (tmp_path / "a.txt").read_text() == "alpha\ngamma\n"


@pytest.mark.slow
async def test_an_interrupted_call_never_runs_later(
    lease_3s: tuple[Server, AsyncAnthropic], tmp_path: Path
) -> None:
    server, client = lease_3s  # the worker retries a refused result for one lease TTL: keep it short
    s = await new_session(server, client, [TOOLSET])
    workdir = tmp_path / "work"
    workdir.mkdir()
    await s.send(user_message(call("bash", command="touch interrupted-ran")))
    events = await s.until(lambda evs: any(e.type == "agent.tool_use" for e in evs))
    [use] = [e for e in events if e.type == "agent.tool_use"]
    await s.send({"type": "user.interrupt"})
    events = await s.until(ended)
    assert [e.tool_use_id for e in events if e.type == "user.tool_result"] == [use.id]

    # A worker arrives afterwards and serves the session's next turn.
    async with s.worker(workdir):
        before = {e.id for e in events}
        await s.send(user_message(call("bash", command="touch second-ran")))
        await s.until(lambda evs: ended([e for e in evs if e.id not in before]), within=20)
    assert (workdir / "second-ran").exists(), "positive control: the worker served the new turn"
    assert not (workdir / "interrupted-ran").exists()
