"""TLS without processes: the options, the certificates' checks, SNI choice, the watch's
debounce, the keeper's decisions, the master's HUP and watch with TLS, the redirect's URL, the
ClientHello's SNI, the failure summary."""

from __future__ import annotations

import logging
import signal
import ssl

import pytest

from duck_prefork import cli
from duck_prefork.config import ConfigError, build_config
from duck_prefork.net.listeners import BindAddress, parse_bind, tls_by_default
from duck_prefork.tls import context as tls_context
from duck_prefork.tls.context import Certificates, TlsError, load, password_path, rfc4514
from duck_prefork.tls.handshake import HandshakeFailures, reason_of, server_name
from duck_prefork.tls.keeper import CertificateKeeper
from duck_prefork.tls.redirect import location
from duck_prefork.tls.watch import SETTLE, FileWatch
from tests.integration.test_tls import client_hello
from tests.integration.tls_certs import Certs

from .fake_processes import boot, make_master, step

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls"))


def config(*argv: str, **environ: str):
    return cli.parse_args(list(argv), environ=dict(environ))


def tls(certs: Certs, issued=None) -> list[str]:
    issued = issued or certs.server
    return ["--certfile", str(issued.cert), "--keyfile", str(issued.key)]


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("https://127.0.0.1:8443", BindAddress("tcp", host="127.0.0.1", port=8443, tls=True)),
    ("https://[::1]:443", BindAddress("tcp", host="::1", port=443, tls=True)),
    ("https+unix:/run/a.sock", BindAddress("unix", path="/run/a.sock", tls=True)),
    ("http://0.0.0.0:80", BindAddress("tcp", host="0.0.0.0", port=80)),
])
def test_bind_prefixes(value, expected):
    assert parse_bind(value) == expected


@pytest.mark.parametrize("value", ["https://unix:/x", "https://fd://3", "http://unix:/x",
                                   "https+unix:"])
def test_bad_bind_prefixes(value):
    with pytest.raises(ValueError):
        parse_bind(value)


def test_certfile_alone_makes_tcp_binds_tls():
    assert tls_by_default(["127.0.0.1:80", "unix:/a.sock", "http://[::1]:81"]) == \
        ["https://127.0.0.1:80", "unix:/a.sock", "https://[::1]:81"]
    binds = ["127.0.0.1:80", "https://127.0.0.1:443"]
    assert tls_by_default(binds) == binds  # an https:// bind says which are TLS


@pytest.mark.parametrize("argv, message", [
    (["--bind", "https://127.0.0.1:1"], "a TLS listener needs --certfile"),
    (["--keyfile", "/k"], "--keyfile: needs --certfile"),
    (["--certfile", "/c", "--client-cert", "required"], "needs --ca-certs"),
    (["--certfile", "/c", "--crl-file", "/c"], "--crl-file"),
    (["--certfile", "/c", "--redirect-https"], "say which are TLS"),
    (["--redirect-https"], "needs a TLS TCP listener"),
    (["--tls-min-version", "1.1"], "must be 1.2 or 1.3"),
    (["--cert", "nope"], "expected HOSTNAME=CERTFILE,KEYFILE"),
    (["--cert", "*.com=/c"], "a wildcard needs a domain"),
    (["--cert", "a b.com=/c"], "is not a host name"),
    (["--client-cert", "maybe"], "must be one of none, optional, required"),
])
def test_bad_tls_options_are_one_line(argv, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
        config(*argv)


def test_cert_option_keeps_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parsed = config("--cert", "Shop.Example.com=a.pem,a.key", "--cert", "*.example.org=b.pem")
    assert parsed.cert == [f"shop.example.com={tmp_path}/a.pem,{tmp_path}/a.key",
                           f"*.example.org={tmp_path}/b.pem"]


def test_password_file_bare_name_is_a_systemd_credential(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"CREDENTIALS_DIRECTORY": "/run/credentials/app.service"}
    assert password_path("key-password", env) == "/run/credentials/app.service/key-password"
    assert password_path("/etc/pw", env) == "/etc/pw"
    assert password_path("key-password", {}) == "key-password"
    (tmp_path / "here").write_text("x")
    assert password_path("here", env) == "here"  # a file here wins


# --- the certificates ---------------------------------------------------------------------------


def test_load_describes_the_certificate(certs):
    loaded = load(config(*tls(certs)))
    assert loaded is not None
    (info,) = loaded.infos
    assert info.subject == "CN=localhost"
    assert info.names == ("localhost", "IP Address:127.0.0.1")
    assert int(info.serial, 16) == certs.server.certificate.serial_number
    assert 88 < info.days_left(tls_context.time.time()) < 91
    assert loaded.server_pem[id(loaded.default)] == certs.server.pem
    assert load(config()) is None  # no TLS configured


def test_an_unchanged_reload_keeps_the_contexts_and_a_changed_one_does_not(certs, tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(certs.server.cert.read_bytes())
    key.write_bytes(certs.server.key.read_bytes())
    parsed = config("--certfile", str(cert), "--keyfile", str(key))
    first = load(parsed)
    assert load(parsed, first) is first  # the same bytes: the same ticket keys
    cert.write_bytes(certs.server2.cert.read_bytes())
    key.write_bytes(certs.server2.key.read_bytes())
    second = load(parsed, first)
    assert second is not first and second is not None
    assert int(second.infos[0].serial, 16) == certs.server2.certificate.serial_number


@pytest.mark.parametrize("case, message", [
    ("expired", "the certificate expired on"),
    ("future", "the certificate is not valid before"),
    ("mismatch", "the key does not match the certificate"),
    ("encrypted", "the key is encrypted"),
    ("missing", "cannot read it: No such file or directory"),
    ("garbage", "cannot read the certificate"),
    ("not pem", "no PEM certificate in it"),
    ("ciphers", "--ciphers NOPE: no cipher"),
])
def test_load_refuses_with_one_line_naming_the_file(certs, tmp_path, case, message):
    argv = {
        "expired": tls(certs, certs.expired),
        "future": tls(certs, certs.future),
        "mismatch": ["--certfile", str(certs.server.cert), "--keyfile", str(certs.other_key)],
        "encrypted": tls(certs, certs.encrypted),
        "missing": ["--certfile", str(tmp_path / "none.pem")],
        "garbage": ["--certfile", str(certs.garbage)],
        "not pem": ["--certfile", str(certs.server.key)],
        "ciphers": [*tls(certs), "--ciphers", "NOPE"],
    }[case]
    with pytest.raises(TlsError, match=message) as raised:
        load(config(*argv))
    assert "\n" not in str(raised.value)


def test_encrypted_key_with_its_password(certs):
    loaded = load(config(*tls(certs, certs.encrypted), "--keyfile-password-file",
                         str(certs.password_file)))
    assert loaded is not None


def test_sni_choice_exact_then_wildcard_then_default(certs):
    loaded = load(config(*tls(certs), "--cert", f"shop.example.com={certs.shop.cert},"
                         f"{certs.shop.key}", "--cert", f"*.example.org={certs.wild.cert},"
                         f"{certs.wild.key}"))
    assert isinstance(loaded, Certificates)
    shop, wild = loaded.by_name["shop.example.com"], loaded.wildcards["example.org"]
    assert loaded.choose("shop.example.com") is shop
    assert loaded.choose("SHOP.example.com.") is shop
    assert loaded.choose("x.example.org") is wild
    assert loaded.choose("x.y.example.org") is None  # one label only: the default
    assert loaded.choose("example.org") is None
    assert loaded.choose(None) is None
    assert loaded.server_pem[id(shop)] == certs.shop.pem


def test_reject_unknown_sni_knows_the_default_certificates_names(certs):
    loaded = load(config(*tls(certs), "--tls-reject-unknown-sni"))
    assert isinstance(loaded, Certificates)
    assert loaded.choose("localhost") is loaded.default
    with pytest.raises(LookupError):
        loaded.choose("other.example.com")


def test_rfc4514_matches_cryptography(certs):
    subject = certs.client.certificate.subject
    as_ssl = tuple(((attribute.oid._name, attribute.value),) for attribute in subject)
    assert rfc4514(as_ssl) == subject.rfc4514_string() == "CN=alice,O=Duck,C=FR"
    # a multi-valued RDN, characters to escape, a leading # and a trailing space
    subject = ((("organizationName", "#q "),), (("commonName", "a,b"), ("userId", "x")))
    assert rfc4514(subject) == "CN=a\\,b+UID=x,O=\\#q\\ "


# --- the watch and the keeper ------------------------------------------------------------------


class Files:
    def __init__(self) -> None:
        self.state = ("a",)

    def look(self, paths):
        return self.state


def test_watch_waits_for_the_files_to_settle():
    files = Files()
    watch = FileWatch(["/c"], 100.0, look=files.look)
    assert not watch.poll(101.0)
    files.state = ("b",)
    assert not watch.poll(102.0)  # changed: wait
    files.state = ("c",)
    assert not watch.poll(102.5)  # still changing
    assert not watch.poll(102.5 + SETTLE / 2)
    assert watch.poll(102.5 + SETTLE)  # quiet for SETTLE
    watch.accept()
    assert not watch.poll(200.0)


def fake_loader(results):
    def loader(config, previous):
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return previous if result == "same" else result

    return loader


def test_keeper_poll_keeps_the_running_certificates_on_a_bad_load(caplog, certs):
    current = load(config(*tls(certs)))
    files = Files()
    keeper = CertificateKeeper(config(*tls(certs), "--tls-reload", "watch"), current, 0.0,
                               loader=fake_loader([TlsError("--certfile /c: broken"), "same"]))
    assert keeper.watch is not None
    keeper.watch.look = files.look
    keeper.watch.accept()
    files.state = ("new",)
    assert not keeper.poll(1.0)
    assert not keeper.poll(1.0 + SETTLE)  # settled, loaded, refused
    assert keeper.current is current
    assert "cannot be used, keeping the running certificates: --certfile /c: broken" \
        in caplog.text
    assert not keeper.poll(10.0)  # not retried until the files change again
    files.state = ("touched",)
    keeper.poll(11.0)
    assert not keeper.poll(11.0 + SETTLE)  # same bytes: nothing to do


def test_keeper_refuses_a_reload_that_leaves_tls_listeners_without_certificates(certs):
    keeper = CertificateKeeper(config(*tls(certs)), load(config(*tls(certs))), 0.0,
                               tls_listeners=True)
    with pytest.raises(TlsError, match="need a certificate"):
        keeper.reload(config(), 1.0)


def test_keeper_warns_once_a_day_about_expiry(caplog, certs):
    soon = load(config(*tls(certs, certs.soon)))
    keeper = CertificateKeeper(config(*tls(certs, certs.soon)), soon, 0.0)
    keeper.check_expiry(3600.0)
    assert "expires in" not in caplog.text
    keeper.check_expiry(86400.0)
    assert caplog.text.count("expires in") == 1
    keeper.check_expiry(86400.0 + 3600)
    assert caplog.text.count("expires in") == 1


# --- the master ----------------------------------------------------------------------------------


def test_hup_with_broken_certificates_keeps_everything(caplog, certs):
    master, processes = make_master(reload=lambda: master.config)
    master.certificates = CertificateKeeper(
        master.config, None, 0.0, tls_listeners=False,
        loader=fake_loader([TlsError("--certfile /c: the certificate expired on X")]))
    boot(master, processes)
    workers = dict(master.workers)
    master.pending_signals.append(signal.SIGHUP)
    step(master)
    assert "HUP: --certfile /c: the certificate expired on X; keeping the running " \
           "certificates, configuration and workers" in caplog.text
    assert master.workers == workers and not processes.signals


def test_hup_with_new_certificates_rolls_the_workers(certs):
    master, processes = make_master(reload=lambda: master.config)
    new = load(config(*tls(certs)))
    master.certificates = CertificateKeeper(master.config, None, 0.0, tls_listeners=False,
                                            loader=fake_loader([new]))
    boot(master, processes)
    master.pending_signals.append(signal.SIGHUP)
    step(master)
    assert master.certificates.current is new
    assert len(master.workers) == 4  # a replacement each, the old ones until it is ready


def test_watched_certificates_roll_the_workers_readiness_gated(certs):
    master, processes = make_master()
    new = load(config(*tls(certs, certs.server2)))
    files = Files()
    keeper = CertificateKeeper(config(*tls(certs), "--tls-reload", "watch"),
                               load(config(*tls(certs))), processes.now(),
                               loader=fake_loader([new]))
    assert keeper.watch is not None
    keeper.watch.look = files.look
    keeper.watch.accept()
    master.certificates = keeper
    boot(master, processes)
    old = set(master.workers)
    files.state = ("renewed",)
    step(master)
    processes.advance(SETTLE)
    step(master)
    assert keeper.current is new
    assert len(master.workers) == 4 and not processes.signalled(signal.SIGTERM)
    boot(master, processes)  # the replacements are ready: the old ones are retired
    assert set(processes.signalled(signal.SIGTERM)) == old


# --- the worker's pieces ---------------------------------------------------------------------


@pytest.mark.parametrize("target, host, expected", [
    (b"/a?b=1", b"example.com", b"https://example.com:8443/a?b=1"),
    (b"/", b"example.com:80", b"https://example.com:8443/"),
    (b"/x", b"[::1]:80", b"https://[::1]:8443/x"),
    (b"http://other.com/p?q", b"example.com", b"https://other.com:8443/p?q"),
    (b"http://other.com", None, b"https://other.com:8443/"),
    (b"*", b"example.com", b"https://example.com:8443/"),
    (b"/x", None, b"https://10.0.0.1:8443/x"),
])
def test_redirect_location(target, host, expected):
    assert location(target, host, "10.0.0.1", 8443) == expected


def test_redirect_location_omits_443_and_refuses_junk():
    assert location(b"/", b"example.com", "", 443) == b"https://example.com/"
    assert location(b"/", b"bad host", "", 443) is None
    assert location(b"/a b", b"example.com", "", 443) is None
    assert location(b"/\r\nSet-Cookie: x", b"example.com", "", 443) is None
    assert location(b"/x", None, "::1", 443) == b"https://[::1]/x"


def test_server_name_of_a_client_hello():
    assert server_name(client_hello(b"shop.example.com")) == b"shop.example.com"
    long_name = b".".join([b"a" * 59] * 5)
    assert server_name(client_hello(long_name)) == long_name
    assert server_name(client_hello(b"x")[:50]) is None  # cut short
    assert server_name(b"\x16\x03\x01\x00\x05\x02abcd") is None  # not a client_hello


def test_failure_summary_is_one_line_a_minute(caplog):
    caplog.set_level(logging.INFO)
    failures = HandshakeFailures()
    failures.flush(10.0)
    assert "TLS:" not in caplog.text
    failures.add("timed out")
    failures.add("timed out")
    failures.add("plain HTTP")
    failures.flush(11.0)
    assert "TLS: 3 failed handshakes (2 timed out, 1 plain HTTP)" in caplog.text
    failures.add("not TLS")
    failures.flush(12.0)
    failures.flush(70.0)
    assert caplog.text.count("TLS:") == 1
    failures.flush(71.0)
    assert "TLS: 1 failed handshake (1 not TLS)" in caplog.text


def test_failure_reasons():
    error = ssl.SSLError(1, "x")
    error.reason = "UNSUPPORTED_PROTOCOL"  # type: ignore[misc]
    assert reason_of(error) == "TLS version too old"
    assert reason_of(ConnectionResetError()) == "reset by the client"
    assert reason_of(ConnectionAbortedError()) == "timed out"
    assert reason_of(None) == "closed by the client"


def test_build_config_accepts_a_full_tls_setup(certs):
    parsed = build_config(None, {"bind": ["127.0.0.1:80", "https://127.0.0.1:443"],
                                 "certfile": str(certs.server.cert), "redirect_https": True},
                          environ={})
    assert parsed.redirect_https
