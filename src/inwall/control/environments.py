"""Environments: where a session's hands run. Each has its own work queue and keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from inwall.api.schemas.environments import EnvironmentCreate, EnvironmentUpdate
from inwall.control.pages import list_newest_first, patch_metadata
from inwall.control.timefmt import ts
from inwall.errors import Conflict, InvalidInput, NotFound
from inwall.ids import new_id, now
from inwall.store import schema as s
from inwall.store.db import Database

__all__ = ["EnvironmentService"]


def _render(row: Any) -> dict[str, Any]:
    body = row["body"]
    return {
        "type": "environment",
        "id": row["id"],
        "name": body["name"],
        "description": body.get("description"),
        "metadata": body.get("metadata", {}),
        "config": {"type": "self_hosted"},
        "scope": body.get("scope") or "organization",
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
        "archived_at": ts(row["archived_at"]),
    }


class EnvironmentService:
    def __init__(self, db: Database, *, on_keys_removed: Callable[[], None] | None = None) -> None:
        self._db = db
        self.on_keys_removed = on_keys_removed

    async def create(self, params: EnvironmentCreate) -> dict[str, Any]:
        env_id = new_id("env")
        at = now()
        body = {
            "name": params.name,
            "description": params.description,
            "metadata": dict(params.metadata),
            "scope": params.scope or "organization",
        }
        async with self._db.write() as conn:
            await conn.execute(
                s.environments.insert().values(id=env_id, body=body, created_at=at, updated_at=at)
            )
            return await self.get(env_id, conn)

    async def get(self, env_id: str, conn: AsyncConnection | None = None) -> dict[str, Any]:
        if conn is None:
            async with self._db.read() as c:
                return await self.get(env_id, c)
        row = (
            (await conn.execute(sa.select(s.environments).where(s.environments.c.id == env_id)))
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"environment {env_id} not found", error_code="environment_not_found")
        return _render(row)

    async def require_usable(self, env_id: str, conn: AsyncConnection) -> dict[str, Any]:
        env = await self.get(env_id, conn)
        if env["archived_at"] is not None:
            raise InvalidInput(f"environment {env_id} is archived", error_code="environment_archived")
        return env

    async def require_usable_by_id(self, env_id: str) -> dict[str, Any]:
        async with self._db.read() as conn:
            return await self.require_usable(env_id, conn)

    async def update(self, env_id: str, params: EnvironmentUpdate) -> dict[str, Any]:
        async with self._db.write() as conn:
            row = (
                (await conn.execute(sa.select(s.environments).where(s.environments.c.id == env_id)))
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(f"environment {env_id} not found", error_code="environment_not_found")
            if row["archived_at"] is not None:
                raise InvalidInput(f"environment {env_id} is archived", error_code="environment_archived")
            body = dict(row["body"])
            fields = params.model_fields_set
            if params.config is not None:
                if params.config.get("type") != "self_hosted":
                    raise InvalidInput(
                        f"environment {env_id} is self_hosted; its config type cannot change to "
                        f"{params.config.get('type')!r}",
                        error_code="invalid_config_type_change",
                    )
                if set(params.config) != {"type"}:
                    raise InvalidInput("a self_hosted config takes no fields besides type")
            if "name" in fields and params.name is not None:
                body["name"] = params.name
            if "description" in fields:
                body["description"] = params.description
            if "scope" in fields and params.scope is not None:
                body["scope"] = params.scope
            if params.metadata is not None:
                body["metadata"] = patch_metadata(
                    body.get("metadata") or {}, params.metadata, empty_deletes=True
                )
            await conn.execute(
                s.environments.update()
                .where(s.environments.c.id == env_id)
                .values(body=body, updated_at=now())
            )
            return await self.get(env_id, conn)

    async def archive(self, env_id: str) -> dict[str, Any]:
        async with self._db.write() as conn:
            env = await self.get(env_id, conn)
            if env["archived_at"] is None:
                await conn.execute(
                    s.environments.update().where(s.environments.c.id == env_id).values(archived_at=now())
                )
            return await self.get(env_id, conn)

    async def delete(self, env_id: str) -> dict[str, Any]:
        async with self._db.write() as conn:
            await self.get(env_id, conn)
            live = await conn.execute(
                sa.select(sa.func.count())
                .select_from(s.sessions)
                .where(
                    s.sessions.c.environment_id == env_id,
                    s.sessions.c.status != "terminated",
                    s.sessions.c.deleted_at.is_(None),
                )
            )
            if live.scalar_one():
                raise Conflict(f"environment {env_id} still has live sessions; archive or delete them first")
            await conn.execute(s.api_keys.delete().where(s.api_keys.c.environment_id == env_id))
            if self.on_keys_removed is not None:
                self.on_keys_removed()
            await conn.execute(s.worker_polls.delete().where(s.worker_polls.c.environment_id == env_id))
            await conn.execute(s.environments.delete().where(s.environments.c.id == env_id))
        return {"id": env_id, "type": "environment_deleted"}

    async def list(
        self, *, limit: int | None, page_cursor: str | None, include_archived: bool
    ) -> dict[str, Any]:
        async with self._db.read() as conn:
            return await list_newest_first(
                conn,
                s.environments,
                _render,
                limit=limit,
                page_cursor=page_cursor,
                include_archived=include_archived,
            )
