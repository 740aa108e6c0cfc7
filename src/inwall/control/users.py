"""Users and their roles: who a session acts for, and what governance policies see as the principal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from inwall.control.auth import KeyStore
from inwall.control.pages import decode_cursor, page, resolve_limit
from inwall.control.timefmt import ts
from inwall.errors import InvalidInput, NotFound
from inwall.ids import new_id, now
from inwall.store import schema as s
from inwall.store.db import Database

__all__ = ["UserService"]


def _render(row: Any) -> dict[str, Any]:
    return {
        "type": "user",
        "id": row["id"],
        "name": row["name"],
        "roles": list(row["roles"] or []),
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
        "disabled_at": ts(row["disabled_at"]),
    }


class UserService:
    def __init__(self, db: Database, keys: KeyStore) -> None:
        self._db = db
        self._keys = keys

    async def create(self, name: str, roles: Sequence[str]) -> dict[str, Any]:
        user_id = new_id("user")
        at = now()
        async with self._db.write() as conn:
            await conn.execute(
                s.users.insert().values(
                    id=user_id, name=name, roles=sorted(set(roles)), created_at=at, updated_at=at
                )
            )
            return _render(await self._row(conn, user_id))

    async def _row(self, conn: AsyncConnection, user_id: str) -> Any:
        row = (await conn.execute(sa.select(s.users).where(s.users.c.id == user_id))).mappings().first()
        if row is None:
            raise NotFound(f"user {user_id} not found")
        return row

    async def get(self, user_id: str) -> dict[str, Any]:
        async with self._db.read() as conn:
            return _render(await self._row(conn, user_id))

    async def update(self, user_id: str, *, name: str | None, roles: Sequence[str] | None) -> dict[str, Any]:
        async with self._db.write() as conn:
            row = await self._row(conn, user_id)
            if row["disabled_at"] is not None:
                raise InvalidInput(f"user {user_id} is disabled")
            values: dict[str, Any] = {"updated_at": now()}
            if name is not None:
                values["name"] = name
            if roles is not None:
                values["roles"] = sorted(set(roles))
            await conn.execute(s.users.update().where(s.users.c.id == user_id).values(**values))
            result = _render(await self._row(conn, user_id))
        self._keys.forget_cache()  # roles travel with the cached principal
        return result

    async def disable(self, user_id: str) -> dict[str, Any]:
        async with self._db.write() as conn:
            row = await self._row(conn, user_id)
            if row["disabled_at"] is None:
                await conn.execute(
                    s.users.update()
                    .where(s.users.c.id == user_id)
                    .values(disabled_at=now(), updated_at=now())
                )
            result = _render(await self._row(conn, user_id))
        await self._keys.revoke_for_user(user_id)
        return result

    async def create_key(self, user_id: str) -> dict[str, Any]:
        user = await self.get(user_id)
        if user["disabled_at"] is not None:
            raise InvalidInput(f"user {user_id} is disabled")
        key_id, key = await self._keys.create("user", user_id=user_id)
        return {"type": "api_key", "id": key_id, "user_id": user_id, "key": key}

    async def list(
        self, *, limit: int | None, page_cursor: str | None, include_disabled: bool
    ) -> dict[str, Any]:
        n = resolve_limit(limit)
        after = decode_cursor(page_cursor)
        q = sa.select(s.users).order_by(s.users.c.id).limit(n + 1)
        if not include_disabled:
            q = q.where(s.users.c.disabled_at.is_(None))
        if after is not None:
            q = q.where(s.users.c.id > str(after))
        async with self._db.read() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return page([_render(r) for r in rows], n, lambda u: u["id"])
