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
