"""A policy file that follows its edits without ever dropping to a worse policy.

The rule an operator relies on: a file that does not parse or validate is
rejected with one clear log line (logger ``inwall.governance``) and the
policy in force stays in force; fixing the file brings it in. A missing or
unreadable file at run time is handled the same way. Only at startup is a
missing or broken file fatal (:class:`~inwall.errors.ConfigError`), because
then there is no previous policy to keep.

Change detection is a ``stat`` (inode, size, mtime, ctime), cheap enough to
call before every decision. A file whose mtime is within
:data:`RACY_WINDOW_S` of now is read again on the next check even if its stat
did not change, because two writes inside one timestamp tick can leave the
same stat behind (git's "racy clean" problem); a content digest keeps that
from re-parsing an unchanged file. Atomic replacement (write elsewhere, then
``rename``) and in-place writes are both seen.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import anyio

from inwall.errors import ConfigError
from inwall.governance.errors import PolicyError
from inwall.governance.policy import PolicyEngine, PolicySet

__all__ = ["RACY_WINDOW_S", "PolicyFile"]

log = logging.getLogger("inwall.governance")

RACY_WINDOW_S: Final = 2.0

_Signature = tuple[int, int, int, int, int]


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PolicyFile:
    """The policy engine for one Cedar file, reloaded when the file changes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        on_error: Callable[[str], None] | None = None,
        on_reload: Callable[[PolicyEngine], None] | None = None,
    ) -> None:
        self._path = Path(path)
        self._on_error = on_error
        self._on_reload = on_reload
        try:
            st = self._path.stat()
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"policy file {self._path} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"policy file {self._path} cannot be read: {exc}") from exc
        self._engine = PolicyEngine(PolicySet.parse(text, source=str(self._path)))
        self._digest = hashlib.sha256(text.encode()).hexdigest()
        self._signature: _Signature | None = self._trusted(st)
        self._rejected: str | None = None  # digest (or "missing:<errno>") last rejected
        self._rejected_signature: _Signature | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def engine(self) -> PolicyEngine:
        """The engine in force. Swapped whole on reload, so a reader never sees half a policy."""
        return self._engine

    def maybe_reload(self) -> bool:
        """Apply the file if it changed and is valid; True when a new policy took effect."""
        try:
            st = self._path.stat()
        except OSError as exc:
            self._reject(f"missing:{exc.errno}", f"cannot stat: {exc.strerror or exc}")
            self._signature = None
            return False
        signature = _signature(st)
        if signature in (self._signature, self._rejected_signature):
            return False
        try:
            text = self._path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self._reject(f"unreadable:{signature}", f"cannot read: {exc}")
            return False
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._digest:
            self._signature = self._trusted(st)
            self._rejected = None
            self._rejected_signature = None
            return False
        if digest == self._rejected:
            self._rejected_signature = self._trusted(st)
            return False
        try:
            policies = PolicySet.parse(text, source=str(self._path))
        except PolicyError as exc:
            self._reject(digest, exc.message)
            self._rejected_signature = self._trusted(st)
            return False
        self._engine = PolicyEngine(policies)
        self._digest = digest
        self._signature = self._trusted(st)
        self._rejected = None
        self._rejected_signature = None
        log.info("policy file %s reloaded; %s", self._path, self._engine.describe())
        if self._on_reload is not None:
            self._on_reload(self._engine)
        return True

    async def watch(self, interval_s: float = 1.0) -> None:
        """Check the file every ``interval_s`` until cancelled (run it in the server's task group)."""
        while True:
            self.maybe_reload()
            await anyio.sleep(interval_s)

    def _trusted(self, st: os.stat_result) -> _Signature | None:
        """The stat to compare against next time, or None to look again (see RACY_WINDOW_S)."""
        if time.time() - st.st_mtime < RACY_WINDOW_S:
            return None
        return _signature(st)

    def _reject(self, key: str, why: str) -> None:
        if key == self._rejected:
            return
        self._rejected = key
        message = f"policy file {self._path} rejected; the previous policy stays in force: {why}"
        log.error("%s", message)
        if self._on_error is not None:
            self._on_error(message)
