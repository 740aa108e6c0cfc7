"""Sessions: an agent snapshot bound to an environment, plus its event log.

This module owns who may see and change a session, what a client may post to
it, and the session's lifecycle (create → idle/running → archived/deleted).
The turn itself belongs to ``inwall.agent``; this module only appends what
clients send and lets the bus wake the runner.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from inwall.agent.config import (
    normalize_mcp_servers,
    normalize_model,
    normalize_skills,
    normalize_tools,
    recheck_tools,
)
from inwall.api.schemas.sessions import AgentRef, AgentWithOverrides, EventsSend, SessionCreate, SessionUpdate
from inwall.control.agents import AgentService
from inwall.control.auditlog import ControlAudit
from inwall.control.auth import Principal
from inwall.control.environments import EnvironmentService
from inwall.control.events import EventLog, Tx
from inwall.control.pages import decode_cursor, page, patch_metadata, resolve_limit
from inwall.control.status import change_status
from inwall.control.timefmt import ts, utc
from inwall.control.work import WorkQueue
from inwall.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from inwall.ids import new_id, now, parse_rfc3339
from inwall.store import prepared
from inwall.store import schema as s
from inwall.store.db import Database

__all__ = ["SessionService", "render_session"]

WORKER_EVENT_TYPES = frozenset({"user.tool_result", "user.custom_tool_result"})
QUEUED_EVENT_TYPES = frozenset({"user.message", "user.interrupt", "system.message"})
SNAPSHOT_KEYS = (
    "name",
    "description",
    "system",
    "model",
    "tools",
    "mcp_servers",
    "skills",
    "execution_identity",
)


def render_session(row: Mapping[Any, Any]) -> dict[str, Any]:
    body = row["body"]
    created = utc(row["created_at"])
    end = utc(row["archived_at"]) if row["status"] == "terminated" and row["archived_at"] else now()
    active = float(row["active_seconds"] or 0.0)
    if row["running_since"] is not None:
        active += (now() - (utc(row["running_since"]) or now())).total_seconds()
    return {
        "type": "session",
        "id": row["id"],
        "status": row["status"],
        "title": body.get("title"),
        "agent": body["agent"],
        "environment_id": row["environment_id"],
        "metadata": body.get("metadata", {}),
        "resources": [],
        "vault_ids": [],
        "outcome_evaluations": [],
        "stats": {
            "active_seconds": round(active, 3),
            "duration_seconds": round(((end or now()) - (created or now())).total_seconds(), 3),
        },
        "usage": {
            "input_tokens": int(row["input_tokens"] or 0),
            "output_tokens": int(row["output_tokens"] or 0),
            "cache_read_input_tokens": int(row["cache_read_input_tokens"] or 0),
        },
        "budget": None,
        "deployment_id": None,
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
        "archived_at": ts(row["archived_at"]),
        # inwall extensions (the SDK has no fields for them): why the session last went
        # idle, and whom it acts for when an end user's OIDC token was presented.
        "stop_reason": body.get("stop_reason"),
        "acting_for": (
            {k: body["acting_for"][k] for k in ("user_id", "kind", "roles", "name")}
            if body.get("acting_for")
            else None
        ),
    }


class SessionService:
    def __init__(
        self,
        db: Database,
        log: EventLog,
        work: WorkQueue,
        agents: AgentService,
        environments: EnvironmentService,
        audit: ControlAudit | None = None,
    ) -> None:
        self._audit = audit
        self._db = db
        self._log = log
        self._work = work
        self._agents = agents
        self._environments = environments

    # -- access ----------------------------------------------------------------------

    @staticmethod
    def visible(row: Mapping[Any, Any], who: Principal) -> bool:
        if who.kind == "admin":
            return True
        if who.kind == "user":
            return bool(row["owner_user_id"] == who.user_id)
        if who.kind == "environment":
            return bool(row["environment_id"] == who.environment_id)
        return bool(row["id"] == who.session_id)

    async def _row(self, conn: AsyncConnection, session_id: str, who: Principal) -> Mapping[Any, Any]:
        row = (await conn.execute(prepared.LIVE_SESSION, {"session_id": session_id})).mappings().first()
        if row is None or not self.visible(row, who):
            # Not-visible and not-existing read the same: ids of other tenants are not disclosed.
            raise NotFound(f"session {session_id} not found")
        return row

    async def get(self, session_id: str, who: Principal) -> dict[str, Any]:
        async with self._db.read() as conn:
            return render_session(await self._row(conn, session_id, who))

    async def require(self, session_id: str, who: Principal) -> Mapping[Any, Any]:
        async with self._db.read() as conn:
            return await self._row(conn, session_id, who)

    # -- lifecycle ---------------------------------------------------------------------

    async def _snapshot(
        self, conn: AsyncConnection, ref: str | AgentRef | AgentWithOverrides
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The session's copy of the agent, and the agent's metadata (which that copy has no field for)."""
        agent_id = ref if isinstance(ref, str) else ref.id
        version = None if isinstance(ref, str) else ref.version
        agent = await self._agents.get(agent_id, version, conn)
        if agent["archived_at"] is not None:
            raise InvalidInput(f"agent {agent_id} is archived")
        snapshot = {"type": "agent", "id": agent["id"], "version": agent["version"]}
        snapshot.update({k: copy.deepcopy(agent[k]) for k in SNAPSHOT_KEYS})
        snapshot["multiagent"] = None
        if isinstance(ref, AgentWithOverrides):
            fields = ref.model_fields_set
            if "model" in fields and ref.model is not None:
                snapshot["model"] = normalize_model(ref.model)
            if "system" in fields:
                snapshot["system"] = ref.system
            if ref.tools is not None:
                snapshot["tools"] = normalize_tools(ref.tools)
            if ref.mcp_servers is not None:
                snapshot["mcp_servers"] = normalize_mcp_servers(ref.mcp_servers)
            if ref.skills is not None:
                snapshot["skills"] = normalize_skills(ref.skills)
        return snapshot, dict(agent.get("metadata") or {})

    async def create(
        self, params: SessionCreate, who: Principal, *, acting_for: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        who.require_api_key()
        session_id = new_id("sesn")
        at = now()
        async with self._log.transaction() as tx:
            await self._environments.require_usable(params.environment_id, tx.conn)
            snapshot, agent_metadata = await self._snapshot(tx.conn, params.agent)
            body = {
                "agent": snapshot,
                # The session's view of the agent has no metadata field, but the agent's
                # metadata carries settings the turn loop reads (offload thresholds).
                "agent_metadata": agent_metadata,
                "title": params.title,
                "metadata": dict(params.metadata),
                "stop_reason": None,
            }
            if acting_for is not None:
                body["acting_for"] = acting_for
            await tx.conn.execute(
                s.sessions.insert().values(
                    id=session_id,
                    environment_id=params.environment_id,
                    agent_id=snapshot["id"],
                    agent_version=snapshot["version"],
                    owner_user_id=who.user_id,
                    status="idle",
                    body=body,
                    created_at=at,
                    updated_at=at,
                    active_seconds=0.0,
                    input_tokens=0,
                    output_tokens=0,
                    cache_read_input_tokens=0,
                )
            )
            await self._work.ensure_work(tx, session_id, params.environment_id)
            for event in params.initial_events:
                if event.type != "user.message":
                    raise InvalidInput("user.define_outcome (outcomes) is not supported by inwall yet")
                await tx.append(
                    session_id,
                    [event.model_dump(mode="json", exclude_unset=True)],
                    internal=[{"by": who.kind, "user_id": who.user_id}],
                    queued=True,
                )
            row = await self._row(tx.conn, session_id, who)
            return render_session(row)

    async def update(self, session_id: str, params: SessionUpdate, who: Principal) -> dict[str, Any]:
        who.require_api_key()
        async with self._log.transaction() as tx:
            row = await self._row(tx.conn, session_id, who)
            if row["status"] == "terminated":
                raise InvalidInput(f"session {session_id} is terminated")
            body = copy.deepcopy(dict(row["body"]))
            fields = params.model_fields_set
            changed: dict[str, Any] = {}
            if "title" in fields:
                body["title"] = params.title
                changed["title"] = params.title
            if params.metadata is not None:
                body["metadata"] = patch_metadata(body.get("metadata") or {}, params.metadata)
                changed["metadata"] = body["metadata"]
            if params.agent is not None and params.agent.model_fields_set:
                if row["status"] in ("running", "rescheduling"):
                    raise Conflict(
                        f"session {session_id} is running; send a user.interrupt and wait for it to go idle "
                        "before changing its tools"
                    )
                agent = body["agent"]
                if params.agent.tools is not None:
                    agent["tools"] = normalize_tools(params.agent.tools)
                if params.agent.mcp_servers is not None:
                    agent["mcp_servers"] = normalize_mcp_servers(params.agent.mcp_servers)
                recheck_tools(agent["tools"], agent["mcp_servers"])
                changed["agent"] = agent
            if changed:
                await tx.conn.execute(
                    s.sessions.update()
                    .where(s.sessions.c.id == session_id)
                    .values(body=body, updated_at=now())
                )
                await tx.append(
                    session_id, [{"type": "session.updated", **changed}], internal=[{"by": who.kind}]
                )
            return render_session(await self._row(tx.conn, session_id, who))

    async def archive(self, session_id: str, who: Principal) -> dict[str, Any]:
        who.require_api_key()
        async with self._log.transaction() as tx:
            row = await self._row(tx.conn, session_id, who)
            if row["archived_at"] is None:
                await tx.conn.execute(
                    s.sessions.update().where(s.sessions.c.id == session_id).values(archived_at=now())
                )
                await change_status(tx, session_id, "terminated")
                await self._work.stop_for_session(tx, session_id)
                tx.close_streams(session_id)
            return render_session(await self._row(tx.conn, session_id, who))

    async def delete(self, session_id: str, who: Principal) -> dict[str, Any]:
        who.require_api_key()
        async with self._log.transaction() as tx:
            await self._row(tx.conn, session_id, who)
            await self._work.stop_for_session(tx, session_id)
            # The one event kept is the tombstone: streams end on it, and the session's runner
            # reads it and stops instead of re-queueing work for a deleted session. Appended
            # before the rest goes, it is the table's newest row, so SQLite (which numbers a
            # new row max(seq) + 1) can never hand out a seq a runner has already read.
            [tombstone] = await tx.append(session_id, [{"type": "session.deleted"}])
            await tx.conn.execute(
                s.events.delete().where(s.events.c.session_id == session_id, s.events.c.id != tombstone["id"])
            )
            await tx.conn.execute(
                s.sessions.update()
                .where(s.sessions.c.id == session_id)
                .values(deleted_at=now(), status="terminated", body={"agent": {}, "deleted": True})
            )
            tx.close_streams(session_id)
        return {"id": session_id, "type": "session_deleted"}

    async def list(self, who: Principal, *, params: Mapping[str, Any]) -> dict[str, Any]:
        who.require_api_key()
        n = resolve_limit(params.get("limit"))
        descending = params.get("order", "desc") != "asc"
        cursor = decode_cursor(params.get("page"))
        q = sa.select(s.sessions).where(s.sessions.c.deleted_at.is_(None))
        if who.kind == "user":
            q = q.where(s.sessions.c.owner_user_id == who.user_id)
        if not params.get("include_archived"):
            q = q.where(s.sessions.c.archived_at.is_(None))
        if params.get("agent_id"):
            q = q.where(s.sessions.c.agent_id == params["agent_id"])
            if params.get("agent_version") is not None:
                q = q.where(s.sessions.c.agent_version == int(params["agent_version"]))
        if params.get("statuses"):
            q = q.where(s.sessions.c.status.in_(list(params["statuses"])))
        for op, value in (params.get("created_at") or {}).items():
            stamp = _parse(value)
            q = q.where(
                {
                    "gt": s.sessions.c.created_at > stamp,
                    "gte": s.sessions.c.created_at >= stamp,
                    "lt": s.sessions.c.created_at < stamp,
                    "lte": s.sessions.c.created_at <= stamp,
                }[op]
            )
        if cursor is not None:
            q = q.where(s.sessions.c.id < str(cursor) if descending else s.sessions.c.id > str(cursor))
        q = q.order_by(s.sessions.c.id.desc() if descending else s.sessions.c.id).limit(n + 1)
        async with self._db.read() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return page([render_session(r) for r in rows], n, lambda x: x["id"], prev_page=None)

    # -- events from clients -------------------------------------------------------------

    async def send_events(self, session_id: str, params: EventsSend, who: Principal) -> dict[str, Any]:
        async with self._log.transaction() as tx:
            row = await self._row(tx.conn, session_id, who)
            if row["status"] == "terminated":
                raise InvalidInput(f"session {session_id} is terminated and accepts no events")
            echoed: list[dict[str, Any]] = []
            for event in params.events:
                kind = event.type
                if not who.is_api_key and kind not in WORKER_EVENT_TYPES:
                    raise PermissionDenied(f"a worker credential may only send {sorted(WORKER_EVENT_TYPES)}")
                if kind == "user.define_outcome":
                    raise InvalidInput("user.define_outcome (outcomes) is not supported by inwall yet")
                payload = event.model_dump(mode="json", exclude_unset=True)
                await self._check_reference(tx, session_id, payload)
                internal = {"by": who.kind, "user_id": who.user_id, "work_id": who.work_id}
                echoed.extend(
                    await tx.append(
                        session_id, [payload], internal=[internal], queued=kind in QUEUED_EVENT_TYPES
                    )
                )
                if kind == "user.message":
                    await self._work.ensure_work(tx, session_id, row["environment_id"])
            if self._audit is not None:
                for ev in echoed:
                    if ev["type"] in (
                        "user.tool_result",
                        "user.custom_tool_result",
                        "user.tool_confirmation",
                    ):
                        confirmation = ev["type"] == "user.tool_confirmation"
                        await self._audit.append(
                            tx.conn,
                            "tool.confirmation" if confirmation else "tool.result",
                            outcome=str(ev.get("result"))
                            if confirmation
                            else ("error" if ev.get("is_error") else "ok"),
                            session_id=session_id,
                            user_id=row["owner_user_id"],
                            tool_use_id=ev.get("tool_use_id") or ev.get("custom_tool_use_id"),
                            by=who.kind,
                            work_id=who.work_id,
                            bytes_out=sum(len(str(b.get("text", ""))) for b in ev.get("content") or []),
                        )
        return {"data": echoed}

    async def pending_tool_use(
        self, session_id: str, who: Principal, *, tool: str | None = None, input_sha256: str | None = None
    ) -> dict[str, Any]:
        """The built-in call a worker is about to run: the oldest one it may run that has no result.

        Calls the control plane refused, calls the user denied and ``always_ask`` calls
        still waiting for a verdict are skipped: no worker runs them. ``tool`` and
        ``input_sha256`` pick the oldest call that matches, for a worker that knows
        what it is about to run.
        """
        from inwall.governance import input_digest

        if who.kind not in ("environment", "session", "admin"):
            raise PermissionDenied("identity tokens are issued to the worker serving the session")
        answered = sa.alias(s.events)
        has_result = (
            sa.select(answered.c.id)
            .where(
                answered.c.session_id == session_id,
                answered.c.ref_id == s.events.c.id,
                answered.c.ref_kind == "result",
            )
            .exists()
        )
        # Every call still open belongs to the latest model step (a step starts only when the
        # previous one's calls are all resolved), so the search starts at that step's span
        # instead of walking the session's whole history on every call.
        step_start = (
            sa.select(s.events.c.seq)
            .where(s.events.c.session_id == session_id, s.events.c.type == "span.model_request_start")
            .order_by(s.events.c.seq.desc())
            .limit(1)
            .scalar_subquery()
        )
        async with self._db.read() as conn:
            row = await self._row(conn, session_id, who)
            candidates = (
                await conn.execute(
                    sa.select(s.events.c.id, s.events.c.body, s.events.c.internal)
                    .where(
                        s.events.c.session_id == session_id,
                        s.events.c.seq > sa.func.coalesce(step_start, 0),
                        s.events.c.type == "agent.tool_use",
                        ~has_result,
                    )
                    .order_by(s.events.c.seq)
                    .limit(100)
                )
            ).all()
            verdicts = {
                r.ref_id: (r.body or {}).get("result")
                for r in await conn.execute(
                    sa.select(s.events.c.ref_id, s.events.c.body).where(
                        s.events.c.session_id == session_id,
                        s.events.c.ref_kind == "confirmation",
                        s.events.c.ref_id.in_([c.id for c in candidates]),
                    )
                )
            }
        for candidate in candidates:
            body = candidate.body
            permission = body.get("evaluated_permission") or "allow"
            if (candidate.internal or {}).get("refused") or permission == "deny":
                continue
            if permission == "ask" and verdicts.get(candidate.id) != "allow":
                continue
            if tool is not None and body.get("name") != tool:
                continue
            if input_sha256 is not None and input_digest(body.get("input") or {}) != input_sha256:
                continue
            return {"session": dict(row), "event": body}
        raise NotFound(f"session {session_id} has no tool call waiting for a worker")

    async def _check_reference(self, tx: Tx, session_id: str, payload: dict[str, Any]) -> None:
        kind = payload["type"]
        expected = {
            "user.tool_result": ("tool_use_id", ("agent.tool_use",), "result"),
            "user.custom_tool_result": ("custom_tool_use_id", ("agent.custom_tool_use",), "result"),
            "user.tool_confirmation": (
                "tool_use_id",
                ("agent.tool_use", "agent.mcp_tool_use"),
                "confirmation",
            ),
        }.get(kind)
        if expected is None:
            return
        field, types, ref_kind = expected
        target_id = payload[field]
        # One round trip: the tool-use event itself and every answer already recorded for it.
        rows = (
            await tx.conn.execute(
                prepared.TOOL_USE_AND_ANSWERS, {"session_id": session_id, "target_id": target_id}
            )
        ).all()
        target = next((r for r in rows if r.id == target_id), None)
        if target is None or target.type not in types:
            raise InvalidInput(
                f"{field} {target_id!r} does not name an {' or '.join(types)} event of this session"
            )
        if (target.internal or {}).get("refused"):
            raise Conflict(f"tool use {target_id} was refused by the control plane and takes no {ref_kind}")
        refs = {r.ref_kind: r.verdict for r in rows if r.id != target_id and r.ref_kind}
        kinds = set(refs)
        denied = refs.get("confirmation") == "deny"
        if ref_kind == "result" and ("result" in kinds or denied):
            # 400, not 409: the SDK's worker retries a 409 for a whole lease TTL, holding up the
            # session's next calls, and no retry can make this result acceptable.
            why = "was denied, so it takes no result" if denied else "already has a result"
            raise InvalidInput(f"tool use {target_id} {why}", error_code="tool_use_already_resolved")
        if "result" in kinds:
            raise Conflict(f"tool use {target_id} already has a result")
        if ref_kind == "confirmation":
            if target.evaluated_permission != "ask":
                raise InvalidInput(f"tool use {target_id} does not need a confirmation")
            if "confirmation" in kinds:
                raise Conflict(f"tool use {target_id} was already confirmed or denied")


def _parse(value: str) -> datetime:
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise InvalidInput(f"not an RFC 3339 timestamp: {value!r}") from exc
