"""Mailbox: a latest-value register in one shared memory segment.

``publish(data)`` replaces the value and returns its sequence number;
``read()`` returns the latest ``(seq, bytes)``; ``wait(after_seq)`` waits for
a newer one.  Readers take no lock and never block the writer, and they never
see a torn value: two seqlocked cells, the writer always filling the one that
is not current.  A writer killed mid-publish leaves the previous value
readable; writers exclude each other with a lock that is taken over if its
holder dies.  The binary layout is in docs/protocol.md.
"""

from __future__ import annotations

import dataclasses

from . import _core
from ._policy import check_mode_arg
from ._segment_object import SegmentObject
from .keys import Key, normalize_key
from .shm import SharedMemory

__all__ = ["Mailbox", "MailboxStats"]


@dataclasses.dataclass(frozen=True)
class MailboxStats:
    """A snapshot of a Mailbox's header counters."""

    #: the largest value in bytes
    capacity: int
    #: sequence number of the latest value (values ever published); 0 before the first
    seq: int
    #: the cell (0 or 1) that holds the latest value
    current_cell: int
    #: a reader sleeps waiting for a newer value
    readers_waiting: bool
    #: thread id holding the writer lock, as the holder's own PID namespace
    #: numbers it (the pid of a single-threaded process); 0 if free
    writer_lock_pid: int
    #: locks taken over from holders that died, by any process, ever
    recoveries: int


def _check_capacity(capacity: int) -> int:
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1 byte, not {capacity}")
    if capacity > 2**40:
        raise ValueError(f"capacity {capacity} is too large")
    return capacity


class Mailbox(SegmentObject, _core.MailboxBase):
    """The latest value, shared between processes.

    * ``Mailbox(key, capacity)`` creates or opens; ``.create`` / ``.open``.
      ``capacity`` is the largest value in bytes.
    * ``publish(data) -> seq``; ``read() -> (seq, bytes)`` ((0, b'') before
      the first publish); ``wait(after_seq, timeout=None)`` returns the first
      value newer than ``after_seq`` as ``(seq, bytes)``, or None on timeout.
    """

    def __init__(
        self, key: Key, capacity: int, *, mode: int = 0o600, trust: bool = False
    ) -> None:
        nkey = normalize_key(key)
        cap = _check_capacity(capacity)
        check_mode_arg(mode)
        shm = self._create_or_open_segment(nkey, _core.mailbox_segment_size(cap), mode, trust)
        self._setup(shm, cap)

    @classmethod
    def create(cls, key: Key, capacity: int, *, mode: int = 0o600) -> "Mailbox":
        """Create a new mailbox (ExistsError if the key is taken)."""
        cap = _check_capacity(capacity)
        shm = SharedMemory.create(key, _core.mailbox_segment_size(cap), mode=mode)
        self = cls.__new__(cls)
        self._setup(shm, cap)
        return self

    @classmethod
    def open(cls, key: int, *, mode: int = 0o600, trust: bool = False) -> "Mailbox":
        """Open an existing mailbox (NotFoundError, FormatError, ForeignObjectError)."""
        shm = SharedMemory.open(key, mode=mode, trust=trust)
        self = cls.__new__(cls)
        self._setup(shm, 0)
        return self

    @classmethod
    def from_id(cls, shmid: int) -> "Mailbox":
        """Open the mailbox in the segment with this id."""
        shm = SharedMemory.from_id(shmid)
        self = cls.__new__(cls)
        self._setup(shm, 0)
        return self

    def stats(self) -> MailboxStats:
        """A snapshot of the header counters."""
        s = self._stats()
        return MailboxStats(
            capacity=s["capacity"], seq=s["seq"], current_cell=s["current_cell"],
            readers_waiting=bool(s["waiting"]), writer_lock_pid=s["writer_lock_pid"],
            recoveries=s["recoveries"],
        )
