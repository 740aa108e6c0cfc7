"""One claimed session on this worker: its workspace, its sandbox, its shim, its snapshots.

Lifecycle (all owned by the task that serves the work item, so every
background task sits in this object's task group):

* entered before the SDK's per-item flow starts; nothing runs yet;
* the first tool call prepares the workspace (``DIR/sessions/<id>``,
  restoring the latest snapshot when this host does not hold it), enters a
  :class:`~inwall.sandbox.Sandbox` in a host task and starts the shim in it;
* each call goes to the shim; calls that may change files (bash, write,
  edit) are followed by a snapshot *before* the result is returned, so a
  result the model saw is never newer than the workspace another worker
  would restore;
* the tools' cleanup (the SDK runner's exit) takes a last snapshot, stops the
  sandbox and leaves a state file so the next claim on this host neither
  restores nor re-hashes.

Every call is audited (input digest, never the input), and violations the
sandbox reports or the outcome reveals are appended to the result in a
``<sandbox_violations>`` block and recorded as typed audit events.

With a :class:`~inwall.worker.perimeter.Perimeter` configured, each call is
first admitted by it — the identity token fetched and verified, the
worker's own policy consulted — under the session's lock, right before the
call runs; a refused call never reaches the sandbox. Every result, errors
included, is redacted last, after the violations block is appended, so the
text the SDK posts is exactly what was redacted and counted. Redaction runs
on a thread (one per session at a time) with a deadline: a result the
redactor cannot finish in ``redact_timeout_s`` is withheld, never posted
unredacted, and the event loop that keeps every session's lease alive is
not held up meanwhile. A thread cannot be stopped, so one that overran its
deadline keeps the session's redactor busy until it ends; results that
arrive meanwhile are withheld at once instead of piling up threads.

A call's audit record is written whatever happens to the call: cancelled by
the SDK's tool timeout or by shutdown, it says ``cancelled`` — including
when the cancellation arrived after the tool finished, while its snapshot
was being taken, since the model then reads the timeout, not the result.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import anyio
import anyio.lowlevel
from anthropic.lib.tools import ToolError
from anyio.abc import TaskGroup, TaskStatus

from inwall.errors import ConfigError, InwallError, Unavailable
from inwall.governance import input_digest
from inwall.sandbox.access import sandbox_python
from inwall.sandbox.violations import (
    EgressDenied,
    LimitExceeded,
    Violation,
    audit_fields,
    render_violations,
)
from inwall.worker.diagnose import diagnose_bash, diagnose_denied
from inwall.worker.recorder import SandboxAudit
from inwall.worker.shim import ShimClient, ShimLost, start_shim
from inwall.worker.snapshots import PrepareReport, SnapshotStore, WorkspaceSnapshots, safe_session_id

if TYPE_CHECKING:
    from anthropic.lib.tools.agent_toolset import AgentToolContext

    from inwall.audit import AuditLog
    from inwall.sandbox import SandboxSettings
    from inwall.worker.identity import IdentitySource
    from inwall.worker.perimeter import Admission, Perimeter
    from inwall.worker.protocol import Reply
    from inwall.worker.recorder import AuditRecorder

__all__ = ["BASH_OUTPUT_CEILING", "RuntimeOptions", "SessionRuntime", "ToolOutcome", "bash_output_limit"]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: the egress proxy's 403 body (inwall.sandbox.egress.http), as a command prints it
_PROXY_DENIAL = re.compile(r"inwall sandbox: egress to \[?([^\s\]]+?)\]?:(\d+) denied")
_EGRESS_SETTLE_S = 2.0
_CHANGES_FILES = frozenset({"bash", "write", "edit"})
INTERRUPTED = "interrupted: the worker shut down before the call finished; run it again if it is still needed"
WITHHELD = "The tool result was withheld: it could not be checked for secrets in time."
#: bash output the worker returns at most: under the control plane's 10 MiB request body limit
BASH_OUTPUT_CEILING = 8 * MIB
#: violations the sandbox reports between two results, kept for the next one; more are only counted
_MAX_PENDING = 1000
#: distinct denied destinations remembered per call, to tell which ones the output waits for
_MAX_EGRESS_TRACKED = 10_000
#: an input about this large is hashed and decided by the policy on a thread, off the event loop
_OFF_LOOP_INPUT_CHARS = 256 * 1024
#: a violation's text recorded in the audit log (a path from command output, say), at most
_AUDIT_TEXT_CHARS = 512

_T = TypeVar("_T")


def bash_output_limit(settings: SandboxSettings) -> int:
    """How much bash output a call returns: ``inwall.limits.output_bytes``, at most 8 MiB (the default).

    The SDK keeps 100 KiB; inwall returns more so the control plane can
    offload a large result instead of the model never seeing most of it
    (see :mod:`inwall.worker._shim`). The ceiling keeps every result
    postable: a larger setting still limits commands run by ``inwall
    sandbox exec``, not what one tool result carries.
    """
    cap = settings.limits.output_bytes
    return BASH_OUTPUT_CEILING if cap is None else max(1, min(cap, BASH_OUTPUT_CEILING))


@dataclass(frozen=True)
class RuntimeOptions:
    """What every session on a worker shares."""

    settings: SandboxSettings
    sessions_dir: Path
    state_dir: Path | None = None
    store: SnapshotStore | None = None
    keep_snapshots: int = 5
    recorder: AuditRecorder | None = None
    python: str | None = None
    kill_grace_s: float = 2.0
    cancel_grace_s: float = 5.0
    start_timeout_s: float = 30.0
    perimeter: Perimeter | None = None
    redact_timeout_s: float = 10.0


@dataclass
class ToolOutcome:
    """One call as the audit log and the tests see it."""

    tool: str
    ok: bool
    content: Any
    violations: list[Violation]
    exit_code: int | None = None
    outcome: str = "ok"
    duration_s: float = 0.0
    snapshot_s: float = 0.0
    #: violations this worker inferred (the sandbox audits the ones it reports itself)
    inferred: list[Violation] = field(default_factory=list)
    #: the perimeter's answer (None when no perimeter is configured)
    admission: Admission | None = None
    #: matches replaced in the result, per pattern name
    redactions: dict[str, int] = field(default_factory=dict)
    #: violations reported but not kept (beyond ``_MAX_PENDING``), per kind
    omitted: Counter[str] = field(default_factory=Counter)


class SessionRuntime:
    """The sandboxed tools of one session; ``async with`` it around the SDK's per-item flow."""

    def __init__(
        self,
        options: RuntimeOptions,
        session_id: str,
        *,
        work_id: str | None = None,
        identity: IdentitySource | None = None,
    ) -> None:
        self.options = options
        self.session_id = safe_session_id(session_id)
        self.work_id = work_id
        self.identity = identity
        self.workspace = options.sessions_dir / self.session_id
        self._tg_cm: Any = None
        self._tg: TaskGroup | None = None
        self._lock = anyio.Lock()
        self._shim: ShimClient | None = None
        self._host_stop: anyio.Event | None = None
        self._host_done: anyio.Event | None = None
        self._prepared = False
        self._snapshots: WorkspaceSnapshots | None = None
        self._pending: list[Violation] = []
        self._pending_dropped: Counter[str] = Counter()
        #: (host, port) the proxy denied during the running call, and the ones its output still waits for
        self._egress_reported: set[tuple[str, int]] = set()
        self._egress_overflow = False
        self._egress_wait: tuple[set[tuple[str, int]], anyio.Event] | None = None
        self._inflight: anyio.CancelScope | None = None
        self._draining = False
        self._closed = False
        #: held by the redaction thread itself, so one abandoned after its deadline still holds it
        self._redact_busy = threading.Lock()
        self._bash_live = False
        self._bash_lost = False
        self.calls = 0
        self.last: ToolOutcome | None = None

    # -- lifecycle

    async def __aenter__(self) -> SessionRuntime:
        self._tg_cm = anyio.create_task_group()
        self._tg = await self._tg_cm.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self.aclose()
        finally:
            cm, self._tg_cm, self._tg = self._tg_cm, None, None
            if cm is not None:
                cm.cancel_scope.cancel()
                await cm.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Last snapshot, stop the sandbox, leave the state file. Idempotent; shielded and bounded."""
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if self._closed:
                    return
                self._closed = True
                if self._prepared and self._snapshots is not None:
                    await self._snapshot(final=True)
                await self._stop_host()
                if self._snapshots is not None and self._prepared:
                    try:
                        await anyio.to_thread.run_sync(self._snapshots.save_state)
                    except OSError:
                        log.exception("could not save the snapshot state of session %s", self.session_id)

    def abort_inflight(self) -> None:
        """The worker is shutting down: end the running call now (it reports itself as interrupted)."""
        self._draining = True
        if self._inflight is not None:
            self._inflight.cancel()

    # -- the tools

    def tools(self, ctx: AgentToolContext | None = None) -> list[Any]:
        """The ``tools`` factory for the SDK's ``EnvironmentWorker`` (the context's own workdir is unused)."""
        from inwall.worker.tools import sandboxed_toolset

        return sandboxed_toolset(self)

    async def call(self, tool: str, args: dict[str, Any], *, raw_input: dict[str, Any] | None = None) -> Any:
        """Run one tool call; the result content, or :class:`ToolError` with what the model should read."""
        outcome = await self.run_call(tool, args, raw_input=raw_input)
        if outcome.ok:
            return outcome.content
        if isinstance(outcome.content, _RemoteException):
            raise outcome.content
        raise ToolError(outcome.content)

    async def run_call(
        self, tool: str, args: dict[str, Any], *, raw_input: dict[str, Any] | None = None
    ) -> ToolOutcome:
        """One call: admitted by the perimeter (if any), run in the sandbox, redacted, audited.

        ``raw_input`` is the input as the model wrote it (the identity token's
        digest is over it); ``args`` is what the tool validated. Direct callers
        pass the input as ``args``.
        """
        start = time.monotonic()
        call_input = raw_input if raw_input is not None else args
        # a megabyte-sized write (the control plane's offload) costs milliseconds to hash and decide
        off_loop = _larger_than(call_input, _OFF_LOOP_INPUT_CHARS)
        if off_loop:
            digest = await anyio.to_thread.run_sync(input_digest, call_input)
        else:
            digest = input_digest(call_input)
        async with self._lock:
            admission: Admission | None = None
            out: ToolOutcome | None = None
            ran = False
            try:
                perimeter = self.options.perimeter
                if perimeter is not None and perimeter.checks_calls and not (self._draining or self._closed):
                    admission = await self._admit(perimeter, tool, call_input, digest, off_loop=off_loop)
                if admission is not None and not admission.allowed:
                    out = ToolOutcome(tool, False, admission.model_text, [], outcome="denied")
                else:
                    ran = True
                    out = await self._call_locked(tool, args)
                out.admission = admission
                # A cancellation that arrived while the call's snapshot ran shielded is delivered
                # here: the caller will not return this result, so it must not be recorded as one.
                await anyio.lowlevel.checkpoint_if_cancelled()
                await self._seal(out)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    out = await self._cancelled(tool, out, admission, ran=ran)
                    await self._record(out, digest, start)
                raise
            with anyio.CancelScope(shield=True):
                await self._record(out, digest, start)
        self.last = out
        return out

    async def _admit(
        self, perimeter: Perimeter, tool: str, call_input: dict[str, Any], digest: str, *, off_loop: bool
    ) -> Admission:
        token: str | None = None
        problem = ""
        if perimeter.wants_token:
            if self.identity is None:
                problem = "no_identity_source"
            else:
                try:
                    # Name the call: the control plane answers for the oldest pending call that
                    # matches, so a call it skipped (denied, awaiting a verdict) cannot mislead it.
                    token = await self.identity.token(tool=tool, input_sha256=digest)
                except Unavailable as exc:
                    log.warning("session %s: no identity token: %s", self.session_id, exc.message)
                    problem = "unavailable"
        admission = perimeter.check_identity(
            tool,
            call_input,
            session_id=self.session_id,
            token=token,
            token_problem=problem,
            input_sha256=digest,  # the audit's digest is input_digest's: canonical JSON, SHA-256
        )
        if admission.allowed:
            # here, on the event loop: a policy reload and its audit callbacks belong to it
            engine = perimeter.engine()
            decide = partial(
                perimeter.decide, admission, engine, tool, call_input, session_id=self.session_id
            )
            admission = (
                await anyio.to_thread.run_sync(decide) if off_loop and engine is not None else decide()
            )
        if not admission.allowed:
            why = admission.identity_reason if admission.denied_by == "identity" else "policy"
            log.info("session %s: %s call denied at the perimeter (%s)", self.session_id, tool, why)
        return admission

    async def _cancelled(
        self, tool: str, out: ToolOutcome | None, admission: Admission | None, *, ran: bool
    ) -> ToolOutcome:
        """The outcome of a call its caller gave up on (the SDK's tool timeout, or shutdown). Shielded.

        ``out`` is the finished call's outcome when the cancellation came after
        it (during its snapshot, or its redaction): what it did stays on the
        record, but the model reads the timeout, so that is the outcome.
        """
        if out is None:
            out = ToolOutcome(tool, False, "", [])
            out.admission = admission
            if ran:
                await self._after_lost_reply(tool, lost=False)
                if tool in _CHANGES_FILES:
                    out.snapshot_s, _ = await self._snapshot()
        out.ok, out.outcome, out.content = False, "cancelled", f"tool {tool!r} timed out"
        return out

    async def _seal(self, out: ToolOutcome) -> None:
        """The result as it leaves: the violations block appended, then all of it redacted (or withheld)."""
        if out.violations or out.omitted:
            out.content = _with_violations(out.content, out.violations, sum(out.omitted.values()))
        perimeter = self.options.perimeter
        if perimeter is None or perimeter.redactor is None:
            return
        redacted = await self._off_loop_redaction(partial(_redact, perimeter, out.content))
        if redacted is None:
            log.error("session %s: redacting a %s result timed out; withheld", self.session_id, out.tool)
            out.ok, out.outcome, out.content = False, "withheld", WITHHELD
            return
        out.content, out.redactions = redacted

    async def _record(self, out: ToolOutcome, digest: str, start: float) -> None:
        """The call's audit records: the violations this worker inferred, then ``tool_call``."""
        out.duration_s = time.monotonic() - start
        self.calls += 1
        for fields in await self._violation_records(out.inferred):
            await self._audit(
                "sandbox_violation", session_id=self.session_id, workdir=str(self.workspace), **fields
            )
        extra: dict[str, Any] = {}
        if out.admission is not None:
            extra["perimeter"] = out.admission.audit_fields()
        if out.outcome == "withheld":
            extra["redaction"] = "timed_out"
        if out.redactions:
            # A list, not {name: count} (the gateway's form too): the audit log blanks values
            # under secret-looking keys, and pattern names ("api_keys", a custom "token") are such keys.
            extra["redactions"] = [
                {"pattern": name, "count": count} for name, count in sorted(out.redactions.items())
            ]
        kinds = Counter(v.kind for v in out.violations) + out.omitted
        await self._audit(
            "tool_call",
            session_id=self.session_id,
            work_id=self.work_id,
            tool=out.tool,
            input_sha256=digest,
            outcome=out.outcome,
            is_error=not out.ok,
            exit_code=out.exit_code,
            duration_ms=round(out.duration_s * 1000, 3),
            snapshot_ms=round(out.snapshot_s * 1000, 3),
            bytes_out=_bytes_out(out.content),
            # kinds with counts: a command that trips the proxy 20,000 times makes one small field
            violations=dict(kinds),
            **extra,
        )

    async def _violation_records(self, inferred: list[Violation]) -> list[dict[str, Any]]:
        """Audit fields of violations read from command output: their text bounded, and redacted.

        A path or message taken from output can hold what the result's redaction
        removed (a token in a file name, say), so it is redacted the same way,
        then cut to ``_AUDIT_TEXT_CHARS``; when the redactor cannot finish in
        time the text is withheld from the record, as the result would be.
        """
        records = [audit_fields(v.to_dict()) for v in inferred]
        texts = [(r, k) for r in records for k, val in r.items() if k != "violation" and isinstance(val, str)]
        if not texts:
            return records
        # cut before redacting too (bounded work), with room for a secret that straddles the final cut
        values = [str(r[k])[: _AUDIT_TEXT_CHARS * 2] for r, k in texts]
        perimeter = self.options.perimeter
        if perimeter is not None and perimeter.redactor is not None:
            redacted = await self._off_loop_redaction(partial(_redact_texts, perimeter, values))
            values = (
                redacted
                if redacted is not None
                else ["[withheld: could not be redacted in time]"] * len(values)
            )
        for (r, k), val in zip(texts, values, strict=True):
            r[k] = val if len(val) <= _AUDIT_TEXT_CHARS else val[: _AUDIT_TEXT_CHARS - 1] + "…"
        return records

    async def _call_locked(self, tool: str, args: dict[str, Any]) -> ToolOutcome:
        if self._draining or self._closed:
            return ToolOutcome(tool, False, f"{tool}: {INTERRUPTED}", [], outcome="interrupted")
        if tool == "bash" and self._bash_lost and not args.get("restart"):
            return ToolOutcome(
                tool, False, "bash: bash session terminated; restart required", [], outcome="error"
            )
        failure: InwallError | OSError | None = None
        try:
            shim = await self._ensure_shim()
        except (InwallError, OSError) as exc:
            failure = exc
        if failure is not None:  # a host or configuration problem; its message says what to fix
            log.error("session %s: the sandbox could not start: %s", self.session_id, failure)
            await self._audit("sandbox_start_failed", session_id=self.session_id, error=str(failure)[:2000])
            return ToolOutcome(
                tool, False, f"{tool}: the sandbox could not start: {failure}", [], outcome="error"
            )
        carried, carried_dropped = self._take_pending()
        self._egress_reported.clear()
        self._egress_overflow = False
        call_args = dict(args)
        limit = self.options.settings.limits.timeout_s
        if tool == "bash" and limit is not None:
            call_args["cap_timeout_s"] = limit
        reply: Reply | None = None
        lost: ShimLost | None = None
        with anyio.CancelScope() as scope:
            self._inflight = scope
            try:
                reply = await shim.call(tool, call_args)
            except ShimLost as exc:
                lost = exc
            finally:
                self._inflight = None
        if reply is not None and tool == "bash" and self.options.settings.network.enabled:
            await self._settle_egress(reply)
        during, dropped = self._take_pending()
        violations = [*carried, *during]
        if reply is None:
            await self._after_lost_reply(tool, lost=lost is not None)
            if lost is not None:
                out = ToolOutcome(
                    tool,
                    False,
                    f"{tool}: the sandboxed tool process ended: {lost.message}",
                    violations,
                    outcome="error",
                )
            else:
                out = ToolOutcome(tool, False, f"{tool}: {INTERRUPTED}", violations, outcome="interrupted")
        else:
            out = self._outcome(tool, args, reply, violations)
        out.omitted = carried_dropped + dropped
        if tool in _CHANGES_FILES and not (tool == "bash" and args.get("restart")):
            out.snapshot_s, disk = await self._snapshot()
            if disk is not None:
                out.violations.append(disk)
                out.inferred.append(disk)
        return out

    async def _after_lost_reply(self, tool: str, *, lost: bool) -> None:
        """A call ended without its reply (cancelled, or the shim died): settle the shell's state."""
        shim_gone = lost or self._shim is None or not self._shim.alive
        if shim_gone:
            if self._bash_live or tool == "bash":
                self._bash_lost = True  # the shell died with the shim
            self._bash_live = False
            await self._stop_host()
        elif tool == "bash":
            self._bash_live = False  # the shim killed it; it answers "restart required" itself

    def _outcome(
        self, tool: str, args: dict[str, Any], reply: Reply, violations: list[Violation]
    ) -> ToolOutcome:
        meta = reply.meta
        if tool == "bash":
            if meta.get("restarted"):
                self._bash_live, self._bash_lost = True, False
            elif (
                meta.get("timed_out") or meta.get("terminated") or meta.get("shell_exited") or reply.cancelled
            ):
                self._bash_live = False
            else:
                self._bash_live = True
        if reply.cancelled:
            return ToolOutcome(tool, False, f"{tool}: {INTERRUPTED}", violations, outcome="interrupted")
        if reply.exception is not None:
            return ToolOutcome(
                tool, False, _RemoteException(reply.exception), violations, outcome="exception"
            )
        exit_code = meta.get("exit_code") if isinstance(meta.get("exit_code"), int) else None
        content = reply.result if reply.ok else reply.error
        inferred: list[Violation] = []
        if tool == "bash" and isinstance(content, str) and not meta.get("restarted"):
            if meta.get("timed_out") and meta.get("capped"):
                inferred.append(
                    LimitExceeded(limit="timeout_s", value=meta.get("timeout_s"), detail="command killed")
                )
            elif exit_code is not None:
                inferred.extend(
                    diagnose_bash(
                        self.options.settings,
                        exit_code=exit_code,
                        output=content,
                        command=str(args.get("command")),
                    )
                )
        inferred.extend(diagnose_denied(meta))
        outcome = "ok" if reply.ok else "timeout" if meta.get("timed_out") else "error"
        return ToolOutcome(
            tool,
            reply.ok,
            content,
            [*violations, *inferred],
            exit_code=exit_code,
            outcome=outcome,
            inferred=inferred,
        )

    # -- snapshots

    async def _snapshot(self, *, final: bool = False) -> tuple[float, Violation | None]:
        if self._snapshots is None:
            return 0.0, None
        start = time.monotonic()
        with anyio.CancelScope(shield=True):
            try:
                report = await anyio.to_thread.run_sync(self._snapshots.take)
            except (OSError, InwallError) as exc:
                log.exception("snapshot of session %s failed", self.session_id)
                await self._audit("snapshot_failed", session_id=self.session_id, error=str(exc)[:500])
                return time.monotonic() - start, None
            if report.superseded:
                log.warning(
                    "session %s: another worker snapshotted it since; this copy is stale", self.session_id
                )
                await self._audit("snapshot_superseded", session_id=self.session_id, work_id=self.work_id)
            if report.changed:
                await self._audit(
                    "snapshot",
                    session_id=self.session_id,
                    work_id=self.work_id,
                    manifest=report.manifest,
                    snapshot_seq=report.seq,
                    files=report.files,
                    total_bytes=report.total_bytes,
                    hashed_files=report.hashed_files,
                    new_blobs=report.new_blobs,
                    new_blob_bytes=report.new_blob_bytes,
                    duration_ms=round(report.duration_s * 1000, 3),
                    final=final,
                )
        disk_mb = self.options.settings.limits.disk_mb
        over = None
        if disk_mb is not None and report.total_bytes > disk_mb * MIB:
            over = LimitExceeded(
                limit="disk_mb", value=disk_mb, detail=f"workspace holds {report.total_bytes // MIB} MiB"
            )
        return time.monotonic() - start, over

    # -- the sandbox

    def _on_violation(self, v: Violation) -> None:
        """Called by the sandbox (its egress proxy) while commands run; it audits them itself.

        Kept for the running call's result (or the next one's), at most
        ``_MAX_PENDING`` of them between two results; the rest are counted.
        """
        if isinstance(v, EgressDenied):
            self._egress_denied((v.host, v.port))
        if len(self._pending) < _MAX_PENDING:
            self._pending.append(v)
        else:
            self._pending_dropped[v.kind] += 1

    def _egress_denied(self, dest: tuple[str, int]) -> None:
        if len(self._egress_reported) < _MAX_EGRESS_TRACKED:
            self._egress_reported.add(dest)
        else:
            self._egress_overflow = True
        if self._egress_wait is not None:
            missing, settled = self._egress_wait
            missing.discard(dest)
            if not missing:
                settled.set()

    def _take_pending(self) -> tuple[list[Violation], Counter[str]]:
        """The violations reported since the last take, and the per-kind count of those not kept."""
        taken, self._pending = self._pending, []
        dropped, self._pending_dropped = self._pending_dropped, Counter()
        return taken, dropped

    async def _settle_egress(self, reply: Reply) -> None:
        """Wait for the proxy's report of denials the output already shows.

        The proxy answers 403 first and reports the denial after (it audits the
        connection once it is closed), so a fast command can finish before the
        report arrives. The output names each denied destination; wait for those
        (bounded), so the violation lands in this call's result, not the next one's.
        Each report strikes its destination off the wait list as it arrives.
        """
        text = reply.result if reply.ok else reply.error
        if not isinstance(text, str):
            return
        missing = {(h, int(p)) for h, p in _PROXY_DENIAL.findall(text)} - self._egress_reported
        if not missing or self._egress_overflow:  # past the cap, what was reported is not known
            return
        settled = anyio.Event()
        self._egress_wait = (missing, settled)
        try:
            with anyio.move_on_after(_EGRESS_SETTLE_S):
                await settled.wait()
        finally:
            self._egress_wait = None

    def _prepare(self) -> PrepareReport | None:
        from inwall.sandbox import prepare_workdir, sandbox_identity

        existed = os.path.lexists(self.workspace)
        if existed and (self.workspace.is_symlink() or not self.workspace.is_dir()):
            raise ConfigError(f"workspace {self.workspace} exists and is not a directory")
        prepare_workdir(self.workspace, settings=self.options.settings)
        if self.options.store is None:
            return None
        owner = sandbox_identity(self.options.settings) if os.geteuid() == 0 else None
        state = self.options.state_dir / f"{self.session_id}.json" if self.options.state_dir else None
        self._snapshots = WorkspaceSnapshots(
            self.options.store,
            self.session_id,
            self.workspace,
            state_file=state,
            owner=owner,
            keep=self.options.keep_snapshots,
        )
        return self._snapshots.prepare(existed=existed)

    async def _ensure_shim(self) -> ShimClient:
        if self._shim is not None and self._shim.alive:
            return self._shim
        if self._shim is not None:
            await self._stop_host()
        if not self._prepared:
            report = await anyio.to_thread.run_sync(self._prepare)
            self._prepared = True
            if report is not None and report.action in ("restored", "restore_failed"):
                await self._audit(
                    "workspace_restored" if report.action == "restored" else "workspace_restore_failed",
                    session_id=self.session_id,
                    work_id=self.work_id,
                    manifest=report.manifest,
                    snapshot_seq=report.seq,
                    files=report.files,
                    bytes=report.bytes,
                    duration_ms=round(report.duration_s * 1000, 3),
                    skipped=list(report.skipped),
                )
        assert self._tg is not None, "SessionRuntime must be entered with `async with`"
        shim: ShimClient = await self._tg.start(self._host)
        self._shim = shim
        return shim

    async def _host(self, *, task_status: TaskStatus[ShimClient]) -> None:
        """Owns the Sandbox (entered and left in this one task) for as long as the shim runs."""
        from inwall.sandbox import Sandbox

        stop = self._host_stop = anyio.Event()
        done = self._host_done = anyio.Event()
        started = False
        recorder = self.options.recorder
        try:
            if self._snapshots is not None:
                self._snapshots.ignore = _placeholders(self.options.settings, self.workspace)
            sandbox = Sandbox(
                self.options.settings,
                self.workspace,
                # the same chain, written behind; cast: SandboxAudit has AuditLog's append (see its docstring)
                audit=cast("AuditLog", SandboxAudit(recorder)) if recorder is not None else None,
                on_event=self._on_violation,
                hide_workdir_siblings=True,
                kill_grace_s=self.options.kill_grace_s,
            )
            async with sandbox:
                python = self.options.python or sandbox_python(sandbox.uid, sandbox.gid)
                client = await start_shim(sandbox, python, cancel_grace_s=self.options.cancel_grace_s)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.pump_stderr)
                    try:
                        with anyio.fail_after(self.options.start_timeout_s):
                            hello = await client.call(
                                "hello",
                                {
                                    "workdir": str(sandbox.workdir),
                                    "bash_output_bytes": bash_output_limit(self.options.settings),
                                },
                            )
                    except BaseException:
                        await client.close(self.options.kill_grace_s)
                        raise
                    if not hello.ok:
                        await client.close(self.options.kill_grace_s)
                        _refused(hello)
                    task_status.started(client)
                    started = True
                    await stop.wait()
                    await client.close(self.options.kill_grace_s)
                    tg.cancel_scope.cancel()
        except Exception:
            if not started:
                raise
            log.exception("the sandbox of session %s failed", self.session_id)
        finally:
            done.set()

    async def _stop_host(self) -> None:
        stop, done = self._host_stop, self._host_done
        self._shim = None
        if stop is None or done is None:
            return
        stop.set()
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.options.kill_grace_s * 2 + 10):
            await done.wait()
        self._host_stop = self._host_done = None

    async def _off_loop_redaction(self, work: Callable[[], _T]) -> _T | None:
        """``work`` (a redaction) on a thread, within the session's deadline; None when it did not finish.

        The thread holds ``_redact_busy`` while it runs: anyio gives a
        limiter's token back when it abandons a thread at the deadline, but
        the thread runs on, so only a lock the thread releases itself keeps a
        session to one redaction thread. While a late one still runs, the
        answer is None at once.
        """
        busy = self._redact_busy
        if busy.locked():
            return None

        def exclusive() -> _T | None:
            if not busy.acquire(blocking=False):
                return None
            try:
                return work()
            finally:
                busy.release()

        with anyio.move_on_after(self.options.redact_timeout_s):
            return await anyio.to_thread.run_sync(exclusive, abandon_on_cancel=True)
        return None

    async def _audit(self, kind: str, **fields: Any) -> None:
        if self.options.recorder is not None:
            await self.options.recorder.record(kind, **fields)


def _refused(hello: Reply) -> NoReturn:
    raise ShimLost(f"the sandboxed tool process refused to start: {hello.exception or hello.error}")


class _RemoteException(Exception):
    """An exception the shim caught, shown to the model as the SDK would show it: its ``repr``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _placeholders(settings: SandboxSettings, workspace: Path) -> set[str]:
    """Workspace paths bubblewrap will create on the host as empty mount points (the mandatory write
    denies for files that do not exist yet); they are not the session's content."""
    from inwall.sandbox import sandbox_identity
    from inwall.sandbox.bwrap import plan_filesystem

    uid, gid = sandbox_identity(settings)
    ws = os.path.realpath(workspace)
    plan = plan_filesystem(
        settings.filesystem, ws, home=os.path.expanduser("~"), uid=uid, gid=gid, hide_workdir_siblings=True
    )
    prefix = ws + os.sep
    return {p[len(prefix) :] for p in plan.placeholders if p.startswith(prefix)}


def _bytes_out(content: Any) -> int:
    if isinstance(content, str):
        return len(content.encode("utf-8", "replace"))
    if isinstance(content, list):
        n = 0
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "text":
                    n += len(str(block.get("text", "")).encode("utf-8", "replace"))
                else:
                    n += len(str(block.get("source", {}).get("data", "")))
        return n
    return len(repr(content))


def _redact(perimeter: Perimeter, content: Any) -> tuple[Any, dict[str, int]]:
    if isinstance(content, _RemoteException):
        text, counts = perimeter.redact(content.text)
        return (_RemoteException(text) if counts else content), counts
    return perimeter.redact(content)


def _redact_texts(perimeter: Perimeter, texts: list[str]) -> list[str]:
    return [str(perimeter.redact(text)[0]) for text in texts]


def _larger_than(value: Any, limit: int) -> bool:
    """Whether ``value`` (a tool input) holds more than about ``limit`` characters; stops once it does.

    Strings count their length, containers one per item: an estimate of the
    JSON's size that costs nothing for ordinary inputs.
    """
    size = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            size += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            size += len(item)
            stack.extend(item)
        else:
            size += 8
        if size > limit:
            return True
    return False


def _with_violations(content: Any, violations: list[Violation], omitted: int = 0) -> Any:
    block = render_violations(violations, omitted=omitted)
    if not block:
        return content
    if isinstance(content, str):
        return f"{content}\n{block}" if content else block
    if isinstance(content, list):
        return [*content, {"type": "text", "text": block}]
    if isinstance(content, _RemoteException):
        return f"{content.text}\n{block}"
    return content
