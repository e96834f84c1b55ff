"""The certificates, read and checked by the master before anything listens or forks.

Everything a TLS listener needs is built here once, in the master: one SSLContext per
certificate (the --certfile pair, each --cert), each with the same settings (client
certificates, CRL, versions, ciphers, ALPN). Workers inherit them with the fork, so every
worker issues and accepts the same session tickets: a client resumes whichever worker takes its
next connection. The contexts are rebuilt only when a file's content or a TLS option changed
(a HUP that changes nothing keeps them, and the ticket keys with them).

Every problem is a TlsError whose text names the option, the file and what is wrong, e.g.
"--certfile /etc/ssl/a.pem: the certificate expired on 2026-01-01 00:00 UTC"; the master shows
it and exits 1 at start, and keeps the running certificates at a reload.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Config

# systemd's LoadCredential= puts credentials in this directory (systemd.exec(5)).
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
# Fewer days than this before a certificate expires: a warning at start, at every reload and
# once a day.
EXPIRY_WARNING_DAYS = 14
ALPN = ["http/1.1"]
ALPN_WITH_HTTP2 = ["h2", "http/1.1"]  # --http2: h2 preferred

_PEM_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_CERT_END = b"-----END CERTIFICATE-----"
_VERIFY_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                 "required": ssl.CERT_REQUIRED}
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(Exception):
    """A certificate, key or TLS option that cannot be used; str() is the one line to show."""


class _NoPassword(Exception):
    pass


@dataclass(frozen=True)
class CertificateInfo:
    """What the log says about one certificate (its leaf)."""

    option: str  # "--certfile" or "--cert NAME"
    path: str
    subject: str
    names: tuple[str, ...]  # subjectAltName DNS names and IP addresses
    serial: str
    not_before: float  # seconds since the epoch
    not_after: float

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / 86400

    def describe(self, now: float) -> str:
        return (f"{self.option} {self.path}: subject {self.subject}, SANs "
                f"{', '.join(self.names) or 'none'}, serial {self.serial}, expires "
                f"{_date(self.not_after)} ({self.days_left(now):.0f} days)")


@dataclass
class Certificates:
    """The contexts a worker serves with: `default` for names no --cert matches (and clients
    that send no name), `by_name` for exact names and `wildcards` for *.DOMAIN (keyed by
    DOMAIN). `server_pem` gives each context's leaf certificate in PEM, for the ASGI scope."""

    default: ssl.SSLContext
    by_name: dict[str, ssl.SSLContext]
    wildcards: dict[str, ssl.SSLContext]
    infos: list[CertificateInfo]
    server_pem: dict[int, str]  # id(context) -> PEM of its leaf
    fingerprint: str  # of the TLS options and every file's bytes: unchanged -> keep these
    files: list[str]  # every file read, for --tls-reload watch
    reject_unknown: bool = False
    warnings: list[str] = field(default_factory=list)

    def choose(self, name: str | None) -> ssl.SSLContext | None:
        """The context for an SNI name, None for the default; raises LookupError for a name
        that no certificate covers when unknown names are rejected."""
        if name is None:
            return None
        name = name.lower().rstrip(".")
        context = self.by_name.get(name)
        if context is None:
            context = self.wildcards.get(name.partition(".")[2])
        if context is None and self.reject_unknown:
            raise LookupError(name)
        return context

    def expiring(self, now: float) -> list[CertificateInfo]:
        return [info for info in self.infos if info.days_left(now) < EXPIRY_WARNING_DAYS]


def tls_configured(config: Config) -> bool:
    return bool(config.certfile or config.cert)


def load(config: Config, previous: Certificates | None = None,
         now: float | None = None) -> Certificates | None:
    """The certificates `config` names, checked; `previous` itself when nothing changed (same
    options, same bytes in every file), so that its session ticket keys live on. None when TLS
    is not configured. Raises TlsError."""
    if not tls_configured(config):
        return None
    now = time.time() if now is None else now
    pairs = _pairs(config)
    files: dict[str, bytes] = {}
    for option, certfile, keyfile in pairs:
        _read(files, option, certfile)
        if keyfile:
            _read(files, option.replace("--certfile", "--keyfile"), keyfile)
    password = _password(config, files)
    for option, path in (("--ca-certs", config.ca_certs), ("--crl-file", config.crl_file)):
        if path:
            _read(files, option, path)
    fingerprint = _fingerprint(config, files, password)
    if previous is not None and previous.fingerprint == fingerprint:
        return previous
    warnings = []
    if config.ca_certs and config.client_cert == "none":
        warnings.append("--ca-certs is given but --client-cert is none: clients are not asked "
                        "for a certificate (use --client-cert optional or required)")
    contexts = []
    infos = []
    server_pem: dict[int, str] = {}
    for option, certfile, keyfile in pairs:
        info = certificate_info(option, certfile, files[certfile])
        if now >= info.not_after:
            raise TlsError(f"{option} {certfile}: the certificate expired on "
                           f"{_date(info.not_after)}")
        if now < info.not_before:
            raise TlsError(f"{option} {certfile}: the certificate is not valid before "
                           f"{_date(info.not_before)}")
        context = _context(config, option, certfile, keyfile, password)
        infos.append(info)
        contexts.append(context)
        server_pem[id(context)] = _leaf_pem(files[certfile])
    default = contexts[0]
    by_name: dict[str, ssl.SSLContext] = {}
    wildcards: dict[str, ssl.SSLContext] = {}
    if config.certfile and config.tls_reject_unknown_sni:
        # With unknown names refused, the default certificate answers only its own names.
        for name in infos[0].names:
            _add_name(name.lower(), contexts[0], by_name, wildcards)
    for (option, _, _), context in zip(pairs, contexts, strict=True):
        if option.startswith("--cert "):
            _add_name(option[len("--cert "):], context, by_name, wildcards)
    certificates = Certificates(default, by_name, wildcards, infos, server_pem, fingerprint,
                                sorted(files), config.tls_reject_unknown_sni, warnings)
    if by_name or wildcards or config.tls_reject_unknown_sni:
        default.sni_callback = _sni_callback(certificates)
    return certificates


def _add_name(name: str, context: ssl.SSLContext, by_name: dict[str, ssl.SSLContext],
              wildcards: dict[str, ssl.SSLContext]) -> None:
    if name.startswith("*."):
        wildcards.setdefault(name[2:], context)
    else:
        by_name.setdefault(name, context)


def _sni_callback(certificates: Certificates) -> Callable[..., int | None]:
    def choose(ssl_object: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        try:
            context = certificates.choose(name)
        except LookupError:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        except Exception:  # never a traceback from inside OpenSSL's callback
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        if context is not None and context is not certificates.default:
            ssl_object.context = context
        return None

    return choose


def _pairs(config: Config) -> list[tuple[str, str, str]]:
    """(option, certfile, keyfile) for the default certificate first, then each --cert."""
    pairs = []
    if config.certfile:
        pairs.append(("--certfile", config.certfile, config.keyfile))
    for spec in config.cert:  # "NAME=CERTFILE[,KEYFILE]", checked by config.cert_spec
        name, _, files = spec.partition("=")
        certfile, _, keyfile = files.partition(",")
        pairs.append((f"--cert {name}", certfile, keyfile))
    return pairs


def _read(files: dict[str, bytes], option: str, path: str) -> None:
    if path in files:
        return
    try:
        with open(path, "rb") as file:
            files[path] = file.read()
    except OSError as exc:
        raise TlsError(f"{option} {path}: cannot read it: {exc.strerror or exc}") from None


def password_path(name: str, environ: dict[str, str] | None = None) -> str:
    """--keyfile-password-file: a bare name that is not a file here is looked up in systemd's
    $CREDENTIALS_DIRECTORY (LoadCredential=NAME:/path/to/secret)."""
    environ = dict(os.environ) if environ is None else environ
    directory = environ.get(CREDENTIALS_ENV, "")
    if directory and "/" not in name and not os.path.exists(name):
        return os.path.join(directory, name)
    return name


def _password(config: Config, files: dict[str, bytes]) -> bytes | None:
    if not config.keyfile_password_file:
        return None
    path = password_path(config.keyfile_password_file)
    _read(files, "--keyfile-password-file", path)
    password = files.pop(path)
    return password[:-1] if password.endswith(b"\n") else password


def _fingerprint(config: Config, files: dict[str, bytes], password: bytes | None) -> str:
    digest = hashlib.sha256()
    for name in ("certfile", "keyfile", "cert", "ca_certs", "client_cert", "crl_file",
                 "tls_min_version", "ciphers", "tls_reject_unknown_sni", "http2"):
        digest.update(repr(getattr(config, name)).encode() + b"\0")
    digest.update(repr(password).encode() + b"\0")
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return digest.hexdigest()


def _context(config: Config, option: str, certfile: str, keyfile: str,
             password: bytes | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.minimum_version = _VERSIONS[config.tls_min_version]
    context.set_alpn_protocols(ALPN_WITH_HTTP2 if config.http2 else ALPN)
    if config.ciphers:
        try:
            context.set_ciphers(config.ciphers)
        except ssl.SSLError:
            raise TlsError(f"--ciphers {config.ciphers}: no cipher OpenSSL knows is "
                           "selected by this list") from None

    def give_password() -> bytes:
        if password is None:
            raise _NoPassword
        return password

    key_option = option.replace("--certfile", "--keyfile") if keyfile else option
    key_path = keyfile or certfile
    try:
        context.load_cert_chain(certfile, keyfile or None, password=give_password)
    except _NoPassword:
        raise TlsError(f"{key_option} {key_path}: the key is encrypted: give its password with "
                       "--keyfile-password-file") from None
    except ssl.SSLError as exc:
        raise TlsError(_chain_problem(exc, option, certfile, key_option, key_path,
                                      password is not None)) from None
    except OSError as exc:
        raise TlsError(f"{option} {certfile}: cannot load it: {exc.strerror or exc}") from None
    if config.client_cert != "none":
        context.verify_mode = _VERIFY_MODES[config.client_cert]
        try:
            context.load_verify_locations(cafile=config.ca_certs)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"--ca-certs {config.ca_certs}: no usable CA certificate in it "
                           f"({_reason(exc)})") from None
        if config.crl_file:
            _load_crl(context, config.crl_file)
    return context


def _load_crl(context: ssl.SSLContext, path: str) -> None:
    with open(path, "rb") as file:
        if b"-----BEGIN X509 CRL-----" not in file.read():
            raise TlsError(f"--crl-file {path}: not a PEM certificate revocation list "
                           "(-----BEGIN X509 CRL-----)")
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"--crl-file {path}: cannot load it ({_reason(exc)})") from None
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLError) and reason:
        return str(reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc.args[0] if len(exc.args) == 1 else exc)


def _chain_problem(exc: ssl.SSLError, option: str, certfile: str, key_option: str,
                   key_path: str, with_password: bool) -> str:
    reason = getattr(exc, "reason", None) or ""
    if reason == "KEY_VALUES_MISMATCH":
        return f"{key_option} {key_path}: the key does not match the certificate {certfile}"
    if with_password:  # the certificate itself was read already (certificate_info)
        return (f"{key_option} {key_path}: cannot decrypt the key with the password from "
                "--keyfile-password-file")
    library = getattr(exc, "library", None) or ""
    if library == "PEM" or reason in ("NO_START_LINE", "UNSUPPORTED", "DECODER_ROUTINES"):
        return (f"{option} {certfile}: no PEM certificate and key pair can be read from it "
                f"and {key_path} ({_reason(exc)})")
    return f"{option} {certfile}: cannot load it with {key_path}: {_reason(exc)}"


def certificate_info(option: str, path: str, data: bytes) -> CertificateInfo:
    """The leaf's facts (the first certificate in the file); raises TlsError."""
    if _PEM_CERT_BEGIN not in data:
        raise TlsError(f"{option} {path}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)")
    try:
        # The stdlib's own decoder (what SSLSocket.getpeercert() gives), on the first
        # certificate of the file.
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
        not_before = ssl.cert_time_to_seconds(decoded["notBefore"])
        not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
    except (ssl.SSLError, OSError, KeyError, ValueError) as exc:
        raise TlsError(f"{option} {path}: cannot read the certificate ({_reason(exc)})") \
            from None
    names = tuple(f"{kind}:{value}" for kind, value in decoded.get("subjectAltName", ())
                  if kind in ("DNS", "IP Address"))
    return CertificateInfo(option, path, rfc4514(decoded.get("subject", ())),
                           tuple(name.partition(":")[2] if name.startswith("DNS:") else name
                                 for name in names),
                           decoded.get("serialNumber", "?"), not_before, not_after)


# Attribute names as RFC 4514 writes them (section 3), from the names OpenSSL gives.
_SHORT_NAMES = {"commonName": "CN", "localityName": "L", "stateOrProvinceName": "ST",
                "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
                "streetAddress": "STREET", "domainComponent": "DC", "userId": "UID"}


def rfc4514(subject: tuple) -> str:
    """A distinguished name as ssl's getpeercert() gives it (RDNs in order, each a tuple of
    (name, value) pairs), as an RFC 4514 string: last RDN first, short attribute names."""
    rdns = []
    for rdn in reversed(subject):
        rdns.append("+".join(f"{_SHORT_NAMES.get(name, name)}={_escape(value)}"
                             for name, value in rdn))
    return ",".join(rdns)


def _escape(value: str) -> str:
    out = []
    for index, char in enumerate(value):
        if char in ',+"\\<>;' or (char == "#" and index == 0) or \
                (char == " " and index in (0, len(value) - 1)):
            out.append("\\" + char)
        elif char == "\0":
            out.append("\\00")
        else:
            out.append(char)
    return "".join(out)


def _leaf_pem(data: bytes) -> str:
    start = data.index(_PEM_CERT_BEGIN)
    end = data.index(_PEM_CERT_END, start) + len(_PEM_CERT_END)
    return data[start:end].decode("ascii") + "\n"


def _date(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))
