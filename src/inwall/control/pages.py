"""Opaque page cursors for the ``{"data": [...], "next_page": ...}`` lists the SDK walks.

A cursor is the sort key of the last item served, wrapped so clients treat it
as opaque. The last page always carries ``next_page: null``: the SDK keeps
fetching while it is non-empty, even when ``data`` is empty.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from inwall.errors import InvalidInput

__all__ = ["MAX_LIMIT", "decode_cursor", "encode_cursor", "page", "resolve_limit"]

MAX_LIMIT = 1000


def encode_cursor(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Any:
    if not cursor:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError as exc:
        raise InvalidInput("invalid page cursor") from exc


def resolve_limit(limit: int | None, default: int = 20, maximum: int = MAX_LIMIT) -> int:
    if limit is None:
        return default
    if limit < 1 or limit > maximum:
        raise InvalidInput(f"limit must be between 1 and {maximum}")
    return limit


def page(items: Sequence[dict[str, Any]], limit: int, key_of: Any, **extra: Any) -> dict[str, Any]:
    """``items`` holds up to ``limit + 1`` rows; the extra one only says whether more exist."""
    more = len(items) > limit
    data = list(items[:limit])
    return {
        "data": data,
        "next_page": encode_cursor(key_of(data[-1])) if more and data else None,
        **extra,
    }
