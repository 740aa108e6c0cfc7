"""Picking and sharing providers by model id."""

from __future__ import annotations

import importlib

import anyio
import pytest

from inwall.agent.models import registry
from inwall.agent.models.anthropic import AnthropicProvider
from inwall.agent.models.base import Message, ModelRequest, ModelRequestFailed
from inwall.agent.models.openai_compat import OpenAICompatProvider
from inwall.agent.models.registry import (
    ProviderKind,
    ProviderRegistry,
    ProviderSettings,
    parse_model_id,
)
from inwall.agent.models.scripted import ScriptedProvider
from inwall.errors import InvalidInput

from .fake_model_apis import API_KEY, FakeAPI, Reply, anthropic_message, chat_completion

SETTINGS = ProviderSettings(anthropic_api_key=API_KEY, openai_api_key=API_KEY)


def _request(model: str) -> ModelRequest:
    return ModelRequest(
        model=model, system=None, messages=[Message("user", [{"type": "text", "text": "hi"}])], tools=[]
    )


@pytest.mark.parametrize(
    ("model_id", "kind", "model"),
    [
        ("inwall-scripted", ProviderKind.SCRIPTED, "inwall-scripted"),
        ("openai:gpt-4o-mini", ProviderKind.OPENAI, "gpt-4o-mini"),
        ("openai:llama3.1:8b", ProviderKind.OPENAI, "llama3.1:8b"),  # Ollama tags keep their colon
        ("openai:Qwen/Qwen2.5-7B-Instruct", ProviderKind.OPENAI, "Qwen/Qwen2.5-7B-Instruct"),
        ("claude-sonnet-4-5", ProviderKind.ANTHROPIC, "claude-sonnet-4-5"),
        ("inwall-scripted-2", ProviderKind.ANTHROPIC, "inwall-scripted-2"),
        ("OpenAI:gpt-4o", ProviderKind.ANTHROPIC, "OpenAI:gpt-4o"),  # the prefix is exact
    ],
)
def test_parse_model_id(model_id: str, kind: ProviderKind, model: str) -> None:
    assert parse_model_id(model_id) == (kind, model)


@pytest.mark.parametrize("model_id", ["openai:", "openai:  ", "", "   "])
def test_ids_no_provider_can_serve(model_id: str) -> None:
    with pytest.raises(InvalidInput):
        parse_model_id(model_id)


@pytest.mark.anyio
async def test_picks_and_shares_providers() -> None:
    reg = ProviderRegistry()
    try:
        scripted, model = reg.provider_for("inwall-scripted", SETTINGS)
        assert isinstance(scripted, ScriptedProvider)
        assert model == "inwall-scripted"
        assert reg.provider_for("inwall-scripted", ProviderSettings())[0] is scripted

        oa, model = reg.provider_for("openai:gpt-4o", SETTINGS)
        assert isinstance(oa, OpenAICompatProvider)
        assert model == "gpt-4o"
        assert reg.provider_for("openai:other", SETTINGS)[0] is oa
        assert (
            reg.provider_for("openai:gpt-4o", ProviderSettings(openai_base_url="http://127.0.0.1:9/v1"))[0]
            is not oa
        )

        an, model = reg.provider_for("claude-x", SETTINGS)
        assert isinstance(an, AnthropicProvider)
        assert model == "claude-x"
        assert reg.provider_for("claude-y", SETTINGS)[0] is an
        assert reg.provider_for("claude-x", ProviderSettings(anthropic_api_key="other-key-123"))[0] is not an
    finally:
        await reg.aclose_all()


@pytest.mark.anyio
async def test_aclose_all_closes_and_forgets(openai_api: FakeAPI) -> None:
    reg = ProviderRegistry()
    settings = ProviderSettings(openai_api_key=API_KEY, openai_base_url=openai_api.url)
    provider, model = reg.provider_for("openai:fake-model", settings)
    openai_api.push(Reply(body=chat_completion(content="before close")))
    with anyio.fail_after(5):
        response = await provider.step(_request(model))
    assert response.content == [{"type": "text", "text": "before close"}]

    await reg.aclose_all()
    with pytest.raises(ModelRequestFailed, match="closed"):
        await provider.step(_request(model))
    fresh, _ = reg.provider_for("openai:fake-model", settings)
    assert fresh is not provider
    await reg.aclose_all()


@pytest.mark.anyio
async def test_module_level_registry_reaches_anthropic(anthropic_api: FakeAPI) -> None:
    settings = ProviderSettings(anthropic_api_key=API_KEY, anthropic_base_url=anthropic_api.url, timeout_s=5)
    try:
        provider, model = registry.provider_for("claude-fake-1", settings)
        assert registry.provider_for("claude-fake-1", settings)[0] is provider
        anthropic_api.push(anthropic_message([{"type": "text", "text": "via registry"}]))
        with anyio.fail_after(5):
            response = await provider.step(_request(model))
        assert response.content == [{"type": "text", "text": "via registry"}]
        assert anthropic_api.seen[0].body["model"] == "claude-fake-1"
    finally:
        await registry.aclose_all()


def test_settings_repr_hides_keys() -> None:
    settings = ProviderSettings(anthropic_api_key=API_KEY, openai_api_key=API_KEY + "-oa")
    assert API_KEY not in repr(settings)
    assert API_KEY not in str(settings)


@pytest.mark.parametrize(
    "module",
    ["base", "anthropic", "openai_compat", "scripted", "registry", "_errors"],
)
def test_all_lists_real_names(module: str) -> None:
    mod = importlib.import_module(f"inwall.agent.models.{module}")
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name}"


@pytest.mark.anyio
async def test_settings_reach_the_openai_provider(openai_api: FakeAPI) -> None:
    reg = ProviderRegistry()
    settings = ProviderSettings(
        openai_api_key=API_KEY,
        openai_base_url=openai_api.url,
        openai_max_tokens_param="max_completion_tokens",
    )
    try:
        provider, model = reg.provider_for("openai:o-fake", settings)
        openai_api.push(Reply(body=chat_completion(content="ok")))
        with anyio.fail_after(5):
            await provider.step(_request(model))
    finally:
        await reg.aclose_all()
    body = openai_api.seen[0].body
    assert body["model"] == "o-fake"
    assert body["max_completion_tokens"] == 8192
    assert "max_tokens" not in body
