"""A throw-away test CA and certificates for TLS tests (EC P-256: generated in milliseconds).

The system trust store never trusts this CA; a test trusts it by pointing at `PKI.ca`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCALHOST = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    """Everything the tests need, signed by (or deliberately not by) one test CA."""

    ca: Path  # the CA certificate: what `ca_file` points to
    server: KeyPair  # CA-signed, for IP 127.0.0.1 and DNS wsmon.test
    self_signed: KeyPair  # its own issuer, for IP 127.0.0.1
    expired: KeyPair  # CA-signed, for 127.0.0.1, not_valid_after yesterday
    other_host: KeyPair  # CA-signed, valid only for DNS other.test
    client: KeyPair  # CA-signed client certificate for mutual TLS
    issue: Callable[..., KeyPair]  # issue(stem, sans, **validity): another CA-signed pair


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wsmon tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(directory: Path, stem: str, cert: x509.Certificate, key: Any) -> KeyPair:
    pair = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pair


def _leaf(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
    not_before: dt.datetime,
    not_after: dt.datetime,
    self_signed: bool = False,
) -> x509.Certificate:
    issuer_public = issuer_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        # A self-signed certificate is its own trust anchor, so it may sign (itself).
        .add_extension(x509.BasicConstraints(ca=self_signed, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=self_signed,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> PKI:
    """A test CA and the certificates of every TLS case, written into `directory`."""
    now = dt.datetime.now(dt.UTC)
    valid: dict[str, Any] = {
        "not_before": now - dt.timedelta(days=1),
        "not_after": now + dt.timedelta(days=1),
    }
    localhost_ip = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))

    ca_key = _key()
    ca_name = _name("wsmon test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca = _write(directory, "ca", ca_cert, ca_key).cert

    def signed(stem: str, sans: list[x509.GeneralName], **kw: Any) -> KeyPair:
        key = _key()
        cert = _leaf(stem, key, ca_name, ca_key, sans=sans, **{**valid, **kw})
        return _write(directory, stem, cert, key)

    self_key = _key()
    self_cert = _leaf(
        "self-signed",
        self_key,
        _name("self-signed"),
        self_key,
        sans=[localhost_ip],
        self_signed=True,
        **valid,
    )
    return PKI(
        ca=ca,
        issue=signed,
        server=signed("server", [localhost_ip, x509.DNSName("wsmon.test")]),
        self_signed=_write(directory, "self-signed", self_cert, self_key),
        expired=signed(
            "expired",
            [localhost_ip],
            not_before=now - dt.timedelta(days=10),
            not_after=now - dt.timedelta(days=1),
        ),
        other_host=signed("other-host", [x509.DNSName("other.test")]),
        client=signed("client", [], usage=ExtendedKeyUsageOID.CLIENT_AUTH),
    )
