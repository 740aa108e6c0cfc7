"""Session create/update bodies and the events clients send."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from inwall.api.schemas.agents import (
    McpServerParams,
    ModelParam,
    SkillParams,
    ToolParams,
    check_tools,
)
from inwall.api.schemas.common import ContentBlock, Metadata, MetadataPatch, ResultBlock, Strict, TextBlock

__all__ = [
    "AgentRef",
    "AgentWithOverrides",
    "EventsSend",
    "SessionCreate",
    "SessionUpdate",
    "UserEvent",
]

Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class AgentRef(Strict):
    type: Literal["agent"]
    id: Id
    version: Annotated[int, Field(ge=1)] | None = None


class AgentWithOverrides(Strict):
    type: Literal["agent_with_overrides"]
    id: Id
    version: Annotated[int, Field(ge=1)] | None = None
    model: ModelParam | None = None
    system: str | None = None
    tools: list[ToolParams] | None = None
    mcp_servers: list[McpServerParams] | None = None
    skills: list[SkillParams] | None = None


class UserMessage(Strict):
    type: Literal["user.message"]
    content: Annotated[list[ContentBlock], Field(min_length=1)]


class UserInterrupt(Strict):
    type: Literal["user.interrupt"]
    session_thread_id: str | None = None


class UserToolConfirmation(Strict):
    type: Literal["user.tool_confirmation"]
    tool_use_id: Id
    result: Literal["allow", "deny"]
    deny_message: str | None = None

    @model_validator(mode="after")
    def _deny_only(self) -> UserToolConfirmation:
        if self.deny_message is not None and self.result != "deny":
            raise ValueError("deny_message is only allowed with result 'deny'")
        return self


class UserCustomToolResult(Strict):
    type: Literal["user.custom_tool_result"]
    custom_tool_use_id: Id
    content: list[ResultBlock] | None = None
    is_error: bool | None = None


class UserToolResult(Strict):
    type: Literal["user.tool_result"]
    tool_use_id: Id
    content: list[ResultBlock] | None = None
    is_error: bool | None = None


class SystemMessage(Strict):
    type: Literal["system.message"]
    content: Annotated[list[TextBlock], Field(min_length=1)]


class DefineOutcome(Strict):
    type: Literal["user.define_outcome"]
    description: str
    rubric: dict[str, Any]
    max_iterations: int | None = None


UserEvent = Annotated[
    UserMessage
    | UserInterrupt
    | UserToolConfirmation
    | UserCustomToolResult
    | UserToolResult
    | SystemMessage
    | DefineOutcome,
    Field(discriminator="type"),
]


class EventsSend(Strict):
    events: Annotated[list[UserEvent], Field(min_length=1, max_length=50)]

    @model_validator(mode="after")
    def _system_last(self) -> EventsSend:
        kinds = [e.type for e in self.events]
        if kinds.count("system.message") > 1:
            raise ValueError("at most one system.message per request")
        if "system.message" in kinds:
            i = kinds.index("system.message")
            if (
                i != len(kinds) - 1
                or i == 0
                or kinds[i - 1]
                not in (
                    "user.message",
                    "user.tool_result",
                    "user.custom_tool_result",
                )
            ):
                raise ValueError(
                    "system.message must be the last event and directly follow a user.message, "
                    "user.tool_result or user.custom_tool_result"
                )
        return self


class SessionCreate(Strict):
    agent: Annotated[Id, StringConstraints(min_length=1)] | AgentRef | AgentWithOverrides
    environment_id: Id
    title: Annotated[str, StringConstraints(max_length=512)] | None = None
    metadata: Metadata = Field(default_factory=dict)
    initial_events: Annotated[list[UserMessage | DefineOutcome], Field(max_length=50)] = Field(
        default_factory=list
    )
    budget: dict[str, Any] | None = None
    resources: list[dict[str, Any]] = Field(default_factory=list)
    vault_ids: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _supported(self) -> SessionCreate:
        if self.budget is not None:
            raise ValueError("budget limits are not supported by inwall (sessions are uncapped)")
        if self.resources:
            raise ValueError(
                "session resources (github_repository, file, memory_store) are not supported by inwall yet"
            )
        if self.vault_ids:
            raise ValueError("vault_ids are not supported by inwall")
        if isinstance(self.agent, AgentWithOverrides) and (
            self.agent.tools is not None or self.agent.mcp_servers is not None
        ):
            check_tools(self.agent.tools or [], self.agent.mcp_servers or [])
        return self


class SessionAgentUpdate(Strict):
    tools: list[ToolParams] | None = None
    mcp_servers: list[McpServerParams] | None = None


class SessionUpdate(Strict):
    agent: SessionAgentUpdate | None = None
    metadata: MetadataPatch | None = None
    title: Annotated[str, StringConstraints(max_length=512)] | None = None
    budget: dict[str, Any] | None = None
    vault_ids: list[str] | None = None

    @model_validator(mode="after")
    def _supported(self) -> SessionUpdate:
        if self.budget is not None:
            raise ValueError("budget limits are not supported by inwall")
        if self.vault_ids is not None:
            raise ValueError("vault_ids are not supported")
        return self
