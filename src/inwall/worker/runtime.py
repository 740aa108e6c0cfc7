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
not held up meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import anyio
from anthropic.lib.tools import ToolError
from anyio.abc import TaskGroup, TaskStatus

from inwall.audit import canonical_json
from inwall.errors import ConfigError, InwallError, Unavailable
from inwall.sandbox.violations import EgressDenied, LimitExceeded, Violation, render_violations
from inwall.worker.diagnose import diagnose_bash, diagnose_denied
from inwall.worker.recorder import SandboxAudit
from inwall.worker.shim import ShimClient, ShimLost, sandbox_python, start_shim
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
    extra_env: dict[str, str] = field(default_factory=dict)
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
        self._prepare_report: PrepareReport | None = None
        self._snapshots: WorkspaceSnapshots | None = None
        self._pending: list[Violation] = []
        self._violation_seen = anyio.Event()
        self._inflight: anyio.CancelScope | None = None
        self._draining = False
        self._closed = False
        self._redact_limiter: anyio.CapacityLimiter | None = None
        self._bash_live = False
        self._bash_lost = False
        self.calls = 0
        self.last: ToolOutcome | None = None

    # -- lifecycle

    async def __aenter__(self) -> SessionRuntime:
        self._tg_cm = anyio.create_task_group()
        self._tg = await self._tg_cm.__aenter__()
        # one redaction thread at a time per session: one that overran its deadline (and still runs,
        # abandoned) holds the token, so a session cannot pile up runaway threads
        self._redact_limiter = anyio.CapacityLimiter(1)
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
        digest = hashlib.sha256(canonical_json(call_input)).hexdigest()
        async with self._lock:
            admission: Admission | None = None
            ran = False
            try:
                perimeter = self.options.perimeter
                if perimeter is not None and perimeter.checks_calls and not (self._draining or self._closed):
                    admission = await self._admit(perimeter, tool, call_input, digest)
                if admission is not None and not admission.allowed:
                    out = ToolOutcome(tool, False, admission.model_text, [], outcome="denied")
                else:
                    ran = True
                    out = await self._call_locked(tool, args)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    out = ToolOutcome(tool, False, f"tool {tool!r} timed out", [], outcome="cancelled")
                    out.admission = admission
                    if ran:
                        await self._after_lost_reply(tool, lost=False)
                        if tool in _CHANGES_FILES:
                            out.snapshot_s, _ = await self._snapshot()
                    await self._finish(out, digest, start)
                raise
            out.admission = admission
            await self._finish(out, digest, start)
        self.last = out
        return out

    async def _admit(
        self, perimeter: Perimeter, tool: str, call_input: dict[str, Any], digest: str
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
        admission = perimeter.admit(
            tool,
            call_input,
            session_id=self.session_id,
            token=token,
            token_problem=problem,
            input_sha256=digest,  # the audit's digest is input_digest's: canonical JSON, SHA-256
        )
        if not admission.allowed:
            why = admission.identity_reason if admission.denied_by == "identity" else "policy"
            log.info("session %s: %s call denied at the perimeter (%s)", self.session_id, tool, why)
        return admission

    async def _finish(self, out: ToolOutcome, digest: str, start: float) -> None:
        out.duration_s = time.monotonic() - start
        self.calls += 1
        for v in out.inferred:
            fields = v.to_dict()
            fields["violation"] = fields.pop("kind")
            await self._audit(
                "sandbox_violation", session_id=self.session_id, workdir=str(self.workspace), **fields
            )
        if out.violations:
            out.content = _with_violations(out.content, out.violations)
        perimeter = self.options.perimeter
        extra: dict[str, Any] = {}
        if out.admission is not None:
            extra["perimeter"] = out.admission.audit_fields()
        if perimeter is not None and perimeter.redactor is not None:
            redacted = await self._redacted(perimeter, out.content)
            if redacted is None:
                log.error("session %s: redacting a %s result timed out; withheld", self.session_id, out.tool)
                out.ok, out.outcome, out.content = False, "withheld", WITHHELD
                extra["redaction"] = "timed_out"
                redacted = (WITHHELD, {})
            out.content, out.redactions = redacted
            if out.redactions:
                # A list, not {name: count} (the gateway's form too): the audit log blanks values
                # under secret-looking keys, and pattern names ("api_keys", a custom "token") are such keys.
                extra["redactions"] = [
                    {"pattern": name, "count": count} for name, count in sorted(out.redactions.items())
                ]
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
            violations=[v.kind for v in out.violations],
            **extra,
        )

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
        carried, self._pending = self._pending, []
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
        violations = [*carried, *self._pending]
        self._pending = []
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
        """Called by the sandbox (its egress proxy) while commands run; it audits them itself."""
        self._pending.append(v)
        self._violation_seen.set()
        self._violation_seen = anyio.Event()

    async def _settle_egress(self, reply: Reply) -> None:
        """Wait for the proxy's report of denials the output already shows.

        The proxy answers 403 first and reports the denial after (it audits the
        connection once it is closed), so a fast command can finish before the
        report arrives. The output names each denied destination; wait for those
        (bounded), so the violation lands in this call's result, not the next one's.
        """
        text = reply.result if reply.ok else reply.error
        if not isinstance(text, str):
            return
        wanted = {(h, int(p)) for h, p in _PROXY_DENIAL.findall(text)}
        with anyio.move_on_after(_EGRESS_SETTLE_S):
            while wanted - {(v.host, v.port) for v in self._pending if isinstance(v, EgressDenied)}:
                await self._violation_seen.wait()

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
            self._prepare_report = report
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
                                    "env": self.options.extra_env,
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

    async def _redacted(self, perimeter: Perimeter, content: Any) -> tuple[Any, dict[str, int]] | None:
        """The redacted content and counts, or None when the redactor missed its deadline."""
        with anyio.move_on_after(self.options.redact_timeout_s):
            return await anyio.to_thread.run_sync(
                partial(_redact, perimeter, content), abandon_on_cancel=True, limiter=self._redact_limiter
            )
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


def _with_violations(content: Any, violations: list[Violation]) -> Any:
    block = render_violations(violations)
    if not block:
        return content
    if isinstance(content, str):
        return f"{content}\n{block}" if content else block
    if isinstance(content, list):
        return [*content, {"type": "text", "text": block}]
    if isinstance(content, _RemoteException):
        return f"{content.text}\n{block}"
    return content


ToolCallable = Callable[..., Any]
