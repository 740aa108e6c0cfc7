"""Which provider serves a model id, and one shared provider per configuration.

Agents name a model; the id picks the provider:

* ``inwall-scripted`` → the scripted model (``scripted.py``);
* ``openai:<model>`` → an OpenAI-compatible endpoint, called with ``<model>``;
* anything else → Anthropic, called with the id unchanged.

Providers hold an HTTP connection pool, so sessions share them: one per
(provider kind, settings).  ``aclose_all()`` closes them at server shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import anyio

from inwall.agent.models.base import ModelProvider
from inwall.agent.models.scripted import MODEL_ID as SCRIPTED_MODEL_ID
from inwall.agent.models.scripted import ScriptedProvider
from inwall.errors import InvalidInput

__all__ = [
    "OPENAI_PREFIX",
    "SCRIPTED_MODEL_ID",
    "ProviderKind",
    "ProviderRegistry",
    "ProviderSettings",
    "aclose_all",
    "parse_model_id",
    "provider_for",
]

OPENAI_PREFIX = "openai:"
CLOSE_TIMEOUT_S = 5.0


class ProviderKind(Enum):
    SCRIPTED = "scripted"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


@dataclass(frozen=True)
class ProviderSettings:
    """Server-wide model settings; ``None`` falls back to the provider's environment variables
    (``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL``, ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``).

    Keys are left out of ``repr`` so logging the settings cannot leak them.
    """

    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_base_url: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    timeout_s: float = 600.0
    # OpenAI's reasoning models want "max_completion_tokens"; vLLM and Ollama read "max_tokens".
    openai_max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"


def parse_model_id(model_id: str) -> tuple[ProviderKind, str]:
    """Split an agent's model id into the provider and the id that provider is called with.

    Raises ``InvalidInput`` for ids no provider can serve, so agent creation can refuse them early.
    """
    if model_id == SCRIPTED_MODEL_ID:
        return ProviderKind.SCRIPTED, model_id
    if model_id.startswith(OPENAI_PREFIX):
        model = model_id[len(OPENAI_PREFIX) :]
        if not model.strip():
            raise InvalidInput(f"model id {model_id!r} names no model after {OPENAI_PREFIX!r}")
        return ProviderKind.OPENAI, model
    if not model_id.strip():
        raise InvalidInput("model id is empty")
    return ProviderKind.ANTHROPIC, model_id


class ProviderRegistry:
    """A cache of providers; the module-level functions use one process-wide instance."""

    def __init__(self) -> None:
        self._providers: dict[tuple[ProviderKind, ProviderSettings | None], ModelProvider] = {}

    def provider_for(self, model_id: str, settings: ProviderSettings) -> tuple[ModelProvider, str]:
        kind, model = parse_model_id(model_id)
        # The scripted model ignores the settings, so one instance serves all.
        key = (kind, None if kind is ProviderKind.SCRIPTED else settings)
        provider = self._providers.get(key)
        if provider is None:
            provider = _build(kind, settings)
            self._providers[key] = provider
        return provider, model

    async def aclose_all(self) -> None:
        providers, self._providers = list(self._providers.values()), {}
        with anyio.CancelScope(shield=True):
            for provider in providers:
                with anyio.move_on_after(CLOSE_TIMEOUT_S):
                    await provider.aclose()


def _build(kind: ProviderKind, settings: ProviderSettings) -> ModelProvider:
    if kind is ProviderKind.SCRIPTED:
        return ScriptedProvider()
    # The SDKs are imported on first use: each costs seconds of start-up, and a
    # server that only ever runs the scripted model (tests, the demo) needs neither.
    if kind is ProviderKind.OPENAI:
        from inwall.agent.models.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            timeout_s=settings.timeout_s,
            max_tokens_param=settings.openai_max_tokens_param,
        )
    from inwall.agent.models.anthropic import AnthropicProvider

    return AnthropicProvider(
        api_key=settings.anthropic_api_key, base_url=settings.anthropic_base_url, timeout_s=settings.timeout_s
    )


_default = ProviderRegistry()


def provider_for(model_id: str, settings: ProviderSettings) -> tuple[ModelProvider, str]:
    return _default.provider_for(model_id, settings)


async def aclose_all() -> None:
    await _default.aclose_all()
