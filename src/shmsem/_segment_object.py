"""What Channel and Mailbox share: one segment, holding a header that a C base
type attaches to, created or opened by key, with SharedMemory's lifetime rules
(only the creating handle owns the segment; close() detaches and removes only
when owner)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from ._policy import CREATE_OR_OPEN_ATTEMPTS
from .errors import ClosedError, ExistsError, FormatError, NotFoundError, RemovedError, format_key
from .shm import SharedMemory

if TYPE_CHECKING:
    from . import _core

#: How long opening waits for a creator to finish writing the header.
READY_WAIT = 0.1

# `with Channel(...) as ch` keeps ch a Channel (typing.Self is Python 3.11+).
_Self = TypeVar("_Self", bound="SegmentObject")


class SegmentObject:
    """Mixin over a C base type that provides ``_attach(segment, create,
    *extra) -> bool`` (False while the header is not initialised yet),
    ``_detach_core()`` and ``capacity``."""

    _shm: Optional[SharedMemory] = None
    key: int = 0
    id: int = -1
    created: bool = False

    if TYPE_CHECKING:  # provided by the C base type
        capacity: int

        def _attach(self, segment: _core.Segment, create: bool = False, *extra: int) -> bool: ...

        def _detach_core(self) -> None: ...

    @classmethod
    def _create_or_open_segment(
        cls, key: int, size: int, mode: int, trust: bool
    ) -> SharedMemory:
        """Create a segment of ``size`` bytes, or open the existing one
        (whatever its size: the header says what it holds)."""
        for _ in range(CREATE_OR_OPEN_ATTEMPTS):
            try:
                return SharedMemory.create(key, size, mode=mode)
            except ExistsError:
                try:
                    return SharedMemory.open(key, mode=mode, trust=trust)
                except (NotFoundError, RemovedError):
                    continue  # removed between the two calls: create again
        raise ExistsError(
            f"{cls.__name__.lower()} key={format_key(key)} kept appearing and disappearing "
            "while being opened; another process is racing on this key", key=key,
        )

    def _setup(self, shm: SharedMemory, *extra: int) -> None:
        """Attach the C base to ``shm`` (initialising the header if this handle
        created it), waiting briefly for another creator to finish.  Closes
        ``shm`` on failure, which removes it if this handle created it."""
        try:
            seg = shm._attached()
            if not self._attach(seg, shm.created, *extra):
                deadline = time.monotonic() + READY_WAIT
                while not self._attach(seg, False):
                    if time.monotonic() > deadline:
                        raise FormatError(
                            f"segment key={format_key(shm.key)} id={shm.id} has no "
                            f"{type(self).__name__} header (its creator did not initialise it)",
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
        """Mark the segment for removal (IPC_RMID): the key is free at once,
        and processes still attached keep using it until they detach."""
        if self._shm is not None:
            self._shm.remove()

    def close(self) -> None:
        """Detach, and remove the segment if this handle owns it.  Another
        thread waiting in this handle gets ClosedError.  All or nothing:
        while a view of the segment (memoryview, ndarray) is alive it raises
        BufferError and changes nothing; the handle stays open."""
        shm = self._shm
        if shm is not None:
            # First: the one step that may refuse (BufferError, with views
            # alive) refuses before anything changes.  Once it succeeds no
            # operation and no view can start, and operations in progress
            # find the segment closing; _detach_core wakes those asleep.
            shm.detach()
        self._detach_core()
        if shm is not None:
            shm.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        if self.closed:
            raise ClosedError(f"cannot pickle a closed {type(self).__name__}")
        return (type(self).from_id, (self.id,))  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"capacity={self.capacity}"
        return f"<{type(self).__name__} key={format_key(self.key)} id={self.id} {state}>"
