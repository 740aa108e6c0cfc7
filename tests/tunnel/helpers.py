"""Helpers for the tunnel tests: a throwaway PKI, an in-memory TunnelDirectory, real servers.

Everything listens on 127.0.0.1 only. uvicorn's readiness is an event (``startup``
overridden), never a poll.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from inwall.errors import InwallError
from inwall.tunnel import TunnelAuth, TunnelConnector, TunnelEdge, gateway_server_context

DOMAIN = "t1.tunnels.test"
TOKEN = "tok-secret-7f3a9c1d2e"
TUNNEL_ID = "tnl_test1"


# ---- PKI ----------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[str],
    ips: list[str] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names]
                + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips or []]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class PKI:
    ca_pem: str
    other_ca_pem: str
    good_cert: Path
    good_key: Path
    rogue_cert: Path
    rogue_key: Path
    wrong_name_cert: Path
    wrong_name_key: Path
    outer_ca_pem: str
    outer_cert: Path
    outer_key: Path

    def server_ssl(self) -> ssl.SSLContext:
        return gateway_server_context(str(self.good_cert), str(self.good_key))

    def rogue_ssl(self) -> ssl.SSLContext:
        """Signed by a CA the tunnel never registered."""
        return gateway_server_context(str(self.rogue_cert), str(self.rogue_key))

    def wrong_name_ssl(self) -> ssl.SSLContext:
        """Signed by the right CA, for another domain."""
        return gateway_server_context(str(self.wrong_name_cert), str(self.wrong_name_key))


def _write_pair(
    directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> tuple[Path, Path]:
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_text(_pem(cert))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def make_pki(directory: Path) -> PKI:
    ca_key, ca = make_ca("tunnel owner CA")
    other_key, other = make_ca("somebody else's CA")
    good = _write_pair(directory, "good", *make_leaf(ca_key, ca, [DOMAIN, f"*.{DOMAIN}"]))
    rogue = _write_pair(directory, "rogue", *make_leaf(other_key, other, [DOMAIN, f"*.{DOMAIN}"]))
    wrong = _write_pair(directory, "wrong", *make_leaf(ca_key, ca, ["other.tunnels.test"]))
    # The outer TLS (wss://) is the server's ordinary web certificate, from an unrelated CA.
    web_key, web_ca = make_ca("public web CA")
    outer = _write_pair(directory, "outer", *make_leaf(web_key, web_ca, ["localhost"], ["127.0.0.1"]))
    return PKI(_pem(ca), _pem(other), *good, *rogue, *wrong, _pem(web_ca), *outer)


# ---- the directory twin ---------------------------------------------------------------------


@dataclass
class FakeDirectory:
    """A real, in-memory TunnelDirectory: tokens, CA sets and domains, like the lead's DB."""

    tokens: dict[str, TunnelAuth] = field(default_factory=dict)
    cas: dict[str, list[str]] = field(default_factory=dict)
    tunnels: dict[str, TunnelAuth] = field(default_factory=dict)
    seen_tokens: list[str] = field(default_factory=list)

    def add_tunnel(
        self, tunnel_id: str, domain: str, token: str, token_id: str, cas: list[str]
    ) -> TunnelAuth:
        auth = TunnelAuth(tunnel_id=tunnel_id, domain=domain, token_id=token_id)
        self.tokens[token] = auth
        self.cas[tunnel_id] = list(cas)
        self.tunnels[tunnel_id] = auth
        return auth

    def rotate(self, old_token: str, new_token: str, new_token_id: str) -> TunnelAuth:
        old = self.tokens.pop(old_token)
        auth = TunnelAuth(tunnel_id=old.tunnel_id, domain=old.domain, token_id=new_token_id)
        self.tokens[new_token] = auth
        return auth

    async def authenticate(self, token: str) -> TunnelAuth | None:
        self.seen_tokens.append(token)
        return self.tokens.get(token)

    async def trusted_ca_pems(self, tunnel_id: str) -> list[str]:
        return list(self.cas.get(tunnel_id, []))

    async def tunnel_for_host(self, host: str) -> TunnelAuth | None:
        for auth in self.tunnels.values():
            if host == auth.domain or host.endswith("." + auth.domain):
                return auth
        return None


# ---- real servers ---------------------------------------------------------------------------


class ReadyServer(uvicorn.Server):
    """uvicorn with a readiness event instead of a polled flag."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@asynccontextmanager
async def serve_asgi(app: Any, *, ws: str = "wsproto", **config: Any) -> AsyncIterator[int]:
    """Serve ``app`` with uvicorn on 127.0.0.1; yields the port."""
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every response pays a 40 ms delayed-ACK stall.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {
        "log_level": "warning",
        "lifespan": "on",
        "ws": ws,
        "timeout_graceful_shutdown": 2,
    }
    options.update(config)
    server = ReadyServer(uvicorn.Config(app, **options))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                await server.ready.wait()
            try:
                yield port
            finally:
                server.should_exit = True
    finally:
        sock.close()


def edge_app(edge: TunnelEdge) -> Starlette:
    return Starlette(routes=[WebSocketRoute("/v1/tunnels/connect", edge.websocket_endpoint)])


@asynccontextmanager
async def running_edge(
    edge: TunnelEdge, *, ws: str = "wsproto", tls: PKI | None = None
) -> AsyncIterator[str]:
    """The edge under real uvicorn, with ``edge.run`` in the same task group; yields the URL
    (``wss://`` with the outer web certificate when ``tls`` is given)."""
    extra: dict[str, Any] = {}
    if tls is not None:
        extra = {"ssl_certfile": str(tls.outer_cert), "ssl_keyfile": str(tls.outer_key)}
    async with anyio.create_task_group() as tg:
        await tg.start(edge.run)
        try:
            async with serve_asgi(edge_app(edge), ws=ws, ws_max_size=2 * 1024 * 1024, **extra) as port:
                scheme = "wss" if tls is not None else "ws"
                yield f"{scheme}://127.0.0.1:{port}/v1/tunnels/connect"
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def running_connector(connector: TunnelConnector) -> AsyncIterator[TunnelConnector]:
    """Start ``connector`` (returns once it carries traffic), stop it on exit.

    Once up, the link ending (the edge closing it, revocation) is the test's business,
    recorded in ``connector.outcome``; failing to come up raises.
    """
    connector.outcome = None  # type: ignore[attr-defined]

    async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        started = False

        def up(value: None = None) -> None:
            nonlocal started
            started = True
            task_status.started()

        try:
            await connector.run(task_status=_Status(up))
        except InwallError as exc:
            if not started:
                raise
            connector.outcome = exc  # type: ignore[attr-defined]

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            await tg.start(run)
        try:
            yield connector
        finally:
            tg.cancel_scope.cancel()


class _Status:
    def __init__(self, callback: Callable[[None], None]) -> None:
        self._callback = callback

    def started(self, value: None = None) -> None:
        self._callback(value)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


AppFactory = Callable[..., Any]


# ---- a small ASGI app that exercises streaming both ways -------------------------------------


class ProbeApp:
    """The gateway-side app the transport tests talk to (pure ASGI, no framework buffering)."""

    def __init__(self, name: str = "gw") -> None:
        self.name = name
        self.sse_gate = anyio.Event()
        self.sse_sent: list[int] = []
        self.release = anyio.Event()
        self.in_flight = 0
        self.all_in = anyio.Event()
        self.expect_in_flight = 0
        self.first_chunk = anyio.Event()
        self.disconnected = anyio.Event()
        self.sent_bytes = 0
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.seen.append(scope)
        path = scope["path"]
        handler = getattr(self, "do_" + path.strip("/").replace("-", "_"), None)
        if handler is None:
            await _respond(send, 404, b"no such probe")
            return
        await handler(scope, receive, send)

    async def do_echo(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await _read_body(receive)
        headers = dict(scope["headers"])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"x-host", headers.get(b"host", b"")),
                    (b"x-path", scope["raw_path"]),
                    (b"x-query", scope["query_string"]),
                    (b"x-gateway", self.name.encode()),
                    (b"connection", b"keep-alive"),  # hop-by-hop: must not cross HTTP/2
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def do_big(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        size = int(scope["query_string"].decode().partition("=")[2])
        await _read_body(receive)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % size)]}
        )
        view = memoryview(pattern(size))
        for i in range(0, size, 64 * 1024):
            await send(
                {"type": "http.response.body", "body": bytes(view[i : i + 64 * 1024]), "more_body": True}
            )
            self.sent_bytes += min(64 * 1024, size - i)
        await send({"type": "http.response.body", "body": b""})

    async def do_upload(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        digest = hashlib.sha256()
        total = 0
        while True:
            message = await receive()
            body = message.get("body", b"")
            if body and not self.first_chunk.is_set():
                self.first_chunk.set()
            digest.update(body)
            total += len(body)
            if not message.get("more_body"):
                break
        await _respond(send, 200, f"{total} {digest.hexdigest()}".encode())

    async def do_sse(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _read_body(receive)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"event: message\ndata: one\n\n", "more_body": True}
        )
        self.sse_sent.append(1)
        with anyio.fail_after(5):
            await self.sse_gate.wait()
        self.sse_sent.append(2)
        await send(
            {"type": "http.response.body", "body": b"event: message\ndata: two\n\n", "more_body": False}
        )

    async def do_hold(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Respond only once ``expect_in_flight`` requests are inside (proves concurrency)."""
        body = await _read_body(receive)
        self.in_flight += 1
        if self.in_flight >= self.expect_in_flight:
            self.all_in.set()
        with anyio.fail_after(10):
            await self.all_in.wait()
        await _respond(send, 200, body)

    async def do_slow(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _read_body(receive)
        self.in_flight += 1
        if self.in_flight >= self.expect_in_flight:
            self.all_in.set()
        with anyio.fail_after(10):
            await self.release.wait()
        await _respond(send, 200, self.name.encode())

    async def do_endless(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Stream until the client goes away; record that the app saw the disconnect."""
        await _read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})

        async def watch() -> None:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            while True:
                await send({"type": "http.response.body", "body": b"z" * 65536, "more_body": True})
                self.sent_bytes += 65536

    async def do_boom(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("the app failed")


def pattern(size: int) -> bytes:
    block = hashlib.sha256(b"inwall").digest() * 2048  # 64 KiB, not compressible by accident
    return (block * (size // len(block) + 1))[:size]


async def _read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    await send({"type": "http.response.body", "body": body})


# ---- TCP middlemen: a freezable forwarder and an HTTP CONNECT proxy --------------------------


class Forwarder:
    """Relays TCP to ``target``; ``freeze()`` stops relaying without closing (a dead path)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.connections = 0

    async def handle(self, client: Any) -> None:
        self.connections += 1
        async with (
            client,
            await anyio.connect_tcp("127.0.0.1", self.target_port) as upstream,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(self._pump, client, upstream, tg)
            tg.start_soon(self._pump, upstream, client, tg)

    async def _pump(self, src: Any, dst: Any, tg: Any) -> None:
        try:
            async for chunk in src:
                if self.frozen:
                    await anyio.sleep_forever()
                await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        tg.cancel_scope.cancel()


class ConnectProxy:
    """A minimal HTTP CONNECT proxy; records each request head, optional Basic auth."""

    def __init__(self, *, require_auth: bytes | None = None) -> None:
        self.require_auth = require_auth
        self.requests: list[bytes] = []

    async def handle(self, client: Any) -> None:
        async with client:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await client.receive()
            self.requests.append(head)
            line = head.split(b"\r\n", 1)[0].split(b" ")
            if (
                self.require_auth is not None
                and b"proxy-authorization: basic " + self.require_auth.lower() not in head.lower()
            ):
                await client.send(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
            if line[0] != b"CONNECT":
                await client.send(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            host, _, port = line[1].rpartition(b":")
            async with await anyio.connect_tcp(host.decode(), int(port)) as upstream:
                await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_relay, client, upstream, tg)
                    tg.start_soon(_relay, upstream, client, tg)


async def _relay(src: Any, dst: Any, tg: Any) -> None:
    try:
        async for chunk in src:
            await dst.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    tg.cancel_scope.cancel()


@asynccontextmanager
async def tcp_server(handler: Callable[[Any], Any]) -> AsyncIterator[int]:
    """A raw TCP server on 127.0.0.1 serving ``handler``; yields the port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


# ---- a minimal reverse proxy: what the gateway does, without the policy ----------------------

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te", b"trailer"}
)


class ReverseProxy:
    """Streams each request to ``upstream`` and the response back, both ways as data arrives."""

    def __init__(self, upstream: str) -> None:
        import httpx2

        self.upstream = upstream
        self.client = httpx2.AsyncClient(
            base_url=upstream,
            timeout=httpx2.Timeout(30, read=300),
            limits=httpx2.Limits(max_connections=500, max_keepalive_connections=100),
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return

        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP and k != b"host"]
        target = scope["raw_path"].decode() + (
            ("?" + scope["query_string"].decode()) if scope["query_string"] else ""
        )
        has_body = any(k == b"content-length" for k, _ in headers) or scope["method"] in (
            "POST",
            "PUT",
            "PATCH",
        )
        request = self.client.build_request(
            scope["method"], target, headers=headers, content=body() if has_body else None
        )
        response = await self.client.send(request, stream=True)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()
