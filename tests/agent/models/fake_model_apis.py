"""Local stand-ins for the Messages API and the Chat Completions API.

Real HTTP on 127.0.0.1 under uvicorn, so the official SDK clients run their
own request, retry and error code on our side.  Each fake checks what a real
server would reject (auth, required fields) and otherwise answers with the next
scripted ``Reply``; it records every request for the test to inspect.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inwall.agent.models.base import ModelProvider

API_KEY = "sk-test-SECRET-0123456789abcdef"

Json = dict[str, Any]


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Build the body from the request body instead (an "echo" model).
    compute: Callable[[Json], Json] | None = None
    hang: bool = False  # never answer (until the fake shuts down): for client timeouts


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Json


def anthropic_error(status: int, kind: str, message: str, **headers: str) -> Reply:
    return Reply(status, {"type": "error", "error": {"type": kind, "message": message}}, dict(headers))


def openai_error(status: int, kind: str, message: str, **headers: str) -> Reply:
    return Reply(
        status, {"error": {"message": message, "type": kind, "param": None, "code": None}}, dict(headers)
    )


def anthropic_message(
    content: list[Json],
    stop_reason: str | None = "end_turn",
    *,
    model: str = "claude-fake-1",
    usage: Json | None = None,
) -> Reply:
    return Reply(
        200,
        {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage or {"input_tokens": 11, "output_tokens": 7},
        },
    )


def chat_completion(
    *,
    content: str | None = None,
    tool_calls: list[Json] | None = None,
    finish_reason: str = "stop",
    usage: Json | None = None,
    refusal: str | None = None,
) -> Json:
    message: Json = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    body: Json = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def tool_call(call_id: str, name: str, arguments: str) -> Json:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


class FakeAPI:
    """One fake endpoint: ``replies`` are consumed in order, ``seen`` fills up."""

    def __init__(self, *, flavour: str) -> None:
        assert flavour in ("anthropic", "openai")
        self.flavour = flavour
        self.replies: deque[Reply] = deque()
        self.seen: list[Seen] = []
        self.url = ""
        self.shutting_down = anyio.Event()

    def push(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def _error(self, status: int, kind: str, message: str) -> Response:
        reply = (anthropic_error if self.flavour == "anthropic" else openai_error)(status, kind, message)
        return JSONResponse(reply.body, status_code=status)

    def _authorised(self, request: Request) -> bool:
        if request.headers.get("x-api-key") == API_KEY:
            return True
        return request.headers.get("authorization") == f"Bearer {API_KEY}"

    async def handle(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._error(400, "invalid_request_error", "body is not JSON")
        self.seen.append(Seen(request.url.path, dict(request.headers), body))
        if not self._authorised(request):
            return self._error(401, "authentication_error", "invalid x-api-key")
        required = (
            ("model", "max_tokens", "messages") if self.flavour == "anthropic" else ("model", "messages")
        )
        missing = [name for name in required if name not in body]
        if missing:
            return self._error(400, "invalid_request_error", f"{missing[0]}: Field required")
        if not self.replies:
            return self._error(500, "api_error", "the fake has no scripted reply left")
        reply = self.replies.popleft()
        if reply.hang:
            await self.shutting_down.wait()
            return self._error(500, "api_error", "shutting down")
        payload = reply.compute(body) if reply.compute is not None else reply.body
        return JSONResponse(payload, status_code=reply.status, headers=reply.headers)

    def app(self) -> Starlette:
        path = "/v1/messages" if self.flavour == "anthropic" else "/v1/chat/completions"
        return Starlette(routes=[Route(path, self.handle, methods=["POST"])])


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the test process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@contextlib.asynccontextmanager
async def serve_fake(flavour: str) -> AsyncIterator[FakeAPI]:
    api = FakeAPI(flavour=flavour)
    # Bound and listening before uvicorn starts: clients can connect at once (the
    # kernel queues them), so nothing has to wait for a "ready" signal.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY on accept
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    api.url = f"http://127.0.0.1:{port}" + ("/v1" if flavour == "openai" else "")
    config = uvicorn.Config(
        api.app(),
        lifespan="off",
        log_level="warning",
        access_log=False,
        http="h11",
        ws="none",
        timeout_graceful_shutdown=1,
    )
    server = _QuietServer(config)
    stopped = anyio.Event()

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            yield api
        finally:
            api.shutting_down.set()
            server.should_exit = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await stopped.wait()
            tg.cancel_scope.cancel()
            sock.close()


@contextlib.contextmanager
def refusing_port() -> Any:
    """A loopback port that refuses connections: bound, never listening, held for the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


P = TypeVar("P", bound=ModelProvider)


@contextlib.asynccontextmanager
async def closing(provider: P) -> AsyncIterator[P]:
    """Close the provider (its connection pool) even when the test fails."""
    try:
        yield provider
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await provider.aclose()
