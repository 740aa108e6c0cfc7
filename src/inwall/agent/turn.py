"""The turn state machine, sans-I/O: fold the event log, decide the next step.

A session's state is nothing but its event log. ``TurnState.apply`` folds one
logged event at a time; ``decide`` looks at the folded state and names the one
thing to do next. The runner (``runner.py``) performs that action, which
appends events, which are folded in turn. Because the log is the only input,
a server killed at any point resumes exactly where the log says it was: a
model call whose events never committed is simply made again.

Transcript layout, for step ``n`` (one model call):

    user(  tool results of step n-1  +  inputs consumed at step n )
    assistant( blocks emitted by step n )

Tool uses are identified by their event id, which doubles as the ``tool_use``
id the model sees, so ids stay stable across restarts and providers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from inwall.agent.models.base import ContentBlock, Message
from inwall.agent.offload import DEFAULT_THRESHOLD_TOKENS, estimate_tokens, threshold_for

__all__ = [
    "CallModel",
    "EndTurn",
    "Interrupt",
    "Nothing",
    "Offload",
    "RequireAction",
    "RunMcp",
    "ToolCall",
    "TurnState",
    "WaitForWorker",
    "decide",
    "result_text",
]

CallKind = Literal["builtin", "custom", "mcp", "refused"]
TOOL_USE_TYPES = {"agent.tool_use": "builtin", "agent.custom_tool_use": "custom", "agent.mcp_tool_use": "mcp"}
RESULT_TYPES = {
    "user.tool_result": "tool_use_id",
    "user.custom_tool_result": "custom_tool_use_id",
    "agent.tool_result": "tool_use_id",
    "agent.mcp_tool_result": "mcp_tool_use_id",
}
INPUT_TYPES = ("user.message", "system.message")


@dataclass
class ToolCall:
    event_id: str
    kind: CallKind
    model_name: str
    input: dict[str, Any]
    permission: str  # allow | ask | deny
    step: int
    mcp_server: str | None = None
    mcp_tool: str | None = None
    hidden: bool = False  # an internal call the model never sees (offload writes)
    confirmation: str | None = None  # allow | deny
    deny_message: str | None = None
    result: list[ContentBlock] | None = None
    is_error: bool = False
    result_event_id: str | None = None
    result_tokens: int = 0
    offloaded: bool = False
    offload_of: str | None = None  # for an internal write: the call whose output it stores
    offload_error: str | None = None

    @property
    def resolved(self) -> bool:
        return self.result is not None or self.confirmation == "deny" or self.permission == "deny"

    def result_block(self) -> ContentBlock:
        if self.result is not None and self.confirmation != "deny":
            content, is_error = self.result, self.is_error
            if self.offload_error:
                content = [
                    *content,
                    {
                        "type": "text",
                        "text": f"(saving the full output failed: {self.offload_error}; "
                        "only the preview above is available)",
                    },
                ]
        elif self.confirmation == "deny" or self.permission == "deny":
            note = "The user denied this tool call."
            if self.deny_message:
                note += f" Reason: {self.deny_message}"
            content, is_error = [{"type": "text", "text": note}], True
        else:
            content, is_error = (
                [{"type": "text", "text": "The tool call was interrupted before it finished."}],
                True,
            )
        return {
            "type": "tool_result",
            "tool_use_id": self.event_id,
            "content": list(content),
            "is_error": is_error,
        }


@dataclass(frozen=True)
class Nothing:
    """Idle with no pending input: the runner may exit."""


@dataclass(frozen=True)
class WaitForWorker:
    """Built-in calls are out with a worker; wait for results (or an interrupt)."""

    call_ids: tuple[str, ...]


@dataclass(frozen=True)
class RequireAction:
    """Custom tool results or confirmations are needed from a client."""

    event_ids: tuple[str, ...]


@dataclass(frozen=True)
class RunMcp:
    call: ToolCall


@dataclass(frozen=True)
class Offload:
    """A result over the token threshold: store it in the workspace, show the model a note."""

    call: ToolCall
    threshold: int


@dataclass(frozen=True)
class CallModel:
    consume: tuple[str, ...]  # pending input event ids this call consumes
    starts_turn: bool


@dataclass(frozen=True)
class EndTurn:
    """The last step answered without tool calls but the idle was never recorded."""


@dataclass(frozen=True)
class Interrupt:
    interrupt_ids: tuple[str, ...]
    dropped_inputs: tuple[
        str, ...
    ]  # inputs queued before the interrupt: the turn they asked for is cancelled
    open_calls: tuple[str, ...]


Action = Nothing | WaitForWorker | RequireAction | RunMcp | Offload | CallModel | EndTurn | Interrupt


@dataclass
class _Input:
    event_id: str
    seq: int
    blocks: list[ContentBlock]
    consumed_step: int | None


@dataclass
class TurnState:
    """Everything the turn loop knows, folded from the log."""

    status: str = "idle"
    last_seq: int = 0
    step: int = 0
    assistant: dict[int, list[ContentBlock]] = field(default_factory=dict)
    calls: dict[str, ToolCall] = field(default_factory=dict)
    call_order: list[str] = field(default_factory=list)
    calls_by_step: dict[int, list[str]] = field(default_factory=dict)
    inputs: list[_Input] = field(default_factory=list)
    interrupts: list[tuple[int, str]] = field(default_factory=list)  # unprocessed (seq, id)
    ended_steps: set[int] = field(default_factory=set)  # steps whose turn end was recorded
    idle_reason: dict[str, Any] | None = None
    terminated: bool = False
    requested_step: int = 0  # the last step whose model request started
    settled_step: int = 0  # the last step whose request ended (answered, failed, or its turn closed)
    # Offload thresholds, refreshed by the runner from the server settings and agent metadata.
    offload_default: int = DEFAULT_THRESHOLD_TOKENS
    agent_metadata: dict[str, str] = field(default_factory=dict)

    # -- folding -----------------------------------------------------------------

    def apply(self, seq: int, event: dict[str, Any], internal: dict[str, Any], processed: bool) -> None:
        self.last_seq = max(self.last_seq, seq)
        kind = event.get("type", "")
        step = int(internal.get("step", self.step) or 0)
        if kind in INPUT_TYPES:
            blocks = _input_blocks(event)
            consumed = internal.get("consumed_step")
            self.inputs.append(_Input(event["id"], seq, blocks, consumed if processed else None))
        elif kind == "user.interrupt":
            if not processed:
                self.interrupts.append((seq, event["id"]))
        elif kind == "agent.message":
            self.step = max(self.step, step)
            if not internal.get("hidden"):
                self.assistant.setdefault(step, []).extend(
                    b for b in event.get("content", []) if b.get("type") == "text"
                )
        elif kind in TOOL_USE_TYPES:
            self.step = max(self.step, step)
            hidden = bool(internal.get("hidden"))
            call = ToolCall(
                event_id=event["id"],
                kind="refused" if internal.get("refused") else TOOL_USE_TYPES[kind],  # type: ignore[arg-type]
                model_name=str(internal.get("model_name") or event.get("name", "")),
                input=dict(event.get("input") or {}),
                permission=str(event.get("evaluated_permission") or "allow"),
                step=step,
                mcp_server=event.get("mcp_server_name"),
                mcp_tool=event.get("name") if kind == "agent.mcp_tool_use" else None,
                hidden=hidden,
                offload_of=internal.get("offload_of"),
            )
            self.calls[call.event_id] = call
            if call.offload_of in self.calls:
                self.calls[call.offload_of].offloaded = True
            self.call_order.append(call.event_id)
            self.calls_by_step.setdefault(step, []).append(call.event_id)
            if not hidden:
                self.assistant.setdefault(step, []).append(
                    {"type": "tool_use", "id": call.event_id, "name": call.model_name, "input": call.input}
                )
        elif kind in RESULT_TYPES:
            target = self.calls.get(str(event.get(RESULT_TYPES[kind])))
            if target is not None and target.result is None:
                target.result = _result_blocks(event, internal)
                target.is_error = bool(event.get("is_error"))
                target.result_event_id = event["id"]
                target.offloaded = "offload" in internal
                target.result_tokens = 0 if target.offloaded else estimate_tokens(result_text(target.result))
                parent = self.calls.get(target.offload_of or "")
                if parent is not None and target.is_error:
                    parent.offload_error = result_text(target.result)[:500] or "unknown error"
        elif kind == "user.tool_confirmation":
            target = self.calls.get(str(event.get("tool_use_id")))
            if target is not None and target.confirmation is None:
                target.confirmation = event.get("result")
                target.deny_message = event.get("deny_message")
        elif kind == "span.model_request_start":
            self.requested_step = max(self.requested_step, step)
        elif kind == "span.model_request_end":
            self.settled_step = max(self.settled_step, step)
        elif kind == "session.status_idle":
            self.settled_step = max(self.settled_step, self.requested_step)
            self.status = "idle"
            self.idle_reason = event.get("stop_reason")
            if (self.idle_reason or {}).get("type") != "requires_action":
                self.ended_steps.add(self.step)
        elif kind == "session.status_running":
            self.status = "running"
            self.idle_reason = None
        elif kind == "session.status_rescheduled":
            self.status = "rescheduling"
        elif kind in ("session.status_terminated", "session.deleted"):
            self.status = "terminated"
            self.terminated = True

    def offloaded(self, call_id: str, note: str) -> None:
        """Mirror an offload the runner just committed."""
        call = self.calls[call_id]
        call.result = [{"type": "text", "text": note}]
        call.offloaded = True
        call.result_tokens = 0

    def threshold(self, call: ToolCall) -> int:
        return threshold_for(self.offload_default, self.agent_metadata, call.mcp_server)

    def consumed(self, event_ids: Sequence[str], step: int) -> None:
        """Mirror a ``mark_processed`` the runner just committed (rows are folded once, when appended)."""
        wanted = set(event_ids)
        for item in self.inputs:
            if item.event_id in wanted:
                item.consumed_step = step
        self.interrupts = [(seq, i) for seq, i in self.interrupts if i not in wanted]

    # -- views -------------------------------------------------------------------

    def step_calls(self, step: int) -> list[ToolCall]:
        return [self.calls[i] for i in self.calls_by_step.get(step, ())]

    def pending_inputs(self) -> list[_Input]:
        return [i for i in self.inputs if i.consumed_step is None]

    def transcript(self, consume: Sequence[str] = ()) -> list[Message]:
        """The messages for the next model call, consuming the given pending inputs."""
        consuming = set(consume)
        inputs_by_step: dict[int, list[ContentBlock]] = {}
        for item in self.inputs:
            at = (
                self.step + 1
                if item.consumed_step is None and item.event_id in consuming
                else item.consumed_step
            )
            if at is not None and at > 0:
                inputs_by_step.setdefault(at, []).extend(item.blocks)
        runs: list[tuple[Literal["user", "assistant"], list[ContentBlock]]] = []
        for n in range(1, self.step + 2):
            user: list[ContentBlock] = [c.result_block() for c in self.step_calls(n - 1) if not c.hidden]
            user.extend(inputs_by_step.get(n, ()))
            if user:
                _extend(runs, "user", user)
            if n <= self.step and self.assistant.get(n):
                _extend(runs, "assistant", self.assistant[n])
        return [Message(role, blocks) for role, blocks in runs]


def _extend(
    runs: list[tuple[Literal["user", "assistant"], list[ContentBlock]]],
    role: Literal["user", "assistant"],
    blocks: list[ContentBlock],
) -> None:
    """Append blocks, merging with a previous run of the same role (the API requires alternation)."""
    if runs and runs[-1][0] == role:
        runs[-1][1].extend(blocks)
    else:
        runs.append((role, list(blocks)))


def _input_blocks(event: dict[str, Any]) -> list[ContentBlock]:
    blocks = [dict(b) for b in event.get("content", []) if b.get("type") in ("text", "image", "document")]
    if event.get("type") == "system.message":
        return [{"type": "text", "text": f"<system>{b.get('text', '')}</system>"} for b in blocks]
    return blocks


def _result_blocks(event: dict[str, Any], internal: dict[str, Any]) -> list[ContentBlock]:
    """What the model receives for a result: the offload note when the full output was offloaded."""
    if "model_content" in internal:
        return list(internal["model_content"])
    blocks = []
    for b in event.get("content") or []:
        if b.get("type") in ("text", "image", "document"):
            blocks.append(dict(b))
        elif b.get("type") == "search_result":
            blocks.append(
                {"type": "text", "text": "\n".join(c.get("text", "") for c in b.get("content", []))}
            )
    return blocks or [{"type": "text", "text": "(no output)"}]


def result_text(blocks: Sequence[ContentBlock]) -> str:
    return "\n".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")


def decide(state: TurnState) -> Action:
    if state.terminated:
        return Nothing()
    calls = state.step_calls(state.step)
    open_calls = [c for c in calls if not c.resolved]
    if state.interrupts:
        first_interrupt = min(seq for seq, _ in state.interrupts)
        dropped = tuple(i.event_id for i in state.pending_inputs() if i.seq < first_interrupt)
        return Interrupt(
            tuple(i for _, i in state.interrupts), dropped, tuple(c.event_id for c in open_calls)
        )
    for c in calls:
        if c.result is not None and not c.offloaded and not c.hidden and c.result_tokens > state.threshold(c):
            return Offload(c, state.threshold(c))
    if open_calls:
        runnable = [
            c
            for c in open_calls
            if c.kind == "mcp" and (c.permission == "allow" or c.confirmation == "allow")
        ]
        if runnable:
            return RunMcp(runnable[0])
        blocking = tuple(
            c.event_id
            for c in open_calls
            if c.kind == "custom" or (c.permission == "ask" and c.confirmation is None)
        )
        if blocking:
            return RequireAction(blocking)
        return WaitForWorker(tuple(c.event_id for c in open_calls))
    step_had_calls = bool(state.step_calls(state.step))
    pending = tuple(i.event_id for i in state.pending_inputs())
    if state.requested_step > max(state.step, state.settled_step):
        # A model request started and nothing of its answer was committed (the server
        # died mid-call): make it again, with the inputs it had already consumed.
        return CallModel(pending, starts_turn=False)
    if pending or (step_had_calls and state.step not in state.ended_steps):
        return CallModel(pending, starts_turn=state.status == "idle" and not step_had_calls)
    if state.step and state.step not in state.ended_steps and state.status != "idle":
        return EndTurn()
    return Nothing()
