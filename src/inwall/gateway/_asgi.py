"""Small ASGI helpers: types, header lookup, bounded body reads, whole responses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

__all__ = [
    "ASGIApp",
    "ASGIReceive",
    "ASGISend",
    "Message",
    "Scope",
    "header_pairs",
    "header_value",
    "read_body",
    "send_json",
    "send_text",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[Message]]
ASGISend = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, ASGIReceive, ASGISend], Awaitable[None]]


def header_pairs(scope: Scope) -> list[tuple[str, str]]:
    """(lower-case name, value) pairs in order, duplicates kept."""
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]


def header_value(scope: Scope, name: str) -> str | None:
    key = name.encode("latin-1")
    for k, v in scope.get("headers", []):
        if k.lower() == key:
            return bytes(v).decode("latin-1")
    return None


async def read_body(receive: ASGIReceive, *, limit: int) -> bytes | None:
    """The whole request body, or None when it is over ``limit`` (or the caller went away)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return bytes(body)


async def send_json(
    send: ASGISend, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> None:
    await _send(send, status, body, "application/json", headers)


async def send_text(send: ASGISend, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
    await _send(send, status, text.encode(), "text/plain; charset=utf-8", headers)


async def _send(
    send: ASGISend, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None
) -> None:
    raw = [(b"content-length", str(len(body)).encode())]
    if body:
        raw.append((b"content-type", content_type.encode()))
    raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
