"""Views of the legacy Django project (served by gunicorn, behind duck-prefork --upstream)."""

import hashlib
import os
import time

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

CHUNK = 64 * 1024


def pattern(size: int):
    """`size` bytes of a deterministic pattern, in CHUNK pieces (the download's content)."""
    block = bytes(range(256)) * (CHUNK // 256)
    sent = 0
    while sent < size:
        piece = block[:min(CHUNK, size - sent)]
        sent += len(piece)
        yield piece


def home(request):
    return HttpResponse("legacy home\n", content_type="text/plain")


def page(request, name):
    return HttpResponse(f"legacy page {name}\n", content_type="text/plain")


@csrf_exempt
def echo(request):
    """What the upstream received: method, path, query, headers, body digest, peer port."""
    body = request.body
    return JsonResponse({
        "method": request.method,
        "path": request.path,
        "full_path": request.get_full_path(),
        "query": {key: request.GET.getlist(key) for key in request.GET},
        "headers": {key: value for key, value in request.headers.items()},
        "remote_addr": request.META.get("REMOTE_ADDR"),
        "remote_port": request.META.get("REMOTE_PORT"),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_length": len(body),
        "pid": os.getpid(),
    })


def cookies(request):
    response = JsonResponse({"received": dict(request.COOKIES)})
    response.set_cookie("session", "abc123", httponly=True)
    response.set_cookie("theme", "dark")
    return response


def download(request):
    """`size` bytes streamed, with a Content-Length; each piece's end is written to the file
    DUCK_TEST_PROGRESS names (how far the upstream got: the test's slow reader watches it)."""
    size = int(request.GET.get("size", 10 * 1024 * 1024))
    progress = os.environ.get("DUCK_TEST_PROGRESS")

    def body():
        sent = 0
        for piece in pattern(size):
            yield piece
            sent += len(piece)
            if progress:
                with open(progress, "w") as file:
                    file.write(str(sent))

    response = StreamingHttpResponse(body(), content_type="application/octet-stream")
    response["Content-Length"] = str(size)
    return response


@csrf_exempt
def upload(request):
    """The body read as a stream and hashed (never held whole by the view)."""
    digest = hashlib.sha256()
    length = 0
    while True:
        piece = request.read(CHUNK)
        if not piece:
            break
        digest.update(piece)
        length += len(piece)
    return JsonResponse({"sha256": digest.hexdigest(), "length": length})


def die_mid_body(request):
    """Half a body, then the worker process dies: the client must not see a whole response."""

    def body():
        yield b"x" * CHUNK
        os._exit(1)

    response = StreamingHttpResponse(body(), content_type="application/octet-stream")
    response["Content-Length"] = str(4 * CHUNK)
    return response


def slow_head(request):
    time.sleep(float(request.GET.get("s", "3")))
    return HttpResponse("late\n", content_type="text/plain")


def gone(request):
    """A 410 with a body: an upstream's error statuses pass through as they are."""
    return HttpResponse("gone\n", status=410, content_type="text/plain")
