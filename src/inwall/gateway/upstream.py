"""An HTTP upstream route: relay one request to ``scheme://host:port`` + the caller's path, streaming back.

The response is streamed chunk by chunk (SSE must reach the caller as it is
produced), compression is refused upstream (``accept-encoding: identity``) so
the perimeter can read what it must filter, and every connection goes through
the :mod:`netguard` (``allowed_ips`` after DNS).
"""

from __future__ import annotations

import logging

import anyio
import httpx2

from inwall.gateway._asgi import ASGIReceive, ASGISend, Scope, read_body, send_json
from inwall.gateway._jsonrpc import INTERNAL_ERROR, error_body
from inwall.gateway.config import HttpRoute
from inwall.gateway.netguard import ForbiddenUpstream

__all__ = ["HOP_BY_HOP", "HttpUpstream", "UpstreamError"]

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "accept-encoding", "content-length"}


class UpstreamError(Exception):
    """Why a request could not be relayed; ``status`` is what the caller gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpUpstream:
    """ASGI app for one ``[routes]`` entry. ``client`` must use a :class:`GuardedTransport`."""

    def __init__(
        self, route: HttpRoute, client: httpx2.AsyncClient, *, max_request_bytes: int = 4 * 1024 * 1024
    ) -> None:
        self.route = route
        self._client = client
        self._max_request = max_request_bytes
        self._extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in route.headers]
        self._extra_names = {k for k, _ in self._extra}

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        body = await read_body(receive, limit=self._max_request)
        if body is None:
            await send_json(send, 413, error_body(None, INTERNAL_ERROR, "the request body is too large"))
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        target = raw_path + (b"?" + query if query else b"")
        headers = [
            (k, v)
            for k, v in scope.get("headers", [])
            if k.lower().decode("latin-1") not in _NOT_FORWARDED and k.lower() not in self._extra_names
        ]
        headers += self._extra
        headers.append((b"accept-encoding", b"identity"))
        request = self._client.build_request(
            scope["method"], self.route.upstream + target.decode("latin-1"), headers=headers, content=body
        )
        try:
            response = await self._client.send(request, stream=True)
        except ForbiddenUpstream as exc:
            log.warning("route %s: %s", self.route.name, exc)
            raise UpstreamError(502, f"refused by the gateway: {exc}") from exc
        except httpx2.TimeoutException as exc:
            raise UpstreamError(504, f"the upstream of route {self.route.name!r} timed out") from exc
        except httpx2.TransportError as exc:
            raise UpstreamError(
                502, f"the upstream of route {self.route.name!r} is unreachable: {exc}"
            ) from exc
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [
                            (k, v)
                            for k, v in response.headers.raw
                            if k.lower().decode("latin-1") not in HOP_BY_HOP
                        ],
                    }
                )
                try:
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx2.TransportError as exc:
                    # Ending the response normally would pass a truncated body off as whole: abort it.
                    raise UpstreamError(
                        502, f"the upstream of route {self.route.name!r} broke off: {exc}"
                    ) from exc
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await response.aclose()
