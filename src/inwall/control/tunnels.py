"""Tunnels: a globally unique domain, a connector token, and the CAs that sign the gateway's inner TLS.

The token is a bearer credential for opening gateway connections. It is kept
sealed (AES-GCM under a key derived from the server key) because
``reveal_token`` must return it; authentication compares its SHA-256, so a
rotated token stops opening connections the moment the row changes.
"""

from __future__ import annotations

import builtins
import hashlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.ext.asyncio import AsyncConnection

from inwall.control.pages import list_newest_first
from inwall.control.timefmt import ts
from inwall.errors import Conflict, InvalidInput, NotFound
from inwall.ids import new_id, new_secret, now
from inwall.store import schema as s
from inwall.store.db import Database
from inwall.tunnel.edge import TunnelAuth

__all__ = ["TunnelService"]

MAX_PEM_BYTES = 8 * 1024
MAX_ACTIVE_CERTIFICATES = 2
TOKEN_PREFIX = "iwtt_"  # noqa: S105 - a prefix, not a secret


def _render(row: Any) -> dict[str, Any]:
    return {
        "type": "tunnel",
        "id": row["id"],
        "domain": row["domain"],
        "display_name": row["display_name"],
        "created_at": ts(row["created_at"]),
        "archived_at": ts(row["archived_at"]),
    }


def _render_cert(row: Any) -> dict[str, Any]:
    return {
        "type": "tunnel_certificate",
        "id": row["id"],
        "tunnel_id": row["tunnel_id"],
        "fingerprint": row["fingerprint"],
        "created_at": ts(row["created_at"]),
        "expires_at": ts(row["expires_at"]),
        "archived_at": ts(row["archived_at"]),
    }


class TunnelService:
    """The tunnels REST API's domain logic, and the directory the tunnel edge consults.

    ``on_revoke(tunnel_id, token_id, grace_s)`` closes connections opened with a rotated token
    after the grace period; ``on_archive(tunnel_id, reason)`` closes every connection of the tunnel, after
    the tunnel or one of its CA certificates was archived.
    """

    def __init__(
        self,
        db: Database,
        server_key: bytes,
        *,
        domain_suffix: str,
        on_revoke: Callable[[str, str, float], Awaitable[None]] | None = None,
        on_archive: Callable[[str, str], Awaitable[None]] | None = None,
        rotation_grace_s: float = 60.0,
    ) -> None:
        self._db = db
        self._aead = AESGCM(
            HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"inwall-tunnel-token").derive(
                server_key
            )
        )
        self.domain_suffix = domain_suffix.lower().strip(".")
        self.on_revoke = on_revoke
        self.on_archive = on_archive
        self.rotation_grace_s = rotation_grace_s

    # -- tokens ------------------------------------------------------------------------

    def _seal(self, token: str, tunnel_id: str) -> str:
        nonce = os.urandom(12)
        return (nonce + self._aead.encrypt(nonce, token.encode(), tunnel_id.encode())).hex()

    def _unseal(self, sealed: str, tunnel_id: str) -> str:
        raw = bytes.fromhex(sealed)
        return self._aead.decrypt(raw[:12], raw[12:], tunnel_id.encode()).decode()

    @staticmethod
    def _hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    # -- tunnels -------------------------------------------------------------------------

    async def create(self, display_name: str | None) -> dict[str, Any]:
        tunnel_id = new_id("tnl")
        token = new_secret(TOKEN_PREFIX)
        domain = f"{tunnel_id.split('_', 1)[1]}.{self.domain_suffix}"
        async with self._db.write() as conn:
            await conn.execute(
                s.tunnels.insert().values(
                    id=tunnel_id,
                    domain=domain,
                    display_name=display_name,
                    token_id=new_id("ttok"),
                    token_sealed=self._seal(token, tunnel_id),
                    token_hash=self._hash(token),
                    created_at=now(),
                )
            )
            return _render(await self._row(conn, tunnel_id))

    async def _row(self, conn: AsyncConnection, tunnel_id: str) -> Any:
        row = (await conn.execute(sa.select(s.tunnels).where(s.tunnels.c.id == tunnel_id))).mappings().first()
        if row is None:
            raise NotFound(f"tunnel {tunnel_id} not found")
        return row

    async def get(self, tunnel_id: str) -> dict[str, Any]:
        async with self._db.read() as conn:
            return _render(await self._row(conn, tunnel_id))

    async def list(
        self, *, limit: int | None, page_cursor: str | None, include_archived: bool
    ) -> dict[str, Any]:
        async with self._db.read() as conn:
            return await list_newest_first(
                conn,
                s.tunnels,
                _render,
                limit=limit,
                page_cursor=page_cursor,
                include_archived=include_archived,
            )

    async def archive(self, tunnel_id: str) -> dict[str, Any]:
        async with self._db.write() as conn:
            row = await self._row(conn, tunnel_id)
            already = row["archived_at"] is not None
            if not already:
                at = now()
                await conn.execute(
                    s.tunnels.update().where(s.tunnels.c.id == tunnel_id).values(archived_at=at)
                )
                await conn.execute(
                    s.tunnel_certificates.update()
                    .where(
                        s.tunnel_certificates.c.tunnel_id == tunnel_id,
                        s.tunnel_certificates.c.archived_at.is_(None),
                    )
                    .values(archived_at=at)
                )
            result = _render(await self._row(conn, tunnel_id))
        if not already and self.on_archive is not None:
            await self.on_archive(tunnel_id, "tunnel archived")
        return result

    async def reveal_token(self, tunnel_id: str) -> dict[str, Any]:
        async with self._db.read() as conn:
            row = await self._row(conn, tunnel_id)
        if row["archived_at"] is not None:
            raise InvalidInput(f"tunnel {tunnel_id} is archived; its token was invalidated")
        return {
            "type": "tunnel_token",
            "id": row["token_id"],
            "tunnel_token": self._unseal(row["token_sealed"], tunnel_id),
        }

    async def rotate_token(self, tunnel_id: str, reason: str | None) -> dict[str, Any]:
        token = new_secret(TOKEN_PREFIX)
        token_id = new_id("ttok")
        async with self._db.write() as conn:
            row = await self._row(conn, tunnel_id)
            if row["archived_at"] is not None:
                raise InvalidInput(f"tunnel {tunnel_id} is archived")
            await conn.execute(
                s.tunnels.update()
                .where(s.tunnels.c.id == tunnel_id)
                .values(
                    token_id=token_id, token_sealed=self._seal(token, tunnel_id), token_hash=self._hash(token)
                )
            )
        if self.on_revoke is not None:
            await self.on_revoke(tunnel_id, row["token_id"], self.rotation_grace_s)
        return {"type": "tunnel_token", "id": token_id, "tunnel_token": token}

    # -- certificates ------------------------------------------------------------------------

    async def add_certificate(self, tunnel_id: str, pem: str) -> dict[str, Any]:
        cert = _parse_ca(pem)
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        async with self._db.write() as conn:
            row = await self._row(conn, tunnel_id)
            if row["archived_at"] is not None:
                raise InvalidInput(f"tunnel {tunnel_id} is archived")
            active = (
                await conn.execute(
                    sa.select(s.tunnel_certificates.c.fingerprint).where(
                        s.tunnel_certificates.c.tunnel_id == tunnel_id,
                        s.tunnel_certificates.c.archived_at.is_(None),
                    )
                )
            ).all()
            if any(r.fingerprint == fingerprint for r in active):
                raise Conflict("this certificate is already registered on the tunnel")
            if len(active) >= MAX_ACTIVE_CERTIFICATES:
                raise Conflict(
                    f"a tunnel holds at most {MAX_ACTIVE_CERTIFICATES} active certificates; archive one first"
                )
            cert_id = new_id("tcrt")
            await conn.execute(
                s.tunnel_certificates.insert().values(
                    id=cert_id,
                    tunnel_id=tunnel_id,
                    pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                    fingerprint=fingerprint,
                    expires_at=cert.not_valid_after_utc,
                    created_at=now(),
                )
            )
            return await self._cert(conn, tunnel_id, cert_id)

    async def _cert(self, conn: AsyncConnection, tunnel_id: str, cert_id: str) -> dict[str, Any]:
        row = (
            (
                await conn.execute(
                    sa.select(s.tunnel_certificates).where(
                        s.tunnel_certificates.c.id == cert_id, s.tunnel_certificates.c.tunnel_id == tunnel_id
                    )
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"certificate {cert_id} not found on tunnel {tunnel_id}")
        return _render_cert(row)

    async def get_certificate(self, tunnel_id: str, cert_id: str) -> dict[str, Any]:
        async with self._db.read() as conn:
            await self._row(conn, tunnel_id)
            return await self._cert(conn, tunnel_id, cert_id)

    async def archive_certificate(self, tunnel_id: str, cert_id: str) -> dict[str, Any]:
        """Stop trusting a CA; connections verified against it are closed, not left running.

        The edge does not know which CA verified each connection, so every connection of the
        tunnel is closed (``on_archive``, as for an archived tunnel) once the row is committed;
        gateways whose certificates chain to a CA still registered reconnect at once.
        """
        async with self._db.write() as conn:
            await self._row(conn, tunnel_id)
            current = await self._cert(conn, tunnel_id, cert_id)
            already = current["archived_at"] is not None
            if not already:
                await conn.execute(
                    s.tunnel_certificates.update()
                    .where(s.tunnel_certificates.c.id == cert_id)
                    .values(archived_at=now())
                )
            result = await self._cert(conn, tunnel_id, cert_id)
        if not already and self.on_archive is not None:
            await self.on_archive(tunnel_id, "its CA certificate was archived")
        return result

    async def list_certificates(
        self, tunnel_id: str, *, limit: int | None, page_cursor: str | None, include_archived: bool
    ) -> dict[str, Any]:
        async with self._db.read() as conn:
            await self._row(conn, tunnel_id)
            return await list_newest_first(
                conn,
                s.tunnel_certificates,
                _render_cert,
                limit=limit,
                page_cursor=page_cursor,
                include_archived=include_archived,
                where=[s.tunnel_certificates.c.tunnel_id == tunnel_id],
            )

    # -- the edge's TunnelDirectory ---------------------------------------------------------------

    async def authenticate(self, token: str) -> TunnelAuth | None:
        async with self._db.read() as conn:
            row = (
                (await conn.execute(sa.select(s.tunnels).where(s.tunnels.c.token_hash == self._hash(token))))
                .mappings()
                .first()
            )
        if row is None or row["archived_at"] is not None:
            return None
        return TunnelAuth(tunnel_id=row["id"], domain=row["domain"], token_id=row["token_id"])

    async def trusted_ca_pems(self, tunnel_id: str) -> builtins.list[str]:
        async with self._db.read() as conn:
            rows = await conn.execute(
                sa.select(s.tunnel_certificates.c.pem).where(
                    s.tunnel_certificates.c.tunnel_id == tunnel_id,
                    s.tunnel_certificates.c.archived_at.is_(None),
                )
            )
            return [r.pem for r in rows]

    async def tunnel_for_host(self, host: str) -> TunnelAuth | None:
        domain = self.domain_for_host(host)
        if domain is None:
            return None
        async with self._db.read() as conn:
            row = (
                (await conn.execute(sa.select(s.tunnels).where(s.tunnels.c.domain == domain)))
                .mappings()
                .first()
            )
        if row is None:
            return None
        return TunnelAuth(tunnel_id=row["id"], domain=row["domain"], token_id=row["token_id"])

    def domain_for_host(self, host: str) -> str | None:
        """``crm.<label>.<suffix>`` → ``<label>.<suffix>``; None for hosts under no tunnel."""
        host = host.lower().rstrip(".")
        tail = "." + self.domain_suffix
        if not host.endswith(tail):
            return None
        labels = host[: -len(tail)].split(".")
        if not labels or not labels[-1]:
            return None
        return f"{labels[-1]}{tail}"

    def is_tunnel_host(self, host: str) -> bool:
        return self.domain_for_host(host) is not None

    def tunnel_id_for_url(self, url: str) -> str:
        """The id of the tunnel a URL goes through ("" for a direct URL); domains embed the id."""
        from urllib.parse import urlsplit

        domain = self.domain_for_host(urlsplit(url).hostname or "")
        if domain is None:
            return ""
        return "tnl_" + domain.split(".", 1)[0]


def _parse_ca(pem: str) -> x509.Certificate:
    if len(pem.encode()) > MAX_PEM_BYTES:
        raise InvalidInput(f"ca_certificate_pem exceeds {MAX_PEM_BYTES} bytes")
    if "PRIVATE KEY" in pem:
        raise InvalidInput("ca_certificate_pem must not contain private-key material")
    blocks = pem.count("-----BEGIN CERTIFICATE-----")
    if blocks != 1:
        raise InvalidInput(f"ca_certificate_pem must contain exactly one certificate (found {blocks})")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise InvalidInput(f"ca_certificate_pem is not a valid PEM certificate: {exc}") from exc
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise InvalidInput("ca_certificate_pem must be a CA certificate (basicConstraints CA:TRUE)")
    return cert
