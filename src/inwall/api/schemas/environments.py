"""Environment create/update bodies. inwall serves self-hosted environments only."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator

from inwall.api.schemas.common import Metadata, MetadataPatch, Strict

__all__ = ["EnvironmentConfig", "EnvironmentCreate", "EnvironmentUpdate"]


class SelfHostedConfig(Strict):
    type: Literal["self_hosted"]


def _only_self_hosted(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") != "self_hosted":
        raise ValueError(
            f"config type {value.get('type')!r} is not supported: inwall environments are self-hosted "
            '(config: {"type": "self_hosted"}) and run on your own `inwall worker` machines'
        )
    return value


EnvironmentConfig = SelfHostedConfig


class EnvironmentCreate(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    config: SelfHostedConfig | None = None
    description: str | None = None
    metadata: Metadata = Field(default_factory=dict)
    scope: Literal["organization", "account"] | None = None

    @field_validator("config", mode="before")
    @classmethod
    def _self_hosted_only(cls, v: Any) -> Any:
        return _only_self_hosted(v)

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: str | None) -> str | None:
        if v == "account":
            raise ValueError("scope 'account' is not supported; use 'organization'")
        return v


class EnvironmentUpdate(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    # Any config is accepted here so that a type change gets the SDK's typed error
    # (invalid_config_type_change) from the service rather than a generic 400.
    config: dict[str, Any] | None = None
    description: str | None = None
    metadata: MetadataPatch | None = None
    scope: Literal["organization", "account"] | None = None
