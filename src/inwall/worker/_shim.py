"""The in-sandbox half of the worker: one per session, the SDK toolset's semantics inside bubblewrap.

The worker starts this file as ``python3 -I -S -c <source>`` inside the
session's sandbox, so it imports nothing but the standard library (the
inwall package may live where the sandbox uid cannot read). It speaks JSON
lines: one request per line on stdin, one reply per line on stdout.

    request  {"id": 7, "op": "bash", "args": {...}}
    cancel   {"op": "cancel", "target": 7}          (no reply of its own)
    reply    {"id": 7, "ok": true,  "result": ..., "meta": {...}}
             {"id": 7, "ok": false, "error": ...,  "meta": {...}}   a ToolError the model reads
             {"id": 7, "ok": false, "exception": "ValueError(...)"}  anything else, as repr
             {"id": 7, "ok": false, "cancelled": true}

Why a resident process instead of one sandboxed command per call: starting
bubblewrap costs tens of milliseconds and a persistent shell must outlive
calls anyway; a warm call is then a pipe round trip.

Ops run on the main thread, in order (the SDK runner issues one call at a
time), so ``grep``'s CPU timer (SIGVTALRM) works as the SDK's does. A reader
thread takes requests off stdin so a ``cancel`` can kill a running command.

Semantics are the SDK's ``anthropic.lib.tools.agent_toolset`` (2.14):
error strings, caps, truncation notes and the bash sentinel protocol are
copied, and tests compare both implementations on the same inputs. Where
the SDK has a race (a dead shell can surface ``BrokenResourceError()``
before the process is reaped) this file returns the settled answer
("bash session terminated; restart required") every time.

One deliberate deviation: **bash returns up to ``bash_output_bytes`` of
output** (the host sets it from the sandbox's ``inwall.limits.output_bytes``,
at most 8 MiB, the default), where the SDK keeps only the last 100 KiB
(:data:`SDK_BASH_OUTPUT_LIMIT`). The control plane offloads any result over
its token threshold to a file in the workspace and shows the model a note
(issue 5), and it can only do that with a result that reached it whole: a
1 MB build log cut to its last 100 KiB by the worker is lost, not offloaded.
Beyond the limit the SDK's behaviour holds: the tail is kept behind an
``[output truncated]`` line. Independently, the text's JSON form is kept
under :data:`RESULT_JSON_CEILING` (9 MiB; the tail again), because newlines
and control characters take 2 to 6 bytes once escaped and the result must
fit the control plane's 10 MiB request limit.
"""

# ruff: noqa: TRY300, TRY301 - the file tools keep the SDK's control flow line for line, so the two compare
from __future__ import annotations

import base64
import errno
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from itertools import islice
from pathlib import Path, PurePath, PurePosixPath
from stat import S_ISLNK, S_ISREG
from types import FrameType
from typing import Any

SDK_BASH_OUTPUT_LIMIT = 100 * 1024  # the SDK's bash keeps this much; see the module docstring
DEFAULT_BASH_OUTPUT_BYTES = 8 * 1024 * 1024
RESULT_JSON_CEILING = 9 * 1024 * 1024  # a bash result's text, JSON-escaped, under the 10 MiB request limit
BASH_DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_FILE_BYTES = 256 * 1024
DEFAULT_MAX_IMAGE_BASE64_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_PDF_BYTES = 20 * 1024 * 1024
_BINARY_MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".pdf": "application/pdf",
}
GREP_OUTPUT_LIMIT = 100 * 1024
GREP_MAX_LINE_LENGTH = 2000
_GREP_CPU_SECONDS = 30
GLOB_RESULT_LIMIT = 200
WALK_MAX_ENTRIES = 50_000
READ_STREAM_CHUNK_BYTES = 64 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_MAX_SYMLINK_HOPS = 40
_MISSING_ERRNOS = (errno.ENOENT, errno.ENOTDIR)
# rg's output is cut at GREP_OUTPUT_LIMIT characters; a UTF-8 character is at
# most 4 bytes, so this many bytes always decode to more than the limit.
_RG_STDOUT_CAP = 4 * GREP_OUTPUT_LIMIT + 8
_RG_STDERR_CAP = 64 * 1024
_DENIED_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


class ToolFailure(Exception):
    """A model-visible error (the SDK's ``ToolError``); ``meta`` carries what the host needs to know."""

    def __init__(self, content: Any, meta: dict[str, Any] | None = None) -> None:
        super().__init__(content)
        self.content = content
        self.meta = meta or {}


class Cancelled(Exception):
    """The host cancelled the running op (its own timeout, or the worker draining)."""


# --------------------------------------------------------------------------- paths (SDK parity)


def _fs_reason(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file or directory"
    if isinstance(e, NotADirectoryError):
        return "not a directory"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, FileExistsError):
        return "file already exists"
    if e.errno == errno.ELOOP:
        return "too many levels of symbolic links"
    return (e.strerror or "i/o error").lower()


def _denied_meta(op: str, target: Path, e: OSError) -> dict[str, Any]:
    """A refusal the sandbox caused (read-only mount, permission) becomes a typed violation on the host."""
    if e.errno in _DENIED_ERRNOS:
        return {"denied": {"path": str(target), "op": op, "detail": os.strerror(e.errno or 0)}}
    return {}


def _fs_error(op: str, file_path: str, e: OSError, target: Path | None = None) -> ToolFailure:
    meta = (
        _denied_meta("write" if op in ("write", "edit") else "read", target, e) if target is not None else {}
    )
    return ToolFailure(f"{op}: {file_path}: {_fs_reason(e)}", meta)


def _within(child: PurePath, root: PurePath) -> bool:
    return child.parts[: len(root.parts)] == root.parts


def _symlink_loop_error() -> OSError:
    return OSError(errno.ELOOP, os.strerror(errno.ELOOP))


def _canonicalize(path: Path) -> Path:
    """``.``/``..`` collapsed lexically, every symlink followed, missing tail kept (the SDK's algorithm)."""
    prefix = Path(os.path.normpath(str(path)))
    missing_tail: list[str] = []
    hops = 0
    while True:
        try:
            return prefix.resolve(strict=True).joinpath(*reversed(missing_tail))
        except RuntimeError:
            raise _symlink_loop_error() from None
        except OSError as e:
            if e.errno not in _MISSING_ERRNOS:
                raise
            unresolved = e
        try:
            is_symlink = S_ISLNK(os.lstat(prefix).st_mode)
        except OSError as e:
            if e.errno not in _MISSING_ERRNOS or prefix.parent == prefix:
                raise
            missing_tail.append(prefix.name)
            prefix = prefix.parent
            continue
        if not is_symlink:
            raise unresolved
        hops += 1
        if hops > _MAX_SYMLINK_HOPS:
            raise _symlink_loop_error()
        parent = os.path.realpath(prefix.parent, strict=True)
        prefix = Path(os.path.normpath(os.path.join(parent, os.readlink(prefix), *reversed(missing_tail))))
        missing_tail.clear()


# --------------------------------------------------------------------------- bash


class BashShell:
    """A persistent ``/bin/bash``; cwd, variables, functions and jobs survive across calls."""

    def __init__(self, workdir: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["/bin/bash", "--noprofile", "--norc"],
            cwd=workdir,
            env={**env, "PS1": "", "PS2": "", "TERM": "dumb"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,
            start_new_session=True,  # its own process group: a kill takes its jobs with it
        )
        self.dead = False

    @property
    def closed(self) -> bool:
        return self.dead or self.proc.poll() is not None

    def kill(self) -> None:
        """Kill the shell and its process group (background jobs too), then reap it."""
        self.dead = True
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with suppress(ProcessLookupError):
            self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with suppress(OSError):
                    stream.close()
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(2)

    def exec(
        self,
        cmd: str,
        timeout: float,
        cancelled: Callable[[], bool],
        limit: int = DEFAULT_BASH_OUTPUT_BYTES,
    ) -> tuple[str, int, dict[str, Any]]:
        """Run one command; (output, exit code, meta). Raises TimeoutError, RuntimeError or Cancelled.

        Keeps the last ``limit`` bytes, as the SDK keeps its last 100 KiB. The
        buffer is trimmed only when it reaches twice the limit and the
        sentinel is searched for in new bytes only, so a command printing far
        more than a multi-megabyte limit costs linear time, not quadratic.
        """
        if self.closed:
            self.dead = True
            raise RuntimeError("bash session terminated; restart required")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        sentinel = f"__ANT_CMD_{uuid.uuid4().hex}_DONE__"
        sentinel_split = f"{sentinel[:8]}''{sentinel[8:]}"
        wrapped = f"{{ {cmd}\n}} </dev/null 2>&1; printf '\\n{sentinel_split}%d\\n' $?\n"
        try:
            _write_all(self.proc.stdin.fileno(), wrapped.encode())
        except OSError:
            self.kill()
            raise RuntimeError("bash session terminated; restart required") from None
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        total = 0
        marker = sentinel.encode()
        at = -1  # where the sentinel starts in buf, once seen
        deadline = time.monotonic() + timeout
        eof = False
        while True:
            if cancelled():
                self.kill()
                raise Cancelled()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise TimeoutError(f"bash command timed out after {timeout}s")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                eof = True
                break
            total += len(chunk)
            seen = len(buf)
            buf.extend(chunk)
            if at < 0:
                at = buf.find(marker, max(0, seen - len(marker) + 1))
            if at >= 0 and buf.find(b"\n", at + len(marker)) >= 0:
                break
            if len(buf) > 2 * limit and at < 0:
                del buf[: len(buf) - limit]
        if cancelled():
            self.kill()
            raise Cancelled()
        if eof:  # the command ended the shell (`exit`, a syntax error): settle its state now
            self.kill()
        truncated = total > limit
        if len(buf) > limit:
            del buf[: len(buf) - limit]
        text = _ANSI.sub("", buf.decode(errors="replace"))
        meta: dict[str, Any] = {"output_bytes": total, "truncated": truncated}
        idx = text.rfind(sentinel)
        if idx < 0:
            meta["shell_exited"] = True
            return text.strip(), -1, meta
        out = text[:idx].rstrip("\n")
        tail = text[idx + len(sentinel) :].strip()
        try:
            code = int(tail.splitlines()[0]) if tail else -1
        except ValueError:
            code = -1
        out, cut = _fit_json(out, RESULT_JSON_CEILING)
        if cut:
            meta["truncated"] = truncated = True
        if truncated:
            out = "[output truncated]\n" + out
        return out, code, meta


def _fit_json(text: str, limit: int) -> tuple[str, bool]:
    """The tail of ``text`` whose JSON string body is at most ``limit`` bytes; True if it was cut.

    A JSON string takes at most 6 bytes per character (``\\u0001``), so most
    outputs skip the measuring. Cutting is proportional and converges in a
    few rounds.
    """
    if len(text) * 6 <= limit:
        return text, False
    size = len(json.dumps(text, ensure_ascii=False).encode()) - 2
    cut = False
    while size > limit and text:
        keep = max(0, min(len(text) - 1, int(len(text) * limit / size)))
        text = text[len(text) - keep :]
        size = len(json.dumps(text, ensure_ascii=False).encode()) - 2
        cut = True
    return text, cut


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# --------------------------------------------------------------------------- the ops


class Shim:
    """The six tools plus ``hello``/``stop``; one instance per sandbox."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
        self.max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES
        self.explicit_max_file_bytes = False
        self.max_image_base64_bytes: int | None = DEFAULT_MAX_IMAGE_BASE64_BYTES
        self.max_pdf_bytes: int | None = DEFAULT_MAX_PDF_BYTES
        self.bash: BashShell | None = None
        self.bash_output_bytes = DEFAULT_BASH_OUTPUT_BYTES
        self.cancel_requested = False
        self.child: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    # -- control

    def cancel(self) -> None:
        """Called from the reader thread: stop whatever runs now, at once."""
        with self.lock:
            self.cancel_requested = True
            if self.bash is not None and not self.bash.dead:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.bash.proc.pid, signal.SIGKILL)
            if self.child is not None:
                with suppress(ProcessLookupError):
                    self.child.kill()

    def cancelled(self) -> bool:
        return self.cancel_requested

    def close(self) -> None:
        if self.bash is not None:
            self.bash.kill()
            self.bash = None

    def op_hello(self, args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if "workdir" in args:
            self.workdir = str(args["workdir"])
        if "max_file_bytes" in args:
            self.max_file_bytes = args["max_file_bytes"]
            self.explicit_max_file_bytes = True
        if "bash_output_bytes" in args:
            self.bash_output_bytes = max(1, int(args["bash_output_bytes"]))
        info = {
            "pid": os.getpid(),
            "uid": os.getuid(),
            "python": sys.version.split()[0],
            "workdir": str(Path(self.workdir).resolve()),
        }
        return info, {}

    # -- paths

    def resolve_path(self, p: str) -> Path:
        candidate = Path(p)
        root = Path(self.workdir).resolve()
        try:
            full = _canonicalize(candidate if candidate.is_absolute() else root / candidate)
        except OSError as e:
            raise ValueError(f"path {p!r}: {_fs_reason(e)}") from e
        if _within(full, root):
            return full
        raise ValueError(f"path {p!r} is outside the session's working directory")

    def _may_reach(self, path: str) -> bool:
        try:
            real = Path(os.path.realpath(path, strict=True))
            roots = [_canonicalize(Path(os.path.realpath(self.workdir)))]
        except OSError:
            return True
        norm = [PurePath(unicodedata.normalize("NFC", str(p).casefold())) for p in (real, *roots)]
        real_n, roots_n = norm[0], norm[1:]
        return any(real_n.is_relative_to(root) for root in roots_n)

    # -- bash

    def op_bash(self, args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        command = args.get("command")
        if args.get("restart"):
            self.close()
            self.bash = BashShell(self.workdir, self.env)
            return "bash session restarted", {"restarted": True}
        if not command:
            raise ToolFailure("bash: command is required")
        timeout_ms = args.get("timeout_ms")
        timeout = timeout_ms / 1000.0 if timeout_ms else BASH_DEFAULT_TIMEOUT
        cap = args.get("cap_timeout_s")
        capped = False
        if cap is not None and cap < timeout:
            timeout, capped = float(cap), True
        try:
            if self.bash is None:
                self.bash = BashShell(self.workdir, self.env)
            out, code, meta = self.bash.exec(command, timeout, self.cancelled, self.bash_output_bytes)
        except TimeoutError as e:
            raise ToolFailure(
                f"bash: {e}", {"timed_out": True, "capped": capped, "timeout_s": timeout}
            ) from e
        except RuntimeError as e:
            raise ToolFailure(f"bash: {e}", {"terminated": True}) from e
        meta["exit_code"] = code
        if code != 0:
            raise ToolFailure(out, meta)
        return out, meta

    # -- read

    def _read_binary(self, target: Path, file_path: str, size: int, media_type: str) -> dict[str, Any]:
        limit: int | None
        if media_type == "application/pdf":
            limit = self.max_pdf_bytes
        else:
            b64 = self.max_image_base64_bytes
            limit = (b64 // 4) * 3 if b64 is not None else None
        if self.explicit_max_file_bytes and self.max_file_bytes is not None:
            limit = self.max_file_bytes if limit is None else min(limit, self.max_file_bytes)
        if limit is not None and size > limit:
            raise ToolFailure(
                f"read: {file_path} is {size} bytes, exceeds {limit}-byte limit for image/PDF files."
            )
        data = base64.standard_b64encode(target.read_bytes()).decode("ascii")
        if media_type == "application/pdf":
            return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}

    def op_read(self, args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        file_path = args["file_path"]
        view_range = args.get("view_range")
        try:
            target = self.resolve_path(file_path)
        except ValueError as e:
            raise ToolFailure(f"read: {e}") from e
        if view_range and len(view_range) != 2:
            raise ToolFailure("read: view_range must be [start_line, end_line]")
        try:
            st = target.stat()
            if not S_ISREG(st.st_mode):
                raise ToolFailure(f"read: {file_path}: not a regular file")
            media_type = _BINARY_MEDIA_TYPES.get(target.suffix.lower())
            if media_type is not None:
                if view_range:
                    raise ToolFailure("read: view_range is not supported for image/PDF files")
                return [self._read_binary(target, file_path, st.st_size, media_type)], {}
            limit = self.max_file_bytes
            if limit is not None and st.st_size > limit:
                if not view_range:
                    raise ToolFailure(
                        f"read: {file_path} is {st.st_size} bytes, exceeds {limit}-byte limit. "
                        "Use the view_range parameter to read specific line ranges, "
                        "e.g. view_range: [1, 500]."
                    )
                return _read_line_range(target, file_path, view_range[0], view_range[1], limit), {}
            text = target.read_bytes().decode("utf-8")
        except ToolFailure:
            raise
        except UnicodeDecodeError as e:
            raise ToolFailure(
                f"read: {file_path}: not valid UTF-8 text "
                "(binary files are only supported for image/PDF extensions)"
            ) from e
        except OSError as e:
            raise _fs_error("read", file_path, e, target) from e
        if not view_range:
            return text, {}
        start_line, end_line = view_range
        lines = text.split("\n")
        start = max(0, start_line - 1)
        end = end_line if end_line > 0 else len(lines)
        return "\n".join(lines[start:end]), {}

    # -- write / edit

    def op_write(self, args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        file_path = args["file_path"]
        content = args["content"]
        try:
            target = self.resolve_path(file_path)
        except ValueError as e:
            raise ToolFailure(f"write: {e}") from e
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode("utf-8"))
        except OSError as e:
            raise _fs_error("write", file_path, e, target) from e
        return f"wrote {len(content)} bytes to {file_path}", {"changed": True}

    def op_edit(self, args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        file_path = args["file_path"]
        old_string = args["old_string"]
        new_string = args["new_string"]
        replace_all = args.get("replace_all")
        try:
            target = self.resolve_path(file_path)
        except ValueError as e:
            raise ToolFailure(f"edit: {e}") from e
        try:
            st = target.stat()
            if not S_ISREG(st.st_mode):
                raise ToolFailure(f"edit: {file_path}: not a regular file")
            limit = self.max_file_bytes
            if limit is not None and st.st_size > limit:
                raise ToolFailure(
                    f"edit: {file_path} is {st.st_size} bytes, exceeds {limit}-byte limit. "
                    "The edit tool loads the whole file and cannot modify a file this large."
                )
            text = target.read_bytes().decode("utf-8")
        except ToolFailure:
            raise
        except UnicodeDecodeError as e:
            raise ToolFailure(f"edit: {file_path}: not valid UTF-8 text (cannot edit binary files)") from e
        except OSError as e:
            raise _fs_error("edit", file_path, e, target) from e
        count = text.count(old_string)
        if count == 0:
            raise ToolFailure(f"edit: old_string not found in {file_path}")
        if not replace_all and count > 1:
            raise ToolFailure(f"edit: old_string appears {count} times in {file_path} (must be unique)")
        updated = (
            text.replace(old_string, new_string) if replace_all else text.replace(old_string, new_string, 1)
        )
        try:
            target.write_bytes(updated.encode("utf-8"))
        except OSError as e:
            raise _fs_error("edit", file_path, e, target) from e
        return f"edited {file_path} ({count if replace_all else 1} replacement(s))", {"changed": True}

    # -- glob

    def op_glob(self, args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        pattern = args["pattern"]
        path = args.get("path")
        if Path(pattern).is_absolute():
            raise ToolFailure(
                "glob: absolute pattern not permitted; pass a relative pattern (and optionally path)"
            )
        if ".." in PurePosixPath(pattern).parts:
            raise ToolFailure("glob: '..' is not permitted in the pattern")
        if path:
            try:
                root = self.resolve_path(path)
            except ValueError as e:
                raise ToolFailure(f"glob: {e}") from e
        else:
            root = Path(self.workdir).resolve()
        try:
            matches = list(islice(root.glob(pattern), WALK_MAX_ENTRIES))
        except (ValueError, OSError) as e:
            raise ToolFailure(f"glob: {e}") from e
        matches = list(_confined(matches, root))
        if not matches:
            return "no matches", {}
        matches.sort(key=_mtime_or_zero, reverse=True)
        return "\n".join(str(m) for m in matches[:GLOB_RESULT_LIMIT]), {}

    # -- grep

    def op_grep(self, args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        pattern = args["pattern"]
        path = args.get("path")
        try:
            search = self.resolve_path(path) if path else Path(self.workdir).resolve()
        except ValueError as e:
            raise ToolFailure(f"grep: {e}") from e
        candidates = (
            shutil.which(os.path.join(entry, "rg"))
            for entry in os.get_exec_path(self.env)
            if Path(entry).is_absolute()
        )
        rg = next((c for c in candidates if c and not self._may_reach(c)), None)
        if rg:
            return self._rg(rg, pattern, search), {}
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ToolFailure(f"grep: invalid regex: {e}") from e
        with _walk_deadline():
            return _walk_grep(rx, search, self.cancelled), {}

    def _rg(self, rg: str, pattern: str, search: Path) -> str:
        proc = subprocess.Popen(  # noqa: S603 - ripgrep on a model-given pattern, inside the sandbox
            [rg, "--no-config", "-n", "--no-heading", "-e", pattern, "--", str(search)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
        )
        with self.lock:
            self.child = proc
        out = bytearray()
        err = bytearray()
        cut = False
        try:
            assert proc.stdout is not None and proc.stderr is not None
            streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
            while streams:
                if self.cancelled():
                    proc.kill()
                    raise Cancelled()
                ready, _, _ = select.select(list(streams), [], [], 0.5)
                for fd in ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        del streams[fd]
                        continue
                    buf = streams[fd]
                    buf += chunk
                    if fd == proc.stdout.fileno() and len(buf) >= _RG_STDOUT_CAP:
                        cut = True  # more than the cap can show: the rest is never read
                        streams.clear()
                        break
                    if fd == proc.stderr.fileno() and len(buf) > _RG_STDERR_CAP:
                        del buf[_RG_STDERR_CAP:]
            if cut:
                proc.kill()
            rc = proc.wait()
            if self.cancelled():
                raise Cancelled()
        finally:
            with self.lock:
                self.child = None
            for s in (proc.stdout, proc.stderr):
                if s is not None:
                    s.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if cut:
            rc = 0
        if rc == 1:
            return "no matches"
        if rc != 0:
            raise ToolFailure(f"grep: rg failed: {err.decode(errors='replace')}")
        text = out.decode(errors="replace")
        if len(text) > GREP_OUTPUT_LIMIT:
            text = text[:GREP_OUTPUT_LIMIT] + f"\n[output truncated at {GREP_OUTPUT_LIMIT} bytes]"
        return text


def _read_line_range(path: Path, file_path: str, start_line: int, end_line: int, limit: int) -> str:
    lines = _LineRange(file_path=file_path, start_line=start_line, end_line=end_line, limit=limit)
    if lines.empty():
        return ""
    with path.open("rb") as f:
        while chunk := f.read(READ_STREAM_CHUNK_BYTES):
            lines.collect_from(chunk)
            if lines.collected():
                break
    return lines.text()


class _LineRange:
    """The SDK's ``LineRangeCollector``: lines ``[start, end]`` from consecutive chunks, capped."""

    def __init__(self, *, file_path: str, start_line: int, end_line: int, limit: int) -> None:
        self._file_path = file_path
        self._start_line = start_line
        self._end_line = end_line
        self._start = max(0, start_line - 1)
        self._end = end_line if end_line > 0 else sys.maxsize
        self._limit = limit
        self._line = 0
        self._buf = bytearray()

    def empty(self) -> bool:
        return self._end <= self._start

    def collected(self) -> bool:
        return self._line >= self._end

    def collect_from(self, chunk: bytes) -> None:
        line_start = 0
        while line_start < len(chunk) and not self.collected():
            newline = chunk.find(b"\n", line_start)
            line_end = len(chunk) if newline < 0 else newline
            if self._line >= self._start:
                self._collect(chunk[line_start:line_end], newline_terminated=newline >= 0)
            if newline < 0:
                break
            self._line += 1
            line_start = newline + 1

    def _collect(self, line_bytes: bytes, *, newline_terminated: bool) -> None:
        self._buf += line_bytes
        if newline_terminated and self._line + 1 < self._end:
            self._buf += b"\n"
        if len(self._buf) > self._limit:
            if self._end - self._start == 1:
                raise ToolFailure(
                    f"read: line {self._start + 1} of {self._file_path} alone exceeds "
                    f"{self._limit}-byte limit. "
                    "The read tool cannot return part of a line, so view_range cannot narrow this further."
                )
            raise ToolFailure(
                f"read: view_range [{self._start_line}, {self._end_line}] of {self._file_path} exceeds "
                f"{self._limit}-byte limit. Narrow the view_range to read a smaller portion."
            )

    def text(self) -> str:
        try:
            return self._buf.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ToolFailure(
                f"read: {self._file_path}: not valid UTF-8 text "
                "(binary files are only supported for image/PDF extensions)"
            ) from e


def _mtime_or_zero(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _confined(matches: Iterable[Path], root: Path) -> Iterator[Path]:
    for match in matches:
        try:
            canonical = _canonicalize(match)
        except OSError:
            continue
        if _within(canonical, root):
            yield match


@contextmanager
def _walk_deadline() -> Iterator[None]:
    def expire(_signum: int, frame: FrameType | None) -> None:
        if frame and frame.f_code in _walk_grep.__code__.co_consts:
            raise ToolFailure(f"grep: timed out after {_GREP_CPU_SECONDS}s")

    armed = False
    with suppress(AttributeError, ValueError, getattr(signal, "ItimerError", OSError)):
        if signal.getsignal(signal.SIGVTALRM) is signal.SIG_DFL and not any(
            signal.getitimer(signal.ITIMER_VIRTUAL)
        ):
            signal.signal(signal.SIGVTALRM, expire)
            armed = signal.getsignal(signal.SIGVTALRM) is expire
    try:
        if armed:
            signal.setitimer(signal.ITIMER_VIRTUAL, _GREP_CPU_SECONDS, 0.1)
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            signal.signal(signal.SIGVTALRM, signal.SIG_IGN)
            signal.signal(signal.SIGVTALRM, signal.SIG_DFL)


def _walk_grep(rx: re.Pattern[str], search: Path, cancelled: Callable[[], bool]) -> str:
    hits: list[str] = []
    budget = GREP_OUTPUT_LIMIT

    def push(line: str) -> bool:
        nonlocal budget
        budget -= len(line) + 1
        if budget < 0:
            hits.append(f"[output truncated at {GREP_OUTPUT_LIMIT} bytes]")
            return False
        hits.append(line)
        return True

    def scan(full: Path) -> bool:
        if cancelled():
            raise Cancelled()
        try:
            with full.open("rb") as f:
                if b"\x00" in f.read(512):
                    return True
                f.seek(0)
                for i, raw in enumerate(f, 1):
                    if len(raw) > GREP_MAX_LINE_LENGTH:
                        continue
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    if rx.search(line) and not push(f"{full}:{i}:{line}"):
                        return False
        except OSError:
            pass
        return True

    if search.is_file():
        scan(search)
    else:
        seen = 0
        for dirpath, dirnames, filenames in os.walk(search):
            dirnames[:] = [
                d
                for d in dirnames
                if d not in (".git", "node_modules") and not (Path(dirpath) / d).is_symlink()
            ]
            for name in filenames:
                full = Path(dirpath) / name
                if full.is_symlink() or not full.is_file():
                    continue
                seen += 1
                if seen > WALK_MAX_ENTRIES or not scan(full):
                    return "\n".join(hits) if hits else "no matches"
    return "\n".join(hits) if hits else "no matches"


# --------------------------------------------------------------------------- the loop

_OPS = ("hello", "bash", "read", "write", "edit", "glob", "grep")


def _reply(out: Any, message: dict[str, Any]) -> None:
    out.write(json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode() + b"\n")
    out.flush()


def handle(shim: Shim, request: dict[str, Any]) -> dict[str, Any]:
    """Run one request; the reply to send (never raises)."""
    rid = request.get("id")
    op = request.get("op")
    try:
        if op not in _OPS:
            raise ValueError(f"unknown op {op!r}")
        fn = getattr(shim, f"op_{op}")
        result, meta = fn(dict(request.get("args") or {}))
        return {"id": rid, "ok": True, "result": result, "meta": meta}
    except ToolFailure as e:
        return {"id": rid, "ok": False, "error": e.content, "meta": e.meta}
    except Cancelled:
        return {"id": rid, "ok": False, "cancelled": True}
    except Exception as e:  # noqa: BLE001 - the SDK shows any other exception to the model as its repr
        return {"id": rid, "ok": False, "exception": repr(e)}


def main() -> int:
    shim = Shim(os.getcwd())
    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
    current: list[Any] = [None]
    skipped: set[Any] = set()
    state = threading.Lock()  # orders a cancel against the start of the op it names
    stdin = sys.stdin.buffer
    out = sys.stdout.buffer

    def reader() -> None:
        try:
            for line in stdin:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                if msg.get("op") == "cancel":
                    target = msg.get("target")
                    with state:
                        if current[0] == target:
                            shim.cancel()
                        else:
                            skipped.add(target)
                    continue
                inbox.put(msg)
        finally:
            inbox.put(None)

    threading.Thread(target=reader, name="inwall-shim-reader", daemon=True).start()
    try:
        while True:
            msg = inbox.get()
            if msg is None:
                break
            rid = msg.get("id")
            with state:
                cancelled_early = rid in skipped
                skipped.discard(rid)
                shim.cancel_requested = False
                current[0] = None if cancelled_early else rid
            if cancelled_early:
                _reply(out, {"id": rid, "ok": False, "cancelled": True})
                continue
            reply = handle(shim, msg)
            with state:
                current[0] = None
            _reply(out, reply)
    except BrokenPipeError:
        pass
    finally:
        shim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
