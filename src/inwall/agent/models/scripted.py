"""``inwall-scripted``: a deterministic model for tests and the offline demo.

Tests outside this repository rely on this contract, so it is spelled out
exactly.  It reads only the ``ModelRequest`` (no state between steps), so a
restarted server repeats a step and gets the same decision.

The prompt
  The *latest user message* is the latest ``user`` message holding at least
  one ``text`` block (a plain string counts as one).  Tool results come back
  as user messages of ``tool_result`` blocks only, so they never count.  The
  prompt is that message's text blocks joined with ``"\\n"``.  The *turn* is
  every message after it.

Calls
  The prompt is split into lines at ``"\\n"`` only (a ``"\\r"`` left over from
  ``"\\r\\n"`` goes with the whitespace), and every line is stripped of
  surrounding whitespace.  A line is a call when it reads
  ``call TOOL_NAME`` optionally followed by a JSON object:
  ``call`` in lower case, whitespace, a name (no whitespace and no ``{``), then
  optional whitespace and the JSON.  No JSON means ``{}``.  Text after the name
  that does not start with ``{`` makes the line prose, not a call (``call me
  maybe``).  Text that does start with ``{`` but is not exactly one JSON object
  is a mistake, not prose: the model makes no calls at all and ends the turn
  with one text block ``inwall-scripted: line L is not a valid call: REASON``
  (L counts from 1 in the prompt), so a typo in a test fails loudly.

  Step k of the turn makes call k, one ``tool_use`` block per step, in prompt
  order; k is the number of ``tool_use`` blocks in assistant messages of the
  turn so far.  Calls go out whether or not the tool is in ``request.tools``
  (the loop answers unknown tools with an error result, which is worth
  testing).  Ids are ``toolu_`` plus a random, time-sortable suffix.
  ``stop_reason`` is ``tool_use``.

The answer
  When no calls remain it ends the turn (``stop_reason`` ``end_turn``) with one
  text block: one line per ``tool_result`` block in the turn, in order,
  joined with ``"\\n"``::

      TOOL_NAME [N chars]: TEXT

  * the result text is the result's ``text`` blocks joined with ``"\\n"``
    (string content is one text block; images and other blocks are ignored);
  * N is ``len()`` of that text: Unicode code points, exactly as received;
  * TEXT is that text cut to its first 2,000 code points, otherwise verbatim
    (it may hold newlines; N tells a reader where it ends);
  * TOOL_NAME is the ``name`` of the ``tool_use`` whose ``id`` the result's
    ``tool_use_id`` names, searched in the whole conversation; ``unknown`` if
    there is none.

  With no tool results in the turn the block is ``(no tool calls)``.

Usage
  A rough estimate: ceil(characters / 4) of what the model reads (system,
  tool specs, texts, tool inputs as JSON, result texts) and of what it writes.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inwall.agent.models.base import ContentBlock, Message, ModelRequest, ModelResponse, ToolSpec, Usage
from inwall.ids import new_id

__all__ = [
    "MAX_TEXT_CHARS",
    "MODEL_ID",
    "NO_CALLS_ANSWER",
    "ScriptError",
    "ScriptedCall",
    "ScriptedProvider",
    "parse_calls",
    "result_text",
]

MODEL_ID = "inwall-scripted"
MAX_TEXT_CHARS = 2000
NO_CALLS_ANSWER = "(no tool calls)"
UNKNOWN_TOOL = "unknown"

_CALL = re.compile(r"call\s+([^\s{]+)\s*(.*)", re.DOTALL)


@dataclass(frozen=True)
class ScriptedCall:
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class ScriptError:
    """A line that looks like a call with broken JSON; reported instead of calling anything."""

    line_no: int
    reason: str

    def text(self) -> str:
        return f"{MODEL_ID}: line {self.line_no} is not a valid call: {self.reason}"


def _blocks(content: object) -> list[ContentBlock]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list | tuple):
        return [b for b in content if isinstance(b, dict)]
    return []


def _texts(content: object) -> list[str]:
    return [str(b.get("text", "")) for b in _blocks(content) if b.get("type") == "text"]


def result_text(block: ContentBlock) -> str:
    """The text of a ``tool_result`` as the model receives it."""
    return "\n".join(_texts(block.get("content", "")))


def parse_calls(prompt: str) -> list[ScriptedCall] | ScriptError:
    calls: list[ScriptedCall] = []
    for line_no, raw in enumerate(prompt.split("\n"), start=1):
        match = _CALL.fullmatch(raw.strip())
        if match is None:
            continue
        name, rest = match.group(1), match.group(2)
        if not rest:
            calls.append(ScriptedCall(name, {}))
            continue
        if not rest.startswith("{"):
            continue  # prose such as "call me maybe"
        try:
            parsed = json.loads(rest)
        except ValueError as exc:
            return ScriptError(line_no, f"invalid JSON ({exc})")
        if not isinstance(parsed, dict):  # pragma: no cover - a "{" start always parses to an object
            return ScriptError(line_no, "the input must be a JSON object")
        calls.append(ScriptedCall(name, parsed))
    return calls


@functools.lru_cache(maxsize=256)
def _parse_cached(prompt: str) -> tuple[ScriptedCall, ...] | ScriptError:
    """Every step of a turn re-reads the same prompt; parse it once."""
    calls = parse_calls(prompt)
    return calls if isinstance(calls, ScriptError) else tuple(calls)


def _latest_prompt(messages: Sequence[Message]) -> tuple[str, int] | None:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role == "user":
            texts = _texts(message.content)
            if texts:
                return "\n".join(texts), index
    return None


def _answer(turn: Sequence[Message], everything: Sequence[Message]) -> str:
    names: dict[str, str] = {}
    for message in everything:
        if message.role == "assistant":
            for block in _blocks(message.content):
                if block.get("type") == "tool_use":
                    names[str(block.get("id"))] = str(block.get("name", UNKNOWN_TOOL))
    lines: list[str] = []
    for message in turn:
        if message.role != "user":
            continue
        for block in _blocks(message.content):
            if block.get("type") == "tool_result":
                text = result_text(block)
                name = names.get(str(block.get("tool_use_id")), UNKNOWN_TOOL)
                lines.append(f"{name} [{len(text)} chars]: {text[:MAX_TEXT_CHARS]}")
    return "\n".join(lines) if lines else NO_CALLS_ANSWER


def _chars_read(request: ModelRequest) -> int:
    total = len(request.system or "")
    for tool in request.tools:
        total += _tool_chars(tool)
    for message in request.messages:
        for block in _blocks(message.content):
            kind = block.get("type")
            if kind == "text":
                total += len(str(block.get("text", "")))
            elif kind == "tool_use":
                total += len(str(block.get("name", ""))) + len(json.dumps(block.get("input", {})))
            elif kind == "tool_result":
                total += len(result_text(block))
    return total


def _tool_chars(tool: ToolSpec) -> int:
    return len(tool.name) + len(tool.description) + len(json.dumps(dict(tool.input_schema)))


def _tokens(chars: int) -> int:
    return math.ceil(chars / 4)


class ScriptedProvider:
    """Stateless and client-free: one instance serves every session."""

    async def step(self, request: ModelRequest) -> ModelResponse:
        return self.decide(request)

    def decide(self, request: ModelRequest) -> ModelResponse:
        """The whole model, synchronous, so property tests need no event loop."""
        read = _tokens(_chars_read(request))
        found = _latest_prompt(request.messages)
        if found is None:
            return _text_response(NO_CALLS_ANSWER, read)
        prompt, index = found
        turn = request.messages[index + 1 :]
        calls = _parse_cached(prompt)
        if isinstance(calls, ScriptError):
            return _text_response(calls.text(), read)
        done = sum(
            1
            for message in turn
            if message.role == "assistant"
            for block in _blocks(message.content)
            if block.get("type") == "tool_use"
        )
        if done < len(calls):
            call = calls[done]
            block: ContentBlock = {
                "type": "tool_use",
                "id": new_id("toolu"),
                "name": call.name,
                "input": copy.deepcopy(call.input),  # the parse is cached and shared
            }
            written = len(call.name) + len(json.dumps(call.input))
            return ModelResponse(
                content=[block],
                stop_reason="tool_use",
                usage=Usage(input_tokens=read, output_tokens=_tokens(written)),
            )
        return _text_response(_answer(turn, request.messages), read)

    async def aclose(self) -> None:
        return None


def _text_response(text: str, read: int) -> ModelResponse:
    return ModelResponse(
        content=[{"type": "text", "text": text}],
        stop_reason="end_turn",
        usage=Usage(input_tokens=read, output_tokens=_tokens(len(text))),
    )
