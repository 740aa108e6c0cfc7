"""Which destination addresses are special enough to need an explicit rule.

A name on the allowlist says nothing about where its DNS points: whoever runs
that zone (or any label under a wildcard) can aim it at the host's loopback,
the LAN or the cloud metadata service. So every address the proxy is about to
dial is classified here first; an address that falls in a special class is
refused unless a rule names it (see ``NetworkRules.check_addresses``).

IPv6 forms that carry an IPv4 address (mapped, compatible, translated, NAT64,
6to4, Teredo) are judged by the IPv4 address inside them too, so
``::ffff:127.0.0.1`` or ``2002:7f00:1::`` cannot smuggle loopback past a v4 table.

Pure: no I/O, no sockets.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

__all__ = [
    "METADATA",
    "IPAddress",
    "classify",
    "embedded_ipv4",
    "normalize",
    "parse_ip",
]

IPAddress = IPv4Address | IPv6Address

METADATA: Final = "cloud metadata"

# Order matters: the first matching network names the class, so the narrow
# metadata entries come before the link-local and private ranges holding them.
_V4: Final[tuple[tuple[IPv4Network, str], ...]] = tuple(
    (IPv4Network(net), label)
    for net, label in (
        ("169.254.169.254/32", METADATA),  # AWS, GCP, Azure IMDS
        ("169.254.170.2/32", METADATA),  # AWS ECS task metadata
        ("100.100.100.200/32", METADATA),  # Alibaba Cloud
        ("168.63.129.16/32", METADATA),  # Azure wire server
        ("192.0.0.192/32", METADATA),  # Oracle Cloud
        ("0.0.0.0/8", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "reserved"),
        ("198.18.0.0/15", "reserved"),
        ("198.51.100.0/24", "reserved"),
        ("203.0.113.0/24", "reserved"),
    )
)

_V6: Final[tuple[tuple[IPv6Network, str], ...]] = tuple(
    (IPv6Network(net), label)
    for net, label in (
        ("fd00:ec2::/32", METADATA),  # AWS IMDS over IPv6 (fd00:ec2::254) and its neighbours
        ("fd20:ce::254/128", METADATA),  # GCP
        ("fd00:c1::a9fe:a9fe/128", METADATA),
        ("fd00:42::42/128", METADATA),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "private"),  # deprecated site-local, still routed on some LANs
        ("fc00::/7", "private"),  # unique local addresses
        ("ff00::/8", "multicast"),
        ("100::/64", "reserved"),  # discard-only
        ("2001:db8::/32", "reserved"),  # documentation
    )
)

_COMPAT: Final = IPv6Network("::/96")
_TRANSLATED: Final = IPv6Network("::ffff:0:0:0/96")
_NAT64: Final = IPv6Network("64:ff9b::/96")


def parse_ip(text: str) -> IPAddress | None:
    """An IP literal as an address object, or None when *text* is not one (zone ids refused)."""
    if "%" in text:
        return None
    try:
        return ip_address(text)
    except ValueError:
        return None


def normalize(addr: IPAddress) -> IPAddress:
    """Spell an IPv4-mapped IPv6 address as the IPv4 address it dials, so rules compare equal."""
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def embedded_ipv4(addr: IPv6Address) -> list[IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, in every form a router or stack may honour."""
    found: list[IPv4Address] = []
    if addr.ipv4_mapped is not None:
        found.append(addr.ipv4_mapped)
    low32 = IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in _COMPAT and int(addr) > 1:  # not :: or ::1, which have classes of their own
        found.append(low32)
    if addr in _TRANSLATED or addr in _NAT64:
        found.append(low32)
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        server, client = addr.teredo
        found.extend((server, client))
    return found


def _lookup(addr: IPAddress) -> str | None:
    if isinstance(addr, IPv4Address):
        for net4, label in _V4:
            if addr in net4:
                return label
        return None
    for net6, label in _V6:
        if addr in net6:
            return label
    return None


def classify(addr: IPAddress) -> str | None:
    """The special class of *addr* (``"loopback"``, ``"private"``, ``METADATA``...), or None if global.

    An IPv6 address that embeds a special IPv4 address gets that class, marked
    as embedded, because some path (a dual-stack socket, NAT64, a 6to4 or Teredo
    relay) may deliver it there.
    """
    addr = normalize(addr)
    label = _lookup(addr)
    if label is not None or isinstance(addr, IPv4Address):
        return label
    for inner in embedded_ipv4(addr):
        inner_label = _lookup(inner)
        if inner_label is not None:
            return f"{inner_label} (embedded in IPv6)" if inner_label != METADATA else METADATA
    return None
