"""What the sandbox uid can reach on the host: paths it can search, a Python it can run.

As root, inwall runs commands as an unprivileged uid (``inwall.run_as_uid``),
so a directory or interpreter the worker itself uses (a venv under /root,
say) may be out of the sandbox's reach. The checks here read permission bits
the way the kernel would for that uid (no supplementary groups), so a bad
layout is refused with a message instead of failing inside the sandbox.

Kept free of heavy imports: ``inwall sandbox exec`` loads this per command.
"""

from __future__ import annotations

import os
import sys

from inwall.errors import SandboxUnavailable

__all__ = ["sandbox_python", "unsearchable_ancestor"]

#: interpreters tried in order: the running one (when the sandbox uid can reach it), then the system's
_PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3")


def _ancestors(path: str) -> list[str]:
    """``path`` and every directory above it, outermost first."""
    out = [path]
    while True:
        parent = os.path.dirname(out[-1])
        if parent == out[-1]:
            break
        out.append(parent)
    return out[::-1]


def _permits(st: os.stat_result, uid: int, gid: int, owner_bit: int) -> bool:
    """The owner, group or other bit (``owner_bit`` shifted) that applies to ``uid``/``gid``."""
    if st.st_uid == uid:
        return bool(st.st_mode & owner_bit)
    if st.st_gid == gid:
        return bool(st.st_mode & (owner_bit >> 3))
    return bool(st.st_mode & (owner_bit >> 6))


def unsearchable_ancestor(path: str, uid: int, gid: int) -> str | None:
    """The first of ``path`` and its ancestors that ``uid`` cannot search, or None."""
    if uid == os.geteuid():
        for anc in _ancestors(path):
            if not os.access(anc, os.X_OK):
                return anc
        return None
    for anc in _ancestors(path):
        try:
            st = os.stat(anc)
        except OSError:
            return anc
        if not _permits(st, uid, gid, 0o100):
            return anc
    return None


def sandbox_python(uid: int, gid: int) -> str:
    """A Python 3 the sandbox uid can execute: this interpreter when it can, else the system one.

    The egress bridge and the worker's tool shim both run one inside the
    sandbox. The real path is returned (a venv's ``python`` is a symlink
    whose target may sit where the sandbox uid can reach it while the venv
    does not).
    """
    for cand in (sys.executable, *_PYTHON_CANDIDATES):
        real = os.path.realpath(cand)
        if not os.path.isfile(real) or unsearchable_ancestor(os.path.dirname(real), uid, gid) is not None:
            continue
        if uid == os.geteuid():
            if os.access(real, os.X_OK):
                return real
        elif _permits(os.stat(real), uid, gid, 0o100):
            return real
    raise SandboxUnavailable(
        f"no Python interpreter the sandbox uid {uid} can execute (the egress bridge and the worker's "
        "tools run one inside the sandbox): `apt-get install python3-minimal`"
    )
