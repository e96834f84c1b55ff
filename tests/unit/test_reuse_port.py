"""--reuse-port sockets: one SO_REUSEPORT socket per worker slot for each TCP address, and
their slot numbers carried through USR2's DUCK_PREFORK_INHERIT."""

from __future__ import annotations

import socket

import pytest

from duck_prefork.master import upgrade
from duck_prefork.net.listeners import bind_all, describe_all, open_slot

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def opened():
    listeners = []
    yield listeners
    for listener in listeners:
        listener.close(unlink=True)


def test_every_slot_gets_its_own_socket_on_one_port(opened, tmp_path):
    opened += bind_all(["127.0.0.1:0", f"unix:{tmp_path}/s.sock"], 16, slots=3)
    tcp = [listener for listener in opened if listener.address.kind == "tcp"]
    assert [listener.slot for listener in tcp] == [1, 2, 3]
    assert len({listener.socket.getsockname() for listener in tcp}) == 1  # port 0: one port
    for listener in tcp:
        assert listener.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert listener.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    unix = [listener for listener in opened if listener.address.kind == "unix"]
    assert [listener.slot for listener in unix] == [0]  # shared: a path cannot be multiplied
    assert {(listener.address.kind, listener.slot) for listener in opened
            if listener.serves(2)} == {("tcp", 2), ("unix", 0)}
    assert "(SO_REUSEPORT: 3 sockets, one per worker)" in describe_all(opened)


def test_a_new_slot_gets_a_socket_only_where_it_has_none(opened):
    opened += bind_all(["127.0.0.1:0", "127.0.0.1:0"], 16, slots=1)
    added = open_slot(opened, 2, 16)
    opened += added
    assert [listener.slot for listener in added] == [2, 2]
    assert {a.socket.getsockname() for a in added} == \
        {listener.socket.getsockname() for listener in opened if listener.slot == 1}
    assert open_slot(opened, 2, 16) == []


def test_without_reuse_port_nothing_is_per_slot(opened):
    opened += bind_all(["127.0.0.1:0"], 16)
    assert opened[0].slot == 0
    assert not opened[0].socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    assert open_slot(opened, 2, 16) == []


def test_slots_survive_the_inherit_variable(opened):
    opened += bind_all(["127.0.0.1:0"], 16, slots=2)
    text = upgrade.describe(opened, [])
    fds, workers = upgrade.parse(text)
    assert fds == [(opened[0].socket.fileno(), True, 1, False),
                   (opened[1].socket.fileno(), True, 2, False)]
    # What a master without --reuse-port support wrote: fd:flags
    assert upgrade.parse("listeners=3:o,4:;workers=")[0] == [(3, True, 0, False),
                                                              (4, False, 0, False)]


def test_tls_survives_the_inherit_variable(opened):
    opened += bind_all(["https://127.0.0.1:0", "127.0.0.1:0"], 16, slots=2)
    fds, _ = upgrade.parse(upgrade.describe(opened, []))
    assert [(slot, tls) for _, _, slot, tls in fds] == [(1, True), (1, False), (2, True),
                                                        (2, False)]
    assert [listener.tls for listener in opened] == [True, False, True, False]
