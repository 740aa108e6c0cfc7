"""Fake model APIs on loopback, one per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .fake_model_apis import FakeAPI, serve_fake


@pytest.fixture
async def anthropic_api() -> AsyncIterator[FakeAPI]:
    async with serve_fake("anthropic") as api:
        yield api


@pytest.fixture
async def openai_api() -> AsyncIterator[FakeAPI]:
    async with serve_fake("openai") as api:
        yield api


@pytest.fixture(autouse=True)
def _no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not pick up a developer's real keys or endpoints."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
