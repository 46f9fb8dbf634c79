"""Creation policy shared by every object type: create-or-open with retries,
and the key-squatting check.

A local user can pre-create a well-known key with a permissive mode and then
read or inject data.  Opening by key therefore refuses (ForeignObjectError) an
object that another user owns or created, or whose mode grants more than the
caller asked for, unless the caller passes ``trust=True`` or is root opening a
root-owned object.
"""

from __future__ import annotations

import os

from .errors import ForeignObjectError, format_key

#: How many times create-or-open retries when the object vanishes or appears
#: between its exclusive create and its open (a race with another process).
CREATE_OR_OPEN_ATTEMPTS = 20


def check_mode_arg(mode: int) -> int:
    if not isinstance(mode, int) or isinstance(mode, bool):
        raise TypeError(f"mode must be an int, not {type(mode).__name__}")
    if mode & ~0o777:
        raise ValueError(f"mode {mode:#o} has bits outside 0o777")
    return mode


#: What the owner must be granted for shmsem to use an object it creates.
#: A segment is attached for reading and writing; a semaphore set is read
#: (IPC_STAT) and altered (its values set, the "ready" mark); a message queue
#: is read to open it by key and to receive, while sending may be left to
#: others (a receive-only owner, 0o420, is a sound design).
OWNER_NEEDS = {"segment": 0o600, "semaphore set": 0o600, "message queue": 0o400}


def check_create_mode(what: str, mode: int) -> int:
    """check_mode_arg for a call that may create ``what`` (a key of
    OWNER_NEEDS): also a ValueError, before anything is created, for a mode
    that denies the owner what shmsem needs to use the object."""
    check_mode_arg(mode)
    need = OWNER_NEEDS[what]
    if mode & need != need:
        missing = need & ~mode
        denied = " and ".join(n for bit, n in ((0o400, "read"), (0o200, "write")) if missing & bit)
        raise ValueError(
            f"mode {mode:#o} denies the owner {denied} ({missing:#o}): a {what} made with it "
            f"could not be used by its creator; give the owner at least {need:#o}"
        )
    return mode


def check_trusted(
    what: str, key: int, id: int, uid: int, cuid: int, mode: int, wanted_mode: int, trust: bool
) -> None:
    """Raise ForeignObjectError unless the object is safe to open."""
    if trust:
        return
    euid = os.geteuid()
    if euid == 0 and uid == 0 and cuid == 0:
        return
    where = f"{what} key={format_key(key)} id={id}"
    if uid != euid or cuid != euid:
        raise ForeignObjectError(
            f"{where} is owned by uid {uid} (created by uid {cuid}), not by you (uid {euid}); "
            "someone may have pre-created this key. Pass trust=True if you expect that.",
            key=key, id=id,
        )
    extra = mode & 0o777 & ~wanted_mode
    if extra:
        raise ForeignObjectError(
            f"{where} has mode {mode & 0o777:#o}, which grants {extra:#o} beyond the "
            f"{wanted_mode:#o} asked for; pass mode={mode & 0o777:#o} or trust=True "
            "if that is expected.",
            key=key, id=id,
        )
