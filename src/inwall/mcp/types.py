"""The seam between the turn loop and MCP servers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from inwall.agent.catalog import McpToolInfo
from inwall.errors import InwallError

__all__ = ["McpCallResult", "McpClientPool", "McpFailure", "McpServerRef"]


@dataclass(frozen=True)
class McpServerRef:
    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)  # static credentials; never logged


@dataclass(frozen=True)
class McpCallResult:
    content: list[dict[str, Any]]
    is_error: bool


class McpFailure(InwallError):
    """The server could not be reached or refused our credentials; reported as a session.error."""

    def __init__(self, server: str, kind: Literal["connection", "authentication"], message: str) -> None:
        super().__init__(message)
        self.server = server
        self.kind = kind

    @property
    def session_error_type(self) -> str:
        return (
            "mcp_authentication_failed_error"
            if self.kind == "authentication"
            else "mcp_connection_failed_error"
        )


class McpClientPool(Protocol):
    async def list_tools(self, session_id: str, server: McpServerRef) -> list[McpToolInfo]: ...

    async def call_tool(
        self,
        session_id: str,
        server: McpServerRef,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        timeout_s: float,
        meta: Callable[[int], Mapping[str, Any] | None] | None = None,
    ) -> McpCallResult:
        """``meta(attempt)`` builds each attempt's ``_meta`` (a retry needs a fresh identity token)."""
        ...

    def tools_changed(self, session_id: str, server: str) -> bool:
        """True once after the server sent notifications/tools/list_changed (re-list at a turn boundary)."""
        ...

    async def forget(self, session_id: str) -> None: ...
