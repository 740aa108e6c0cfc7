"""Workspace snapshots: incremental, faithful, atomic, bounded, and safe against the workspace's owner."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from inwall.errors import InvalidInput
from inwall.worker.snapshots import (
    DirectoryStore,
    WorkspaceSnapshots,
    _racy_window_ns,
    collect_garbage,
    safe_session_id,
)

SID = "sesn_snap"


def snaps(store: DirectoryStore, ws: Path, **kw: object) -> WorkspaceSnapshots:
    kw.setdefault("racy_window_s", 0.0)
    kw.setdefault("fine_racy_window_s", kw["racy_window_s"])
    return WorkspaceSnapshots(store, SID, ws, **kw)  # type: ignore[arg-type]


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a restore must reproduce: kind, mode, mtime, content or target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_mtime_ns, p.read_bytes())
    return out


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "ws"
    w.mkdir()
    return w


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "store")


def test_only_changed_files_are_hashed_and_stored(ws: Path, store: DirectoryStore) -> None:
    for i in range(50):
        (ws / f"f{i}.bin").write_bytes(os.urandom(4096))
    s = snaps(store, ws)
    first = s.take()
    assert first.changed and first.files == 50 and first.new_blobs == 50
    again = s.take()
    assert not again.changed and again.hashed_files == 0 and again.manifest == first.manifest
    (ws / "f7.bin").write_bytes(b"changed")
    one = s.take()
    assert one.changed and (one.hashed_files, one.new_blobs, one.new_blob_bytes) == (1, 1, 7)
    assert one.seq == first.seq + 1
    (ws / "f8.bin").unlink()
    gone = s.take()
    assert gone.changed and gone.hashed_files == 0 and gone.files == 49


def test_identical_content_is_stored_once(ws: Path, store: DirectoryStore) -> None:
    for i in range(5):
        (ws / f"same{i}.txt").write_text("same content")
    report = snaps(store, ws).take()
    assert report.new_blobs == 1 and report.hashed_files == 5


def test_racily_clean_files_are_rehashed(ws: Path, store: DirectoryStore) -> None:
    """Timestamps are coarse: a same-tick rewrite keeps size, mtime and ctime; only the racy flag sees it."""
    f = ws / "a.txt"
    f.write_text("aaaa")
    s = snaps(store, ws, racy_window_s=3600.0)
    s.take()
    assert s.baseline["a.txt"].racy
    f.write_text("bbbb")
    st = f.stat()
    entry = s.baseline["a.txt"]
    entry.mtime_ns, entry.ctime_ns = st.st_mtime_ns, st.st_ctime_ns  # what a same-tick rewrite looks like
    assert s.take().changed
    entry = s.baseline["a.txt"]
    f.write_text("cccc")
    st = f.stat()
    entry.mtime_ns, entry.ctime_ns, entry.racy = st.st_mtime_ns, st.st_ctime_ns, False
    assert not s.take().changed  # without the flag the change would be missed


def test_the_racy_window_is_the_timestamps_tick() -> None:
    """Sub-second stamps come from a jiffy clock (a short window); whole-second ones from a coarse fs."""
    coarse, fine = 2_000_000_000, 50_000_000
    assert _racy_window_ns(1_700_000_000_123_456_789, coarse, fine) == fine
    assert _racy_window_ns(1_700_000_000_000_000_000, coarse, fine) == coarse  # FAT, ext4 with small inodes


def test_a_change_is_racy_by_its_ctime_too(ws: Path, store: DirectoryStore) -> None:
    """``touch -d`` can set mtime back after a write; ctime cannot be set, so it dates the change."""
    f = ws / "old-looking.txt"
    f.write_text("new content")
    os.utime(f, ns=(10**9, 10**9))  # mtime in 1970, ctime now
    s = snaps(store, ws, racy_window_s=3600.0)  # an hour: by mtime alone, 1970 is long past it
    s.take()
    assert s.baseline["old-looking.txt"].racy


def test_a_file_older_than_its_tick_is_not_rehashed(ws: Path, store: DirectoryStore) -> None:
    f = ws / "out.txt"
    f.write_bytes(b"x" * 100_000)
    time.sleep(0.1)
    s = snaps(store, ws, racy_window_s=2.0, fine_racy_window_s=0.05)
    first = s.take()
    assert first.hashed_files == 1 and not s.baseline["out.txt"].racy
    assert s.take().hashed_files == 0


def test_restore_reproduces_the_workspace(tmp_path: Path, ws: Path, store: DirectoryStore) -> None:
    (ws / "dir" / "empty").mkdir(parents=True)
    (ws / "dir" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (ws / "dir" / "run.sh").chmod(0o755)
    (ws / "private").write_text("p")
    (ws / "private").chmod(0o600)
    (ws / "héllo wörld.txt").write_text("unicode name")
    (ws / os.fsdecode(b"raw\xffname")).write_text("non-UTF-8 name")
    (ws / "setuid").write_text("s")
    (ws / "setuid").chmod(0o4755)
    (ws / "link").symlink_to("dir/run.sh")
    (ws / "dangling").symlink_to("/nowhere/at/all")
    (ws / "abs").symlink_to("/etc/passwd")
    os.link(ws / "private", ws / "hardlink")
    (ws / "dir").chmod(0o750)
    os.utime(ws / "dir" / "run.sh", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.utime(ws / "dir", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    before = tree(ws)
    snaps(store, ws).take()

    other = tmp_path / "restored"
    other.mkdir()
    owner = (65534, 65534) if os.geteuid() == 0 else None
    report = WorkspaceSnapshots(store, SID, other, owner=owner).prepare(existed=False)
    assert report.action == "restored" and report.files == 6
    after = tree(other)
    assert after["setuid"][1] == 0o755  # set-id bits are never restored
    before["setuid"] = ("f", 0o755, *before["setuid"][2:])
    assert after == before
    if owner is not None:
        assert {p.lstat().st_uid for p in other.rglob("*")} == {65534}


def test_a_crash_mid_snapshot_leaves_the_previous_one(
    ws: Path, store: DirectoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ws / "a.txt").write_text("v1")
    s = snaps(store, ws)
    good = s.take()
    (ws / "a.txt").write_text("v2 longer")

    def die(*_: object) -> None:
        raise KeyboardInterrupt  # the process dies between the blobs and the manifest rename

    monkeypatch.setattr(store, "put_manifest", die)
    with pytest.raises(KeyboardInterrupt):
        s.take()
    monkeypatch.undo()
    assert store.list_manifests(SID) == [good.manifest]
    restored = ws.parent / "r"
    restored.mkdir()
    assert WorkspaceSnapshots(store, SID, restored).prepare(existed=False).manifest == good.manifest
    assert (restored / "a.txt").read_text() == "v1"


def test_keeps_the_latest_n_and_gc_removes_unreferenced_blobs(ws: Path, store: DirectoryStore) -> None:
    s = snaps(store, ws, keep=3)
    for i in range(7):
        (ws / "a.txt").write_text(f"version {i}" + "!" * i)
        s.take()
    names = store.list_manifests(SID)
    assert len(names) == 3 and names[-1] == s.manifest
    assert len(list(store.iter_blobs())) == 7
    young = collect_garbage(store, grace_s=3600)
    assert young.deleted_blobs == 0 and young.kept_young == 4  # a snapshot in flight may still need them
    report = collect_garbage(store, grace_s=0, now=time.time() + 1)
    assert report.deleted_blobs == 4 and report.referenced == 3
    restored = ws.parent / "r"
    restored.mkdir()
    WorkspaceSnapshots(store, SID, restored).prepare(existed=False)
    assert (restored / "a.txt").read_text() == "version 6!!!!!!"


def test_gc_deletes_nothing_when_a_manifest_is_unreadable(ws: Path, store: DirectoryStore) -> None:
    s = snaps(store, ws)
    (ws / "a").write_text("1")
    s.take()
    (ws / "a").write_text("22")
    s.take()
    store.put_manifest("sesn_other", "000000000001-00000000.json", b"{not json")
    for name in store.list_manifests(SID)[:-1]:
        store.delete_manifest(SID, name)
    assert collect_garbage(store, grace_s=0, now=time.time() + 1).deleted_blobs == 0


def test_a_damaged_snapshot_falls_back_to_the_one_before(ws: Path, store: DirectoryStore) -> None:
    s = snaps(store, ws)
    (ws / "a.txt").write_text("old")
    s.take()
    (ws / "a.txt").write_text("new!")
    latest = s.take()
    body = json.loads(store.get_manifest(SID, str(latest.manifest)))
    digest = next(r[5] for r in body["entries"] if r[0] == "a.txt")
    store.blob_path(digest).write_bytes(b"tampered")
    restored = ws.parent / "r"
    restored.mkdir()
    report = WorkspaceSnapshots(store, SID, restored).prepare(existed=False)
    assert report.action == "restored" and report.skipped == (latest.manifest,)
    assert (restored / "a.txt").read_text() == "old"


@pytest.mark.parametrize(
    "row",
    [
        ["../escape", "f", 0o644, 1, 0, "0" * 64],
        ["/abs", "f", 0o644, 1, 0, "0" * 64],
        ["a/../../b", "d", 0o755, 0, 0, ""],
        ["x", "c", 0o644, 0, 0, ""],
        ["y", "f", 0o644, 0, 0, "../../etc/shadow"],
    ],
)
def test_a_hostile_manifest_is_refused(tmp_path: Path, store: DirectoryStore, row: list[object]) -> None:
    body = {"version": 1, "session_id": SID, "seq": 1, "parent": None, "created_at_ns": 0, "entries": [row]}
    store.put_manifest(SID, "000000000001-0000abcd.json", json.dumps(body).encode())
    target = tmp_path / "victim"
    target.mkdir()
    report = WorkspaceSnapshots(store, SID, target).prepare(existed=False)
    assert report.action == "restore_failed"
    assert list(target.iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_the_scan_never_follows_or_blocks(ws: Path, store: DirectoryStore) -> None:
    """A symlink to a root-only file is stored as a link (never read); a FIFO neither blocks nor is stored."""
    (ws / "shadow").symlink_to("/etc/shadow")
    (ws / "outdir").symlink_to("/etc")
    os.mkfifo(ws / "pipe")
    (ws / "ok.txt").write_text("ok")
    report = snaps(store, ws).take()
    body = json.loads(store.get_manifest(SID, str(report.manifest)))
    rows = {r[0]: r for r in body["entries"]}
    assert set(rows) == {"shadow", "outdir", "ok.txt"}
    assert rows["shadow"][1:2] == ["l"] and rows["shadow"][5] == "/etc/shadow"
    assert rows["outdir"][1] == "l"
    assert report.new_blobs == 1  # only ok.txt's content


def test_adopt_with_state_restore_without(tmp_path: Path, ws: Path, store: DirectoryStore) -> None:
    state = tmp_path / "state" / f"{SID}.json"
    s = snaps(store, ws, state_file=state)
    (ws / "a.txt").write_text("a")
    s.take()
    s.save_state()
    again = snaps(store, ws, state_file=state)
    assert again.prepare(existed=True).action == "adopted"
    assert not state.exists()  # consumed: a crash from here on leaves no trusted state
    assert again.take().hashed_files == 0
    (ws / "half-written-by-a-killed-call").write_text("x")
    third = snaps(store, ws, state_file=state)
    report = third.prepare(existed=True)
    assert report.action == "restored"
    assert sorted(p.name for p in ws.iterdir()) == ["a.txt"]
    assert third.take().seq == report.seq  # nothing changed since the restore


def test_sequence_continues_across_workers(tmp_path: Path, ws: Path, store: DirectoryStore) -> None:
    a = snaps(store, ws)
    for i in range(3):
        (ws / "f").write_text("x" * (i + 1))
        a.take()
    other = tmp_path / "b"
    other.mkdir()
    b = snaps(store, other)
    assert b.prepare(existed=False).seq == 3
    (other / "f").write_text("from b")
    assert b.take().seq == 4
    (ws / "f").write_text("late write by a, which lost the session")
    late = a.take()
    assert late.superseded and not late.changed
    assert store.list_manifests(SID)[-1].startswith("000000000004-")


def test_a_stale_writer_cannot_take_the_session_back(tmp_path: Path, ws: Path, store: DirectoryStore) -> None:
    """The old holder (lease lost mid-call) snapshots after the new holder restored: the new one wins."""
    old = snaps(store, ws)
    (ws / "f").write_text("base")
    old.take()
    mine = tmp_path / "new"
    mine.mkdir()
    new = snaps(store, mine)  # a later claim
    assert new.prepare(existed=False).seq == 1
    (ws / "f").write_text("the old holder's late write")
    assert old.take().seq == 2  # it does not know yet
    (mine / "f").write_text("the new holder's work")
    assert new.take().seq == 3  # above the stale one, not "superseded" by it
    (ws / "f").write_text("and again")
    assert old.take().superseded
    check = tmp_path / "check"
    check.mkdir()
    WorkspaceSnapshots(store, SID, check).prepare(existed=False)
    assert (check / "f").read_text() == "the new holder's work"


def test_placeholders_are_not_content(ws: Path, store: DirectoryStore) -> None:
    (ws / ".bashrc").write_text("")
    (ws / ".vscode").mkdir()
    (ws / "real.txt").write_text("r")
    s = snaps(store, ws)
    s.ignore = {".bashrc", ".vscode"}
    body = json.loads(store.get_manifest(SID, str(s.take().manifest)))
    assert [r[0] for r in body["entries"]] == ["real.txt"]
    (ws / ".bashrc").write_text("real content someone put there")
    body = json.loads(store.get_manifest(SID, str(s.take().manifest)))
    assert [r[0] for r in body["entries"]] == [".bashrc", "real.txt"]


def test_session_ids_are_path_components() -> None:
    assert safe_session_id("sesn_01abc-X.y") == "sesn_01abc-X.y"
    for bad in ("", "..", "a/b", "../x", ".hidden", "a\x00b", "x" * 200, "a..b"):
        with pytest.raises(InvalidInput):
            safe_session_id(bad)
