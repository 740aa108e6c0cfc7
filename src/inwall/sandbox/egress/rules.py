"""The egress allowlist: srt's ``allowedDomains`` / ``deniedDomains`` semantics, decided purely.

Users bring their srt settings files, so an entry must mean here what it means
to srt: ``example.com`` is that host only, ``*.example.com`` is any subdomain
but not the apex, an optional ``:port`` narrows an entry to one destination
port, IPv6 literals are bracketed, a bare ``*`` (or ``*:22``) is accepted only
in the deny list, and a deny entry beats any allow entry.

Names are compared in one canonical spelling so that case, a trailing dot,
Unicode (IDNA/UTS #46), IPv4 shorthands (``127.1``, ``0x7f.0.0.1``,
``2130706433``) and IPv4-mapped IPv6 cannot make one destination look like two.

Beyond srt, the resolved-address check (``check_addresses``) refuses special
addresses (loopback, private, CGNAT, link-local, metadata, ...) unless a rule
names the destination explicitly: an IP-literal allow entry for that address,
or an exact (non-wildcard) allow entry for the name. Cloud metadata addresses
need the IP literal: no name is trusted to point there.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Final

import idna

from inwall.errors import ConfigError, InvalidInput
from inwall.sandbox.egress.addresses import (
    METADATA,
    IPAddress,
    classify,
    embedded_ipv4,
    normalize,
    parse_ip,
)

__all__ = [
    "Decision",
    "NetworkRules",
    "Rule",
    "canonical_host",
    "format_authority",
    "parse_rule",
]

_MAX_HOST_INPUT: Final = 1024
_MAX_HOST: Final = 253
_MAX_LABEL: Final = 63
_LABEL: Final = re.compile(r"[a-z0-9_-]{1,63}")
_PORT: Final = re.compile(r"[1-9][0-9]{0,4}")
_NUMERIC_LABEL: Final = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)")


_DIGITS: Final = {
    8: frozenset("01234567"),
    10: frozenset("0123456789"),
    16: frozenset("0123456789abcdefABCDEF"),
}


def _ipv4_number(part: str) -> int | None:
    if part[:2] in ("0x", "0X"):
        digits, base = part[2:], 16
        if digits == "":
            return 0
    elif len(part) > 1 and part[0] == "0":
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not digits or not set(digits) <= _DIGITS[base]:
        return None
    return int(digits, base)


def _parse_ipv4_loose(host: str) -> IPv4Address | None:
    """The WHATWG URL IPv4 parser: what browsers and inet_aton make of ``127.1`` or ``0x7f000001``."""
    parts = host.split(".")
    if len(parts) > 4:
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    if any(v > 255 for v in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    result = values[-1]
    for i, v in enumerate(values[:-1]):
        result += v * 256 ** (3 - i)
    return IPv4Address(result)


def canonical_host(text: str) -> str:
    """The one spelling of a destination host, or InvalidInput.

    IP literals become their canonical form (IPv6 unbracketed and compressed,
    IPv4-mapped IPv6 as IPv4); names become lower-case ASCII (A-labels) without
    a trailing dot. A name whose last label is numeric must be an IPv4 address,
    as in a browser, so ``1.2.3.256`` is refused instead of being looked up.
    """
    if not text or len(text) > _MAX_HOST_INPUT:
        raise InvalidInput("host name is empty or too long")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        ip = parse_ip(text)
        if not isinstance(ip, IPv6Address):
            raise InvalidInput("bracketed host is not an IPv6 address")
        return str(normalize(ip))
    if ":" in text:
        ip = parse_ip(text)
        if not isinstance(ip, IPv6Address):
            raise InvalidInput("host name contains ':'")
        return str(normalize(ip))
    if not text.isascii():
        try:
            text = idna.uts46_remap(text, std3_rules=False, transitional=False)
        except ValueError as exc:
            raise InvalidInput("host name is not a valid internationalised name") from exc
    if text.endswith("."):
        text = text[:-1]
    labels = text.split(".")
    if not text or any(label == "" for label in labels):
        raise InvalidInput("host name has an empty label")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        v4 = _parse_ipv4_loose(text)
        if v4 is None:
            raise InvalidInput("host name ends in a number but is not an IPv4 address")
        return str(v4)
    out: list[str] = []
    for raw in labels:
        label = raw
        if not label.isascii():
            try:
                label = idna.alabel(label).decode("ascii")
            except ValueError as exc:
                raise InvalidInput("host name is not a valid internationalised name") from exc
        label = label.lower()
        if not _LABEL.fullmatch(label):
            raise InvalidInput("host name has a character or label length that DNS does not allow")
        out.append(label)
    host = ".".join(out)
    if len(host) > _MAX_HOST:
        raise InvalidInput("host name is longer than 253 characters")
    return host


def format_authority(host: str, port: int) -> str:
    """``host:port`` as written in a URL or Host header (IPv6 bracketed)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One allow or deny entry, parsed. ``host`` is canonical, ``*`` or ``*.`` + canonical base."""

    entry: str
    host: str
    port: int | None
    ip: IPAddress | None = None

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*")

    def matches_host(self, host: str, ip: IPAddress | None, port: int) -> bool:
        """Whether this entry covers the canonical *host* (whose IP form is *ip*, if any) on *port*."""
        if self.port is not None and self.port != port:
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return ip is None and host.endswith(self.host[1:])
        if self.ip is not None and ip is not None:
            return self.ip == ip
        return self.host == host

    def names_address(self, addr: IPAddress, port: int, *, embedded: bool) -> bool:
        """Whether this is an IP-literal entry for *addr* (or, with *embedded*, for an IPv4 inside it)."""
        if self.ip is None or (self.port is not None and self.port != port):
            return False
        if self.ip == addr:
            return True
        return embedded and isinstance(addr, IPv6Address) and self.ip in embedded_ipv4(addr)


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one destination. ``reason`` is written for the model to read."""

    allowed: bool
    reason: str
    rule: str | None = None
    explicit: bool = False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        close = entry.find("]")
        if close == -1:
            raise ConfigError("an IPv6 literal is missing its closing ']'")
        host, rest = entry[: close + 1], entry[close + 1 :]
        if rest == "":
            return host, None
        if not rest.startswith(":"):
            raise ConfigError("unexpected text after ']'")
        port_text = rest[1:]
    else:
        first = entry.find(":")
        if first == -1:
            return entry, None
        if entry.find(":", first + 1) != -1:
            raise ConfigError("IPv6 literals must be bracketed, e.g. [::1] or [::1]:443")
        host, port_text = entry[:first], entry[first + 1 :]
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise ConfigError("the port must be a number from 1 to 65535 without leading zeros")
    return host, int(port_text)


def parse_rule(entry: str, *, deny: bool) -> Rule:
    """Parse one ``allowedDomains`` / ``deniedDomains`` entry as srt does, raising ConfigError."""
    if not isinstance(entry, str) or not entry:
        raise ConfigError("an entry must be a non-empty string")
    if "/" in entry or any(c.isspace() for c in entry):
        raise ConfigError("an entry is a host pattern, not a URL or path")
    host_text, port = _split_port(entry)
    if host_text == "*":
        if not deny:
            raise ConfigError("'*' is only accepted in deniedDomains; list the hosts to allow")
        return Rule(entry, "*", port)
    if host_text.startswith("*."):
        base = host_text[2:]
        if "*" in base:
            raise ConfigError("'*' may only appear as the first label ('*.example.com')")
        try:
            canonical = canonical_host(base)
        except InvalidInput as exc:
            raise ConfigError(f"{exc}") from exc
        if parse_ip(canonical) is not None:
            raise ConfigError("a wildcard cannot cover IP addresses; list the address itself")
        if "." not in canonical:
            raise ConfigError("'*.' needs at least two labels after it ('*.example.com', not '*.com')")
        return Rule(entry, "*." + canonical, port)
    if "*" in host_text:
        raise ConfigError("'*' may only appear as the first label ('*.example.com')")
    try:
        canonical = canonical_host(host_text)
    except InvalidInput as exc:
        raise ConfigError(f"{exc}") from exc
    ip = parse_ip(canonical)
    if ip is None and canonical != "localhost" and "." not in canonical:
        raise ConfigError("a domain needs at least one dot (or use 'localhost')")
    return Rule(entry, canonical, port, ip)


def _parse_rules(entries: Iterable[str], *, deny: bool, key: str) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for i, entry in enumerate(entries):
        try:
            rules.append(parse_rule(entry, deny=deny))
        except ConfigError as exc:
            raise ConfigError(f"network.{key}[{i}] {entry!r}: {exc}") from exc
    return tuple(rules)


def _host_ip(host: str) -> IPAddress | None:
    ip = parse_ip(host)
    return None if ip is None else normalize(ip)


class NetworkRules:
    """The allow and deny lists of one sandbox. Immutable, pure, cheap to query per connection."""

    def __init__(
        self,
        allowed: Sequence[Rule] = (),
        denied: Sequence[Rule] = (),
        *,
        denied_reasons: Mapping[str, str] | None = None,
        denied_addresses: Sequence[IPv4Network | IPv6Network] = (),
        trust_exact_hosts: bool = True,
    ) -> None:
        self.allowed: tuple[Rule, ...] = tuple(allowed)
        self.denied: tuple[Rule, ...] = tuple(denied)
        self._denied_reasons = dict(denied_reasons or {})
        self._denied_addresses = tuple(denied_addresses)
        self._trust_exact_hosts = trust_exact_hosts

    @classmethod
    def from_settings(
        cls,
        allowed: Sequence[str],
        denied: Sequence[str] = (),
        *,
        denied_reasons: Mapping[str, str] | None = None,
        denied_addresses: Sequence[str] = (),
        trust_exact_hosts: bool = True,
    ) -> NetworkRules:
        """Build from srt's ``network`` keys; any malformed entry is a ConfigError naming it.

        *denied_reasons* is srt's ``deniedDomainReasons`` (entry -> model-facing
        reason), *denied_addresses* its ``deniedResolvedAddresses`` (IPs and CIDRs
        that no allowed name may resolve to, whatever rule names it).
        """
        nets: list[IPv4Network | IPv6Network] = []
        for i, text in enumerate(denied_addresses):
            try:
                nets.append(ip_network(text, strict=False))
            except ValueError as exc:
                raise ConfigError(
                    f"network.deniedResolvedAddresses[{i}] {text!r}: not an IP address or CIDR range"
                ) from exc
        reasons = dict(denied_reasons or {})
        for entry in reasons:
            if entry not in denied:
                raise ConfigError(f"network.deniedDomainReasons[{entry!r}]: not an entry of deniedDomains")
        return cls(
            _parse_rules(allowed, deny=False, key="allowedDomains"),
            _parse_rules(denied, deny=True, key="deniedDomains"),
            denied_reasons=reasons,
            denied_addresses=nets,
            trust_exact_hosts=trust_exact_hosts,
        )

    @property
    def network_enabled(self) -> bool:
        """False when nothing is allowed: then no proxy runs and the sandbox has no network at all."""
        return bool(self.allowed)

    def decide(self, host: str, port: int) -> Decision:
        """Allow or deny *host*:*port* by name alone (never raises; a malformed host is denied)."""
        try:
            host = canonical_host(host)
        except InvalidInput as exc:
            return Decision(False, f"not a valid host name ({exc})")
        if not 1 <= port <= 65535:
            return Decision(False, f"port {port} is not a valid destination port")
        ip = _host_ip(host)
        dest = format_authority(host, port)
        for rule in self.denied:
            if rule.matches_host(host, ip, port) or (
                ip is not None and rule.names_address(ip, port, embedded=True)
            ):
                custom = self._denied_reasons.get(rule.entry)
                reason = custom or f"{dest} matches network.deniedDomains entry {rule.entry!r}"
                return Decision(False, reason, rule.entry)
        for rule in self.allowed:
            if rule.matches_host(host, ip, port):
                return Decision(
                    True,
                    f"allowed by network.allowedDomains entry {rule.entry!r}",
                    rule.entry,
                    not rule.wildcard,
                )
        return Decision(False, f"{dest} is not in network.allowedDomains")

    def check_addresses(
        self,
        host: str,
        port: int,
        addresses: Sequence[IPAddress],
        *,
        host_addresses: Collection[IPAddress] = frozenset(),
    ) -> Decision:
        """Judge the addresses *host* resolved to; every one must pass, or the destination is denied.

        *host_addresses* are the proxy host's own interface addresses: a service
        bound to 0.0.0.0 answers on them exactly as on loopback.
        """
        decision = self.decide(host, port)
        if not decision.allowed:
            return decision
        if not addresses:
            return Decision(False, f"{host} did not resolve to any address")
        name = canonical_host(host)
        for raw in addresses:
            addr = normalize(raw)
            denied = self._address_denied(name, addr, port, decision, host_addresses)
            if denied is not None:
                return denied
        return decision

    def _address_denied(
        self,
        name: str,
        addr: IPAddress,
        port: int,
        decision: Decision,
        host_addresses: Collection[IPAddress],
    ) -> Decision | None:
        via = "" if _host_ip(name) is not None else f"{name} resolved to "
        for rule in self.denied:
            if rule.names_address(addr, port, embedded=True):
                custom = self._denied_reasons.get(rule.entry)
                return Decision(
                    False, custom or f"{via}an address listed in network.deniedDomains", rule.entry
                )
        if any(addr in net for net in self._denied_addresses):
            return Decision(False, f"{via}an address listed in network.deniedResolvedAddresses")
        label = classify(addr)
        if label is None and addr in host_addresses:
            label = "this host's own"
        if label is None:
            return None
        if any(rule.names_address(addr, port, embedded=False) for rule in self.allowed):
            return None
        if label != METADATA and decision.explicit and self._trust_exact_hosts:
            return None
        article = "an" if label[0] in "aeiou" else "a"
        return Decision(False, f"{via}{article} {label} address, which needs an explicit rule")
