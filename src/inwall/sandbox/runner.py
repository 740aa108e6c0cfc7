"""The sandbox runtime: one :class:`Sandbox` per session or command.

Three ways in, one launch recipe (:meth:`Sandbox._launch`):

* :meth:`Sandbox.exec_foreground` (sync, for the CLI): fork + exec bwrap with
  the caller's stdio, forward SIGINT/SIGTERM/SIGHUP/SIGQUIT to the command's
  process group, return its exit status. No asyncio unless the sandbox has
  network (the egress proxy is async and then runs in a helper thread).
* :meth:`Sandbox.run` (async): capture output with a byte cap, wall timeout,
  typed violations.
* :meth:`Sandbox.spawn` (async): a long-lived process with byte streams (the
  worker's persistent shell).

Root handling: bubblewrap inside a user namespace maps the caller's uid, and
a mapped uid 0 still owns every root file on the host. So when inwall runs as
root, bwrap itself is started as an unprivileged uid (``inwall.run_as_uid``,
default 65534) with no supplementary groups; the workdir must belong to that
uid (:func:`prepare_workdir` makes one). A root-owned workdir is refused with
a message, never silently used: either the command could not write it, or
it would have to run as root.

No process outlives a command: bwrap's pid 1 is the command's reaper and the
whole pid namespace dies with it; bwrap dies with its parent
(``--die-with-parent``); timeouts and output overruns SIGKILL bwrap.
"""

from __future__ import annotations

import os
import signal as _signal
import time

from inwall.errors import ConfigError, SandboxUnavailable
from inwall.sandbox.access import sandbox_python, unsearchable_ancestor
from inwall.sandbox.policy import MIB, SandboxSettings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path
    from typing import Any

    from anyio.abc import ByteReceiveStream, ByteSendStream, Process

    from inwall.audit import AuditLog
    from inwall.sandbox.violations import Violation

__all__ = [
    "DEFAULT_SANDBOX_UID",
    "RunResult",
    "Sandbox",
    "SandboxProcess",
    "prepare_workdir",
    "sandbox_identity",
]

DEFAULT_SANDBOX_UID = 65534
SANDBOX_RUN_DIR = "/run/inwall"
HTTP_PROXY_PORT = 3128
SOCKS_PROXY_PORT = 1080

_ENV_BASE = ("PATH", "LANG", "LANGUAGE", "LC_*", "TERM", "TZ", "COLORTERM", "NO_COLOR")
_ENV_DENY_PREFIXES = ("ANTHROPIC_", "INWALL_", "CLAUDE_", "AWS_SECRET", "LD_", "PYTHONSTARTUP")
_ENV_DENY_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD", "_PASSWD", "_CREDENTIALS", "_CREDENTIAL")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_TMP_DEFAULT_MB = 1024


def sandbox_identity(settings: SandboxSettings) -> tuple[int, int]:
    """The (uid, gid) bwrap runs as: self when unprivileged, an unprivileged uid when root."""
    euid = os.geteuid()
    if euid != 0:
        if settings.run_as_uid not in (None, euid):
            raise ConfigError("inwall.run_as_uid can only be used when inwall runs as root")
        return euid, os.getegid()
    uid = settings.run_as_uid if settings.run_as_uid is not None else DEFAULT_SANDBOX_UID
    gid = settings.run_as_gid if settings.run_as_gid is not None else uid
    return uid, gid


def prepare_workdir(
    path: str | os.PathLike[str], *, settings: SandboxSettings | None = None, mode: int = 0o700
) -> Path:
    """Create (or adopt) a per-session workspace owned by the sandbox uid, mode 0700.

    Parents are created 0711 (searchable, not listable) so the sandbox uid can
    reach its own workspace without seeing its siblings.
    """
    from pathlib import Path

    uid, gid = sandbox_identity(settings or SandboxSettings.default())
    p = Path(path).absolute()
    for anc in reversed(p.parents):
        if not anc.exists():
            anc.mkdir(mode=0o711)
    if not p.exists():
        p.mkdir(mode=mode)
        if os.geteuid() == 0:
            os.chown(p, uid, gid)
    st = p.stat()
    if st.st_uid != uid:
        raise ConfigError(f"workspace {p} exists but belongs to uid {st.st_uid}, not the sandbox uid {uid}")
    os.chmod(p, mode)
    blocked = unsearchable_ancestor(str(p), uid, gid)
    if blocked is not None:
        raise ConfigError(
            f"the sandbox uid {uid} cannot reach {p}: {blocked} is not searchable by it "
            f"(e.g. `chmod o+x {blocked}`, or put workspaces elsewhere)"
        )
    return p.resolve()


def _env_denied(name: str, extra: Sequence[str]) -> bool:
    up = name.upper()
    return up.startswith(_ENV_DENY_PREFIXES) or up.endswith(_ENV_DENY_SUFFIXES) or name in extra


def _env_match(name: str, patterns: Sequence[str]) -> bool:
    for pat in patterns:
        if pat.endswith("*") and "*" not in pat[:-1]:
            if name.startswith(pat[:-1]):
                return True
        elif "*" in pat or "?" in pat or "[" in pat:
            import fnmatch

            if fnmatch.fnmatchcase(name, pat):
                return True
        elif name == pat:
            return True
    return False


class RunResult:
    """What :meth:`Sandbox.run` observed. ``exit_code`` is 128+N when the command died of signal N."""

    __slots__ = (
        "duration_s",
        "exit_code",
        "signal",
        "stderr",
        "stderr_truncated",
        "stdout",
        "stdout_truncated",
        "timed_out",
        "violations",
    )

    def __init__(
        self,
        *,
        exit_code: int,
        signal: int | None,
        stdout: bytes,
        stderr: bytes,
        stdout_truncated: bool,
        stderr_truncated: bool,
        duration_s: float,
        violations: list[Violation] | None = None,
        timed_out: bool = False,
    ) -> None:
        self.exit_code = exit_code
        self.signal = signal
        self.stdout = stdout
        self.stderr = stderr
        self.stdout_truncated = stdout_truncated
        self.stderr_truncated = stderr_truncated
        self.duration_s = duration_s
        self.violations: list[Violation] = list(violations or [])
        self.timed_out = timed_out

    def __repr__(self) -> str:
        return (
            f"RunResult(exit_code={self.exit_code}, signal={self.signal}, stdout={self.stdout[:80]!r}, "
            f"stderr={self.stderr[:80]!r}, violations={self.violations!r})"
        )


class _Status:
    """Reads bwrap's --json-status-fd: the sandbox's pid 1 and the command's exit code."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        os.set_blocking(fd, False)

    def poll(self) -> None:
        while self.fd >= 0:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                os.close(self.fd)
                self.fd = -1
                return
            self.buf += chunk

    def _field(self, key: bytes) -> int | None:
        self.poll()
        i = self.buf.find(b'"' + key + b'":')
        if i < 0:
            return None
        j = i + len(key) + 3
        k = j
        while k < len(self.buf) and self.buf[k : k + 1] in b" -0123456789":
            k += 1
        try:
            return int(self.buf[j:k])
        except ValueError:
            return None

    @property
    def child_pid(self) -> int | None:
        return self._field(b"child-pid")

    @property
    def exit_code(self) -> int | None:
        return self._field(b"exit-code")

    def command_pid(self) -> int | None:
        """Host pid of the command (the first child of the sandbox's pid 1)."""
        p1 = self.child_pid
        if p1 is None:
            return None
        try:
            with open(f"/proc/{p1}/task/{p1}/children") as f:
                kids = f.read().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    def close(self) -> None:
        if self.fd >= 0:
            self.poll()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _signal_command(status: _Status, sig: int, bwrap_pid: int) -> None:
    """Deliver ``sig`` to the command's process group; before it exists, to bwrap."""
    cmd = status.command_pid()
    try:
        if cmd is not None:
            os.killpg(os.getpgid(cmd), sig)
        else:
            os.kill(bwrap_pid, _signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Launch:
    """One prepared bwrap invocation and the host resources it holds until it ends."""

    def __init__(
        self,
        *,
        argv: list[str],
        env: dict[str, str],
        pass_fds: list[int],
        close_after_spawn: list[int],
        status: _Status,
        placeholders: list[str],
        uid: int,
        gid: int,
        switch_user: bool,
    ) -> None:
        self.argv = argv
        self.env = env
        self.pass_fds = pass_fds
        self.close_after_spawn = close_after_spawn
        self.status = status
        self.placeholders = placeholders
        self.uid = uid
        self.gid = gid
        self.switch_user = switch_user

    def preexec_identity(self) -> None:
        """In the forked child: drop to the sandbox uid (only when inwall runs as root)."""
        if self.switch_user:
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)

    def after_spawn(self) -> None:
        for fd in self.close_after_spawn:
            _close(fd)
        self.close_after_spawn = []

    def cleanup(self) -> None:
        self.after_spawn()
        self.status.close()
        for p in reversed(self.placeholders):
            _remove_placeholder(p)


def _remove_placeholder(p: str) -> None:
    """Remove a mount point bwrap left on the host, only if it is still an empty file or dir."""
    try:
        st = os.lstat(p)
    except OSError:
        return
    import stat

    try:
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(p)
        elif stat.S_ISDIR(st.st_mode):
            os.rmdir(p)
    except OSError:
        pass


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        return


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class Sandbox:
    """A sandbox for one session or command; async context manager for :meth:`run`/:meth:`spawn`.

    ``hide_workdir_siblings`` hides the workdir's parent directory except the
    workdir itself (the worker sets it so sessions cannot see each other's
    workspaces even though they share a uid). ``extra_ro_binds`` are
    (host path, sandbox path) pairs bound read-only.
    """

    def __init__(
        self,
        settings: SandboxSettings,
        workdir: str | os.PathLike[str],
        *,
        audit: AuditLog | None = None,
        on_event: Callable[[Violation], None] | None = None,
        extra_ro_binds: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]] = (),
        hide_workdir_siblings: bool = False,
        kill_grace_s: float = 2.0,
        disk_check_interval_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self._wd = os.path.abspath(os.fspath(workdir))
        self.audit = audit
        self.on_event = on_event
        self.extra_ro_binds = [(os.fspath(a), os.fspath(b)) for a, b in extra_ro_binds]
        self.hide_workdir_siblings = hide_workdir_siblings
        self.kill_grace_s = kill_grace_s
        self.disk_check_interval_s = disk_check_interval_s
        self.uid, self.gid = sandbox_identity(settings)
        self._events: list[Violation] = []
        self._proxy_cm: Any = None
        self._socket_path: str | None = None
        self._credential: str | None = None
        self._runtime_dir: str | None = None
        self._processes: set[SandboxProcess] = set()
        self._net_thread: Any = None

    @property
    def workdir(self) -> Path:
        from pathlib import Path

        return Path(self._wd)

    # ------------------------------------------------------------------ checks

    def _check(self) -> None:
        from inwall.sandbox.probe import check_host

        report = check_host(bwrap_path=self.settings.bwrap_path)
        report.require()
        wd = self._wd
        if not os.path.isdir(wd):
            raise ConfigError(f"workdir {wd} does not exist or is not a directory")
        self._wd = wd = os.path.realpath(wd)
        if os.geteuid() == 0:
            owner = os.stat(wd).st_uid
            if owner != self.uid:
                raise ConfigError(
                    f"workdir {wd} belongs to uid {owner}, but as root inwall runs the command as uid "
                    f"{self.uid} (inwall.run_as_uid), which could not use it; running it as root would "
                    f"let it read root-only files. Make a workspace for it: "
                    f"`install -d -o {self.uid} -g {self.gid} -m 0700 DIR`, then pass --workdir DIR"
                )
        blocked = unsearchable_ancestor(wd, self.uid, self.gid)
        if blocked is not None:
            raise ConfigError(
                f"the sandbox uid {self.uid} cannot reach workdir {wd}: {blocked} is not searchable"
            )

    def _record(self, v: Violation) -> None:
        self._events.append(v)
        if self.audit is not None:
            from inwall.sandbox.violations import audit_fields

            self.audit.append("sandbox_violation", workdir=self._wd, **audit_fields(v.to_dict()))
        if self.on_event is not None:
            self.on_event(v)

    # ------------------------------------------------------------------ network

    @property
    def network_enabled(self) -> bool:
        return self.settings.network.enabled

    def _egress_event(self, event: Any) -> None:
        """Adapter for EG's EgressEvent: denied attempts become EgressDenied violations."""
        allowed = getattr(event, "allowed", None)
        if allowed is None:
            decision = getattr(event, "decision", None)
            allowed = getattr(decision, "allowed", decision in ("allow", "allowed", True))
        if not allowed:
            from inwall.sandbox.violations import EgressDenied

            self._record(
                EgressDenied(
                    host=str(getattr(event, "host", "?")),
                    port=int(getattr(event, "port", 0) or 0),
                    reason=str(getattr(event, "reason", "denied")),
                )
            )

    async def _start_network(self) -> None:
        import secrets
        import tempfile
        from pathlib import Path

        from inwall.sandbox.egress.proxy import EgressProxy

        self._runtime_dir = tempfile.mkdtemp(prefix="inwall-egress-")
        if os.geteuid() == 0:
            os.chown(self._runtime_dir, self.uid, self.gid)
        self._credential = secrets.token_urlsafe(24)
        sock = os.path.join(self._runtime_dir, "proxy.sock")
        proxy = EgressProxy(
            self.settings.network.rules(),
            Path(sock),
            credential=self._credential,
            audit=self.audit,
            on_event=self._egress_event,
        )
        await proxy.__aenter__()
        self._proxy_cm = proxy
        self._socket_path = sock
        if os.geteuid() == 0:
            os.chown(sock, self.uid, self.gid)
        os.chmod(sock, 0o600)

    async def _stop_network(self) -> None:
        proxy, self._proxy_cm = self._proxy_cm, None
        try:
            if proxy is not None:
                await proxy.__aexit__(None, None, None)
        finally:
            if self._runtime_dir is not None:
                import shutil

                shutil.rmtree(self._runtime_dir, ignore_errors=True)
                self._runtime_dir = None

    # ------------------------------------------------------------------ launch recipe

    def _env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        s = self.settings
        allow = (*_ENV_BASE, *s.env_allow)
        env = {k: v for k, v in os.environ.items() if _env_match(k, allow)}
        env.setdefault("PATH", _DEFAULT_PATH)
        if self.uid != os.geteuid():
            # entries the sandbox uid cannot search (a root-only pyenv, say) only turn
            # "command not found" into "permission denied"
            path = env["PATH"].split(":")
            dirs = [d for d in path if d and unsearchable_ancestor(d, self.uid, self.gid) is None]
            env["PATH"] = ":".join(dirs) or _DEFAULT_PATH
        env["HOME"] = self._wd
        if s.git_safe_directories:
            env["GIT_CONFIG_COUNT"] = str(len(s.git_safe_directories))
            for i, d in enumerate(s.git_safe_directories):
                env[f"GIT_CONFIG_KEY_{i}"] = "safe.directory"
                env[f"GIT_CONFIG_VALUE_{i}"] = d
        if extra:
            env.update(extra)
        env = {k: v for k, v in env.items() if not _env_denied(k, s.env_deny)}
        if self._credential is not None:
            cred = self._credential
            http = f"http://inwall:{cred}@127.0.0.1:{HTTP_PROXY_PORT}"
            socks = f"socks5h://inwall:{cred}@127.0.0.1:{SOCKS_PROXY_PORT}"
            for k, v in (("HTTP_PROXY", http), ("HTTPS_PROXY", http), ("ALL_PROXY", socks)):
                env[k] = env[k.lower()] = v
            env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
        return env

    def _launch(self, argv: Sequence[str], *, env: Mapping[str, str] | None, cwd: str | None) -> _Launch:
        from inwall.sandbox import seccomp
        from inwall.sandbox.bwrap import BwrapConfig, build_argv, plan_filesystem
        from inwall.sandbox.limits import prlimit_argv, rlimit_table
        from inwall.sandbox.probe import check_host

        if not argv:
            raise ConfigError("no command given")
        report = check_host(bwrap_path=self.settings.bwrap_path)
        assert report.bwrap is not None and report.prlimit is not None
        arch = seccomp.host_arch()
        assert arch is not None
        limits = self.settings.limits
        tmp_mb = self.settings.tmp_mb or min(limits.disk_mb or _TMP_DEFAULT_MB, _TMP_DEFAULT_MB)
        plan = plan_filesystem(
            self.settings.filesystem,
            self._wd,
            home=os.path.expanduser("~"),
            uid=self.uid,
            gid=self.gid,
            hide_workdir_siblings=self.hide_workdir_siblings,
            tmp_bytes=tmp_mb * MIB,
        )
        prog = seccomp.build_filter(arch)
        status_r, status_w = os.pipe()
        fds_to_close = [status_w]
        pass_fds = [status_w]
        data_files: dict[str, int] = {}
        extra_binds = list(self.extra_ro_binds)
        seccomp_fd: int | None = None
        if self._socket_path is not None:
            here = os.path.dirname(os.path.abspath(__file__))
            with open(os.path.join(here, "_init.py"), "rb") as f:
                init_src = f.read()
            with open(os.path.join(here, "egress", "bridge.py"), "rb") as f:
                bridge_src = f.read()
            for name, data in (("_init.py", init_src), ("bridge.py", bridge_src), ("seccomp.bpf", prog)):
                fd = _memfd(name, data)
                data_files[f"{SANDBOX_RUN_DIR}/{name}"] = fd
                pass_fds.append(fd)
                fds_to_close.append(fd)
            sock_dest = f"{SANDBOX_RUN_DIR}/proxy.sock"
            extra_binds.append((self._socket_path, sock_dest))
            command = [sandbox_python(self.uid, self.gid), "-I", "-S", f"{SANDBOX_RUN_DIR}/_init.py"]
            for name, soft, hard in rlimit_table(limits):
                command += ["--rlimit", f"{name}={soft}:{hard}"]
            command += [
                "--seccomp",
                f"{SANDBOX_RUN_DIR}/seccomp.bpf",
                "--bridge",
                f"{SANDBOX_RUN_DIR}/bridge.py",
            ]
            command += ["--unix", sock_dest]
            command += [
                "--listen",
                f"127.0.0.1:{HTTP_PROXY_PORT}",
                "--listen",
                f"127.0.0.1:{SOCKS_PROXY_PORT}",
            ]
            command += ["--", *argv]
        else:
            seccomp_fd = _memfd("inwall-seccomp", prog)
            pass_fds.append(seccomp_fd)
            fds_to_close.append(seccomp_fd)
            command = [*prlimit_argv(report.prlimit, limits), *argv]
        chdir = self._wd
        if cwd:
            chdir = os.path.normpath(os.path.join(chdir, cwd))
        cfg = BwrapConfig(
            bwrap=report.bwrap,
            mounts=plan.mounts,
            chdir=chdir,
            command=command,
            seccomp_fd=seccomp_fd,
            status_fd=status_w,
            data_files=data_files,
            extra_ro_binds=extra_binds,
        )
        return _Launch(
            argv=build_argv(cfg),
            env=self._env(env),
            pass_fds=pass_fds,
            close_after_spawn=fds_to_close,
            status=_Status(status_r),
            placeholders=plan.placeholders,
            uid=self.uid,
            gid=self.gid,
            switch_user=os.geteuid() == 0,
        )

    def _setup_failed(self, stderr: bytes | None) -> SandboxUnavailable:
        from inwall.sandbox.probe import check_host, reset_cache

        reset_cache()
        report = check_host(deep=True, bwrap_path=self.settings.bwrap_path, run_as=(self.uid, self.gid))
        detail = (stderr or b"").decode("utf-8", "replace").strip()[-2000:]
        problems = "; ".join(report.problems)
        msg = "bubblewrap could not start the sandbox"
        if detail:
            msg += f": {detail}"
        if problems:
            msg += f" ({problems})"
        return SandboxUnavailable(msg)

    # ------------------------------------------------------------------ sync CLI path

    def exec_foreground(self, argv: Sequence[str]) -> int:
        """Run ``argv`` with the caller's stdio; return its exit status (128+N if killed by N)."""
        self._check()
        if self.network_enabled:
            return self._exec_with_network(argv)
        return self._exec_foreground(argv)

    def _exec_with_network(self, argv: Sequence[str]) -> int:
        import threading

        import anyio

        ready = threading.Event()
        done = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            try:
                await self._start_network()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                raise
            ready.set()
            try:
                await anyio.to_thread.run_sync(done.wait)
            finally:
                await self._stop_network()  # left at the level it was entered (anyio scope nesting)

        def thread_main() -> None:
            try:
                anyio.run(serve)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
                if not failure:
                    failure.append(exc)
                ready.set()

        t = threading.Thread(target=thread_main, name="inwall-egress", daemon=True)
        t.start()
        ready.wait(30)
        if failure:
            done.set()
            raise SandboxUnavailable(f"the egress proxy did not start: {failure[0]}") from failure[0]
        try:
            return self._exec_foreground(argv)
        finally:
            done.set()
            t.join(10)

    def _exec_foreground(self, argv: Sequence[str]) -> int:
        launch = self._launch(argv, env=None, cwd=None)
        pid = os.fork()
        if pid == 0:  # child: own process group (terminal signals go to inwall, which forwards)
            try:
                os.setpgid(0, 0)
                launch.preexec_identity()
                fds = set(launch.pass_fds)
                for fd in fds:
                    os.set_inheritable(fd, True)
                os.execve(launch.argv[0], launch.argv, launch.env)  # noqa: S606 - argv is bwrap's, built by us
            except BaseException as exc:  # noqa: BLE001 - the child must never return into inwall
                os.write(2, f"inwall: cannot start bubblewrap: {exc}\n".encode())
            finally:
                os._exit(125)
        launch.after_spawn()
        status = launch.status
        forwarded = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT)

        def forward(signum: int, _frame: Any) -> None:
            _signal_command(status, signum, pid)

        previous = {s: _signal.signal(s, forward) for s in forwarded}
        try:
            while True:
                try:
                    _, wstatus = os.waitpid(pid, 0)
                    break
                except ChildProcessError:  # pragma: no cover - reaped elsewhere
                    wstatus = 0
                    break
        finally:
            for s, h in previous.items():
                _signal.signal(s, h)
            status.poll()
            code = status.exit_code
            started = status.child_pid is not None
            launch.cleanup()
        if os.WIFSIGNALED(wstatus):
            return 128 + os.WTERMSIG(wstatus)
        rc = os.WEXITSTATUS(wstatus)
        if code is None and not started:
            raise self._setup_failed(None)
        if code is None:
            # bwrap's own failure after the namespace existed (e.g. a mount it could not make)
            raise self._setup_failed(None)
        return rc

    # ------------------------------------------------------------------ async paths

    async def __aenter__(self) -> Sandbox:
        self._check()
        if self.network_enabled:
            await self._start_network()
        return self

    async def __aexit__(self, *exc: object) -> None:
        import anyio

        with anyio.CancelScope(shield=True), anyio.move_on_after(self.kill_grace_s + 5):
            for proc in list(self._processes):
                await proc.terminate(self.kill_grace_s)
        # the proxy's task group was entered in this task's own scope nesting, so it
        # must be left from the same level; it shields and bounds its own cleanup
        await self._stop_network()

    async def _open(self, launch: _Launch, *, stdin: bool) -> Process:
        import subprocess

        import anyio

        try:
            proc = await anyio.open_process(
                launch.argv,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=launch.env,
                pass_fds=launch.pass_fds,
                start_new_session=True,
                user=launch.uid if launch.switch_user else None,
                group=launch.gid if launch.switch_user else None,
                extra_groups=[] if launch.switch_user else None,
            )
        except OSError as exc:
            launch.cleanup()
            raise SandboxUnavailable(f"cannot start bubblewrap: {exc}") from exc
        launch.after_spawn()
        return proc

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> RunResult:
        """Run to completion with captured output, the wall timeout and the output cap."""
        import anyio

        from inwall.sandbox.violations import LimitExceeded

        limits = self.settings.limits
        timeout = timeout_s if timeout_s is not None else limits.timeout_s
        cap = limits.output_bytes
        launch = self._launch(argv, env=env, cwd=cwd)
        first_event = len(self._events)
        start = time.monotonic()
        proc = await self._open(launch, stdin=stdin is not None)
        out = bytearray()
        err = bytearray()
        truncated = {"stdout": False, "stderr": False}
        total = [0]
        over: list[Violation] = []
        timed_out = False

        def kill() -> None:
            _killpg(proc.pid, _signal.SIGKILL)

        async def pump(stream: ByteReceiveStream | None, buf: bytearray, name: str) -> None:
            if stream is None:
                return
            async for chunk in stream:
                room = (cap - total[0]) if cap is not None else len(chunk)
                if room < len(chunk):
                    buf += chunk[: max(room, 0)]
                    total[0] += max(room, 0)
                    truncated[name] = True
                    if not over:
                        over.append(LimitExceeded(limit="output_bytes", value=cap, detail=f"{name} cut"))
                    kill()
                    async for _ in stream:  # drain to EOF (the sandbox is dead) so the pipe closes
                        pass
                    return
                buf += chunk
                total[0] += len(chunk)

        async def feed() -> None:
            if proc.stdin is None:
                return
            try:
                if stdin:
                    await proc.stdin.send(stdin)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            finally:
                await proc.stdin.aclose()

        async def watch_disk() -> None:
            if limits.disk_mb is None:
                return
            from inwall.sandbox.limits import dir_usage_bytes

            budget = limits.disk_mb * MIB
            while True:
                await anyio.sleep(self.disk_check_interval_s)
                used = await anyio.to_thread.run_sync(dir_usage_bytes, self._wd)
                if used > budget:
                    over.append(
                        LimitExceeded(
                            limit="disk_mb", value=limits.disk_mb, detail=f"workspace holds {used // MIB} MiB"
                        )
                    )
                    kill()
                    return

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(feed)
                tg.start_soon(watch_disk)
                with anyio.move_on_after(timeout) as scope:
                    async with anyio.create_task_group() as io:
                        io.start_soon(pump, proc.stdout, out, "stdout")
                        io.start_soon(pump, proc.stderr, err, "stderr")
                        await proc.wait()
                if scope.cancelled_caught:
                    timed_out = True
                    kill()
                tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.kill_grace_s + 5):
                rc = await proc.wait()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.kill_grace_s + 5):
                if proc.returncode is None:
                    kill()
                    await proc.wait()
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        await stream.aclose()
            launch.status.poll()
            code = launch.status.exit_code
            started = launch.status.child_pid is not None
            launch.cleanup()
        duration = time.monotonic() - start
        if code is None and not timed_out and not over and (not started or rc != 0):
            raise self._setup_failed(bytes(err))
        exit_code = code if code is not None else (rc if rc >= 0 else 128 - rc)
        sig = exit_code - 128 if 128 < exit_code < 128 + 65 else None
        observed = self._events[first_event:]  # egress denials reported while it ran
        new: list[Violation] = []
        if timed_out:
            new.append(LimitExceeded(limit="timeout_s", value=timeout, detail="command killed"))
            sig = _signal.SIGKILL
            exit_code = 128 + sig
        new.extend(over)
        if over and sig is None and code is None:
            sig = _signal.SIGKILL
            exit_code = 128 + sig
        new.extend(self._diagnose(exit_code, bytes(err), argv, stdout_tail=bytes(out[-4096:])))
        if limits.disk_mb is not None and not any(
            isinstance(v, LimitExceeded) and v.limit == "disk_mb" for v in new
        ):
            from inwall.sandbox.limits import dir_usage_bytes

            used = dir_usage_bytes(self._wd)
            if used > limits.disk_mb * MIB:
                new.append(
                    LimitExceeded(
                        limit="disk_mb", value=limits.disk_mb, detail=f"workspace holds {used // MIB} MiB"
                    )
                )
        for v in new:
            self._record(v)
        violations = [*observed, *new]
        return RunResult(
            exit_code=exit_code,
            signal=sig,
            stdout=bytes(out),
            stderr=bytes(err),
            stdout_truncated=truncated["stdout"],
            stderr_truncated=truncated["stderr"],
            duration_s=duration,
            violations=violations,
            timed_out=timed_out,
        )

    def _diagnose(
        self, exit_code: int, stderr: bytes, argv: Sequence[str], *, stdout_tail: bytes = b""
    ) -> list[Violation]:
        """Typed violations inferred from how the command ended (rlimits report nothing else)."""
        from inwall.sandbox.violations import LimitExceeded, SyscallDenied, from_stderr

        lim = self.settings.limits
        out: list[Violation] = []
        tail = stderr[-8192:] + b"\n" + stdout_tail
        if exit_code == 128 + _signal.SIGXCPU:
            out.append(LimitExceeded(limit="cpu_s", value=lim.cpu_s, detail="CPU time limit"))
        if exit_code == 128 + _signal.SIGXFSZ:
            out.append(LimitExceeded(limit="disk_mb", value=lim.disk_mb, detail="file size limit"))
        if exit_code == 128 + _signal.SIGSYS:
            out.append(SyscallDenied(detail="killed by seccomp"))
        if lim.memory_mb is not None and (
            b"MemoryError" in tail or b"Cannot allocate memory" in tail or b"out of memory" in tail.lower()
        ):
            out.append(LimitExceeded(limit="memory_mb", value=lim.memory_mb, detail="allocation refused"))
        if lim.pids is not None and (
            b"fork: Resource temporarily unavailable" in tail
            or b"Cannot fork" in tail
            or b"fork: retry" in tail
            or b"can't start new thread" in tail
            or (b"Resource temporarily unavailable" in tail and b"fork" in tail.lower())
        ):
            out.append(LimitExceeded(limit="pids", value=lim.pids, detail="process limit reached"))
        if lim.open_files is not None and b"Too many open files" in tail:
            out.append(LimitExceeded(limit="open_files", value=lim.open_files, detail="open file limit"))
        cmd = " ".join(argv)[:200]
        out.extend(from_stderr(stderr, ignore=self.settings.ignore_violations, command=cmd))
        return out

    async def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> SandboxProcess:
        """Start a long-lived sandboxed process with stdin/stdout/stderr byte streams."""
        launch = self._launch(argv, env=env, cwd=cwd)
        proc = await self._open(launch, stdin=True)
        sp = SandboxProcess(self, proc, launch)
        self._processes.add(sp)
        return sp


class SandboxProcess:
    """A process started by :meth:`Sandbox.spawn`; always :meth:`terminate` or :meth:`wait` it."""

    def __init__(self, sandbox: Sandbox, proc: Process, launch: _Launch) -> None:
        self._sandbox = sandbox
        self._proc = proc
        self._launch = launch
        self._closed = False

    @property
    def pid(self) -> int:
        """The bwrap process id on the host."""
        return self._proc.pid

    @property
    def stdin(self) -> ByteSendStream:
        assert self._proc.stdin is not None
        return self._proc.stdin

    @property
    def stdout(self) -> ByteReceiveStream:
        assert self._proc.stdout is not None
        return self._proc.stdout

    @property
    def stderr(self) -> ByteReceiveStream:
        assert self._proc.stderr is not None
        return self._proc.stderr

    @property
    def returncode(self) -> int | None:
        return self._finish_code() if self._proc.returncode is not None else None

    def _finish_code(self) -> int:
        self._launch.status.poll()
        code = self._launch.status.exit_code
        rc = self._proc.returncode
        assert rc is not None
        if code is not None:
            return code
        return rc if rc >= 0 else 128 - rc

    def _done(self) -> None:
        if not self._closed:
            self._closed = True
            self._launch.cleanup()
            self._sandbox._processes.discard(self)

    def send_signal(self, sig: int) -> None:
        """Deliver ``sig`` to the command's process group inside the sandbox."""
        _signal_command(self._launch.status, sig, self._proc.pid)

    async def wait(self) -> int:
        await self._proc.wait()
        code = self._finish_code()
        await self._close_pipes()
        self._done()
        return code

    async def _close_pipes(self) -> None:
        """Close the pipes through anyio's Process, so no transport is left for the GC to warn about."""
        import anyio

        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self._proc.aclose()

    async def terminate(self, grace: float = 2.0) -> int:
        """SIGTERM the command, then SIGKILL the whole sandbox after ``grace`` seconds."""
        import anyio

        with anyio.CancelScope(shield=True):
            if self._proc.returncode is None:
                self.send_signal(_signal.SIGTERM)
                with anyio.move_on_after(grace):
                    await self._proc.wait()
            if self._proc.returncode is None:
                _killpg(self._proc.pid, _signal.SIGKILL)
                with anyio.move_on_after(5):
                    await self._proc.wait()
            code = self._finish_code() if self._proc.returncode is not None else 128 + _signal.SIGKILL
            if self._proc.returncode is not None:
                await self._close_pipes()
            else:
                for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
                    if stream is not None:
                        await stream.aclose()
            self._done()
        return code
