"""The ``inwall-scripted`` contract, which tests outside this repository rely on."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inwall.agent.models.base import (
    ContentBlock,
    Message,
    ModelProvider,
    ModelRequest,
    ModelResponse,
    ToolSpec,
)
from inwall.agent.models.scripted import MAX_TEXT_CHARS, NO_CALLS_ANSWER, ScriptedProvider, parse_calls

Tool = Callable[[dict[str, Any]], "str | list[ContentBlock]"]

BASH = ToolSpec("bash", "Run a command", {"type": "object"})


def _request(
    messages: list[Message], tools: list[ToolSpec] | None = None, system: str | None = None
) -> ModelRequest:
    return ModelRequest(model="inwall-scripted", system=system, messages=messages, tools=tools or [BASH])


def _user(text: str) -> Message:
    return Message("user", [{"type": "text", "text": text}])


class Turn:
    """A minimal turn loop: what the real loop does, minus persistence and events."""

    def __init__(self, tools: dict[str, Tool] | None = None, history: list[Message] | None = None) -> None:
        self.tools = tools or {}
        self.messages: list[Message] = list(history or [])
        self.responses: list[ModelResponse] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def run(self, prompt: str | list[ContentBlock]) -> str:
        content = [{"type": "text", "text": prompt}] if isinstance(prompt, str) else prompt
        self.messages.append(Message("user", content))
        model = ScriptedProvider()
        for _ in range(100):
            response = model.decide(_request(self.messages))
            self.responses.append(response)
            self.messages.append(Message("assistant", list(response.content)))
            if response.stop_reason != "tool_use":
                assert response.stop_reason == "end_turn"
                (block,) = response.content
                assert block["type"] == "text"
                return str(block["text"])
            (use,) = response.content  # one call per step
            self.calls.append((use["name"], use["input"]))
            tool = self.tools.get(use["name"])
            result: str | list[ContentBlock] = "no such tool" if tool is None else tool(use["input"])
            self.messages.append(
                Message("user", [{"type": "tool_result", "tool_use_id": use["id"], "content": result}])
            )
        raise AssertionError("the scripted model did not end the turn")


def echo(inp: dict[str, Any]) -> str:
    return json.dumps(inp, sort_keys=True)


def fixed(text: str) -> Tool:
    return lambda _inp: text


# --- calls ----------------------------------------------------------------------


def test_calls_in_order_one_per_step_then_answer() -> None:
    turn = Turn({"bash": fixed("ok"), "read": fixed("file body"), "write": fixed("written")})
    answer = turn.run(
        'Do this:\ncall bash {"command": "ls"}\nthen\n'
        'call write {"path": "a"}\n  call read {"path": "a"}  \nthanks'
    )
    assert turn.calls == [("bash", {"command": "ls"}), ("write", {"path": "a"}), ("read", {"path": "a"})]
    assert [r.stop_reason for r in turn.responses] == ["tool_use", "tool_use", "tool_use", "end_turn"]
    assert answer == "bash [2 chars]: ok\nwrite [7 chars]: written\nread [9 chars]: file body"


def test_json_with_spaces_and_nested_objects() -> None:
    turn = Turn({"write": echo})
    payload = {"path": "/tmp/a b.txt", "content": "x  y {z}", "opts": {"mode": [1, {"k": None}], "t": True}}
    turn.run(f"call   write    {json.dumps(payload, indent=None, separators=(' , ', ' :  '))}")
    assert turn.calls == [("write", payload)]


def test_missing_json_means_empty_object() -> None:
    turn = Turn({"x": fixed("done")})
    assert (
        turn.run("call x\n\tcall x   \ncall x{}") == "x [4 chars]: done\nx [4 chars]: done\nx [4 chars]: done"
    )
    assert turn.calls == [("x", {}), ("x", {}), ("x", {})]


@pytest.mark.parametrize(
    "line",
    [
        "call me maybe",
        "please call bash {}",
        "Call bash {}",
        "CALL bash {}",
        "recall bash {}",
        "call",
        "call ",
        'call {"a": 1}',
        "calling bash {}",
        "call bash maybe {}",
        "",
        "# call bash {}",
    ],
)
def test_lines_that_are_not_calls(line: str) -> None:
    turn = Turn({"bash": fixed("ran")})
    assert turn.run(f"{line}\nnothing else") == NO_CALLS_ANSWER
    assert turn.calls == []


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('call bash {"command": "ls"', "invalid JSON"),
        ('call bash {"command": "ls"} and more', "invalid JSON"),
        ("call bash {'single': 'quotes'}", "invalid JSON"),
    ],
)
def test_broken_json_is_a_loud_error_and_no_call(line: str, reason: str) -> None:
    turn = Turn({"bash": fixed("ran")})
    answer = turn.run(f"call bash {{}}\n{line}")
    assert turn.calls == []
    assert answer.startswith("inwall-scripted: line 2 is not a valid call: ")
    assert reason in answer
    assert turn.responses[0].stop_reason == "end_turn"


def test_calls_tools_the_request_does_not_list() -> None:
    turn = Turn()
    assert turn.run("call nope {}") == "nope [12 chars]: no such tool"
    assert turn.calls == [("nope", {})]


def test_tool_use_ids_are_unique_toolu_ids() -> None:
    turn = Turn({"x": fixed("")})
    turn.run("\n".join(["call x"] * 30))
    ids = [r.content[0]["id"] for r in turn.responses if r.stop_reason == "tool_use"]
    assert len(ids) == 30
    assert len(set(ids)) == 30
    assert all(i.startswith("toolu_") and len(i) > len("toolu_") + 10 for i in ids)


def test_prompt_text_blocks_are_joined_with_newlines() -> None:
    turn = Turn({"a": fixed("1"), "b": fixed("2")})
    answer = turn.run(
        [
            {"type": "text", "text": "call a"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
            {"type": "text", "text": "call b"},
        ]
    )
    assert answer == "a [1 chars]: 1\nb [1 chars]: 2"


# --- the answer -----------------------------------------------------------------------


def test_no_calls() -> None:
    turn = Turn()
    assert turn.run("just chat with me") == NO_CALLS_ANSWER
    assert NO_CALLS_ANSWER == "(no tool calls)"


@pytest.mark.parametrize("size", [0, 1, 1999, 2000, 2001, 5000])
def test_exact_n_and_the_2000_character_cut(size: int) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(size))
    answer = Turn({"cat": fixed(text)}).run("call cat")
    assert answer == f"cat [{size} chars]: {text[:2000]}"
    assert len(answer) == len(f"cat [{size} chars]: ") + min(size, MAX_TEXT_CHARS)


def test_non_ascii_counts_characters_not_bytes() -> None:
    text = "héllo ✓ 😀 日本語"
    assert len(text.encode()) != len(text)
    answer = Turn({"say": fixed(text)}).run("call say")
    assert answer == f"say [{len(text)} chars]: {text}"
    assert answer == "say [13 chars]: héllo ✓ 😀 日本語"  # 😀 is one character, four UTF-8 bytes


def test_cut_is_by_characters() -> None:
    text = "😀" * 2500
    answer = Turn({"emoji": fixed(text)}).run("call emoji")
    assert answer == "emoji [2500 chars]: " + "😀" * 2000


def test_multiple_result_blocks_are_joined_and_non_text_ignored() -> None:
    blocks: list[ContentBlock] = [
        {"type": "text", "text": "first"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
        {"type": "text", "text": "second\nline"},
    ]
    answer = Turn({"shot": lambda _i: blocks}).run("call shot")
    assert answer == "shot [17 chars]: first\nsecond\nline"


def test_string_content_and_empty_results() -> None:
    turn = Turn({"s": fixed("plain string"), "e": lambda _i: []})
    assert turn.run("call s\ncall e") == "s [12 chars]: plain string\ne [0 chars]: "


def test_error_results_are_reported_like_any_other() -> None:
    messages = [
        _user("call bash {}"),
        Message("assistant", [{"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}}]),
        Message(
            "user",
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "denied by policy",
                    "is_error": True,
                }
            ],
        ),
    ]
    response = ScriptedProvider().decide(_request(messages))
    assert response.content == [{"type": "text", "text": "bash [16 chars]: denied by policy"}]


def test_result_for_an_unknown_tool_use_id() -> None:
    messages = [
        _user("call bash {}"),
        Message("assistant", [{"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}}]),
        Message("user", [{"type": "tool_result", "tool_use_id": "toolu_other", "content": "?"}]),
    ]
    response = ScriptedProvider().decide(_request(messages))
    assert response.content == [{"type": "text", "text": "unknown [1 chars]: ?"}]


def test_only_the_latest_turn_counts() -> None:
    first = Turn({"a": fixed("old")})
    assert first.run("call a") == "a [3 chars]: old"
    second = Turn({"b": fixed("new")}, history=first.messages)
    assert second.run("call b\ncall b") == "b [3 chars]: new\nb [3 chars]: new"
    assert second.calls == [("b", {}), ("b", {})]
    third = Turn(history=second.messages)
    assert third.run("no calls now") == NO_CALLS_ANSWER


def test_tool_result_messages_are_not_the_prompt() -> None:
    messages = [
        _user("call a\ncall b"),
        Message("assistant", [{"type": "tool_use", "id": "toolu_1", "name": "a", "input": {}}]),
        # Its text says "call z", but a tool result is not a user prompt.
        Message("user", [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "call z"}]),
    ]
    response = ScriptedProvider().decide(_request(messages))
    assert response.stop_reason == "tool_use"
    assert response.content[0]["name"] == "b"


def test_string_message_content_is_a_text_block() -> None:
    response = ScriptedProvider().decide(_request([Message("user", "call bash")]))  # type: ignore[arg-type]  # a str where blocks are expected: tolerated
    assert response.content[0]["name"] == "bash"


def test_no_user_message_at_all() -> None:
    response = ScriptedProvider().decide(_request([]))
    assert response.content == [{"type": "text", "text": NO_CALLS_ANSWER}]
    assert response.stop_reason == "end_turn"


# --- usage and the provider interface ---------------------------------------------------------


def test_usage_is_characters_over_four() -> None:
    tool = ToolSpec("t", "d", {})
    request = ModelRequest(model="inwall-scripted", system="sys!", messages=[_user("hello")], tools=[tool])
    response = ScriptedProvider().decide(request)
    read = len("sys!") + len("t") + len("d") + len("{}") + len("hello")
    assert response.usage.input_tokens == math.ceil(read / 4)
    assert response.usage.output_tokens == math.ceil(len(NO_CALLS_ANSWER) / 4)


def test_parse_calls_reports_line_numbers() -> None:
    assert parse_calls("a\nb\ncall x {") != []
    error = parse_calls("a\nb\ncall x {")
    assert not isinstance(error, list)
    assert error.line_no == 3


@pytest.mark.anyio
async def test_async_interface() -> None:
    provider = ScriptedProvider()
    assert isinstance(provider, ModelProvider)
    response = await provider.step(_request([_user("call bash")]))
    assert response.stop_reason == "tool_use"
    await provider.aclose()


# --- properties ------------------------------------------------------------------------------------

_result_text = st.text(st.characters(codec="utf-8"), max_size=3000)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(_result_text, min_size=1, max_size=3))
def test_property_n_is_always_the_length(texts: list[str]) -> None:
    queue = list(texts)
    turn = Turn({"t": lambda _i: queue.pop(0)})
    answer = turn.run("\n".join(["call t"] * len(texts)))
    expected = "\n".join(f"t [{len(t)} chars]: {t[:MAX_TEXT_CHARS]}" for t in texts)
    assert answer == expected


_json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=15)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=80, deadline=None)
@given(
    name=st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True),
    payload=st.dictionaries(st.text(max_size=6), _json, max_size=4),
    ascii_only=st.booleans(),
    pad=st.sampled_from(["", " ", "  ", "\t"]),
)
def test_property_any_json_object_round_trips(
    name: str, payload: dict[str, Any], ascii_only: bool, pad: str
) -> None:
    line = f"{pad}call {name}{pad} {json.dumps(payload, ensure_ascii=ascii_only)}{pad}"
    turn = Turn({name: fixed("ok")})
    turn.run(f"intro\n{line}\noutro")
    assert turn.calls == [(name, payload)]


def test_crlf_prompts() -> None:
    turn = Turn({"a": fixed("1"), "b": fixed("2")})
    assert turn.run('call a\r\ncall b {"k": "v"}\r\n') == "a [1 chars]: 1\nb [1 chars]: 2"
    assert turn.calls == [("a", {}), ("b", {"k": "v"})]
