"""Strict JSON and JSON-RPC helpers shared by the policy and the stdio bridge (sans-I/O).

The perimeter must read a message exactly as the upstream will, or a caller
could smuggle a denied tool past it (``{"name":"ok","name":"denied"}`` is
read differently by first-wins and last-wins parsers). So JSON with duplicate
keys, non-standard constants (NaN, Infinity) or invalid UTF-8 is refused, not
guessed at.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "StrictJSONError",
    "dumps",
    "error_body",
    "error_message",
    "is_request_id",
    "loads_strict",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class StrictJSONError(ValueError):
    """The bytes are not one unambiguous JSON value."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise StrictJSONError(f"non-standard JSON constant {name}")


def loads_strict(data: bytes | str) -> Any:
    """Parse one JSON value, refusing anything two parsers could read differently."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise StrictJSONError("body is not valid UTF-8") from exc
    if text.startswith("\ufeff"):
        raise StrictJSONError("body starts with a byte-order mark")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except StrictJSONError:
        raise
    except (json.JSONDecodeError, RecursionError) as exc:
        raise StrictJSONError(str(exc)) from exc


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, the form every rewritten message is sent in."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def is_request_id(value: Any) -> bool:
    """JSON-RPC ids are strings or integers (booleans are ints in Python, and are not ids)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def error_message(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def error_body(request_id: Any, code: int, message: str, data: Any = None) -> bytes:
    return dumps(error_message(request_id, code, message, data))
