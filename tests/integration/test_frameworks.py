"""Real frameworks (Starlette, FastAPI, Django) served end to end by the real process tree.

One server (2 workers) per framework, shared by that framework's tests; every test asserts on
what an HTTP client sees.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlencode

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .conftest import Server, recv_all, wait_for

pytestmark = pytest.mark.timeout(60)

WORKERS = "2"


def _serve(tmp_path_factory, app: str, *args: str, env: dict | None = None):
    """Start `app` with 2 workers, yield the Server, then stop it and kill leftovers by PID."""
    server = Server([app, "--workers", WORKERS, *args], tmp_path_factory.mktemp("server"),
                    env=env)
    try:
        server.wait_ready()
        yield server
        server.worker_pids()  # remember the current workers before the master goes away
        exit_code = server.stop()
    finally:
        leftovers = server.cleanup()
    assert not leftovers, f"processes outlived the server: {leftovers}\n{server.log()}"
    assert exit_code == 0, f"server exited with {exit_code}:\n{server.log()}"


def raw_request(server: Server, request: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes (which should ask for Connection: close); returns (head, rest)."""
    with server.connect() as sock:
        sock.sendall(request)
        data = recv_all(sock)
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data!r}"
    return head, rest


def parse_chunked(data: bytes) -> list[bytes]:
    """Decode a chunked body strictly; returns the chunks (without the terminating one)."""
    chunks = []
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        assert sep, "truncated chunk size line"
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert data == b"\r\n", f"bad chunked trailer: {data!r}"
            return chunks
        chunk, crlf, data = data[:size], data[size:size + 2], data[size + 2:]
        assert len(chunk) == size and crlf == b"\r\n", "truncated chunk"
        chunks.append(chunk)


def json_body(body: bytes):
    return json.loads(body.decode())


# --------------------------------------------------------------------------- Starlette


@pytest.fixture(scope="module")
def starlette(tmp_path_factory):
    yield from _serve(tmp_path_factory, "tests.apps.starlette_app:app", "--lifespan", "on")


def test_starlette_plain(starlette):
    status, headers, body = starlette.request("GET", "/")
    assert status == 200
    assert body == b"hello from starlette"
    assert headers["content-type"].startswith("text/plain")
    assert headers["content-length"] == str(len(body))


def test_starlette_json(starlette):
    status, headers, body = starlette.request("GET", "/json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json_body(body) == {"framework": "starlette", "numbers": [1, 2, 3],
                               "nested": {"ok": True}}


def test_starlette_post_echo(starlette):
    payload = b"some \x00 binary \xff payload"
    status, headers, body = starlette.request(
        "POST", "/echo", body=payload, headers={"Content-Type": "application/x-test"})
    assert status == 200
    assert body == payload
    assert headers["content-type"] == "application/x-test"
    assert headers["x-body-length"] == str(len(payload))


def test_starlette_post_echo_large_body(starlette):
    payload = bytes(range(256)) * 4096  # 1 MiB: arrives in many receive() messages
    status, headers, body = starlette.request("POST", "/echo", body=payload)
    assert status == 200
    assert headers["x-body-length"] == str(len(payload))
    assert body == payload


def test_starlette_post_echo_chunked_request(starlette):
    parts = [b"first,", b"second,", b"third"]
    conn = http.client.HTTPConnection("127.0.0.1", starlette.port, timeout=10)
    try:
        conn.request("POST", "/echo", body=iter(parts), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b"".join(parts)
    finally:
        conn.close()


def test_starlette_streaming_response(starlette):
    status, headers, body = starlette.request("GET", "/stream")
    assert status == 200
    assert headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in headers
    assert body == b"".join(b"chunk %d\n" % i for i in range(5))

    # On the wire: several chunks, not one buffered blob, and a proper terminator.
    head, rest = raw_request(
        starlette, b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding: chunked" in head.lower()
    chunks = parse_chunked(rest)
    assert b"".join(chunks) == body
    assert len(chunks) >= 2


def test_starlette_lifespan_state(starlette):
    for _ in range(4):  # new connections: whichever worker answers had its own lifespan
        status, _, body = starlette.request("GET", "/state")
        assert status == 200
        data = json_body(body)
        assert data["thing"] == "made by lifespan"
        assert data["lifespan_pid"] == data["pid"]


def test_starlette_exception_gives_500(starlette):
    status, headers, body = starlette.request("GET", "/boom")
    assert status == 500
    assert b"Internal Server Error" in body
    starlette.wait_log(r"starlette route exploded")
    # The worker survives and keeps serving.
    status, _, body = starlette.request("GET", "/")
    assert (status, body) == (200, b"hello from starlette")


def test_starlette_error_after_complete_response_keeps_body(starlette):
    # Starlette re-raises a background task's error after the response went out in full
    # (more_body=False). The server may log it and close the connection, but the client must
    # still receive the whole response it was promised.
    size = 16 << 20
    status, headers, body = starlette.request("GET", f"/complete-then-raise?size={size}")
    assert status == 200
    assert headers["content-length"] == str(size)
    assert len(body) == size
    starlette.wait_log(r"background task failed after the response")


def test_starlette_404(starlette):
    status, _, body = starlette.request("GET", "/no/such/route")
    assert status == 404
    assert body == b"Not Found"


def test_starlette_query_params(starlette):
    status, _, body = starlette.request("GET", "/query?a=1&b=x%20y&b=z&empty=&c=caf%C3%A9")
    assert status == 200
    data = json_body(body)
    assert data["items"] == [["a", "1"], ["b", "x y"], ["b", "z"], ["empty", ""],
                             ["c", "café"]]
    assert data["raw"] == "a=1&b=x%20y&b=z&empty=&c=caf%C3%A9"


@pytest.mark.parametrize(("path", "name"), [
    ("/items/hello%20world", "hello world"),
    ("/items/caf%C3%A9", "café"),
    ("/items/plain", "plain"),
])
def test_starlette_percent_encoded_path(starlette, path, name):
    status, _, body = starlette.request("GET", path)
    assert status == 200
    data = json_body(body)
    assert data["name"] == name
    assert data["path"] == "/items/" + name


# --------------------------------------------------------------------------- FastAPI


def test_starlette_websocket_route(starlette):
    with connect(f"ws://127.0.0.1:{starlette.port}/ws/lobby", subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        ws.send(json.dumps({"n": 1}))
        assert json.loads(ws.recv()) == {"room": "lobby", "echo": {"n": 1},
                                         "thing": "made by lifespan"}
    with pytest.raises(InvalidStatus) as refused:  # Starlette closes before accept: a 403
        connect(f"ws://127.0.0.1:{starlette.port}/ws/forbidden")
    assert refused.value.response.status_code == 403


@pytest.fixture(scope="module")
def fastapi(tmp_path_factory):
    yield from _serve(tmp_path_factory, "tests.apps.fastapi_app:app")


def test_fastapi_path_and_query(fastapi):
    status, headers, body = fastapi.request("GET", "/items/42?q=duck%20soup&limit=3")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json_body(body) == {"item_id": 42, "q": "duck soup", "limit": 3}

    status, _, body = fastapi.request("GET", "/items/7")
    assert status == 200
    assert json_body(body) == {"item_id": 7, "q": None, "limit": 10}


def test_fastapi_path_validation_error(fastapi):
    status, _, body = fastapi.request("GET", "/items/not-a-number")
    assert status == 422
    assert json_body(body)["detail"][0]["loc"] == ["path", "item_id"]


def test_fastapi_post_pydantic_body(fastapi):
    item = {"name": "duck", "price": 9.5, "tags": ["yellow", "rubber"]}
    status, _, body = fastapi.request("POST", "/items", body=json.dumps(item).encode(),
                                      headers={"Content-Type": "application/json"})
    assert status == 201
    assert json_body(body) == {"created": item, "tag_count": 2}

    status, _, body = fastapi.request("POST", "/items", body=b'{"name": "no price"}',
                                      headers={"Content-Type": "application/json"})
    assert status == 422
    assert json_body(body)["detail"][0]["loc"] == ["body", "price"]


def test_fastapi_dependency(fastapi):
    status, _, body = fastapi.request("GET", "/private", headers={"X-Token": "secret"})
    assert status == 200
    assert json_body(body) == {"token": "secret", "access": "granted"}

    status, _, body = fastapi.request("GET", "/private", headers={"X-Token": "wrong"})
    assert status == 401
    assert json_body(body) == {"detail": "bad token"}

    status, _, _ = fastapi.request("GET", "/private")
    assert status == 401


def test_fastapi_background_task(fastapi, tmp_path):
    marker = tmp_path / "marker.txt"
    query = urlencode({"tmpdir": str(tmp_path), "name": marker.name})
    status, _, body = fastapi.request("POST", f"/background?{query}")
    assert status == 200
    assert json_body(body) == {"scheduled": "marker.txt"}
    wait_for(marker.exists, timeout=10, what="the background task's file")
    wait_for(lambda: marker.read_text() == "written for marker.txt", timeout=5,
             what="the background task's file content")


def test_fastapi_head_has_no_body(fastapi):
    status, get_headers, get_body = fastapi.request("GET", "/items/5?q=x")
    assert status == 200

    head, rest = raw_request(
        fastapi, b"HEAD /items/5?q=x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert rest == b"", f"HEAD response carried body bytes: {rest!r}"
    head_headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        head_headers[name.strip().lower().decode()] = value.strip().decode()
    assert head_headers.get("content-type") == get_headers["content-type"]
    if "content-length" in head_headers:
        assert head_headers["content-length"] == str(len(get_body))

    # And over keep-alive: a HEAD then a GET on one connection both parse cleanly.
    conn = http.client.HTTPConnection("127.0.0.1", fastapi.port, timeout=10)
    try:
        conn.request("HEAD", "/items/5?q=x")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b""
        conn.request("GET", "/items/5?q=x")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == get_body
    finally:
        conn.close()


# --------------------------------------------------------------------------- Django


@pytest.fixture(scope="module")
def django(tmp_path_factory):
    yield from _serve(tmp_path_factory, "tests.apps.django_project.asgi:application",
                      "--lifespan", "auto",
                      env={"DJANGO_SETTINGS_MODULE": "tests.apps.django_project.settings"})


def test_django_starts_without_lifespan(django):
    # Django's handler rejects the lifespan scope; in auto mode that is not an error.
    django.wait_log(r"ready: 2 workers serving")
    assert "does not support the ASGI lifespan protocol" in django.log()
    status, _, body = django.request("GET", "/")
    assert (status, body) == (200, b"hello from django")


def test_django_plain_view(django):
    status, headers, body = django.request("GET", "/")
    assert status == 200
    assert body == b"hello from django"
    assert headers["content-type"] == "text/plain"
    assert headers["content-length"] == str(len(body))


def test_django_get_and_form_post(django):
    status, _, body = django.request("GET", "/form/?a=1&a=2&q=hello%20there")
    assert status == 200
    assert json_body(body) == {"method": "GET", "get": {"a": ["1", "2"], "q": ["hello there"]},
                               "post": {}, "path": "/form/"}

    form = urlencode([("name", "duck"), ("tags", "x"), ("tags", "y"), ("note", "café & co")])
    status, _, body = django.request(
        "POST", "/form/?from=query", body=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert json_body(body) == {"method": "POST", "get": {"from": ["query"]},
                               "post": {"name": ["duck"], "tags": ["x", "y"],
                                        "note": ["café & co"]},
                               "path": "/form/"}


def test_django_csrf_still_enforced_elsewhere(django):
    status, _, _ = django.request("POST", "/json/", body=b"a=1",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403


def test_django_json_view(django):
    status, headers, body = django.request("GET", "/json/")
    assert status == 200
    assert headers["content-type"] == "application/json"
    data = json_body(body)
    assert data["framework"] == "django"
    assert data["items"] == [1, 2, 3]


def test_django_404_and_append_slash(django):
    status, _, body = django.request("GET", "/no/such/page/")
    assert status == 404
    assert b"Not Found" in body

    status, headers, _ = django.request("GET", "/json")
    assert status == 301
    assert headers["location"] == "/json/"



def test_fastapi_websocket_route(fastapi):
    with connect(f"ws://127.0.0.1:{fastapi.port}/ws?token=secret") as ws:
        ws.send(b"x" * 10)
        assert ws.recv() == "10 bytes, 10 in all"
        ws.send(b"y" * 5)
        assert ws.recv() == "5 bytes, 15 in all"
    with pytest.raises(InvalidStatus) as refused:  # WebSocketException before accept
        connect(f"ws://127.0.0.1:{fastapi.port}/ws")
    assert refused.value.response.status_code == 403
