"""--bind address syntax: HOST:PORT, [IPv6]:PORT, unix:PATH, fd://N."""

from __future__ import annotations

import pytest

from duck_prefork.net.listeners import BindAddress, parse_bind

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:8000", BindAddress("tcp", host="127.0.0.1", port=8000)),
    ("localhost:0", BindAddress("tcp", host="localhost", port=0)),
    ("0.0.0.0:65535", BindAddress("tcp", host="0.0.0.0", port=65535)),
    ("[::1]:8000", BindAddress("tcp", host="::1", port=8000)),
    ("[::]:80", BindAddress("tcp", host="::", port=80)),
    ("unix:/x.sock", BindAddress("unix", path="/x.sock")),
    ("unix:relative/dir/s.sock", BindAddress("unix", path="relative/dir/s.sock")),
    ("fd://3", BindAddress("fd", fd=3)),
    ("fd://0", BindAddress("fd", fd=0)),
])
def test_valid(value, expected):
    assert parse_bind(value) == expected


@pytest.mark.parametrize("value", [
    "127.0.0.1",          # no port
    "127.0.0.1:",         # empty port
    ":8000",              # no host
    "localhost:http",     # port not a number
    "127.0.0.1:65536",    # port out of range
    "127.0.0.1:-1",
    "::1:80",             # IPv6 must be bracketed
    "[::1]",              # bracketed without a port
    "[::1]:",
    "[]:80",
    "[::1]:99999",
    "unix:",              # no path
    "fd://",              # no number
    "fd://x",
    "fd://-1",
    "",
])
def test_invalid(value):
    with pytest.raises(ValueError):
        parse_bind(value)


def test_error_messages_describe_the_expected_form():
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_bind("::1:80")
    with pytest.raises(ValueError, match="0 to 65535"):
        parse_bind("127.0.0.1:70000")
    with pytest.raises(ValueError, match="unix:"):
        parse_bind("unix:")
    with pytest.raises(ValueError, match="fd://"):
        parse_bind("fd://x")
