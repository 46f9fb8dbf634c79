"""Checked by mypy (tests/test_typing.py runs it), never run: what a type
checker sees of the context managers.  `with X(...) as x` keeps x an X."""

from __future__ import annotations

from typing_extensions import assert_type

import shmsem


def context_managers() -> None:
    with shmsem.Channel(0x5E00F001, 4096) as ch:
        assert_type(ch, shmsem.Channel)
        assert_type(ch.stats(), shmsem.ChannelStats)
    with shmsem.Mailbox(0x5E00F002, 64) as mb:
        assert_type(mb, shmsem.Mailbox)
        assert_type(mb.stats(), shmsem.MailboxStats)
    with shmsem.SharedMemory.create(None, 4096) as shm:
        assert_type(shm, shmsem.SharedMemory)
    with shmsem.PosixIpcHelper(0x5E00F004, 4096) as helper:
        assert_type(helper, shmsem.PosixIpcHelper)


class MyChannel(shmsem.Channel):
    pass


def subclasses() -> None:
    with MyChannel(0x5E00F003, 4096) as ch:
        assert_type(ch, MyChannel)
