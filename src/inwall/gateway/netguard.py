"""The upstream SSRF guard: ``allowed_ips`` is checked after DNS, and the socket goes to the checked address.

Checking a hostname and then letting the HTTP client resolve it again would
leave a window for DNS rebinding (the second answer can differ). So the guard
is the HTTP client's network backend: it resolves once, keeps only addresses
inside ``allowed_ips``, and connects to one of those literal addresses. TLS
still verifies the certificate against the route's hostname (httpcore passes
the origin host as SNI).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import httpcore2
import httpx2

from inwall.errors import PermissionDenied

__all__ = ["ForbiddenUpstream", "GuardedBackend", "GuardedTransport", "Resolver", "address_allowed"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


class ForbiddenUpstream(PermissionDenied):
    """Every address the upstream host resolved to is outside ``allowed_ips``."""


def address_allowed(address: str, allowed: Sequence[IPNetwork]) -> bool:
    """An IPv4-mapped IPv6 address is judged as the IPv4 address it reaches; 0.0.0.0 and :: never pass."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return False
    return any(ip.version == net.version and ip in net for net in allowed)


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore network backend that only ever connects to an allowed, already-resolved address."""

    def __init__(self, allowed: Sequence[IPNetwork], *, resolver: Resolver | None = None) -> None:
        self._allowed = tuple(allowed)
        self._resolve = resolver or system_resolver
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore2.ConnectError(f"cannot resolve {host}: {exc}") from exc
        permitted = [a for a in addresses if address_allowed(a, self._allowed)]
        if not permitted:
            shown = ", ".join(addresses) or "no address"
            raise ForbiddenUpstream(f"upstream {host} resolved to {shown}, outside the gateway's allowed_ips")
        last: Exception | None = None
        for address in permitted:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise ForbiddenUpstream("unix sockets are not upstreams")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


_ERRORS: list[tuple[type[Exception], type[httpx2.TransportError]]] = [
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
]


@contextmanager
def _translate() -> Iterator[None]:
    """httpcore errors become the httpx2 errors callers of an httpx2 transport expect."""
    try:
        yield
    except Exception as exc:
        for core, mapped in _ERRORS:
            if isinstance(exc, core):
                raise mapped(str(exc)) from exc
        raise


class _Body(httpx2.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _translate():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()


class GuardedTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport (HTTP/1.1, no proxy, no env) whose every connection passes the guard."""

    def __init__(
        self,
        allowed: Sequence[IPNetwork],
        *,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver | None = None,
        max_connections: int = 100,
    ) -> None:
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(),
            max_connections=max_connections,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            http1=True,
            http2=False,
            network_backend=GuardedBackend(allowed, resolver=resolver),
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        assert isinstance(request.stream, httpx2.AsyncByteStream)
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _translate():
            response = await self._pool.handle_async_request(core_request)
        return httpx2.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
