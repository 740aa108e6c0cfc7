"""Governance test helpers: a tiny OIDC provider (discovery + JWKS) on 127.0.0.1, and its keys."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import jwt
import pytest
from anyio.abc import ByteStream, TaskStatus
from cryptography.hazmat.primitives.asymmetric import ec, rsa


@dataclass
class Provider:
    """Serves ``/.well-known/openid-configuration`` and ``/jwks``; records every path it served."""

    issuer: str = ""
    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    discovery_issuer: str | None = None  # set to lie about the issuer
    status: int = 200
    requests: list[str] = field(default_factory=list)

    def add_key(self, public_key: Any, *, kid: str, alg: str | None = None) -> None:
        if isinstance(public_key, rsa.RSAPublicKey):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True)
        else:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True)
        jwk.update({"kid": kid, "use": "sig"})
        if alg:
            jwk["alg"] = alg
        self.jwks["keys"].append(jwk)

    def count(self, path: str) -> int:
        return self.requests.count(path)

    async def serve(self, *, task_status: TaskStatus[Provider]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self.issuer = f"http://127.0.0.1:{port}"
        async with listener:
            task_status.started(self)
            await listener.serve(self._handle)

    async def _handle(self, stream: ByteStream) -> None:
        async with stream:
            data = b""
            with anyio.fail_after(5):
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    data += await stream.receive()
            path = data.split(b" ", 2)[1].decode()
            self.requests.append(path)
            if path == "/.well-known/openid-configuration":
                document: Any = {
                    "issuer": self.discovery_issuer or self.issuer,
                    "jwks_uri": f"{self.issuer}/jwks",
                }
                status = self.status
            elif path == "/jwks":
                document, status = self.jwks, self.status
            else:
                document, status = {"error": "not found"}, 404
            body = json.dumps(document).encode()
            head = (
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            await stream.send(head.encode() + body)


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    async with anyio.create_task_group() as tg:
        server: Provider = await tg.start(Provider().serve)
        yield server
        tg.cancel_scope.cancel()


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())
