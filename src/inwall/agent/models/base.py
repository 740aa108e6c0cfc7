"""One interface for every model provider the turn loop can call.

The turn loop speaks Anthropic Messages shapes internally (content blocks of
type ``text``, ``tool_use`` and ``tool_result``), because the Managed Agents
event log maps onto them one to one; providers translate at their edge.
Providers are stateless between calls: everything a step needs is in the
``ModelRequest``, so a server restart can repeat a step without losing state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from inwall.errors import InwallError

__all__ = [
    "ContentBlock",
    "Message",
    "ModelError",
    "ModelOverloaded",
    "ModelProvider",
    "ModelRateLimited",
    "ModelRequest",
    "ModelRequestFailed",
    "ModelResponse",
    "ToolSpec",
    "Usage",
]

# Blocks are plain dicts in Anthropic Messages form:
#   {"type": "text", "text": str}
#   {"type": "tool_use", "id": str, "name": str, "input": dict}
#   {"type": "tool_result", "tool_use_id": str,
#    "content": [ {"type":"text","text":...}, ... ], "is_error": bool}
#   {"type": "image", "source": {...}} / {"type": "document", "source": {...}}  (user content only)
ContentBlock = dict[str, Any]


@dataclass(frozen=True)
class Message:
    role: Literal["user", "assistant"]
    content: Sequence[ContentBlock]


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model sees it. ``name`` is the exact name the model must call."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclass(frozen=True)
class ModelRequest:
    model: str  # the provider-specific model id (the ``openai:`` prefix already stripped)
    system: str | None
    messages: Sequence[Message]
    tools: Sequence[ToolSpec]  # deterministic order; the loop sorts them
    max_tokens: int = 8192
    metadata: Mapping[str, str] = field(default_factory=dict)  # e.g. session_id, for logging only


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


@dataclass(frozen=True)
class ModelResponse:
    content: Sequence[ContentBlock]  # only "text" and "tool_use" blocks
    stop_reason: Literal["end_turn", "tool_use", "max_tokens", "refusal", "stop_sequence", "pause_turn"]
    usage: Usage = field(default_factory=Usage)


class ModelError(InwallError):
    """Base for provider failures; ``retryable`` tells the loop whether backing off can help."""

    retryable = False
    session_error_type = "unknown_error"  # the session.error ``type`` the loop reports

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        # Per-instance override: a 5xx or a dropped connection is a ``ModelRequestFailed``
        # (its session.error type) that backing off can still cure.
        if retryable is not None:
            self.retryable = retryable


class ModelOverloaded(ModelError):
    retryable = True
    session_error_type = "model_overloaded_error"


class ModelRateLimited(ModelError):
    retryable = True
    session_error_type = "model_rate_limited_error"


class ModelRequestFailed(ModelError):
    """The provider refused the request (bad request, auth, unknown model) or broke.

    Retrying will not help, unless the instance says ``retryable`` (a 5xx, a lost connection).
    """

    session_error_type = "model_request_failed_error"


@runtime_checkable
class ModelProvider(Protocol):
    """Implementations must translate every provider error into a ``ModelError`` subclass
    and must never put credentials into error messages."""

    async def step(self, request: ModelRequest) -> ModelResponse: ...

    async def aclose(self) -> None: ...
