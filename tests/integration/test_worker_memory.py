"""--max-worker-memory: a worker over the limit is replaced gracefully, with the figure logged."""

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.timeout(90)


def test_worker_over_the_memory_limit_is_replaced(start_server):
    server = start_server("tests.apps.leaky:app", "--workers", "1", "--max-worker-memory", "40")
    first = server.worker_pids()[0]
    for _ in range(6):  # 48 MiB kept: over the limit
        status, _, body = server.request("GET", "/grow")
        assert status == 200 and int(body) == first
    line = server.wait_log(r"uses ([\d.]+) MiB, over --max-worker-memory 40", timeout=30)[0]
    assert float(line) > 40
    wait_for(lambda: server.worker_pids() and first not in server.worker_pids(),
             what="the replacement to take over")
    status, _, body = server.request("GET", "/pid")
    assert status == 200 and int(body) != first
    server.wait_log(rf"worker 1 \(pid {first}\) exited with code 0")
