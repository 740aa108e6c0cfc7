"""Real origins, a real proxy and a real bridge on 127.0.0.1 for the egress tests (fixtures in conftest)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, SocketStream
from anyio.streams.tls import TLSListener
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from inwall.sandbox.egress.bridge import Bridge
from inwall.sandbox.egress.proxy import EgressEvent, EgressProxy, StaticResolver
from inwall.sandbox.egress.rules import NetworkRules

CRED = "test-cred-5f3a9c"
TLS_NAME = "tls.allowed.test"


def basic(password: str = CRED, user: str = "inwall") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Events:
    """The proxy's on_event callback, with a bounded wait for the n-th event."""

    def __init__(self) -> None:
        self.items: list[EgressEvent] = []
        self._changed = anyio.Event()

    def __call__(self, event: EgressEvent) -> None:
        self.items.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self, n: int = 1) -> list[EgressEvent]:
        with anyio.fail_after(5):
            while len(self.items) < n:
                await self._changed.wait()
        return self.items


@asynccontextmanager
async def running_proxy(
    sock_dir: Path,
    allowed: Sequence[str],
    denied: Sequence[str] = (),
    *,
    names: dict[str, list[str]] | None = None,
    **kw: Any,
) -> AsyncIterator[tuple[EgressProxy, Events]]:
    events = Events()
    rules = NetworkRules.from_settings(list(allowed), list(denied))
    proxy = EgressProxy(
        rules,
        sock_dir / "egress.sock",
        credential=CRED,
        on_event=events,
        resolver=StaticResolver(names or {}),
        connect_timeout_s=5,
        **kw,
    )
    async with proxy:
        yield proxy, events


@dataclass
class Origin:
    """A tiny HTTP/1.1 server on 127.0.0.1 that records each request head and answers with a body."""

    port: int = 0
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0


async def _read_head(stream: SocketStream) -> tuple[bytes, bytes]:
    buf = b""
    with anyio.fail_after(5):
        while b"\r\n\r\n" not in buf:
            buf += await stream.receive()
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


async def _answer(stream: SocketStream, origin: Origin) -> None:
    origin.connections += 1
    async with stream:
        try:
            head, body = await _read_head(stream)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return
        origin.heads.append(head)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        with anyio.fail_after(5):
            while len(body) < length:
                body += await stream.receive()
        payload = b"hello from origin\n" + body
        await stream.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(payload)
            + payload
        )


@asynccontextmanager
async def http_origin(host: str = "127.0.0.1") -> AsyncIterator[Origin]:
    origin = Origin()
    listener = await anyio.create_tcp_listener(local_host=host)
    origin.port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: SocketStream) -> None:
        await _answer(stream, origin)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield origin
        tg.cancel_scope.cancel()


@asynccontextmanager
async def echo_origin() -> AsyncIterator[Origin]:
    """Echo until the client half-closes, then close: shows splicing and half-close both ways."""
    origin = Origin()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    origin.port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: SocketStream) -> None:
        origin.connections += 1
        async with stream:
            try:
                async for chunk in stream:
                    await stream.send(chunk)
            except anyio.BrokenResourceError:
                return

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield origin
        tg.cancel_scope.cancel()


@dataclass
class TlsMaterial:
    cert_pem: Path
    key_pem: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_pem, self.key_pem)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert_pem))


def make_tls_material(out: Path) -> TlsMaterial:
    """A self-signed certificate for TLS_NAME (it is its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(TLS_NAME),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem, key_pem = out / "cert.pem", out / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return TlsMaterial(cert_pem, key_pem)


@asynccontextmanager
async def tls_origin(material: TlsMaterial) -> AsyncIterator[Origin]:
    origin = Origin()
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    origin.port = tcp.extra(anyio.abc.SocketAttribute.local_port)
    listener = TLSListener(tcp, material.server_context(), standard_compatible=False)

    async def handle(stream: Any) -> None:
        await _answer(stream, origin)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield origin
        tg.cancel_scope.cancel()


@asynccontextmanager
async def running_bridge(proxy: EgressProxy) -> AsyncIterator[Bridge]:
    """The in-sandbox bridge, here on ephemeral 127.0.0.1 ports, forwarding to *proxy*."""
    bridge = Bridge([("127.0.0.1", 0), ("127.0.0.1", 0)], str(proxy.socket_path), stack_size=None)
    bridge.start()
    try:
        yield bridge
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(bridge.close)


async def read_all(stream: ByteReceiveStream, limit: int = 1 << 20) -> bytes:
    data = b""
    with anyio.fail_after(5):
        try:
            while len(data) < limit:
                data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    return data
