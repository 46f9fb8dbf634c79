"""Keys: range checks, IPC_PRIVATE, ftok and key_from_name.

A key is an int in [-2**31, 2**32).  The kernel's key_t is a signed 32-bit
int, so shmsem stores keys in that signed form (what IPC_STAT and
/proc/sysvipc report) and shows them as 0x%08x, as ``ipcs`` does.  Values
outside the range raise ValueError; nothing is ever truncated.
"""

from __future__ import annotations

import os
from typing import Optional, Union

from . import _core

__all__ = ["IPC_PRIVATE", "Key", "normalize_key", "ftok", "key_from_name"]

#: Ask the kernel for a new object that no key can reach.
IPC_PRIVATE: int = _core.IPC_PRIVATE

Key = Optional[int]

_FNV_OFFSET_BASIS = 2166136261
_FNV_PRIME = 16777619


def normalize_key(key: Key) -> int:
    """Return ``key`` as the kernel's signed 32-bit key_t.

    ``None`` means IPC_PRIVATE.  Raises TypeError for a non-int (bool
    included) and ValueError outside [-2**31, 2**32).
    """
    if key is None:
        return IPC_PRIVATE
    if not isinstance(key, int) or isinstance(key, bool):
        raise TypeError(f"key must be an int or None, not {type(key).__name__}")
    if not -(2**31) <= key < 2**32:
        raise ValueError(f"key {key!r} is out of range: keys are 32-bit, in [-2**31, 2**32)")
    key &= 0xFFFFFFFF
    return key - 2**32 if key >= 2**31 else key


def ftok(path: Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"], proj_id: int) -> int:
    """ftok(3): a key derived from an existing file's inode and device and a
    project id in [1, 255].  Raises NotFoundError if the path does not exist."""
    return normalize_key(_core.ftok(path, proj_id))


def key_from_name(name: str) -> int:
    """The key the .NET helper's GetDeterministicHashCode gives for ``name``.

    FNV-1a over the string's UTF-16 code units, read as a signed int32, then
    its absolute value; the empty string gives 0 (which is IPC_PRIVATE, so do
    not use it as a name).  The one hash whose absolute value does not fit an
    int32 (0x80000000) makes .NET throw OverflowException; this raises
    ValueError for it instead of inventing a key .NET cannot produce.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not name:
        return 0
    h = _FNV_OFFSET_BASIS
    units = name.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(units), 2):
        h ^= units[i] | (units[i + 1] << 8)
        h = (h * _FNV_PRIME) & 0xFFFFFFFF
    signed = h - 2**32 if h >= 2**31 else h
    if signed == -(2**31):
        raise ValueError(
            f"{name!r} hashes to 0x80000000, whose absolute value overflows an int32; "
            "the .NET helper throws OverflowException for it, so pick another name"
        )
    return abs(signed)
