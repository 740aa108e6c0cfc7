"""In-sandbox init for sandboxes with network: start the egress bridge, then run the command.

Runs as bwrap's command, by file path, under the host's system Python with
``-I -S`` (no site, no environment) and imports nothing from inwall: the
package may live where the sandbox uid cannot read, so the runner copies this
file, EG's ``bridge.py`` and the seccomp program into ``/run/inwall``.

Why an init at all: the command must not create ``AF_UNIX`` sockets, but the
bridge that carries its proxy traffic to the host must. So bwrap starts this
process without a seccomp filter; it forks the command first (before any
thread exists), starts the bridge threads, waits until the listeners are up,
then lets the child apply ``no_new_privs`` + the filter via ``prctl`` and
``exec``. The init marks itself non-dumpable so the filtered command cannot
reach the unfiltered bridge through ``/proc/<pid>/mem``; ptrace is refused
by the filter anyway.

Usage: _init.py [--rlimit NAME=SOFT:HARD]... --seccomp FILE --bridge FILE
                --unix SOCKET [--listen HOST:PORT]... -- COMMAND [ARGS...]
Exit status: the command's (128+N when killed by signal N); 125 when the
init itself fails, 126/127 when the command cannot be executed.
"""

# ruff: noqa: S606 - deferred imports keep the init fast; it execs the command it was given
from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

_RLIMITS = {
    "core": "RLIMIT_CORE",
    "nproc": "RLIMIT_NPROC",
    "nofile": "RLIMIT_NOFILE",
    "as": "RLIMIT_AS",
    "cpu": "RLIMIT_CPU",
    "fsize": "RLIMIT_FSIZE",
}
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2
_READY_TIMEOUT_S = 5.0


def _die(msg: str, code: int = 125) -> NoReturn:
    os.write(2, ("inwall-init: " + msg + "\n").encode("utf-8", "replace"))
    os._exit(code)


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _parse(argv: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    opts: dict[str, list[str]] = {"rlimit": [], "listen": [], "seccomp": [], "bridge": [], "unix": []}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return opts, argv[i + 1 :]
        if i + 1 >= len(argv) or not a.startswith("--") or a[2:] not in opts:
            _die("bad arguments: " + a)
        opts[a[2:]].append(argv[i + 1])
        i += 2
    _die("missing -- COMMAND")


def _listening(ports: list[int]) -> bool:
    """True when every port is in LISTEN state in this netns (no probe connection needed)."""
    seen: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[3] == "0A":
                        seen.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return all(p in seen for p in ports)


def _child(
    ready_r: int, opts: dict[str, list[str]], command: list[str], prog: bytes, libc: ctypes.CDLL
) -> None:
    import resource

    os.read(ready_r, 1)
    os.close(ready_r)
    for spec in opts["rlimit"]:
        name, _, rng = spec.partition("=")
        soft, _, hard = rng.partition(":")
        resource.setrlimit(getattr(resource, _RLIMITS[name]), (int(soft), int(hard)))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _die("prctl(NO_NEW_PRIVS) failed")
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _Fprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    rc = libc.prctl(
        ctypes.c_int(_PR_SET_SECCOMP), ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0
    )
    if rc != 0:
        _die(f"prctl(SECCOMP) failed: errno {ctypes.get_errno()}")
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        _die(f"cannot execute {command[0]}: {exc.strerror}", 127 if exc.errno == 2 else 126)


def main(argv: list[str]) -> None:
    opts, command = _parse(argv)
    if not command:
        _die("empty command")
    with open(opts["seccomp"][-1], "rb") as f:
        prog = f.read()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    listeners = []
    for spec in opts["listen"]:
        host, _, port = spec.rpartition(":")
        listeners.append((host, int(port)))

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_w)
        try:
            _child(ready_r, opts, command, prog, libc)
        finally:
            os._exit(125)
    os.close(ready_r)

    # Signals from the host reach the command's process group directly; the
    # init only has to survive them (a handler, not SIG_IGN, which exec keeps).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, lambda *_: None)

    if listeners:
        import importlib.util
        import threading

        mspec = importlib.util.spec_from_file_location("inwall_bridge", opts["bridge"][-1])
        if mspec is None or mspec.loader is None:
            _die("cannot load the egress bridge")
        bridge = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(bridge)
        t = threading.Thread(target=bridge.serve, args=(listeners, opts["unix"][-1]), daemon=True)
        t.start()
        deadline = time.monotonic() + _READY_TIMEOUT_S
        ports = [p for _, p in listeners]
        while not _listening(ports):
            if time.monotonic() > deadline or not t.is_alive():
                os.kill(pid, signal.SIGKILL)
                _die("the egress bridge did not start")
            time.sleep(0.001)
    os.write(ready_w, b"x")
    os.close(ready_w)

    while True:
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status):
            os._exit(os.WEXITSTATUS(status))
        if os.WIFSIGNALED(status):
            os._exit(128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main(sys.argv[1:])
