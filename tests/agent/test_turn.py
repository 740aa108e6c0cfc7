"""The turn state machine, sans-I/O: fold event logs, check what ``decide`` asks for next."""

from __future__ import annotations

from typing import Any

import pytest

from inwall.agent.offload import estimate_tokens
from inwall.agent.turn import (
    CallModel,
    EndTurn,
    Interrupt,
    Nothing,
    Offload,
    RequireAction,
    RunMcp,
    TurnState,
    WaitForWorker,
    decide,
)


class Log:
    """Build a log the way the server writes it: seq, event body, internal bookkeeping, processed flag."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, Any], dict[str, Any], bool]] = []

    def add(
        self, type_: str, *, internal: dict[str, Any] | None = None, processed: bool = True, **body: Any
    ) -> str:
        event_id = f"sevt_{len(self.rows) + 1}"
        self.rows.append(
            (len(self.rows) + 1, {"id": event_id, "type": type_, **body}, internal or {}, processed)
        )
        return event_id

    def state(self) -> TurnState:
        st = TurnState()
        for seq, body, internal, processed in self.rows:
            st.apply(seq, body, internal, processed)
        return st


def text(t: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": t}]


def test_fresh_session_has_nothing_to_do() -> None:
    assert decide(TurnState()) == Nothing()


def test_a_queued_message_starts_a_turn() -> None:
    log = Log()
    msg = log.add("user.message", content=text("hi"), processed=False)
    assert decide(log.state()) == CallModel((msg,), starts_turn=True)


def test_builtin_calls_wait_for_the_worker_then_the_model_is_called_again() -> None:
    log = Log()
    log.add("user.message", content=text("go"), internal={"consumed_step": 1})
    log.add("session.status_running")
    log.add("span.model_request_start", internal={"step": 1})
    use = log.add(
        "agent.tool_use",
        name="bash",
        input={"command": "ls"},
        evaluated_permission="allow",
        internal={"step": 1, "model_name": "bash"},
    )
    log.add("span.model_request_end", internal={"step": 1})
    assert decide(log.state()) == WaitForWorker((use,))
    log.add("user.tool_result", tool_use_id=use, content=text("a\nb"), is_error=False)
    state = log.state()
    assert decide(state) == CallModel((), starts_turn=False)
    messages = state.transcript()
    assert [m.role for m in messages] == ["user", "assistant", "user"]
    assert messages[2].content[0] == {
        "type": "tool_result",
        "tool_use_id": use,
        "content": text("a\nb"),
        "is_error": False,
    }


def test_custom_tools_and_ask_gated_calls_require_action_in_order() -> None:
    log = Log()
    log.add("user.message", content=text("go"), internal={"consumed_step": 1})
    log.add("span.model_request_start", internal={"step": 1})
    custom = log.add(
        "agent.custom_tool_use", name="weather", input={}, internal={"step": 1, "model_name": "weather"}
    )
    ask = log.add(
        "agent.tool_use",
        name="bash",
        input={"command": "rm x"},
        evaluated_permission="ask",
        internal={"step": 1, "model_name": "bash"},
    )
    assert decide(log.state()) == RequireAction((custom, ask))
    log.add("user.tool_confirmation", tool_use_id=ask, result="deny", deny_message="no deleting")
    assert decide(log.state()) == RequireAction((custom,))
    log.add("user.custom_tool_result", custom_tool_use_id=custom, content=text("sunny"))
    state = log.state()
    assert decide(state) == CallModel((), starts_turn=False)
    [_, _, results] = state.transcript()
    denied = results.content[1]
    assert (
        denied["is_error"]
        and "denied" in denied["content"][0]["text"]
        and "no deleting" in denied["content"][0]["text"]
    )


def test_mcp_calls_run_on_the_control_plane_once_allowed() -> None:
    log = Log()
    log.add("user.message", content=text("go"), internal={"consumed_step": 1})
    use = log.add(
        "agent.mcp_tool_use",
        name="lookup",
        mcp_server_name="crm",
        input={"id": 1},
        evaluated_permission="ask",
        internal={"step": 1, "model_name": "mcp__crm__lookup"},
    )
    assert decide(log.state()) == RequireAction((use,))
    log.add("user.tool_confirmation", tool_use_id=use, result="allow")
    action = decide(log.state())
    assert isinstance(action, RunMcp) and action.call.event_id == use and action.call.mcp_tool == "lookup"


def test_an_interrupt_cancels_the_open_calls_and_queued_inputs_before_it() -> None:
    log = Log()
    log.add("user.message", content=text("go"), internal={"consumed_step": 1})
    use = log.add("agent.tool_use", name="bash", input={"command": "sleep 99"}, internal={"step": 1})
    early = log.add("user.message", content=text("also this"), processed=False)
    stop = log.add("user.interrupt", processed=False)
    late = log.add("user.message", content=text("new question"), processed=False)
    assert decide(log.state()) == Interrupt((stop,), (early,), (use,))
    state = log.state()
    state.consumed((stop, early), -1)
    log.add("agent.tool_result", tool_use_id=use, content=text("interrupted"), is_error=True)
    for seq, body, internal, processed in log.rows[-1:]:
        state.apply(seq, body, internal, processed)
    assert decide(state) == CallModel((late,), starts_turn=False)


def test_a_model_call_that_died_with_the_server_is_made_again() -> None:
    log = Log()
    log.add("user.message", content=text("hi"), internal={"consumed_step": 1})
    log.add("session.status_running")
    log.add("span.model_request_start", internal={"step": 1})
    state = log.state()
    assert decide(state) == CallModel((), starts_turn=False)
    assert state.transcript()[0].content == text("hi")


def test_a_failed_turn_is_not_retried_forever() -> None:
    log = Log()
    log.add("user.message", content=text("hi"), internal={"consumed_step": 1})
    log.add("span.model_request_start", internal={"step": 1})
    log.add("span.model_request_end", internal={"step": 1}, is_error=True)
    log.add("session.status_idle", stop_reason={"type": "retries_exhausted"})
    assert decide(log.state()) == Nothing()


def test_final_answer_without_its_idle_ends_the_turn() -> None:
    log = Log()
    log.add("user.message", content=text("hi"), internal={"consumed_step": 1})
    log.add("session.status_running")
    log.add("agent.message", content=text("hello"), internal={"step": 1})
    assert decide(log.state()) == EndTurn()
    log.add("session.status_idle", stop_reason={"type": "end_turn"})
    assert decide(log.state()) == Nothing()


def test_refused_calls_resolve_immediately() -> None:
    log = Log()
    log.add("user.message", content=text("go"), internal={"consumed_step": 1})
    use = log.add(
        "agent.tool_use",
        name="nope",
        input={},
        evaluated_permission="deny",
        internal={"step": 1, "refused": True, "model_name": "nope"},
    )
    log.add("agent.tool_result", tool_use_id=use, content=text("not available"), is_error=True)
    assert decide(log.state()) == CallModel((), starts_turn=False)


@pytest.mark.parametrize("size", [10, 500_000])
def test_large_results_are_offloaded_once(size: int) -> None:
    log = Log()
    log.add("user.message", content=text("go"), internal={"consumed_step": 1})
    use = log.add("agent.tool_use", name="bash", input={}, internal={"step": 1})
    log.add("user.tool_result", tool_use_id=use, content=text("x" * size))
    state = log.state()
    action = decide(state)
    if estimate_tokens("x" * size) <= 100_000:
        assert action == CallModel((), starts_turn=False)
        return
    assert isinstance(action, Offload) and action.call.event_id == use
    # The runner commits the note and an internal write the model never sees.
    state.offloaded(use, "[inwall] saved")
    write = log.add(
        "agent.tool_use",
        name="write",
        input={"file_path": "p", "content": "x"},
        internal={"step": 1, "hidden": True, "offload_of": use},
    )
    for seq, body, internal, processed in log.rows[-1:]:
        state.apply(seq, body, internal, processed)
    assert decide(state) == WaitForWorker((write,))
    log.add("user.tool_result", tool_use_id=write, content=text("wrote"))
    state.apply(*log.rows[-1])
    assert decide(state) == CallModel((), starts_turn=False)
    tool_results = state.transcript()[-1].content
    assert tool_results == [
        {"type": "tool_result", "tool_use_id": use, "content": text("[inwall] saved"), "is_error": False}
    ]


def test_estimate_tokens_formula() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("日本語") == 3
    assert estimate_tokens("ab日") == 2
