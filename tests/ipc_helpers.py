"""Removing System V objects behind the library's back, for test cleanup."""

from __future__ import annotations

import os
from pathlib import Path

import shmsem
from shmsem import _core


def remove_object(kind: str, ident: int) -> None:
    """IPC_RMID one object ("shm", "sem" or "msg"); quiet if it is gone."""
    try:
        if kind == "shm":
            _core.shm_rmid(ident)
        elif kind == "sem":
            _core.semctl(ident, 0, _core.IPC_RMID)
        else:
            _core.msg_rmid(ident)
    except (shmsem.ShmsemError, OSError):
        pass


def remove_key(key: int) -> None:
    """Remove every object of any type that has this key."""
    signed = key - 2**32 if key >= 2**31 else key
    for kind in ("shm", "sem", "msg"):
        for line in Path("/proc/sysvipc", kind).read_text().splitlines()[1:]:
            f = line.split()
            if int(f[0]) == signed:
                remove_object(kind, int(f[1]))


NOBODY = 65534


def another_uid() -> int:
    """A uid other than ours, to give objects away to (IPC_SET lets an owner
    or creator do that without privileges): nobody (65534), or 65533 when the
    suite itself runs as nobody."""
    return NOBODY if os.geteuid() != NOBODY else NOBODY - 1
