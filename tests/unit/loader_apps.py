"""Apps for test_loader.py: shapes an APP spec may point at."""

from __future__ import annotations

import functools


async def app(scope, receive, send):
    pass


class ClassApp:
    """An ASGI 3 app as an instance with an async __call__."""

    async def __call__(self, scope, receive, send):
        pass


instance_app = ClassApp()


async def _with_option(scope, receive, send, option):
    pass


partial_app = functools.partial(_with_option, option=1)


def sync_function(scope, receive, send):
    pass


def make_sync_app():
    return sync_function


def factory_raises():
    raise RuntimeError("factory exploded")


not_callable = 42
