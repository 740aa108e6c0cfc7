"""A stdio MCP server exposed as Streamable HTTP (legacy era), one child process per MCP session.

Why one child per session: a stdio server speaks to exactly one client (one
``initialize``, one id space). Sharing a child between sessions would mean
rewriting ids and replaying handshakes; a child per session keeps the server
unmodified and a session's crash its own. Children start on the ``initialize``
that opens a session and stop (stdin closed, SIGTERM, SIGKILL, reaped) on
DELETE, on idle timeout, when the child exits, or when the gateway stops.

Routing of the child's output: a response goes to the POST that asked (by
id), a progress notification to the POST whose ``progressToken`` it carries,
anything else (``notifications/tools/list_changed``, server requests) to the
session's GET stream; those are buffered (bounded) until a GET stream is
attached, so a notification sent before the client opens it is not lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from inwall.gateway._asgi import ASGIReceive, ASGISend, Scope, header_value, read_body, send_json, send_text
from inwall.gateway._jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    dumps,
    error_body,
    error_message,
)
from inwall.gateway._lines import LineSplitter
from inwall.gateway._process import child_environment, spawn, stop
from inwall.gateway._sse import encode_event
from inwall.gateway.config import StdioRoute
from inwall.gateway.mcp_policy import HANDSHAKE_VERSIONS, UNSUPPORTED_PROTOCOL_VERSION

__all__ = ["StdioBridge"]

log = logging.getLogger(__name__)

SESSION_HEADER = "mcp-session-id"
_STANDALONE_BUFFER = 1000
_REQUEST_BUFFER = 256


class _SessionGone(Exception):
    """The child exited or the session was terminated while a request waited."""


class _Session:
    def __init__(self, bridge: StdioBridge, session_id: str) -> None:
        self.bridge = bridge
        self.id = session_id
        self.process: anyio.abc.Process | None = None
        self.pending: dict[Any, MemoryObjectSendStream[tuple[bytes, bool]]] = {}
        self.progress: dict[Any, Any] = {}
        self.standalone: deque[tuple[bytes, bool]] = deque(maxlen=_STANDALONE_BUFFER)
        self.get_stream: MemoryObjectSendStream[tuple[bytes, bool]] | None = None
        self.ended = anyio.Event()
        self.idle_scope = anyio.CancelScope(deadline=anyio.current_time() + bridge.route.idle_timeout_s)
        self.in_flight = 0
        self._stdin_lock = anyio.Lock()

    # -- lifetime ---------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        route = self.bridge.route
        self.process = await spawn(route.command, env=child_environment(route.env), cwd=route.cwd)
        self.bridge._children.add(self.process.pid)
        log.info("stdio route %s: session %s started pid %d", route.name, self.id[:8], self.process.pid)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump_stdout)
                task_status.started()
                with self.idle_scope:
                    await self.ended.wait()
                if self.idle_scope.cancelled_caught:
                    log.info("stdio route %s: session %s idle, stopping", route.name, self.id[:8])
                tg.cancel_scope.cancel()
        finally:
            self.end()
            self.bridge._forget(self)
            code = await stop(self.process, grace_s=route.stop_grace_s)
            self.bridge._children.discard(self.process.pid)
            self.bridge._notify()
            log.info("stdio route %s: session %s stopped (exit %s)", route.name, self.id[:8], code)

    def end(self) -> None:
        self.ended.set()
        for stream in self.pending.values():
            stream.close()
        self.pending.clear()
        if self.get_stream is not None:
            self.get_stream.close()

    def busy(self) -> None:
        self.in_flight += 1
        self.idle_scope.deadline = math.inf

    def idle(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.idle_scope.deadline = anyio.current_time() + self.bridge.route.idle_timeout_s

    # -- child I/O --------------------------------------------------------------------------

    async def write(self, message: Any) -> None:
        assert self.process is not None and self.process.stdin is not None
        if self.ended.is_set():
            raise _SessionGone
        async with self._stdin_lock:
            try:
                await self.process.stdin.send(dumps(message) + b"\n")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self.end()
                raise _SessionGone from exc

    async def _pump_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        lines = LineSplitter()
        limit = self.bridge.max_message_bytes
        try:
            async for chunk in self.process.stdout:
                for raw in lines.feed(chunk):
                    line = raw.strip()
                    if line:
                        await self._dispatch(line)
                if lines.pending > limit:
                    log.warning(
                        "stdio route %s: a message over %d bytes; ending session",
                        self.bridge.route.name,
                        limit,
                    )
                    break
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self.end()

    async def _dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            log.warning(
                "stdio route %s: the server wrote a line that is not JSON; ignored", self.bridge.route.name
            )
            return
        if not isinstance(message, dict):
            return
        target: MemoryObjectSendStream[tuple[bytes, bool]] | None = None
        if "method" not in message and "id" in message:
            target = self.pending.pop(message["id"], None) if _hashable(message["id"]) else None
            self.progress = {k: v for k, v in self.progress.items() if v != message.get("id")}
            if target is None:
                return  # an answer nobody waits for (the caller went away)
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await target.send((line, True))
            target.close()
            return
        if message.get("method") == "notifications/progress":
            token = (message.get("params") or {}).get("progressToken")
            request_id = self.progress.get(token) if _hashable(token) else None
            target = self.pending.get(request_id) if request_id is not None else None
        if target is not None and await _offer(target, line):
            return
        await self._send_standalone(line)

    async def _send_standalone(self, line: bytes) -> None:
        if self.get_stream is not None:
            if await _offer(self.get_stream, line):
                return
            self.get_stream = None
        self.standalone.append((line, False))

    # -- HTTP -------------------------------------------------------------------------------

    async def post(self, scope: Scope, receive: ASGIReceive, send: ASGISend, message: dict[str, Any]) -> None:
        headers = {SESSION_HEADER: self.id}
        if "method" not in message or "id" not in message:  # notification or a response to a server request
            try:
                await self.write(message)
            except _SessionGone:
                await _gone(send, message.get("id"))
                return
            await send_text(send, 202, "", headers=headers)
            return
        request_id = message["id"]
        if request_id in self.pending:
            await send_json(
                send, 409, error_body(request_id, INVALID_REQUEST, "a request with this id is in flight")
            )
            return
        sender, messages = anyio.create_memory_object_stream[tuple[bytes, bool]](_REQUEST_BUFFER)
        self.pending[request_id] = sender
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if token is not None and _hashable(token):
            self.progress[token] = request_id
        try:
            await self.write(message)
        except _SessionGone:
            self.pending.pop(request_id, None)
            await _gone(send, request_id)
            return
        accept = header_value(scope, "accept") or ""
        with messages:
            if "text/event-stream" in accept:
                await _stream_events(receive, send, messages=messages, headers=headers, request_id=request_id)
            else:
                await _single_json(receive, send, messages, headers, request_id)
        self.pending.pop(request_id, None)
        self.progress = {k: v for k, v in self.progress.items() if v != request_id}

    async def get(self, receive: ASGIReceive, send: ASGISend) -> None:
        if self.get_stream is not None:
            await send_json(
                send, 409, error_body(None, INVALID_REQUEST, "Conflict: only one SSE stream per session")
            )
            return
        sender, messages = anyio.create_memory_object_stream[tuple[bytes, bool]](_STANDALONE_BUFFER)
        while self.standalone:
            sender.send_nowait(self.standalone.popleft())
        self.get_stream = sender
        try:
            with messages:
                await _stream_events(
                    receive, send, messages=messages, headers={SESSION_HEADER: self.id}, request_id=None
                )
        finally:
            if self.get_stream is sender:
                self.get_stream = None
            sender.close()


class StdioBridge:
    """ASGI app for one ``[stdio.NAME]`` route; enter :meth:`running` before serving requests."""

    def __init__(self, route: StdioRoute, *, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self.route = route
        self.max_message_bytes = max_message_bytes
        self._sessions: dict[str, _Session] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._children: set[int] = set()
        self._changed = anyio.Event()

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def child_pids(self) -> list[int]:
        """Children not yet stopped and reaped."""
        return sorted(self._children)

    async def wait_children(self, count: int = 0) -> None:
        """Return once at most ``count`` children are running (each stopped one has been reaped)."""
        while len(self._children) > count:
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[StdioBridge]:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                self._tg = None
                for session in list(self._sessions.values()):
                    session.end()

    def _forget(self, session: _Session) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        method = scope["method"]
        version = header_value(scope, "mcp-protocol-version")
        session_id = header_value(scope, SESSION_HEADER)
        if version is not None and version not in HANDSHAKE_VERSIONS:
            # The modern era is stateless; this bridge speaks the handshake era. Naming the handshake
            # versions makes an auto-negotiating client fall back to initialize.
            await send_json(
                send,
                400,
                error_body(
                    None,
                    UNSUPPORTED_PROTOCOL_VERSION,
                    "Unsupported protocol version: this stdio server speaks the initialize handshake",
                    {"supported": list(HANDSHAKE_VERSIONS), "requested": version},
                ),
            )
            return
        if method == "POST":
            await self._post(scope, receive, send, session_id)
            return
        if method not in ("GET", "DELETE"):
            await send_json(
                send,
                405,
                error_body(None, INVALID_REQUEST, "Method Not Allowed"),
                {"allow": "GET, POST, DELETE"},
            )
            return
        session = self._lookup(session_id)
        if session is None:
            await _no_session(send, session_id)
            return
        if method == "DELETE":
            session.end()
            await send_json(send, 200, b"", {SESSION_HEADER: session.id})
            return
        if "text/event-stream" not in (header_value(scope, "accept") or ""):
            await send_json(
                send,
                406,
                error_body(None, INVALID_REQUEST, "Not Acceptable: Client must accept text/event-stream"),
            )
            return
        session.busy()
        try:
            await session.get(receive, send)
        finally:
            session.idle()

    def _lookup(self, session_id: str | None) -> _Session | None:
        if session_id is None:
            return None
        session = self._sessions.get(session_id)
        return session if session is not None and not session.ended.is_set() else None

    async def _post(self, scope: Scope, receive: ASGIReceive, send: ASGISend, session_id: str | None) -> None:
        body = await read_body(receive, limit=self.max_message_bytes)
        if body is None:
            await send_json(send, 413, error_body(None, INVALID_REQUEST, "the request body is too large"))
            return
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            what = "a batch" if isinstance(message, list) else "not one JSON-RPC message"
            await send_json(send, 400, error_body(None, PARSE_ERROR, f"Parse error: the body is {what}"))
            return
        session = self._lookup(session_id)
        if session is None and session_id is None and message.get("method") == "initialize":
            session = await self._open(send)
            if session is None:
                return
        if session is None:
            await _no_session(send, session_id)
            return
        session.busy()
        try:
            await session.post(scope, receive, send, message)
        finally:
            session.idle()

    async def _open(self, send: ASGISend) -> _Session | None:
        if self._tg is None:
            await send_json(send, 503, error_body(None, INTERNAL_ERROR, "the gateway is not running"))
            return None
        if len(self._sessions) >= self.route.max_sessions:
            await send_json(
                send, 503, error_body(None, INTERNAL_ERROR, "Too many open sessions for this stdio server")
            )
            return None
        session = _Session(self, secrets.token_hex(16))
        try:
            await self._tg.start(session.run)
        except OSError as exc:
            log.warning(
                "stdio route %s: cannot start %s: %s", self.route.name, self.route.command[0], exc.strerror
            )
            await send_json(
                send,
                502,
                error_body(
                    None, INTERNAL_ERROR, f"the gateway could not start the stdio server: {exc.strerror}"
                ),
            )
            return None
        self._sessions[session.id] = session
        return session


async def _no_session(send: ASGISend, session_id: str | None) -> None:
    if session_id is None:
        await send_json(send, 400, error_body(None, INVALID_REQUEST, "Bad Request: Missing session ID"))
    else:
        await send_json(send, 404, error_body(None, INVALID_REQUEST, "Session not found"))


async def _gone(send: ASGISend, request_id: Any) -> None:
    await send_json(
        send, 404, error_body(request_id, INVALID_REQUEST, "Session not found (the stdio server exited)")
    )


async def _stream_events(
    receive: ASGIReceive,
    send: ASGISend,
    *,
    messages: MemoryObjectReceiveStream[tuple[bytes, bool]],
    headers: dict[str, str],
    request_id: Any,
) -> None:
    """Relay messages as SSE until the response (or, for a GET, until the session or the caller ends)."""
    answered = False
    async with anyio.create_task_group() as tg:

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch_disconnect)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache, no-transform"),
                    *[(k.encode(), v.encode()) for k, v in headers.items()],
                ],
            }
        )
        async for line, final in messages:
            await send({"type": "http.response.body", "body": encode_event(line.decode()), "more_body": True})
            if final:
                answered = True
                break
        if request_id is not None and not answered:
            gone = dumps(
                error_message(request_id, INTERNAL_ERROR, "the stdio server exited before answering")
            )
            await send({"type": "http.response.body", "body": encode_event(gone.decode()), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        tg.cancel_scope.cancel()


async def _single_json(
    receive: ASGIReceive,
    send: ASGISend,
    messages: MemoryObjectReceiveStream[tuple[bytes, bool]],
    headers: dict[str, str],
    request_id: Any,
) -> None:
    async for line, final in messages:
        if final:
            await send_json(send, 200, line, headers)
            return
    await send_json(
        send, 200, error_body(request_id, INTERNAL_ERROR, "the stdio server exited before answering"), headers
    )


async def _offer(stream: MemoryObjectSendStream[tuple[bytes, bool]], line: bytes) -> bool:
    """Send to a consumer that may have gone away; False when it has."""
    try:
        await stream.send((line, False))
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        return False
    return True


def _hashable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None
