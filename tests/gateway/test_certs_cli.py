"""`inwall gateway certs` and the run command's refusals (no network needed)."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest

from inwall.cli.main import main
from inwall.gateway.certs import create_certificates
from inwall.tunnel import edge_client_context, gateway_server_context


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> str:
    """A real TLS handshake over memory BIOs, as the tunnel runs it."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    version = c.version()
    assert version is not None
    return version


def test_certs_command_makes_a_ca_the_edge_trusts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert main(["gateway", "certs", "--domain", "tnl-abc.example", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == str(out / "ca.pem") and "register" in printed.err
    assert (out / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert (out / "server-key.pem").stat().st_mode & 0o777 == 0o600
    server = gateway_server_context(str(out / "server.pem"), str(out / "server-key.pem"))
    edge = edge_client_context([(out / "ca.pem").read_text()])
    assert handshake(edge, server, "tnl-abc.example") == "TLSv1.3"
    assert (
        handshake(edge_client_context([(out / "ca.pem").read_text()]), server, "crm.tnl-abc.example")
        == "TLSv1.3"
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(edge_client_context([(out / "ca.pem").read_text()]), server, "tnl-other.example")


def test_rerun_keeps_the_registered_ca_unless_forced(tmp_path: Path) -> None:
    first = create_certificates("tnl.example", tmp_path)
    ca = first.ca_cert.read_bytes()
    again = create_certificates("tnl.example", tmp_path)
    assert not again.ca_created and again.ca_cert.read_bytes() == ca
    server = gateway_server_context(str(again.server_cert), str(again.server_key))
    assert handshake(edge_client_context([ca.decode()]), server, "tnl.example") == "TLSv1.3"
    forced = create_certificates("tnl.example", tmp_path, force=True)
    assert forced.ca_created and forced.ca_cert.read_bytes() != ca


def test_certs_needs_domain_and_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "certs", "--domain", "x.example"]) == 2
    assert main(["gateway", "certs", "--domain", "bad..name", "--out", "/tmp/unused-inwall"]) == 2


def test_run_refuses_without_token_or_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INWALL_TUNNEL_TOKEN", raising=False)
    assert main(["gateway", "--base-url", "http://127.0.0.1:1"]) == 2
    certs = create_certificates("tnl.example", tmp_path / "certs")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[tls]\ncert_file = "{certs.server_cert}"\nkey_file = "{certs.server_key}"\n[routes]\na = "http://10.0.0.1:1"\n'
    )
    assert main(["gateway", "--config", str(config), "--base-url", "http://127.0.0.1:1"]) == 2
    assert "INWALL_TUNNEL_TOKEN" in capsys.readouterr().err
    secret = "tok-in-argv-secret"
    assert (
        main(
            [
                "gateway",
                "--config",
                str(config),
                "--base-url",
                "http://inwall.example.com",
                "--tunnel-token",
                secret,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "clear" in err and secret not in err
