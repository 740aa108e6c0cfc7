"""The worker's write-behind audit trail: one order for every thread, nothing queued lost on cancellation."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from inwall.audit import AuditLog, verify_file
from inwall.worker.recorder import AuditRecorder

pytestmark = pytest.mark.anyio


def kinds(path: Path) -> list[str]:
    return [json.loads(line)["kind"] for line in path.read_text().splitlines()]


async def test_a_record_from_another_thread_keeps_its_place(tmp_path: Path) -> None:
    """The egress proxy appends from a worker thread; its record must not overtake queued ones."""
    path = tmp_path / "audit.jsonl"
    recorder = AuditRecorder(AuditLog(path))
    async with anyio.create_task_group() as tg:
        await tg.start(recorder.run)
        for i in range(5000):  # queued: the writer is still appending these when the thread records
            await recorder.record(f"queued_{i}")
        await anyio.to_thread.run_sync(recorder.record_nowait, "from_thread", {"n": 1})
        await recorder.record("after")
        recorder.close()
    assert kinds(path) == [*(f"queued_{i}" for i in range(5000)), "from_thread", "after"]
    assert verify_file(path).ok


async def test_a_cancelled_writer_writes_what_is_queued(tmp_path: Path) -> None:
    """Shutdown by cancellation (the task group torn down) still writes every queued record."""
    path = tmp_path / "audit.jsonl"
    recorder = AuditRecorder(AuditLog(path))
    async with anyio.create_task_group() as tg:
        await tg.start(recorder.run)
        for i in range(1000):
            await recorder.record(f"queued_{i}")
        tg.cancel_scope.cancel()
    assert kinds(path) == [f"queued_{i}" for i in range(1000)]
    # later records, from the loop or from a thread, are written where they are made
    await recorder.record("worker_stopped")
    await anyio.to_thread.run_sync(recorder.record_nowait, "late_from_thread", {})
    assert kinds(path)[-2:] == ["worker_stopped", "late_from_thread"]
    assert verify_file(path).ok
