"""An app whose requests block their worker's event loop (time.sleep, on purpose) until the
test opens the worker's gate: the file "go-<pid>" in $DUCK_TEST_GATES. A blocked worker accepts
nothing, so connections queue in the listening socket's backlog. A worker that blocks first
creates "blocked-<pid>" there. While blocked, TERM and INT are held pending (the test sees them
arrive in /proc/<pid>/status), and delivered when the gate opens. Answers with the pid of the
worker that served the request."""

import os
import signal
import time

from tests.apps.basic import app as basic

GATES = os.environ.get("DUCK_TEST_GATES", "")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return await basic(scope, receive, send)
    pid = os.getpid()
    gate = os.path.join(GATES, f"go-{pid}")
    if not os.path.exists(gate):
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        open(os.path.join(GATES, f"blocked-{pid}"), "a").close()
        while not os.path.exists(gate):
            time.sleep(0.005)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    body = str(pid).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
