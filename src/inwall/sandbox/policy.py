"""Sandbox settings: srt's JSON schema, read strictly, plus inwall's own keys.

Users bring their ``~/.srt-settings.json``, so every key srt accepts is
accepted here, and each is either honoured or refused with a message that
says why (never silently dropped when dropping it would weaken the policy).
Keys that only *grant* something macOS- or Windows-specific are accepted and
have no effect: on Linux there is nothing for them to grant, so ignoring them
keeps the sandbox at least as strict. Unknown keys anywhere are an error that
names the key path: a typo in a deny list must not become an open door.

Plain frozen dataclasses and hand-written checks instead of pydantic: this
module is on the ``inwall sandbox exec`` start-up path, where every import
costs the user wall time.

Precedence (as srt): reads are allowed everywhere, ``denyRead`` hides,
``allowRead`` re-opens inside a denied region, and a deny more specific
than the allow it sits in still wins. Writes are denied everywhere except
``allowWrite``; ``denyWrite`` wins inside it. With no ``filesystem`` section
the workdir (``"."``) is the only writable path.
"""

from __future__ import annotations

import os

from inwall.errors import ConfigError
from inwall.sandbox._frozen import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

__all__ = [
    "DEFAULT_LIMITS",
    "FilesystemPolicy",
    "Limits",
    "NetworkPolicy",
    "SandboxSettings",
]

MIB = 1024 * 1024


class Limits(Frozen):
    """Per-command resource limits (``None`` = no limit). Keys match ``inwall.limits``."""

    __slots__ = ("cpu_s", "disk_mb", "memory_mb", "open_files", "output_bytes", "pids", "timeout_s")
    timeout_s: float | None
    cpu_s: int | None
    memory_mb: int | None
    pids: int | None
    open_files: int | None
    output_bytes: int | None
    disk_mb: int | None

    def __init__(
        self,
        *,
        timeout_s: float | None = None,
        cpu_s: int | None = None,
        memory_mb: int | None = 8192,
        pids: int | None = 1024,
        open_files: int | None = 4096,
        output_bytes: int | None = 16 * MIB,
        disk_mb: int | None = 8192,
    ) -> None:
        self._init(
            timeout_s=timeout_s,
            cpu_s=cpu_s,
            memory_mb=memory_mb,
            pids=pids,
            open_files=open_files,
            output_bytes=output_bytes,
            disk_mb=disk_mb,
        )


DEFAULT_LIMITS = Limits()


class NetworkPolicy(Frozen):
    __slots__ = ("allow_local_binding", "allowed_domains", "denied_domains")
    allowed_domains: tuple[str, ...]
    denied_domains: tuple[str, ...]
    allow_local_binding: bool

    def __init__(
        self,
        allowed_domains: Sequence[str] = (),
        denied_domains: Sequence[str] = (),
        allow_local_binding: bool = False,
    ) -> None:
        self._init(
            allowed_domains=tuple(allowed_domains),
            denied_domains=tuple(denied_domains),
            allow_local_binding=allow_local_binding,
        )

    @property
    def enabled(self) -> bool:
        """An empty allowlist means no network at all (no proxy, no DNS)."""
        return bool(self.allowed_domains)

    def rules(self) -> Any:
        """EG's ``NetworkRules`` for these lists (imported lazily: the no-network path never needs it)."""
        from inwall.sandbox.egress.rules import NetworkRules

        return NetworkRules.from_settings(list(self.allowed_domains), list(self.denied_domains))


class FilesystemPolicy(Frozen):
    __slots__ = (
        "allow_git_config",
        "allow_read",
        "allow_write",
        "deny_read",
        "deny_read_always",
        "deny_write",
        "mandatory_deny_search_depth",
    )
    deny_read: tuple[str, ...]
    allow_read: tuple[str, ...]
    allow_write: tuple[str, ...]
    deny_write: tuple[str, ...]
    allow_git_config: bool
    mandatory_deny_search_depth: int
    #: ``credentials.files`` with ``mode: deny``: hidden even inside an ``allowRead``
    deny_read_always: tuple[str, ...]

    def __init__(
        self,
        *,
        deny_read: Sequence[str] = (),
        allow_read: Sequence[str] = (),
        allow_write: Sequence[str] = (".",),
        deny_write: Sequence[str] = (),
        allow_git_config: bool = False,
        mandatory_deny_search_depth: int = 3,
        deny_read_always: Sequence[str] = (),
    ) -> None:
        self._init(
            deny_read=tuple(deny_read),
            allow_read=tuple(allow_read),
            allow_write=tuple(allow_write),
            deny_write=tuple(deny_write),
            allow_git_config=allow_git_config,
            mandatory_deny_search_depth=mandatory_deny_search_depth,
            deny_read_always=tuple(deny_read_always),
        )


class SandboxSettings(Frozen):
    """The whole policy for one sandbox; build with :meth:`load`, :meth:`from_dict` or :meth:`default`."""

    __slots__ = (
        "bwrap_path",
        "env_allow",
        "env_deny",
        "filesystem",
        "git_safe_directories",
        "ignore_violations",
        "limits",
        "network",
        "run_as_gid",
        "run_as_uid",
        "source",
        "tmp_mb",
    )
    network: NetworkPolicy
    filesystem: FilesystemPolicy
    limits: Limits
    env_allow: tuple[str, ...]
    env_deny: tuple[str, ...]
    git_safe_directories: tuple[str, ...]
    ignore_violations: Mapping[str, tuple[str, ...]]
    run_as_uid: int | None
    run_as_gid: int | None
    tmp_mb: int | None
    bwrap_path: str | None
    source: str | None

    def __init__(
        self,
        *,
        network: NetworkPolicy | None = None,
        filesystem: FilesystemPolicy | None = None,
        limits: Limits = DEFAULT_LIMITS,
        env_allow: Sequence[str] = (),
        env_deny: Sequence[str] = (),
        git_safe_directories: Sequence[str] = (),
        ignore_violations: Mapping[str, Sequence[str]] | None = None,
        run_as_uid: int | None = None,
        run_as_gid: int | None = None,
        tmp_mb: int | None = None,
        bwrap_path: str | None = None,
        source: str | None = None,
    ) -> None:
        self._init(
            network=network or NetworkPolicy(),
            filesystem=filesystem or FilesystemPolicy(),
            limits=limits,
            env_allow=tuple(env_allow),
            env_deny=tuple(env_deny),
            git_safe_directories=tuple(git_safe_directories),
            ignore_violations={k: tuple(v) for k, v in (ignore_violations or {}).items()},
            run_as_uid=run_as_uid,
            run_as_gid=run_as_gid,
            tmp_mb=tmp_mb,
            bwrap_path=bwrap_path,
            source=source,
        )

    @classmethod
    def default(cls) -> SandboxSettings:
        """No network, writes only in the workdir, default limits."""
        return cls()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SandboxSettings:
        import json

        p = os.fspath(path)
        try:
            with open(p, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"settings file {p}: cannot read: {exc.strerror}") from exc
        if not text.strip():
            raise ConfigError(f"settings file {p} is empty (srt refuses an empty file too)")
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"settings file {p}: invalid JSON: {exc}") from exc
        return cls.from_dict(data, where=p).replace(source=p)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "settings") -> SandboxSettings:
        return _parse(data, where)

    def with_limits(self, **changes: Any) -> SandboxSettings:
        return self.replace(limits=self.limits.replace(**changes))


# --------------------------------------------------------------------------- parsing


class _Ctx:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: {path}: {message}")


def _check_keys(ctx: _Ctx, obj: Any, path: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise ctx.fail(path or "(top level)", "must be a JSON object")
    for key in obj:
        if key not in allowed:
            import difflib

            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean {path + '.' if path else ''}{close[0]}?)" if close else ""
            full = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{ctx.where}: unknown key {full!r}{hint}; allowed here: {', '.join(allowed)}")
    return obj


def _bool(ctx: _Ctx, v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ctx.fail(path, "must be true or false")
    return v


def _int(ctx: _Ctx, v: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ctx.fail(path, f"must be an integer from {lo} to {hi}")
    return v


def _num(ctx: _Ctx, v: Any, path: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise ctx.fail(path, f"must be a number from {lo} to {hi}")
    return float(v)


def _str(ctx: _Ctx, v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise ctx.fail(path, "must be a non-empty string")
    if "\0" in v:
        raise ctx.fail(path, "must not contain NUL")
    return v


def _strs(ctx: _Ctx, v: Any, path: str) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise ctx.fail(path, "must be a list of strings")
    return tuple(_str(ctx, x, f"{path}[{i}]") for i, x in enumerate(v))


def _abs_path(ctx: _Ctx, v: Any, path: str) -> str:
    s = _str(ctx, v, path)
    if not s.startswith("/"):
        raise ctx.fail(path, "must be an absolute path")
    return s


def _domain(ctx: _Ctx, v: Any, path: str, *, deny: bool) -> str:
    s = _str(ctx, v, path)
    if any(c.isspace() for c in s) or "/" in s or "@" in s:
        raise ctx.fail(path, f"{s!r} is not a domain pattern (host, *.host, optional :port)")
    if s.startswith("*") and not s.startswith("*.") and not (deny and (s == "*" or s.startswith("*:"))):
        raise ctx.fail(path, f"{s!r}: only a leading '*.' wildcard is supported")
    return s


def _refuse(ctx: _Ctx, path: str, why: str) -> ConfigError:
    return ctx.fail(path, f"is not supported by inwall: {why}")


def _ignore(_ctx: _Ctx, v: Any, _path: str) -> None:
    return None


def _sub(keys: Mapping[str, Callable[[_Ctx, Any, str], Any]]) -> Callable[[_Ctx, Any, str], None]:
    """A strict nested object whose values are only validated (no effect on Linux)."""

    def check(ctx: _Ctx, v: Any, path: str) -> None:
        obj = _check_keys(ctx, v, path, list(keys))
        for k, val in obj.items():
            keys[k](ctx, val, f"{path}.{k}")

    return check


def _parse_network(ctx: _Ctx, v: Any) -> NetworkPolicy:
    net = _check_keys(
        ctx,
        v,
        "network",
        [
            "allowedDomains",
            "deniedDomains",
            "deniedDomainReasons",
            "strictAllowlist",
            "deniedResolvedAddresses",
            "allowUnixSockets",
            "allowAllUnixSockets",
            "allowLocalBinding",
            "allowMachLookup",
            "httpProxyPort",
            "socksProxyPort",
            "mitmProxy",
            "filterRequest",
            "tlsTerminate",
            "parentProxy",
        ],
    )
    allowed: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()
    local_binding = False
    for key, val in net.items():
        p = f"network.{key}"
        if key == "allowedDomains":
            allowed = tuple(
                _domain(ctx, x, f"{p}[{i}]", deny=False) for i, x in enumerate(_strs(ctx, val, p))
            )
        elif key == "deniedDomains":
            denied = tuple(_domain(ctx, x, f"{p}[{i}]", deny=True) for i, x in enumerate(_strs(ctx, val, p)))
        elif key == "deniedDomainReasons":
            if not isinstance(val, dict) or not all(isinstance(x, str) for x in val.values()):
                raise ctx.fail(p, "must be an object of strings")
            if val:
                raise _refuse(ctx, p, "denial reasons come from the proxy's own checks; remove this key")
        elif key == "strictAllowlist":
            _bool(ctx, val, p)  # inwall never asks: the allowlist is always strict
        elif key == "deniedResolvedAddresses":
            _check_resolved_denies(ctx, _strs(ctx, val, p), p)
        elif key in ("allowUnixSockets", "allowMachLookup"):
            _strs(ctx, val, p)  # macOS-only grants (srt ignores allowUnixSockets on Linux too)
        elif key == "allowAllUnixSockets":
            if _bool(ctx, val, p):
                raise _refuse(ctx, p, "the command may never open unix sockets (host daemons listen on them)")
        elif key == "allowLocalBinding":
            local_binding = _bool(ctx, val, p)  # the sandbox's loopback is its own: binding exposes nothing
        elif key in ("httpProxyPort", "socksProxyPort"):
            _int(ctx, val, p, 1, 65535)
            raise _refuse(ctx, p, "inwall runs its own per-sandbox egress proxy")
        else:  # mitmProxy, filterRequest, tlsTerminate, parentProxy
            raise _refuse(ctx, p, "TLS interception and proxy chaining are not implemented")
    return NetworkPolicy(allowed, denied, local_binding)


def _check_resolved_denies(ctx: _Ctx, entries: tuple[str, ...], path: str) -> None:
    """Accept only ranges the egress proxy already refuses (private, loopback, ...)."""
    if not entries:
        return
    import ipaddress

    for i, e in enumerate(entries):
        try:
            net = ipaddress.ip_network(e, strict=False)
        except ValueError as exc:
            raise ctx.fail(f"{path}[{i}]", f"{e!r} is not an IP address or CIDR range") from exc
        covered = net.is_private or net.is_loopback or net.is_link_local or net.is_multicast
        covered = covered or net.is_unspecified or net.is_reserved
        if isinstance(net, ipaddress.IPv4Network):
            covered = covered or net.subnet_of(ipaddress.IPv4Network("100.64.0.0/10"))
        if not covered:
            raise _refuse(
                ctx,
                f"{path}[{i}]",
                f"{e} is outside the private/loopback/link-local ranges the proxy always denies; "
                "inwall cannot deny extra public addresses yet (use deniedDomains)",
            )


def _parse_filesystem(ctx: _Ctx, v: Any) -> FilesystemPolicy:
    fs = _check_keys(
        ctx,
        v,
        "filesystem",
        ["disabled", "denyRead", "allowRead", "allowWrite", "denyWrite", "allowGitConfig"],
    )
    out: dict[str, Any] = {}
    for key, val in fs.items():
        p = f"filesystem.{key}"
        if key == "disabled":
            if _bool(ctx, val, p):
                raise _refuse(ctx, p, "filesystem isolation cannot be switched off")
        elif key == "allowGitConfig":
            out["allow_git_config"] = _bool(ctx, val, p)
        else:
            items = _strs(ctx, val, p)
            if key.startswith("deny"):
                for i, s in enumerate(items):
                    if s.endswith("/") and s != "/" and any(c in s for c in "*?["):
                        raise ctx.fail(
                            f"{p}[{i}]", "a deny glob must not end in '/' (it could match nothing)"
                        )
            name = {"denyRead": "deny_read", "allowRead": "allow_read"}.get(key) or (
                "allow_write" if key == "allowWrite" else "deny_write"
            )
            out[name] = items
    return FilesystemPolicy(**out)


def _parse_credentials(ctx: _Ctx, v: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``mode: deny`` entries become read denies / env denies; masking needs TLS interception."""
    creds = _check_keys(
        ctx, v, "credentials", ["files", "envVars", "allowPlaintextInject", "awsPairs", "sigv4"]
    )
    files: list[str] = []
    envs: list[str] = []
    entry_keys = [
        "mode",
        "extract",
        "onExtractNoMatch",
        "decode",
        "maskClaims",
        "maskDuplicates",
        "injectHosts",
    ]
    for key, val in creds.items():
        p = f"credentials.{key}"
        if key in ("files", "envVars"):
            if not isinstance(val, list):
                raise ctx.fail(p, "must be a list")
            name_key = "path" if key == "files" else "name"
            for i, entry in enumerate(val):
                ep = f"{p}[{i}]"
                e = _check_keys(ctx, entry, ep, [name_key, *entry_keys])
                if name_key not in e or "mode" not in e:
                    raise ctx.fail(ep, f"needs {name_key!r} and 'mode'")
                target = _str(ctx, e[name_key], f"{ep}.{name_key}")
                if e["mode"] == "mask":
                    raise _refuse(ctx, f"{ep}.mode", "credential masking needs TLS interception; use 'deny'")
                if e["mode"] != "deny":
                    raise ctx.fail(f"{ep}.mode", "must be 'deny' or 'mask'")
                (files if key == "files" else envs).append(target)
        elif key == "allowPlaintextInject":
            _bool(ctx, val, p)
        else:
            raise _refuse(ctx, p, "credential masking needs TLS interception")
    return tuple(files), tuple(envs)


def _parse_inwall(ctx: _Ctx, v: Any) -> dict[str, Any]:
    obj = _check_keys(ctx, v, "inwall", ["limits", "env_allow", "run_as_uid", "run_as_gid", "tmp_mb"])
    out: dict[str, Any] = {}
    for key, val in obj.items():
        p = f"inwall.{key}"
        if key == "limits":
            out["limits"] = _parse_limits(ctx, val)
        elif key == "env_allow":
            out["env_allow"] = _strs(ctx, val, p)
        elif key in ("run_as_uid", "run_as_gid"):
            out[key] = _int(ctx, val, p, 1, 2**31 - 2)
        else:
            out["tmp_mb"] = _int(ctx, val, p, 1, 1 << 20)
    return out


def _parse_limits(ctx: _Ctx, v: Any) -> Limits:
    keys = ["timeout_s", "cpu_s", "memory_mb", "pids", "open_files", "output_bytes", "disk_mb"]
    obj = _check_keys(ctx, v, "inwall.limits", keys)
    out: dict[str, Any] = {}
    for key, val in obj.items():
        p = f"inwall.limits.{key}"
        if val is None:
            out[key] = None
        elif key == "timeout_s":
            out[key] = _num(ctx, val, p, 0.001, 7 * 86400)
        elif key == "open_files":
            out[key] = _int(ctx, val, p, 16, 1 << 20)
        elif key == "pids":
            out[key] = _int(ctx, val, p, 4, 1 << 22)
        elif key == "memory_mb":
            out[key] = _int(ctx, val, p, 16, 1 << 30)
        else:
            out[key] = _int(ctx, val, p, 1, 1 << 50)
    return DEFAULT_LIMITS.replace(**out)


_TOP = [
    "network",
    "filesystem",
    "credentials",
    "ignoreViolations",
    "enableWeakerNestedSandbox",
    "enableWeakerNetworkIsolation",
    "allowAppleEvents",
    "ripgrep",
    "mandatoryDenySearchDepth",
    "allowPty",
    "seccomp",
    "bwrapPath",
    "socatPath",
    "javaAgentJarPath",
    "windows",
    "git",
    "inwall",
]

_NO_EFFECT: dict[str, Callable[[_Ctx, Any, str], Any]] = {
    # macOS-only grants: nothing to grant on Linux
    "enableWeakerNetworkIsolation": _bool,
    "allowAppleEvents": _bool,
    "allowPty": _bool,
    # paths of helpers srt runs; inwall needs none of them
    "ripgrep": _sub({"command": _str, "args": _strs, "argv0": _str}),
    "seccomp": _sub({"applyPath": _abs_path, "argv0": _str}),
    "socatPath": _abs_path,
    "javaAgentJarPath": _abs_path,
    "windows": _sub(
        {
            "sandboxUser": _str,
            "sublayerGuid": _str,
            "wfpSublayerGuid": _str,
            "proxyPortRange": _ignore,
            "srtWin": _sub({"path": _str}),
        }
    ),
}


def _parse(data: Mapping[str, Any], where: str) -> SandboxSettings:
    ctx = _Ctx(where)
    top = _check_keys(ctx, data, "", _TOP)
    kw: dict[str, Any] = {}
    fs = FilesystemPolicy()
    cred_files: tuple[str, ...] = ()
    cred_envs: tuple[str, ...] = ()
    depth: int | None = None
    for key, val in top.items():
        if key == "network":
            kw["network"] = _parse_network(ctx, val)
        elif key == "filesystem":
            fs = _parse_filesystem(ctx, val)
        elif key == "credentials":
            cred_files, cred_envs = _parse_credentials(ctx, val)
        elif key == "ignoreViolations":
            if not isinstance(val, dict):
                raise ctx.fail(key, "must be an object mapping command patterns to path lists")
            kw["ignore_violations"] = {str(k): _strs(ctx, x, f"{key}.{k}") for k, x in val.items()}
        elif key == "enableWeakerNestedSandbox":
            if _bool(ctx, val, key):
                raise _refuse(ctx, key, "the weaker nested mode drops the isolation inwall promises")
        elif key == "mandatoryDenySearchDepth":
            depth = _int(ctx, val, key, 1, 10)
        elif key == "bwrapPath":
            kw["bwrap_path"] = _abs_path(ctx, val, key)
        elif key == "git":
            g = _check_keys(ctx, val, "git", ["safeDirectories"])
            kw["git_safe_directories"] = _strs(ctx, g.get("safeDirectories", []), "git.safeDirectories")
        elif key == "inwall":
            kw.update(_parse_inwall(ctx, val))
        else:
            _NO_EFFECT[key](ctx, val, key)
    if cred_files:
        fs = fs.replace(deny_read_always=cred_files)
    if depth is not None:
        fs = fs.replace(mandatory_deny_search_depth=depth)
    kw["env_deny"] = cred_envs
    return SandboxSettings(filesystem=fs, **kw)
