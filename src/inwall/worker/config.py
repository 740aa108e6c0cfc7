"""``inwall worker`` configuration: flags, falling back to the SDK's ``ANTHROPIC_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inwall.errors import ConfigError

__all__ = ["DEFAULT_MAX_SESSIONS", "WorkerConfig"]

DEFAULT_MAX_SESSIONS = 8


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one worker process needs. ``environment_key`` never appears in ``repr``."""

    base_url: str
    environment_id: str
    environment_key: str = field(repr=False)
    workdir: Path
    sandbox_settings: Path | None = None
    max_sessions: int = DEFAULT_MAX_SESSIONS
    snapshot_dir: Path | None = None
    snapshots: bool = True
    keep_snapshots: int = 5
    audit_log: Path | None = None
    audit_sync: bool = False
    max_idle: float | None = 60.0
    drain_timeout_s: float = 30.0
    worker_id: str | None = None
    gc_interval_s: float = 600.0
    gc_grace_s: float = 3600.0
    #: the control plane's identity public key (PEM), pinned: tokens are verified against it
    identity_public_key: Path | None = None
    #: refuse every call without a valid identity token
    require_identity: bool = False
    #: the worker's own Cedar policy (hot-reloaded)
    policy: Path | None = None
    #: built-in redaction patterns (api_keys, card_numbers, emails, secret_assignments)
    redact: tuple[str, ...] = ()
    #: custom redaction regexes
    redact_patterns: tuple[str, ...] = ()
    policy_watch_interval_s: float = 2.0

    @classmethod
    def resolve(
        cls,
        *,
        base_url: str | None,
        environment_id: str | None,
        environment_key: str | None,
        workdir: str | os.PathLike[str] | None,
        env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> WorkerConfig:
        """Fill the credentials from ``ANTHROPIC_BASE_URL``, ``_ENVIRONMENT_ID``, ``_ENVIRONMENT_KEY``."""
        env = os.environ if env is None else env
        base_url = base_url or env.get("ANTHROPIC_BASE_URL")
        environment_id = environment_id or env.get("ANTHROPIC_ENVIRONMENT_ID")
        environment_key = environment_key or env.get("ANTHROPIC_ENVIRONMENT_KEY")
        missing = [
            name
            for name, value in (
                ("--base-url or ANTHROPIC_BASE_URL", base_url),
                ("--environment-id or ANTHROPIC_ENVIRONMENT_ID", environment_id),
                ("--environment-key or ANTHROPIC_ENVIRONMENT_KEY", environment_key),
                ("--workdir", workdir),
            )
            if not value
        ]
        if missing:
            raise ConfigError("missing " + ", ".join(missing))
        assert base_url and environment_id and environment_key and workdir
        config = cls(
            base_url=base_url,
            environment_id=environment_id,
            environment_key=environment_key,
            workdir=Path(workdir).absolute(),
            **options,
        )
        config.check()
        return config

    def check(self) -> None:
        if self.max_sessions < 1:
            raise ConfigError("--max-sessions must be at least 1")
        if self.keep_snapshots < 1:
            raise ConfigError("--snapshot-keep must be at least 1")
        if self.drain_timeout_s < 0:
            raise ConfigError("--drain-timeout must not be negative")
        if self.max_idle is not None and self.max_idle <= 0:
            raise ConfigError("--max-idle must be positive")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url must be an http(s) URL, got {self.base_url!r}")
        if self.policy_watch_interval_s <= 0:
            raise ConfigError("--policy-interval must be positive")
        if self.require_identity and self.identity_public_key is None:
            raise ConfigError(
                "--require-identity needs --identity-public-key (the control plane's public key)"
            )

    @property
    def sessions_dir(self) -> Path:
        return self.workdir / "sessions"

    @property
    def private_dir(self) -> Path:
        """State the sandboxes must never see: snapshot state files, the SDK's per-session context dirs."""
        return self.workdir / ".worker"

    @property
    def snapshot_root(self) -> Path:
        return self.snapshot_dir or self.workdir / "snapshots"

    @property
    def audit_path(self) -> Path:
        return self.audit_log or self.workdir / "audit.jsonl"
