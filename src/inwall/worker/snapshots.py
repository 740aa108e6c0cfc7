"""Workspace snapshots: content-addressed blobs and per-snapshot manifests, shared by a pool of workers.

Why: a worker killed mid-session must not lose the session's files. After
every tool call that may have changed the workspace the worker records what
the workspace holds; another worker that claims the session restores it
before running any tool.

Cheap by construction. The snapshotter keeps, per path, what it last saw
(kind, mode, size, mtime_ns, inode, ctime_ns) and the content digest. A scan
stats every entry and hashes only files whose stat changed, so one changed
file in a 100 MB workspace costs one small hash and one blob copy. A file
whose last change (the later of mtime and ctime, which no one can set back)
falls within the racy window of the scan that recorded it is "racily clean"
(timestamps are coarse: a second write inside the same tick leaves them
unchanged) and is re-hashed on the next scan, as git does. The window is the
timestamps' own tick: a change stamped with sub-second precision comes from a
kernel clock that ticks every jiffy (at most 10 ms), so 50 ms covers it; a
change stamped on a whole second comes from a coarse filesystem (FAT ticks
every 2 s), so 2 s. A one-size 1 s window made every file written in the last
second re-hash on every call: ten megabyte-sized outputs, 25 ms a call.

Safe against the workspace's owner. The worker runs this on the host, often
as root, while sandboxed processes may still be changing the tree. Every
directory is opened relative to its parent with ``O_NOFOLLOW`` and every file
with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat``: swapping a path
for a symlink (to ``/etc/shadow``, say) between the stat and the open makes
the open fail instead of copying a host file into the snapshot, and a FIFO
cannot block the scan. Restores create entries the same way, with
``O_EXCL``, into an emptied workspace, owned by the sandbox uid, with
set-id bits dropped.

Crash-safe writes. Blobs and manifests are written to a temporary name,
fsynced and renamed; a worker killed mid-snapshot leaves the previous
manifest the latest one. Sequence numbers (not clocks) order manifests, so
workers on hosts with skewed clocks agree on "latest".

Storage is behind :class:`SnapshotStore` (a directory today:
:class:`DirectoryStore`; an S3-compatible store needs the same nine calls).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from inwall.errors import ConfigError, IntegrityError, InvalidInput

__all__ = [
    "BlobWriter",
    "DirectoryStore",
    "GcReport",
    "PrepareReport",
    "SnapshotReport",
    "SnapshotStore",
    "WorkspaceSnapshots",
    "collect_garbage",
    "safe_session_id",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_MANIFEST_VERSION = 1
_STATE_VERSION = 1
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MANIFEST_NAME = re.compile(r"^(\d{12})-[0-9a-f]{8}\.json$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_DEPTH = 256


def safe_session_id(session_id: str) -> str:
    """A session id that is safe as one path component (ids come from the server)."""
    if not _SESSION_ID.match(session_id) or ".." in session_id:
        raise InvalidInput(f"refusing session id {session_id[:80]!r}: not a safe path component")
    return session_id


# --------------------------------------------------------------------------- storage


class BlobWriter(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self, digest: str) -> None: ...
    def abort(self) -> None: ...


class SnapshotStore(Protocol):
    """Blobs by sha256 digest and manifests by (session, name); all calls are blocking."""

    def has_blob(self, digest: str) -> bool:
        """True if present; also refreshes its age so a concurrent GC keeps it."""
        ...

    def blob_writer(self) -> BlobWriter: ...
    def open_blob(self, digest: str) -> BinaryIO: ...
    def put_manifest(self, session_id: str, name: str, data: bytes) -> None: ...
    def get_manifest(self, session_id: str, name: str) -> bytes: ...
    def list_manifests(self, session_id: str) -> list[str]: ...
    def delete_manifest(self, session_id: str, name: str) -> None: ...
    def list_sessions(self) -> list[str]: ...
    def iter_blobs(self) -> Iterator[tuple[str, float]]: ...
    def delete_blob(self, digest: str, *, older_than: float) -> bool: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirBlobWriter:
    def __init__(self, store: DirectoryStore) -> None:
        self._store = store
        self._tmp = store.root / "tmp" / f"blob-{secrets.token_hex(8)}"
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self, digest: str) -> None:
        if not _DIGEST.match(digest):
            raise InvalidInput(f"not a sha256 digest: {digest!r}")
        try:
            if self._store.durable:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1
        final = self._store.blob_path(digest)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(self._tmp, final)
        if self._store.durable:
            _fsync_dir(final.parent)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class DirectoryStore:
    """A snapshot store in a local or shared directory (NFS works; it needs atomic rename).

    ``root/blobs/ab/<sha256>``, ``root/manifests/<session>/<seq>-<rand>.json``,
    ``root/tmp``. Created 0700: blobs hold every session's files.
    """

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root).absolute()
        self.durable = durable
        try:
            for sub in ("", "blobs", "manifests", "tmp"):
                (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
        except OSError as exc:
            raise ConfigError(f"snapshot directory {self.root}: {exc.strerror or exc}") from exc

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest

    def has_blob(self, digest: str) -> bool:
        try:
            os.utime(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return True

    def blob_writer(self) -> BlobWriter:
        return _DirBlobWriter(self)

    def open_blob(self, digest: str) -> BinaryIO:
        if not _DIGEST.match(digest):
            raise IntegrityError(f"manifest names a blob that is not a sha256 digest: {digest[:80]!r}")
        return self.blob_path(digest).open("rb")

    def _manifest_dir(self, session_id: str) -> Path:
        return self.root / "manifests" / safe_session_id(session_id)

    def put_manifest(self, session_id: str, name: str, data: bytes) -> None:
        d = self._manifest_dir(session_id)
        d.mkdir(mode=0o700, exist_ok=True)
        tmp = self.root / "tmp" / f"manifest-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, d / name)
        if self.durable:
            _fsync_dir(d)

    def get_manifest(self, session_id: str, name: str) -> bytes:
        return (self._manifest_dir(session_id) / name).read_bytes()

    def list_manifests(self, session_id: str) -> list[str]:
        try:
            names = os.listdir(self._manifest_dir(session_id))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if _MANIFEST_NAME.match(n))

    def delete_manifest(self, session_id: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._manifest_dir(session_id) / name)

    def list_sessions(self) -> list[str]:
        return sorted(n for n in os.listdir(self.root / "manifests") if _SESSION_ID.match(n))

    def iter_blobs(self) -> Iterator[tuple[str, float]]:
        for shard in os.scandir(self.root / "blobs"):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for blob in os.scandir(shard.path):
                if _DIGEST.match(blob.name):
                    with contextlib.suppress(FileNotFoundError):
                        yield blob.name, blob.stat(follow_symlinks=False).st_mtime

    def delete_blob(self, digest: str, *, older_than: float) -> bool:
        path = self.blob_path(digest)
        try:
            if path.stat().st_mtime >= older_than:  # touched since it was listed: a snapshot reuses it
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def sweep_tmp(self, *, older_than: float) -> int:
        n = 0
        for e in os.scandir(self.root / "tmp"):
            with contextlib.suppress(FileNotFoundError):
                if e.stat(follow_symlinks=False).st_mtime < older_than:
                    os.unlink(e.path)
                    n += 1
        return n


# --------------------------------------------------------------------------- entries


@dataclass
class _Entry:
    """One path as this host last saw it; ``ref`` is the digest (file) or target (symlink)."""

    kind: str  # "f" file, "d" directory, "l" symlink
    mode: int
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    ref: str
    racy: bool = False

    def same_content(self, other: _Entry) -> bool:
        if self.kind != other.kind or self.mode != other.mode:
            return False
        if self.kind == "d":
            return True  # a directory's own mtime moves with every create/delete inside it
        return self.size == other.size and self.mtime_ns == other.mtime_ns and self.ref == other.ref

    def manifest_row(self, path: str) -> list[Any]:
        return [path, self.kind, self.mode, self.size, self.mtime_ns, self.ref]


def _racy_window_ns(changed_ns: int, coarse_ns: int, fine_ns: int) -> int:
    """The tick of the clock that stamped ``changed_ns``: whole seconds mean a coarse filesystem."""
    return coarse_ns if changed_ns % 1_000_000_000 == 0 else fine_ns


def _entry(kind: str, st: os.stat_result, ref: str, scan_start_ns: int, racy: tuple[int, int]) -> _Entry:
    changed_ns = max(st.st_mtime_ns, st.st_ctime_ns)
    return _Entry(
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        size=st.st_size if kind == "f" else 0,
        mtime_ns=st.st_mtime_ns,
        ino=st.st_ino,
        ctime_ns=st.st_ctime_ns,
        ref=ref,
        racy=kind == "f" and changed_ns >= scan_start_ns - _racy_window_ns(changed_ns, *racy),
    )


@dataclass(frozen=True)
class SnapshotReport:
    """What one :meth:`WorkspaceSnapshots.take` did."""

    changed: bool
    manifest: str | None
    seq: int
    files: int
    total_bytes: int
    hashed_files: int
    hashed_bytes: int
    new_blobs: int
    new_blob_bytes: int
    duration_s: float
    truncated: bool = False
    #: a newer manifest exists (another worker took the session over); nothing was written
    superseded: bool = False


@dataclass(frozen=True)
class PrepareReport:
    """What :meth:`WorkspaceSnapshots.prepare` did before the sandbox started."""

    action: str  # "fresh" | "adopted" | "restored" | "restore_failed"
    manifest: str | None
    seq: int
    files: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    skipped: tuple[str, ...] = field(default_factory=tuple)


def _seq_of(name: str) -> int:
    m = _MANIFEST_NAME.match(name)
    return int(m.group(1)) if m else -1


# --------------------------------------------------------------------------- the snapshotter


class WorkspaceSnapshots:
    """Snapshots of one session's workspace; blocking calls (run them on a worker thread)."""

    def __init__(
        self,
        store: SnapshotStore,
        session_id: str,
        workspace: str | os.PathLike[str],
        *,
        state_file: str | os.PathLike[str] | None = None,
        owner: tuple[int, int] | None = None,
        keep: int = 5,
        max_entries: int = 1_000_000,
        racy_window_s: float = 2.0,
        fine_racy_window_s: float = 0.05,
    ) -> None:
        if keep < 1:
            raise ConfigError("keep at least one snapshot per session")
        self.store = store
        self.session_id = safe_session_id(session_id)
        self.workspace = Path(workspace)
        self.state_file = Path(state_file) if state_file is not None else None
        self.owner = owner
        self.keep = keep
        self.max_entries = max_entries
        #: (coarse, fine): the racy window for whole-second and for sub-second timestamps
        self.racy_windows_ns = (int(racy_window_s * 1e9), int(fine_racy_window_s * 1e9))
        self.seq = 0
        #: when this claim began; of two writers forked from one snapshot, the later claim wins
        self.claim_ns = time.time_ns()
        self.manifest: str | None = None
        self.baseline: dict[str, _Entry] = {}
        #: paths skipped while they are empty files or directories (the sandbox's mount-point placeholders)
        self.ignore: set[str] = set()

    # -- before the sandbox starts

    def prepare(self, *, existed: bool) -> PrepareReport:
        """Make the workspace match the latest snapshot unless this host already holds exactly that.

        ``existed``: the workspace was there before the worker created it for
        this claim. A workspace left without a state file (its worker died,
        or snapshots were off) is not trusted when a snapshot exists: it may
        hold half of an interrupted call, and that call will be run again.
        """
        start = time.monotonic()
        state = self._consume_state()
        names = self.store.list_manifests(self.session_id)
        latest = names[-1] if names else None
        if state is not None and existed:
            seq, manifest, baseline = state
            if latest is None or seq > _seq_of(latest) or manifest == latest:
                self.seq, self.manifest, self.baseline = seq, manifest, baseline
                return PrepareReport("adopted", manifest, seq, files=len(baseline))
        if latest is None:
            if not existed:
                return PrepareReport("fresh", None, 0)
            return PrepareReport("adopted", None, 0)  # no snapshot to prefer over what is here
        if existed:
            self._wipe()
        skipped: list[str] = []
        for name in reversed(names):
            try:
                files, nbytes = self._restore(name)
            except (OSError, ValueError, IntegrityError) as exc:
                log.warning("snapshot %s/%s cannot be restored: %s", self.session_id, name, exc)
                skipped.append(name)
                self._wipe()
                continue
            self.seq, self.manifest = _seq_of(name), name
            return PrepareReport(
                "restored", name, self.seq, files, nbytes, time.monotonic() - start, tuple(skipped)
            )
        self.seq = _seq_of(latest)  # keep numbering above the broken ones
        return PrepareReport(
            "restore_failed", None, self.seq, duration_s=time.monotonic() - start, skipped=tuple(skipped)
        )

    # -- after a tool call

    def take(self) -> SnapshotReport:
        """Scan; if anything changed, store new blobs and a new manifest (atomically)."""
        start = time.monotonic()
        scan_start_ns = time.time_ns()
        counters = {"hashed_files": 0, "hashed_bytes": 0, "new_blobs": 0, "new_blob_bytes": 0}
        entries, truncated = self._scan(scan_start_ns, counters)
        total = sum(e.size for e in entries.values())
        files = sum(1 for e in entries.values() if e.kind == "f")
        changed = entries.keys() != self.baseline.keys() or any(
            not e.same_content(self.baseline[p]) for p, e in entries.items()
        )
        report = partial(
            SnapshotReport,
            files=files,
            total_bytes=total,
            hashed_files=counters["hashed_files"],
            hashed_bytes=counters["hashed_bytes"],
            new_blobs=counters["new_blobs"],
            new_blob_bytes=counters["new_blob_bytes"],
        )
        if not changed or truncated:
            self.baseline = entries if not truncated else self.baseline
            return report(
                changed=False,
                manifest=self.manifest,
                seq=self.seq,
                duration_s=time.monotonic() - start,
                truncated=truncated,
            )
        names = self.store.list_manifests(self.session_id)
        if names and _seq_of(names[-1]) > self.seq and self._newer_claim(names[-1]):
            # another worker claimed the session after this one (which lost its lease mid-call):
            # its snapshot wins, and this workspace is no longer the session's
            return report(
                changed=False,
                manifest=self.manifest,
                seq=self.seq,
                duration_s=time.monotonic() - start,
                superseded=True,
            )
        # a latest manifest from an older claim is a stale writer's late snapshot: write above it
        seq = max(self.seq, _seq_of(names[-1]) if names else 0) + 1
        name = f"{seq:012d}-{secrets.token_hex(4)}.json"
        body = {
            "version": _MANIFEST_VERSION,
            "session_id": self.session_id,
            "seq": seq,
            "parent": self.manifest,
            "created_at_ns": time.time_ns(),
            "claim_ns": self.claim_ns,
            "entries": [entries[p].manifest_row(p) for p in sorted(entries)],
        }
        self.store.put_manifest(
            self.session_id, name, json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode()
        )
        self.seq, self.manifest, self.baseline = seq, name, entries
        self._prune()
        return report(changed=True, manifest=name, seq=seq, duration_s=time.monotonic() - start)

    def _newer_claim(self, name: str) -> bool:
        """Whether manifest ``name`` came from a claim that began after this one (unreadable: assume so)."""
        try:
            body = json.loads(self.store.get_manifest(self.session_id, name))
            return int(body.get("claim_ns", 0)) > self.claim_ns
        except (OSError, ValueError, TypeError):
            return True

    # -- at the end of the claim

    def save_state(self) -> None:
        """Remember what this host's workspace holds: the next claim here skips the restore and the rehash."""
        if self.state_file is None:
            return
        body = {
            "version": _STATE_VERSION,
            "session_id": self.session_id,
            "seq": self.seq,
            "manifest": self.manifest,
            "entries": {
                p: [e.kind, e.mode, e.size, e.mtime_ns, e.ino, e.ctime_ns, e.ref, e.racy]
                for p, e in self.baseline.items()
            },
        }
        self.state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(body, ensure_ascii=True, separators=(",", ":")))
        os.replace(tmp, self.state_file)

    def _consume_state(self) -> tuple[int, str | None, dict[str, _Entry]] | None:
        """Read and delete the state file: while the session runs here, a crash must leave none behind."""
        if self.state_file is None:
            return None
        try:
            raw = self.state_file.read_text()
        except FileNotFoundError:
            return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
        try:
            body = json.loads(raw)
            if body.get("version") != _STATE_VERSION or body.get("session_id") != self.session_id:
                return None
            entries = {
                str(p): _Entry(str(k), int(m), int(s), int(mt), int(i), int(ct), str(r), bool(racy))
                for p, (k, m, s, mt, i, ct, r, racy) in body["entries"].items()
            }
            manifest = body.get("manifest")
            return int(body["seq"]), manifest if isinstance(manifest, str) else None, entries
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    # -- scanning

    def _scan(self, scan_start_ns: int, counters: dict[str, int]) -> tuple[dict[str, _Entry], bool]:
        entries: dict[str, _Entry] = {}
        try:
            root_fd = os.open(self.workspace, _O_DIR)
        except FileNotFoundError:
            return entries, False
        stack: list[tuple[str, int, Iterator[os.DirEntry[str]]]] = []
        truncated = False
        try:
            stack.append(("", root_fd, iter(os.scandir(root_fd))))
            while stack:
                rel, dfd, it = stack[-1]
                de = next(it, None)
                if de is None:
                    stack.pop()
                    os.close(dfd)
                    continue
                if len(entries) >= self.max_entries:
                    truncated = True
                    break
                path = f"{rel}/{de.name}" if rel else de.name
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError:
                    continue
                if path in self.ignore and (
                    stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and not st.st_size)
                ):
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if len(stack) >= _MAX_DEPTH:
                        truncated = True
                        continue
                    try:
                        cfd = os.open(de.name, _O_DIR, dir_fd=dfd)
                    except OSError:
                        continue  # replaced by something else since the listing
                    entries[path] = _entry("d", st, "", scan_start_ns, self.racy_windows_ns)
                    stack.append((path, cfd, iter(os.scandir(cfd))))
                elif stat.S_ISREG(st.st_mode):
                    got = self._file(dfd, de.name, path, st, counters)
                    if got is not None:
                        fst, digest = got
                        entries[path] = _entry("f", fst, digest, scan_start_ns, self.racy_windows_ns)
                elif stat.S_ISLNK(st.st_mode):
                    try:
                        target = os.readlink(de.name, dir_fd=dfd)
                    except OSError:
                        continue
                    entries[path] = _entry("l", st, target, scan_start_ns, self.racy_windows_ns)
                # FIFOs, sockets and devices are not workspace content
        finally:
            for _, fd, _ in stack:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return entries, truncated

    def _file(
        self, dfd: int, name: str, path: str, st: os.stat_result, counters: dict[str, int]
    ) -> tuple[os.stat_result, str] | None:
        prev = self.baseline.get(path)
        if (
            prev is not None
            and prev.kind == "f"
            and not prev.racy
            and (prev.size, prev.mtime_ns, prev.ino, prev.ctime_ns, prev.mode)
            == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, stat.S_IMODE(st.st_mode))
        ):
            return st, prev.ref
        try:
            fd = os.open(name, _O_FILE, dir_fd=dfd)
        except OSError:
            return None
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode):
                return None
            recheck = prev is not None and prev.kind == "f" and prev.size == fst.st_size
            digest = self._hash_and_store(fd, counters, copy_first=not recheck)
            return fst, digest
        finally:
            os.close(fd)

    def _hash_and_store(self, fd: int, counters: dict[str, int], *, copy_first: bool) -> str:
        """The content's digest, its blob stored. A likely-unchanged file is hashed before copying."""
        if not copy_first:
            h = hashlib.sha256()
            n = 0
            while chunk := os.read(fd, _CHUNK):
                h.update(chunk)
                n += len(chunk)
            counters["hashed_files"] += 1
            counters["hashed_bytes"] += n
            digest = h.hexdigest()
            if self.store.has_blob(digest):
                return digest
            os.lseek(fd, 0, os.SEEK_SET)
        writer = self.store.blob_writer()
        h = hashlib.sha256()
        n = 0
        try:
            while chunk := os.read(fd, _CHUNK):
                h.update(chunk)
                writer.write(chunk)
                n += len(chunk)
            digest = h.hexdigest()
            if copy_first:
                counters["hashed_files"] += 1
                counters["hashed_bytes"] += n
            if self.store.has_blob(digest):
                writer.abort()
                return digest
            writer.commit(digest)
        except BaseException:
            writer.abort()
            raise
        counters["new_blobs"] += 1
        counters["new_blob_bytes"] += n
        return digest

    # -- restoring

    def _wipe(self) -> None:
        """Empty the workspace (not the directory itself), whatever modes the sandbox left."""

        def retry(func: Any, path: str, _exc: Any) -> None:
            with contextlib.suppress(OSError):
                os.chmod(os.path.dirname(path), 0o700)
            func(path)

        try:
            it = list(os.scandir(self.workspace))
        except FileNotFoundError:
            return
        for de in it:
            if de.is_dir(follow_symlinks=False):
                shutil.rmtree(de.path, onerror=retry)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(de.path)

    def _restore(self, name: str) -> tuple[int, int]:
        """Recreate manifest ``name`` in the (empty) workspace; (files, bytes). Sets the baseline."""
        body = json.loads(self.store.get_manifest(self.session_id, name))
        if body.get("version") != _MANIFEST_VERSION or body.get("session_id") != self.session_id:
            raise IntegrityError(
                f"manifest {name} is not a version-{_MANIFEST_VERSION} manifest of this session"
            )
        rows = body["entries"]
        for row in rows:
            _check_row(row)
        rows.sort(key=lambda r: r[0].split("/"))  # parents before their subtrees, subtrees contiguous
        scan_start_ns = time.time_ns()
        baseline: dict[str, _Entry] = {}
        files = nbytes = 0
        root_fd = os.open(self.workspace, _O_DIR)
        # the chain of open directories down to the current entry's parent; metadata is set on the way out
        chain: list[tuple[str, int, list[Any] | None]] = [("", root_fd, None)]
        try:
            for row in rows:
                path, kind, mode, size, mtime_ns, ref = row
                parent, _, base = path.rpartition("/")
                while chain[-1][0] != parent:
                    if len(chain) == 1:
                        raise IntegrityError(f"manifest {name}: {path!r} comes before its directory")
                    self._close_dir(chain.pop(), baseline, scan_start_ns)
                pfd = chain[-1][1]
                if kind == "d":
                    os.mkdir(base, 0o700, dir_fd=pfd)
                    chain.append((path, os.open(base, _O_DIR, dir_fd=pfd), row))
                elif kind == "f":
                    fst = self._restore_file(pfd, base, digest=ref, size=size, mode=mode, mtime_ns=mtime_ns)
                    baseline[path] = _entry("f", fst, ref, scan_start_ns, self.racy_windows_ns)
                    files += 1
                    nbytes += size
                else:
                    os.symlink(ref, base, dir_fd=pfd)
                    if self.owner is not None:
                        os.chown(base, *self.owner, dir_fd=pfd, follow_symlinks=False)
                    os.utime(base, ns=(mtime_ns, mtime_ns), dir_fd=pfd, follow_symlinks=False)
                    baseline[path] = _entry(
                        "l",
                        os.stat(base, dir_fd=pfd, follow_symlinks=False),
                        ref,
                        scan_start_ns,
                        self.racy_windows_ns,
                    )
            while len(chain) > 1:
                self._close_dir(chain.pop(), baseline, scan_start_ns)
        finally:
            for _, fd, _ in chain:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.baseline = baseline
        return files, nbytes

    def _close_dir(
        self, item: tuple[str, int, list[Any] | None], baseline: dict[str, _Entry], t0: int
    ) -> None:
        path, fd, row = item
        try:
            assert row is not None
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            os.fchmod(fd, row[2] & 0o1777)
            os.utime(fd, ns=(row[4], row[4]))
            baseline[path] = _entry("d", os.fstat(fd), "", t0, self.racy_windows_ns)
        finally:
            os.close(fd)

    def _restore_file(
        self, pfd: int, base: str, *, digest: str, size: int, mode: int, mtime_ns: int
    ) -> os.stat_result:
        fd = os.open(
            base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd
        )
        try:
            h = hashlib.sha256()
            n = 0
            with self.store.open_blob(digest) as src:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    n += len(chunk)
            if h.hexdigest() != digest or n != size:
                raise IntegrityError(f"blob {digest[:12]}… does not match its digest or size")
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            os.fchmod(fd, mode & 0o1777)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            return os.fstat(fd)
        finally:
            os.close(fd)

    def _prune(self) -> None:
        names = self.store.list_manifests(self.session_id)
        for old in names[: -self.keep]:
            self.store.delete_manifest(self.session_id, old)


def _check_row(row: Any) -> None:
    """A manifest row must name a confined relative path and a known kind (manifests are input too)."""
    if not isinstance(row, list) or len(row) != 6:
        raise IntegrityError("manifest row is not [path, kind, mode, size, mtime_ns, ref]")
    path, kind, mode, size, mtime_ns, ref = row
    if not isinstance(path, str) or not path or path.startswith("/") or "\0" in path:
        raise IntegrityError(f"manifest path {str(path)[:80]!r} is not a relative path")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise IntegrityError(f"manifest path {path[:80]!r} is not confined")
    if kind not in ("f", "d", "l") or not all(isinstance(x, int) for x in (mode, size, mtime_ns)):
        raise IntegrityError(f"manifest row for {path[:80]!r} is malformed")
    if not isinstance(ref, str) or (kind == "f" and not _DIGEST.match(ref)):
        raise IntegrityError(f"manifest row for {path[:80]!r} has a bad reference")


# --------------------------------------------------------------------------- garbage collection


@dataclass(frozen=True)
class GcReport:
    sessions: int
    manifests: int
    referenced: int
    deleted_blobs: int
    kept_young: int


def collect_garbage(store: SnapshotStore, *, grace_s: float = 3600.0, now: float | None = None) -> GcReport:
    """Delete blobs no manifest names and nobody touched for ``grace_s`` (a snapshot in flight may need them).

    If any manifest cannot be read, nothing is deleted: a blob it names
    could look unreferenced.
    """
    now = time.time() if now is None else now
    referenced: set[str] = set()
    sessions = manifests = 0
    for sid in store.list_sessions():
        sessions += 1
        for name in store.list_manifests(sid):
            try:
                body = json.loads(store.get_manifest(sid, name))
            except FileNotFoundError:
                continue  # pruned meanwhile
            except ValueError:
                log.exception("snapshot GC skipped: manifest %s/%s is unreadable", sid, name)
                return GcReport(sessions, manifests, len(referenced), 0, 0)
            manifests += 1
            referenced.update(
                r[5] for r in body.get("entries", []) if isinstance(r, list) and len(r) == 6 and r[1] == "f"
            )
    deleted = young = 0
    cutoff = now - grace_s
    for digest, mtime in list(store.iter_blobs()):
        if digest in referenced:
            continue
        if mtime >= cutoff:
            young += 1
            continue
        if store.delete_blob(digest, older_than=cutoff):
            deleted += 1
    if isinstance(store, DirectoryStore):
        store.sweep_tmp(older_than=cutoff)
    return GcReport(sessions, manifests, len(referenced), deleted, young)
