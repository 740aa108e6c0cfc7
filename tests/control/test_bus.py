"""The in-process event bus: one encoding per event for all streams, wake-ups that survive forgetting."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from inwall.api.sse import encode_event
from inwall.control.bus import EventBus

pytestmark = pytest.mark.anyio


async def test_every_stream_of_a_session_shares_one_encoding() -> None:
    bus = EventBus()
    worker, client, other = bus.open("sesn_a"), bus.open("sesn_a"), bus.open("sesn_b")
    calls: list[dict[str, Any]] = []

    def counting(body: dict[str, Any]) -> bytes:
        calls.append(body)
        return encode_event(body)

    big = {"id": "sevt_1", "type": "agent.tool_use", "input": {"content": "x" * 1_000_000}}
    bus.publish("sesn_a", [big])
    seen_by_worker, seen_by_client = worker.events.receive_nowait(), client.events.receive_nowait()
    assert seen_by_worker is seen_by_client
    wire = seen_by_worker.wire(counting)
    assert seen_by_client.wire(counting) is wire and len(calls) == 1
    assert wire.startswith(b"event: agent.tool_use\ndata: ")
    assert json.loads(wire.split(b"data: ", 1)[1]) == big
    with pytest.raises(anyio.WouldBlock):  # sesn_b's stream got nothing
        other.events.receive_nowait()
    for sub in (worker, client, other):
        sub.close()


async def test_a_wake_after_forgetting_still_wakes() -> None:
    bus = EventBus()
    woken: list[str] = []
    bus.on_wake = woken.append
    bus.wake_session("sesn_a")
    assert bus.take_wake("sesn_a")
    bus.forget_session("sesn_a")  # its runner exited
    assert not bus.take_wake("sesn_a")
    bus.wake_session("sesn_a")  # new input: a fresh signal and a poke for a new runner
    assert bus.take_wake("sesn_a") and woken == ["sesn_a", "sesn_a"]
