"""The database handle: engine, migrations, and transactions.

SQLite is the embedded default: WAL for concurrent readers, ``synchronous=NORMAL``
(durable across process crashes, which is what the server-crash tests kill),
and a process-wide write lock so two coroutines never race for SQLite's single
writer.

SQLite statements run *inline* on the event loop through a synchronous
connection. On a local WAL database a statement takes tens of microseconds,
while handing each one to a worker thread (aiosqlite) costs hundreds; a tool
call's round trip makes a dozen of them, so the thread hops were most of the
control plane's latency. Nothing can make an inline call wait on another
process: one server owns the file (a lock in the data directory enforces it),
readers never block under WAL, and writers are serialised by the lock above
before they touch the database. PostgreSQL runs through the async engine
(asyncpg) as usual; callers see the same ``AsyncConnection`` interface either
way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from inwall.errors import ConfigError, Unavailable

__all__ = ["Database", "sqlite_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'inwall.db'}"


class _InlineConnection:
    """``AsyncConnection``'s calling convention over a synchronous SQLAlchemy connection."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    async def execute(self, statement: Any, parameters: Any = None) -> sa.CursorResult[Any]:
        return self._conn.execute(statement, parameters)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(self._conn, *args)


class Database:
    """Owns the engine. ``read()`` and ``write()`` hand out connections inside a transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._sync: sa.Engine | None = None
        self.engine: AsyncEngine | None = None
        if self.is_sqlite:
            self._sync = sa.create_engine(
                url.replace("sqlite+aiosqlite:", "sqlite:"),
                connect_args={"timeout": 30, "check_same_thread": False},
            )
            event.listen(self._sync, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(url, pool_pre_ping=True)
        self._write_lock = anyio.Lock()

    async def migrate(self) -> None:
        """Bring the schema to the latest revision (Alembic), creating the file if needed."""
        from inwall.store.migrate import upgrade

        try:
            async with self._begin() as conn:
                await conn.run_sync(upgrade)
        except sa.exc.OperationalError as exc:
            raise ConfigError(f"cannot open the database: {exc.orig}") from exc

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        if self._sync is not None:
            with self._sync.begin() as conn:
                yield cast(AsyncConnection, _InlineConnection(conn))
        else:
            assert self.engine is not None
            async with self.engine.begin() as aconn:
                yield aconn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        try:
            if self._sync is not None:
                with self._sync.connect() as conn:
                    yield cast(AsyncConnection, _InlineConnection(conn))
            else:
                assert self.engine is not None
                async with self.engine.connect() as aconn:
                    yield aconn
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
                async with self._begin() as conn:
                    yield conn
            finally:
                if lock is not None:
                    lock.release()
        except sa.exc.OperationalError as exc:
            raise Unavailable(f"database unavailable: {exc.orig}") from exc

    async def aclose(self) -> None:
        if self._sync is not None:
            self._sync.dispose()
        if self.engine is not None:
            await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
