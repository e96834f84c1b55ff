"""Which build of the hot path runs: compiled by mypyc, or the pure-Python modules.

The modules in COMPILED are compiled by mypyc from these same sources when `pip install`
finds a C compiler and the Python headers (setup.py); the .py files stay, so the behaviour has
one source, and they are what runs when there is no compiled build, when it is older than the
sources (a developer's edit: `pip install -e .` rebuilds), or when DUCK_PREFORK_NO_EXTENSIONS
is set (as AIOHTTP_NO_EXTENSIONS does for aiohttp; the test suite runs both ways). It is all or
nothing: compiled modules call each other directly, so one pure module among compiled ones
would be a second copy of its classes.

This module imports nothing of the package and nothing outside the standard library: setup.py
reads COMPILED from it, and duck_prefork/__init__.py installs the choice before anything else
is imported.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

# The per-request path: the stream interface, the connection stages (and the PROXY header, one
# per connection on a --proxy-protocol listener), the HTTP/1.1 codec, the ASGI pipeline and the
# upstream pass-through (its client codec, header rules, pool and exchange; not its tunnel,
# whose bytes are not parsed). (Exceptions raised on it live in errors.py, not compiled: mypyc
# cannot compile subclasses of built-in exceptions.)
COMPILED = (
    "duck_prefork.stream",
    "duck_prefork.net.stages",
    "duck_prefork.net.proxy_protocol",
    "duck_prefork.net.proxy_stage",
    "duck_prefork.http1.request_head",
    "duck_prefork.http1.stream",
    "duck_prefork.http1.connection",
    "duck_prefork.http1.parser_httptools",
    "duck_prefork.http1.parser_h11",
    "duck_prefork.http2.machine",
    "duck_prefork.http2.connection",
    "duck_prefork.http2.stream",
    "duck_prefork.http2.tunnel",
    "duck_prefork.asgi.pipeline",
    "duck_prefork.upstream.routes",
    "duck_prefork.upstream.codec",
    "duck_prefork.upstream.headers",
    "duck_prefork.upstream.pool",
    "duck_prefork.upstream.exchange",
    "duck_prefork.http2.hpack",  # HPACK for the compiled HTTP/2 core
    "duck_prefork.worker.probes",  # in front of the pipeline when --health/--ready-path is on
    "duck_prefork.metrics.counters",
    "duck_prefork.access_log",
)
PURE_ENV = "DUCK_PREFORK_NO_EXTENSIONS"
# Written by setup.py next to the compiled modules: the SHA-256 of each source they were
# compiled from, one "module digest" line each.
STAMP = "_compiled_from.txt"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _source(module: str) -> str:
    return os.path.join(_PACKAGE_DIR, *module.split(".")[1:]) + ".py"


def _extension(module: str) -> str | None:
    """The compiled module's file next to its source, or None."""
    stem = os.path.join(_PACKAGE_DIR, *module.split(".")[1:])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(stem + suffix):
            return stem + suffix
    return None


def source_digest(module: str) -> str:
    with open(_source(module), "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def _choose() -> tuple[bool, str]:
    """(compiled, why): whether the compiled modules are used, and a phrase saying why."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return False, f"pure Python: {PURE_ENV} is set"
    if any(_extension(module) is None for module in COMPILED):
        return False, "pure Python: no compiled modules"
    try:
        with open(os.path.join(_PACKAGE_DIR, STAMP), encoding="ascii") as file:
            compiled_from = dict(line.split() for line in file if line.strip())
        stale = [module for module in COMPILED
                 if compiled_from.get(module) != source_digest(module)]
    except (OSError, ValueError):
        stale = list(COMPILED)
    if stale:
        # A source edited since the build (a developer's tree): the compiled modules would
        # not run what the source says.
        return False, "pure Python: compiled modules out of date, pip install -e . rebuilds"
    return True, "compiled with mypyc"


COMPILED_IN_USE, DESCRIPTION = _choose()


class _PureFinder:
    """Finds the .py source of every module in COMPILED, ahead of its compiled twin."""

    @staticmethod
    def find_spec(name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(name, _source(name))


def install() -> None:
    """Called once, by duck_prefork/__init__.py, before any module of COMPILED is imported."""
    if not COMPILED_IN_USE and not any(isinstance(finder, _PureFinder)
                                       for finder in sys.meta_path):
        sys.meta_path.insert(0, _PureFinder())
