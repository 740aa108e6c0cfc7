"""Refuse oversized bodies before they are buffered: a 413 with the usual error body, nothing stored."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inwall.errors import PayloadTooLarge

__all__ = ["BodyLimit"]


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await _reject(send, 400, "invalid_request_error", "invalid Content-Length header")
                return
            if too_big:
                await _reject(send, 413, "request_too_large", self._message())
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the app while it reads the body. FastAPI turns anything but
                    # an HTTPException from body reading into a 400, so it must be one.
                    raise HTTPException(status_code=413, detail=self._message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (PayloadTooLarge, HTTPException):
            if not started:
                await _reject(send, 413, "request_too_large", self._message())

    def _message(self) -> str:
        return f"request body exceeds the {self.max_bytes}-byte limit"


async def _reject(send: Send, status: int, kind: str, message: str) -> None:
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
