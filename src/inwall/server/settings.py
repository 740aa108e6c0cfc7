"""Everything ``inwall server`` can be told, with defaults that run out of the box.

Flags win over environment variables, which win over defaults. Secrets (model
API keys, the admin key) come only from the environment or files, never from
flags, so they do not show up in ``ps``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from inwall.agent.runner import RunnerSettings

__all__ = ["ServerSettings"]


@dataclass(frozen=True)
class ServerSettings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8700
    database_url: str | None = None  # default: SQLite in data_dir
    max_body_bytes: int = 10 * 1024 * 1024
    lease_ttl_s: int = 30
    reap_interval_s: float = 0.5
    sse_heartbeat_s: float = 15.0
    tunnel_domain_suffix: str = "tunnel.inwall.internal"
    tunnel_connect_wait_s: float = 3.0
    tunnel_rotation_grace_s: float = 60.0
    policy_file: Path | None = None
    mcp_credentials_file: Path | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_roles_claim: str = "groups"
    runner: RunnerSettings = field(default_factory=RunnerSettings)
    anthropic_base_url: str | None = None
    openai_base_url: str | None = None
    log_level: str = "info"

    @classmethod
    def from_env(cls, data_dir: Path, **overrides: object) -> ServerSettings:
        env = os.environ
        values: dict[str, object] = {
            "database_url": env.get("INWALL_DATABASE_URL") or None,
            "anthropic_base_url": env.get("ANTHROPIC_BASE_URL") or None,
            "openai_base_url": env.get("OPENAI_BASE_URL") or None,
        }
        if env.get("INWALL_LEASE_TTL_S"):
            values["lease_ttl_s"] = int(env["INWALL_LEASE_TTL_S"])
        if env.get("INWALL_MAX_BODY_BYTES"):
            values["max_body_bytes"] = int(env["INWALL_MAX_BODY_BYTES"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(data_dir=data_dir, **values)  # type: ignore[arg-type]  # keys are the dataclass fields
