"""Settings: srt keys accepted or refused with a reason, unknown keys fail closed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inwall.errors import ConfigError
from inwall.sandbox.policy import DEFAULT_LIMITS, SandboxSettings

SRT_README_EXAMPLE = {
    "network": {
        "allowedDomains": ["github.com", "*.github.com", "api.github.com", "npmjs.org", "*.npmjs.org"],
        "deniedDomains": ["malicious.com"],
        "allowUnixSockets": ["/var/run/docker.sock"],
        "allowLocalBinding": False,
    },
    "filesystem": {
        "denyRead": ["~/.ssh"],
        "allowRead": [],
        "allowWrite": [".", "src/", "test/", "/tmp"],
        "denyWrite": [".env", "config/production.json"],
    },
    "ignoreViolations": {"*": ["/usr/bin", "/System"], "git push": ["/usr/bin/nc"]},
    "enableWeakerNestedSandbox": False,
    "enableWeakerNetworkIsolation": False,
    "allowAppleEvents": False,
}


def test_default_is_strict() -> None:
    s = SandboxSettings.default()
    assert not s.network.enabled
    assert s.filesystem.allow_write == (".",)
    assert s.limits == DEFAULT_LIMITS


def test_srt_readme_example_loads(tmp_path: Path) -> None:
    f = tmp_path / "srt.json"
    f.write_text(json.dumps(SRT_README_EXAMPLE))
    s = SandboxSettings.load(f)
    assert s.network.allowed_domains[1] == "*.github.com"
    assert s.network.denied_domains == ("malicious.com",)
    assert s.filesystem.deny_write == (".env", "config/production.json")
    assert s.ignore_violations["git push"] == ("/usr/bin/nc",)
    assert s.source == str(f)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"netwrok": {}}, "'netwrok' (did you mean network?)"),
        ({"network": {"allowedDomain": []}}, "'network.allowedDomain'"),
        ({"filesystem": {"denyRaed": []}}, "'filesystem.denyRaed'"),
        ({"inwall": {"limits": {"memroy_mb": 5}}}, "'inwall.limits.memroy_mb'"),
        ({"windows": {"srtWin": {"path": "x", "bogus": 1}}}, "'windows.srtWin.bogus'"),
        (
            {"credentials": {"files": [{"path": "/x", "mode": "deny", "what": 1}]}},
            "'credentials.files[0].what'",
        ),
    ],
)
def test_unknown_keys_are_errors_naming_the_path(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match="unknown key") as info:
        SandboxSettings.from_dict(data)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"network": {"allowAllUnixSockets": True}}, "network.allowAllUnixSockets"),
        ({"network": {"httpProxyPort": 8080}}, "network.httpProxyPort"),
        ({"network": {"mitmProxy": {"socketPath": "/x", "domains": ["a.com"]}}}, "network.mitmProxy"),
        ({"network": {"parentProxy": {"http": "http://p:1"}}}, "network.parentProxy"),
        ({"network": {"deniedResolvedAddresses": ["8.8.8.8"]}}, "deniedResolvedAddresses[0]"),
        ({"network": {"deniedDomainReasons": {"a.com": "no"}}}, "deniedDomainReasons"),
        ({"filesystem": {"disabled": True}}, "filesystem.disabled"),
        ({"enableWeakerNestedSandbox": True}, "enableWeakerNestedSandbox"),
        ({"credentials": {"envVars": [{"name": "GH_TOKEN", "mode": "mask"}]}}, "credentials.envVars[0].mode"),
    ],
)
def test_weakening_or_unimplemented_keys_refused(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match="not supported by inwall") as info:
        SandboxSettings.from_dict(data)
    assert needle in str(info.value)


def test_keys_without_effect_on_linux_are_accepted() -> None:
    s = SandboxSettings.from_dict(
        {
            "allowPty": True,
            "allowAppleEvents": False,
            "network": {
                "allowMachLookup": ["com.apple.x"],
                "strictAllowlist": True,
                "allowLocalBinding": True,
            },
            "ripgrep": {"command": "rg", "args": ["--hidden"]},
            "seccomp": {"applyPath": "/opt/apply", "argv0": "x"},
            "socatPath": "/usr/bin/socat",
            "windows": {"sandboxUser": "srt-sandbox", "proxyPortRange": [1, 2]},
        }
    )
    assert s.network.allow_local_binding


def test_private_resolved_denies_are_accepted() -> None:
    SandboxSettings.from_dict(
        {"network": {"deniedResolvedAddresses": ["10.0.0.0/8", "fc00::/7", "100.64.0.0/10"]}}
    )


def test_credentials_deny_becomes_read_and_env_deny() -> None:
    s = SandboxSettings.from_dict(
        {
            "credentials": {
                "files": [{"path": "~/.netrc", "mode": "deny"}],
                "envVars": [{"name": "GITHUB_PAT", "mode": "deny"}],
            }
        }
    )
    assert s.filesystem.deny_read_always == ("~/.netrc",)
    assert s.env_deny == ("GITHUB_PAT",)


def test_inwall_keys() -> None:
    s = SandboxSettings.from_dict(
        {
            "inwall": {
                "limits": {"timeout_s": 1.5, "pids": 64, "memory_mb": None},
                "env_allow": ["FOO", "LC_*"],
                "run_as_uid": 4000,
                "tmp_mb": 16,
            },
            "mandatoryDenySearchDepth": 5,
            "git": {"safeDirectories": ["/w"]},
            "bwrapPath": "/usr/bin/bwrap",
        }
    )
    assert s.limits.timeout_s == 1.5 and s.limits.pids == 64 and s.limits.memory_mb is None
    assert s.limits.open_files == DEFAULT_LIMITS.open_files
    assert s.run_as_uid == 4000 and s.run_as_gid is None
    assert s.filesystem.mandatory_deny_search_depth == 5
    assert s.git_safe_directories == ("/w",)


@pytest.mark.parametrize(
    "data",
    [
        {"inwall": {"limits": {"pids": 0}}},
        {"inwall": {"limits": {"timeout_s": "1"}}},
        {"mandatoryDenySearchDepth": 11},
        {"network": {"allowedDomains": ["http://x.com/"]}},
        {"network": {"allowedDomains": ["*"]}},
        {"filesystem": {"denyRead": [""]}},
        {"filesystem": {"denyWrite": ["/data/*/"]}},
        {"network": []},
        {"bwrapPath": "bwrap"},
    ],
)
def test_bad_values_rejected(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SandboxSettings.from_dict(data)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        SandboxSettings.load(tmp_path / "missing.json")
    empty = tmp_path / "empty.json"
    empty.write_text("  ")
    with pytest.raises(ConfigError, match="empty"):
        SandboxSettings.load(empty)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="invalid JSON"):
        SandboxSettings.load(bad)


def test_settings_are_immutable_values() -> None:
    a = SandboxSettings.default()
    with pytest.raises(AttributeError):
        a.tmp_mb = 3  # type: ignore[misc]
    b = a.with_limits(pids=7)
    assert b.limits.pids == 7 and a.limits.pids == DEFAULT_LIMITS.pids
    assert a == SandboxSettings.default() and a != b
    with pytest.raises(TypeError):
        a.replace(nope=1)
