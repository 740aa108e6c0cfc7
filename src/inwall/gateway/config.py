"""The gateway's TOML configuration: strict (unknown keys are errors) and line-precise.

Why strict: a misspelled ``deny_tool`` silently ignored would open the very
tool the owner meant to close. So every key is known, every value typed, and
every problem is reported at once with the line it is on, without touching the
network (``inwall gateway validate``).

    [gateway]     connections, audit_log, audit_key_file, drain_timeout_s, ping_interval_s,
                  dead_after_s, domain, max_request_bytes
    [tls]         cert_file, key_file                        (required)
    [routes]      NAME = "scheme://host:port"  or  [routes.NAME] upstream, allow_tools,
                  deny_tools, headers, ca_file, redact
    [stdio.NAME]  command, env, cwd, allow_tools, deny_tools, idle_timeout_s, max_sessions,
                  stop_grace_s, redact
    [upstream]    allowed_ips, connect_timeout_s
    [identity]    public_key_file, tunnel_id, required, leeway_s
    [policy]      file, reload_interval_s, anonymous_listing
    [redact]      builtins, custom                 (routes opt out with ``redact = false``)

Relative paths are resolved against the config file's directory.

``[identity]`` pins the control plane's public key from a file (never fetched
at run time: a key the gateway downloads is a key an attacker can swap), and
the tunnel id makes the audience the control plane signs for
(``inwall-gateway:<tunnel id>``). ``[policy]`` names a Cedar file; with
``check_files`` it must parse and validate here, and at run time it
hot-reloads. ``[redact]`` is checked entry by entry so a bad regular
expression is reported on its own line.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import shutil
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from inwall.errors import ConfigError
from inwall.gateway._toml_locate import Path as KeyPath
from inwall.gateway._toml_locate import locate_keys
from inwall.gateway.mcp_policy import ToolRule
from inwall.governance import IdentityKeys, PolicyError, PolicySet, Redactor
from inwall.governance.redact import BUILTINS, DEFAULT_BUILTINS

__all__ = [
    "DEFAULT_ALLOWED_IPS",
    "ConfigProblem",
    "GatewayConfig",
    "GatewayConfigError",
    "HttpRoute",
    "IPNetwork",
    "IdentityConfig",
    "PolicyConfig",
    "StdioRoute",
    "load_config",
    "parse_config",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOWED_IPS: tuple[str, ...] = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "::1/128",
    "fc00::/7",
)

_TUNNEL_ID = re.compile(r"^tnl_[A-Za-z0-9_-]{1,64}$")
ANONYMOUS_LISTING = ("unfiltered", "filtered")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_DOMAIN = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "accept-encoding",
        "mcp-session-id",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
    }
)


@dataclass(frozen=True)
class ConfigProblem:
    line: int | None
    key: str
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line is not None else source
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class GatewayConfigError(ConfigError):
    """One or more problems in a gateway config; ``problems`` has them all, each with its line."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.render(source) for p in problems))


@dataclass(frozen=True)
class HttpRoute:
    name: str
    scheme: str
    host: str
    port: int
    allow_tools: frozenset[str] | None = None
    deny_tools: frozenset[str] = frozenset()
    headers: tuple[tuple[str, str], ...] = ()
    ca_file: Path | None = None
    redact: bool = True  # when the gateway has a [redact] table; ``redact = false`` opts out

    @property
    def upstream(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class StdioRoute:
    name: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    allow_tools: frozenset[str] | None = None
    deny_tools: frozenset[str] = frozenset()
    idle_timeout_s: float = 1800.0
    max_sessions: int = 16
    stop_grace_s: float = 2.0
    redact: bool = True


@dataclass(frozen=True)
class IdentityConfig:
    """``[identity]``: verify the control plane's signed caller identity on every tools/call."""

    public_key_file: Path
    tunnel_id: str
    required: bool = False
    leeway_s: float = 5.0

    @property
    def audience(self) -> str:
        """What the control plane signs for when it calls through this tunnel."""
        return f"inwall-gateway:{self.tunnel_id}"


@dataclass(frozen=True)
class PolicyConfig:
    """``[policy]``: the perimeter's own Cedar policy, reloaded when the file changes."""

    file: Path
    reload_interval_s: float = 1.0
    anonymous_listing: str = "unfiltered"  # "unfiltered" | "filtered" (as the anonymous principal)


@dataclass(frozen=True)
class GatewayConfig:
    tls_cert_file: Path
    tls_key_file: Path
    routes: Mapping[str, HttpRoute] = field(default_factory=dict)
    stdio: Mapping[str, StdioRoute] = field(default_factory=dict)
    connections: int = 2
    audit_log: Path = Path("gateway-audit.jsonl")
    audit_key_file: Path | None = None
    drain_timeout_s: float = 30.0
    ping_interval_s: float = 5.0
    dead_after_s: float = 15.0
    domain: str | None = None
    max_request_bytes: int = 4 * 1024 * 1024
    allowed_ips: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in DEFAULT_ALLOWED_IPS)
    upstream_connect_timeout_s: float = 10.0
    identity: IdentityConfig | None = None
    policy: PolicyConfig | None = None
    redactor: Redactor | None = None
    source: Path | None = None

    def tool_rules(self) -> dict[str, ToolRule]:
        rules: dict[str, ToolRule] = {}
        everything: list[HttpRoute | StdioRoute] = [*self.routes.values(), *self.stdio.values()]
        for route in everything:
            rules[route.name] = ToolRule(allow=route.allow_tools, deny=route.deny_tools)
        return rules

    def route_names(self) -> list[str]:
        return sorted([*self.routes, *self.stdio])

    def redacted_routes(self) -> frozenset[str]:
        """Routes whose tool results are redacted: all but those with ``redact = false``."""
        if self.redactor is None:
            return frozenset()
        everything: list[HttpRoute | StdioRoute] = [*self.routes.values(), *self.stdio.values()]
        return frozenset(route.name for route in everything if route.redact)


class _Reader:
    """Walks the parsed document, collecting every problem with its line."""

    def __init__(self, lines: dict[KeyPath, int], base: Path) -> None:
        self.lines = lines
        self.base = base
        self.problems: list[ConfigProblem] = []

    def problem(self, path: KeyPath, message: str) -> None:
        line = None
        for i in range(len(path), -1, -1):
            line = self.lines.get(path[:i])
            if line is not None:
                break
        self.problems.append(ConfigProblem(line, _dotted(path), message))

    def table(self, doc: Mapping[str, Any], path: KeyPath, known: set[str]) -> Mapping[str, Any]:
        for key in doc:
            if key not in known:
                hint = _close_match(key, known)
                self.problem((*path, key), "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))
        return doc

    def sub_table(self, doc: Mapping[str, Any], key: str, path: KeyPath) -> Mapping[str, Any] | None:
        value = doc.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem((*path, key), f"must be a table, not {_type(value)}")
            return None
        return value

    def number(
        self,
        doc: Mapping[str, Any],
        key: str,
        path: KeyPath,
        default: float,
        *,
        minimum: float,
        maximum: float,
    ) -> float:
        value = doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem((*path, key), f"must be a number, not {_type(value)}")
            return default
        if not minimum <= value <= maximum:
            self.problem((*path, key), f"must be between {minimum:g} and {maximum:g}, not {value:g}")
            return default
        return float(value)

    def integer(
        self, doc: Mapping[str, Any], key: str, path: KeyPath, default: int, *, minimum: int, maximum: int
    ) -> int:
        value = doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem((*path, key), f"must be an integer, not {_type(value)}")
            return default
        if not minimum <= value <= maximum:
            self.problem((*path, key), f"must be between {minimum} and {maximum}, not {value}")
            return default
        return value

    def boolean(self, doc: Mapping[str, Any], key: str, path: KeyPath, default: bool) -> bool:
        value = doc.get(key, default)
        if not isinstance(value, bool):
            self.problem((*path, key), f"must be true or false, not {_type(value)}")
            return default
        return value

    def string(
        self, doc: Mapping[str, Any], key: str, path: KeyPath, *, required: bool = False
    ) -> str | None:
        if key not in doc:
            if required:
                self.problem(path, f"missing required key {key!r}")
            return None
        value = doc[key]
        if not isinstance(value, str) or not value:
            self.problem((*path, key), f"must be a non-empty string, not {_type(value)}")
            return None
        return value

    def path(self, doc: Mapping[str, Any], key: str, path: KeyPath, *, required: bool = False) -> Path | None:
        value = self.string(doc, key, path, required=required)
        if value is None:
            return None
        return (self.base / os.path.expanduser(value)).resolve()

    def strings(
        self,
        doc: Mapping[str, Any],
        key: str,
        path: KeyPath,
        *,
        check: Callable[[str], str | None] | None = None,
    ) -> list[str] | None:
        if key not in doc:
            return None
        value = doc[key]
        if not isinstance(value, list):
            self.problem((*path, key), f"must be an array of strings, not {_type(value)}")
            return None
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.problem((*path, key, i), f"must be a non-empty string, not {_type(item)}")
                continue
            error = check(item) if check else None
            if error:
                self.problem((*path, key, i), error)
                continue
            out.append(item)
        return out

    def string_map(
        self, doc: Mapping[str, Any], key: str, path: KeyPath, *, check_key: Callable[[str], str | None]
    ) -> dict[str, str]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            self.problem((*path, key), f"must be a table of strings, not {_type(value)}")
            return {}
        out: dict[str, str] = {}
        for name, item in value.items():
            error = check_key(name)
            if error:
                self.problem((*path, key, name), error)
            elif not isinstance(item, str):
                self.problem((*path, key, name), f"must be a string, not {_type(item)}")
            elif "\r" in item or "\n" in item or "\0" in item:
                self.problem((*path, key, name), "must not contain line breaks or NUL")
            else:
                out[name] = item
        return out


_TOP = {"gateway", "tls", "routes", "stdio", "upstream", "identity", "policy", "redact"}
_GATEWAY = {
    "connections",
    "audit_log",
    "audit_key_file",
    "drain_timeout_s",
    "ping_interval_s",
    "dead_after_s",
    "domain",
    "max_request_bytes",
}
_TLS = {"cert_file", "key_file"}
_ROUTE = {"upstream", "allow_tools", "deny_tools", "headers", "ca_file", "redact"}
_STDIO = {
    "command",
    "env",
    "cwd",
    "allow_tools",
    "deny_tools",
    "idle_timeout_s",
    "max_sessions",
    "stop_grace_s",
    "redact",
}
_UPSTREAM = {"allowed_ips", "connect_timeout_s"}
_IDENTITY = {"public_key_file", "tunnel_id", "required", "leeway_s"}
_POLICY = {"file", "reload_interval_s", "anonymous_listing"}
_REDACT = {"builtins", "custom"}
_CUSTOM = {"name", "pattern", "ignore_case"}


def parse_config(
    text: str, *, source: str = "<config>", base_dir: Path | None = None, check_files: bool = False
) -> GatewayConfig:
    """Parse and check a config document; raise GatewayConfigError listing every problem.

    ``check_files`` also checks what lives on this host (certificate and key
    load as a pair, stdio programs exist, directories exist) — still no network.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(match.group(1)) if match else None
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) if match else str(exc)
        raise GatewayConfigError(source, [ConfigProblem(line, "", f"not valid TOML: {message}")]) from None
    r = _Reader(locate_keys(text), base_dir or Path.cwd())
    r.table(doc, (), _TOP)

    gw = r.sub_table(doc, "gateway", ()) or {}
    r.table(gw, ("gateway",), _GATEWAY)
    g = ("gateway",)
    connections = r.integer(gw, "connections", g, 2, minimum=1, maximum=16)
    drain = r.number(gw, "drain_timeout_s", g, 30.0, minimum=0, maximum=3600)
    ping = r.number(gw, "ping_interval_s", g, 5.0, minimum=0.001, maximum=600)
    dead = r.number(gw, "dead_after_s", g, 15.0, minimum=0.001, maximum=3600)
    if "dead_after_s" in gw and "ping_interval_s" in gw and dead <= ping:
        r.problem((*g, "dead_after_s"), "must be larger than ping_interval_s")
    max_request = r.integer(gw, "max_request_bytes", g, 4 * 1024 * 1024, minimum=1024, maximum=1 << 30)
    audit_log = r.path(gw, "audit_log", g) or (r.base / "gateway-audit.jsonl").resolve()
    audit_key_file = r.path(gw, "audit_key_file", g)
    domain = r.string(gw, "domain", g)
    if domain is not None and not _DOMAIN.fullmatch(domain):
        r.problem((*g, "domain"), f"{domain!r} is not a lower-case DNS name")
        domain = None

    tls = r.sub_table(doc, "tls", ())
    cert_file = key_file = None
    if tls is None:
        r.problem(("tls",), "missing required table [tls] (cert_file, key_file for the inner TLS)")
    else:
        r.table(tls, ("tls",), _TLS)
        cert_file = r.path(tls, "cert_file", ("tls",), required=True)
        key_file = r.path(tls, "key_file", ("tls",), required=True)

    routes: dict[str, HttpRoute] = {}
    for name, value in (r.sub_table(doc, "routes", ()) or {}).items():
        route = _http_route(r, name, value)
        if route is not None:
            routes[name] = route

    stdio: dict[str, StdioRoute] = {}
    for name, value in (r.sub_table(doc, "stdio", ()) or {}).items():
        path: KeyPath = ("stdio", name)
        if not _LABEL.fullmatch(name):
            r.problem(path, f"route name {name!r} must be one lower-case DNS label (a-z, 0-9, -)")
            continue
        if name in routes:
            r.problem(path, f"route {name!r} is also defined under [routes]")
            continue
        if not isinstance(value, dict):
            r.problem(path, f"must be a table, not {_type(value)}")
            continue
        stdio_route = _stdio_route(r, name, value)
        if stdio_route is not None:
            stdio[name] = stdio_route

    up = r.sub_table(doc, "upstream", ()) or {}
    r.table(up, ("upstream",), _UPSTREAM)
    connect_timeout = r.number(up, "connect_timeout_s", ("upstream",), 10.0, minimum=0.001, maximum=600)
    networks: list[IPNetwork] = []
    cidrs = r.strings(up, "allowed_ips", ("upstream",), check=_cidr_problem)
    for cidr in DEFAULT_ALLOWED_IPS if cidrs is None else cidrs:
        networks.append(ipaddress.ip_network(cidr))

    identity = _identity(r, r.sub_table(doc, "identity", ()))
    policy = _policy(r, r.sub_table(doc, "policy", ()))
    redactor = _redactor(r, r.sub_table(doc, "redact", ()))
    if redactor is None:
        for kind, named in (("routes", routes), ("stdio", stdio)):
            for name, spec in (r.sub_table(doc, kind, ()) or {}).items():
                if name in named and isinstance(spec, dict) and spec.get("redact") is True:
                    r.problem((kind, name, "redact"), "redact = true needs a [redact] table (the patterns)")

    if not routes and not stdio and not r.problems:
        r.problem((), "no routes: add [routes] or [stdio.NAME] entries")
    if check_files and not r.problems and cert_file is not None and key_file is not None:
        _check_files(
            r, cert_file=cert_file, key_file=key_file, routes=routes, stdio=stdio, audit_log=audit_log
        )
        _check_governance_files(r, identity, policy)
    if r.problems or cert_file is None or key_file is None:
        raise GatewayConfigError(source, r.problems)
    return GatewayConfig(
        tls_cert_file=cert_file,
        tls_key_file=key_file,
        routes=routes,
        stdio=stdio,
        connections=connections,
        audit_log=audit_log,
        audit_key_file=audit_key_file,
        drain_timeout_s=drain,
        ping_interval_s=ping,
        dead_after_s=dead,
        domain=domain,
        max_request_bytes=max_request,
        allowed_ips=tuple(networks),
        upstream_connect_timeout_s=connect_timeout,
        identity=identity,
        policy=policy,
        redactor=redactor,
        source=None,
    )


def load_config(path: str | os.PathLike[str], *, check_files: bool = False) -> GatewayConfig:
    """Read a config file; relative paths in it are taken from its directory."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise GatewayConfigError(str(p), [ConfigProblem(None, "", f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise GatewayConfigError(str(p), [ConfigProblem(None, "", "not UTF-8 text")]) from exc
    config = parse_config(text, source=str(p), base_dir=p.resolve().parent, check_files=check_files)
    return _replace_source(config, p.resolve())


def _replace_source(config: GatewayConfig, source: Path) -> GatewayConfig:
    return replace(config, source=source)


def _check_files(
    r: _Reader,
    *,
    cert_file: Path,
    key_file: Path,
    routes: Mapping[str, HttpRoute],
    stdio: Mapping[str, StdioRoute],
    audit_log: Path,
) -> None:
    for key, file in (("cert_file", cert_file), ("key_file", key_file)):
        if not file.is_file():
            r.problem(("tls", key), f"{file}: no such file")
    if cert_file.is_file() and key_file.is_file():
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert_file), str(key_file))
        except (ssl.SSLError, OSError) as exc:
            r.problem(("tls", "cert_file"), f"the certificate and key do not load as a pair: {exc}")
    for name, route in routes.items():
        if route.ca_file is not None and not route.ca_file.is_file():
            r.problem(("routes", name, "ca_file"), f"{route.ca_file}: no such file")
    for name, stdio_route in stdio.items():
        program = stdio_route.command[0]
        search = stdio_route.env.get("PATH", os.environ.get("PATH", os.defpath))
        if shutil.which(program, path=search) is None and not (
            os.sep in program and os.access(program, os.X_OK)
        ):
            r.problem(("stdio", name, "command", 0), f"{program!r}: no such program on PATH")
        if stdio_route.cwd is not None and not stdio_route.cwd.is_dir():
            r.problem(("stdio", name, "cwd"), f"{stdio_route.cwd}: no such directory")
    if not audit_log.parent.is_dir():
        r.problem(("gateway", "audit_log"), f"{audit_log.parent}: no such directory")


def _check_governance_files(r: _Reader, identity: IdentityConfig | None, policy: PolicyConfig | None) -> None:
    if identity is not None:
        try:
            IdentityKeys.load_public(identity.public_key_file)
        except ConfigError as exc:
            r.problem(("identity", "public_key_file"), exc.message)
    if policy is not None:
        try:
            text = policy.file.read_text(encoding="utf-8")
        except FileNotFoundError:
            r.problem(("policy", "file"), f"{policy.file}: no such file")
            return
        except (OSError, UnicodeDecodeError) as exc:
            r.problem(("policy", "file"), f"{policy.file}: cannot be read: {exc}")
            return
        try:
            PolicySet.parse(text, source=str(policy.file))
        except PolicyError as exc:
            r.problem(
                ("policy", "file"),
                "the policy does not parse or validate:\n  " + exc.message.replace("\n", "\n  "),
            )


def _identity(r: _Reader, spec: Mapping[str, Any] | None) -> IdentityConfig | None:
    if spec is None:
        return None
    path: KeyPath = ("identity",)
    r.table(spec, path, _IDENTITY)
    key_file = r.path(spec, "public_key_file", path, required=True)
    tunnel_id = r.string(spec, "tunnel_id", path, required=True)
    if tunnel_id is not None and not _TUNNEL_ID.fullmatch(tunnel_id):
        r.problem((*path, "tunnel_id"), f"{tunnel_id!r} is not a tunnel id (tnl_...)")
        tunnel_id = None
    required = r.boolean(spec, "required", path, False)
    leeway = r.number(spec, "leeway_s", path, 5.0, minimum=0, maximum=300)
    if key_file is None or tunnel_id is None:
        return None
    return IdentityConfig(public_key_file=key_file, tunnel_id=tunnel_id, required=required, leeway_s=leeway)


def _policy(r: _Reader, spec: Mapping[str, Any] | None) -> PolicyConfig | None:
    if spec is None:
        return None
    path: KeyPath = ("policy",)
    r.table(spec, path, _POLICY)
    file = r.path(spec, "file", path, required=True)
    interval = r.number(spec, "reload_interval_s", path, 1.0, minimum=0.01, maximum=3600)
    listing = r.string(spec, "anonymous_listing", path) or "unfiltered"
    if listing not in ANONYMOUS_LISTING:
        r.problem(
            (*path, "anonymous_listing"), f"must be one of {', '.join(ANONYMOUS_LISTING)}, not {listing!r}"
        )
        listing = "unfiltered"
    if file is None:
        return None
    return PolicyConfig(file=file, reload_interval_s=interval, anonymous_listing=listing)


def _redactor(r: _Reader, spec: Mapping[str, Any] | None) -> Redactor | None:
    """Each entry is checked alone, so a problem names its own line."""
    if spec is None:
        return None
    path: KeyPath = ("redact",)
    r.table(spec, path, _REDACT)
    before = len(r.problems)
    names = r.strings(
        spec,
        "builtins",
        path,
        check=lambda n: None if n in BUILTINS else f"unknown pattern {n!r} (known: {', '.join(BUILTINS)})",
    )
    builtins = list(DEFAULT_BUILTINS) if names is None else names
    custom: list[tuple[str, str | re.Pattern[str]]] = []
    raw = spec.get("custom", [])
    if not isinstance(raw, list):
        r.problem(
            (*path, "custom"), f"must be an array of regexes or {{name, pattern}} tables, not {_type(raw)}"
        )
        raw = []
    for index, entry in enumerate(raw):
        where: KeyPath = (*path, "custom", index)
        item: tuple[str, str | re.Pattern[str]]
        if isinstance(entry, str):
            item = ("custom", entry)
        elif isinstance(entry, dict):
            r.table(entry, where, _CUSTOM)
            pattern = r.string(entry, "pattern", where, required=True)
            name = r.string(entry, "name", where) or "custom"
            ignore_case = r.boolean(entry, "ignore_case", where, False)
            if pattern is None:
                continue
            try:
                item = (name, re.compile(pattern, re.IGNORECASE if ignore_case else 0))
            except re.error as exc:
                r.problem((*where, "pattern"), f"invalid regular expression: {exc.msg}")
                continue
        else:
            r.problem(where, f"must be a regex string or a {{name, pattern}} table, not {_type(entry)}")
            continue
        try:
            Redactor((), [item])
        except ConfigError as exc:
            r.problem(where, exc.message.removeprefix("custom[0]: "))
            continue
        custom.append(item)
    if len(r.problems) > before:
        return None
    try:
        return Redactor(builtins, custom)
    except ConfigError as exc:
        r.problem(path, exc.message)
        return None


def _http_route(r: _Reader, name: str, value: Any) -> HttpRoute | None:
    path: KeyPath = ("routes", name)
    if not _LABEL.fullmatch(name):
        r.problem(path, f"route name {name!r} must be one lower-case DNS label (a-z, 0-9, -)")
        return None
    if isinstance(value, str):
        spec: Mapping[str, Any] = {"upstream": value}
        url_path: KeyPath = path
    elif isinstance(value, dict):
        spec = r.table(value, path, _ROUTE)
        url_path = (*path, "upstream")
        if "upstream" not in spec:
            r.problem(path, "missing required key 'upstream'")
            return None
    else:
        r.problem(path, f'must be "scheme://host:port" or a table, not {_type(value)}')
        return None
    upstream = spec["upstream"]
    if not isinstance(upstream, str):
        r.problem(url_path, f"must be a string, not {_type(upstream)}")
        return None
    parsed = _upstream_url(upstream)
    if isinstance(parsed, str):
        r.problem(url_path, parsed)
        return None
    scheme, host, port = parsed
    allow = r.strings(spec, "allow_tools", path)
    deny = r.strings(spec, "deny_tools", path) or []
    headers = r.string_map(spec, "headers", path, check_key=_header_problem)
    ca_file = r.path(spec, "ca_file", path)
    if ca_file is not None and scheme != "https":
        r.problem((*path, "ca_file"), "only applies to an https upstream")
    redact = r.boolean(spec, "redact", path, True)
    return HttpRoute(
        name=name,
        scheme=scheme,
        host=host,
        port=port,
        allow_tools=frozenset(allow) if allow is not None else None,
        deny_tools=frozenset(deny),
        headers=tuple(headers.items()),
        ca_file=ca_file,
        redact=redact,
    )


def _stdio_route(r: _Reader, name: str, spec: Mapping[str, Any]) -> StdioRoute | None:
    path: KeyPath = ("stdio", name)
    r.table(spec, path, _STDIO)
    if "command" not in spec:
        r.problem(path, "missing required key 'command' (an array: program and arguments)")
        return None
    command = r.strings(spec, "command", path)
    if command is not None and not command:
        r.problem((*path, "command"), "must name a program")
    env = r.string_map(
        spec, "env", path, check_key=lambda k: None if _ENV_NAME.fullmatch(k) else "not a valid name"
    )
    cwd = r.path(spec, "cwd", path)
    allow = r.strings(spec, "allow_tools", path)
    deny = r.strings(spec, "deny_tools", path) or []
    idle = r.number(spec, "idle_timeout_s", path, 1800.0, minimum=0.001, maximum=7 * 86400)
    max_sessions = r.integer(spec, "max_sessions", path, 16, minimum=1, maximum=1024)
    grace = r.number(spec, "stop_grace_s", path, 2.0, minimum=0.001, maximum=300)
    redact = r.boolean(spec, "redact", path, True)
    if not command:
        return None
    return StdioRoute(
        name=name,
        command=tuple(command),
        env=env,
        cwd=cwd,
        allow_tools=frozenset(allow) if allow is not None else None,
        deny_tools=frozenset(deny),
        idle_timeout_s=idle,
        max_sessions=max_sessions,
        stop_grace_s=grace,
        redact=redact,
    )


def _upstream_url(value: str) -> tuple[str, str, int] | str:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return f"{value!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"{value!r}: the scheme must be http or https"
    if not parts.hostname:
        return f"{value!r}: no host"
    if parts.username is not None or parts.password is not None:
        return f"{value!r}: credentials do not belong in the URL; use headers = {{ Authorization = ... }}"
    if parts.path not in ("", "/"):
        return f"{value!r}: a path is not allowed ({parts.path!r}); the request's path passes through"
    if parts.query or value.rstrip().endswith("?"):
        return f"{value!r}: a query is not allowed"
    if parts.fragment or "#" in value:
        return f"{value!r}: a fragment is not allowed"
    default_port = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, port if port is not None else default_port


def _cidr_problem(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        return f"{value!r} is not a CIDR network ({exc})"
    return None


def _header_problem(name: str) -> str | None:
    if not _HEADER_NAME.fullmatch(name):
        return "not a valid header name"
    if name.lower() in _FORBIDDEN_HEADERS:
        return "the gateway sets this header itself"
    return None


def _type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    if isinstance(value, dict):
        return "a table"
    return names.get(type(value), type(value).__name__)


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            out += ("." if out else "") + text
    return out


def _close_match(key: str, known: set[str]) -> str | None:
    matches = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return matches[0] if matches else None
