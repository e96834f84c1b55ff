"""A background load generator for tests that must see zero failed requests."""

from __future__ import annotations

import http.client
import threading


class Load:
    """Clients sending GET / on a new connection each, until stop(); counts what failed."""

    def __init__(self, port: int, clients: int = 4, path: str = "/pid"):
        self.port, self.path = port, path
        self.sent = self.failed = 0
        self.errors: list[str] = []
        self.pids: set[int] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        while not self._stopping.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200
                error = None if ok else f"status {response.status}"
            except Exception as exc:  # every failure is counted and reported
                ok, body, error = False, b"", repr(exc)
            finally:
                conn.close()
            with self._lock:
                self.sent += 1
                if ok:
                    if body.isdigit():
                        self.pids.add(int(body))
                else:
                    self.failed += 1
                    self.errors.append(error)
