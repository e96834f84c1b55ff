"""duck-prefork: a prefork server for ASGI applications."""

from __future__ import annotations

from collections.abc import Sequence

from . import build

__version__ = "0.1.0"

build.install()  # the compiled hot path, or its pure-Python sources (build.py)


def run(argv: Sequence[str] = ()) -> int:
    """Run the server as the command line would with `argv`; returns the exit code."""
    from .cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0
