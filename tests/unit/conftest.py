"""Fixtures the unit tests share."""

from __future__ import annotations

import logging

import pytest

from duck_prefork.logs import log


@pytest.fixture
def records():
    """The records of the duck_prefork logger while the test runs."""
    caught: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = caught.append
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield caught
    log.removeHandler(handler)
    log.setLevel(level)
