"""The app of tests/integration/test_chaos.py: says which worker answered, and leaves a trace of
every request it ran, so that the test can tell a request the server never took from one whose
response was lost.

The test serves a module it writes into its tmp_path (a good release imports make_app from
here, a broken one raises on import), so that USR2 and HUP meet broken and fixed code.

GET /?id=ID&delay=MS
    appends "ID PID" to the file named by $DUCK_CHAOS_RECORD (before answering), sleeps MS
    milliseconds, then answers 200 with "VERSION PID" and the worker's pid in X-Pid.
"""

from __future__ import annotations

import asyncio
import os
import resource
from urllib.parse import parse_qs

from tests.apps.common import answer_lifespan

# The chaos test kills workers with SIGSEGV, SIGABRT, SIGQUIT-like signals by the dozen: no core
# files (or crash reports) for those, whatever the machine's core ulimit.
resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))

_record: tuple[int, int] | None = None  # (pid, fd): opened once per worker process


def _record_fd() -> int:
    global _record
    pid = os.getpid()
    if _record is None or _record[0] != pid:
        path = os.environ["DUCK_CHAOS_RECORD"]
        _record = (pid, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    return _record[1]


def make_app(version: str):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        query = parse_qs(scope["query_string"].decode("latin-1"))
        pid = str(os.getpid())
        request_id = query.get("id", ["-"])[0]
        # One write(2) of a short line with O_APPEND: whole lines, whatever the other workers do.
        os.write(_record_fd(), f"{request_id} {pid}\n".encode())
        delay = int(query.get("delay", ["0"])[0])
        if delay:
            await asyncio.sleep(delay / 1000)
        body = f"{version} {pid}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(body)).encode()),
                                (b"x-pid", pid.encode())]})
        await send({"type": "http.response.body", "body": body})

    return app
