"""A slotted, immutable record base: dataclass behaviour without importing dataclasses.

``dataclasses`` pulls in ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``)
and generates code per class at import time; on the ``inwall sandbox exec``
path that alone cost more than starting bubblewrap. Subclasses list their
fields in ``__slots__`` and assign them in ``__init__`` through :meth:`_init`.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    _F = TypeVar("_F", bound="Frozen")

__all__ = ["Frozen"]


class Frozen:
    __slots__ = ()

    def _init(self, **values: Any) -> None:
        for k, v in values.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _fields(self) -> tuple[str, ...]:
        fields: tuple[str, ...] = type(self).__slots__
        return fields

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, s) for s in self._fields())

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        assert isinstance(other, Frozen)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *(repr(v) for v in self._values())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{s}={getattr(self, s)!r}" for s in self._fields())
        return f"{type(self).__name__}({inner})"

    def replace(self: _F, **changes: Any) -> _F:
        """A copy with some fields changed (``dataclasses.replace``)."""
        values: dict[str, Any] = {s: getattr(self, s) for s in self._fields()}
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {sorted(unknown)[0]!r}")
        values.update(changes)
        return type(self)(**values)
