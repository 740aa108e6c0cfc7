"""The tools a session's model sees, and how each call is routed and permitted.

Built from the session's agent snapshot (which mid-session updates replace)
plus the live tool listings of its MCP servers. Order is deterministic —
built-ins in the SDK's order, then custom tools as defined, then MCP tools by
server (as defined) and name — so the same session always sends the model the
same prompt prefix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from inwall.agent.builtin_tools import WORKER_TOOLS, builtin_spec
from inwall.agent.models.base import ToolSpec

__all__ = ["Catalog", "CatalogTool", "McpToolInfo", "build_catalog", "evaluate_permission", "mcp_model_name"]

ToolKind = Literal["builtin", "custom", "mcp"]
Policy = Literal["always_allow", "always_ask", "auto"]


@dataclass(frozen=True)
class McpToolInfo:
    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclass(frozen=True)
class CatalogTool:
    model_name: str
    kind: ToolKind
    spec: ToolSpec
    policy: Policy
    mcp_server: str | None = None
    mcp_tool: str | None = None


@dataclass(frozen=True)
class Catalog:
    tools: tuple[CatalogTool, ...] = ()
    # MCP servers whose tool listing failed; their tools are absent this step.
    unavailable_servers: Mapping[str, str] = field(default_factory=dict)

    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self.tools]

    def get(self, model_name: str) -> CatalogTool | None:
        for t in self.tools:
            if t.model_name == model_name:
                return t
        return None

    def without(self, names: set[str]) -> Catalog:
        return Catalog(tuple(t for t in self.tools if t.model_name not in names), self.unavailable_servers)


def mcp_model_name(server: str, tool: str) -> str:
    return f"mcp__{server}__{tool}"


def _policy_of(cfg: Mapping[str, Any]) -> Policy:
    policy = (cfg.get("permission_policy") or {}).get("type", "always_allow")
    return policy if policy in ("always_allow", "always_ask", "auto") else "always_ask"


def evaluate_permission(policy: Policy) -> tuple[str, dict[str, Any]]:
    """``evaluated_permission`` and ``evaluation`` for an event.

    ``auto`` is Anthropic's risk classifier; inwall has none in the loop, so it
    evaluates to allow and says so in the evaluation — governance policies
    (Cedar, issue 6) are the place to deny.
    """
    if policy == "always_ask":
        return "ask", {"type": "always_ask"}
    if policy == "auto":
        return "allow", {"type": "auto", "evaluated_permission": {"type": "allow"}}
    return "allow", {"type": "always_allow"}


def build_catalog(
    agent: Mapping[str, Any],
    mcp_tools: Mapping[str, Sequence[McpToolInfo]],
    unavailable: Mapping[str, str] | None = None,
) -> Catalog:
    tools: list[CatalogTool] = []
    customs: list[CatalogTool] = []
    mcps: list[CatalogTool] = []
    for entry in agent.get("tools", []):
        kind = entry.get("type")
        if kind == "agent_toolset_20260401":
            default = entry.get("default_config") or {}
            overrides = {c["name"]: c for c in entry.get("configs", [])}
            for name in WORKER_TOOLS:
                cfg = overrides.get(name, default)
                if not cfg.get("enabled", True):
                    continue
                tools.append(CatalogTool(name, "builtin", builtin_spec(name), _policy_of(cfg)))
        elif kind == "custom":
            schema = dict(entry.get("input_schema") or {"type": "object"})
            customs.append(
                CatalogTool(
                    entry["name"],
                    "custom",
                    ToolSpec(entry["name"], entry.get("description", ""), schema),
                    "always_allow",
                )
            )
        elif kind == "mcp_toolset":
            server = entry["mcp_server_name"]
            default = entry.get("default_config") or {}
            overrides = {c["name"]: c for c in entry.get("configs", [])}
            for info in sorted(mcp_tools.get(server, ()), key=lambda i: i.name):
                cfg = overrides.get(info.name, default)
                if not cfg.get("enabled", True):
                    continue
                name = mcp_model_name(server, info.name)
                mcps.append(
                    CatalogTool(
                        name,
                        "mcp",
                        ToolSpec(name, info.description, dict(info.input_schema) or {"type": "object"}),
                        _policy_of(cfg),
                        mcp_server=server,
                        mcp_tool=info.name,
                    )
                )
    return Catalog(tuple(tools + customs + mcps), dict(unavailable or {}))
