"""``inwall worker``: the SDK's ``EnvironmentWorker``, many sessions at once, every tool in a sandbox.

Composition, not reimplementation. Claiming uses the SDK's poller
(``client.beta.environments.work.poller(..., auto_stop=False)``: poll, ack).
Each claimed item is served by the SDK's own per-item flow,
``EnvironmentWorker.handle_item`` (lease heartbeat, ``SessionToolRunner``,
force-stop), with a ``tools`` factory that returns this package's sandboxed
toolset for that session. So the worker speaks exactly the SDK's protocol
and serves Anthropic's hosted control plane as well as ``inwall server``.
What the SDK's ``EnvironmentWorker.run`` does not do, this adds: up to
``max_sessions`` items at once (one poll loop, one task per item, a
semaphore), a sandbox and workspace per session, snapshots, an audit trail,
a drain on SIGTERM, and the perimeter's own checks (identity tokens, a Cedar
policy, redaction: :mod:`inwall.worker.perimeter`).

Draining: stop claiming; cancel every item's flow, which lets the SDK
runner finish the call in flight (it runs shielded) and post its result;
after ``drain_timeout_s`` abort calls still running (they report
themselves as interrupted); then exit. SIGKILL is the crash case: the lease
lapses and another worker restores the last snapshot.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from inwall.errors import ConfigError, InvalidInput, InwallError, SandboxUnavailable
from inwall.worker.config import DEFAULT_MAX_SESSIONS, WorkerConfig
from inwall.worker.recorder import AuditRecorder
from inwall.worker.runtime import RuntimeOptions, SessionRuntime
from inwall.worker.snapshots import DirectoryStore, collect_garbage, safe_session_id

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic
    from anthropic.types.beta.environments import BetaSelfHostedWork

    from inwall.governance import PolicyEngine
    from inwall.sandbox import SandboxSettings
    from inwall.worker.perimeter import Perimeter

__all__ = ["EXIT_CONFIG", "EXIT_NO_SANDBOX", "Worker", "build_parser", "configure", "main", "run_worker"]

log = logging.getLogger("inwall.worker")

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_NO_SANDBOX = 3
_ABORT_GRACE_S = 15.0


@dataclass
class _Active:
    work_id: str
    scope: anyio.CancelScope
    runtime: SessionRuntime | None = None


class Worker:
    """One worker process's state; :meth:`run` serves until ``shutdown`` is set, then drains."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.worker_id = config.worker_id or f"inwall-{socket.gethostname()}-{secrets.token_hex(6)}"
        self.settings: SandboxSettings | None = None
        self.store: DirectoryStore | None = None
        self.recorder: AuditRecorder | None = None
        self.perimeter: Perimeter | None = None
        self.active: dict[str, _Active] = {}
        self._idle = anyio.Event()
        self._idle.set()
        self._abort_now = anyio.Event()
        self.failed: str | None = None
        self.claimed = 0

    # -- set-up

    def prepare(self) -> RuntimeOptions:
        """Check the host and lay out the work directory; raises SandboxUnavailable / ConfigError."""
        from inwall.audit import AuditLog
        from inwall.sandbox import SandboxSettings, check_host, sandbox_identity
        from inwall.worker.shim import sandbox_python

        c = self.config
        settings = (
            SandboxSettings.load(c.sandbox_settings) if c.sandbox_settings else SandboxSettings.default()
        )
        uid, gid = sandbox_identity(settings)
        check_host(deep=True, bwrap_path=settings.bwrap_path, run_as=(uid, gid)).require()
        for inner, outer in ((c.sessions_dir, c.snapshot_root), (c.snapshot_root, c.sessions_dir)):
            if inner == outer or outer in inner.parents:
                raise ConfigError(
                    f"the snapshot directory and the sessions directory must not nest ({inner})"
                )
        if not c.workdir.exists():
            c.workdir.mkdir(mode=0o711, parents=True)
        c.sessions_dir.mkdir(mode=0o711, exist_ok=True)
        for d in (c.private_dir, c.private_dir / "state", c.private_dir / "contexts"):
            d.mkdir(mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)
        if c.snapshots:
            self.store = DirectoryStore(c.snapshot_root)
        # The sandbox shares the host's filesystem view: hide the worker's whole directory (the
        # session's own workspace is bound back) and the snapshot store. Directories only: a denied
        # *file* that the host replaces by rename (the audit log's head anchor) races bwrap's mount.
        # An audit log placed elsewhere is protected by its mode (0600, the worker's uid).
        private = [str(c.workdir)]
        if c.snapshots and c.workdir not in c.snapshot_root.parents:
            private.append(str(c.snapshot_root))
        fs = settings.filesystem
        settings = settings.replace(filesystem=fs.replace(deny_read=(*fs.deny_read, *private)))
        self.settings = settings
        # with --audit-sync the log fsyncs every append; otherwise the recorder fsyncs in groups
        self.recorder = AuditRecorder(AuditLog(c.audit_path, fsync=c.audit_sync), sync=c.audit_sync)
        self.perimeter = self._load_perimeter(self.recorder)
        python = sandbox_python(uid, gid)
        return RuntimeOptions(
            settings=settings,
            sessions_dir=c.sessions_dir,
            state_dir=c.private_dir / "state",
            store=self.store,
            keep_snapshots=c.keep_snapshots,
            recorder=self.recorder,
            python=python,
            perimeter=self.perimeter,
        )

    def _load_perimeter(self, recorder: AuditRecorder) -> Perimeter | None:
        from inwall.worker.perimeter import Perimeter  # governance (Cedar, JWT) only when asked for

        c = self.config

        def rejected(message: str) -> None:
            recorder.record_nowait("perimeter_policy_rejected", {"message": message[:2000]})

        def reloaded(engine: PolicyEngine) -> None:
            recorder.record_nowait("perimeter_policy_reloaded", {"policy": engine.describe()})

        perimeter = Perimeter.for_worker(c, on_policy_error=rejected, on_policy_reload=reloaded)
        if perimeter is None:
            log.info("perimeter: no identity check, no worker policy, no redaction")
        else:
            d = perimeter.describe()
            log.info(
                "perimeter: identity %s; %s; redact %s", d["identity"], d["policy"], d["redact"] or "off"
            )
        return perimeter

    async def probe(self, options: RuntimeOptions) -> None:
        """Start one real sandbox and tool process: a host that cannot sandbox fails now, not per call."""
        rt = SessionRuntime(
            RuntimeOptions(
                settings=options.settings, sessions_dir=options.sessions_dir, python=options.python
            ),
            f"probe-{secrets.token_hex(4)}",
        )
        try:
            async with rt:
                out = await rt.run_call("bash", {"command": "true"})
            if not out.ok:
                raise SandboxUnavailable(f"the sandbox probe failed: {out.content}")
        finally:
            shutil.rmtree(rt.workspace, ignore_errors=True)

    # -- serving

    async def run(
        self,
        *,
        shutdown: anyio.Event | None = None,
        task_status: TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        from anthropic import AsyncAnthropic

        shutdown = shutdown or anyio.Event()
        options = await anyio.to_thread.run_sync(self.prepare)
        await self.probe(options)
        recorder = self.recorder
        assert recorder is not None and self.settings is not None
        c = self.config
        async with (
            AsyncAnthropic(base_url=c.base_url, auth_token=c.environment_key) as client,
            anyio.create_task_group() as background,
        ):
            await background.start(recorder.run)
            await recorder.record(
                "worker_started",
                worker_id=self.worker_id,
                environment_id=c.environment_id,
                base_url=c.base_url,
                max_sessions=c.max_sessions,
                pid=os.getpid(),
                sandbox_settings=str(c.sandbox_settings) if c.sandbox_settings else None,
                snapshot_dir=str(c.snapshot_root) if self.store else None,
                perimeter=self.perimeter.describe() if self.perimeter else None,
            )
            gc_scope = anyio.CancelScope()
            if self.store is not None:
                background.start_soon(self._gc_loop, self.store, gc_scope)
            watch_scope = anyio.CancelScope()
            if self.perimeter is not None:
                # each call checks the file too; this reports a broken edit while no call runs
                background.start_soon(self._watch_policy, self.perimeter, watch_scope)
            try:
                await self._serve(client, options, shutdown, task_status)
            finally:
                with anyio.CancelScope(shield=True):
                    gc_scope.cancel()
                    watch_scope.cancel()
                    await recorder.record(
                        "worker_stopped",
                        worker_id=self.worker_id,
                        claimed=self.claimed,
                        failed=self.failed,
                    )
                    recorder.close()  # the writer drains the queue and returns

    async def _serve(
        self,
        client: AsyncAnthropic,
        options: RuntimeOptions,
        shutdown: anyio.Event,
        task_status: TaskStatus[Worker],
    ) -> None:
        sem = anyio.Semaphore(self.config.max_sessions)
        async with anyio.create_task_group() as items:
            async with anyio.create_task_group() as ctl:
                ctl.start_soon(self._poll, client, options, items, sem, shutdown)
                print(
                    f"inwall worker ready: worker_id={self.worker_id} "
                    f"environment_id={self.config.environment_id} "
                    f"max_sessions={self.config.max_sessions} workdir={self.config.workdir}",
                    file=sys.stderr,
                    flush=True,
                )
                task_status.started(self)
                await shutdown.wait()
                ctl.cancel_scope.cancel()
            await self._drain(items)

    async def _drain(self, items: anyio.abc.TaskGroup) -> None:
        assert self.recorder is not None
        await self.recorder.record("worker_draining", worker_id=self.worker_id, in_flight=len(self.active))
        if self.active:
            log.info("draining: %d session(s) finish their current tool call", len(self.active))
        for entry in list(self.active.values()):
            entry.scope.cancel()
        with anyio.move_on_after(self.config.drain_timeout_s):
            async with anyio.create_task_group() as tg:

                async def early() -> None:
                    await self._abort_now.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(early)
                await self._idle.wait()
                tg.cancel_scope.cancel()
        if self.active:
            log.warning("drain timeout: interrupting %d tool call(s)", len(self.active))
            for entry in list(self.active.values()):
                if entry.runtime is not None:
                    entry.runtime.abort_inflight()
            with anyio.move_on_after(_ABORT_GRACE_S):
                await self._idle.wait()
        if self.active:
            items.cancel_scope.cancel()

    def abort_now(self) -> None:
        """A second SIGTERM: stop waiting for calls in flight."""
        self._abort_now.set()

    async def _poll(
        self,
        client: AsyncAnthropic,
        options: RuntimeOptions,
        items: anyio.abc.TaskGroup,
        sem: anyio.Semaphore,
        shutdown: anyio.Event,
    ) -> None:
        c = self.config
        poller = client.beta.environments.work.poller(
            environment_id=c.environment_id,
            environment_key=c.environment_key,
            worker_id=self.worker_id,
            auto_stop=False,
        )
        try:
            while True:
                await sem.acquire()
                try:
                    item = await poller.__anext__()
                except StopAsyncIteration:
                    sem.release()
                    return
                except BaseException:
                    sem.release()
                    raise
                self.claimed += 1
                self._idle = anyio.Event() if not self.active else self._idle
                entry = _Active(item.id, anyio.CancelScope())
                self.active[item.id] = entry
                items.start_soon(self._serve_item, client, options, item, entry, sem)
        except Exception as exc:
            self.failed = f"polling failed: {exc}"
            log.exception("polling failed permanently; draining")
            shutdown.set()
        finally:
            aclose = getattr(poller, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await aclose()

    async def _serve_item(
        self,
        client: AsyncAnthropic,
        options: RuntimeOptions,
        item: BetaSelfHostedWork,
        entry: _Active,
        sem: anyio.Semaphore,
    ) -> None:
        try:
            await self._handle(client, options, item, entry)
        except Exception:
            log.exception("work item failed work_id=%s", item.id)
        finally:
            self.active.pop(item.id, None)
            sem.release()
            if not self.active:
                self._idle.set()

    async def _handle(
        self, client: AsyncAnthropic, options: RuntimeOptions, item: BetaSelfHostedWork, entry: _Active
    ) -> None:
        from anthropic.lib.environments import EnvironmentWorker

        assert self.recorder is not None
        c = self.config
        kind = getattr(item.data, "type", None)
        refusal: str | None = None
        session_id = ""
        if kind != "session":
            refusal = f"work of type {kind!r} has nothing to run here"
        else:
            try:
                session_id = safe_session_id(item.data.id)
            except InvalidInput as exc:
                refusal = exc.message
        if refusal is not None:
            await self.recorder.record("work_refused", work_id=item.id, reason=refusal)
            with anyio.CancelScope(shield=True):
                try:
                    await client.beta.environments.work.stop(
                        item.id, environment_id=item.environment_id, force=True
                    )
                except Exception as stop_exc:  # noqa: BLE001 - a 409 (already stopped) or a transient error
                    log.warning("force-stop of refused work %s failed: %s", item.id, stop_exc)
            return
        context_dir = c.private_dir / "contexts" / session_id
        shutil.rmtree(context_dir, ignore_errors=True)
        context_dir.mkdir(mode=0o700)
        started = time.monotonic()
        await self.recorder.record(
            "session_claimed", session_id=session_id, work_id=item.id, worker_id=self.worker_id
        )
        identity = None
        if self.perimeter is not None and self.perimeter.wants_token:
            from inwall.worker.identity import ControlPlaneIdentity

            identity = ControlPlaneIdentity(client, session_id)
        rt = SessionRuntime(options, session_id, work_id=item.id, identity=identity)
        try:
            # the runtime (its sandbox) is entered outside the scope a drain cancels: the SDK runner
            # finishes the call in flight, shielded, and that call still needs its sandbox
            async with rt:
                entry.runtime = rt
                worker = EnvironmentWorker(
                    client,
                    environment_id=c.environment_id,
                    environment_key=c.environment_key,
                    tools=rt.tools,
                    # the SDK's context dir (skills land here): private to the host, never the
                    # sandbox-writable workspace, which a symlink planted by the agent could redirect
                    workdir=context_dir,
                    max_idle=c.max_idle,
                    memory_sync_interval=None,
                    worker_id=self.worker_id,
                )
                with entry.scope:
                    await worker.handle_item(
                        work_id=item.id,
                        environment_id=item.environment_id,
                        session_id=session_id,
                        work_secret=getattr(item, "secret", None),
                    )
        finally:
            with anyio.CancelScope(shield=True):
                shutil.rmtree(context_dir, ignore_errors=True)
                await self.recorder.record(
                    "session_released",
                    session_id=session_id,
                    work_id=item.id,
                    tool_calls=rt.calls,
                    duration_ms=round((time.monotonic() - started) * 1000, 3),
                )

    async def _watch_policy(self, perimeter: Perimeter, scope: anyio.CancelScope) -> None:
        from inwall.governance import PolicyFile

        with scope:
            if isinstance(perimeter.policy, PolicyFile):
                await perimeter.policy.watch(self.config.policy_watch_interval_s)

    async def _gc_loop(self, store: DirectoryStore, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                try:
                    report = await anyio.to_thread.run_sync(
                        lambda: collect_garbage(store, grace_s=self.config.gc_grace_s), abandon_on_cancel=True
                    )
                    if report.deleted_blobs:
                        assert self.recorder is not None
                        await self.recorder.record(
                            "snapshot_gc", deleted_blobs=report.deleted_blobs, referenced=report.referenced
                        )
                except OSError:
                    log.exception("snapshot garbage collection failed")
                await anyio.sleep(self.config.gc_interval_s)


async def run_worker(
    config: WorkerConfig,
    *,
    shutdown: anyio.Event | None = None,
    task_status: TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED,
) -> Worker:
    """Serve until ``shutdown`` is set, then drain; the finished :class:`Worker` (``failed`` says why, if)."""
    worker = Worker(config)
    await worker.run(shutdown=shutdown, task_status=task_status)
    return worker


# --------------------------------------------------------------------------- command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help="control plane URL (default: $ANTHROPIC_BASE_URL)")
    parser.add_argument(
        "--environment-id", help="self-hosted environment id (default: $ANTHROPIC_ENVIRONMENT_ID)"
    )
    parser.add_argument(
        "--environment-key",
        help="environment key (default: $ANTHROPIC_ENVIRONMENT_KEY; prefer the variable: flags show in `ps`)",
    )
    parser.add_argument("--workdir", metavar="DIR", help="sessions' workspaces live in DIR/sessions/<id>")
    parser.add_argument("--sandbox-settings", metavar="FILE", help="srt-compatible sandbox settings (JSON)")
    parser.add_argument(
        "--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS, help="sessions served at once"
    )
    parser.add_argument(
        "--snapshot-dir", metavar="DIR", help="snapshot store shared by workers (default DIR/snapshots)"
    )
    parser.add_argument("--no-snapshots", action="store_true", help="do not snapshot workspaces")
    parser.add_argument(
        "--snapshot-keep", type=int, default=5, metavar="N", help="manifests kept per session"
    )
    parser.add_argument(
        "--audit-log", metavar="FILE", help="hash-chained audit log (default DIR/audit.jsonl)"
    )
    parser.add_argument(
        "--audit-sync", action="store_true", help="make each audit record durable before the call returns"
    )
    parser.add_argument(
        "--max-idle",
        type=float,
        default=60.0,
        metavar="S",
        help="keep a session's sandbox S seconds after its turn ends",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, wait S seconds for calls in flight",
    )
    parser.add_argument("--worker-id", help="id sent with each poll (default: inwall-<host>-<random>)")
    gov = parser.add_argument_group(
        "perimeter governance",
        "the worker's own checks, which hold even if the control plane is misconfigured or compromised",
    )
    gov.add_argument(
        "--identity-public-key",
        metavar="FILE",
        help="the control plane's identity key (identity_ed25519.pub.pem in its data directory), pinned: "
        "each call's identity token is verified against it",
    )
    gov.add_argument(
        "--require-identity",
        action="store_true",
        help="refuse every tool call without a valid identity token (otherwise calls with none on offer "
        "run as the anonymous principal)",
    )
    gov.add_argument(
        "--policy", metavar="FILE", help="the worker's own Cedar policy for tool calls (reloaded when edited)"
    )
    gov.add_argument(
        "--policy-interval",
        type=float,
        default=2.0,
        metavar="S",
        help="also look for policy edits every S seconds between calls (each call checks anyway)",
    )
    gov.add_argument(
        "--redact",
        action="append",
        default=[],
        metavar="NAME",
        help="redact a built-in pattern from tool results: api_keys, card_numbers, emails, "
        "secret_assignments (repeatable)",
    )
    gov.add_argument(
        "--redact-pattern",
        action="append",
        default=[],
        metavar="REGEX",
        help="redact matches of REGEX from tool results (repeatable)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inwall worker", description=__doc__.splitlines()[0] if __doc__ else None
    )
    configure(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig.resolve(
        base_url=args.base_url,
        environment_id=args.environment_id,
        environment_key=args.environment_key,
        workdir=args.workdir,
        sandbox_settings=Path(args.sandbox_settings) if args.sandbox_settings else None,
        max_sessions=args.max_sessions,
        snapshot_dir=Path(args.snapshot_dir).absolute() if args.snapshot_dir else None,
        snapshots=not args.no_snapshots,
        keep_snapshots=args.snapshot_keep,
        audit_log=Path(args.audit_log).absolute() if args.audit_log else None,
        audit_sync=args.audit_sync,
        max_idle=args.max_idle,
        drain_timeout_s=args.drain_timeout,
        worker_id=args.worker_id,
        identity_public_key=Path(args.identity_public_key).absolute() if args.identity_public_key else None,
        require_identity=args.require_identity,
        policy=Path(args.policy).absolute() if args.policy else None,
        policy_watch_interval_s=args.policy_interval,
        redact=tuple(args.redact),
        redact_patterns=tuple(args.redact_pattern),
    )


def run(args: argparse.Namespace) -> int:
    """The body of ``inwall worker`` once its flags are parsed."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"inwall worker: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return anyio.run(_amain, config)
    except SandboxUnavailable as exc:
        print(
            f"inwall worker: refusing to start, tools cannot be sandboxed here: {exc.message}",
            file=sys.stderr,
        )
        return EXIT_NO_SANDBOX
    except ConfigError as exc:
        print(f"inwall worker: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except InwallError as exc:
        print(f"inwall worker: {exc.message}", file=sys.stderr)
        return EXIT_FAILED


async def _amain(config: WorkerConfig) -> int:
    shutdown = anyio.Event()
    holder: list[Worker] = []

    async def signals(scope: anyio.CancelScope) -> None:
        with scope, anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            count = 0
            async for signum in received:
                count += 1
                log.info(
                    "received %s: %s",
                    signal.Signals(signum).name,
                    "draining" if count == 1 else "interrupting",
                )
                shutdown.set()
                if count > 1 and holder:
                    holder[0].abort_now()

    worker = Worker(config)
    holder.append(worker)
    try:
        async with anyio.create_task_group() as tg:
            sig_scope = anyio.CancelScope()
            tg.start_soon(signals, sig_scope)
            try:
                await worker.run(shutdown=shutdown)
            finally:
                sig_scope.cancel()
    except BaseExceptionGroup as group:
        leaf = _only_leaf(group)
        if isinstance(leaf, InwallError):
            raise leaf from None
        raise
    return EXIT_FAILED if worker.failed else 0


def _only_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception a task group wrapped, if it wrapped exactly one."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


def main(argv: Sequence[str] | None = None) -> int:
    """``inwall worker`` as a function: parse ``argv``, serve, return the exit status."""
    return run(build_parser().parse_args(argv))
