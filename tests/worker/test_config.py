"""Flags fall back to the SDK's environment variables; the key never shows in a repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from inwall.errors import ConfigError
from inwall.worker.config import WorkerConfig
from inwall.worker.program import build_parser, config_from_args


def test_environment_fallbacks_and_secret_repr(tmp_path: Path) -> None:
    env = {
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:1",
        "ANTHROPIC_ENVIRONMENT_ID": "env_1",
        "ANTHROPIC_ENVIRONMENT_KEY": "sk-secret-key-123",
    }
    c = WorkerConfig.resolve(
        base_url=None, environment_id=None, environment_key=None, workdir=tmp_path, env=env
    )
    assert (c.base_url, c.environment_id, c.environment_key) == (
        "http://127.0.0.1:1",
        "env_1",
        "sk-secret-key-123",
    )
    assert "sk-secret" not in repr(c)
    assert c.sessions_dir == tmp_path / "sessions"
    assert c.audit_path == tmp_path / "audit.jsonl"
    assert c.snapshot_root == tmp_path / "snapshots"
    flags = WorkerConfig.resolve(
        base_url="https://cp.example", environment_id="env_2", environment_key="k", workdir=tmp_path, env=env
    )
    assert (flags.base_url, flags.environment_id) == ("https://cp.example", "env_2")


def test_missing_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        WorkerConfig.resolve(base_url=None, environment_id="e", environment_key=None, workdir=None, env={})
    assert "ANTHROPIC_BASE_URL" in err.value.message
    assert "ANTHROPIC_ENVIRONMENT_KEY" in err.value.message
    assert "--workdir" in err.value.message
    with pytest.raises(ConfigError):
        WorkerConfig.resolve(
            base_url="ftp://x", environment_id="e", environment_key="k", workdir=tmp_path, env={}
        )
    with pytest.raises(ConfigError):
        WorkerConfig.resolve(
            base_url="http://x",
            environment_id="e",
            environment_key="k",
            workdir=tmp_path,
            env={},
            max_sessions=0,
        )


def test_cli_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(
        [
            "--base-url",
            "http://127.0.0.1:9",
            "--environment-id",
            "env_x",
            "--workdir",
            str(tmp_path),
            "--max-sessions",
            "3",
            "--snapshot-dir",
            str(tmp_path / "s"),
            "--snapshot-keep",
            "2",
            "--audit-log",
            str(tmp_path / "a.jsonl"),
            "--max-idle",
            "5",
            "--drain-timeout",
            "7",
        ]
    )
    monkeypatch.delenv("ANTHROPIC_ENVIRONMENT_KEY", raising=False)
    with pytest.raises(ConfigError):
        config_from_args(args)
    monkeypatch.setenv("ANTHROPIC_ENVIRONMENT_KEY", "from-env")
    c = config_from_args(args)
    assert c.max_sessions == 3 and c.keep_snapshots == 2 and c.max_idle == 5 and c.drain_timeout_s == 7
    assert c.snapshot_root == tmp_path / "s" and c.audit_path == tmp_path / "a.jsonl"
    assert c.environment_key == "from-env"


def test_perimeter_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inwall.governance import IdentityKeys
    from inwall.worker.perimeter import Perimeter

    IdentityKeys.load_or_create(tmp_path / "cp")
    policy = tmp_path / "worker.cedar"
    policy.write_text('@id("all") permit (principal, action, resource);\n')
    base = ["--base-url", "http://127.0.0.1:9", "--environment-id", "env_x", "--workdir", str(tmp_path)]
    monkeypatch.setenv("ANTHROPIC_ENVIRONMENT_KEY", "k")
    args = build_parser().parse_args(
        [
            *base,
            "--identity-public-key",
            str(tmp_path / "cp" / "identity_ed25519.pub.pem"),
            "--require-identity",
            "--policy",
            str(policy),
            "--redact",
            "api_keys",
            "--redact",
            "emails",
            "--redact-pattern",
            r"ticket-\d+",
        ]
    )
    c = config_from_args(args)
    assert c.require_identity and c.policy == policy and c.redact == ("api_keys", "emails")
    assert c.redact_patterns == (r"ticket-\d+",)
    p = Perimeter.for_worker(c)
    assert p is not None and p.wants_token and p.checks_calls
    described = p.describe()
    assert described["identity"] == "required" and described["redact"] == ["api_keys", "emails", "custom"]
    assert "worker.cedar with 1 policies" in described["policy"]
    # nothing asked for: no perimeter, no per-call cost
    assert Perimeter.load(environment_id="env_x") is None
    # --require-identity without the key it needs
    with pytest.raises(ConfigError, match="--identity-public-key"):
        config_from_args(build_parser().parse_args([*base, "--require-identity"]))
    with pytest.raises(ConfigError, match="--policy-interval"):
        config_from_args(build_parser().parse_args([*base, "--policy-interval", "0"]))
    for bad in (
        {"identity_public_key": tmp_path / "missing.pem"},
        {"identity_public_key": policy},  # not a PEM key
        {"policy": tmp_path / "missing.cedar"},
        {"redact": ("passwords",)},
        {"redact_patterns": ("(unclosed",)},
    ):
        with pytest.raises(ConfigError):
            Perimeter.load(environment_id="env_x", **bad)  # type: ignore[arg-type]
    policy.write_text("permit (principal, action, resource")  # broken at start: no policy to fall back to
    with pytest.raises(ConfigError, match=r"worker\.cedar"):
        Perimeter.load(environment_id="env_x", policy=policy)
