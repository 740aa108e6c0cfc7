"""Strict config parsing with line-precise errors, and `inwall gateway validate`."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from inwall.cli.main import main
from inwall.gateway.certs import create_certificates
from inwall.gateway.config import DEFAULT_ALLOWED_IPS, GatewayConfigError, load_config, parse_config

GOOD = """\
# a gateway for the demo
[gateway]
connections = 3
audit_log = "logs/audit.jsonl"
drain_timeout_s = 12.5
domain = "tnl-abc.inwall.example"

[tls]
cert_file = "certs/server.pem"
key_file = "certs/server-key.pem"

[routes]
crm = "http://10.0.0.5:8080"
tickets = "https://tickets.internal/"

[routes.db]
upstream = "http://[fd00::5]:9000"
allow_tools = ["query", "describe"]
deny_tools = ["drop"]
headers = { Authorization = "Bearer upstream-secret" }

[stdio.wiki]
command = ["python3", "-m", "wiki_server"]
env = { WIKI_DB = "/srv/wiki.db" }
deny_tools = ["delete_page"]
idle_timeout_s = 60

[upstream]
allowed_ips = ["10.0.0.0/8", "fd00::/8"]
"""


def test_a_good_config_parses_with_every_form(tmp_path: Path) -> None:
    config = parse_config(GOOD, base_dir=tmp_path)
    assert config.connections == 3 and config.drain_timeout_s == 12.5
    assert config.audit_log == tmp_path / "logs" / "audit.jsonl"
    assert config.tls_cert_file == tmp_path / "certs" / "server.pem"
    assert config.domain == "tnl-abc.inwall.example"
    assert config.routes["crm"].upstream == "http://10.0.0.5:8080"
    assert config.routes["tickets"].upstream == "https://tickets.internal:443"
    db = config.routes["db"]
    assert db.upstream == "http://[fd00::5]:9000"
    assert db.allow_tools == frozenset({"query", "describe"}) and db.deny_tools == frozenset({"drop"})
    assert db.headers == (("Authorization", "Bearer upstream-secret"),)
    wiki = config.stdio["wiki"]
    assert wiki.command == ("python3", "-m", "wiki_server") and wiki.env == {"WIKI_DB": "/srv/wiki.db"}
    assert wiki.idle_timeout_s == 60
    assert config.allowed_ips == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert config.route_names() == ["crm", "db", "tickets", "wiki"]
    rules = config.tool_rules()
    assert rules["crm"].allow is None and rules["wiki"].deny == frozenset({"delete_page"})


def test_defaults(tmp_path: Path) -> None:
    config = parse_config('[tls]\ncert_file = "c"\nkey_file = "k"\n[routes]\na = "http://127.0.0.1:1"\n')
    assert config.connections == 2 and config.drain_timeout_s == 30 and config.ping_interval_s == 5
    assert config.dead_after_s == 15
    assert [str(n) for n in config.allowed_ips] == list(DEFAULT_ALLOWED_IPS)


BASE = '[tls]\ncert_file = "c"\nkey_file = "k"\n'


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        (BASE + '[routes]\ncrm = "http://10.0.0.5:8080/api"\n', 5, "routes.crm", "a path is not allowed"),
        (BASE + '[routes]\ncrm = "http://10.0.0.5:8080?x=1"\n', 5, "routes.crm", "a query is not allowed"),
        (BASE + '[routes]\ncrm = "http://10.0.0.5:8080#f"\n', 5, "routes.crm", "a fragment is not allowed"),
        (BASE + '[routes]\ncrm = "ftp://10.0.0.5"\n', 5, "routes.crm", "scheme must be http or https"),
        (BASE + '[routes]\ncrm = "http://u:p@10.0.0.5"\n', 5, "routes.crm", "credentials"),
        (BASE + '[routes]\ncrm = "http://10.0.0.5:99999"\n', 5, "routes.crm", "not a valid URL"),
        (BASE + '[routes]\nCRM = "http://10.0.0.5:80"\n', 5, "routes.CRM", "one lower-case DNS label"),
        (
            BASE + '[routes.crm]\nupstream = "http://a:1"\ndeny_tool = ["x"]\n',
            6,
            "routes.crm.deny_tool",
            "deny_tools",
        ),
        (BASE + '[routes.crm]\nupstream = "http://a:1/p"\n', 5, "routes.crm.upstream", "a path"),
        (BASE + '[routes.crm]\nallow_tools = ["x"]\n', 4, "routes.crm", "missing required key 'upstream'"),
        (
            BASE + '[routes.crm]\nupstream = "http://a:1"\nallow_tools = ["x",\n  3]\n',
            7,
            "allow_tools[1]",
            "string",
        ),
        (
            BASE + '[routes.crm]\nupstream = "http://a:1"\nheaders = { Host = "x" }\n',
            6,
            "headers.Host",
            "itself",
        ),
        (BASE + '[routes]\na = "http://a:1"\n[stdio.a]\ncommand = ["x"]\n', 6, "stdio.a", "also defined"),
        (
            BASE + '[routes]\na = "http://a:1"\n[stdio.w]\nenv = {}\n',
            6,
            "stdio.w",
            "missing required key 'command'",
        ),
        (BASE + "[stdio.w]\ncommand = []\n", 5, "stdio.w.command", "must name a program"),
        (
            BASE + '[stdio.w]\ncommand = ["x"]\nenv = { "A-B" = "1" }\n',
            6,
            "stdio.w.env.A-B",
            "not a valid name",
        ),
        (BASE + '[stdio.w]\ncommand = ["x"]\nmax_sessions = 0\n', 6, "stdio.w.max_sessions", "between 1 and"),
        (
            BASE + '[stdio.w]\ncommand = ["x"]\nidle_timeout_s = "10"\n',
            6,
            "idle_timeout_s",
            "must be a number",
        ),
        (
            BASE + '[routes]\na = "http://a:1"\n[upstream]\nallowed_ips = ["10.0.0.0/8",\n "10.0.0.1/8"]\n',
            8,
            "upstream.allowed_ips[1]",
            "not a CIDR network",
        ),
        (
            BASE + '[routes]\na = "http://a:1"\n[gateway]\nconnections = true\n',
            7,
            "gateway.connections",
            "integer",
        ),
        (
            BASE + '[routes]\na = "http://a:1"\n[gateway]\nconections = 2\n',
            7,
            "gateway.conections",
            "connections",
        ),
        (
            BASE + '[routes]\na = "http://a:1"\n[gateway]\nping_interval_s = 20\ndead_after_s = 10\n',
            8,
            "gateway.dead_after_s",
            "larger than ping_interval_s",
        ),
        (
            BASE + '[routes]\na = "http://a:1"\n[gateway]\ndomain = "Not A Domain"\n',
            7,
            "gateway.domain",
            "DNS name",
        ),
        (BASE + '[routes]\na = "http://a:1"\n[extra]\nx = 1\n', 6, "extra", "unknown key"),
        (BASE + "[routes]\n", None, "", "no routes"),
        ('[routes]\na = "http://a:1"\n', None, "tls", "missing required table [tls]"),
        ('[tls]\ncert_file = "c"\n[routes]\na = "http://a:1"\n', 1, "tls", "missing required key 'key_file'"),
        (BASE + "[routes]\na = \n", 5, "", "not valid TOML"),
    ],
)
def test_bad_configs_name_the_line(text: str, line: int | None, key: str, fragment: str) -> None:
    with pytest.raises(GatewayConfigError) as raised:
        parse_config(text, source="gw.toml")
    problems = raised.value.problems
    assert any(p.line == line and key in p.key and fragment in p.message for p in problems), problems
    rendered = str(raised.value)
    assert rendered.startswith(f"gw.toml:{line}:" if line is not None else "gw.toml:")


def test_every_problem_is_reported_at_once() -> None:
    text = BASE + '[routes]\na = "http://a:1/x"\nb = "http://b:1?q"\n[gateway]\nconnections = 99\n'
    with pytest.raises(GatewayConfigError) as raised:
        parse_config(text)
    assert sorted(p.line for p in raised.value.problems if p.line) == [5, 6, 8]


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_validate_command_passes_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create_certificates("tnl-x.example", tmp_path / "certs")
    path = write_config(
        tmp_path,
        """\
        [tls]
        cert_file = "certs/server.pem"
        key_file = "certs/server-key.pem"
        [routes.crm]
        upstream = "http://10.0.0.5:8080"
        headers = { Authorization = "Bearer do-not-print-me" }
        deny_tools = ["secret_dump"]
        [stdio.wiki]
        command = ["python3", "-c", "pass"]
        """,
    )
    assert main(["gateway", "validate", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "crm: http://10.0.0.5:8080" in out and "wiki: stdio python3" in out
    assert "do-not-print-me" not in out


def test_validate_command_reports_lines_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(
        tmp_path,
        """\
        [tls]
        cert_file = "missing.pem"
        key_file = "missing-key.pem"
        [routes]
        crm = "http://10.0.0.5:8080/mcp"
        [stdio.wiki]
        command = ["no-such-program-inwall"]
        """,
    )
    assert main(["gateway", "validate", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:5: routes.crm: " in err and "a path is not allowed" in err


def test_validate_checks_local_files_with_their_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        tmp_path,
        """\
        [tls]
        cert_file = "missing.pem"
        key_file = "missing-key.pem"
        [stdio.wiki]
        command = ["no-such-program-inwall"]
        """,
    )
    assert main(["gateway", "validate", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: tls.cert_file: " in err and f"{path}:3: tls.key_file: " in err
    assert f"{path}:5: stdio.wiki.command[0]: 'no-such-program-inwall': no such program" in err
    with pytest.raises(GatewayConfigError):
        load_config(path, check_files=True)
    assert load_config(path).stdio["wiki"].command == ("no-such-program-inwall",)  # parsing alone passes


def test_mismatched_certificate_and_key_are_caught(tmp_path: Path) -> None:
    one = create_certificates("a.example", tmp_path / "one")
    two = create_certificates("b.example", tmp_path / "two")
    path = write_config(
        tmp_path,
        f"""\
        [tls]
        cert_file = "{one.server_cert}"
        key_file = "{two.server_key}"
        [routes]
        a = "http://10.0.0.1:1"
        """,
    )
    with pytest.raises(GatewayConfigError) as raised:
        load_config(path, check_files=True)
    assert raised.value.problems[0].line == 2 and "do not load as a pair" in raised.value.problems[0].message


def test_missing_file_and_cli_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "validate", "--config", str(tmp_path / "nope.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main(["gateway", "validate"]) == 2
