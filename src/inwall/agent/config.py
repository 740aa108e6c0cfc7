"""Agent configuration: request params in, the SDK's response shape out.

Requests may use shorthands (a bare model string, a tool config without
``type``, omitted defaults); responses must be complete, because the SDK's
models require every field (a config entry without ``type`` silently parses as
a bash config). Everything stored is already in response shape, so a session's
agent snapshot is a copy, not a recomputation.
"""

from __future__ import annotations

import copy
from typing import Any

from inwall.api.schemas.agents import (
    AgentCreate,
    AgentToolsetParams,
    AgentUpdate,
    CustomToolParams,
    McpServerParams,
    McpToolsetParams,
    ModelConfigParams,
    SkillParams,
    ToolsetDefaultConfig,
    check_tools,
)
from inwall.control.pages import patch_metadata
from inwall.errors import InvalidInput

__all__ = [
    "agent_body",
    "apply_update",
    "normalize_mcp_servers",
    "normalize_model",
    "normalize_skills",
    "normalize_tools",
    "recheck_tools",
    "render_agent",
]

DEFAULT_EFFORT = "high"
AGENT_TOOLSET_DEFAULT_POLICY = "always_allow"
MCP_TOOLSET_DEFAULT_POLICY = "always_ask"


def normalize_model(model: str | ModelConfigParams) -> dict[str, Any]:
    if isinstance(model, str):
        return {"id": model, "effort": {"type": DEFAULT_EFFORT}, "inference_geo": None, "speed": "standard"}
    effort = model.effort
    effort_type = DEFAULT_EFFORT if effort is None else (effort if isinstance(effort, str) else effort.type)
    return {
        "id": model.id,
        "effort": {"type": effort_type},
        "inference_geo": model.inference_geo,
        "speed": model.speed or "standard",
    }


def _default_config(cfg: ToolsetDefaultConfig | None, default_policy: str) -> dict[str, Any]:
    enabled = True if cfg is None or cfg.enabled is None else cfg.enabled
    policy = cfg.permission_policy.type if cfg and cfg.permission_policy else default_policy
    return {"enabled": enabled, "permission_policy": {"type": policy}}


def _toolset(params: AgentToolsetParams) -> dict[str, Any]:
    default = _default_config(params.default_config, AGENT_TOOLSET_DEFAULT_POLICY)
    configs = []
    for c in params.configs:
        entry: dict[str, Any] = {
            "name": c.name,
            "type": c.name,
            "enabled": default["enabled"] if c.enabled is None else c.enabled,
            "permission_policy": (
                {"type": c.permission_policy.type}
                if c.permission_policy
                else dict(default["permission_policy"])
            ),
        }
        for extra in ("allowed_domains", "blocked_domains", "max_content_tokens", "url_sources"):
            value = getattr(c, extra)
            if value is not None:
                entry[extra] = value
        if c.user_location is not None:
            entry["user_location"] = c.user_location.model_dump(mode="json")
        configs.append(entry)
    return {"type": "agent_toolset_20260401", "default_config": default, "configs": configs}


def _mcp_toolset(params: McpToolsetParams) -> dict[str, Any]:
    default = _default_config(params.default_config, MCP_TOOLSET_DEFAULT_POLICY)
    configs = [
        {
            "name": c.name,
            "enabled": default["enabled"] if c.enabled is None else c.enabled,
            "permission_policy": (
                {"type": c.permission_policy.type}
                if c.permission_policy
                else dict(default["permission_policy"])
            ),
        }
        for c in params.configs
    ]
    return {
        "type": "mcp_toolset",
        "mcp_server_name": params.mcp_server_name,
        "default_config": default,
        "configs": configs,
    }


def _custom(params: CustomToolParams) -> dict[str, Any]:
    return {
        "type": "custom",
        "name": params.name,
        "description": params.description,
        "input_schema": params.input_schema.model_dump(mode="json", exclude_none=True),
    }


def normalize_tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for t in tools:
        if isinstance(t, AgentToolsetParams):
            out.append(_toolset(t))
        elif isinstance(t, McpToolsetParams):
            out.append(_mcp_toolset(t))
        else:
            out.append(_custom(t))
    return out


def normalize_mcp_servers(servers: list[McpServerParams]) -> list[dict[str, Any]]:
    return [{"type": "url", "name": s.name, "url": s.url} for s in servers]


def normalize_skills(skills: list[SkillParams]) -> list[dict[str, Any]]:
    return [{"type": s.type, "skill_id": s.skill_id, "version": s.version or "latest"} for s in skills]


def agent_body(params: AgentCreate) -> dict[str, Any]:
    return {
        "name": params.name,
        "description": params.description,
        "system": params.system,
        "model": normalize_model(params.model),
        "tools": normalize_tools(params.tools),
        "mcp_servers": normalize_mcp_servers(params.mcp_servers),
        "skills": normalize_skills(params.skills),
        "metadata": dict(params.metadata),
        "execution_identity": (
            params.execution_identity.model_dump(mode="json")
            if params.execution_identity
            else {"type": "service_account"}
        ),
        "multiagent": None,
    }


def apply_update(body: dict[str, Any], params: AgentUpdate) -> tuple[dict[str, Any], bool]:
    """Return the new body and whether anything changed (a no-op update keeps the version)."""
    new = copy.deepcopy(body)
    fields = params.model_fields_set
    if "name" in fields and params.name is not None:
        new["name"] = params.name
    if "model" in fields and params.model is not None:
        new["model"] = normalize_model(params.model)
    for key in ("description", "system"):
        if key in fields:
            value = getattr(params, key)
            new[key] = value if value else None
    if "tools" in fields:
        new["tools"] = normalize_tools(params.tools or [])
    if "mcp_servers" in fields:
        new["mcp_servers"] = normalize_mcp_servers(params.mcp_servers or [])
    if "skills" in fields:
        new["skills"] = normalize_skills(params.skills or [])
    if "execution_identity" in fields:
        ei = params.execution_identity
        new["execution_identity"] = ei.model_dump(mode="json") if ei else {"type": "service_account"}
    if "metadata" in fields and params.metadata is not None:
        new["metadata"] = patch_metadata(new.get("metadata") or {}, params.metadata)
    if "tools" in fields or "mcp_servers" in fields:
        recheck_tools(new["tools"], new["mcp_servers"])
    return new, new != body


def recheck_tools(tools: list[dict[str, Any]], servers: list[dict[str, Any]]) -> None:
    """Cross-field rules on stored (normalised) tools and servers, after an update replaced one of them."""
    from pydantic import TypeAdapter, ValidationError

    from inwall.api.schemas.agents import ToolParams

    adapter: TypeAdapter[Any] = TypeAdapter(ToolParams)
    try:
        check_tools(
            [adapter.validate_python(_as_params(t)) for t in tools],
            [McpServerParams.model_validate(d) for d in servers],
        )
    except (ValueError, ValidationError) as exc:
        raise InvalidInput(str(exc)) from exc


def _as_params(tool: dict[str, Any]) -> dict[str, Any]:
    """Enough of a stored tool to re-run the cross-field checks (names and server references)."""
    if tool["type"] == "custom":
        return {k: tool[k] for k in ("type", "name", "description", "input_schema")}
    if tool["type"] == "mcp_toolset":
        return {"type": "mcp_toolset", "mcp_server_name": tool["mcp_server_name"]}
    return {"type": tool["type"]}


def render_agent(
    agent_id: str,
    version: int,
    body: dict[str, Any],
    created_at: str,
    updated_at: str,
    archived_at: str | None,
) -> dict[str, Any]:
    return {
        "type": "agent",
        "id": agent_id,
        "version": version,
        **body,
        "created_at": created_at,
        "updated_at": updated_at,
        "archived_at": archived_at,
    }
