"""TLS listeners, end to end: real servers on loopback, real clients (Python ssl, httpx, the
websockets package, openssl s_client), certificates made by tls_certs.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys

import httpx
import pytest
from cryptography import x509
from websockets.sync.client import connect as ws_connect

from .conftest import ROOT, wait_for
from .tls_certs import Certs

pytestmark = pytest.mark.timeout(120)

BASIC = "tests.apps.basic:app"


# --- helpers ----------------------------------------------------------------------------------


def tls_port(server) -> int:
    return int(server.wait_log(r"listening on .*?https://127\.0\.0\.1:(\d+)")[0])


def tls_args(certs: Certs, issued=None) -> list[str]:
    issued = issued or certs.server
    return ["--certfile", str(issued.cert), "--keyfile", str(issued.key)]


def https_get(port: int, path: str, context: ssl.SSLContext, host: str = "localhost",
              headers: dict | None = None, timeout: float = 10.0):
    """One request on a new TLS connection: (status, headers, body, peer certificate DER)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as sock:
            peer = sock.getpeercert(binary_form=True)
            head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
            for name, value in (headers or {}).items():
                head += f"{name}: {value}\r\n"
            sock.sendall((head + "\r\n").encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body, peer


def refused(port: int, context: ssl.SSLContext) -> bool:
    """The handshake fails, or (TLS 1.3: the client's side of it is done before the server has
    judged its certificate) the connection ends with no answer."""
    try:
        status, _, _, _ = https_get(port, "/pid", context)
    except (ssl.SSLError, ConnectionError, ValueError, IndexError):  # IndexError: no answer
        return True
    return False


def served_serial(port: int, certs: Certs, host: str = "localhost") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with certs.client_context().wrap_socket(raw, server_hostname=host) as sock:
            der = sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def assert_quiet(server) -> None:
    """Nothing a client did is a traceback or an error line."""
    text = server.log()
    assert "Traceback" not in text, text
    assert "[ERROR]" not in text, text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nobody_listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# --- serving ----------------------------------------------------------------------------------


def test_https_scope_carries_the_tls_extension(start_server, certs, http_parser):
    server = start_server(BASIC, "--workers", "1", "--http", http_parser, *tls_args(certs),
                          bind="https://127.0.0.1:0")
    port = tls_port(server)
    with httpx.Client(verify=certs.client_context()) as client:
        response = client.get(f"https://localhost:{port}/scope")
    assert response.status_code == 200
    scope = response.json()
    assert scope["scheme"] == "https"
    tls = scope["extensions"]["tls"]
    assert tls["server_cert"] == certs.server.pem
    assert tls["client_cert_chain"] == []
    assert tls["client_cert_name"] is None and tls["client_cert_error"] is None
    assert tls["tls_version"] == 0x0304
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)
    assert_quiet(server)


def test_tls_1_2_reports_its_version_and_cipher(start_server, certs):
    server = start_server(BASIC, "--workers", "1", *tls_args(certs), bind="https://127.0.0.1:0")
    context = certs.client_context(tls_max=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    status, _, body, _ = https_get(tls_port(server), "/scope", context)
    tls = json.loads(body)["extensions"]["tls"]
    assert status == 200 and tls["tls_version"] == 0x0303 and tls["cipher_suite"] == 0xC02B


def test_plain_and_tls_listeners_side_by_side(start_server, certs):
    """https:// binds choose the TLS listeners; the plain one has no TLS extension, and proxy
    headers still say https there (a TLS proxy in front)."""
    server = start_server(BASIC, "--workers", "1", *tls_args(certs), "--bind",
                          "https://127.0.0.1:0", bind="127.0.0.1:0")
    status, _, body, _ = https_get(tls_port(server), "/scope", certs.client_context())
    assert status == 200 and json.loads(body)["scheme"] == "https"
    status, _, body = server.request("GET", "/scope")
    scope = json.loads(body)
    assert status == 200 and scope["scheme"] == "http" and "extensions" not in scope
    status, _, body = server.request("GET", "/scope", headers={"X-Forwarded-Proto": "https"})
    scope = json.loads(body)
    assert scope["scheme"] == "https" and "extensions" not in scope


def test_certfile_alone_makes_every_tcp_bind_tls(start_server, certs, tmp_path):
    sock_path = tmp_path / "plain.sock"
    server = start_server(BASIC, "--workers", "1", *tls_args(certs), "--bind",
                          f"unix:{sock_path}", bind="127.0.0.1:0")
    status, _, _, _ = https_get(tls_port(server), "/pid", certs.client_context())
    assert status == 200
    # the unix socket stays plain
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")


def test_tls_unix_socket(start_server, certs, tmp_path):
    sock_path = tmp_path / "tls.sock"
    start_server(BASIC, "--workers", "1", *tls_args(certs), bind=f"https+unix:{sock_path}")
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(str(sock_path))
        with certs.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")


def test_websocket_over_tls_is_wss_with_the_extension(start_server, certs):
    server = start_server("tests.apps.ws:app", "--workers", "1", *tls_args(certs),
                          bind="https://127.0.0.1:0")
    port = tls_port(server)
    with ws_connect(f"wss://localhost:{port}/scope", ssl=certs.client_context(),
                    open_timeout=10) as websocket:
        scope = json.loads(websocket.recv(timeout=10))
    assert scope["scheme"] == "wss"
    assert scope["extensions"]["tls"]["server_cert"] == certs.server.pem
    assert "websocket.http.response" in scope["extensions"]
    with ws_connect(f"wss://localhost:{port}/echo", ssl=certs.client_context(),
                    open_timeout=10) as websocket:
        websocket.send("hello over tls")
        assert websocket.recv(timeout=10) == "hello over tls"


def test_openssl_s_client_gets_an_answer_and_close_notify(start_server, certs):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (.ci/run installs it)")
    server = start_server(BASIC, "--workers", "1", *tls_args(certs), bind="https://127.0.0.1:0")
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{tls_port(server)}", "-servername",
         "localhost", "-CAfile", str(certs.ca), "-verify_return_error", "-ign_eof"],
        input=b"GET /pid HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        capture_output=True, timeout=30)
    out = result.stdout.decode(errors="replace")
    assert "HTTP/1.1 200" in out, out + result.stderr.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out
    assert result.returncode == 0


def test_a_closed_connection_ends_with_close_notify(start_server, certs):
    """Python's ssl with suppress_ragged_eofs=False raises on an EOF without close_notify."""
    server = start_server(BASIC, "--workers", "1", *tls_args(certs), bind="https://127.0.0.1:0")
    with socket.create_connection(("127.0.0.1", tls_port(server)), timeout=10) as raw:
        with certs.client_context().wrap_socket(raw, server_hostname="localhost",
                                                suppress_ragged_eofs=False) as sock:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):  # b"" only after the server's close_notify
                data += chunk
    assert data.startswith(b"HTTP/1.1 200")


def test_limits_timeouts_and_drain_apply_over_tls(start_server, certs):
    server = start_server(BASIC, "--workers", "1", *tls_args(certs), "--limit-request-line",
                          "100", "--header-timeout", "1", bind="https://127.0.0.1:0")
    port = tls_port(server)
    status, _, _, _ = https_get(port, "/" + "a" * 200, certs.client_context())
    assert status == 414
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with certs.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n")  # never finished
            assert sock.recv(100).startswith(b"HTTP/1.1 408")
    # drain: a slow request in flight over TLS completes after TERM
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with certs.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET /slow?seconds=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: "GET" in server.log() or True)
            server.send_signal(signal.SIGTERM)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"connection: close" in data.lower()
    assert server.wait_exit(30) == 0


# --- client certificates -------------------------------------------------------------------


def test_client_certificate_reaches_the_scope(start_server, certs):
    server = start_server(BASIC, "--workers", "1", *tls_args(certs), "--client-cert",
                          "optional", "--ca-certs", str(certs.ca), "--crl-file", str(certs.crl),
                          bind="https://127.0.0.1:0")
    port = tls_port(server)
    status, _, body, _ = https_get(port, "/scope", certs.client_context(certs.client))
    tls = json.loads(body)["extensions"]["tls"]
    assert status == 200
    assert tls["client_cert_chain"][0] == certs.client.pem
    assert tls["client_cert_name"] == certs.client.certificate.subject.rfc4514_string()
    assert tls["client_cert_name"] == "CN=alice,O=Duck,C=FR"
    assert tls["client_cert_error"] is None
    # optional: a client without a certificate is served, with an empty chain
    status, _, body, _ = https_get(port, "/scope", certs.client_context())
    tls = json.loads(body)["extensions"]["tls"]
    assert status == 200 and tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    # a revoked certificate (the CRL) is refused in the handshake
    assert refused(port, certs.client_context(certs.revoked))
    status, _, _, _ = https_get(port, "/pid", certs.client_context(certs.client))
    assert status == 200
    assert_quiet(server)


def test_required_client_certificate_refuses_a_client_without_one(start_server, certs):
    server = start_server(BASIC, "--workers", "1", *tls_args(certs), "--client-cert",
                          "required", "--ca-certs", str(certs.ca), bind="https://127.0.0.1:0")
    port = tls_port(server)
    assert refused(port, certs.client_context())
    status, _, _, _ = https_get(port, "/pid", certs.client_context(certs.client))
    assert status == 200
    server.wait_log(r"TLS: \d+ failed handshakes? \(.*no client certificate")


def test_ca_certs_without_client_cert_is_a_warning(start_server, certs):
    server = start_server(BASIC, "--workers", "1", *tls_args(certs), "--ca-certs",
                          str(certs.ca), bind="https://127.0.0.1:0")
    server.wait_log(r"WARNING.*--ca-certs is given but --client-cert is none")


# --- SNI ----------------------------------------------------------------------------------------


def test_sni_chooses_the_certificate(start_server, certs):
    server = start_server(BASIC, "--workers", "1", *tls_args(certs),
                          "--cert", f"shop.example.com={certs.shop.cert},{certs.shop.key}",
                          "--cert", f"*.example.org={certs.wild.cert},{certs.wild.key}",
                          bind="https://127.0.0.1:0")
    port = tls_port(server)
    assert served_serial(port, certs, "shop.example.com") == certs.shop.certificate.serial_number
    assert served_serial(port, certs, "SHOP.example.com") == certs.shop.certificate.serial_number
    assert served_serial(port, certs, "a.example.org") == certs.wild.certificate.serial_number
    assert served_serial(port, certs, "localhost") == certs.server.certificate.serial_number
    # a name one label too deep for the wildcard gets the default (and fails to verify)
    with pytest.raises(ssl.SSLCertVerificationError):
        served_serial(port, certs, "a.b.example.org")
    status, _, body, _ = https_get(port, "/scope", certs.client_context(),
                                   host="shop.example.com")
    assert json.loads(body)["extensions"]["tls"]["server_cert"] == certs.shop.pem
    if shutil.which("openssl"):
        result = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
             "b.example.org", "-CAfile", str(certs.ca), "-verify_return_error"],
            input=b"", capture_output=True, timeout=30)
        assert "CN = *.example.org" in result.stdout.decode(errors="replace")


def test_unknown_sni_is_refused_with_unrecognized_name(start_server, certs):
    server = start_server(BASIC, "--workers", "1", *tls_args(certs),
                          "--cert", f"shop.example.com={certs.shop.cert},{certs.shop.key}",
                          "--tls-reject-unknown-sni", bind="https://127.0.0.1:0")
    port = tls_port(server)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        served_serial(port, certs, "unknown.example.net")
    # the default certificate still answers its own names, and --cert its own
    assert served_serial(port, certs, "localhost") == certs.server.certificate.serial_number
    assert served_serial(port, certs, "shop.example.com") == certs.shop.certificate.serial_number
    server.wait_log(r"TLS: \d+ failed handshakes? \(.*unknown SNI name")


# --- bad input at start ------------------------------------------------------------------------


def _start_fails(certs: Certs, tmp_path, args: list[str], expected: str) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "duck_prefork", BASIC, "--workers", "1", "--bind",
         f"https://127.0.0.1:{port}", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        timeout=60)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err and "listening" not in err
    assert nobody_listens(port)


@pytest.mark.parametrize("case, expected", [
    ("expired", "the certificate expired on"),
    ("future", "the certificate is not valid before"),
    ("mismatched", "the key does not match the certificate"),
    ("encrypted", "the key is encrypted: give its password with --keyfile-password-file"),
    ("wrong password", "cannot decrypt the key with the password"),
    ("missing", "cannot read it: No such file or directory"),
    ("garbage", "cannot read the certificate"),
    ("ca garbage", "--ca-certs"),
    ("crl garbage", "--crl-file"),
])
def test_bad_certificates_at_start_exit_1_naming_the_file(certs, tmp_path, case, expected):
    args = {
        "expired": tls_args(certs, certs.expired),
        "future": tls_args(certs, certs.future),
        "mismatched": ["--certfile", str(certs.server.cert), "--keyfile", str(certs.other_key)],
        "encrypted": tls_args(certs, certs.encrypted),
        "wrong password": [*tls_args(certs, certs.encrypted), "--keyfile-password-file",
                           str(certs.ca)],
        "missing": ["--certfile", str(tmp_path / "nope.pem"), "--keyfile", str(certs.server.key)],
        "garbage": ["--certfile", str(certs.garbage), "--keyfile", str(certs.server.key)],
        "ca garbage": [*tls_args(certs), "--client-cert", "optional", "--ca-certs",
                       str(certs.server.key)],
        "crl garbage": [*tls_args(certs), "--client-cert", "optional", "--ca-certs",
                        str(certs.ca), "--crl-file", str(certs.ca)],
    }[case]
    _start_fails(certs, tmp_path, args, expected)


def test_unreadable_key_exits_1(certs, tmp_path):
    key = tmp_path / "locked.key"
    shutil.copy(certs.server.key, key)
    key.chmod(0)
    if os.geteuid() == 0:
        # root reads it anyway: what a file that cannot be read looks like is a directory
        key.chmod(0o600)
        key.unlink()
        key.mkdir()
        _start_fails(certs, tmp_path, ["--certfile", str(certs.server.cert), "--keyfile",
                                       str(key)], "cannot read it: Is a directory")
    else:
        _start_fails(certs, tmp_path, ["--certfile", str(certs.server.cert), "--keyfile",
                                       str(key)], "cannot read it: Permission denied")


def test_check_config_shows_the_certificates_and_refuses_a_bad_one(certs, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "duck_prefork", BASIC, "--check-config", *tls_args(certs)],
        cwd=ROOT, env=env, capture_output=True, timeout=60)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    serial = f"{certs.server.certificate.serial_number:X}"
    assert f"# TLS certificate --certfile {certs.server.cert}: subject CN=localhost" in out
    assert serial in out and "localhost, IP Address:127.0.0.1" in out
    result = subprocess.run(
        [sys.executable, "-m", "duck_prefork", BASIC, "--check-config",
         *tls_args(certs, certs.expired)], cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert result.returncode == 1 and "expired" in result.stderr.decode()


def test_encrypted_key_with_a_password_credential(start_server, certs, tmp_path):
    """A bare --keyfile-password-file name is found in $CREDENTIALS_DIRECTORY (systemd's
    LoadCredential=)."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    shutil.copy(certs.password_file, credentials / "tls-key-password")
    server = start_server(BASIC, "--workers", "1", *tls_args(certs, certs.encrypted),
                          "--keyfile-password-file", "tls-key-password",
                          env={"CREDENTIALS_DIRECTORY": str(credentials)},
                          bind="https://127.0.0.1:0")
    status, _, _, _ = https_get(tls_port(server), "/pid", certs.client_context())
    assert status == 200


def test_a_root_only_key_is_read_by_the_master_before_user_drops_rights(start_server, certs,
                                                                          tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to --user nobody")
    key = tmp_path / "root-only.key"
    shutil.copy(certs.server.key, key)
    key.chmod(0o600)
    tmp_path.chmod(0o755)
    server = start_server(BASIC, "--workers", "1", "--user", "nobody", "--certfile",
                          str(certs.server.cert), "--keyfile", str(key),
                          bind="https://127.0.0.1:0")
    status, _, _, _ = https_get(tls_port(server), "/pid", certs.client_context())
    assert status == 200


def test_expiring_certificate_is_a_warning(start_server, certs):
    server = start_server(BASIC, "--workers", "1", *tls_args(certs, certs.soon),
                          bind="https://127.0.0.1:0")
    server.wait_log(rf"WARNING.*TLS certificate {certs.soon.cert} expires in [45] days")
    server.wait_log(r"TLS certificate --certfile .*serial .*expires ")


# --- hostile and broken clients ---------------------------------------------------------------


def client_hello(server_name: bytes) -> bytes:
    """A TLS 1.2/1.3 ClientHello record with this SNI name, as bytes (no validation)."""
    sni = struct.pack("!BH", 0, len(server_name)) + server_name
    sni = struct.pack("!H", len(sni)) + sni
    extensions = struct.pack("!HH", 0, len(sni)) + sni
    extensions += struct.pack("!HHBH", 0x2B, 3, 2, 0x0304)  # supported_versions: 1.3
    extensions += struct.pack("!HHHH", 0x0A, 4, 2, 0x001D)  # supported_groups: x25519
    extensions += struct.pack("!HHHH", 0x0D, 4, 2, 0x0403)  # signature_algorithms
    body = struct.pack("!H", 0x0303) + os.urandom(32) + b"\x00"
    body += struct.pack("!H", 4) + struct.pack("!HH", 0x1301, 0xC02B) + b"\x01\x00"
    body += struct.pack("!H", len(extensions)) + extensions
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def _closes(port: int, data: bytes, reset: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return b""
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
def test_hostile_clients_are_closed_and_summarized(start_server, certs):
    server = start_server(BASIC, "--workers", "1", *tls_args(certs), "--tls-handshake-timeout",
                          "1", bind="https://127.0.0.1:0")
    port = tls_port(server)
    context = certs.client_context()
    # plain HTTP to the TLS port: a short 400 saying to use https
    answer = _closes(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request") and b"https://" in answer
    # garbage bytes
    # (starting with a byte that is neither a TLS record, 0x16, nor an upper-case letter, which
    # would make it plain HTTP: random bytes did one run in ten)
    _closes(port, b"\x00" + os.urandom(64).replace(b"\x16", b"\x17") + b"\x00")
    # a TLS 1.0 ClientHello
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            old.wrap_socket(raw, server_hostname="localhost")
    # an SNI name of 300 bytes
    _closes(port, client_hello(b".".join([b"a" * 59] * 5) + b".example"))
    # a handshake that stalls half-way: closed after --tls-handshake-timeout
    hello = client_hello(b"localhost")
    assert _closes(port, hello[:40]) == b""
    # a client that resets mid-handshake
    _closes(port, hello[:40], reset=True)
    # a client that connects and never says anything
    assert _closes(port, b"") == b""
    # everyone else is served all along
    assert https_get(port, "/pid", context)[0] == 200
    # one summary line (the first comes at the next tick, the next one a minute later at the
    # earliest: well after this test), nothing per connection
    line = server.wait_log(r"TLS: (\d+ failed handshakes? \(.*\))")[0]
    assert "1 plain HTTP" in line, line
    assert_quiet(server)
    assert https_get(port, "/pid", context)[0] == 200
    assert len([text for text in server.log().splitlines() if "TLS:" in text]) == 1


def test_handshake_timeout_closes_a_silent_connection(start_server, certs):
    server = start_server(BASIC, "--workers", "1", *tls_args(certs), "--tls-handshake-timeout",
                          "1", bind="https://127.0.0.1:0")
    with socket.create_connection(("127.0.0.1", tls_port(server)), timeout=20) as sock:
        assert sock.recv(10) == b""  # closed by the server, no ClientHello needed
    server.wait_log(r"TLS: 1 failed handshake \(1 timed out\)")


# --- redirect -------------------------------------------------------------------------------------


def test_redirect_https_sends_308_to_the_tls_port(start_server, certs):
    server = start_server(BASIC, "--workers", "1", *tls_args(certs), "--bind",
                          "https://127.0.0.1:0", "--redirect-https", bind="127.0.0.1:0")
    port = tls_port(server)
    status, headers, _ = server.request("GET", "/a/b?c=1", headers={"Host": "example.com:8080"})
    assert status == 308 and headers["location"] == f"https://example.com:{port}/a/b?c=1"
    status, headers, _ = server.request("POST", "/form", body=b"x=1",
                                        headers={"Host": "[::1]"})
    assert status == 308 and headers["location"] == f"https://[::1]:{port}/form"
    with httpx.Client(verify=certs.client_context(), follow_redirects=True) as client:
        response = client.get(f"http://localhost:{server.port}/scope")
    assert response.status_code == 200 and response.json()["scheme"] == "https"
    status, _, _ = server.request("GET", "/", headers={"Host": "bad host"})
    assert status == 400
