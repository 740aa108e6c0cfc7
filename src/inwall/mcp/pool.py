"""The control plane's MCP client: one live MCP session per (session, server), reused across calls.

Built on the official ``mcp`` SDK (``streamable_http_client`` + ``ClientSession``).
Each connection lives in its own task that holds the SDK's context managers
open; callers use the ``ClientSession`` from their own task. A connection that
breaks, or whose MCP session the server forgot (404 → "Session not found"), is
rebuilt once, transparently. Every call is bounded by a timeout; the SDK then
sends ``notifications/cancelled`` so the server can stop the work.

``tools/list`` is retried after any connection failure; ``tools/call`` only on
proof that the server never got the request (a 404 for the session, a connect
error, a stream the tunnel refused), because a tool with side effects must not run
twice. A call whose connection died after it may have been delivered fails with
an ``mcp_connection_failed_error`` that says so.

HTTP goes through an injectable ``httpx2`` transport: the server passes one
that sends tunnel hosts through the tunnel edge and everything else direct.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import anyio
import httpx2

from inwall.agent.catalog import McpToolInfo
from inwall.mcp.types import McpCallResult, McpFailure, McpServerRef
from inwall.tunnel._client import Refused

if TYPE_CHECKING:
    from mcp import ClientSession

__all__ = ["McpPool"]

log = logging.getLogger(__name__)

_SESSION_GONE = ("Session not found", "Session terminated")
_AUTH_STATUSES = (401, 403)
_CONNECTION_CLOSED = -32000  # mcp_types.CONNECTION_CLOSED

MAX_SSE_EVENT_BYTES = 64 * 1024 * 1024
"""Bound on one SSE event (one tool result): the SDK's 1 MiB default is too small for real
results, no bound lets a server exhaust our memory; 64 MiB matches the gateway's stdio and
filter limits, so whatever the gateway lets through fits."""

_UNSENT_ERRORS = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)
"""httpx2 failures raised before any byte of the request left: the server cannot have seen it."""


class _Delivery:
    """What happened to the HTTP requests one ``tools/call`` attempt made (see :class:`_Recording`)."""

    __slots__ = ("maybe_delivered", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.maybe_delivered = False

    @property
    def undelivered(self) -> bool:
        """Proof the server never got the call: its request was made and failed before sending."""
        return self.sent > 0 and not self.maybe_delivered


_DELIVERY: contextvars.ContextVar[_Delivery | None] = contextvars.ContextVar(
    "inwall_mcp_delivery", default=None
)


class _Recording(httpx2.AsyncBaseTransport):
    """Records, for the ``tools/call`` attempt whose context a request runs in, whether it may have
    reached the server.

    The SDK runs each request's POST in the context of the task that sent the message
    (it snapshots ``contextvars`` per message), so a context variable set around one
    ``call_tool`` tells this transport which attempt a POST belongs to.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        delivery = _DELIVERY.get()
        if delivery is None:
            return await self._inner.handle_async_request(request)
        delivery.sent += 1
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException as exc:
            if not _unsent(exc):
                delivery.maybe_delivered = True
            raise
        delivery.maybe_delivered = True
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class _Connection:
    key: tuple[str, str, str]
    session: ClientSession | None = None
    ready: anyio.Event = field(default_factory=anyio.Event)
    closed: anyio.Event = field(default_factory=anyio.Event)
    stop: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None
    last_status: int | None = None
    tools_changed: bool = False


class McpPool:
    def __init__(
        self,
        *,
        transport_factory: Callable[[], httpx2.AsyncBaseTransport] | None = None,
        connect_timeout_s: float = 10.0,
        list_timeout_s: float = 30.0,
        max_sse_event_bytes: int = MAX_SSE_EVENT_BYTES,
    ) -> None:
        if max_sse_event_bytes <= 0:
            raise ValueError("max_sse_event_bytes must be positive")
        self._max_sse_event_bytes = max_sse_event_bytes
        self._transport_factory = transport_factory
        self._connect_timeout_s = connect_timeout_s
        self._list_timeout_s = list_timeout_s
        self._connections: dict[tuple[str, str, str], _Connection] = {}
        self._changed: dict[tuple[str, str], bool] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._locks: dict[tuple[str, str, str], anyio.Lock] = {}

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the connection tasks; the control plane runs this in its task group."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None
                for conn in list(self._connections.values()):
                    conn.stop.set()

    # -- the McpClientPool protocol -------------------------------------------------------

    async def list_tools(self, session_id: str, server: McpServerRef) -> list[McpToolInfo]:
        import mcp_types as types

        async def op(client: ClientSession) -> list[McpToolInfo]:
            tools: list[McpToolInfo] = []
            cursor: str | None = None
            for _ in range(1000):  # bounded: a server that pages forever is broken
                with anyio.fail_after(self._list_timeout_s):
                    result = await client.list_tools(params=types.PaginatedRequestParams(cursor=cursor))
                tools.extend(
                    McpToolInfo(t.name, t.description or "", dict(t.input_schema or {"type": "object"}))
                    for t in result.tools
                )
                cursor = result.next_cursor
                if not cursor:
                    break
            return tools

        self._changed.pop((session_id, server.name), None)
        return cast("list[McpToolInfo]", await self._with_session(session_id, server, op))

    async def call_tool(
        self,
        session_id: str,
        server: McpServerRef,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        timeout_s: float,
        meta: Callable[[int], Mapping[str, Any] | None] | None = None,
    ) -> McpCallResult:
        import mcp_types as types
        from mcp import MCPError

        attempts = 0

        async def op(client: ClientSession) -> McpCallResult:
            nonlocal attempts
            attempts += 1
            request_meta = meta(attempts) if meta is not None else None
            try:
                result = await client.call_tool(
                    tool,
                    dict(arguments),
                    read_timeout_seconds=timeout_s,
                    meta=cast("types.RequestParamsMeta", dict(request_meta)) if request_meta else None,
                )
            except MCPError as exc:
                if exc.code == types.REQUEST_TIMEOUT:
                    return McpCallResult(
                        [{"type": "text", "text": f"MCP tool {tool!r} timed out after {timeout_s:g}s"}], True
                    )
                if _connection_level(exc):
                    raise
                return McpCallResult([{"type": "text", "text": f"MCP error {exc.code}: {exc.message}"}], True)
            return McpCallResult(_content(result.content), bool(result.is_error))

        return cast(
            McpCallResult, await self._with_session(session_id, server, op, idempotent=False, what=repr(tool))
        )

    def tools_changed(self, session_id: str, server: str) -> bool:
        return self._changed.pop((session_id, server), False)

    async def forget(self, session_id: str) -> None:
        for key, conn in list(self._connections.items()):
            if key[0] == session_id:
                conn.stop.set()
                self._connections.pop(key, None)

    async def aclose(self) -> None:
        for conn in list(self._connections.values()):
            conn.stop.set()
        self._connections.clear()

    # -- connections ---------------------------------------------------------------------------

    async def _with_session(
        self,
        session_id: str,
        server: McpServerRef,
        op: Callable[[ClientSession], Any],
        *,
        idempotent: bool = True,
        what: str = "",
    ) -> Any:
        """Run ``op`` on the pooled session; start over once with a fresh session when the old one
        is gone. Not ``idempotent`` (a tool call): only when the server provably never got it."""
        from mcp import MCPError

        for attempt in (1, 2):
            conn = await self._connect(session_id, server)
            assert conn.session is not None
            delivery = _Delivery()
            try:
                with _recording(delivery):
                    return await op(conn.session)
            except MCPError as exc:
                if attempt == 1 and _connection_level(exc):
                    # The server forgot our session (404) or the connection under it died:
                    # start over once with a fresh one; a second failure is reported.
                    self._drop(conn)
                    if not (idempotent or _session_gone(exc) or delivery.undelivered):
                        raise self._maybe_delivered(server, what, exc) from exc
                    log.info("MCP session lost (%s); re-initialising server=%s", exc.message, server.name)
                    continue
                raise self._failure(server, conn, exc) from exc
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, httpx2.TransportError) as exc:
                self._drop(conn)
                # A closed or broken session stream means the request was never written.
                unsent = not isinstance(exc, httpx2.TransportError) or _unsent(exc)
                if not (idempotent or unsent or delivery.undelivered):
                    raise self._maybe_delivered(server, what, exc) from exc
                if attempt == 1:
                    continue
                raise McpFailure(
                    server.name, "connection", f"lost the connection to MCP server {server.name!r}"
                ) from exc
        raise AssertionError("unreachable")

    @staticmethod
    def _maybe_delivered(server: McpServerRef, what: str, exc: BaseException) -> McpFailure:
        return McpFailure(
            server.name,
            "connection",
            f"lost the connection to MCP server {server.name!r} during the call to {what or 'a tool'} "
            f"({_describe(exc)}); the tool may have run, so the call was not retried",
        )

    def _failure(self, server: McpServerRef, conn: _Connection, exc: BaseException) -> McpFailure:
        if conn.last_status in _AUTH_STATUSES:
            return McpFailure(
                server.name,
                "authentication",
                f"MCP server {server.name!r} refused our credentials (HTTP {conn.last_status})",
            )
        return McpFailure(server.name, "connection", f"MCP server {server.name!r} failed: {exc}")

    def _drop(self, conn: _Connection) -> None:
        conn.stop.set()
        if self._connections.get(conn.key) is conn:
            del self._connections[conn.key]

    async def _connect(self, session_id: str, server: McpServerRef) -> _Connection:
        key = (session_id, server.name, server.url)
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            conn = self._connections.get(key)
            if conn is not None and conn.session is not None and not conn.closed.is_set():
                return conn
            if self._tg is None:
                raise McpFailure(server.name, "connection", "the MCP client pool is not running")
            conn = _Connection(key)
            self._tg.start_soon(self._hold, conn, server, session_id)
            with anyio.move_on_after(self._connect_timeout_s):
                await conn.ready.wait()
            if conn.session is None:
                conn.stop.set()
                error = conn.error
                if conn.last_status in _AUTH_STATUSES:
                    raise McpFailure(
                        server.name,
                        "authentication",
                        f"MCP server {server.name!r} refused our credentials (HTTP {conn.last_status})",
                    )
                detail = _describe(error) if error else f"no answer within {self._connect_timeout_s:g}s"
                raise McpFailure(
                    server.name, "connection", f"cannot connect to MCP server {server.name!r}: {detail}"
                )
            self._connections[key] = conn
            return conn

    async def _hold(self, conn: _Connection, server: McpServerRef, session_id: str) -> None:
        # The SDK is imported on first use; it costs a second of start-up.
        import mcp_types as types
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        async def note_status(response: httpx2.Response) -> None:
            conn.last_status = response.status_code

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                self._changed[(session_id, server.name)] = True

        try:
            async with contextlib.AsyncExitStack() as stack:
                inner = self._transport_factory() if self._transport_factory else httpx2.AsyncHTTPTransport()
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(
                        transport=_Recording(inner),
                        headers=dict(server.headers),
                        timeout=httpx2.Timeout(30.0, read=300.0),
                        event_hooks={"response": [note_status]},
                    )
                )
                read, write = await stack.enter_async_context(
                    streamable_http_client(
                        server.url, http_client=http, max_sse_event_size=self._max_sse_event_bytes
                    )
                )
                client = await stack.enter_async_context(
                    ClientSession(read, write, message_handler=on_message)
                )
                with anyio.fail_after(self._connect_timeout_s):
                    await client.initialize()
                conn.session = client
                conn.ready.set()
                await conn.stop.wait()
        except BaseException as exc:
            conn.error = exc
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
        finally:
            conn.closed.set()
            conn.ready.set()
            if self._connections.get(conn.key) is conn:
                del self._connections[conn.key]


def _connection_level(exc: Any) -> bool:
    """A failure of the MCP session or its transport, not of the tool call itself."""
    return exc.code == _CONNECTION_CLOSED or _session_gone(exc)


def _session_gone(exc: Any) -> bool:
    """The server answered 404 for our session: it rejected the request without processing it."""
    return any(m in exc.message for m in _SESSION_GONE)


def _unsent(exc: BaseException) -> bool:
    """Whether ``exc`` proves the request never left: a connect failure or a stream the tunnel refused."""
    if isinstance(exc, _UNSENT_ERRORS):
        return True
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, Refused):
            return True
        seen.add(id(cause))
        cause = cause.__cause__
    return False


@contextlib.contextmanager
def _recording(delivery: _Delivery) -> Iterator[None]:
    token = _DELIVERY.set(delivery)
    try:
        yield
    finally:
        _DELIVERY.reset(token)


def _describe(exc: BaseException) -> str:
    inner = getattr(exc, "exceptions", None)
    if inner:
        return "; ".join(_describe(e) for e in inner)
    if isinstance(exc, httpx2.ConnectError):
        # The tunnel edge explains itself ("tunnel tnl_x has no connected gateway"); keep that.
        return str(exc) or "connection refused or unreachable"
    return str(exc) or type(exc).__name__


def _content(blocks: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for b in blocks:
        kind = getattr(b, "type", None)
        if kind == "text":
            out.append({"type": "text", "text": b.text})
        elif kind == "image":
            out.append(
                {"type": "image", "source": {"type": "base64", "media_type": b.mime_type, "data": b.data}}
            )
        else:
            out.append({"type": "text", "text": b.model_dump_json(by_alias=True, exclude_none=True)})
    return out or [{"type": "text", "text": "(no output)"}]


@contextlib.asynccontextmanager
async def running_pool(pool: McpPool) -> AsyncIterator[McpPool]:
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        try:
            yield pool
        finally:
            tg.cancel_scope.cancel()
