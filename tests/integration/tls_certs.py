"""Certificates for the TLS tests, made with `cryptography` once per session: a CA, server
certificates with SANs (two for localhost, to swap; one per SNI name; a wildcard), a client
certificate and a revoked one with the CA's CRL, an expired and a not-yet-valid certificate, an
encrypted key with its password file, a key that matches nothing.

`certs` (a session fixture, conftest.py) is a Certs: paths as attributes, and helpers to make more.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str | None = None,
          country: str | None = None) -> x509.Name:
    parts = []
    if country:
        parts.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    if organization:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    parts.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(parts)


def _pem_key(key, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


@dataclass
class Issued:
    cert: Path
    key: Path
    certificate: x509.Certificate

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


class Certs:
    """The CA and what it issued, as files under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.ca_key = _key()
        self.ca_name = _name("Duck Test CA", "Duck Test")
        self.ca_cert = (x509.CertificateBuilder()
                        .subject_name(self.ca_name).issuer_name(self.ca_name)
                        .public_key(self.ca_key.public_key())
                        .serial_number(x509.random_serial_number())
                        .not_valid_before(NOW - DAY).not_valid_after(NOW + 3650 * DAY)
                        .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                       critical=True)
                        .sign(self.ca_key, hashes.SHA256()))
        self.ca = root / "ca.pem"
        self.ca.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        self.server = self.issue("server", ["localhost", "127.0.0.1"])
        self.server2 = self.issue("server2", ["localhost", "127.0.0.1"])
        self.shop = self.issue("shop", ["shop.example.com"])
        self.wild = self.issue("wild", ["*.example.org"])
        self.soon = self.issue("soon", ["localhost", "127.0.0.1"], days=5)
        self.expired = self.issue("expired", ["localhost"], start=NOW - 30 * DAY,
                                  end=NOW - DAY)
        self.future = self.issue("future", ["localhost"], start=NOW + 10 * DAY,
                                 end=NOW + 40 * DAY)
        self.client = self.issue("client", [], client=True, subject=_name("alice", "Duck", "FR"))
        self.revoked = self.issue("revoked", [], client=True, subject=_name("mallory"))
        self.password = b"s3cret pass"
        self.encrypted = self.issue("encrypted", ["localhost", "127.0.0.1"],
                                    password=self.password)
        self.password_file = root / "password.txt"
        self.password_file.write_bytes(self.password + b"\n")
        self.other_key = root / "other.key"
        self.other_key.write_bytes(_pem_key(_key()))
        self.garbage = root / "garbage.pem"
        self.garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                                 b"-----END CERTIFICATE-----\n")
        self.crl = root / "crl.pem"
        revoked = (x509.RevokedCertificateBuilder()
                   .serial_number(self.revoked.certificate.serial_number)
                   .revocation_date(NOW - DAY).build())
        crl = (x509.CertificateRevocationListBuilder()
               .issuer_name(self.ca_name).last_update(NOW - DAY).next_update(NOW + 30 * DAY)
               .add_revoked_certificate(revoked).sign(self.ca_key, hashes.SHA256()))
        self.crl.write_bytes(crl.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, sans: list[str], days: int = 90, start=None, end=None,
              client: bool = False, subject: x509.Name | None = None,
              password: bytes | None = None) -> Issued:
        key = _key()
        builder = (x509.CertificateBuilder()
                   .subject_name(subject or _name(sans[0] if sans else name))
                   .issuer_name(self.ca_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(start or NOW - DAY)
                   .not_valid_after(end or NOW + days * DAY))
        if sans:
            entries: list[x509.GeneralName] = []
            for san in sans:
                try:
                    entries.append(x509.IPAddress(ipaddress.ip_address(san)))
                except ValueError:
                    entries.append(x509.DNSName(san))
            builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client \
            else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        certificate = builder.sign(self.ca_key, hashes.SHA256())
        cert_path = self.root / f"{name}.pem"
        key_path = self.root / f"{name}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key, password))
        return Issued(cert_path, key_path, certificate)

    def client_context(self, client: Issued | None = None, *,
                       tls_max: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """A client context that trusts the CA (and presents `client`)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if client is not None:
            context.load_cert_chain(str(client.cert), str(client.key))
        if tls_max is not None:
            context.maximum_version = tls_max
        return context

