"""Agents: versioned configurations. Every effective change is a new version; old ones stay readable."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from inwall.agent.config import agent_body, apply_update, render_agent
from inwall.api.schemas.agents import AgentCreate, AgentUpdate
from inwall.control.pages import decode_cursor, page, resolve_limit
from inwall.control.timefmt import ts
from inwall.errors import Conflict, InvalidInput, NotFound
from inwall.ids import new_id, now, parse_rfc3339
from inwall.store import schema as s
from inwall.store.db import Database

__all__ = ["AgentService"]


class AgentService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, params: AgentCreate) -> dict[str, Any]:
        agent_id = new_id("agent")
        at = now()
        body = agent_body(params)
        async with self._db.write() as conn:
            await conn.execute(s.agents.insert().values(id=agent_id, version=1, created_at=at, updated_at=at))
            await conn.execute(
                s.agent_versions.insert().values(agent_id=agent_id, version=1, body=body, created_at=at)
            )
        return render_agent(agent_id, 1, body, ts(at) or "", ts(at) or "", None)

    async def get(
        self, agent_id: str, version: int | None = None, conn: AsyncConnection | None = None
    ) -> dict[str, Any]:
        if conn is None:
            async with self._db.read() as c:
                return await self.get(agent_id, version, c)
        head = (await conn.execute(sa.select(s.agents).where(s.agents.c.id == agent_id))).mappings().first()
        if head is None:
            raise NotFound(f"agent {agent_id} not found")
        want = head["version"] if version is None else version
        q = sa.select(s.agent_versions).where(
            s.agent_versions.c.agent_id == agent_id, s.agent_versions.c.version == want
        )
        row = (await conn.execute(q)).mappings().first()
        if row is None:
            raise NotFound(f"agent {agent_id} has no version {want}")
        return render_agent(
            agent_id,
            want,
            row["body"],
            ts(head["created_at"]) or "",
            ts(row["created_at"]) or "",
            ts(head["archived_at"]),
        )

    async def update(self, agent_id: str, params: AgentUpdate) -> dict[str, Any]:
        async with self._db.write() as conn:
            head = (
                (await conn.execute(sa.select(s.agents).where(s.agents.c.id == agent_id))).mappings().first()
            )
            if head is None:
                raise NotFound(f"agent {agent_id} not found")
            if head["archived_at"] is not None:
                raise InvalidInput(f"agent {agent_id} is archived and cannot be updated")
            if params.version is not None and params.version != head["version"]:
                raise Conflict(
                    f"agent {agent_id} is at version {head['version']}, not {params.version}; "
                    "re-read it and retry"
                )
            current = await self.get(agent_id, head["version"], conn)
            body = {k: current[k] for k in _BODY_KEYS}
            new_body, changed = apply_update(body, params)
            if not changed:
                return current
            version = head["version"] + 1
            at = now()
            await conn.execute(
                s.agents.update().where(s.agents.c.id == agent_id).values(version=version, updated_at=at)
            )
            await conn.execute(
                s.agent_versions.insert().values(
                    agent_id=agent_id, version=version, body=new_body, created_at=at
                )
            )
            return render_agent(agent_id, version, new_body, ts(head["created_at"]) or "", ts(at) or "", None)

    async def archive(self, agent_id: str) -> dict[str, Any]:
        async with self._db.write() as conn:
            head = (
                (await conn.execute(sa.select(s.agents).where(s.agents.c.id == agent_id))).mappings().first()
            )
            if head is None:
                raise NotFound(f"agent {agent_id} not found")
            if head["archived_at"] is None:
                await conn.execute(
                    s.agents.update().where(s.agents.c.id == agent_id).values(archived_at=now())
                )
            return await self.get(agent_id, None, conn)

    async def list(
        self,
        *,
        limit: int | None,
        page_cursor: str | None,
        include_archived: bool,
        created_gte: str | None = None,
        created_lte: str | None = None,
    ) -> dict[str, Any]:
        n = resolve_limit(limit, maximum=100)
        after = decode_cursor(page_cursor)
        q = sa.select(s.agents.c.id).order_by(s.agents.c.id.desc()).limit(n + 1)
        if not include_archived:
            q = q.where(s.agents.c.archived_at.is_(None))
        if after is not None:
            q = q.where(s.agents.c.id < str(after))
        if created_gte:
            q = q.where(s.agents.c.created_at >= _parse(created_gte))
        if created_lte:
            q = q.where(s.agents.c.created_at <= _parse(created_lte))
        async with self._db.read() as conn:
            ids = [r.id for r in await conn.execute(q)]
            items = [await self.get(i, None, conn) for i in ids]
        return page(items, n, lambda a: a["id"])

    async def list_versions(
        self, agent_id: str, *, limit: int | None, page_cursor: str | None
    ) -> dict[str, Any]:
        n = resolve_limit(limit, maximum=100)
        before = decode_cursor(page_cursor)
        async with self._db.read() as conn:
            await self.get(agent_id, None, conn)
            q = (
                sa.select(s.agent_versions.c.version)
                .where(s.agent_versions.c.agent_id == agent_id)
                .order_by(s.agent_versions.c.version.desc())
                .limit(n + 1)
            )
            if before is not None:
                q = q.where(s.agent_versions.c.version < int(before))
            versions = [r.version for r in await conn.execute(q)]
            items = [await self.get(agent_id, v, conn) for v in versions]
        return page(items, n, lambda a: a["version"])


_BODY_KEYS = (
    "name",
    "description",
    "system",
    "model",
    "tools",
    "mcp_servers",
    "skills",
    "metadata",
    "execution_identity",
    "multiagent",
)


def _parse(value: str) -> Any:
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise InvalidInput(f"not an RFC 3339 timestamp: {value!r}") from exc
