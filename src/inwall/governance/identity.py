"""Caller identity tokens: the control plane says who is calling, the perimeter checks it.

Per tool call the control plane mints a short-lived JWT (EdDSA over Ed25519)
naming the caller, the tool and a digest of the input. The worker and the
gateway hold only the public key, so a compromised perimeter cannot mint, and
they can run their own :class:`~inwall.governance.policy.PolicyEngine` on the
identity the token carries — the perimeter's rules then hold even if the
control plane is misconfigured.

What a verifier refuses, each with an :class:`IdentityError` reason: any
algorithm but EdDSA (``none``, ``HS256`` keyed with the public key, RS/ES —
``bad_algorithm``), a signature by another key (``bad_signature``), another
issuer, another audience, a token outside ``nbf``/``exp`` (with leeway), a
lifetime over ``max_lifetime_s``, a tool or input digest other than the one
being called, and a ``jti`` already seen while that token could still be
valid (``replayed``). The replay memory is bounded; when it is full of live
tokens the verifier refuses rather than forgets (``replay_cache_full``).

``jti`` is the tool_use id, so one tool use is admitted once per verifier:
mint a new token (and a new tool_use id) for a retried call. Tokens are
bearer credentials for one call: never log them.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from inwall.audit import canonical_json
from inwall.errors import ConfigError, InvalidInput, InwallError
from inwall.governance.errors import IdentityError
from inwall.governance.jwtcheck import decode_signed
from inwall.governance.model import Identity

__all__ = [
    "ISSUER",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "TOKEN_TYPE",
    "IdentityIssuer",
    "IdentityKeys",
    "IdentityVerifier",
    "VerifiedIdentity",
    "identity_from_payload",
    "input_digest",
    "key_id",
]

ISSUER: Final = "inwall-control-plane"
TOKEN_TYPE: Final = "inwall-identity+jwt"  # noqa: S105 - a JWT "typ" value, not a secret
PRIVATE_KEY_FILE: Final = "identity_ed25519.pem"
PUBLIC_KEY_FILE: Final = "identity_ed25519.pub.pem"
_ALGORITHM: Final = "EdDSA"
_MAX_TOKEN_BYTES: Final = 64 * 1024
_REQUIRED: Final = ("iss", "sub", "aud", "iat", "nbf", "exp", "jti")


def input_digest(input: Mapping[str, Any]) -> str:
    """SHA-256 of the input's canonical JSON, so both sides hash the same bytes."""
    try:
        return hashlib.sha256(canonical_json(input)).hexdigest()
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"tool input is not JSON: {exc}") from exc


def key_id(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint, so a verifier can tell which key signed before it tries."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    members = {"crv": "Ed25519", "kty": "OKP", "x": x}
    return base64.urlsafe_b64encode(hashlib.sha256(canonical_json(members)).digest()).rstrip(b"=").decode()


def _load_private(data: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"identity private key is not a readable PEM key: {type(exc).__name__}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("identity private key must be Ed25519")
    return key


def _load_public(data: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"identity public key is not a readable PEM key: {type(exc).__name__}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("identity public key must be Ed25519")
    return key


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class IdentityKeys:
    """The control plane's signing key pair, kept as two PEM files in one directory."""

    private_key: Ed25519PrivateKey
    public_key: Ed25519PublicKey

    @property
    def public_pem(self) -> bytes:
        """What to hand the worker and the gateway."""
        return _public_pem(self.public_key)

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str]) -> IdentityKeys:
        """Load ``identity_ed25519.pem`` (0600) or create it, and (re)write its public half.

        A private key file that group or others can read is refused, as ssh
        refuses one: the key mints identities for every user.
        """
        root = Path(directory)
        private_path = root / PRIVATE_KEY_FILE
        public_path = root / PUBLIC_KEY_FILE
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                mode = private_path.stat().st_mode
                if mode & 0o077:
                    raise ConfigError(
                        f"{private_path} is readable by group or others (mode {mode & 0o777:o}); chmod 600 it"
                    ) from None
                private = _load_private(private_path.read_bytes())
            else:
                private = Ed25519PrivateKey.generate()
                pem = private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                with os.fdopen(fd, "wb") as fh:
                    fh.write(pem)
                    fh.flush()
                    os.fsync(fh.fileno())
            public = private.public_key()
            pem_public = _public_pem(public)
            if not public_path.exists() or public_path.read_bytes() != pem_public:
                tmp = public_path.with_suffix(".tmp")
                tmp.write_bytes(pem_public)
                tmp.chmod(0o644)
                tmp.replace(public_path)
        except InwallError:
            raise
        except OSError as exc:
            raise ConfigError(
                f"cannot load or create identity keys in {root}: {exc.strerror or exc}"
            ) from exc
        return cls(private, public)

    @staticmethod
    def load_public(path: str | os.PathLike[str]) -> Ed25519PublicKey:
        """The perimeter's side: read ``identity_ed25519.pub.pem``."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read identity public key {path}: {exc.strerror or exc}") from exc
        return _load_public(data)


@dataclass(frozen=True)
class VerifiedIdentity:
    """What a verified token says. ``payload`` is every claim, for the gateway's policy seam."""

    identity: Identity
    audience: str
    tool: str
    input_sha256: str
    session_id: str
    tool_use_id: str
    issued_at: float
    expires_at: float
    payload: Mapping[str, Any] = field(hash=False)


class IdentityIssuer:
    """Mints identity tokens. Lives only in the control plane."""

    def __init__(
        self,
        private_key: Ed25519PrivateKey | bytes,
        *,
        issuer: str = ISSUER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = private_key if isinstance(private_key, Ed25519PrivateKey) else _load_private(private_key)
        self._kid = key_id(self._key.public_key())
        self._issuer = issuer
        self._clock = clock

    def mint(
        self,
        identity: Identity,
        *,
        audience: str,
        tool: str,
        input_sha256: str,
        tool_use_id: str,
        session_id: str,
        ttl_s: float = 60,
    ) -> str:
        if not audience or not tool or not tool_use_id:
            raise InvalidInput("an identity token needs an audience, a tool and a tool_use_id")
        if ttl_s <= 0:
            raise InvalidInput("ttl_s must be positive")
        now = self._clock()
        payload = {
            "iss": self._issuer,
            "sub": identity.user_id,
            "aud": audience,
            "iat": math.floor(now),
            "nbf": math.floor(now),
            "exp": math.ceil(now + ttl_s),
            "jti": tool_use_id,
            "kind": identity.kind,
            "roles": list(identity.roles),
            "name": identity.name,
            "claims": dict(identity.claims),
            "tool": tool,
            "input_sha256": input_sha256,
            "session_id": session_id,
        }
        headers = {"typ": TOKEN_TYPE, "kid": self._kid}
        try:
            return jwt.encode(payload, self._key, algorithm=_ALGORITHM, headers=headers)
        except TypeError as exc:
            raise InvalidInput(f"identity claims are not JSON: {exc}") from exc


class _ReplayCache:
    """jti -> expiry, bounded; refuses when full of live entries rather than forgetting one."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def admit(self, jti: str, expires_at: float, now: float) -> None:
        with self._lock:
            while self._heap and self._heap[0][0] < now:
                expiry, old = heapq.heappop(self._heap)
                if self._expiry.get(old) == expiry:
                    del self._expiry[old]
            if jti in self._expiry:
                raise IdentityError("replayed", "identity token refused: replayed (its jti was already used)")
            if len(self._expiry) >= self._size:
                raise IdentityError("replay_cache_full", "identity token refused: replay cache is full")
            self._expiry[jti] = expires_at
            heapq.heappush(self._heap, (expires_at, jti))

    def __len__(self) -> int:
        return len(self._expiry)


def _refuse(reason: str, detail: str) -> IdentityError:
    return IdentityError(reason, f"identity token refused: {detail}")


class IdentityVerifier:
    """Checks identity tokens at the perimeter; one instance per process keeps the replay memory."""

    def __init__(
        self,
        public_key: Ed25519PublicKey | bytes,
        *,
        audience: str,
        leeway_s: float = 5,
        replay_cache_size: int = 100_000,
        issuer: str = ISSUER,
        max_lifetime_s: float = 600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = public_key if isinstance(public_key, Ed25519PublicKey) else _load_public(public_key)
        self._audience = audience
        self._leeway = leeway_s
        self._issuer = issuer
        self._max_lifetime = max_lifetime_s
        self._clock = clock
        self._replay = _ReplayCache(replay_cache_size)

    def verify(
        self, token: str, *, tool: str | None = None, input_sha256: str | None = None
    ) -> VerifiedIdentity:
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_BYTES:
            raise _refuse("malformed", "not a token of acceptable size")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise _refuse("malformed", "not a JWT") from exc
        if header.get("alg") != _ALGORITHM:
            raise _refuse("bad_algorithm", f"algorithm must be {_ALGORITHM}")
        if header.get("typ") != TOKEN_TYPE:
            raise _refuse("malformed", f"token type must be {TOKEN_TYPE}")
        payload = decode_signed(
            token,
            self._key,
            algorithms=[_ALGORITHM],
            audience=self._audience,
            issuer=self._issuer,
            require=_REQUIRED,
            refuse=_refuse,
        )

        now = self._clock()
        iat, nbf, exp = (_number(payload, name) for name in ("iat", "nbf", "exp"))
        if now + self._leeway < nbf or now + self._leeway < iat:
            raise _refuse("not_yet_valid", "not yet valid")
        if now - self._leeway >= exp:
            raise _refuse("expired", "expired")
        if exp - min(nbf, iat) > self._max_lifetime:
            raise _refuse("lifetime_too_long", "lifetime longer than this verifier accepts")
        identity = _identity_of(payload)
        token_tool = _string(payload, "tool")
        token_digest = _string(payload, "input_sha256")
        if tool is not None and not hmac.compare_digest(token_tool.encode(), tool.encode()):
            raise _refuse("wrong_tool", "issued for another tool")
        if input_sha256 is not None and not hmac.compare_digest(token_digest.encode(), input_sha256.encode()):
            raise _refuse("wrong_input", "issued for another input")
        jti = _string(payload, "jti")
        self._replay.admit(jti, exp + self._leeway, now)
        return VerifiedIdentity(
            identity=identity,
            audience=self._audience,
            tool=token_tool,
            input_sha256=token_digest,
            session_id=_string(payload, "session_id"),
            tool_use_id=jti,
            issued_at=float(iat),
            expires_at=float(exp),
            payload=payload,
        )


def _number(payload: Mapping[str, Any], name: str) -> float:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse("malformed", f"claim {name!r} is not a number")
    return float(value)


def _string(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name, "")
    if not isinstance(value, str):
        raise _refuse("malformed", f"claim {name!r} is not a string")
    return value


def identity_from_payload(payload: Mapping[str, Any]) -> Identity:
    """The :class:`Identity` inside verified claims, for seams that pass claims rather than objects.

    Only for a payload :meth:`IdentityVerifier.verify` returned
    (``VerifiedIdentity.payload``): this checks shape, not signatures.
    """
    return _identity_of(payload)


def _identity_of(payload: Mapping[str, Any]) -> Identity:
    roles = payload.get("roles", [])
    claims = payload.get("claims", {})
    if not isinstance(roles, list) or not isinstance(claims, dict):
        raise _refuse("malformed", "roles must be a list and claims an object")
    try:
        return Identity(
            user_id=_string(payload, "sub"),
            kind=_string(payload, "kind"),
            roles=tuple(roles),
            name=_string(payload, "name"),
            claims=claims,
        )
    except InvalidInput as exc:
        raise _refuse("malformed", "the identity it carries is not valid") from exc
