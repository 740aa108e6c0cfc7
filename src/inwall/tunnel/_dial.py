"""Dialling the edge from the gateway: TCP (optionally via an HTTP CONNECT proxy), TLS for
``wss://``, then the WebSocket upgrade; and :class:`WsprotoLink`, the resulting link.

Everything here is I/O around the sans-I/O :class:`~inwall.tunnel.wsclient.WsClient`.
The tunnel token only ever travels in the upgrade request; proxy credentials only in
``Proxy-Authorization``. Neither appears in an error message.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import ssl
from collections import deque
from collections.abc import Mapping
from urllib.parse import SplitResult, unquote, urlsplit

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSStream

from inwall.errors import ConfigError
from inwall.tunnel.errors import (
    TunnelAuthRejected,
    TunnelClosed,
    TunnelProtocolError,
    TunnelRefused,
    TunnelUnavailable,
)
from inwall.tunnel.link import CLOSE_NORMAL, CONNECT_PATH, LinkLimits
from inwall.tunnel.wsclient import Accepted, Closed, Data, Failed, Rejected, WsClient, WsEvent

__all__ = ["WsprotoLink", "dial", "proxy_from_env"]

_RECEIVE_BYTES = 256 * 1024
_MAX_PROXY_RESPONSE = 16 * 1024


class WsprotoLink:
    """The gateway's end of the link: wsproto over an anyio byte stream."""

    def __init__(self, stream: ByteStream, ws: WsClient, *, early: list[WsEvent] | None = None) -> None:
        self._stream = stream
        self._ws = ws
        self._pending: deque[bytes] = deque()
        self._end: Exception | None = None
        self._send_lock = anyio.Lock()
        self._closed = False
        self._absorb(early or [])

    def _absorb(self, events: list[WsEvent]) -> None:
        for event in events:
            if isinstance(event, Data):
                self._pending.append(event.data)
            elif isinstance(event, Closed):
                self._end = TunnelClosed(
                    f"the edge closed the link ({event.code} {event.reason})", code=event.code
                )
            elif isinstance(event, Failed):
                self._end = TunnelProtocolError(f"the edge broke the link: {event.reason}")

    async def send(self, data: bytes) -> None:
        if self._closed or self._ws.finished:
            raise TunnelClosed("the link is closed")
        async with self._send_lock:
            self._ws.send_message(data)
            await self._write(self._ws.data_to_send())

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            await self._stream.send(data)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._closed = True
            raise TunnelClosed("the connection to the edge broke while sending") from exc

    async def receive(self) -> bytes:
        while not self._pending:
            if self._end is not None:
                raise self._end
            try:
                raw: bytes | None = await self._stream.receive(_RECEIVE_BYTES)
            except anyio.EndOfStream:
                raw = None
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                self._closed = True
                raise TunnelClosed("the connection to the edge broke") from exc
            events = self._ws.receive_data(raw)
            reply = self._ws.data_to_send()
            if reply:
                async with self._send_lock:
                    await self._write(reply)
            self._absorb(events)
            if raw is None and self._end is None:
                self._end = TunnelClosed("the edge dropped the connection")
        return self._pending.popleft()

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        self._ws.close(code, reason)
        with anyio.move_on_after(1.0):
            try:
                async with self._send_lock:
                    await self._stream.send(self._ws.data_to_send())
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
        with anyio.move_on_after(1.0, shield=True):
            await self._stream.aclose()


async def dial(
    url: str,
    token: str,
    *,
    proxy: str | None = None,
    client_ssl: ssl.SSLContext | None = None,
    limits: LinkLimits | None = None,
    timeout_s: float = 10.0,
) -> WsprotoLink:
    """Open the WebSocket link to the edge at ``url`` (``ws://`` or ``wss://``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"the tunnel URL must be ws:// or wss:// with a host, not {url!r}")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    target = (parts.path or CONNECT_PATH) + (f"?{parts.query}" if parts.query else "")
    default_port = port == (443 if parts.scheme == "wss" else 80)
    host_header = _authority(host, None if default_port else port)
    stream: ByteStream | None = None
    try:
        with anyio.fail_after(timeout_s):
            if proxy:
                stream = await _connect_via_proxy(proxy, host, port)
            else:
                stream = await anyio.connect_tcp(host, port)
            if parts.scheme == "wss":
                stream = await TLSStream.wrap(
                    stream,
                    hostname=host,
                    ssl_context=client_ssl or ssl.create_default_context(),
                    standard_compatible=False,
                )
            ws = WsClient(host=host_header, target=target, token=token, limits=limits)
            ws.initiate()
            await stream.send(ws.data_to_send())
            return await _upgrade(stream, ws)
    except TimeoutError as exc:
        await _close_quietly(stream)
        raise TunnelUnavailable(f"timed out connecting to the edge at {host}:{port}") from exc
    except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        await _close_quietly(stream)
        raise TunnelUnavailable(f"cannot reach the edge at {host}:{port}: {exc}") from exc
    except BaseException:
        await _close_quietly(stream)
        raise


async def _upgrade(stream: ByteStream, ws: WsClient) -> WsprotoLink:
    while True:
        try:
            raw: bytes | None = await stream.receive(_RECEIVE_BYTES)
        except anyio.EndOfStream:
            raw = None
        events = ws.receive_data(raw)
        reply = ws.data_to_send()
        if reply:
            await stream.send(reply)
        for i, event in enumerate(events):
            if isinstance(event, Accepted):
                return WsprotoLink(stream, ws, early=events[i + 1 :])
            if isinstance(event, Rejected):
                await _close_quietly(stream)
                message = _rejection_message(event.body) or f"HTTP {event.status}"
                if event.status in (401, 403):
                    raise TunnelAuthRejected(
                        f"the edge refused the tunnel token: {message}", status=event.status
                    )
                raise TunnelRefused(
                    f"the edge refused the tunnel ({event.status}): {message}", status=event.status
                )
            if isinstance(event, Failed):
                await _close_quietly(stream)
                raise TunnelProtocolError(f"WebSocket upgrade failed: {event.reason}")
            if isinstance(event, Closed):
                await _close_quietly(stream)
                raise TunnelClosed(f"the edge closed during the upgrade ({event.code})", code=event.code)
        if raw is None:
            await _close_quietly(stream)
            raise TunnelUnavailable("the edge closed the connection during the WebSocket upgrade")


def _rejection_message(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
        message = data["error"]["message"]
        if isinstance(message, str):
            text = message
    except (ValueError, KeyError, TypeError):
        pass
    return "".join(ch for ch in text if ch.isprintable())[:300]


async def _connect_via_proxy(proxy: str, host: str, port: int) -> ByteStream:
    p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if p.scheme != "http" or not p.hostname:
        raise ConfigError("the tunnel proxy must be an http:// URL (CONNECT over plain HTTP to the proxy)")
    try:
        stream = await anyio.connect_tcp(p.hostname, p.port or 80)
    except OSError as exc:
        raise TunnelUnavailable(f"cannot reach the proxy {p.hostname}:{p.port or 80}: {exc}") from exc
    try:
        await _proxy_connect(stream, p, host, port)
    except BaseException:
        await _close_quietly(stream)
        raise
    return stream


async def _proxy_connect(stream: ByteStream, p: SplitResult, host: str, port: int) -> None:
    """Send CONNECT and read the proxy's answer (credentials go only into Proxy-Authorization)."""
    authority = _authority(host, port)
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if p.username is not None:
        credentials = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
        request += f"Proxy-Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"
    await stream.send((request + "\r\n").encode("latin-1"))
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        try:
            buffer += await stream.receive(4096)
        except anyio.EndOfStream as exc:
            raise TunnelRefused(f"the proxy {p.hostname} closed the connection during CONNECT") from exc
        if len(buffer) > _MAX_PROXY_RESPONSE:
            raise TunnelRefused(f"the proxy {p.hostname} sent oversized CONNECT response headers")
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
        raise TunnelProtocolError(f"the proxy {p.hostname} sent a malformed CONNECT response")
    status = int(fields[1])
    if not 200 <= status < 300:
        reason = "".join(ch for ch in (fields[2] if len(fields) > 2 else "") if ch.isprintable())[:100]
        raise TunnelRefused(
            f"the proxy {p.hostname} refused CONNECT: {status} {reason}".rstrip(), status=status
        )
    if rest:
        raise TunnelProtocolError(f"the proxy {p.hostname} sent data before the tunnel was used")


def _authority(host: str, port: int | None) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port is None else f"{name}:{port}"


async def _close_quietly(stream: ByteStream | None) -> None:
    if stream is None:
        return
    with anyio.move_on_after(1.0, shield=True):
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stream.aclose()


def proxy_from_env(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The CONNECT proxy for the tunnel URL from ``HTTPS_PROXY`` / ``ALL_PROXY``, honouring ``NO_PROXY``.

    The link is one long-lived CONNECT tunnel whether the URL is ``ws://`` or ``wss://``,
    so both use ``HTTPS_PROXY`` (lower-case names are honoured too). ``NO_PROXY`` takes
    host names (matching subdomains; a leading dot is optional), ``*``, IP addresses
    and CIDR blocks, each optionally with ``:port``.
    """
    env = os.environ if environ is None else environ
    proxy = next(
        (env[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if env.get(k)),
        None,
    )
    if not proxy:
        return None
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    no_proxy = env.get("NO_PROXY") or env.get("no_proxy") or ""
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return None
        if _no_proxy_match(entry, host, port):
            return None
    return proxy


def _no_proxy_match(entry: str, host: str, port: int) -> bool:
    name, want_port = entry, None
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            want_port = int(rest[1:])
    elif entry.count(":") == 1:
        name, _, port_text = entry.partition(":")
        if port_text.isdigit():
            want_port = int(port_text)
    if want_port is not None and want_port != port:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        try:
            return address in ipaddress.ip_network(name, strict=False)
        except ValueError:
            return False
    name = name.lstrip(".")
    return host == name or host.endswith("." + name)
