"""Timestamps out of the database, always as UTC RFC 3339."""

from __future__ import annotations

from datetime import UTC, datetime

from inwall.ids import rfc3339

__all__ = ["ts", "utc"]


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def ts(value: datetime | None) -> str | None:
    return rfc3339(utc(value))
