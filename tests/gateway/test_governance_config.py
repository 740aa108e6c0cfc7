"""``[identity]``, ``[policy]``, ``[redact]``: strict, line-precise, checked by `inwall gateway validate`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from inwall.cli.main import main
from inwall.errors import ConfigError
from inwall.gateway.app import Gateway
from inwall.gateway.certs import create_certificates
from inwall.gateway.config import GatewayConfigError, load_config, parse_config
from tests.gateway.conftest import TUNNEL_ID, Signer

BASE = '[tls]\ncert_file = "c"\nkey_file = "k"\n[routes]\ncrm = "http://10.0.0.5:1"\n'  # 5 lines
POLICY = '@id("all") permit (principal, action, resource);\n'


def test_the_governance_tables_parse(tmp_path: Path) -> None:
    text = BASE + textwrap.dedent(
        f"""\
        [identity]
        public_key_file = "cp/identity_ed25519.pub.pem"
        tunnel_id = "{TUNNEL_ID}"
        required = true
        [policy]
        file = "perimeter.cedar"
        reload_interval_s = 0.5
        anonymous_listing = "filtered"
        [redact]
        builtins = ["emails", "secret_assignments"]
        custom = ["ACCT-[0-9]{{6}}", {{ name = "ticket", pattern = "tkt_[a-z]+", ignore_case = true }}]
        [stdio.wiki]
        command = ["python3"]
        redact = false
        """
    )
    config = parse_config(text, base_dir=tmp_path)
    assert config.identity is not None and config.identity.required
    assert config.identity.public_key_file == tmp_path / "cp" / "identity_ed25519.pub.pem"
    assert config.identity.audience == f"inwall-gateway:{TUNNEL_ID}" and config.identity.leeway_s == 5
    assert config.policy is not None and config.policy.file == tmp_path / "perimeter.cedar"
    assert config.policy.reload_interval_s == 0.5 and config.policy.anonymous_listing == "filtered"
    assert config.redactor is not None
    assert config.redactor.names == ("emails", "secret_assignments", "custom", "ticket")
    assert config.redacted_routes() == frozenset({"crm"})  # wiki opted out
    text_out, counts = config.redactor.redact_text("mail a@b.example about ACCT-123456 and TKT_abc")
    assert counts == {"emails": 1, "custom": 1, "ticket": 1} and "ACCT-123456" not in text_out


def test_without_the_tables_nothing_changes() -> None:
    config = parse_config(BASE)
    assert config.identity is None and config.policy is None and config.redactor is None
    assert config.redacted_routes() == frozenset()
    redact = parse_config(BASE + "[redact]\n").redactor  # an empty table: the default patterns
    assert redact is not None and redact.names == ("api_keys", "card_numbers", "emails")


@pytest.mark.parametrize(
    ("extra", "line", "key", "fragment"),
    [
        ('[identity]\ntunnel_id = "tnl_x"\n', 6, "identity", "missing required key 'public_key_file'"),
        ('[identity]\npublic_key_file = "k.pem"\ntunnel_id = "tunnel-1"\n', 8, "identity.tunnel_id", "tnl_"),
        (
            '[identity]\npublic_key_file = "k.pem"\ntunnel_id = "tnl_x"\nrequired = "yes"\n',
            9,
            "identity.required",
            "true or false",
        ),
        (
            '[identity]\npublic_key_file = "k.pem"\ntunnel_id = "tnl_x"\nkey_url = "https://x"\n',
            9,
            "",
            "unknown",
        ),
        ("[policy]\nreload_interval_s = 1\n", 6, "policy", "missing required key 'file'"),
        ('[policy]\nfile = "p.cedar"\nanonymous_listing = "hide"\n', 8, "policy.anonymous_listing", "one of"),
        ('[redact]\nbuiltins = ["emails", "phone_numbers"]\n', 7, "redact.builtins[1]", "unknown pattern"),
        ('[redact]\ncustom = ["ok", "(unclosed"]\n', 7, "redact.custom[1]", "invalid regular expression"),
        ('[redact]\ncustom = [\n  "a",\n  "x*",\n]\n', 9, "redact.custom[1]", "empty string"),
        ('[redact]\ncustom = [{ name = "Bad Name", pattern = "x" }]\n', 7, "redact.custom[0]", "name must"),
        ('[redact]\ncustom = [{ pattern = "x", flags = "i" }]\n', 7, "redact.custom[0].flags", "unknown key"),
        ('[redact]\nbuiltin = ["emails"]\n', 7, "redact.builtin", "did you mean 'builtins'"),
        ('[routes.db]\nupstream = "http://10.0.0.6:1"\nredact = true\n', 8, "routes.db.redact", "[redact]"),
        ('[stdio.w]\ncommand = ["x"]\nredact = "no"\n', 8, "stdio.w.redact", "true or false"),
    ],
)
def test_bad_governance_tables_name_the_line(extra: str, line: int, key: str, fragment: str) -> None:
    with pytest.raises(GatewayConfigError) as raised:
        parse_config(BASE + extra, source="gw.toml")
    problems = raised.value.problems
    assert any(p.line == line and key in p.key and fragment in p.message for p in problems), problems


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_validate_loads_the_pinned_key_and_the_policy(
    tmp_path: Path, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    create_certificates("tnl-x.example", tmp_path / "certs")
    (tmp_path / "perimeter.cedar").write_text(POLICY)
    path = write(
        tmp_path,
        f"""\
        [tls]
        cert_file = "certs/server.pem"
        key_file = "certs/server-key.pem"
        [routes.crm]
        upstream = "http://10.0.0.5:8080"
        [stdio.wiki]
        command = ["python3", "-c", "pass"]
        redact = false
        [identity]
        public_key_file = "{signer.public_key_file}"
        tunnel_id = "{TUNNEL_ID}"
        [policy]
        file = "perimeter.cedar"
        [redact]
        """,
    )
    assert main(["gateway", "validate", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"identity: audience inwall-gateway:{TUNNEL_ID}" in out and "optional" in out
    assert "policy: perimeter tool governance: Cedar policy" in out and "1 policies" in out
    assert "redact: api_keys, card_numbers, emails (not on wiki)" in out


def test_validate_reports_a_bad_key_and_a_bad_policy_on_their_lines(
    tmp_path: Path, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    create_certificates("tnl-x.example", tmp_path / "certs")
    (tmp_path / "perimeter.cedar").write_text(
        'permit (principal, action, resource)\nwhen { resource.colour == "red" };\n'
    )
    # A certificate is not the control plane's Ed25519 public key.
    path = write(
        tmp_path,
        f"""\
        [tls]
        cert_file = "certs/server.pem"
        key_file = "certs/server-key.pem"
        [routes.crm]
        upstream = "http://10.0.0.5:8080"
        [identity]
        public_key_file = "certs/server.pem"
        tunnel_id = "{TUNNEL_ID}"
        [policy]
        file = "perimeter.cedar"
        """,
    )
    assert main(["gateway", "validate", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:7: identity.public_key_file: " in err and "not a readable PEM key" in err
    assert f"{path}:10: policy.file: the policy does not parse or validate" in err
    assert "perimeter.cedar:2:" in err  # and the policy's own line

    (tmp_path / "perimeter.cedar").unlink()
    with pytest.raises(GatewayConfigError) as raised:
        load_config(path, check_files=True)
    assert any(p.line == 10 and "no such file" in p.message for p in raised.value.problems)


def test_a_missing_policy_file_stops_the_gateway_at_start(tmp_path: Path) -> None:
    config = parse_config(BASE + '[policy]\nfile = "gone.cedar"\n', base_dir=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        Gateway(config)
    config = parse_config(
        BASE + f'[identity]\npublic_key_file = "gone.pem"\ntunnel_id = "{TUNNEL_ID}"\n', base_dir=tmp_path
    )
    with pytest.raises(ConfigError, match="cannot read identity public key"):
        Gateway(config)
