"""This host's own interface addresses, read from /proc (no extra dependency, no subprocess).

A service bound to 0.0.0.0 answers on the host's LAN or public address just as
on loopback, so those addresses are special for the egress check too.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from inwall.sandbox.egress.addresses import IPAddress

__all__ = ["host_addresses"]


def _ipv4_local(text: str) -> set[IPAddress]:
    found: set[IPAddress] = set()
    last: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("|--", "+--")):
            last = stripped[3:].split()[0] if stripped[3:].split() else None
        elif "/32 host LOCAL" in stripped and last is not None:
            try:
                found.add(IPv4Address(last))
            except ValueError:
                continue
    return found


def _ipv6_local(text: str) -> set[IPAddress]:
    found: set[IPAddress] = set()
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            try:
                found.add(IPv6Address(int(fields[0], 16)))
            except ValueError:
                continue
    return found


def host_addresses(proc: Path = Path("/proc/net")) -> frozenset[IPAddress]:
    """Every address assigned to an interface of this host (empty if /proc is not readable)."""
    found: set[IPAddress] = set()
    for name, parse in (("fib_trie", _ipv4_local), ("if_inet6", _ipv6_local)):
        try:
            found |= parse((proc / name).read_text())
        except OSError:
            continue
    return frozenset(found)
