"""The database handle: engine, migrations, and transactions.

SQLite is the embedded default: WAL for concurrent readers, ``synchronous=NORMAL``
(durable across process crashes, which is what the server-crash tests kill),
and a process-wide write lock so two coroutines never race for SQLite's single
writer (SQLITE_BUSY would otherwise surface as a random 500). PostgreSQL needs
no lock; the same queries run there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from inwall.errors import ConfigError, Unavailable

__all__ = ["Database", "sqlite_url"]

log = logging.getLogger(__name__)


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'inwall.db'}"


def _sync_url(url: str) -> str:
    return url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg") if "sqlite" in url else url


class Database:
    """Owns the engine. ``read()`` and ``write()`` hand out connections inside a transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._write_lock = anyio.Lock()

    async def migrate(self) -> None:
        """Bring the schema to the latest revision (Alembic), creating the file if needed."""
        from inwall.store.migrate import upgrade

        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(upgrade)
        except sa.exc.OperationalError as exc:
            raise ConfigError(f"cannot open the database: {exc.orig}") from exc

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise Unavailable(f"database unavailable: {exc.orig}") from exc

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction; committed on exit, rolled back on error (nothing half-written)."""
        lock = self._write_lock if self.is_sqlite else None
        try:
            if lock is not None:
                await lock.acquire()
            try:
                async with self.engine.begin() as conn:
                    yield conn
            finally:
                if lock is not None:
                    lock.release()
        except sa.exc.OperationalError as exc:
            raise Unavailable(f"database unavailable: {exc.orig}") from exc

    async def aclose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
