"""JSON to Cedar values, faithful where Cedar can say the same thing.

Conversion rules (documented in the package docstring too):

- string, boolean: as is;
- integer: a Cedar ``Long`` when it fits in 64 bits, otherwise its decimal text;
- float: its JSON text (``1.5`` becomes ``"1.5"``), since Cedar has no floats;
- null: omitted, so ``has`` is false for it (in a list it is dropped);
- array: a Cedar set (order and duplicates are not kept);
- object: a Cedar record.

Keys Cedar's JSON format reserves (``__entity``, ``__extn``, ``__expr``) are
dropped from objects: kept, they would let a tool input smuggle an entity
reference or an extension value into the context. Dropping only those keys
(rather than the whole object) keeps every other argument visible to
policies, so adding a reserved key cannot hide ``command`` from a forbid.
Anything nested deeper than :data:`MAX_DEPTH` becomes its canonical JSON text,
which ``like`` can still match.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from inwall.audit import canonical_json

__all__ = ["MAX_DEPTH", "to_cedar", "to_cedar_record"]

MAX_DEPTH: Final = 32
_RESERVED: Final = frozenset({"__entity", "__extn", "__expr"})
_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1


class _Omit:
    pass


_OMIT: Final = _Omit()


def _as_text(value: Any) -> str:
    try:
        return canonical_json(value).decode()
    except (TypeError, ValueError):
        return str(value)


def _convert(value: Any, depth: int) -> Any:
    if value is None:
        return _OMIT
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if _LONG_MIN <= value <= _LONG_MAX else str(value)
    if isinstance(value, float):
        return json.dumps(value)
    if depth >= MAX_DEPTH:
        return _as_text(value)
    if isinstance(value, Mapping):
        record: dict[str, Any] = {}
        for key, item in value.items():
            if str(key) in _RESERVED:
                continue
            converted = _convert(item, depth + 1)
            if converted is not _OMIT:
                record[str(key)] = converted
        return record
    if isinstance(value, list | tuple | set | frozenset):
        return [c for c in (_convert(item, depth + 1) for item in value) if c is not _OMIT]
    return str(value)


def to_cedar(value: Any) -> Any:
    """One JSON value as a Cedar JSON value; ``None`` when the value is null."""
    converted = _convert(value, 0)
    return None if converted is _OMIT else converted


def to_cedar_record(value: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON object as a Cedar record (used for ``context.input`` and ``principal.claims``)."""
    converted = _convert(value, 0)
    return converted if isinstance(converted, dict) else {}
