"""Reading this host's own addresses from /proc (real files, here written by the test)."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

from inwall.sandbox.egress._hostaddrs import host_addresses

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.0.0/24 2 0 2
        |-- 10.0.0.0
           /24 link UNICAST
        |-- 10.0.0.5
           /32 host LOCAL
  +-- 127.0.0.0/8 2 0 2
     |-- 127.0.0.1
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 203.0.113.9
        /32 host LOCAL
"""

IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
20010db8000000000000000000000042 02 40 00 80     eth0
"""


def test_reads_ipv4_and_ipv6_local_addresses(tmp_path: Path) -> None:
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "if_inet6").write_text(IF_INET6)
    found = host_addresses(tmp_path)
    expected = {"10.0.0.5", "127.0.0.1", "203.0.113.9", "::1", "2001:db8::42"}
    assert found == frozenset(ip_address(a) for a in expected)


def test_missing_proc_files_give_an_empty_set(tmp_path: Path) -> None:
    assert host_addresses(tmp_path / "absent") == frozenset()


def test_this_host_has_loopback() -> None:
    assert ip_address("127.0.0.1") in host_addresses()
