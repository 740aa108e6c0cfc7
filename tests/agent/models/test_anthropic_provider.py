"""AnthropicProvider against a fake Messages API, through the real ``anthropic`` SDK."""

from __future__ import annotations

import anthropic
import anyio
import pytest

from inwall.agent.models.anthropic import AnthropicProvider
from inwall.agent.models.base import (
    Message,
    ModelError,
    ModelOverloaded,
    ModelProvider,
    ModelRateLimited,
    ModelRequest,
    ModelRequestFailed,
    ModelResponse,
    ToolSpec,
    Usage,
)

from .fake_model_apis import (
    API_KEY,
    FakeAPI,
    Reply,
    anthropic_error,
    anthropic_message,
    closing,
    refusing_port,
)

pytestmark = pytest.mark.anyio

BASH = ToolSpec(
    name="bash",
    description="Run a command",
    input_schema={"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
)


def _request(**overrides: object) -> ModelRequest:
    fields: dict[str, object] = {
        "model": "claude-fake-1",
        "system": "be brief",
        "messages": [Message("user", [{"type": "text", "text": "hello"}])],
        "tools": [BASH],
        "max_tokens": 321,
    }
    fields.update(overrides)
    return ModelRequest(**fields)  # type: ignore[arg-type]  # test helper: fields checked by the dataclass


async def _step(
    api: FakeAPI, request: ModelRequest | None = None, *, timeout_s: float = 5.0
) -> ModelResponse:
    async with closing(AnthropicProvider(api_key=API_KEY, base_url=api.url, timeout_s=timeout_s)) as provider:
        with anyio.fail_after(5):
            return await provider.step(request or _request())


async def _fail(api: FakeAPI, *replies: Reply) -> ModelError:
    api.push(*replies)
    with pytest.raises(ModelError) as info:
        await _step(api)
    assert len(api.seen) == 1, "the SDK must not retry on its own: the loop does"
    return info.value


async def test_is_a_model_provider() -> None:
    async with closing(AnthropicProvider(api_key=API_KEY, base_url="http://127.0.0.1:9")) as provider:
        assert isinstance(provider, ModelProvider)


async def test_text_answer_and_usage(anthropic_api: FakeAPI) -> None:
    anthropic_api.push(
        anthropic_message(
            [{"type": "text", "text": "hi there"}],
            usage={
                "input_tokens": 12,
                "output_tokens": 3,
                "cache_creation_input_tokens": 5,
                "cache_read_input_tokens": 7,
            },
        )
    )
    response = await _step(anthropic_api)
    assert response.content == [{"type": "text", "text": "hi there"}]
    assert response.stop_reason == "end_turn"
    assert response.usage == Usage(12, 3, 5, 7)


async def test_request_shape_goes_out_as_messages_api(anthropic_api: FakeAPI) -> None:
    history = [
        Message("user", [{"type": "text", "text": "list files"}]),
        Message(
            "assistant",
            [
                {"type": "text", "text": "running ls"},
                {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "ls"}},
            ],
        ),
        Message(
            "user",
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "a\nb"}],
                    "is_error": False,
                }
            ],
        ),
    ]
    anthropic_api.push(anthropic_message([{"type": "text", "text": "done"}]))
    await _step(anthropic_api, _request(messages=history))
    (seen,) = anthropic_api.seen
    assert seen.path == "/v1/messages"
    assert seen.body["model"] == "claude-fake-1"
    assert seen.body["max_tokens"] == 321
    assert seen.body["system"] == "be brief"
    assert seen.body["tools"] == [
        {"name": "bash", "description": "Run a command", "input_schema": dict(BASH.input_schema)}
    ]
    assert seen.body["messages"] == [{"role": m.role, "content": list(m.content)} for m in history]
    assert "metadata" not in seen.body
    assert seen.headers.get("x-stainless-retry-count") == "0"


async def test_no_system_and_no_tools_are_omitted(anthropic_api: FakeAPI) -> None:
    anthropic_api.push(anthropic_message([{"type": "text", "text": "ok"}]))
    await _step(anthropic_api, _request(system=None, tools=[]))
    body = anthropic_api.seen[0].body
    assert "system" not in body
    assert "tools" not in body


async def test_tool_use_answer(anthropic_api: FakeAPI) -> None:
    anthropic_api.push(
        anthropic_message(
            [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "let me look"},
                {"type": "tool_use", "id": "toolu_abc", "name": "bash", "input": {"command": "ls -la"}},
                {"type": "tool_use", "id": "toolu_def", "name": "read", "input": {"path": "/x", "n": [1, 2]}},
            ],
            stop_reason="tool_use",
        )
    )
    response = await _step(anthropic_api)
    assert response.stop_reason == "tool_use"
    assert response.content == [
        {"type": "text", "text": "let me look"},
        {"type": "tool_use", "id": "toolu_abc", "name": "bash", "input": {"command": "ls -la"}},
        {"type": "tool_use", "id": "toolu_def", "name": "read", "input": {"path": "/x", "n": [1, 2]}},
    ]


@pytest.mark.parametrize(
    ("wire", "ours"),
    [
        ("end_turn", "end_turn"),
        ("max_tokens", "max_tokens"),
        ("model_context_window_exceeded", "max_tokens"),
        ("stop_sequence", "stop_sequence"),
        ("pause_turn", "pause_turn"),
        ("refusal", "refusal"),
        (None, "end_turn"),
    ],
)
async def test_stop_reasons(anthropic_api: FakeAPI, wire: str | None, ours: str) -> None:
    anthropic_api.push(anthropic_message([{"type": "text", "text": "x"}], stop_reason=wire))
    response = await _step(anthropic_api)
    assert response.stop_reason == ours


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"retry-after": "7"}, 7.0), ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5), ({}, None)],
)
async def test_429_is_rate_limited_and_honours_retry_after(
    anthropic_api: FakeAPI, headers: dict[str, str], expected: float | None
) -> None:
    error = await _fail(anthropic_api, anthropic_error(429, "rate_limit_error", "slow down", **headers))
    assert type(error) is ModelRateLimited
    assert error.retryable
    assert error.retry_after_s == expected
    assert error.session_error_type == "model_rate_limited_error"
    assert "429" in str(error)
    assert "slow down" in str(error)


async def test_529_is_overloaded(anthropic_api: FakeAPI) -> None:
    error = await _fail(
        anthropic_api, anthropic_error(529, "overloaded_error", "Overloaded", **{"retry-after": "2"})
    )
    assert type(error) is ModelOverloaded
    assert error.retryable
    assert error.retry_after_s == 2.0
    assert error.session_error_type == "model_overloaded_error"


async def test_overloaded_body_on_another_status_is_overloaded(anthropic_api: FakeAPI) -> None:
    error = await _fail(anthropic_api, anthropic_error(500, "overloaded_error", "Overloaded"))
    assert type(error) is ModelOverloaded


async def test_503_is_overloaded(anthropic_api: FakeAPI) -> None:
    error = await _fail(anthropic_api, anthropic_error(503, "api_error", "unavailable"))
    assert type(error) is ModelOverloaded


async def test_500_is_a_retryable_request_failure(anthropic_api: FakeAPI) -> None:
    error = await _fail(anthropic_api, anthropic_error(500, "api_error", "Internal server error"))
    assert type(error) is ModelRequestFailed
    assert error.retryable
    assert error.session_error_type == "model_request_failed_error"
    assert error.__cause__ is not None


async def test_x_should_retry_false_wins(anthropic_api: FakeAPI) -> None:
    error = await _fail(anthropic_api, anthropic_error(500, "api_error", "no", **{"x-should-retry": "false"}))
    assert type(error) is ModelRequestFailed
    assert not error.retryable


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
    ],
)
async def test_4xx_is_a_final_request_failure(anthropic_api: FakeAPI, status: int, kind: str) -> None:
    error = await _fail(anthropic_api, anthropic_error(status, kind, "you did it wrong"))
    assert type(error) is ModelRequestFailed
    assert not error.retryable
    assert str(status) in str(error)
    assert kind in str(error)
    assert "you did it wrong" in str(error)


async def test_wrong_key_is_a_final_request_failure(anthropic_api: FakeAPI) -> None:
    provider = AnthropicProvider(api_key="sk-wrong-but-long-enough", base_url=anthropic_api.url)
    async with closing(provider):
        with pytest.raises(ModelRequestFailed) as info, anyio.fail_after(5):
            await provider.step(_request())
    assert not info.value.retryable
    assert "401" in str(info.value)
    assert "sk-wrong-but-long-enough" not in str(info.value)


async def test_secret_echoed_by_the_server_never_reaches_the_error(anthropic_api: FakeAPI) -> None:
    def echo_key(body: dict[str, object]) -> dict[str, object]:
        return {"type": "error", "error": {"type": "invalid_request_error", "message": f"bad key {API_KEY}"}}

    anthropic_api.push(Reply(400, compute=echo_key))
    with pytest.raises(ModelRequestFailed) as info:
        await _step(anthropic_api)
    assert API_KEY not in str(info.value)
    assert API_KEY not in repr(info.value)
    assert "[redacted]" in str(info.value)
    # The chained SDK error is printed in tracebacks too.
    assert info.value.__cause__ is not None
    assert API_KEY not in str(info.value.__cause__)
    # Positive control: the server really did see (and echo) the key.
    assert anthropic_api.seen[0].headers.get("x-api-key") == API_KEY or (
        anthropic_api.seen[0].headers.get("authorization") == f"Bearer {API_KEY}"
    )


async def test_connection_refused_is_retryable_and_names_no_secret() -> None:
    with refusing_port() as port:
        provider = AnthropicProvider(api_key=API_KEY, base_url=f"http://user:pw-{API_KEY}@127.0.0.1:{port}")
        async with closing(provider):
            with pytest.raises(ModelRequestFailed) as info, anyio.fail_after(5):
                await provider.step(_request())
    assert info.value.retryable
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "could not be reached" in str(info.value)
    assert API_KEY not in str(info.value)
    assert "pw-" not in str(info.value)
    assert API_KEY not in repr(provider)


async def test_timeout_is_retryable(anthropic_api: FakeAPI) -> None:
    anthropic_api.push(Reply(hang=True))
    with pytest.raises(ModelRequestFailed) as info:
        await _step(anthropic_api, timeout_s=0.2)
    assert info.value.retryable
    assert "timed out" in str(info.value)


async def test_key_and_base_url_from_environment(
    anthropic_api: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic_api.url)
    anthropic_api.push(anthropic_message([{"type": "text", "text": "from env"}]))
    async with closing(AnthropicProvider()) as provider:
        with anyio.fail_after(5):
            response = await provider.step(_request())
    assert response.content == [{"type": "text", "text": "from env"}]
    assert len(anthropic_api.seen) == 1


async def test_arguments_beat_environment(anthropic_api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    with refusing_port() as port:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-env-key-that-is-wrong")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
        anthropic_api.push(anthropic_message([{"type": "text", "text": "args"}]))
        response = await _step(anthropic_api)
    assert response.content == [{"type": "text", "text": "args"}]


async def test_no_key_fails_without_calling_anything(anthropic_api: FakeAPI) -> None:
    async with closing(AnthropicProvider(base_url=anthropic_api.url)) as provider:
        with pytest.raises(ModelRequestFailed, match="ANTHROPIC_API_KEY") as info:
            await provider.step(_request())
    assert not info.value.retryable
    assert anthropic_api.seen == []


async def test_closed_provider_refuses(anthropic_api: FakeAPI) -> None:
    provider = AnthropicProvider(api_key=API_KEY, base_url=anthropic_api.url)
    await provider.aclose()
    await provider.aclose()  # idempotent
    with pytest.raises(ModelRequestFailed, match="closed"):
        await provider.step(_request())
    assert anthropic_api.seen == []


@pytest.mark.parametrize("body", [["not", "a", "message"], {"type": "message", "content": None}])
async def test_malformed_success_body_is_a_request_failure(anthropic_api: FakeAPI, body: object) -> None:
    anthropic_api.push(Reply(200, body=body))
    with pytest.raises(ModelRequestFailed, match="malformed") as info:
        await _step(anthropic_api)
    assert not info.value.retryable


async def test_sdk_refusing_our_arguments_is_a_request_failure(anthropic_api: FakeAPI) -> None:
    # Non-streaming calls the SDK thinks could outlast 10 minutes are refused before sending,
    # but only when the client has the default timeout; ours never does, so force the path.
    async with closing(AnthropicProvider(api_key=API_KEY, base_url=anthropic_api.url)) as provider:
        client = provider._client
        assert client is not None
        original = client.timeout
        client.timeout = anthropic.DEFAULT_TIMEOUT
        try:
            with pytest.raises(ModelRequestFailed, match="ValueError") as info:
                await provider.step(_request(max_tokens=10_000_000))
        finally:
            client.timeout = original
    assert not info.value.retryable
    assert anthropic_api.seen == []
