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

import time
from typing import Any, Optional

from . import _core
from ._policy import CREATE_OR_OPEN_ATTEMPTS, check_mode_arg
from .errors import ClosedError, ExistsError, FormatError, NotFoundError, RemovedError, format_key
from .keys import Key, normalize_key
from .shm import SharedMemory

__all__ = ["Mailbox"]

READY_WAIT = 0.1


def _check_capacity(capacity: int) -> int:
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1 byte, not {capacity}")
    if capacity > 2**40:
        raise ValueError(f"capacity {capacity} is too large")
    return capacity


class Mailbox(_core.MailboxBase):
    """The latest value, shared between processes.

    * ``Mailbox(key, capacity)`` creates or opens; ``.create`` / ``.open``.
      ``capacity`` is the largest value in bytes.
    * ``publish(data) -> seq``; ``read() -> (seq, bytes)`` ((0, b'') before
      the first publish); ``wait(after_seq, timeout=None)`` returns the first
      value newer than ``after_seq`` as ``(seq, bytes)``, or None on timeout.
    """

    _shm: Optional[SharedMemory] = None
    key: int = 0
    id: int = -1
    created: bool = False

    def __init__(
        self, key: Key, capacity: int, *, mode: int = 0o600, trust: bool = False
    ) -> None:
        nkey = normalize_key(key)
        cap = _check_capacity(capacity)
        check_mode_arg(mode)
        size = _core.mailbox_segment_size(cap)
        for _ in range(CREATE_OR_OPEN_ATTEMPTS):
            try:
                shm = SharedMemory.create(nkey, size, mode=mode)
            except ExistsError:
                try:
                    shm = SharedMemory.open(nkey, mode=mode, trust=trust)
                except (NotFoundError, RemovedError):
                    continue
            self._setup(shm, cap)
            return
        raise ExistsError(
            f"mailbox key={format_key(nkey)} kept appearing and disappearing while being "
            "opened; another process is racing on this key", key=nkey,
        )

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

    def _setup(self, shm: SharedMemory, capacity: int) -> None:
        try:
            seg = shm._attached()
            if not self._attach(seg, shm.created, capacity):
                deadline = time.monotonic() + READY_WAIT
                while not self._attach(seg, False):
                    if time.monotonic() > deadline:
                        raise FormatError(
                            f"segment key={format_key(shm.key)} id={shm.id} has no Mailbox "
                            "header (its creator did not initialise it)",
                            key=shm.key, id=shm.id,
                        )
                    time.sleep(0.001)
        except BaseException:
            shm.close()
            raise
        self._shm = shm
        self.key = shm.key
        self.id = shm.id
        self.created = shm.created

    def stats(self) -> dict[str, int]:
        """Header counters: capacity, seq, current_cell, waiting,
        writer_lock_pid, recoveries."""
        return dict(self._stats())

    @property
    def owner(self) -> bool:
        """True when this handle created the segment: close() then removes it."""
        return self._shm is not None and self._shm.owner

    @owner.setter
    def owner(self, value: bool) -> None:
        if self._shm is not None:
            self._shm.owner = value

    @property
    def closed(self) -> bool:
        return self._shm is None or self._shm.closed

    def remove(self) -> None:
        """Mark the segment for removal (IPC_RMID)."""
        if self._shm is not None:
            self._shm.remove()

    def close(self) -> None:
        """Detach, and remove the segment if this handle owns it."""
        self._detach_core()
        if self._shm is not None:
            self._shm.close()

    def __enter__(self) -> "Mailbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        if self.closed:
            raise ClosedError("cannot pickle a closed Mailbox")
        return (Mailbox.from_id, (self.id,))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"capacity={self.capacity}"
        return f"<Mailbox key={format_key(self.key)} id={self.id} {state}>"
