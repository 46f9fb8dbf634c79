"""Exception classes and the errno -> class mapping.

Every class derives from :class:`ShmsemError` *and* from the builtin a caller
would naturally catch, so both ``except FileNotFoundError`` and
``except shmsem.NotFoundError`` work.  Messages name the syscall, the key (in
hex) and the id; when the kernel refuses a size or a count they also name the
sysctl to raise.

Who caused it: :class:`ClosedError` means *your* code closed or detached the
handle; :class:`RemovedError` means someone removed the object itself.
"""

from __future__ import annotations

import errno as _errno
import os
import queue as _queue
from typing import Any, Optional

__all__ = [
    "ShmsemError",
    "NotFoundError",
    "ExistsError",
    "PermissionDeniedError",
    "WouldBlockError",
    "QueueEmptyError",
    "QueueFullError",
    "RemovedError",
    "ClosedError",
    "FrameError",
    "FormatError",
    "ForeignObjectError",
    "LimitError",
    "format_key",
]


def format_key(key: Optional[int]) -> str:
    """A key as the kernel and ``ipcs`` show it: 0x followed by 8 hex digits."""
    if key is None:
        return "?"
    return f"0x{key & 0xFFFFFFFF:08x}"


class ShmsemError(Exception):
    """Root of every shmsem exception.

    Attributes (each may be None): ``syscall``, ``key``, ``id``, ``errno``.
    """

    syscall: Optional[str] = None
    key: Optional[int] = None
    id: Optional[int] = None

    def __init__(
        self,
        message: str = "",
        *,
        syscall: Optional[str] = None,
        key: Optional[int] = None,
        id: Optional[int] = None,
        errno: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.syscall = syscall
        self.key = key
        self.id = id
        # OSError subclasses have an errno slot; the others get an attribute.
        self.errno = errno

    def __reduce__(self) -> Any:
        return (
            _rebuild,
            (
                type(self),
                str(self),
                {"syscall": self.syscall, "key": self.key, "id": self.id, "errno": self.errno},
            ),
        )

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _rebuild(cls: type[ShmsemError], message: str, attrs: dict[str, Any]) -> ShmsemError:
    return cls(message, **attrs)


class NotFoundError(ShmsemError, FileNotFoundError):
    """No object has that key or id."""


class ExistsError(ShmsemError, FileExistsError):
    """The key is already taken (exclusive create), or by an incompatible object."""


class PermissionDeniedError(ShmsemError, PermissionError):
    """The kernel's permission check refused, or the handle is read-only."""


class ForeignObjectError(PermissionDeniedError):
    """The object behind the key belongs to another user or is more permissive
    than requested: possibly a squatter.  Pass ``trust=True`` to accept it."""


class WouldBlockError(ShmsemError, BlockingIOError):
    """A non-blocking call (or one whose timeout expired) could not proceed."""


class QueueEmptyError(WouldBlockError, _queue.Empty):
    """A queue had nothing to receive (not blocking, or the timeout expired).
    Catch it as ``queue.Empty``, as for ``queue.Queue`` and Channel; it is
    also a WouldBlockError, which MessageQueue raised before."""


class QueueFullError(WouldBlockError, _queue.Full):
    """A queue had no room to send (not blocking, or the timeout expired).
    Catch it as ``queue.Full``; it is also a WouldBlockError."""


class RemovedError(ShmsemError, OSError):
    """The object was removed (IPC_RMID) by someone, possibly while you waited."""


class ClosedError(ShmsemError, ValueError):
    """This handle was closed or detached by your own code."""


class FrameError(ShmsemError, ValueError):
    """A frame header in shared memory is corrupt (negative or too large)."""


class FormatError(ShmsemError, ValueError):
    """A segment's header does not match the Channel or Mailbox format, or its
    contents are inconsistent (corrupted by a writer)."""


class LimitError(ShmsemError, OSError):
    """The kernel refused a size or a count; the message names the sysctl to raise."""


# ---------------------------------------------------------------------------
# errno -> class, for errors coming from syscalls.

_ON_EXISTING_ID = ("shmat", "shmctl", "semop", "semctl", "msgsnd", "msgrcv", "msgctl")

_LIMIT_HINTS: dict[tuple[str, int], str] = {
    ("shmget", _errno.EINVAL): "the size is outside what the kernel allows: at least 1 byte, "
    "at most kernel.shmmax (raise it with sysctl -w kernel.shmmax=BYTES)",
    ("shmget", _errno.ENOSPC): "the system is out of shared memory segments or pages; "
    "raise kernel.shmmni (count) or kernel.shmall (total pages), or run 'shmsem gc'",
    ("shmget", _errno.ENOMEM): "not enough memory for the segment; "
    "raise kernel.shmall or free memory",
    ("semget", _errno.EINVAL): "too many semaphores in one set; "
    "raise SEMMSL, the 1st field of kernel.sem",
    ("semget", _errno.ENOSPC): "the system is out of semaphore sets or semaphores; "
    "raise SEMMNI (4th field) or SEMMNS (2nd field) of kernel.sem",
    ("semop", _errno.E2BIG): "too many operations in one call; "
    "raise SEMOPM, the 3rd field of kernel.sem",
    ("msgget", _errno.ENOSPC): "the system is out of message queues; raise kernel.msgmni",
    ("msgsnd", _errno.ENOMEM): "the kernel could not allocate the message; "
    "lower the message size or raise kernel.msgmax",
    ("shmat", _errno.ENOMEM): "no room in this process's address space for the segment; "
    "raise the address-space limit (ulimit -v, RLIMIT_AS) or attach a smaller segment",
}

_PHRASES = {
    _errno.ENOENT: "no object with this key",
    _errno.EEXIST: "an object with this key already exists",
    _errno.EACCES: "permission denied",
    _errno.EPERM: "operation not permitted",
    _errno.EAGAIN: "the operation would block",
    _errno.EIDRM: "the object was removed",
}


def _what(syscall: Optional[str]) -> str:
    if syscall is None:
        return "object"
    if syscall.startswith("shm"):
        return "shared memory segment"
    if syscall.startswith("sem"):
        return "semaphore set"
    if syscall.startswith("msg"):
        return "message queue"
    return "object"


def _context(syscall: Optional[str], key: Optional[int], id: Optional[int]) -> str:
    parts = []
    if key is not None:
        parts.append(f"key={format_key(key)}")
    if id is not None:
        parts.append(f"id={id}")
    where = ", ".join(parts)
    name = syscall or "shmsem"
    return f"{name}({where})" if where else name


def from_errno(
    err: int,
    syscall: Optional[str],
    key: Optional[int] = None,
    id: Optional[int] = None,
    detail: Optional[str] = None,
) -> BaseException:
    """Build the exception for a failed syscall."""
    base = (syscall or "").split("(")[0]
    ctx = _context(syscall, key, id)
    code = _errno.errorcode.get(err, str(err))
    what = _what(syscall)
    tail = f" ({detail})" if detail else ""

    hint = _LIMIT_HINTS.get((base, err))
    if hint is not None:
        return LimitError(
            f"{ctx}: {os.strerror(err)} [{code}]: {hint}{tail}",
            syscall=syscall, key=key, id=id, errno=err,
        )
    if base == "semop" and err == _errno.EFBIG:
        return ValueError(f"{ctx}: a semaphore index is beyond the end of the set [{code}]{tail}")
    if err == _errno.ERANGE:
        return ValueError(
            f"{ctx}: a semaphore value would leave [0, SEMVMX=32767] [{code}]{tail}"
        )
    if base in _ON_EXISTING_ID and err in (_errno.EIDRM, _errno.EINVAL):
        return RemovedError(
            f"{ctx}: the {what} was removed{tail}", syscall=syscall, key=key, id=id, errno=err
        )
    cls: type[ShmsemError]
    if err == _errno.ENOENT:
        cls = NotFoundError
        msg = f"no {what} exists with this key"
    elif err == _errno.EEXIST:
        cls = ExistsError
        msg = f"a {what} with this key already exists"
    elif err in (_errno.EACCES, _errno.EPERM):
        cls = PermissionDeniedError
        msg = f"permission denied on the {what} (see its owner and mode with 'shmsem ls')"
    elif err == _errno.EAGAIN:
        cls = WouldBlockError
        msg = "the operation would block"
    elif err == _errno.EIDRM:
        cls = RemovedError
        msg = f"the {what} was removed"
    else:
        return OSError(err, f"{ctx}: {os.strerror(err)} [{code}]{tail}")
    return cls(f"{ctx}: {msg} [{code}]{tail}", syscall=syscall, key=key, id=id, errno=err)


def _from_core(
    kind: str,
    err: int,
    syscall: Optional[str],
    key: Optional[int],
    id: Optional[int],
    detail: Optional[str],
) -> BaseException:
    """Factory called by the C core for every error it raises."""
    if kind == "os":
        return from_errno(err, syscall, key, id, detail)
    ctx = _context(syscall or "segment", key, id)
    message = f"{ctx}: {detail}" if (key is not None or id is not None or syscall) else str(detail)
    if kind == "closed":
        return ClosedError(message, syscall=syscall, key=key, id=id)
    if kind == "frame":
        return FrameError(message, syscall=syscall, key=key, id=id)
    if kind == "format":
        return FormatError(message, syscall=syscall, key=key, id=id)
    if kind == "readonly":
        return PermissionDeniedError(message, syscall=syscall, key=key, id=id)
    if kind == "limit":
        return LimitError(message, syscall=syscall, key=key, id=id, errno=err or None)
    return ShmsemError(message, syscall=syscall, key=key, id=id)


def _set_module() -> None:
    # Exceptions show and pickle as shmsem.X, where users import them from.
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type):
            obj.__module__ = "shmsem"


_set_module()
