"""Claude through the Messages API, with the official ``anthropic`` SDK.

The loop already speaks Messages shapes, so the request goes out nearly as is;
the work here is the edges: credentials resolved once and never echoed, the
SDK's retries switched off (the loop retries with its own backoff and reports
``session.error`` while it does), and every SDK failure translated into a
``ModelError`` (policy in ``_errors``).

Only ``text`` and ``tool_use`` blocks come back: the loop cannot replay other
block types (thinking, server tools), and we never ask for them.
``model_context_window_exceeded`` is reported as ``max_tokens`` (both mean "the
model was cut off"); a missing stop reason as ``end_turn``.

Requests are not streamed.  ``timeout_s`` bounds each call; the SDK's refusal to
send long non-streaming requests does not apply because we set the timeout.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import anthropic
from anthropic.types import Message as SDKMessage
from anthropic.types import TextBlock, ToolUseBlock

from inwall.agent.models import _errors
from inwall.agent.models.base import (
    ContentBlock,
    ModelRequest,
    ModelRequestFailed,
    ModelResponse,
    Usage,
)

__all__ = ["DEFAULT_TIMEOUT_S", "AnthropicProvider"]

DEFAULT_TIMEOUT_S = 600.0
_LABEL = "the Anthropic API"
_StopReason = Literal["end_turn", "tool_use", "max_tokens", "refusal", "stop_sequence", "pause_turn"]
_STOP_REASONS: dict[str | None, _StopReason] = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
    "refusal": "refusal",
    "stop_sequence": "stop_sequence",
    "pause_turn": "pause_turn",
}


class AnthropicProvider:
    """One ``AsyncAnthropic`` client (one connection pool) shared by every session using Claude."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._api_key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
        self._base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self._closed = False
        self._client: anthropic.AsyncAnthropic | None = None
        if self._api_key is not None:
            # Always pass the key explicitly so the SDK never goes looking for profile
            # files or federation tokens we did not configure.
            self._client = anthropic.AsyncAnthropic(
                api_key=self._api_key,
                base_url=self._base_url,
                max_retries=max_retries,
                timeout=timeout_s,
            )

    def __repr__(self) -> str:
        return f"AnthropicProvider(base_url={_errors.safe_origin(self._base_url)!r})"

    async def step(self, request: ModelRequest) -> ModelResponse:
        if self._closed:
            raise ModelRequestFailed(f"{_LABEL} provider is closed")
        client = self._client
        if client is None:
            raise ModelRequestFailed(
                "no Anthropic API key is configured: set ANTHROPIC_API_KEY or the server's model settings"
            )
        kwargs: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": m.role, "content": list(m.content)} for m in request.messages],
        }
        if request.system:
            kwargs["system"] = request.system
        if request.tools:
            kwargs["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": dict(t.input_schema)}
                for t in request.tools
            ]
        try:
            message = await client.messages.create(**kwargs)
        except anthropic.APIStatusError as exc:
            _errors.scrub_exception(exc, [self._api_key])
            raise _errors.status_error(
                label=_LABEL,
                status=exc.status_code,
                headers=exc.response.headers,
                error_type=exc.type,
                api_message=exc.api_message,
                request_id=exc.request_id,
                secrets=[self._api_key],
            ) from exc
        except anthropic.APIConnectionError as exc:
            _errors.scrub_exception(exc, [self._api_key])
            raise _errors.connection_error(
                label=_LABEL,
                base_url=self._base_url or str(client.base_url),
                timed_out=isinstance(exc, anthropic.APITimeoutError),
            ) from exc
        except (anthropic.AnthropicError, ValueError, TypeError) as exc:
            # Response validation, or the SDK refusing our arguments before sending.
            _errors.scrub_exception(exc, [self._api_key])
            detail = _errors.redact(str(exc), [self._api_key])[: _errors.MAX_DETAIL_CHARS]
            raise ModelRequestFailed(f"{_LABEL} call failed: {type(exc).__name__}: {detail}") from exc
        try:
            return _to_response(message)
        except (AttributeError, TypeError, ValueError) as exc:
            # The SDK builds models without validating, so a broken proxy's 200 lands here.
            raise ModelRequestFailed(f"{_LABEL} answered with a malformed message: {exc}") from exc

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _to_response(message: SDKMessage) -> ModelResponse:
    content: list[ContentBlock] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            content.append({"type": "text", "text": block.text})
        elif isinstance(block, ToolUseBlock):
            content.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": dict(block.input)}
            )
    usage = message.usage
    return ModelResponse(
        content=content,
        stop_reason=_STOP_REASONS.get(message.stop_reason, "end_turn"),
        usage=Usage(
            input_tokens=usage.input_tokens or 0,
            output_tokens=usage.output_tokens or 0,
            cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
            cache_read_input_tokens=usage.cache_read_input_tokens or 0,
        ),
    )
