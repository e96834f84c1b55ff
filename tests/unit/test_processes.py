"""processes.Processes, the master's system calls: what a failed fork leaves behind, the signal
mask a child starts with, names for every signal number; and the notify socket never blocks."""

from __future__ import annotations

import errno
import os
import signal
import socket

import pytest

from duck_prefork.master.processes import Processes, signal_name
from duck_prefork.master.systemd import Notifier

pytestmark = pytest.mark.timeout(30)

MASTER_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGUSR2, signal.SIGTTIN}


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_a_failed_fork_leaks_no_descriptor_and_restores_the_mask(monkeypatch):
    def no_fork():
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    mask_before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    before = open_fds()
    with pytest.raises(OSError) as raised:
        Processes().fork(lambda read_end, write_end: None, MASTER_SIGNALS)
    assert raised.value.errno == errno.EAGAIN
    assert open_fds() == before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask_before


def test_a_child_starts_with_the_master_signals_blocked():
    def child(read_end: int, write_end: int) -> None:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        os.write(write_end, ",".join(str(int(s)) for s in sorted(blocked)).encode())
        os._exit(0)

    processes = Processes()
    mask_before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    pid, channel = processes.fork(child, MASTER_SIGNALS)
    try:
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask_before  # the parent's
        os.set_blocking(channel, True)
        blocked = {int(s) for s in os.read(channel, 4096).decode().split(",") if s}
    finally:
        os.close(channel)
        os.waitpid(pid, 0)
    assert {int(s) for s in MASTER_SIGNALS} <= blocked


def test_every_signal_number_has_a_name():
    assert signal_name(signal.SIGTERM) == "SIGTERM"
    assert signal_name(signal.SIGRTMIN + 1) == "SIGRTMIN+1"
    assert signal_name(signal.SIGRTMIN + 6) == "SIGRTMIN+6"
    assert signal_name(200) == "signal 200"
    for number in range(1, signal.SIGRTMAX + 1):
        assert signal_name(number)


def test_notify_never_blocks_when_systemd_does_not_read(tmp_path):
    path = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": path})
        # Far more than a datagram socket's queue holds: a blocking send would hang here.
        for number in range(5000):
            notifier.status(f"{number} workers serving " + "x" * 200)
        assert receiver.recv(4096).startswith(b"STATUS=0 workers serving")
    finally:
        receiver.close()
