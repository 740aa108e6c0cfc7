"""Caller identity tokens: a round trip works, and every way to cheat is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inwall.errors import AuthError, ConfigError
from inwall.governance import (
    Identity,
    IdentityError,
    IdentityIssuer,
    IdentityKeys,
    IdentityVerifier,
    PolicyEngine,
    PolicySet,
    ToolRef,
    identity_from_payload,
    input_digest,
)
from inwall.governance.identity import ISSUER, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, TOKEN_TYPE

NOW = 1_800_000_000.0
AUD = "worker:env_1"
ALICE = Identity(
    "usr_alice", "end_user", ("engineer", "oncall"), name="Alice", claims={"email": "a@corp.example"}
)
INPUT = {"command": "ls -la", "timeout": 30}
DIGEST = input_digest(INPUT)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(tmp_path: Path) -> IdentityKeys:
    return IdentityKeys.load_or_create(tmp_path / "keys")


def mint(
    keys: IdentityKeys, *, tool_use_id: str = "toolu_1", clock: Clock | None = None, **kw: object
) -> str:
    issuer = IdentityIssuer(keys.private_key, clock=clock or Clock())
    args: dict[str, object] = {
        "audience": AUD,
        "tool": "bash",
        "input_sha256": DIGEST,
        "tool_use_id": tool_use_id,
        "session_id": "sesn_1",
    }
    args.update(kw)
    return issuer.mint(ALICE, **args)  # type: ignore[arg-type]


def verifier(keys: IdentityKeys, clock: Clock | None = None, **kw: object) -> IdentityVerifier:
    return IdentityVerifier(keys.public_pem, audience=AUD, clock=clock or Clock(), **kw)  # type: ignore[arg-type]


def refused(v: IdentityVerifier, token: str, reason: str, **kw: str) -> IdentityError:
    with pytest.raises(IdentityError) as info:
        v.verify(token, **kw)
    assert info.value.reason == reason, info.value.message
    assert isinstance(info.value, AuthError)
    assert token not in info.value.message and token not in str(info.value.details)
    return info.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, object], payload: dict[str, object], sign: bytes | None = None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b"" if sign is None else hmac.new(sign, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def claims_of(token: str) -> dict[str, object]:
    segment = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))  # type: ignore[no-any-return]


def test_round_trip(keys: IdentityKeys) -> None:
    token = mint(keys)
    verified = verifier(keys).verify(token, tool="bash", input_sha256=DIGEST)
    assert verified.identity == ALICE
    assert verified.identity.claims == {"email": "a@corp.example"}
    assert (verified.tool, verified.input_sha256, verified.session_id) == ("bash", DIGEST, "sesn_1")
    assert verified.tool_use_id == "toolu_1" and verified.audience == AUD
    assert verified.expires_at - verified.issued_at == 60
    payload = claims_of(token)
    assert payload["iss"] == ISSUER and payload["sub"] == "usr_alice" and payload["jti"] == "toolu_1"
    assert payload["roles"] == ["engineer", "oncall"] and payload["kind"] == "end_user"
    assert identity_from_payload(verified.payload) == ALICE


def test_the_perimeter_runs_its_own_policy_on_the_identity(keys: IdentityKeys) -> None:
    """Allowed by the control plane's (absent) policy, denied by the gateway's own."""
    verified = verifier(keys).verify(mint(keys, tool="mcp__db__drop"))
    gateway = PolicyEngine(
        PolicySet.parse(
            "permit (principal, action, resource);\n"
            'forbid (principal, action, resource) when { resource.mcp_server == "db" } '
            'unless { principal in Inwall::Role::"dba" };',
            source="gateway.cedar",
        )
    )
    control_plane = PolicyEngine(None)
    tool = ToolRef("mcp__db__drop", "mcp", mcp_server="db")
    assert control_plane.decide(verified.identity, tool, {}).allowed
    assert not gateway.decide(verified.identity, tool, {}, session_id=verified.session_id).allowed
    assert gateway.decide(verified.identity, ToolRef("mcp__wiki__read", "mcp", mcp_server="wiki"), {}).allowed


def test_forged_with_another_key(keys: IdentityKeys) -> None:
    rogue = IdentityIssuer(Ed25519PrivateKey.generate(), clock=Clock())
    token = rogue.mint(ALICE, audience=AUD, tool="bash", input_sha256=DIGEST, tool_use_id="t", session_id="s")
    refused(verifier(keys), token, "bad_signature")


def test_tampered_payload(keys: IdentityKeys) -> None:
    header, _, signature = mint(keys).split(".")
    payload = claims_of(mint(keys, tool_use_id="toolu_2"))
    payload["roles"] = ["admin"]
    tampered = f"{header}.{b64(json.dumps(payload).encode())}.{signature}"
    refused(verifier(keys), tampered, "bad_signature")


def test_expired_and_leeway(keys: IdentityKeys) -> None:
    clock = Clock(NOW + 60 + 4)  # exp + 4 s: inside the 5 s leeway
    assert verifier(keys, clock).verify(mint(keys, tool_use_id="ok"))
    clock.now = NOW + 60 + 5
    refused(verifier(keys, clock), mint(keys, tool_use_id="late"), "expired")


def test_not_yet_valid(keys: IdentityKeys) -> None:
    token = mint(keys, clock=Clock(NOW + 30))
    refused(verifier(keys, Clock(NOW)), token, "not_yet_valid")
    assert verifier(keys, Clock(NOW + 26)).verify(token)  # within leeway


def test_replayed(keys: IdentityKeys) -> None:
    v = verifier(keys)
    token = mint(keys)
    v.verify(token)
    refused(v, token, "replayed")
    assert v.verify(mint(keys, tool_use_id="toolu_other"))  # positive control: a new jti passes


def test_replay_memory_is_bounded_and_fails_closed(keys: IdentityKeys) -> None:
    clock = Clock()
    v = verifier(keys, clock, replay_cache_size=2)
    v.verify(mint(keys, tool_use_id="a"))
    v.verify(mint(keys, tool_use_id="b"))
    refused(v, mint(keys, tool_use_id="c"), "replay_cache_full")
    clock.now = NOW + 60 + 5 + 1  # a and b expired: forgotten safely
    fresh = mint(keys, tool_use_id="c", clock=Clock(clock.now))
    assert v.verify(fresh)


def test_wrong_audience(keys: IdentityKeys) -> None:
    refused(verifier(keys), mint(keys, audience="gateway:tnl_1"), "wrong_audience")


def test_wrong_issuer(keys: IdentityKeys) -> None:
    token = IdentityIssuer(keys.private_key, issuer="someone-else", clock=Clock()).mint(
        ALICE, audience=AUD, tool="bash", input_sha256=DIGEST, tool_use_id="t", session_id="s"
    )
    refused(verifier(keys), token, "wrong_issuer")


def test_wrong_tool_or_input(keys: IdentityKeys) -> None:
    v = verifier(keys)
    refused(v, mint(keys, tool_use_id="1"), "wrong_tool", tool="write")
    refused(v, mint(keys, tool_use_id="2"), "wrong_input", input_sha256=input_digest({"command": "rm -rf /"}))
    assert v.verify(
        mint(keys, tool_use_id="3"), tool="bash", input_sha256=input_digest(dict(reversed(INPUT.items())))
    )


def test_alg_none_is_refused(keys: IdentityKeys) -> None:
    payload = claims_of(mint(keys))
    token = forge({"alg": "none", "typ": TOKEN_TYPE}, payload)
    refused(verifier(keys), token, "bad_algorithm")


def test_hs256_keyed_with_the_public_key_is_refused(keys: IdentityKeys) -> None:
    payload = claims_of(mint(keys))
    token = forge({"alg": "HS256", "typ": TOKEN_TYPE}, payload, sign=keys.public_pem)
    refused(verifier(keys), token, "bad_algorithm")


def test_other_token_types_are_refused(keys: IdentityKeys) -> None:
    import jwt

    token = jwt.encode(claims_of(mint(keys)), keys.private_key, algorithm="EdDSA")  # typ "JWT"
    refused(verifier(keys), token, "malformed")


def test_garbage_is_refused(keys: IdentityKeys) -> None:
    v = verifier(keys)
    for token in ("", "x", "a.b.c", "x" * 70_000):
        with pytest.raises(IdentityError) as info:
            v.verify(token)
        assert info.value.reason in {"malformed", "bad_algorithm"}


def test_lifetime_too_long(keys: IdentityKeys) -> None:
    refused(verifier(keys, max_lifetime_s=120), mint(keys, ttl_s=3600), "lifetime_too_long")


def test_keys_files(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    first = IdentityKeys.load_or_create(directory)
    private = directory / PRIVATE_KEY_FILE
    public = directory / PUBLIC_KEY_FILE
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_bytes() == first.public_pem
    again = IdentityKeys.load_or_create(directory)
    assert again.public_pem == first.public_pem
    loaded = IdentityKeys.load_public(public)
    token = mint(first)
    assert IdentityVerifier(loaded, audience=AUD, clock=Clock()).verify(token)

    public.write_bytes(b"stale")  # derived file is rewritten from the private key
    IdentityKeys.load_or_create(directory)
    assert public.read_bytes() == first.public_pem

    private.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        IdentityKeys.load_or_create(directory)
    with pytest.raises(ConfigError):
        IdentityKeys.load_public(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError):
        IdentityKeys.load_public(tmp_path / "junk.pem")


def test_input_digest_is_canonical() -> None:
    assert input_digest({"a": 1, "b": [1, 2]}) == input_digest({"b": [1, 2], "a": 1})
    assert input_digest({"a": 1}) != input_digest({"a": "1"})
