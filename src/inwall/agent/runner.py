"""The per-session turn runner: performs what ``turn.decide`` asks, one action at a time.

A runner exists only while its session has something to do. It rebuilds its
state from the event log when it starts, folds new events as they commit, and
exits when the session is idle with nothing pending; the engine starts a new
one on the next wake-up. Every state change it makes is an event appended in
one transaction, so killing the server between any two lines loses nothing:
the next runner reads the log and carries on.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import anyio
import sqlalchemy as sa

from inwall.agent.catalog import Catalog, McpToolInfo, build_catalog, evaluate_permission
from inwall.agent.gate import DENIAL_TEXT, PolicyGate
from inwall.agent.models.base import ModelError, ModelProvider, ModelRequest, ModelResponse
from inwall.agent.offload import DEFAULT_THRESHOLD_TOKENS, offload_note
from inwall.agent.turn import (
    CallModel,
    EndTurn,
    Interrupt,
    Nothing,
    Offload,
    RequireAction,
    RunMcp,
    ToolCall,
    TurnState,
    WaitForWorker,
    decide,
    result_text,
)
from inwall.control.auditlog import ControlAudit
from inwall.control.events import EventLog, Tx
from inwall.control.status import change_status
from inwall.control.work import WorkQueue
from inwall.errors import InwallError
from inwall.governance import Identity, IdentityIssuer, PolicyEngine, input_digest
from inwall.ids import new_id, now
from inwall.mcp.types import McpClientPool, McpFailure, McpServerRef
from inwall.store import prepared
from inwall.store import schema as s
from inwall.store.db import Database

__all__ = ["IDENTITY_META_KEY", "ProviderLookup", "RunnerDeps", "RunnerSettings", "SessionRunner"]

# Where a tools/call request carries the caller's identity token (MCP ``_meta``).
IDENTITY_META_KEY = "inwall/identity"
_ALLOW_ALL = PolicyEngine(None)

log = logging.getLogger(__name__)


class ProviderLookup(Protocol):
    def __call__(self, model_id: str) -> tuple[ModelProvider, str]: ...


@dataclass(frozen=True)
class RunnerSettings:
    max_tokens: int = 8192
    model_retry_base_s: float = 1.0
    model_retry_cap_s: float = 30.0
    model_max_attempts: int = 6
    mcp_call_timeout_s: float = 120.0
    wait_slice_s: float = 30.0
    offload_threshold_tokens: int = DEFAULT_THRESHOLD_TOKENS


@dataclass
class RunnerDeps:
    db: Database
    log: EventLog
    work: WorkQueue
    providers: ProviderLookup
    mcp: McpClientPool
    settings: RunnerSettings = field(default_factory=RunnerSettings)
    gate: PolicyGate | None = None
    # Signs the caller's identity for the perimeter (a gateway behind a tunnel checks it).
    issuer: IdentityIssuer | None = None
    tunnel_of: Callable[[str], str] = field(default=lambda url: "")
    mcp_cache: dict[str, dict[str, list[McpToolInfo]]] = field(default_factory=dict)
    # Resolve an MCP server definition to a reference with credentials (static bearer tokens from config).
    resolve_mcp: Callable[[Mapping[str, Any]], McpServerRef] = field(
        default=lambda d: McpServerRef(name=str(d["name"]), url=str(d["url"]))
    )
    audit: ControlAudit | None = None


class _Interrupted(Exception):
    """An interrupt arrived while a model or MCP call was in flight."""


class _SessionGone(Exception):
    """The session was deleted: the runner has nothing left to do."""


class SessionRunner:
    def __init__(self, session_id: str, deps: RunnerDeps) -> None:
        self.session_id = session_id
        self.deps = deps
        self.state = TurnState()
        self.gate = deps.gate or PolicyGate(deps.db, lambda: _ALLOW_ALL)
        # The session row and the caller's identity change only with session.updated
        # (mid-session edits); both are cached between steps to keep the hot path lean.
        self._cached: dict[str, Any] | None = None
        self._identity: Identity | None = None
        self._work_ensured = False  # a live work item was ensured during this turn

    # -- main loop -----------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except _SessionGone:
            self.deps.mcp_cache.pop(self.session_id, None)
            await self.deps.mcp.forget(self.session_id)

    async def _run(self) -> None:
        self.state.offload_default = self.deps.settings.offload_threshold_tokens
        self._note_agent(await self._session())
        await self._refresh()
        while True:
            action = decide(self.state)
            if isinstance(action, Nothing):
                if not self.deps.log.bus.take_wake(self.session_id):
                    return
                await self._refresh()
            elif isinstance(action, CallModel):
                await self._call_model(action)
            elif isinstance(action, RunMcp):
                await self._run_mcp(action.call)
            elif isinstance(action, Offload):
                await self._offload(action)
            elif isinstance(action, WaitForWorker):
                if not self._work_ensured or self.state.status == "idle":
                    await self._ensure_running_with_worker()
                if not await self._wait():
                    self._work_ensured = False  # a quiet wait slice: check on the work item again
            elif isinstance(action, RequireAction):
                await self._require_action(action)
                await self._wait()
            elif isinstance(action, EndTurn):
                async with self.deps.log.transaction() as tx:
                    await change_status(tx, self.session_id, "idle", stop_reason={"type": "end_turn"})
                await self._refresh()
            elif isinstance(action, Interrupt):
                await self._interrupt(action)

    async def _refresh(self) -> None:
        # Wake-ups are set only after a commit, so one taken before this read is
        # answered by it, and one set after it stays set. Without taking it, the
        # runner's own commits would wake it for a second, empty read every step.
        self.deps.log.bus.take_wake(self.session_id)
        for ev in await self.deps.log.since(self.session_id, self.state.last_seq):
            self.state.apply(ev.seq, ev.body, ev.internal, ev.processed_at is not None)
            if ev.type in ("session.updated", "session.status_terminated", "session.deleted"):
                self._cached = None
            if (
                ev.type == "session.status_idle"
                and (ev.body.get("stop_reason") or {}).get("type") != "requires_action"
            ):
                self._work_ensured = False  # a turn boundary: the worker may leave; check again next turn

    async def _wait(self) -> bool:
        woken = await self.deps.log.bus.wait_session(self.session_id, self.deps.settings.wait_slice_s)
        await self._refresh()
        return woken

    async def _session(self) -> dict[str, Any]:
        if self._cached is None:
            self._cached = await self._load_session()
            self._identity = None
        return self._cached

    async def _caller(self, session: Mapping[str, Any]) -> Identity:
        if self._identity is None:
            self._identity = await self.gate.identity(session)
        return self._identity

    async def _load_session(self) -> dict[str, Any]:
        async with self.deps.db.read() as conn:
            row = (
                (await conn.execute(prepared.LIVE_SESSION, {"session_id": self.session_id}))
                .mappings()
                .first()
            )
        if row is None:
            raise _SessionGone
        return dict(row)

    def _note_agent(self, session: Mapping[str, Any]) -> None:
        self.state.agent_metadata = dict(session["body"].get("agent_metadata") or {})
        self.state.agent_metadata.update(session["body"].get("metadata") or {})

    # -- actions ---------------------------------------------------------------------

    async def _ensure_running_with_worker(self) -> None:
        session = await self._session()
        async with self.deps.log.transaction() as tx:
            if self.state.status == "idle":
                await change_status(tx, self.session_id, "running")
            await self.deps.work.ensure_work(tx, self.session_id, session["environment_id"])
        self._work_ensured = True
        await self._refresh()

    async def _require_action(self, action: RequireAction) -> None:
        reason = {"type": "requires_action", "event_ids": list(action.event_ids)}
        if self.state.status == "idle" and self.state.idle_reason == reason:
            return
        async with self.deps.log.transaction() as tx:
            await change_status(tx, self.session_id, "idle", stop_reason=reason, force_event=True)
            if any(self.state.calls[i].kind == "builtin" for i in action.event_ids if i in self.state.calls):
                session = await self._session()
                await self.deps.work.ensure_work(tx, self.session_id, session["environment_id"])
        await self._refresh()

    async def _interrupt(self, action: Interrupt) -> None:
        async with self.deps.log.transaction() as tx:
            await tx.mark_processed(self.session_id, action.interrupt_ids)
            await tx.mark_processed(self.session_id, action.dropped_inputs, consumed_step=-1)
            for call_id in action.open_calls:
                await self._record_result(
                    tx,
                    self.state.calls[call_id],
                    [{"type": "text", "text": "Interrupted by the user before the tool call finished."}],
                    is_error=True,
                )
            if self.state.status != "idle" or (self.state.idle_reason or {}).get("type") == "requires_action":
                await change_status(
                    tx, self.session_id, "idle", stop_reason={"type": "end_turn"}, force_event=True
                )
        self.state.consumed(action.interrupt_ids, -1)
        self.state.consumed(action.dropped_inputs, -1)
        await self._refresh()

    async def _catalog(self, session: Mapping[str, Any], *, turn_boundary: bool) -> Catalog:
        agent = session["body"]["agent"]
        servers = {d["name"]: d for d in agent.get("mcp_servers", [])}
        # Listings are cached per server name *and URL*: a mid-session swap of a server
        # under the same name is a different server and is listed afresh.
        cache = self.deps.mcp_cache.setdefault(self.session_id, {})
        for stale in set(cache) - {f"{name}\n{d['url']}" for name, d in servers.items()}:
            del cache[stale]
        unavailable: dict[str, str] = {}
        listings: dict[str, list[McpToolInfo]] = {}
        for name, definition in servers.items():
            key = f"{name}\n{definition['url']}"
            changed = turn_boundary and self.deps.mcp.tools_changed(self.session_id, name)
            if key not in cache or changed:
                try:
                    cache[key] = await self.deps.mcp.list_tools(
                        self.session_id, self.deps.resolve_mcp(definition)
                    )
                except McpFailure as exc:
                    unavailable[name] = str(exc)
                    cache.pop(key, None)
                    await self._session_error(
                        exc.session_error_type, str(exc), "retrying", mcp_server_name=name
                    )
                    continue
            listings[name] = cache[key]
        return self.gate.visible(
            await self._caller(session), session, build_catalog(agent, listings, unavailable)
        )

    async def _offload(self, action: Offload) -> None:
        call = action.call
        assert call.result is not None and call.result_event_id is not None
        plan = offload_note(call.event_id, result_text(call.result), action.threshold)
        session = await self._session()
        async with self.deps.log.transaction() as tx:
            row = (
                await tx.conn.execute(
                    sa.select(s.events.c.internal).where(s.events.c.id == call.result_event_id)
                )
            ).one()
            internal = dict(row.internal or {})
            internal["model_content"] = [{"type": "text", "text": plan.note}]
            internal["offload"] = {
                "path": plan.path,
                "size_bytes": plan.size_bytes,
                "tokens": plan.estimated_tokens,
            }
            await tx.conn.execute(
                s.events.update().where(s.events.c.id == call.result_event_id).values(internal=internal)
            )
            await tx.append(
                self.session_id,
                [
                    {
                        "type": "agent.tool_use",
                        "name": "write",
                        "input": {"file_path": plan.path, "content": result_text(call.result)},
                        "evaluated_permission": "allow",
                        "evaluation": {"type": "always_allow"},
                        # inwall extension: what this internal write stores, for anyone reading the stream.
                        "inwall_offload": {
                            "tool_use_id": call.event_id,
                            "file_path": plan.path,
                            "size_bytes": plan.size_bytes,
                            "estimated_tokens": plan.estimated_tokens,
                            "threshold_tokens": plan.threshold,
                        },
                    }
                ],
                internal=[
                    {"step": call.step, "hidden": True, "offload_of": call.event_id, "model_name": "write"}
                ],
            )
            await self.deps.work.ensure_work(tx, self.session_id, session["environment_id"])
        self.state.offloaded(call.event_id, plan.note)
        await self._refresh()

    async def _call_model(self, action: CallModel) -> None:
        """One model step.

        A step that starts a turn (it consumes input, or the session was idle) first
        commits the inputs as consumed, the ``running`` status and the span start, so
        clients see the turn begin; a server killed mid-call finds that span start
        unanswered and makes the call again. A continuation step (after tool results)
        writes nothing until the answer arrives, then commits it in one transaction
        with its backdated span start: one commit per step on the hot path.
        """
        session = await self._session()
        self._note_agent(session)
        agent = session["body"]["agent"]
        catalog = await self._catalog(session, turn_boundary=action.starts_turn or self.state.step == 0)
        step = self.state.step + 1
        messages = self.state.transcript(action.consume)
        start_id: str | None = None
        if action.consume or self.state.status not in ("running", "rescheduling"):
            async with self.deps.log.transaction() as tx:
                await tx.mark_processed(self.session_id, action.consume, consumed_step=step)
                if self.state.status != "rescheduling":
                    await change_status(tx, self.session_id, "running")
                [start] = await tx.append(
                    self.session_id, [{"type": "span.model_request_start"}], internal=[{"step": step}]
                )
                start_id = start["id"]
            self.state.consumed(action.consume, step)
            await self._refresh()
        started = now()
        try:
            provider, model_name = self.deps.providers(str(agent["model"]["id"]))
        except InwallError as exc:
            await self._fail_step(step, start_id, started, "model_request_failed_error", str(exc))
            return
        request = ModelRequest(
            model=model_name,
            system=agent.get("system"),
            messages=messages,
            tools=catalog.specs(),
            max_tokens=self.deps.settings.max_tokens,
            metadata={"session_id": self.session_id},
        )
        try:
            response = await self._model_with_retries(provider, request, step, start_id, started)
        except _Interrupted:
            await self._refresh()
            return
        if response is not None:
            await self._record_step(session, catalog, step, start_id, started, response)

    async def _span_start(self, tx: Tx, step: int, start_id: str | None, started: datetime) -> str:
        if start_id is not None:
            return start_id
        [start] = await tx.append(
            self.session_id, [{"type": "span.model_request_start"}], internal=[{"step": step}], at=started
        )
        return str(start["id"])

    async def _fail_step(
        self, step: int, start_id: str | None, started: datetime, error_type: str, message: str
    ) -> None:
        """The step cannot be made: report it and end the turn (its inputs stay consumed: flushed)."""
        await self._session_error(error_type, message, "exhausted")
        async with self.deps.log.transaction() as tx:
            start = await self._span_start(tx, step, start_id, started)
            await tx.append(
                self.session_id, [_span_end(start, None, is_error=True)], internal=[{"step": step}]
            )
            await change_status(
                tx, self.session_id, "idle", stop_reason={"type": "retries_exhausted"}, force_event=True
            )
        await self._refresh()

    async def _model_with_retries(
        self,
        provider: ModelProvider,
        request: ModelRequest,
        step: int,
        start_id: str | None,
        started: datetime,
    ) -> ModelResponse | None:
        settings = self.deps.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._interruptible(provider.step(request))  # type: ignore[no-any-return]
            except ModelError as exc:
                retrying = exc.retryable and attempt < settings.model_max_attempts
                if not retrying:
                    await self._fail_step(step, start_id, started, exc.session_error_type, str(exc))
                    return None
                await self._session_error(exc.session_error_type, str(exc), "retrying")
                delay = min(settings.model_retry_cap_s, settings.model_retry_base_s * 2 ** (attempt - 1))
                delay = max(exc.retry_after_s or 0.0, random.uniform(delay / 2, delay))  # noqa: S311 - jitter
                await self._interruptible(anyio.sleep(delay))

    async def _interruptible(self, work: Awaitable[Any]) -> Any:
        """Run ``work``; abandon it if a ``user.interrupt`` arrives meanwhile."""
        result: list[Any] = []
        failure: list[Exception] = []
        interrupted = False
        async with anyio.create_task_group() as tg:

            async def _work() -> None:
                try:
                    result.append(await work)
                except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group, unwrapped
                    failure.append(exc)
                tg.cancel_scope.cancel()

            async def _watch() -> None:
                nonlocal interrupted
                # Everything up to now is folded; only a newer event should wake the watch.
                self.deps.log.bus.take_wake(self.session_id)
                while True:
                    await self.deps.log.bus.wait_session(self.session_id, self.deps.settings.wait_slice_s)
                    await self._refresh()
                    if self.state.interrupts:
                        interrupted = True
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(_work)
            tg.start_soon(_watch)
        if failure:
            raise failure[0]
        if interrupted and not result:
            raise _Interrupted
        return result[0] if result else None

    async def _record_step(
        self,
        session: Mapping[str, Any],
        catalog: Catalog,
        step: int,
        start_id: str | None,
        started: datetime,
        response: ModelResponse,
    ) -> None:
        events: list[dict[str, Any]] = []
        internals: list[dict[str, Any]] = []
        refusals: list[tuple[int, str]] = []
        text: list[dict[str, Any]] = []

        def flush_text() -> None:
            if text:
                events.append({"type": "agent.message", "content": list(text)})
                internals.append({"step": step})
                text.clear()

        needs_worker = False
        identity = await self._caller(session)
        for block in response.content:
            if block.get("type") == "text":
                if block.get("text"):
                    text.append({"type": "text", "text": block["text"]})
                continue
            if block.get("type") != "tool_use":
                continue
            flush_text()
            name = str(block.get("name"))
            arguments = dict(block.get("input") or {})
            tool = catalog.get(name)
            allowed, why = (
                (False, "unknown tool")
                if tool is None
                else self.gate.check(identity, session, tool, arguments)
            )
            if tool is None or not allowed:
                refusals.append((len(events), _refusal_text(name, tool is None)))
                events.append(
                    {
                        "type": "agent.tool_use",
                        "name": name,
                        "input": arguments,
                        "evaluated_permission": "deny",
                    }
                )
                internals.append({"step": step, "model_name": name, "refused": True, "reason": why})
                continue
            permission, evaluation = evaluate_permission(tool.policy)
            if tool.kind == "builtin":
                needs_worker = True
                events.append(
                    {
                        "type": "agent.tool_use",
                        "name": name,
                        "input": arguments,
                        "evaluated_permission": permission,
                        "evaluation": evaluation,
                    }
                )
            elif tool.kind == "custom":
                events.append({"type": "agent.custom_tool_use", "name": name, "input": arguments})
            else:
                events.append(
                    {
                        "type": "agent.mcp_tool_use",
                        "name": tool.mcp_tool,
                        "mcp_server_name": tool.mcp_server,
                        "input": arguments,
                        "evaluated_permission": permission,
                        "evaluation": evaluation,
                    }
                )
            internals.append({"step": step, "model_name": name})
        flush_text()
        if not events:
            events.append({"type": "agent.message", "content": [{"type": "text", "text": "(no response)"}]})
            internals.append({"step": step})
        # The whole step is one INSERT: ids are assigned here so refusals and the span end
        # can point at events of the same batch.
        for ev in events:
            ev["id"] = new_id("sevt")
        batch = list(events)
        batch_internal = list(internals)
        stamps: list[datetime | None] = [None] * len(events)
        for index, note in refusals:
            batch.append(
                {
                    "type": "agent.tool_result",
                    "tool_use_id": events[index]["id"],
                    "content": [{"type": "text", "text": note}],
                    "is_error": True,
                }
            )
            batch_internal.append({"step": step})
            stamps.append(None)
        if start_id is None:
            start_id = new_id("sevt")
            batch.insert(0, {"id": start_id, "type": "span.model_request_start"})
            batch_internal.insert(0, {"step": step})
            stamps.insert(0, started)
        batch.append(_span_end(start_id, response))
        batch_internal.append({"step": step})
        stamps.append(None)
        async with self.deps.log.transaction() as tx:
            appended = await tx.append(self.session_id, batch, internal=batch_internal, stamps=stamps)
            emitted = [e for e in appended if e["id"] in {ev["id"] for ev in events}]
            await self._add_usage(tx, response)
            tool_uses = [
                e
                for e in emitted
                if e["type"] in ("agent.tool_use", "agent.custom_tool_use", "agent.mcp_tool_use")
            ]
            if not tool_uses:
                stop = {"type": "refusal"} if response.stop_reason == "refusal" else {"type": "end_turn"}
                await change_status(tx, self.session_id, "idle", stop_reason=stop, force_event=True)
            if needs_worker and not self._work_ensured:
                # Once per turn: afterwards the work queue itself re-queues a running session
                # whose item stops or lapses.
                await self.deps.work.ensure_work(tx, self.session_id, session["environment_id"])
                self._work_ensured = True
            await self._audit_calls(tx, session, emitted, internals)
        await self._refresh()

    async def _audit_calls(
        self,
        tx: Tx,
        session: Mapping[str, Any],
        emitted: Sequence[dict[str, Any]],
        internals: Sequence[dict[str, Any]],
    ) -> None:
        if self.deps.audit is None:
            return
        for ev, internal in zip(emitted, internals, strict=True):
            if ev["type"] not in ("agent.tool_use", "agent.custom_tool_use", "agent.mcp_tool_use"):
                continue
            await self.deps.audit.append(
                tx.conn,
                "tool.call",
                outcome="refused"
                if internal.get("refused")
                else str(ev.get("evaluated_permission", "allow")),
                session_id=self.session_id,
                user_id=session.get("owner_user_id"),
                tool=internal.get("model_name"),
                tool_use_id=ev["id"],
                input_sha256=input_digest(ev.get("input") or {}),
                reason=internal.get("reason"),
            )

    async def _add_usage(self, tx: Tx, response: ModelResponse) -> None:
        u = response.usage
        await tx.conn.execute(
            prepared.ADD_USAGE,
            {
                "session_id": self.session_id,
                "add_input": u.input_tokens,
                "add_output": u.output_tokens,
                "add_cache_read": u.cache_read_input_tokens,
            },
        )

    async def _run_mcp(self, call: ToolCall) -> None:
        session = await self._session()
        definition = next(
            (d for d in session["body"]["agent"].get("mcp_servers", []) if d["name"] == call.mcp_server), None
        )
        if definition is None:
            content = [
                {
                    "type": "text",
                    "text": f"MCP server {call.mcp_server!r} is no longer attached to this session.",
                }
            ]
            is_error = True
        else:
            identity = await self._caller(session)
            url = str(definition.get("url", ""))

            def meta(attempt: int) -> dict[str, Any] | None:
                return self._identity_meta(identity, call, url, attempt)

            try:
                result = await self._interruptible(
                    self.deps.mcp.call_tool(
                        self.session_id,
                        self.deps.resolve_mcp(definition),
                        str(call.mcp_tool),
                        call.input,
                        timeout_s=self.deps.settings.mcp_call_timeout_s,
                        meta=meta,
                    )
                )
            except _Interrupted:
                await self._refresh()
                return
            except McpFailure as exc:
                await self._session_error(
                    exc.session_error_type, str(exc), "retrying", mcp_server_name=exc.server
                )
                content, is_error = [{"type": "text", "text": f"MCP call failed: {exc}"}], True
            else:
                content, is_error = result.content, result.is_error
        async with self.deps.log.transaction() as tx:
            await self._record_result(tx, call, content, is_error=is_error)
            if self.deps.audit is not None:
                await self.deps.audit.append(
                    tx.conn,
                    "tool.result",
                    outcome="error" if is_error else "ok",
                    session_id=self.session_id,
                    user_id=session.get("owner_user_id"),
                    tool=call.model_name,
                    tool_use_id=call.event_id,
                    bytes_out=sum(len(str(b.get("text", ""))) for b in content),
                )
        await self._refresh()

    def _identity_meta(
        self, identity: Identity, call: ToolCall, url: str, attempt: int
    ) -> dict[str, Any] | None:
        """A signed statement of who is calling, for a gateway inside the perimeter (tunnel hosts only).

        Each attempt gets its own token (its jti is the tool-use id plus the attempt): the
        gateway refuses a token it has seen, so a retried request must not reuse one.
        """
        tunnel = self.deps.tunnel_of(url)
        if self.deps.issuer is None or not tunnel:
            return None
        token = self.deps.issuer.mint(
            identity,
            audience=f"inwall-gateway:{tunnel}",
            tool=str(call.mcp_tool),
            input_sha256=input_digest(call.input),
            tool_use_id=call.event_id if attempt == 1 else f"{call.event_id}.{attempt}",
            session_id=self.session_id,
        )
        return {IDENTITY_META_KEY: token}

    async def _record_result(
        self, tx: Tx, call: ToolCall, content: Sequence[dict[str, Any]], *, is_error: bool
    ) -> None:
        """A result the control plane itself produced (MCP, interrupted, refused).

        An interrupted worker or client call is closed with the same result event a
        worker or client would post (``user.tool_result`` / ``user.custom_tool_result``):
        the SDK's session runner treats only those as answers, so any worker that serves
        the session later will not run the interrupted call.
        """
        event: dict[str, Any]
        if call.kind == "mcp":
            event = {"type": "agent.mcp_tool_result", "mcp_tool_use_id": call.event_id}
        elif call.kind == "builtin":
            event = {"type": "user.tool_result", "tool_use_id": call.event_id}
        elif call.kind == "custom":
            event = {"type": "user.custom_tool_result", "custom_tool_use_id": call.event_id}
        else:
            event = {"type": "agent.tool_result", "tool_use_id": call.event_id}
        event["content"] = list(content)
        event["is_error"] = is_error
        await tx.append(self.session_id, [event], internal=[{"step": call.step, "by": "control_plane"}])

    async def _session_error(self, error_type: str, message: str, retry_status: str, **extra: Any) -> None:
        error = {"type": error_type, "message": message, "retry_status": {"type": retry_status}, **extra}
        await self.deps.log.emit(self.session_id, [{"type": "session.error", "error": error}])
        await self._refresh()


def _span_end(start_id: str, response: ModelResponse | None, *, is_error: bool = False) -> dict[str, Any]:
    usage = response.usage if response is not None else None
    return {
        "type": "span.model_request_end",
        "model_request_start_id": start_id,
        "is_error": is_error,
        "model_usage": {
            "input_tokens": usage.input_tokens if usage else 0,
            "output_tokens": usage.output_tokens if usage else 0,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens if usage else 0,
            "cache_read_input_tokens": usage.cache_read_input_tokens if usage else 0,
        },
    }


def _refusal_text(name: str, unknown: bool) -> str:
    if unknown:
        return f"Error: tool {name!r} is not available in this session."
    return DENIAL_TEXT
