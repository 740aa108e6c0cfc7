"""Static credentials for MCP servers, kept on the control plane and never in agent configs.

An agent names an MCP server by URL; the operator decides which credential
that URL gets, in a TOML file given to ``inwall server --mcp-credentials``:

    [[server]]
    url_prefix = "https://crm.example.com/mcp"   # the longest matching prefix wins
    bearer_token_env = "CRM_MCP_TOKEN"           # or bearer_token_file = "/etc/inwall/crm.token"
    headers = { "X-Tenant" = "acme" }            # optional extra headers

Tokens are read from the environment or a file so they never sit in the
config itself, in logs, or in session events.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inwall.errors import ConfigError
from inwall.mcp.types import McpServerRef

__all__ = ["McpCredentials"]

_KEYS = {"url_prefix", "bearer_token_env", "bearer_token_file", "headers"}


@dataclass(frozen=True)
class _Entry:
    url_prefix: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


class McpCredentials:
    def __init__(self, entries: list[_Entry] | None = None) -> None:
        self._entries = sorted(entries or [], key=lambda e: len(e.url_prefix), reverse=True)

    @classmethod
    def load(cls, path: Path, environ: Mapping[str, str] | None = None) -> McpCredentials:
        env = os.environ if environ is None else environ
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        unknown = set(data) - {"server"}
        if unknown:
            raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} (expected [[server]] tables)")
        entries = []
        for i, raw in enumerate(data.get("server", [])):
            where = f"{path}: server[{i}]"
            entries.append(_entry(raw, where, env, path.parent))
        return cls(entries)

    def resolve(self, definition: Mapping[str, Any]) -> McpServerRef:
        url = str(definition["url"])
        for entry in self._entries:
            if url.startswith(entry.url_prefix):
                return McpServerRef(name=str(definition["name"]), url=url, headers=dict(entry.headers))
        return McpServerRef(name=str(definition["name"]), url=url)


def _entry(raw: Any, where: str, env: Mapping[str, str], base: Path) -> _Entry:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(_KEYS))}")
    prefix = raw.get("url_prefix")
    if not isinstance(prefix, str) or "://" not in prefix:
        raise ConfigError(f"{where}: url_prefix must be a URL such as https://host/mcp")
    headers = raw.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError(f"{where}: headers must be a table of strings")
    headers = dict(headers)
    if "bearer_token_env" in raw and "bearer_token_file" in raw:
        raise ConfigError(f"{where}: give bearer_token_env or bearer_token_file, not both")
    token: str | None = None
    if "bearer_token_env" in raw:
        name = str(raw["bearer_token_env"])
        token = env.get(name)
        if not token:
            raise ConfigError(f"{where}: environment variable {name} is not set")
    elif "bearer_token_file" in raw:
        file = Path(str(raw["bearer_token_file"]))
        file = file if file.is_absolute() else base / file
        try:
            token = file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read bearer_token_file: {exc.strerror}") from exc
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return _Entry(prefix, headers)
