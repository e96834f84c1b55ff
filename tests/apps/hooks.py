"""Hooks for --on-starting / --post-fork / --worker-exit / --on-reload: each appends a line to
the file named by DUCK_TEST_HOOK_LOG; `broken` raises."""

import os


def _record(line: str) -> None:
    with open(os.environ["DUCK_TEST_HOOK_LOG"], "a") as file:
        file.write(line + "\n")


def on_starting(config):
    _record(f"on_starting {config.workers} pid={os.getpid()}")


def post_fork(config, worker_number):
    _record(f"post_fork {worker_number} pid={os.getpid()}")


def worker_exit(config, worker_number, pid, exit_code):
    _record(f"worker_exit {worker_number} pid={pid} code={exit_code}")


def on_reload(config):
    _record(f"on_reload {config.workers}")


def broken(*args):
    raise RuntimeError("hook exploded")
