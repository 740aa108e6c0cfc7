"""End users from an OpenID Connect provider (Entra ID, Google Workspace, Keycloak, ...).

A session may act for an end user identified by an OIDC ID token; this turns
that token into an :class:`~inwall.governance.model.Identity` (kind
``end_user``) only after checking, in order: the algorithm is one we allow
(never ``none`` or an HMAC, which a public key would let anyone forge with),
the signing key is in the issuer's JWKS (refetched on an unknown ``kid``, at
most once per ``jwks_refresh_min_s``), the signature, ``iss``, ``aud``,
``exp``, ``nbf`` and ``iat`` with ``clock_skew_s``.

Provider notes. Entra ID: use the tenant's v2.0 issuer
(``https://login.microsoftonline.com/<tenant id>/v2.0``; the multi-tenant
``common`` issuer is not supported), ``user_id_claim="oid"`` for a stable id,
and ``roles_claim="roles"`` (app roles) or ``"groups"`` (group object ids; a
user in too many groups gets an overage claim instead, which is not resolved
here). Google: issuer ``https://accounts.google.com`` with
``extra_issuers=("accounts.google.com",)``, since Google issues both forms.

Network: discovery and JWKS URLs must be ``https``, except on loopback
(tests, a local IdP). A provider that cannot be reached raises
:class:`~inwall.errors.Unavailable` (retry later); everything wrong with the
token raises :class:`~inwall.governance.errors.IdentityError`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import httpx2
import jwt

from inwall.errors import ConfigError, Unavailable
from inwall.governance.errors import IdentityError
from inwall.governance.jwtcheck import decode_signed
from inwall.governance.model import Identity

__all__ = ["DEFAULT_ALGORITHMS", "OidcValidator"]

log = logging.getLogger("inwall.governance")

DEFAULT_ALGORITHMS: Final = ("RS256", "ES256", "PS256")
_ASYMMETRIC: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
_MAX_DOCUMENT_BYTES: Final = 1024 * 1024
_MAX_TOKEN_BYTES: Final = 64 * 1024
_NAME_CLAIMS: Final = ("name", "preferred_username", "email")


def _check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and _is_loopback(host):
        return url
    raise ConfigError(f"{what} must be an https URL (http only on loopback): {url}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(reason: str, detail: str) -> IdentityError:
    return IdentityError(reason, f"ID token refused: {detail}")


class OidcValidator:
    """Validates ID tokens from one issuer for one client (audience)."""

    def __init__(
        self,
        issuer: str,
        audience: str | list[str],
        *,
        jwks_url: str | None = None,
        http: httpx2.AsyncClient | None = None,
        clock_skew_s: float = 60,
        jwks_cache_s: float = 300,
        allowed_algs: Sequence[str] = DEFAULT_ALGORITHMS,
        user_id_claim: str | None = None,
        roles_claim: str | None = "groups",
        extra_issuers: Sequence[str] = (),
        jwks_refresh_min_s: float = 30,
        timeout_s: float = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        bad = [alg for alg in allowed_algs if alg not in _ASYMMETRIC]
        if bad or not allowed_algs:
            raise ConfigError(f"allowed_algs must be asymmetric JWS algorithms, not {bad or 'nothing'}")
        self._issuer = _check_url(issuer, "OIDC issuer")
        self._issuers = (issuer, *extra_issuers)
        self._audiences = [audience] if isinstance(audience, str) else list(audience)
        if not self._audiences or not all(self._audiences):
            raise ConfigError("OIDC audience (the client id) must be given")
        self._jwks_url = _check_url(jwks_url, "OIDC jwks_url") if jwks_url else None
        self._http = http
        self._skew = clock_skew_s
        self._cache_s = jwks_cache_s
        self._algs = tuple(allowed_algs)
        self._user_id_claim = user_id_claim
        self._roles_claim = roles_claim
        self._refresh_min_s = jwks_refresh_min_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: float | None = None  # clock time of the last good fetch
        self._attempted_at: float | None = None  # clock time of the last attempt
        self._lock = anyio.Lock()

    @property
    def issuer(self) -> str:
        return self._issuer

    async def validate(self, id_token: str) -> Identity:
        if not isinstance(id_token, str) or not id_token or len(id_token) > _MAX_TOKEN_BYTES:
            raise _refuse("malformed", "not a token of acceptable size")
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.InvalidTokenError as exc:
            raise _refuse("malformed", "not a JWT") from exc
        alg = header.get("alg")
        if alg not in self._algs:
            raise _refuse("bad_algorithm", f"algorithm must be one of {', '.join(self._algs)}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refuse("malformed", "kid must be a string")
        jwk_data = await self._key_for(kid)
        if jwk_data.get("alg") not in (None, alg):
            raise _refuse("bad_algorithm", "the token's algorithm does not match its key")
        if jwk_data.get("use") not in (None, "sig"):
            raise _refuse("unknown_key", "the key is not a signing key")
        try:
            key = jwt.PyJWK(jwk_data, algorithm=alg).key
        except jwt.PyJWTError as exc:
            raise _refuse("bad_algorithm", "the token's algorithm does not fit its key") from exc
        payload = decode_signed(
            id_token,
            key,
            algorithms=[alg],
            audience=self._audiences,
            issuer=sorted(self._issuers),
            require=("iss", "sub", "aud", "exp", "iat"),
            refuse=_refuse,
        )
        self._check_times(payload)
        return self._identity_of(payload)

    def _check_times(self, payload: Mapping[str, Any]) -> None:
        now = self._clock()
        times: dict[str, float] = {}
        for name in ("exp", "iat", "nbf"):
            value = payload.get(name)
            if value is None and name == "nbf":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _refuse("malformed", f"claim {name!r} is not a number")
            times[name] = float(value)
        if now - self._skew >= times["exp"]:
            raise _refuse("expired", "expired")
        if now + self._skew < times["iat"] or now + self._skew < times.get("nbf", times["iat"]):
            raise _refuse("not_yet_valid", "not yet valid")

    def _identity_of(self, payload: Mapping[str, Any]) -> Identity:
        if self._user_id_claim is None:
            user_id = f"{payload['iss']}#{payload['sub']}"
        else:
            value = payload.get(self._user_id_claim)
            if not isinstance(value, str) or not value:
                raise _refuse("missing_claim", f"missing claim {self._user_id_claim!r}")
            user_id = value
        roles: tuple[str, ...] = ()
        if self._roles_claim is not None:
            raw = payload.get(self._roles_claim)
            if isinstance(raw, str):
                roles = (raw,) if raw else ()
            elif isinstance(raw, list):
                roles = tuple(dict.fromkeys(r for r in raw if isinstance(r, str) and r))
        name = next((payload[c] for c in _NAME_CLAIMS if isinstance(payload.get(c), str)), "")
        return Identity(user_id=user_id, kind="end_user", roles=roles, name=name, claims=dict(payload))

    async def _key_for(self, kid: str | None) -> dict[str, Any]:
        async with self._lock:
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at >= self._cache_s
            missing = self._pick(kid) is None
            may_retry = (
                self._fetched_at is None
                or self._attempted_at is None
                or now - self._attempted_at >= self._refresh_min_s
            )
            if (stale or missing) and may_retry:
                try:
                    await self._refresh()
                except Unavailable:
                    if self._pick(kid) is None:
                        raise
                    log.warning("OIDC JWKS refresh for %s failed; using the cached keys", self._issuer)
        key = self._pick(kid)
        if key is None:
            raise _refuse("unknown_key", "signed by a key the issuer does not publish")
        return key

    def _pick(self, kid: str | None) -> dict[str, Any] | None:
        if kid is not None:
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _refresh(self) -> None:
        self._attempted_at = self._clock()
        if self._jwks_url is None:
            discovery = await self._get_json(self._issuer.rstrip("/") + "/.well-known/openid-configuration")
            if discovery.get("issuer") != self._issuer:
                raise Unavailable(f"OIDC discovery for {self._issuer} names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise Unavailable(f"OIDC discovery for {self._issuer} has no jwks_uri")
            try:
                self._jwks_url = _check_url(jwks_uri, "OIDC jwks_uri")
            except ConfigError as exc:
                raise Unavailable(exc.message) from exc
        document = await self._get_json(self._jwks_url)
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise Unavailable(f"OIDC JWKS of {self._issuer} has no key list")
        found: dict[str, dict[str, Any]] = {}
        for index, entry in enumerate(keys):
            if isinstance(entry, dict) and entry.get("kty") in ("RSA", "EC"):
                kid = entry.get("kid")
                found[kid if isinstance(kid, str) else f"#{index}"] = entry
        self._keys = found
        self._fetched_at = self._clock()

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            if self._http is not None:
                response = await self._http.get(url, follow_redirects=False)
            else:
                async with httpx2.AsyncClient(timeout=self._timeout_s, trust_env=False) as client:
                    response = await client.get(url)
        except httpx2.HTTPError as exc:
            raise Unavailable(f"OIDC provider {self._issuer} unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise Unavailable(f"OIDC provider {self._issuer} answered {response.status_code} for {url}")
        if len(response.content) > _MAX_DOCUMENT_BYTES:
            raise Unavailable(f"OIDC provider {self._issuer} sent an oversized document")
        try:
            document = json.loads(response.content)
        except ValueError as exc:
            raise Unavailable(f"OIDC provider {self._issuer} sent invalid JSON") from exc
        if not isinstance(document, dict):
            raise Unavailable(f"OIDC provider {self._issuer} sent a non-object document")
        return document
