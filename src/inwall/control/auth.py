"""Who is calling: API keys (admin, user), environment keys, and per-work-item session tokens.

Keys are random 256-bit bearer secrets, so a plain SHA-256 is the right hash:
there is nothing to brute-force, and lookups stay O(1) by hash. Session tokens
are HMAC-signed claims (stateless to verify) that also name the work item they
were minted for; the item must still be live, so a token dies with its lease.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from inwall.errors import AuthError, PermissionDenied
from inwall.ids import new_id, new_secret, now
from inwall.store import schema as s
from inwall.store.db import Database

__all__ = [
    "KEY_PREFIXES",
    "KeyStore",
    "Principal",
    "SessionTokens",
    "hash_key",
]

PrincipalKind = Literal["admin", "user", "environment", "session"]
KEY_PREFIXES = {"admin": "sk-inwall-admin-", "user": "sk-inwall-user-", "environment": "sk-inwall-env-"}
SESSION_TOKEN_PREFIX = "iwst_"  # noqa: S105 - a prefix, not a secret
_CACHE_TTL_S = 5.0


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    key_id: str | None = None
    user_id: str | None = None
    roles: tuple[str, ...] = ()
    environment_id: str | None = None
    session_id: str | None = None
    work_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    @property
    def is_api_key(self) -> bool:
        return self.kind in ("admin", "user")

    def require_api_key(self) -> None:
        if not self.is_api_key:
            raise PermissionDenied("this endpoint requires an API key")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDenied("this endpoint requires the admin key")

    def audit_fields(self) -> dict[str, Any]:
        return {"principal": self.kind, "user_id": self.user_id, "key_id": self.key_id}


class SessionTokens:
    """Mint and verify the ``sessions_token`` carried in a polled work item's ``secret``."""

    def __init__(self, key: bytes, *, ttl_s: float = 24 * 3600) -> None:
        self._key = hashlib.sha256(b"inwall-session-token\x00" + key).digest()
        self._ttl_s = ttl_s

    def mint(self, *, session_id: str, environment_id: str, work_id: str) -> str:
        claims = {
            "sid": session_id,
            "env": environment_id,
            "wid": work_id,
            "exp": int(time.time() + self._ttl_s),
            "jti": new_id("tok"),
        }
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        sig = _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())
        return f"{SESSION_TOKEN_PREFIX}{payload}.{sig}"

    def verify(self, token: str) -> dict[str, Any]:
        body = token.removeprefix(SESSION_TOKEN_PREFIX)
        payload, _, sig = body.partition(".")
        expected = _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())
        if not sig or not hmac.compare_digest(sig, expected):
            raise AuthError("invalid session token")
        try:
            claims: dict[str, Any] = json.loads(_unb64(payload))
        except ValueError as exc:
            raise AuthError("invalid session token") from exc
        if not isinstance(claims.get("exp"), int) or claims["exp"] < time.time():
            raise AuthError("session token expired")
        return claims

    @staticmethod
    def secret_payload(token: str) -> str:
        """The work item's ``secret``: URL-safe base64 JSON, exactly as the SDK worker decodes it."""
        return _b64(json.dumps({"sessions_token": token}).encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class KeyStore:
    """API and environment keys. Plaintext keys are returned once, at creation, and never stored."""

    def __init__(self, db: Database, tokens: SessionTokens) -> None:
        self._db = db
        self._tokens = tokens
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def create(
        self,
        kind: Literal["admin", "user", "environment"],
        *,
        user_id: str | None = None,
        environment_id: str | None = None,
        plaintext: str | None = None,
    ) -> tuple[str, str]:
        """Create a key; returns (key_id, plaintext)."""
        key = plaintext or new_secret(KEY_PREFIXES[kind])
        key_id = new_id("key")
        async with self._db.write() as conn:
            await conn.execute(
                s.api_keys.insert().values(
                    id=key_id,
                    kind=kind,
                    key_hash=hash_key(key),
                    hint=key[-4:],
                    user_id=user_id,
                    environment_id=environment_id,
                    created_at=now(),
                )
            )
        return key_id, key

    async def exists(self, plaintext: str) -> bool:
        async with self._db.read() as conn:
            row = await conn.execute(
                sa.select(s.api_keys.c.id).where(s.api_keys.c.key_hash == hash_key(plaintext))
            )
            return row.first() is not None

    async def count(self, kind: str) -> int:
        async with self._db.read() as conn:
            q = sa.select(sa.func.count()).select_from(s.api_keys).where(s.api_keys.c.kind == kind)
            return int((await conn.execute(q)).scalar_one())

    async def revoke_for_user(self, user_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                s.api_keys.update()
                .where(s.api_keys.c.user_id == user_id, s.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now())
            )
        self._cache.clear()

    async def authenticate(self, credential: str | None) -> Principal:
        if not credential:
            raise AuthError("missing credential: send `Authorization: Bearer <key>` or `x-api-key: <key>`")
        if credential.startswith(SESSION_TOKEN_PREFIX):
            return await self._session_principal(credential)
        digest = hash_key(credential)
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        async with self._db.read() as conn:
            q = (
                sa.select(s.api_keys, s.users.c.roles, s.users.c.disabled_at.label("user_disabled_at"))
                .select_from(s.api_keys.outerjoin(s.users, s.users.c.id == s.api_keys.c.user_id))
                .where(s.api_keys.c.key_hash == digest)
            )
            row = (await conn.execute(q)).mappings().first()
        if row is None or row["revoked_at"] is not None or row["user_disabled_at"] is not None:
            raise AuthError("invalid API key")
        principal = Principal(
            kind=row["kind"],
            key_id=row["id"],
            user_id=row["user_id"],
            roles=tuple(row["roles"] or ()),
            environment_id=row["environment_id"],
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + _CACHE_TTL_S, principal)
        return principal

    async def _session_principal(self, token: str) -> Principal:
        claims = self._tokens.verify(token)
        async with self._db.read() as conn:
            q = sa.select(s.work_items.c.state, s.work_items.c.session_id).where(
                s.work_items.c.id == claims["wid"]
            )
            row = (await conn.execute(q)).first()
        if row is None or row.state == "stopped" or row.session_id != claims["sid"]:
            raise AuthError("session token is no longer valid: its work item has stopped")
        # Not cached: the token must die the moment its work item stops.
        return Principal(
            kind="session",
            environment_id=claims["env"],
            session_id=claims["sid"],
            work_id=claims["wid"],
            claims=claims,
        )

    def forget_cache(self) -> None:
        self._cache.clear()
