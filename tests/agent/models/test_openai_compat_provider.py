"""OpenAICompatProvider against a fake Chat Completions API, through the real ``openai`` SDK."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inwall.agent.models.base import (
    ContentBlock,
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
from inwall.agent.models.openai_compat import (
    DUMMY_API_KEY,
    OpenAICompatProvider,
    to_chat_messages,
    to_chat_tools,
)

from .fake_model_apis import (
    API_KEY,
    FakeAPI,
    Reply,
    chat_completion,
    closing,
    openai_error,
    refusing_port,
    tool_call,
)

pytestmark = pytest.mark.anyio

Json = dict[str, Any]

BASH = ToolSpec(
    name="bash",
    description="Run a command",
    input_schema={"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
)
READ = ToolSpec(name="read", description="Read a file", input_schema={"type": "object", "properties": {}})

PNG = "iVBORw0KGgo="  # not a real image; the endpoint only forwards it


def _request(messages: list[Message] | None = None, **overrides: Any) -> ModelRequest:
    fields: dict[str, Any] = {
        "model": "fake-model",
        "system": "be brief",
        "messages": messages or [Message("user", [{"type": "text", "text": "hello"}])],
        "tools": [BASH, READ],
        "max_tokens": 123,
    }
    fields.update(overrides)
    return ModelRequest(**fields)


async def _step(api: FakeAPI, request: ModelRequest | None = None, **kwargs: Any) -> ModelResponse:
    async with closing(OpenAICompatProvider(api_key=API_KEY, base_url=api.url, **kwargs)) as provider:
        with anyio.fail_after(5):
            return await provider.step(request or _request())


async def _fail(api: FakeAPI, *replies: Reply) -> ModelError:
    api.push(*replies)
    with pytest.raises(ModelError) as info:
        await _step(api)
    assert len(api.seen) == 1, "the SDK must not retry on its own: the loop does"
    return info.value


def _echo_last_assistant(body: Json) -> Json:
    """A model that answers with the last assistant message it was sent: a round trip."""
    last = [m for m in body["messages"] if m["role"] == "assistant"][-1]
    return chat_completion(
        content=last.get("content"),
        tool_calls=last.get("tool_calls"),
        finish_reason="tool_calls" if last.get("tool_calls") else "stop",
    )


# --- through the SDK -----------------------------------------------------------


async def test_is_a_model_provider() -> None:
    async with closing(OpenAICompatProvider(api_key=API_KEY, base_url="http://127.0.0.1:9/v1")) as provider:
        assert isinstance(provider, ModelProvider)


async def test_text_answer_and_request_shape(openai_api: FakeAPI) -> None:
    openai_api.push(
        Reply(
            body=chat_completion(
                content="hi there",
                usage={
                    "prompt_tokens": 20,
                    "completion_tokens": 4,
                    "total_tokens": 24,
                    "prompt_tokens_details": {"cached_tokens": 8},
                },
            )
        )
    )
    response = await _step(openai_api)
    assert response.content == [{"type": "text", "text": "hi there"}]
    assert response.stop_reason == "end_turn"
    assert response.usage == Usage(input_tokens=12, output_tokens=4, cache_read_input_tokens=8)
    (seen,) = openai_api.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.body["model"] == "fake-model"
    assert seen.body["max_tokens"] == 123
    assert "max_completion_tokens" not in seen.body
    assert seen.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    assert seen.body["tools"] == to_chat_tools([BASH, READ])
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"


async def test_max_completion_tokens_option(openai_api: FakeAPI) -> None:
    openai_api.push(Reply(body=chat_completion(content="ok")))
    await _step(openai_api, max_tokens_param="max_completion_tokens")
    body = openai_api.seen[0].body
    assert body["max_completion_tokens"] == 123
    assert "max_tokens" not in body


async def test_no_usage_and_no_tools(openai_api: FakeAPI) -> None:
    openai_api.push(Reply(body=chat_completion(content="ok")))
    response = await _step(openai_api, _request(tools=[], system=None))
    assert response.usage == Usage()
    assert "tools" not in openai_api.seen[0].body
    assert openai_api.seen[0].body["messages"][0]["role"] == "user"


async def test_tool_calls_become_tool_use(openai_api: FakeAPI) -> None:
    openai_api.push(
        Reply(
            body=chat_completion(
                content="checking",
                tool_calls=[
                    tool_call("call_1", "bash", '{"command": "ls -la"}'),
                    tool_call("call_2", "read", '{"path": "/x", "opts": {"n": [1, 2]}}'),
                ],
                finish_reason="tool_calls",
            )
        )
    )
    response = await _step(openai_api)
    assert response.stop_reason == "tool_use"
    assert response.content == [
        {"type": "text", "text": "checking"},
        {"type": "tool_use", "id": "call_1", "name": "bash", "input": {"command": "ls -la"}},
        {"type": "tool_use", "id": "call_2", "name": "read", "input": {"path": "/x", "opts": {"n": [1, 2]}}},
    ]


async def test_bad_arguments_are_kept_for_the_tool_to_reject(openai_api: FakeAPI) -> None:
    openai_api.push(
        Reply(
            body=chat_completion(
                tool_calls=[
                    tool_call("c1", "bash", '{"command": "ls"'),
                    tool_call("c2", "bash", "[1, 2]"),
                    tool_call("c3", "read", ""),
                    tool_call("", "read", "{}"),
                ],
                finish_reason="tool_calls",
            )
        )
    )
    response = await _step(openai_api)
    inputs = [b["input"] for b in response.content]
    assert inputs == [{"_raw_arguments": '{"command": "ls"'}, {"_raw_arguments": "[1, 2]"}, {}, {}]
    ids = [b["id"] for b in response.content]
    assert ids[:3] == ["c1", "c2", "c3"]
    assert ids[3].startswith("toolu_")


@pytest.mark.parametrize(
    ("finish", "with_calls", "ours"),
    [
        ("stop", False, "end_turn"),
        ("stop", True, "tool_use"),  # Ollama reports "stop" next to tool calls
        ("tool_calls", True, "tool_use"),
        ("function_call", True, "tool_use"),
        ("length", False, "max_tokens"),
        ("length", True, "max_tokens"),
        ("content_filter", False, "refusal"),
        ("something_new", False, "end_turn"),
    ],
)
async def test_finish_reasons(openai_api: FakeAPI, finish: str, with_calls: bool, ours: str) -> None:
    calls = [tool_call("c1", "bash", "{}")] if with_calls else None
    openai_api.push(Reply(body=chat_completion(content="x", tool_calls=calls, finish_reason=finish)))
    response = await _step(openai_api)
    assert response.stop_reason == ours


async def test_refusal(openai_api: FakeAPI) -> None:
    openai_api.push(Reply(body=chat_completion(refusal="I can't help with that")))
    response = await _step(openai_api)
    assert response.content == [{"type": "text", "text": "I can't help with that"}]
    assert response.stop_reason == "refusal"


async def test_no_choices_is_a_request_failure(openai_api: FakeAPI) -> None:
    body = chat_completion(content="x")
    body["choices"] = []
    openai_api.push(Reply(body=body))
    with pytest.raises(ModelRequestFailed, match="no choices"):
        await _step(openai_api)


async def test_round_trip_tool_use_to_tool_calls_and_back(openai_api: FakeAPI) -> None:
    """Our tool_use → the SDK's tool_calls on the wire → a completion → our tool_use again."""
    sent: list[ContentBlock] = [
        {"type": "text", "text": "two calls"},
        {"type": "tool_use", "id": "toolu_a", "name": "bash", "input": {"command": "echo 'é ✓'"}},
        {
            "type": "tool_use",
            "id": "toolu_b",
            "name": "read",
            "input": {"path": "/a b", "n": {"deep": [1, None]}},
        },
    ]
    history = [
        Message("user", [{"type": "text", "text": "go"}]),
        Message("assistant", sent),
    ]
    openai_api.push(Reply(compute=_echo_last_assistant))
    response = await _step(openai_api, _request(history))
    assert response.content == sent
    assert response.stop_reason == "tool_use"


async def test_round_trip_tool_results_become_tool_messages(openai_api: FakeAPI) -> None:
    history = [
        Message("user", [{"type": "text", "text": "go"}]),
        Message(
            "assistant",
            [
                {"type": "tool_use", "id": "toolu_a", "name": "bash", "input": {"command": "ls"}},
                {"type": "tool_use", "id": "toolu_b", "name": "read", "input": {"path": "/x"}},
            ],
        ),
        Message(
            "user",
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_a",
                    "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_b",
                    "content": "no such file",
                    "is_error": True,
                },
            ],
        ),
    ]
    openai_api.push(Reply(body=chat_completion(content="fine")))
    await _step(openai_api, _request(history))
    messages = openai_api.seen[0].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["toolu_a", "toolu_b"]
    assert messages[3:] == [
        {"role": "tool", "tool_call_id": "toolu_a", "content": "one\ntwo"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "Error: no such file"},
    ]


# --- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"), [({"retry-after": "3"}, 3.0), ({"retry-after-ms": "250"}, 0.25)]
)
async def test_429_is_rate_limited(openai_api: FakeAPI, headers: dict[str, str], expected: float) -> None:
    error = await _fail(openai_api, openai_error(429, "rate_limit_exceeded", "slow down", **headers))
    assert type(error) is ModelRateLimited
    assert error.retry_after_s == expected
    assert "slow down" in str(error)


async def test_529_is_overloaded(openai_api: FakeAPI) -> None:
    error = await _fail(openai_api, openai_error(529, "overloaded_error", "Overloaded"))
    assert type(error) is ModelOverloaded
    assert error.retryable


async def test_500_is_a_retryable_request_failure(openai_api: FakeAPI) -> None:
    error = await _fail(openai_api, openai_error(500, "server_error", "boom"))
    assert type(error) is ModelRequestFailed
    assert error.retryable
    assert "boom" in str(error)


async def test_400_is_a_final_request_failure(openai_api: FakeAPI) -> None:
    error = await _fail(openai_api, openai_error(400, "invalid_request_error", "model not found"))
    assert type(error) is ModelRequestFailed
    assert not error.retryable
    assert "400" in str(error)
    assert "model not found" in str(error)


async def test_non_json_error_body(openai_api: FakeAPI) -> None:
    error = await _fail(openai_api, Reply(502, body="<html>bad gateway</html>"))
    assert type(error) is ModelRequestFailed
    assert error.retryable
    assert "502" in str(error)


async def test_secret_echoed_by_the_server_never_reaches_the_error(openai_api: FakeAPI) -> None:
    openai_api.push(openai_error(401, "invalid_api_key", f"Incorrect API key provided: {API_KEY}"))
    with pytest.raises(ModelRequestFailed) as info:
        await _step(openai_api)
    assert API_KEY not in str(info.value)
    assert "[redacted]" in str(info.value)
    assert API_KEY not in str(info.value.__cause__)
    assert not info.value.retryable
    assert openai_api.seen[0].headers["authorization"] == f"Bearer {API_KEY}"  # positive control


async def test_connection_refused_is_retryable() -> None:
    with refusing_port() as port:
        provider = OpenAICompatProvider(api_key=API_KEY, base_url=f"http://127.0.0.1:{port}/v1")
        async with closing(provider):
            with pytest.raises(ModelRequestFailed) as info, anyio.fail_after(5):
                await provider.step(_request())
    assert info.value.retryable
    assert f"127.0.0.1:{port}" in str(info.value)
    assert API_KEY not in str(info.value)
    assert API_KEY not in repr(provider)


async def test_timeout_is_retryable(openai_api: FakeAPI) -> None:
    openai_api.push(Reply(hang=True))
    with pytest.raises(ModelRequestFailed, match="timed out") as info:
        await _step(openai_api, timeout_s=0.2)
    assert info.value.retryable


async def test_env_and_dummy_key(openai_api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", openai_api.url)
    # No key anywhere: a dummy goes out, as vLLM/Ollama accept; this fake wants the real one.
    async with closing(OpenAICompatProvider()) as provider:
        with pytest.raises(ModelRequestFailed, match="401"), anyio.fail_after(5):
            await provider.step(_request())
    assert openai_api.seen[0].headers["authorization"] == f"Bearer {DUMMY_API_KEY}"

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    openai_api.push(Reply(body=chat_completion(content="env")))
    async with closing(OpenAICompatProvider()) as provider:
        with anyio.fail_after(5):
            response = await provider.step(_request())
    assert response.content == [{"type": "text", "text": "env"}]
    assert openai_api.seen[1].headers["authorization"] == f"Bearer {API_KEY}"


async def test_closed_provider_refuses(openai_api: FakeAPI) -> None:
    provider = OpenAICompatProvider(api_key=API_KEY, base_url=openai_api.url)
    await provider.aclose()
    await provider.aclose()
    with pytest.raises(ModelRequestFailed, match="closed"):
        await provider.step(_request())
    assert openai_api.seen == []


# --- translation, no I/O -------------------------------------------------------------


def test_tools_translate_schema_to_parameters() -> None:
    assert to_chat_tools([BASH]) == [
        {
            "type": "function",
            "function": {
                "name": "bash",
                "description": "Run a command",
                "parameters": dict(BASH.input_schema),
            },
        }
    ]


def test_tool_results_go_first_then_user_content_in_order() -> None:
    content: list[ContentBlock] = [
        {"type": "text", "text": "before"},
        {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "r1"}]},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG},
        },
        {"type": "tool_result", "tool_use_id": "t2", "content": []},
        {"type": "text", "text": "after"},
    ]
    assert to_chat_messages(None, [Message("user", content)]) == [
        {"role": "tool", "tool_call_id": "t1", "content": "r1"},
        {"role": "tool", "tool_call_id": "t2", "content": ""},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "before"},
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}},
                {"type": "text", "text": "after"},
            ],
        },
    ]


def test_images_documents_and_unknown_blocks() -> None:
    content: list[ContentBlock] = [
        {"type": "image", "source": {"type": "url", "url": "https://example.invalid/cat.png"}},
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc text"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
        {"type": "search_result", "source": "x"},
    ]
    (message,) = to_chat_messages(None, [Message("user", content)])
    assert message["content"] == [
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
        {"type": "text", "text": "[image omitted: this image source cannot be sent here]"},
        {"type": "text", "text": "doc text"},
        {"type": "text", "text": "[document omitted: this endpoint does not accept documents]"},
        {"type": "text", "text": "[search_result omitted: not supported by this endpoint]"},
    ]


def test_image_inside_a_tool_result_is_a_placeholder() -> None:
    result = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [
            {"type": "text", "text": "screenshot:"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        ],
    }
    assert to_chat_messages(None, [Message("user", [result])]) == [
        {
            "role": "tool",
            "tool_call_id": "t1",
            "content": "screenshot:\n[image omitted: tool messages carry text only]",
        }
    ]


def test_assistant_text_blocks_join_and_other_blocks_drop() -> None:
    content: list[ContentBlock] = [
        {"type": "thinking", "thinking": "…", "signature": "s"},
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]
    assert to_chat_messages(None, [Message("assistant", content)]) == [
        {"role": "assistant", "content": "a\nb"}
    ]
    assert to_chat_messages(None, [Message("assistant", [{"type": "thinking", "thinking": "x"}])]) == []


def test_assistant_tool_use_without_text_has_null_content() -> None:
    block = {"type": "tool_use", "id": "t1", "name": "bash", "input": {"command": "ls"}}
    assert to_chat_messages(None, [Message("assistant", [block])]) == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "bash", "arguments": '{"command": "ls"}'},
                }
            ],
        }
    ]


_json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_inputs = st.dictionaries(st.text(max_size=8), _json, max_size=4)
_names = st.from_regex(r"[a-zA-Z0-9_-]{1,20}", fullmatch=True)
_texts = st.text(max_size=40)


@given(
    calls=st.lists(st.tuples(_names, _inputs), min_size=1, max_size=4),
    results=st.lists(st.lists(_texts, max_size=3), min_size=1, max_size=4),
)
def test_property_tool_use_and_results_round_trip(
    calls: list[tuple[str, dict[str, Any]]], results: list[list[str]]
) -> None:
    """Every call keeps id, name and input (as JSON text); every result keeps its id, order and text."""
    uses = [
        {"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": inp} for i, (n, inp) in enumerate(calls)
    ]
    tool_results = [
        {
            "type": "tool_result",
            "tool_use_id": f"toolu_{i}",
            "content": [{"type": "text", "text": t} for t in texts],
        }
        for i, texts in enumerate(results)
    ]
    out = to_chat_messages("sys", [Message("assistant", uses), Message("user", tool_results)])
    assert out[0] == {"role": "system", "content": "sys"}
    back = [
        {
            "type": "tool_use",
            "id": c["id"],
            "name": c["function"]["name"],
            "input": json.loads(c["function"]["arguments"]),
        }
        for c in out[1]["tool_calls"]
    ]
    assert back == uses
    assert out[2:] == [
        {"role": "tool", "tool_call_id": f"toolu_{i}", "content": "\n".join(texts)}
        for i, texts in enumerate(results)
    ]


@pytest.mark.parametrize("body", [["not a completion"], {"choices": [{"index": 0}]}])
async def test_malformed_success_body_is_a_request_failure(openai_api: FakeAPI, body: object) -> None:
    openai_api.push(Reply(200, body=body))
    with pytest.raises(ModelRequestFailed, match="malformed"):
        await _step(openai_api)


async def test_custom_tool_call_keeps_its_text(openai_api: FakeAPI) -> None:
    custom = {"id": "c1", "type": "custom", "custom": {"name": "patch", "input": "free text"}}
    openai_api.push(Reply(body=chat_completion(tool_calls=[custom], finish_reason="tool_calls")))
    response = await _step(openai_api)
    assert response.content == [
        {"type": "tool_use", "id": "c1", "name": "patch", "input": {"input": "free text"}}
    ]


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ({"error": "plain string error"}, "plain string error"),
        ({"error": {"error": {"message": "nested twice"}}}, "nested twice"),
        ({"detail": "fastapi style"}, None),
    ],
)
async def test_error_body_variants(openai_api: FakeAPI, body: object, shown: str | None) -> None:
    error = await _fail(openai_api, Reply(400, body=body))
    assert type(error) is ModelRequestFailed
    assert "HTTP 400" in str(error)
    if shown is not None:
        assert shown in str(error)
