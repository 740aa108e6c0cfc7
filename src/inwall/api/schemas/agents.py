"""Agent create/update bodies (``agent_create_params``, ``agent_update_params``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from inwall.api.schemas.common import Metadata, MetadataPatch, Strict
from inwall.errors import InwallError

__all__ = [
    "AgentCreate",
    "AgentToolsetParams",
    "AgentUpdate",
    "CustomToolParams",
    "McpServerParams",
    "McpToolsetParams",
    "ModelConfigParams",
    "SkillParams",
    "ToolParams",
]

BUILTIN_TOOL_NAMES = ("bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search")
EffortName = Literal["low", "medium", "high", "xhigh", "max"]
Name = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class EffortParams(Strict):
    type: EffortName


class ModelConfigParams(Strict):
    id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    effort: EffortName | EffortParams | None = None
    inference_geo: str | None = None
    speed: Literal["standard", "fast"] | None = None


ModelParam = Annotated[str, StringConstraints(min_length=1, max_length=256)] | ModelConfigParams


class AlwaysAllow(Strict):
    type: Literal["always_allow"]


class AlwaysAsk(Strict):
    type: Literal["always_ask"]


class Auto(Strict):
    type: Literal["auto"]


PermissionPolicy = Annotated[AlwaysAllow | AlwaysAsk | Auto, Field(discriminator="type")]


class ToolsetDefaultConfig(Strict):
    enabled: bool | None = None
    permission_policy: PermissionPolicy | None = None


class UserLocation(Strict):
    type: Literal["approximate"]
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None


class AgentToolConfigParams(Strict):
    """One per-tool override; keyed by ``name`` (``type``, when sent, must equal it)."""

    name: Literal["bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search"]
    type: Literal["bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search"] | None = None
    enabled: bool | None = None
    permission_policy: PermissionPolicy | None = None
    allowed_domains: Annotated[list[str], Field(max_length=64)] | None = None
    blocked_domains: Annotated[list[str], Field(max_length=64)] | None = None
    max_content_tokens: int | None = None
    url_sources: dict[str, Any] | None = None
    user_location: UserLocation | None = None

    @model_validator(mode="after")
    def _consistent(self) -> AgentToolConfigParams:
        if self.type is not None and self.type != self.name:
            raise ValueError(f"config type {self.type!r} does not match its name {self.name!r}")
        web_only = {"allowed_domains", "blocked_domains"} & self.model_fields_set
        if web_only and self.name not in ("web_fetch", "web_search"):
            raise ValueError(f"{sorted(web_only)} only apply to web_fetch and web_search")
        if self.allowed_domains and self.blocked_domains:
            raise ValueError("allowed_domains and blocked_domains are mutually exclusive")
        if {"max_content_tokens", "url_sources"} & self.model_fields_set and self.name != "web_fetch":
            raise ValueError("max_content_tokens and url_sources only apply to web_fetch")
        if "user_location" in self.model_fields_set and self.name != "web_search":
            raise ValueError("user_location only applies to web_search")
        return self


class AgentToolsetParams(Strict):
    type: Literal["agent_toolset_20260401"]
    configs: list[AgentToolConfigParams] = Field(default_factory=list)
    default_config: ToolsetDefaultConfig | None = None

    @model_validator(mode="after")
    def _unique(self) -> AgentToolsetParams:
        names = [c.name for c in self.configs]
        if len(names) != len(set(names)):
            raise ValueError("each tool may appear at most once in configs")
        return self


class McpToolConfigParams(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    enabled: bool | None = None
    permission_policy: PermissionPolicy | None = None


class McpToolsetParams(Strict):
    type: Literal["mcp_toolset"]
    mcp_server_name: Name
    configs: list[McpToolConfigParams] = Field(default_factory=list)
    default_config: ToolsetDefaultConfig | None = None


class CustomToolInputSchema(Strict):
    model_config = Strict.model_config | {"extra": "allow"}
    type: Literal["object"]
    properties: dict[str, Any] | None = None
    required: list[str] | None = None


class CustomToolParams(Strict):
    type: Literal["custom"]
    name: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str
    input_schema: CustomToolInputSchema


ToolParams = Annotated[AgentToolsetParams | McpToolsetParams | CustomToolParams, Field(discriminator="type")]


class McpServerParams(Strict):
    type: Literal["url"]
    name: Name
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class SkillParams(Strict):
    type: Literal["anthropic", "custom"]
    skill_id: Annotated[str, StringConstraints(min_length=1)]
    version: str | None = None


class ServiceAccount(Strict):
    type: Literal["service_account"]


class AwsRole(Strict):
    type: Literal["aws_role"]
    role_arn: Annotated[str, StringConstraints(min_length=1, max_length=2048)]


ExecutionIdentity = Annotated[ServiceAccount | AwsRole, Field(discriminator="type")]


def check_tools(tools: list[Any] | None, servers: list[McpServerParams] | None) -> None:
    """Cross-field rules the SDK documents: unique names, every server used, every server defined."""
    servers = servers or []
    tools = tools or []
    names = [s.name for s in servers]
    if len(servers) > 20:
        raise ValueError("at most 20 mcp_servers")
    if len(names) != len(set(names)):
        raise ValueError("mcp_servers names must be unique")
    referenced = [t.mcp_server_name for t in tools if isinstance(t, McpToolsetParams)]
    for name in referenced:
        if name not in names:
            raise ValueError(f"mcp_toolset references unknown mcp server {name!r}")
    if len(referenced) != len(set(referenced)):
        raise ValueError("each mcp server may have at most one mcp_toolset")
    for name in names:
        if name not in referenced:
            raise ValueError(f"mcp server {name!r} is not referenced by any mcp_toolset")
    customs = [t.name for t in tools if isinstance(t, CustomToolParams)]
    if len(customs) != len(set(customs)):
        raise ValueError("custom tool names must be unique")
    clash = set(customs) & set(BUILTIN_TOOL_NAMES)
    if clash:
        raise ValueError(f"custom tools may not reuse built-in tool names: {sorted(clash)}")
    if sum(isinstance(t, AgentToolsetParams) for t in tools) > 1:
        raise ValueError("at most one agent_toolset_20260401")
    if len(tools) > 256:
        raise ValueError("at most 256 tools")


def check_model(model: str | ModelConfigParams | None) -> None:
    """Refuse at create time a model id no provider can serve (``openai:`` with no model, blanks)."""
    if model is None:
        return
    from inwall.agent.models.registry import parse_model_id

    try:
        parse_model_id(model if isinstance(model, str) else model.id)
    except InwallError as exc:
        raise ValueError(str(exc)) from exc


class AgentCreate(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    model: ModelParam
    description: str | None = None
    system: str | None = None
    tools: list[ToolParams] = Field(default_factory=list)
    mcp_servers: list[McpServerParams] = Field(default_factory=list)
    skills: list[SkillParams] = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)
    execution_identity: ExecutionIdentity | None = None
    multiagent: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _rules(self) -> AgentCreate:
        check_tools(self.tools, self.mcp_servers)
        check_model(self.model)
        if self.multiagent is not None:
            raise ValueError("multiagent orchestration is not supported by inwall yet")
        return self


class AgentUpdate(Strict):
    version: int | None = None
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    model: ModelParam | None = None
    description: str | None = None
    system: str | None = None
    tools: list[ToolParams] | None = None
    mcp_servers: list[McpServerParams] | None = None
    skills: list[SkillParams] | None = None
    metadata: MetadataPatch | None = None
    execution_identity: ExecutionIdentity | None = None
    multiagent: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _rules(self) -> AgentUpdate:
        if "name" in self.model_fields_set and self.name is None:
            raise ValueError("name cannot be cleared")
        if "model" in self.model_fields_set and self.model is None:
            raise ValueError("model cannot be cleared")
        check_model(self.model)
        if self.multiagent is not None:
            raise ValueError("multiagent orchestration is not supported by inwall yet")
        return self
