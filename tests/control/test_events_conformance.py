"""The session event log through the official SDK: list, filters, pages, the live SSE stream, bad input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import anyio
import pytest
from anthropic import AsyncAnthropic

from tests.helpers import (
    Server,
    answer_text,
    events_of,
    fast_settings,
    running_server_in_thread,
    user_message,
    wait_for_events,
)

pytestmark = pytest.mark.anyio


def ended(events: list[Any]) -> bool:
    return any(e.type == "session.status_idle" and e.stop_reason.type == "end_turn" for e in events)


@dataclass
class Chat:
    client: AsyncAnthropic
    session_id: str

    async def send(self, *events: Any) -> Any:
        return await self.client.beta.sessions.events.send(self.session_id, events=list(events))

    async def turn(self, text: str) -> list[Any]:
        """Send one message and wait for the turn it starts to end."""
        before = {e.id for e in await events_of(self.client, self.session_id)}
        await self.send(user_message(text))

        def done(events: list[Any]) -> bool:
            return ended([e for e in events if e.id not in before])

        return await wait_for_events(self.client, self.session_id, done)


async def _chat(client: AsyncAnthropic) -> Chat:
    env = await client.beta.environments.create(name="ev")
    agent = await client.beta.agents.create(
        name="ev", model="inwall-scripted", tools=[{"type": "agent_toolset_20260401"}]
    )
    session = await client.beta.sessions.create(agent=agent.id, environment_id=env.id)
    return Chat(client, session.id)


@pytest.fixture
async def chat(client: AsyncAnthropic) -> Chat:
    return await _chat(client)


async def test_list_order_filters_and_pages(chat: Chat) -> None:
    c = chat.client
    sid = chat.session_id
    events = await chat.turn("hello there")
    assert answer_text(events) == "(no tool calls)"
    types = [e.type for e in events]
    assert types[0] == "user.message"
    assert types[-1] == "session.status_idle"
    for expected in (
        "session.status_running",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
    ):
        assert expected in types
    assert len({e.id for e in events}) == len(events)
    # Default order is chronological by processed_at, and every event here has been processed.
    stamps = [e.processed_at for e in events]
    assert all(s is not None for s in stamps)
    assert stamps == sorted(stamps)
    assert events[0].content[0].text == "hello there"

    ids = [e.id for e in events]
    asc = [e.id async for e in c.beta.sessions.events.list(sid, order="asc")]
    assert asc == ids
    desc = [e.id async for e in c.beta.sessions.events.list(sid, order="desc")]
    assert desc == list(reversed(ids))

    filtered = [
        e async for e in c.beta.sessions.events.list(sid, types=["agent.message", "session.status_idle"])
    ]
    assert [e.type for e in filtered] == ["agent.message", "session.status_idle"]
    assert [e.type async for e in c.beta.sessions.events.list(sid, types=["user.message"])] == [
        "user.message"
    ]

    first = await c.beta.sessions.events.list(sid, limit=2)
    assert [e.id for e in first.data] == ids[:2]
    assert first.next_page
    pages = [first]
    while pages[-1].has_next_page():
        assert len(pages) <= len(ids)
        pages.append(await pages[-1].get_next_page())
    assert pages[-1].next_page is None
    assert [e.id for p in pages for e in p.data] == ids
    assert [e.id async for e in c.beta.sessions.events.list(sid, limit=2, order="desc")] == list(
        reversed(ids)
    )
    assert [e.id async for e in c.beta.sessions.events.list(sid, limit=1, types=["agent.message"])] == [
        e.id for e in events if e.type == "agent.message"
    ]


async def test_stream_delivers_the_turn_live_and_in_order(chat: Chat) -> None:
    c = chat.client
    sid = chat.session_id
    seen: list[Any] = []
    async with await c.beta.sessions.events.stream(sid) as stream:
        await chat.send(user_message("call read " + json.dumps({"file_path": "x"}) + "\n"))
        with anyio.fail_after(10):
            async for event in stream:
                seen.append(event)
                if event.type == "agent.tool_use":
                    # The turn is waiting for a worker; answer as one would.
                    await chat.send(
                        {
                            "type": "user.tool_result",
                            "tool_use_id": event.id,
                            "content": [{"type": "text", "text": "streamed"}],
                        }
                    )
                if ended([event]):
                    break
    listed = await events_of(c, sid)
    assert [(e.id, e.type) for e in seen] == [(e.id, e.type) for e in listed]
    assert seen[0].type == "user.message"
    assert seen[0].content[0].text.startswith("call read")
    assert "user.tool_result" in [e.type for e in seen]
    assert answer_text(seen) == "read [8 chars]: streamed"


async def test_stream_of_a_terminated_session_ends(chat: Chat) -> None:
    c = chat.client
    await c.beta.sessions.archive(chat.session_id)
    with anyio.fail_after(5):
        async with await c.beta.sessions.events.stream(chat.session_id) as stream:
            seen = [event.type async for event in stream]
    assert seen == ["session.status_terminated"]


async def test_a_second_message_continues_the_session(chat: Chat) -> None:
    await chat.turn("first")
    events = await chat.turn("second")
    assert answer_text(events) == "(no tool calls)"
    messages = [e.content[0].text for e in events if e.type == "user.message"]
    assert messages == ["first", "second"]
    idles = [e for e in events if e.type == "session.status_idle"]
    assert len(idles) == 2


# -- bad input: a 4xx with the error body, and nothing appended --------------------------------


async def _unchanged(chat: Chat, before: list[Any]) -> None:
    after = await events_of(chat.client, chat.session_id)
    assert [e.id for e in after] == [e.id for e in before]


async def test_unknown_event_type(chat: Chat) -> None:
    before = await events_of(chat.client, chat.session_id)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await chat.send({"type": "user.shout", "content": [{"type": "text", "text": "HI"}]})
    assert caught.value.type == "invalid_request_error"
    assert "user.shout" in caught.value.message
    await _unchanged(chat, before)


async def test_malformed_json(chat: Chat) -> None:
    before = await events_of(chat.client, chat.session_id)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await chat.client.post(
            f"/v1/sessions/{chat.session_id}/events",
            cast_to=object,
            content=b'{"events": [{"type": "user.mess',
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "JSON" in body["error"]["message"]
    await _unchanged(chat, before)


async def test_a_bad_event_rejects_the_whole_batch(chat: Chat) -> None:
    before = await events_of(chat.client, chat.session_id)
    with pytest.raises(anthropic.BadRequestError):
        await chat.send(
            user_message("this one is fine"),
            {
                "type": "user.tool_result",
                "tool_use_id": "sevt_nope",
                "content": [{"type": "text", "text": "x"}],
            },
        )
    await _unchanged(chat, before)
    assert (await chat.client.beta.sessions.retrieve(chat.session_id)).status == "idle"


async def test_results_must_answer_a_real_open_call(chat: Chat) -> None:
    c = chat.client
    sid = chat.session_id
    with pytest.raises(anthropic.BadRequestError):
        await chat.send({"type": "user.tool_result", "tool_use_id": "sevt_does_not_exist", "content": []})
    with pytest.raises(anthropic.BadRequestError):
        await chat.send({"type": "user.custom_tool_result", "custom_tool_use_id": "sevt_does_not_exist"})
    with pytest.raises(anthropic.BadRequestError):
        await chat.send(
            {"type": "user.tool_confirmation", "tool_use_id": "sevt_does_not_exist", "result": "allow"}
        )

    await chat.send(user_message("call bash " + json.dumps({"command": "echo hi"})))
    events = await wait_for_events(c, sid, lambda evs: any(e.type == "agent.tool_use" for e in evs))
    [use] = [e for e in events if e.type == "agent.tool_use"]
    assert use.evaluated_permission == "allow"
    # An always_allow call takes no confirmation, and an event id of the wrong kind is no tool use.
    with pytest.raises(anthropic.BadRequestError):
        await chat.send({"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "allow"})
    with pytest.raises(anthropic.BadRequestError):
        await chat.send({"type": "user.tool_result", "tool_use_id": events[0].id, "content": []})

    result = {
        "type": "user.tool_result",
        "tool_use_id": use.id,
        "content": [{"type": "text", "text": "manual"}],
    }
    await chat.send(result)
    events = await wait_for_events(c, sid, ended)
    assert answer_text(events) == "bash [6 chars]: manual"
    before = await events_of(c, sid)
    # 400, not 409: a worker would retry a 409 for a whole lease TTL (see sessions._check_reference).
    with pytest.raises(anthropic.BadRequestError) as caught:
        await chat.send(result)
    assert caught.value.status_code == 400
    assert caught.value.error_code == "tool_use_already_resolved"
    await _unchanged(chat, before)


@pytest.fixture(scope="module")
def small_body_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a 4 KiB body limit."""
    settings = fast_settings(tmp_path_factory.mktemp("small") / "data", max_body_bytes=4096)
    with running_server_in_thread(settings) as srv:
        yield srv


@pytest.fixture
async def small_bodies(small_body_server: Server) -> AsyncIterator[Chat]:
    async with small_body_server.client() as c:
        yield await _chat(c)


async def test_oversized_body_is_413_and_nothing_is_appended(small_bodies: Chat) -> None:
    chat = small_bodies
    before = await events_of(chat.client, chat.session_id)
    with pytest.raises(anthropic.ContentTooLargeError) as caught:
        await chat.send(user_message("x" * 10_000))
    assert caught.value.status_code == 413
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert "4096" in body["error"]["message"]
    await _unchanged(chat, before)
    assert (await chat.client.beta.sessions.retrieve(chat.session_id)).status == "idle"

    # Positive control: a body under the limit on the same server goes through and runs a turn.
    events = await chat.turn("small")
    assert answer_text(events) == "(no tool calls)"


def _chunked(payload: bytes) -> AsyncIterator[bytes]:
    """A body the SDK sends with ``Transfer-Encoding: chunked``: no Content-Length to refuse it by."""

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 1024):
            yield payload[i : i + 1024]

    return chunks()


async def test_oversized_chunked_body_is_refused_and_nothing_is_appended(small_bodies: Chat) -> None:
    chat = small_bodies
    before = await events_of(chat.client, chat.session_id)
    payload = json.dumps({"events": [user_message("y" * 10_000)]}).encode()
    with pytest.raises(anthropic.APIStatusError) as caught:
        await chat.client.post(
            f"/v1/sessions/{chat.session_id}/events", cast_to=object, content=_chunked(payload)
        )
    assert 400 <= caught.value.status_code < 500
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    await _unchanged(chat, before)
    # Positive control: the same chunked path under the limit is accepted.
    small = json.dumps({"events": [user_message("tiny")]}).encode()
    sent = await chat.client.post(
        f"/v1/sessions/{chat.session_id}/events", cast_to=object, content=_chunked(small)
    )
    assert isinstance(sent, dict)
    assert [e["type"] for e in sent["data"]] == ["user.message"]


async def test_oversized_chunked_body_is_413(small_bodies: Chat) -> None:
    chat = small_bodies
    payload = json.dumps({"events": [user_message("y" * 10_000)]}).encode()
    with pytest.raises(anthropic.ContentTooLargeError):
        await chat.client.post(
            f"/v1/sessions/{chat.session_id}/events", cast_to=object, content=_chunked(payload)
        )


async def test_list_is_in_recorded_order_with_a_message_queued_mid_turn(chat: Chat) -> None:
    """inwall lists events in the order it recorded them (stable, append-only pages).

    That is the processed_at order for every event except a user message sent
    while a turn runs: it is listed where it arrived and stamped processed_at
    when the agent consumed it (README: "Event order").
    """
    c = chat.client
    sid = chat.session_id
    await chat.send(user_message("call bash " + json.dumps({"command": "true"})))
    events = await wait_for_events(c, sid, lambda evs: any(e.type == "agent.tool_use" for e in evs))
    [use] = [e for e in events if e.type == "agent.tool_use"]
    await chat.send(user_message("meanwhile"))  # queued: the turn still waits for the bash result
    await chat.send(
        {"type": "user.tool_result", "tool_use_id": use.id, "content": [{"type": "text", "text": "ok"}]}
    )
    events = await wait_for_events(
        c, sid, lambda evs: ended(evs) and all(e.processed_at is not None for e in evs)
    )
    [meanwhile] = [e for e in events if e.type == "user.message" and e.content[0].text == "meanwhile"]
    [result] = [e for e in events if e.type == "user.tool_result"]
    assert meanwhile.processed_at is not None
    assert result.processed_at is not None
    assert meanwhile.processed_at >= result.processed_at, "the agent consumed it after the result"
    order = [e.id for e in events]
    assert order.index(meanwhile.id) < order.index(result.id), "listed where it arrived"
    assert order == sorted(order, key=order.index)
