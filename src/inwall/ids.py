"""Identifiers and timestamps in the shapes the Managed Agents API uses.

IDs are a type prefix plus 26 characters of Crockford base32: 48 bits of
milliseconds then 80 random bits, so ids sort by creation time (handy for
cursors and for reading logs) and never collide across replicas.
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import UTC, datetime

__all__ = ["new_id", "new_secret", "now", "parse_rfc3339", "rfc3339"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_b32(millis, 10)}{_b32(rand, 16)}"


def new_secret(prefix: str, nbytes: int = 32) -> str:
    """A bearer credential: unguessable, URL-safe, with a prefix that tells what it opens."""
    return f"{prefix}{secrets.token_urlsafe(nbytes)}"


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(value: datetime | None) -> str | None:
    """Millisecond RFC 3339 in UTC with a ``Z``, as the API documents."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
