"""OIDC ID tokens against a real discovery + JWKS server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from inwall.errors import ConfigError, Unavailable
from inwall.governance import IdentityError, OidcValidator

from .conftest import Provider

pytestmark = pytest.mark.anyio

CLIENT = "inwall-client-id"


def claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": issuer,
        "sub": "248289761001",
        "aud": CLIENT,
        "iat": now,
        "exp": now + 600,
        "email": "jane@corp.example",
        "name": "Jane Doe",
        "groups": ["engineering", "oncall"],
        "oid": "00000000-0000-0000-0000-000000000001",
        "roles": ["Tools.Admin"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, payload: dict[str, Any], *, kid: str = "rsa-1", alg: str = "RS256") -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def idp(provider: Provider, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> Provider:
    provider.add_key(rsa_key.public_key(), kid="rsa-1", alg="RS256")
    provider.add_key(ec_key.public_key(), kid="ec-1")
    return provider


async def refused(validator: OidcValidator, token: str, reason: str) -> None:
    with pytest.raises(IdentityError) as info:
        with anyio.fail_after(5):
            await validator.validate(token)
    assert info.value.reason == reason, info.value.message
    assert token not in info.value.message


async def test_valid_tokens_become_end_users(idp: Provider, rsa_key: rsa.RSAPrivateKey, ec_key: Any) -> None:
    validator = OidcValidator(idp.issuer, CLIENT)
    with anyio.fail_after(5):
        identity = await validator.validate(sign(rsa_key, claims(idp.issuer)))
        ec_identity = await validator.validate(sign(ec_key, claims(idp.issuer), kid="ec-1", alg="ES256"))
    assert identity.kind == "end_user"
    assert identity.user_id == f"{idp.issuer}#248289761001"
    assert identity.roles == ("engineering", "oncall")
    assert identity.name == "Jane Doe"
    assert identity.claims["email"] == "jane@corp.example"
    assert ec_identity.user_id == identity.user_id
    assert idp.count("/.well-known/openid-configuration") == 1 and idp.count("/jwks") == 1  # cached


async def test_entra_style_ids_and_roles(idp: Provider, rsa_key: rsa.RSAPrivateKey) -> None:
    validator = OidcValidator(idp.issuer, [CLIENT, "other"], user_id_claim="oid", roles_claim="roles")
    with anyio.fail_after(5):
        identity = await validator.validate(sign(rsa_key, claims(idp.issuer)))
    assert identity.user_id == "00000000-0000-0000-0000-000000000001"
    assert identity.roles == ("Tools.Admin",)
    await refused(validator, sign(rsa_key, claims(idp.issuer, oid=None)), "missing_claim")


async def test_explicit_jwks_url_skips_discovery(idp: Provider, rsa_key: rsa.RSAPrivateKey) -> None:
    async with httpx2.AsyncClient(trust_env=False) as http:
        validator = OidcValidator(idp.issuer, CLIENT, jwks_url=f"{idp.issuer}/jwks", http=http)
        with anyio.fail_after(5):
            assert await validator.validate(sign(rsa_key, claims(idp.issuer)))
    assert idp.count("/.well-known/openid-configuration") == 0


async def test_bad_signature(
    idp: Provider, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    validator = OidcValidator(idp.issuer, CLIENT)
    with anyio.fail_after(5):
        assert await validator.validate(sign(rsa_key, claims(idp.issuer)))  # positive control
    await refused(validator, sign(other_rsa_key, claims(idp.issuer)), "bad_signature")


async def test_wrong_audience(idp: Provider, rsa_key: rsa.RSAPrivateKey) -> None:
    validator = OidcValidator(idp.issuer, CLIENT)
    await refused(validator, sign(rsa_key, claims(idp.issuer, aud="someone-else")), "wrong_audience")


async def test_wrong_issuer(idp: Provider, rsa_key: rsa.RSAPrivateKey) -> None:
    validator = OidcValidator(idp.issuer, CLIENT)
    await refused(validator, sign(rsa_key, claims("https://evil.example")), "wrong_issuer")
    await refused(validator, sign(rsa_key, claims(idp.issuer[:-1])), "wrong_issuer")  # no prefix match


async def test_expiry_with_clock_skew(idp: Provider, rsa_key: rsa.RSAPrivateKey) -> None:
    validator = OidcValidator(idp.issuer, CLIENT, clock_skew_s=60)
    now = int(time.time())
    with anyio.fail_after(5):  # positive control: 30 s past exp is inside the skew
        assert await validator.validate(sign(rsa_key, claims(idp.issuer, iat=now - 900, exp=now - 30)))
    await refused(validator, sign(rsa_key, claims(idp.issuer, iat=now - 900, exp=now - 120)), "expired")


async def test_issued_in_the_future(idp: Provider, rsa_key: rsa.RSAPrivateKey) -> None:
    validator = OidcValidator(idp.issuer, CLIENT, clock_skew_s=60)
    now = int(time.time())
    await refused(
        validator, sign(rsa_key, claims(idp.issuer, iat=now + 600, exp=now + 1200)), "not_yet_valid"
    )
    await refused(validator, sign(rsa_key, claims(idp.issuer, nbf=now + 600)), "not_yet_valid")


async def test_missing_required_claims(idp: Provider, rsa_key: rsa.RSAPrivateKey) -> None:
    validator = OidcValidator(idp.issuer, CLIENT)
    await refused(validator, sign(rsa_key, claims(idp.issuer, exp=None)), "missing_claim")
    await refused(validator, sign(rsa_key, claims(idp.issuer, iat=None)), "missing_claim")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_unknown_kid_refetches_rate_limited(
    idp: Provider, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = Clock()
    validator = OidcValidator(idp.issuer, CLIENT, clock=clock, jwks_refresh_min_s=30)
    with anyio.fail_after(5):
        assert await validator.validate(sign(rsa_key, claims(idp.issuer)))
    assert idp.count("/jwks") == 1
    await refused(validator, sign(other_rsa_key, claims(idp.issuer), kid="nope"), "unknown_key")
    assert idp.count("/jwks") == 1  # fetched a moment ago: not again
    clock.now += 31
    await refused(validator, sign(other_rsa_key, claims(idp.issuer), kid="nope"), "unknown_key")
    assert idp.count("/jwks") == 2
    await refused(validator, sign(other_rsa_key, claims(idp.issuer), kid="nope-2"), "unknown_key")
    assert idp.count("/jwks") == 2  # an attacker inventing kids cannot make us hammer the IdP


async def test_key_rotation_is_picked_up(
    idp: Provider, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = Clock()
    validator = OidcValidator(idp.issuer, CLIENT, clock=clock)
    with anyio.fail_after(5):
        assert await validator.validate(sign(rsa_key, claims(idp.issuer)))
    idp.add_key(other_rsa_key.public_key(), kid="rsa-2", alg="RS256")
    clock.now += 30
    with anyio.fail_after(5):
        identity = await validator.validate(sign(other_rsa_key, claims(idp.issuer), kid="rsa-2"))
    assert identity.name == "Jane Doe"


async def test_alg_none_is_refused(idp: Provider) -> None:
    validator = OidcValidator(idp.issuer, CLIENT)
    header = b64(json.dumps({"alg": "none", "kid": "rsa-1"}).encode())
    token = f"{header}.{b64(json.dumps(claims(idp.issuer)).encode())}."
    await refused(validator, token, "bad_algorithm")
    assert idp.requests == []  # refused before any key lookup


async def test_hs256_with_the_public_key_as_secret_is_refused(
    idp: Provider, rsa_key: rsa.RSAPrivateKey
) -> None:
    validator = OidcValidator(idp.issuer, CLIENT)
    secret = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims(idp.issuer)).encode())}"
    token = f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"
    await refused(validator, token, "bad_algorithm")


async def test_algorithm_must_match_the_key(idp: Provider, rsa_key: rsa.RSAPrivateKey, ec_key: Any) -> None:
    validator = OidcValidator(idp.issuer, CLIENT)
    await refused(validator, sign(rsa_key, claims(idp.issuer), kid="rsa-1", alg="PS256"), "bad_algorithm")
    await refused(validator, sign(rsa_key, claims(idp.issuer), kid="ec-1", alg="RS256"), "bad_algorithm")


async def test_discovery_naming_another_issuer_is_unavailable(
    idp: Provider, rsa_key: rsa.RSAPrivateKey
) -> None:
    idp.discovery_issuer = "https://evil.example"
    validator = OidcValidator(idp.issuer, CLIENT)
    with pytest.raises(Unavailable), anyio.fail_after(5):
        await validator.validate(sign(rsa_key, claims(idp.issuer)))


async def test_provider_down_is_unavailable(idp: Provider, rsa_key: rsa.RSAPrivateKey) -> None:
    idp.status = 503
    validator = OidcValidator(idp.issuer, CLIENT)
    with pytest.raises(Unavailable), anyio.fail_after(5):
        await validator.validate(sign(rsa_key, claims(idp.issuer)))


async def test_stale_keys_are_used_when_the_provider_is_down(
    idp: Provider, rsa_key: rsa.RSAPrivateKey
) -> None:
    validator = OidcValidator(idp.issuer, CLIENT, jwks_cache_s=0, jwks_refresh_min_s=0)
    with anyio.fail_after(5):
        assert await validator.validate(sign(rsa_key, claims(idp.issuer)))
        idp.status = 500
        assert await validator.validate(sign(rsa_key, claims(idp.issuer)))
    assert idp.count("/jwks") == 2


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigError, match="https"):
        OidcValidator("http://idp.example", CLIENT)
    with pytest.raises(ConfigError, match="asymmetric"):
        OidcValidator("https://idp.example", CLIENT, allowed_algs=("RS256", "HS256"))
    with pytest.raises(ConfigError, match="asymmetric"):
        OidcValidator("https://idp.example", CLIENT, allowed_algs=("none",))
    with pytest.raises(ConfigError, match="audience"):
        OidcValidator("https://idp.example", [])
    assert OidcValidator("https://login.microsoftonline.com/t/v2.0", CLIENT).issuer.endswith("/v2.0")
