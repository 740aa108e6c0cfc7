"""Opaque page cursors for the ``{"data": [...], "next_page": ...}`` lists the SDK walks.

A cursor is the sort key of the last item served, wrapped so clients treat it
as opaque. The last page always carries ``next_page: null``: the SDK keeps
fetching while it is non-empty, even when ``data`` is empty.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from inwall.errors import InvalidInput

__all__ = [
    "MAX_LIMIT",
    "decode_cursor",
    "encode_cursor",
    "list_newest_first",
    "page",
    "patch_metadata",
    "resolve_limit",
]

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


async def list_newest_first(
    conn: AsyncConnection,
    table: sa.Table,
    render: Callable[[Any], dict[str, Any]],
    *,
    limit: int | None,
    page_cursor: str | None,
    include_archived: bool,
    where: Sequence[Any] = (),
) -> dict[str, Any]:
    """A page of a resource, newest first (ids sort by creation time), archived ones on request."""
    n = resolve_limit(limit)
    after = decode_cursor(page_cursor)
    q = sa.select(table).where(*where).order_by(table.c.id.desc()).limit(n + 1)
    if not include_archived:
        q = q.where(table.c.archived_at.is_(None))
    if after is not None:
        q = q.where(table.c.id < str(after))
    rows = (await conn.execute(q)).mappings().all()
    return page([render(r) for r in rows], n, lambda item: item["id"])


def patch_metadata(
    current: Mapping[str, str], patch: Mapping[str, str | None], *, empty_deletes: bool = False
) -> dict[str, str]:
    """Apply a metadata patch: null (or "", where the API says so) deletes a key; 16 pairs at most."""
    out = dict(current)
    for key, value in patch.items():
        if value is None or (empty_deletes and value == ""):
            out.pop(key, None)
        else:
            out[key] = value
    if len(out) > 16:
        raise InvalidInput("metadata may hold at most 16 pairs", error_code="invalid_metadata")
    return out
