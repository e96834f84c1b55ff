"""Notifier: what systemd's environment turns on."""

import os

import pytest

from duck_prefork.master.systemd import Notifier

pytestmark = pytest.mark.timeout(30)


def test_without_notify_socket_nothing_is_on():
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_due is None
    notifier.ready("x")  # a no-op, not an error


@pytest.mark.parametrize("environ, interval", [
    ({"WATCHDOG_USEC": "400000"}, 0.2),
    ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}, 0.2),
    ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, 0.0),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, 0.0),
    ({}, 0.0),
])
def test_watchdog_interval_is_half_of_watchdog_usec_when_meant_for_us(environ, interval):
    notifier = Notifier({"NOTIFY_SOCKET": "/run/nothing-listens-here", **environ})
    assert notifier.enabled and notifier.watchdog_interval == interval
    notifier.pet_watchdog(0.0)  # sending to nobody is ignored


def test_abstract_address_gets_a_leading_nul():
    assert Notifier({"NOTIFY_SOCKET": "@abc"}).address == "\0abc"
