"""Operator hooks: `module:function` callables run at points of the master's and workers' life.

  --on-starting   on_starting(config)                        master, before the first fork
  --post-fork     post_fork(config, worker_number)           worker, right after its fork
  --worker-exit   worker_exit(config, worker_number, pid, exit_code)   master, after a reap
  --on-reload     on_reload(config)                          master, on HUP, new config

A hook that cannot be imported or that raises is logged with its traceback; it never takes the
master (or the worker's boot) down.
"""

from __future__ import annotations

from typing import Any

from .loader import AppLoadError, load_callable
from .logs import log


def run_hook(option: str, spec: str, *args: Any) -> None:
    """Call the hook named by `spec` (the value of --`option`) with `args`, if one is set."""
    if not spec:
        return
    try:
        hook = load_callable(spec)
        hook(*args)
    except AppLoadError as exc:
        log.error("--%s: %s", option, exc)
    except Exception:
        log.exception("--%s hook %s raised", option, spec)
