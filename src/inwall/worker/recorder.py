"""The worker's audit trail: :class:`inwall.audit.AuditLog` records, written behind the tool calls.

Why behind: an fsynced append costs milliseconds on ordinary disks, more
than a warm tool call itself, and every call's fsync competes with the
control plane's own commits when both share a disk (measured: ~6 ms on each
round trip here). By default records go through a bounded queue to one
writer task that appends them on a thread, in order, at once (so a record,
once written, survives a SIGKILL of the worker: it is in the kernel's page
cache), and fsyncs them in groups at most ``fsync_interval_s`` apart (so a
host crash loses at most that window). A tool call waits only when the
queue is full; a worker killed with SIGKILL loses only records still queued
(microseconds' worth). ``sync=True`` makes every record durable before the
call returns (the log itself then fsyncs each append). Shutdown closes the
queue; the writer drains it and fsyncs before the worker exits, and does the
same (shielded, bounded) when its task group is cancelled instead.

Records made on other threads (the egress proxy appends from a worker
thread) join the same queue through the event loop, so the log keeps the
order in which records were made.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskStatus

from inwall.sandbox.violations import audit_fields

if TYPE_CHECKING:
    from inwall.audit import AuditLog

__all__ = ["AuditRecorder", "SandboxAudit"]

log = logging.getLogger(__name__)

_BATCH = 256
DEFAULT_FSYNC_INTERVAL_S = 0.1
#: how long a cancelled writer may spend writing what is still queued
_DRAIN_S = 30.0


class AuditRecorder:
    """Queue records for one :class:`AuditLog`; ``run`` is the writer task."""

    def __init__(
        self,
        audit: AuditLog | None,
        *,
        sync: bool = False,
        buffer: int = 10_000,
        fsync_interval_s: float = DEFAULT_FSYNC_INTERVAL_S,
    ) -> None:
        """``audit`` should fsync its own appends only when ``sync`` (the recorder groups them otherwise)."""
        self.audit = audit
        self.sync = sync
        self.fsync_interval_s = fsync_interval_s
        self._send, self._recv = anyio.create_memory_object_stream[tuple[str, dict[str, Any]]](buffer)
        self._closed = False
        self._running = False
        self._loop_thread: int | None = None
        self._loop_token: anyio.lowlevel.EventLoopToken | None = None

    async def record(self, kind: str, **fields: Any) -> None:
        if self.audit is None:
            return
        if self.sync or self._closed:
            await anyio.to_thread.run_sync(partial(self._append, kind, fields))
            return
        try:
            self._send.send_nowait((kind, fields))
        except anyio.WouldBlock:
            await self._send.send((kind, fields))  # backpressure: the disk is the bottleneck
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            await anyio.to_thread.run_sync(partial(self._append, kind, fields))

    def record_nowait(self, kind: str, fields: dict[str, Any]) -> None:
        """For synchronous callers, on the event loop's thread or any other.

        Another thread's record is queued through the event loop (that thread
        waits while the queue is full), so it lands after the records queued
        before it and before the ones queued after it. Without a running writer
        the record is appended here (blocking).
        """
        if self.audit is None:
            return
        item = (kind, fields)
        token = self._loop_token
        if self.sync or self._closed or token is None:
            self._append(kind, fields)
            return
        try:
            if threading.get_ident() == self._loop_thread:
                queued = self._queue_on_loop(item)
            else:
                try:
                    queued = anyio.from_thread.run_sync(self._queue_on_loop, item, token=token)
                except anyio.WouldBlock:  # backpressure, as in record(): this thread waits, not the loop
                    anyio.from_thread.run(self._send.send, item, token=token)
                    queued = True
        except (
            anyio.WouldBlock,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
            anyio.RunFinishedError,
        ):
            queued = False
        if not queued:
            self._append(kind, fields)  # the writer is gone (or, on the loop, the queue is full)

    def _queue_on_loop(self, item: tuple[str, dict[str, Any]]) -> bool:
        """On the event loop's thread: queue ``item``; False once the writer takes no more records."""
        if self._closed:
            return False
        try:
            self._send.send_nowait(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    def _append(self, kind: str, fields: dict[str, Any]) -> None:
        assert self.audit is not None
        try:
            self.audit.append(kind, **fields)
        except Exception:  # the trail must never take the worker down; the failure itself is logged
            log.exception("audit append failed kind=%s", kind)

    def _append_batch(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        for kind, fields in batch:
            self._append(kind, fields)

    def flush(self) -> None:
        """fsync what has been appended (any descriptor of the file flushes its data)."""
        if self.audit is None:
            return
        try:
            fd = os.open(self.audit.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError:
            log.exception("audit fsync failed")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Append queued records until :meth:`close`, then drain what is left and return.

        Cancelled instead (its task group torn down), it still writes and
        fsyncs what is queued — shielded, within ``_DRAIN_S`` — and later
        records are written synchronously, so ``worker_stopped`` and the
        like are not lost.
        """
        self._loop_thread = threading.get_ident()
        self._loop_token = anyio.lowlevel.current_token()
        self._running = True
        task_status.started()
        try:
            async with self._recv:
                try:
                    await self._write_until_closed()
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(_DRAIN_S):
                        await self._drain()
                    self._closed = True
        finally:
            self._loop_token = None
            self._send.close()  # nothing reads the queue any more

    async def _write_until_closed(self) -> None:
        dirty = False
        last_flush = anyio.current_time()
        while True:
            item = None
            # with unflushed records, wait for more only until the group's deadline
            wait = last_flush + self.fsync_interval_s - anyio.current_time() if dirty else None
            with anyio.move_on_after(wait if wait is None or wait > 0 else 0):
                try:
                    item = await self._recv.receive()
                except anyio.EndOfStream:
                    return
            if item is not None:
                batch = [item, *self._take(_BATCH - 1)]
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._append_batch, batch)
                dirty = True
            if dirty and anyio.current_time() - last_flush >= self.fsync_interval_s:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.flush)
                dirty, last_flush = False, anyio.current_time()

    def _take(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``limit`` records already queued, without waiting."""
        batch: list[tuple[str, dict[str, Any]]] = []
        while len(batch) < limit:
            try:
                batch.append(self._recv.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        return batch

    async def _drain(self) -> None:
        """Write whatever is still queued, then fsync; later records are appended where they are made."""
        while batch := self._take(_BATCH):
            await anyio.to_thread.run_sync(self._append_batch, batch)
        self._closed = True  # no await since the queue was found empty: nothing queued is left behind
        await anyio.to_thread.run_sync(self.flush)

    def close(self) -> None:
        """No more queued records; later ones are written synchronously."""
        self._closed = True
        self._send.close()
        if not self._running:
            self._recv.close()


class SandboxAudit:
    """The audit log as the sandbox and its egress proxy see it: the same chain, written through the recorder.

    ``Sandbox`` records a violation as ``append("sandbox_violation", **v.to_dict())``
    and ``to_dict()`` holds a ``kind`` key, which collides with
    ``AuditLog.append``'s own ``kind`` parameter (a TypeError that also keeps
    the violation from reaching ``on_event``). Here it is stored as ``violation``.
    """

    def __init__(self, recorder: AuditRecorder) -> None:
        self._recorder = recorder

    def append(self, *args: Any, **fields: Any) -> dict[str, Any]:
        record_kind = str(args[0]) if args else str(fields.pop("record_kind", "event"))
        fields = audit_fields(fields)
        self._recorder.record_nowait(record_kind, fields)
        return {"kind": record_kind, **fields}
