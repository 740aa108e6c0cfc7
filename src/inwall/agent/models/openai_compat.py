"""Any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama, llama.cpp…).

The loop speaks Anthropic Messages shapes; this module translates both ways at
the edge, through the official ``openai`` SDK.  The mapping, and the places
where Chat Completions cannot say what Messages says:

Request
  * ``system`` becomes the first message, role ``system``.
  * tools become ``{"type": "function", "function": {name, description,
    parameters: input_schema}}``.
  * assistant ``text`` blocks are joined with ``"\\n"`` into ``content``;
    ``tool_use`` blocks become ``tool_calls`` (arguments as JSON text); other
    assistant blocks (thinking…) are dropped.
  * a user message's ``tool_result`` blocks become ``role: "tool"`` messages,
    in order, *before* the rest of that message: Chat Completions requires them
    to follow the assistant's ``tool_calls`` directly.  A result's text blocks
    are joined with ``"\\n"`` (string content is one block); an image inside a
    result becomes ``[image omitted: …]`` because tool messages carry text only;
    an error result is prefixed ``Error: `` since there is no ``is_error`` flag.
  * the remaining user blocks keep their order: ``text`` as text parts, base64
    or URL ``image`` as ``image_url`` parts (a data URL for base64), a plain-text
    ``document`` inlined as text, any other block as a ``[… omitted: …]`` text
    placeholder so the model knows something was there.
  * ``max_tokens`` is sent as ``max_tokens`` (what vLLM and Ollama read); pass
    ``max_tokens_param="max_completion_tokens"`` for OpenAI reasoning models.

Response
  * ``content`` becomes one ``text`` block, ``refusal`` another; each
    ``tool_calls`` entry becomes a ``tool_use`` block.  Arguments that are not
    a JSON object are kept as ``{"_raw_arguments": "<text>"}`` so the tool's
    input validation reports the problem back to the model instead of the call
    vanishing.  A missing call id gets a fresh ``toolu_`` id.
  * ``finish_reason``: ``tool_calls``/``function_call`` → ``tool_use``
    (and so does ``stop`` when tool calls are present: Ollama does this),
    ``length`` → ``max_tokens``, ``content_filter`` → ``refusal``, anything
    else → ``end_turn``.
  * usage: ``prompt_tokens`` minus cached tokens → ``input_tokens`` (Anthropic
    counts cache reads apart), cached → ``cache_read_input_tokens``,
    ``completion_tokens`` → ``output_tokens``.

Errors follow the policy in ``_errors`` (429, 503/529, other 5xx, 4xx).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import openai
from openai.types.chat import ChatCompletion

from inwall.agent.models import _errors
from inwall.agent.models.base import (
    ContentBlock,
    Message,
    ModelRequest,
    ModelRequestFailed,
    ModelResponse,
    ToolSpec,
    Usage,
)
from inwall.ids import new_id

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DUMMY_API_KEY",
    "OpenAICompatProvider",
    "from_chat_completion",
    "to_chat_messages",
    "to_chat_tools",
]

DEFAULT_TIMEOUT_S = 600.0
# vLLM and Ollama accept any key, but the SDK refuses to start without one.
DUMMY_API_KEY = "inwall-no-key"
_LABEL = "the OpenAI-compatible API"

ChatMessage = dict[str, Any]
_StopReason = Literal["end_turn", "tool_use", "max_tokens", "refusal", "stop_sequence", "pause_turn"]


class OpenAICompatProvider:
    """One ``AsyncOpenAI`` client (one connection pool) per endpoint."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
    ) -> None:
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or DUMMY_API_KEY
        self._base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self._max_tokens_param = max_tokens_param
        self._client: openai.AsyncOpenAI | None = openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self._base_url,
            max_retries=max_retries,
            timeout=timeout_s,
        )

    def __repr__(self) -> str:
        return f"OpenAICompatProvider(base_url={_errors.safe_origin(self._base_url)!r})"

    async def step(self, request: ModelRequest) -> ModelResponse:
        client = self._client
        if client is None:
            raise ModelRequestFailed(f"{_LABEL} provider is closed")
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": to_chat_messages(request.system, request.messages),
            self._max_tokens_param: request.max_tokens,
        }
        if request.tools:
            kwargs["tools"] = to_chat_tools(request.tools)
        secrets = [self._api_key]
        try:
            completion = await client.chat.completions.create(**kwargs)
        except openai.APIStatusError as exc:
            _errors.scrub_exception(exc, secrets)
            raise _errors.status_error(
                label=_LABEL,
                status=exc.status_code,
                headers=exc.response.headers,
                error_type=exc.type,
                api_message=_openai_message(exc.body),
                request_id=exc.request_id,
                secrets=secrets,
            ) from exc
        except openai.APIConnectionError as exc:
            _errors.scrub_exception(exc, secrets)
            raise _errors.connection_error(
                label=_LABEL,
                base_url=self._base_url or str(client.base_url),
                timed_out=isinstance(exc, openai.APITimeoutError),
            ) from exc
        except (openai.OpenAIError, ValueError, TypeError) as exc:
            _errors.scrub_exception(exc, secrets)
            detail = _errors.redact(str(exc), secrets)[: _errors.MAX_DETAIL_CHARS]
            raise ModelRequestFailed(f"{_LABEL} call failed: {type(exc).__name__}: {detail}") from exc
        try:
            return from_chat_completion(completion)
        except (AttributeError, TypeError, ValueError) as exc:
            # The SDK builds models without validating, so a broken server's 200 lands here.
            raise ModelRequestFailed(f"{_LABEL} answered with a malformed completion: {exc}") from exc

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _openai_message(body: object) -> str | None:
    # The SDK hands us the inner ``error`` object when there is one.
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str):
            return message
        inner = body.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    if isinstance(body, str):
        return body
    return None


# --- request ---------------------------------------------------------------


def to_chat_tools(tools: Iterable[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.input_schema),
            },
        }
        for t in tools
    ]


def _blocks(content: object) -> list[ContentBlock]:
    """Content as a list of blocks; a bare string counts as one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list | tuple):
        return [b for b in content if isinstance(b, dict)]
    return []


def _placeholder(block: ContentBlock, why: str) -> str:
    return f"[{block.get('type', 'content')} omitted: {why}]"


def _tool_result_text(block: ContentBlock) -> str:
    parts: list[str] = []
    for inner in _blocks(block.get("content", "")):
        if inner.get("type") == "text":
            parts.append(str(inner.get("text", "")))
        else:
            parts.append(_placeholder(inner, "tool messages carry text only"))
    text = "\n".join(parts)
    if block.get("is_error"):
        text = f"Error: {text}"
    return text


def _image_part(block: ContentBlock) -> dict[str, Any] | None:
    source = block.get("source")
    if not isinstance(source, dict):
        return None
    if source.get("type") == "base64" and source.get("data"):
        url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    elif source.get("type") == "url" and source.get("url"):
        url = str(source["url"])
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _user_part(block: ContentBlock) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": str(block.get("text", ""))}
    if kind == "image":
        part = _image_part(block)
        if part is not None:
            return part
        return {"type": "text", "text": _placeholder(block, "this image source cannot be sent here")}
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text":
            return {"type": "text", "text": str(source.get("data", ""))}
        return {"type": "text", "text": _placeholder(block, "this endpoint does not accept documents")}
    return {"type": "text", "text": _placeholder(block, "not supported by this endpoint")}


def _user_messages(content: object) -> list[ChatMessage]:
    blocks = _blocks(content)
    out: list[ChatMessage] = [
        {"role": "tool", "tool_call_id": str(b.get("tool_use_id", "")), "content": _tool_result_text(b)}
        for b in blocks
        if b.get("type") == "tool_result"
    ]
    parts = [_user_part(b) for b in blocks if b.get("type") != "tool_result"]
    if parts:
        if all(p["type"] == "text" for p in parts):
            # Plain string content is what every compatible server understands.
            out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _assistant_message(content: object) -> ChatMessage | None:
    blocks = _blocks(content)
    texts = [str(b.get("text", "")) for b in blocks if b.get("type") == "text"]
    calls = [
        {
            "id": str(b.get("id", "")),
            "type": "function",
            "function": {
                "name": str(b.get("name", "")),
                "arguments": json.dumps(b.get("input", {}), ensure_ascii=False),
            },
        }
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    if not texts and not calls:
        return None
    message: ChatMessage = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def to_chat_messages(system: str | None, messages: Sequence[Message]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    if system:
        out.append({"role": "system", "content": system})
    for message in messages:
        if message.role == "assistant":
            translated = _assistant_message(message.content)
            if translated is not None:
                out.append(translated)
        else:
            out.extend(_user_messages(message.content))
    return out


# --- response --------------------------------------------------------------


def _tool_input(arguments: str | None) -> dict[str, Any]:
    if not arguments or not arguments.strip():
        return {}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {"_raw_arguments": arguments}
    if isinstance(parsed, dict):
        return parsed
    return {"_raw_arguments": arguments}


def _stop_reason(finish_reason: str | None, *, called: bool) -> _StopReason:
    if finish_reason == "length":
        return "max_tokens"
    if called or finish_reason in ("tool_calls", "function_call"):
        return "tool_use"
    if finish_reason == "content_filter":
        return "refusal"
    return "end_turn"


def from_chat_completion(completion: ChatCompletion) -> ModelResponse:
    if not completion.choices:
        raise ModelRequestFailed(f"{_LABEL} answered with no choices")
    choice = completion.choices[0]
    message = choice.message
    content: list[ContentBlock] = []
    if message.content:
        content.append({"type": "text", "text": message.content})
    if message.refusal:
        content.append({"type": "text", "text": message.refusal})
    for call in message.tool_calls or []:
        function = getattr(call, "function", None)
        if function is not None:
            name, arguments = str(function.name), function.arguments
        else:  # a "custom" (free-text) tool call; we never declare those, but keep the text
            custom = getattr(call, "custom", None)
            name = str(getattr(custom, "name", ""))
            arguments = json.dumps({"input": getattr(custom, "input", "")})
        content.append(
            {
                "type": "tool_use",
                "id": call.id or new_id("toolu"),
                "name": name,
                "input": _tool_input(arguments),
            }
        )
    called = any(b["type"] == "tool_use" for b in content)
    stop = _stop_reason(choice.finish_reason, called=called)
    if message.refusal and not called:
        stop = "refusal"
    usage = Usage()
    if completion.usage is not None:
        cached = 0
        details = completion.usage.prompt_tokens_details
        if details is not None and details.cached_tokens:
            cached = details.cached_tokens
        usage = Usage(
            input_tokens=max(0, (completion.usage.prompt_tokens or 0) - cached),
            output_tokens=completion.usage.completion_tokens or 0,
            cache_read_input_tokens=cached,
        )
    return ModelResponse(content=content, stop_reason=stop, usage=usage)
