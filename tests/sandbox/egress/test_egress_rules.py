"""NetworkRules: srt's pattern semantics, canonical names, deny-wins, and the resolved-address check."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inwall.errors import ConfigError, InvalidInput
from inwall.sandbox.egress.addresses import METADATA, IPAddress, classify
from inwall.sandbox.egress.rules import NetworkRules, canonical_host, parse_rule


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("EXAMPLE.com.", "example.com"),
        ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25\u3002com", "example.com"),  # full-width, UTS #46
        ("bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("r3---sn-abc.googlevideo.com", "r3---sn-abc.googlevideo.com"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
        ("[::FFFF:7F00:1]", "127.0.0.1"),
        ("[2001:DB8::1]", "2001:db8::1"),
    ],
)
def test_canonical_host(raw: str, canonical: str) -> None:
    assert canonical_host(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ".",
        "a..b",
        ".example.com",
        "exa mple.com",
        "example.com/",
        "user@example.com",
        "example.com%00",
        "1.2.3.256",
        "example.123",
        "09.1.1.1",
        "[127.0.0.1]",
        "[fe80::1%eth0]",
        "a" * 64 + ".com",
        ".".join(["a" * 60] * 5),
        "x" * 2000,
        "ex\u200bample.com\u0000",
    ],
)
def test_canonical_host_refuses(raw: str) -> None:
    with pytest.raises(InvalidInput):
        canonical_host(raw)


@given(st.text(max_size=300))
def test_canonical_host_only_raises_invalid_input(raw: str) -> None:
    try:
        out = canonical_host(raw)
    except InvalidInput:
        return
    assert canonical_host(out) == out  # canonical forms are fixed points


def rules(allowed: list[str], denied: list[str] | None = None) -> NetworkRules:
    return NetworkRules.from_settings(allowed, denied or [])


def test_exact_entry_matches_that_host_only_in_any_spelling() -> None:
    r = rules(["api.example.com"])
    for host in ("api.example.com", "API.Example.Com", "api.example.com."):
        assert r.decide(host, 443).allowed, host
    for host in ("example.com", "x.api.example.com", "api.example.com.evil.net", "api-example.com"):
        assert not r.decide(host, 443).allowed, host


def test_wildcard_matches_subdomains_not_the_apex() -> None:
    r = rules(["*.example.com"])
    assert r.decide("a.example.com", 80).allowed
    assert r.decide("a.b.example.com", 80).allowed
    assert not r.decide("example.com", 80).allowed
    assert not r.decide("badexample.com", 80).allowed
    assert not r.decide("a.example.com.evil.net", 80).allowed


def test_port_suffix_narrows_an_entry() -> None:
    r = rules(["api.example.com:443", "*.cdn.example.com:8443", "any.example.com"])
    assert r.decide("api.example.com", 443).allowed
    assert not r.decide("api.example.com", 80).allowed
    assert r.decide("x.cdn.example.com", 8443).allowed
    assert not r.decide("x.cdn.example.com", 443).allowed
    assert r.decide("any.example.com", 1).allowed
    assert r.decide("any.example.com", 65535).allowed


def test_deny_wins_over_allow() -> None:
    r = rules(["*.example.com"], ["secret.example.com", "*.internal.example.com", "*:22"])
    assert r.decide("www.example.com", 443).allowed
    decision = r.decide("secret.example.com", 443)
    assert not decision.allowed
    assert "secret.example.com" in decision.reason and "deniedDomains" in decision.reason
    assert not r.decide("a.internal.example.com", 443).allowed
    assert not r.decide("www.example.com", 22).allowed
    assert r.decide("www.example.com", 2222).allowed


def test_star_deny_denies_everything() -> None:
    r = rules(["example.com", "127.0.0.1"], ["*"])
    assert not r.decide("example.com", 80).allowed
    assert not r.decide("127.0.0.1", 80).allowed


def test_ip_literal_entries() -> None:
    r = rules(["127.0.0.1:8080", "[::1]", "10.1.2.3"])
    assert r.decide("127.0.0.1", 8080).allowed
    assert r.decide("127.1", 8080).allowed  # the same address in shorthand
    assert r.decide("::ffff:127.0.0.1", 8080).allowed  # and IPv4-mapped
    assert not r.decide("127.0.0.1", 8081).allowed
    assert not r.decide("127.0.0.2", 8080).allowed
    assert r.decide("::1", 5).allowed
    assert r.decide("10.1.2.3", 22).allowed


def test_wildcards_never_match_ip_addresses() -> None:
    r = rules(["*.example.com"])
    assert not r.decide("1.2.3.4", 80).allowed
    assert not r.decide("::1", 80).allowed


def test_ipv4_deny_entry_covers_ipv6_forms_that_carry_it() -> None:
    r = rules(["*.example.com", "[64:ff9b::a00:1]", "[2002:a00:1::]"], ["10.0.0.1"])
    assert not r.decide("::ffff:10.0.0.1", 80).allowed
    assert not r.decide("64:ff9b::a00:1", 80).allowed  # NAT64
    assert not r.decide("2002:a00:1::", 80).allowed  # 6to4


def test_decide_never_raises_on_garbage() -> None:
    r = rules(["example.com"])
    assert not r.decide("exa mple.com", 80).allowed
    assert not r.decide("example.com", 0).allowed
    assert not r.decide("example.com", 70000).allowed


def test_empty_allowlist_means_no_network() -> None:
    assert not rules([]).network_enabled
    assert not rules([], ["*"]).network_enabled
    assert rules(["example.com"]).network_enabled
    assert not rules([]).decide("example.com", 443).allowed


@pytest.mark.parametrize(
    ("entry", "deny"),
    [
        ("*", False),
        ("*:443", False),
        ("*.com", False),
        ("*.", False),
        ("**.example.com", False),
        ("a.*.example.com", False),
        ("example.*", False),
        ("intranet", False),  # srt: a domain needs a dot (or is 'localhost')
        ("http://example.com", False),
        ("example.com/path", False),
        ("example.com:0", False),
        ("example.com:65536", False),
        ("example.com:080", False),
        ("example.com:https", False),
        ("::1", False),  # IPv6 must be bracketed
        ("2001:db8::1:443", True),
        ("[::1", False),
        ("[::1]x", False),
        ("[127.0.0.1]", False),
        ("*.1.2.3", False),
        ("exa mple.com", False),
        ("", True),
        ("*.com", True),
    ],
)
def test_malformed_entries_are_config_errors(entry: str, deny: bool) -> None:
    with pytest.raises(ConfigError):
        parse_rule(entry, deny=deny)


def test_config_error_names_the_entry() -> None:
    with pytest.raises(ConfigError, match=r"network\.allowedDomains\[1\] '\*\.com'"):
        NetworkRules.from_settings(["example.com", "*.com"], [])
    with pytest.raises(ConfigError, match=r"network\.deniedDomains\[0\]"):
        NetworkRules.from_settings(["example.com"], ["bad entry"])


@pytest.mark.parametrize(
    "entry", ["localhost", "example.com", "*.example.com", "[::1]:443", "127.0.0.1:3000", "*.EXAMPLE.com."]
)
def test_valid_entries(entry: str) -> None:
    parse_rule(entry, deny=False)


def test_star_is_accepted_in_deny_list_only() -> None:
    assert parse_rule("*", deny=True).host == "*"
    assert parse_rule("*:22", deny=True).port == 22


# --- the resolved-address check -------------------------------------------------------------


def addrs(*texts: str) -> list[IPAddress]:
    return [ip_address(t) for t in texts]


def test_public_address_passes() -> None:
    r = rules(["*.example.com"])
    assert r.check_addresses("www.example.com", 443, addrs("93.184.216.34", "2606:2800:220:1::1")).allowed


@pytest.mark.parametrize(
    ("address", "label"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", METADATA),
        ("fd00:ec2::254", METADATA),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", METADATA),
        ("::127.0.0.1", "loopback (embedded in IPv6)"),  # IPv4-compatible
        ("::ffff:0:10.0.0.1", "private (embedded in IPv6)"),  # IPv4-translated
        ("64:ff9b::7f00:1", "loopback (embedded in IPv6)"),  # NAT64
        ("2002:c0a8:101::1", "private (embedded in IPv6)"),  # 6to4 of 192.168.1.1
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private (embedded in IPv6)"),  # Teredo client 10.0.0.1
    ],
)
def test_classify(address: str, label: str) -> None:
    assert classify(ip_address(address)) == label


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "2002:5db8:d822::1"])
def test_classify_global(address: str) -> None:
    assert classify(ip_address(address)) is None


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.0.0.5", "100.64.1.1", "169.254.169.254", "::1", "fd00::5"]
)
def test_wildcard_name_resolving_to_special_address_is_denied(address: str) -> None:
    r = rules(["*.example.com"])
    decision = r.check_addresses("rebind.example.com", 443, addrs(address))
    assert not decision.allowed
    assert decision.reason.startswith("rebind.example.com resolved to a")


def test_every_resolved_address_must_pass() -> None:
    r = rules(["*.example.com"])
    decision = r.check_addresses("mixed.example.com", 80, addrs("93.184.216.34", "127.0.0.1"))
    assert not decision.allowed
    assert "loopback" in decision.reason


def test_exact_name_may_resolve_to_special_addresses_except_metadata() -> None:
    r = rules(["allowed.test", "meta.example.com"])
    assert r.check_addresses("allowed.test", 8080, addrs("127.0.0.1")).allowed
    assert r.check_addresses("allowed.test", 8080, addrs("10.0.0.1")).allowed
    meta = r.check_addresses("meta.example.com", 80, addrs("169.254.169.254"))
    assert not meta.allowed
    assert METADATA in meta.reason


def test_trust_exact_hosts_can_be_switched_off() -> None:
    r = NetworkRules.from_settings(["allowed.test", "127.0.0.1:8080"], [], trust_exact_hosts=False)
    assert not r.check_addresses("allowed.test", 9999, addrs("127.0.0.1")).allowed
    assert r.check_addresses("allowed.test", 8080, addrs("127.0.0.1")).allowed  # the IP literal names it


def test_ip_literal_allow_entry_names_the_resolved_address() -> None:
    r = rules(["*.example.com", "127.0.0.1:3000", "169.254.169.254:80"])
    assert r.check_addresses("dev.example.com", 3000, addrs("127.0.0.1")).allowed
    assert not r.check_addresses("dev.example.com", 3001, addrs("127.0.0.1")).allowed
    assert r.check_addresses("md.example.com", 80, addrs("169.254.169.254")).allowed


def test_ip_literal_deny_entry_applies_to_resolved_addresses() -> None:
    r = rules(["*.example.com"], ["93.184.216.34"])
    decision = r.check_addresses("www.example.com", 443, addrs("93.184.216.34"))
    assert not decision.allowed
    assert "deniedDomains" in decision.reason


def test_denied_resolved_addresses_beat_explicit_names() -> None:
    r = NetworkRules.from_settings(["intranet.example.com"], [], denied_addresses=["10.0.0.0/8"])
    assert not r.check_addresses("intranet.example.com", 80, addrs("10.2.3.4")).allowed
    assert r.check_addresses("intranet.example.com", 80, addrs("192.168.0.1")).allowed


def test_host_own_addresses_are_special() -> None:
    r = rules(["*.example.com"])
    own = frozenset(addrs("203.0.114.7"))
    assert not r.check_addresses("x.example.com", 80, addrs("203.0.114.7"), host_addresses=own).allowed
    assert r.check_addresses("x.example.com", 80, addrs("203.0.114.8"), host_addresses=own).allowed


def test_check_addresses_requires_the_name_to_be_allowed_first() -> None:
    r = rules(["example.com"])
    assert not r.check_addresses("other.com", 80, addrs("93.184.216.34")).allowed
    assert not r.check_addresses("example.com", 80, []).allowed


def test_denied_reasons_are_model_facing() -> None:
    r = NetworkRules.from_settings(
        ["*.github.com"],
        ["ssh.github.com:22"],
        denied_reasons={"ssh.github.com:22": "use an https:// remote"},
    )
    assert r.decide("ssh.github.com", 22).reason == "use an https:// remote"
    with pytest.raises(ConfigError):
        NetworkRules.from_settings([], [], denied_reasons={"nope.com": "x"})
    with pytest.raises(ConfigError):
        NetworkRules.from_settings([], [], denied_addresses=["not-a-cidr"])
