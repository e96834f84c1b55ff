"""channel.split_messages: the worker-to-master messages, whole or split across reads."""

import pytest

from duck_prefork.worker import channel

pytestmark = pytest.mark.timeout(30)


def test_whole_messages_in_order():
    inbox = channel.HEARTBEAT + channel.READY + channel.HEARTBEAT + channel.RECYCLE
    assert channel.split_messages(inbox) == (
        [channel.HEARTBEAT, channel.READY, channel.HEARTBEAT, channel.RECYCLE], b"", None)


def test_a_split_message_waits_for_its_rest():
    messages, rest, failure = channel.split_messages(channel.HEARTBEAT + b"rea")
    assert (messages, rest, failure) == ([channel.HEARTBEAT], b"rea", None)
    assert channel.split_messages(rest + b"dy\n") == ([channel.READY], b"", None)


def test_failure_text_runs_to_the_end():
    inbox = channel.HEARTBEAT + channel.FAILED + b"Traceback ...\nImportError: nope\n"
    assert channel.split_messages(inbox) == (
        [channel.HEARTBEAT], b"", "Traceback ...\nImportError: nope\n")
