"""Turn "pkg.module:attr.sub" (or a factory of that name) into the ASGI callable."""

from __future__ import annotations

import importlib
import inspect
from typing import Any


class AppLoadError(Exception):
    """The app could not be loaded; str() says what failed in one line."""


def load_callable(spec: str) -> Any:
    """Import and return the callable named by "module:attr" (for hooks)."""
    module_name, _, attrs = spec.partition(":")
    if not module_name or not attrs:
        raise AppLoadError(f"expected module:function, got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for attr in attrs.split("."):
            target = getattr(target, attr)
    except (ImportError, AttributeError) as exc:
        raise AppLoadError(f"cannot load {spec}: {exc}") from None
    if not callable(target):
        raise AppLoadError(f"{spec} is not callable")
    return target


def load_app(spec: str, factory: bool = False) -> Any:
    """Import and return the ASGI app named by `spec`.

    An exception raised by the app's own module propagates unchanged so that its traceback
    reaches the operator; our own findings (missing attribute, not callable) are AppLoadError.
    """
    module_name, _, attrs = spec.partition(":")
    if not module_name or not attrs:
        raise AppLoadError(f"APP must be module:attribute, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise  # a module the app imports is missing: show the app's traceback
        raise AppLoadError(f"cannot import module {module_name!r}: {exc}") from None
    app: Any = module
    for attr in attrs.split("."):
        try:
            app = getattr(app, attr)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attrs!r}") from None
    if factory:
        if not callable(app):
            raise AppLoadError(f"--factory: {spec} is not callable")
        app = app()
    if not callable(app):
        raise AppLoadError(f"{spec} is not callable (an ASGI app is async def app(scope, receive, "
                           f"send)); if it builds the app, pass --factory")
    if inspect.isclass(app) is False and not _looks_like_asgi3(app):
        raise AppLoadError(f"{spec} does not look like an ASGI 3 app: it must be an async "
                           f"callable taking (scope, receive, send); if it builds the app, "
                           f"pass --factory")
    return app


def _looks_like_asgi3(app: Any) -> bool:
    """True unless `app` is clearly a plain (sync) function or an ASGI 2 double callable."""
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 - instances with an async __call__
    if inspect.iscoroutinefunction(call):
        return True
    # Wrapped or partial callables (e.g. functools.partial of an async def) cannot be judged
    # statically; only refuse plain functions, which are certainly not ASGI 3.
    return not inspect.isfunction(app)
