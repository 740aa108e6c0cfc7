"""Inner-TLS certificates: a private CA the tunnel owner registers, and the gateway's server certificate.

The edge trusts only CAs registered on the tunnel (``POST /v1/tunnels/{id}/certificates``)
and checks the gateway's certificate against the tunnel's ``domain``, so the
server certificate names the domain and ``*.domain``. Re-running with an
existing CA keeps it (nothing to re-register) and issues a fresh server
certificate; ``force`` makes a new CA too.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from inwall.errors import ConfigError

__all__ = ["CertificateFiles", "create_certificates"]

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"


@dataclass(frozen=True)
class CertificateFiles:
    ca_cert: Path  # register this one on the tunnel
    ca_key: Path  # keep this offline after issuing
    server_cert: Path  # [tls] cert_file
    server_key: Path  # [tls] key_file
    ca_created: bool


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_certificates(
    domain: str, out_dir: str | os.PathLike[str], *, days: int = 365, force: bool = False
) -> CertificateFiles:
    domain = domain.strip().lower().rstrip(".")
    if not domain or any(not label for label in domain.split(".")):
        raise ConfigError(f"{domain!r} is not a DNS name")
    if days < 1:
        raise ConfigError("days must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = CertificateFiles(
        out / CA_CERT, out / CA_KEY, out / SERVER_CERT, out / SERVER_KEY, ca_created=False
    )
    now = datetime.datetime.now(datetime.UTC)

    if files.ca_cert.exists() and files.ca_key.exists() and not force:
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{files.ca_key} is not an EC private key")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"inwall gateway CA for {domain}"[:64])])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=max(days, 3650)))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(files.ca_key, _key_pem(ca_key), 0o600)
        _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        files = CertificateFiles(
            files.ca_cert, files.ca_key, files.server_cert, files.server_key, ca_created=True
        )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(domain), x509.DNSName(f"*.{domain}")]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(files.server_key, _key_pem(server_key), 0o600)
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files
