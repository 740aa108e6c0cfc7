"""Building blocks shared by every request schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "ContentBlock",
    "DocumentBlock",
    "ImageBlock",
    "Metadata",
    "MetadataPatch",
    "Strict",
    "TextBlock",
    "dump",
]

MAX_METADATA_PAIRS = 16


class Strict(BaseModel):
    """Fail closed: a field we do not know is an error the caller can read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_PAIRS)]
MetadataPatch = Annotated[dict[MetadataKey, MetadataValue | None], Field(max_length=MAX_METADATA_PAIRS)]


class TextBlock(Strict):
    type: Literal["text"]
    text: str


class Base64Source(Strict):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(Strict):
    type: Literal["url"]
    url: str


class FileSource(Strict):
    type: Literal["file"]
    file_id: str


class PlainTextSource(Strict):
    type: Literal["text"]
    media_type: Literal["text/plain"]
    data: str


class ImageBlock(Strict):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource | FileSource, Field(discriminator="type")]


class DocumentBlock(Strict):
    type: Literal["document"]
    source: Annotated[Base64Source | PlainTextSource | UrlSource | FileSource, Field(discriminator="type")]
    title: str | None = None
    context: str | None = None


class RedactedBlock(Strict):
    type: Literal["redacted"]


class SearchResultText(Strict):
    type: Literal["text"]
    text: str


class Citations(Strict):
    enabled: bool


class SearchResultBlock(Strict):
    type: Literal["search_result"]
    source: str
    title: str
    content: list[SearchResultText]
    citations: Citations


ContentBlock = Annotated[TextBlock | ImageBlock | DocumentBlock | RedactedBlock, Field(discriminator="type")]
ResultBlock = Annotated[
    TextBlock | ImageBlock | DocumentBlock | SearchResultBlock, Field(discriminator="type")
]


def dump(model: BaseModel) -> dict[str, Any]:
    """The request as the caller sent it (no defaults invented), for storing."""
    return model.model_dump(mode="json", exclude_unset=True)
