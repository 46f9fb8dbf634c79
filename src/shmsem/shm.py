"""SharedMemory: a System V shared memory segment, attached in this process."""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import TYPE_CHECKING, Any, Optional, Union

from . import _core
from ._policy import CREATE_OR_OPEN_ATTEMPTS, check_create_mode, check_mode_arg, check_trusted
from .errors import (
    ClosedError,
    ExistsError,
    NotFoundError,
    RemovedError,
    format_key,
)
from .keys import IPC_PRIVATE, Key, normalize_key

if TYPE_CHECKING:
    import numpy

__all__ = ["SharedMemory", "SegmentStat"]


@dataclasses.dataclass(frozen=True)
class SegmentStat:
    """shmctl(IPC_STAT) of a segment.  Times are Unix seconds, 0 for never."""

    key: int
    id: int
    size: int
    mode: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    cpid: int
    lpid: int
    nattch: int
    atime: int
    dtime: int
    ctime: int
    #: IPC_RMID was called; the segment disappears when the last process detaches.
    removed: bool


def _segment_stat(shmid: int, known_key: Optional[int] = None) -> SegmentStat:
    (key, uid, gid, cuid, cgid, mode, size, atime, dtime, ctime, cpid, lpid,
     nattch) = _core.shm_stat(shmid, known_key)
    return SegmentStat(
        key=key, id=shmid, size=size, mode=mode & 0o777, uid=uid, gid=gid, cuid=cuid,
        cgid=cgid, cpid=cpid, lpid=lpid, nattch=nattch, atime=atime, dtime=dtime,
        ctime=ctime, removed=bool(mode & _core.SHM_DEST),
    )


def _check_size(size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if size < 1:
        raise ValueError(f"size must be at least 1 byte, not {size}")
    if size >= 2**63:
        raise ValueError(f"size {size} is too large")
    return size


class SharedMemory:
    """A System V shared memory segment, attached (shmat) in this process.

    Constructors:

    * ``SharedMemory(key, size)`` creates the segment or opens an existing one
      (``.created`` tells which);
    * ``SharedMemory.create(key, size)`` creates exclusively (ExistsError);
    * ``SharedMemory.open(key)`` opens an existing one (NotFoundError);
    * ``SharedMemory.from_id(shmid)`` attaches by id.

    Lifetime: ``detach()`` unmaps; ``remove()`` marks the segment for removal
    (IPC_RMID); ``close()`` detaches and, if ``owner`` is set, removes.  Only
    the handle that created the segment starts as its owner, and only in the
    process that created it: a forked child never removes it by accident.
    Garbage collection only detaches: it never removes.
    """

    # Class-level defaults let close() and __repr__ work on a half-built object.
    _seg: Optional[_core.Segment] = None
    key: int = IPC_PRIVATE
    id: int = -1
    created: bool = False
    _owner_pid: int = 0  # the process that owns the segment through this handle

    # -- construction ------------------------------------------------------

    def __init__(self, key: Key, size: int, *, mode: int = 0o600, trust: bool = False) -> None:
        """Create the segment, or open it if the key exists.

        Opening applies the key-squatting check (see ``trust``), and refuses a
        segment smaller than ``size`` (ExistsError)."""
        nkey = normalize_key(key)
        _check_size(size)
        check_create_mode("segment", mode)
        if nkey == IPC_PRIVATE:
            self._setup(nkey, _core.shmget(nkey, size, _core.IPC_CREAT | mode), False, True)
            return
        for _ in range(CREATE_OR_OPEN_ATTEMPTS):
            try:
                shmid = _core.shmget(nkey, size, _core.IPC_CREAT | _core.IPC_EXCL | mode)
            except ExistsError:
                pass
            else:
                self._setup(nkey, shmid, False, True)
                return
            try:
                shmid = _core.shmget(nkey, 0, 0)
                st = _segment_stat(shmid)
            except (NotFoundError, RemovedError):
                continue  # removed between our two calls: try creating again
            check_trusted("segment", nkey, shmid, st.uid, st.cuid, st.mode, mode, trust)
            if st.size < size:
                raise ExistsError(
                    f"segment key={format_key(nkey)} id={shmid} exists with {st.size} bytes, "
                    f"fewer than the {size} asked for", key=nkey, id=shmid,
                )
            self._setup(nkey, shmid, False, False)
            return
        raise ExistsError(
            f"segment key={format_key(nkey)} kept appearing and disappearing while "
            "being opened; another process is racing on this key", key=nkey,
        )

    @classmethod
    def create(cls, key: Key, size: int, *, mode: int = 0o600) -> "SharedMemory":
        """Create a new segment; raises ExistsError if the key is taken."""
        nkey = normalize_key(key)
        _check_size(size)
        check_create_mode("segment", mode)
        flags = _core.IPC_CREAT | mode | (0 if nkey == IPC_PRIVATE else _core.IPC_EXCL)
        self = cls.__new__(cls)
        self._setup(nkey, _core.shmget(nkey, size, flags), False, True)
        return self

    @classmethod
    def open(
        cls, key: int, *, readonly: bool = False, mode: int = 0o600, trust: bool = False
    ) -> "SharedMemory":
        """Attach an existing segment; its size comes from IPC_STAT.

        Raises NotFoundError if it does not exist, and ForeignObjectError if it
        belongs to another user or grants more than ``mode`` (unless trust)."""
        nkey = normalize_key(key)
        if nkey == IPC_PRIVATE:
            raise ValueError("IPC_PRIVATE segments cannot be opened by key; use from_id")
        check_mode_arg(mode)
        shmid = _core.shmget(nkey, 0, 0)
        st = _segment_stat(shmid)
        check_trusted("segment", nkey, shmid, st.uid, st.cuid, st.mode, mode, trust)
        self = cls.__new__(cls)
        self._setup(nkey, shmid, readonly, False)
        return self

    @classmethod
    def from_id(cls, shmid: int, *, readonly: bool = False) -> "SharedMemory":
        """Attach the segment with this id (no squatting check: an id is not
        guessable the way a key is).  Raises NotFoundError if there is none."""
        if not isinstance(shmid, int) or isinstance(shmid, bool):
            raise TypeError(f"shmid must be an int, not {type(shmid).__name__}")
        try:
            st = _segment_stat(shmid)
        except RemovedError:
            raise NotFoundError(
                f"shmctl(id={shmid}): no shared memory segment has this id", id=shmid
            ) from None
        self = cls.__new__(cls)
        self._setup(st.key, shmid, readonly, False)
        return self

    def _setup(self, key: int, shmid: int, readonly: bool, created: bool) -> None:
        self.key = key
        self.id = shmid
        try:
            self._seg = _core.Segment(shmid, readonly)
        except BaseException:
            if created:
                _core.shm_rmid(shmid)
            raise
        self.created = created
        self.owner = created

    @property
    def owner(self) -> bool:
        """Whether close() removes the segment: True only for the handle that
        created it, and only in the process that set it (a forked child that
        inherits the handle does not own the segment).  It can be set."""
        return self._owner_pid != 0 and self._owner_pid == os.getpid()

    @owner.setter
    def owner(self, value: bool) -> None:
        self._owner_pid = os.getpid() if value else 0

    # -- attributes --------------------------------------------------------

    @property
    def size(self) -> int:
        """Size in bytes, as IPC_STAT reports it."""
        return self._seg.size if self._seg is not None else 0

    @property
    def readonly(self) -> bool:
        """Whether this attach is read-only (SHM_RDONLY)."""
        return self._seg.readonly if self._seg is not None else False

    @property
    def closed(self) -> bool:
        """True once detached (or closed)."""
        return self._seg is None or not self._seg.attached

    @property
    def buf(self) -> memoryview:
        """A new zero-copy memoryview of the whole segment (read-only for a
        read-only attach).  detach() refuses while any view is alive."""
        return memoryview(self._attached())

    def _attached(self) -> _core.Segment:
        seg = self._seg
        if seg is None or not seg.attached:
            raise ClosedError(f"segment key={format_key(self.key)} id={self.id} is detached")
        return seg

    # -- framed messages (the .NET helper's format) ------------------------

    def write(self, data: Union[bytes, bytearray, memoryview, str]) -> int:
        """Write one frame: int32 little-endian length, then the payload (str is
        encoded as UTF-8).  Returns the payload length.  Raises ValueError if it
        does not fit; never truncates."""
        return self._attached().write_frame(data)

    def read(self) -> bytes:
        """Read the current frame's payload.  Raises FrameError if the header is
        negative or does not fit the segment."""
        return self._attached().read_frame()

    def read_string(self) -> str:
        """read(), decoded as UTF-8 (UnicodeDecodeError if it is not)."""
        return self._attached().read_frame().decode("utf-8")

    def read_at(self, offset: int, n: int) -> bytes:
        """Copy ``n`` bytes at ``offset`` (ValueError outside the segment)."""
        return self._attached().read_at(offset, n)

    def write_at(self, offset: int, data: Union[bytes, bytearray, memoryview]) -> int:
        """Copy ``data`` in at ``offset`` (ValueError outside the segment)."""
        return self._attached().write_at(offset, data)

    def ndarray(self, shape: Union[int, tuple[int, ...]], dtype: Any, offset: int = 0) -> "numpy.ndarray[Any, Any]":
        """A NumPy array over the segment (no copy).  NumPy is imported here,
        lazily; the array keeps the segment attached until it is deleted."""
        import numpy

        if offset < 0:
            raise ValueError(f"offset must be non-negative, not {offset}")
        # An object dtype would read PyObject pointers out of shared memory,
        # and any bytes a peer wrote there would be dereferenced.
        if numpy.dtype(dtype).hasobject:
            raise TypeError(f"ndarray over shared memory cannot hold Python objects "
                            f"(dtype {numpy.dtype(dtype)})")
        array: numpy.ndarray[Any, Any] = numpy.ndarray(
            shape, dtype=dtype, buffer=self.buf, offset=offset
        )
        return array

    # -- kernel view -------------------------------------------------------

    def stat(self) -> SegmentStat:
        """IPC_STAT of the segment, as a frozen dataclass."""
        return _segment_stat(self.id, self.key)

    # -- lifetime ----------------------------------------------------------

    def detach(self) -> None:
        """Unmap this process's view.  Raises BufferError while a memoryview or
        ndarray of it is alive.  Idempotent."""
        if self._seg is not None:
            self._seg.detach()

    def remove(self) -> None:
        """Mark the segment for removal (IPC_RMID): it disappears once every
        process has detached, and its key is free at once."""
        _core.shm_rmid(self.id, self.key)

    def close(self) -> None:
        """Detach, and remove the segment too if this handle owns it.
        Tolerates a segment that someone else already removed."""
        self.detach()
        if self.owner and self.id >= 0:
            self.owner = False
            try:
                _core.shm_rmid(self.id, self.key)
            except (RemovedError, NotFoundError):
                pass

    def __enter__(self) -> "SharedMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Warn only: removing here would be a side effect of garbage collection.
        if self.owner and not self.closed:
            warnings.warn(
                f"unclosed owner {self!r}: the segment stays in the system; "
                "call close() (or use 'with') to remove it",
                ResourceWarning, source=self,
            )

    def __reduce__(self) -> Any:
        if self.closed:
            raise ClosedError("cannot pickle a detached SharedMemory")
        return (_rebuild, (self.id, self.readonly))

    def __repr__(self) -> str:
        state = "detached" if self.closed else ("read-only" if self.readonly else "attached")
        return (
            f"<{type(self).__name__} key={format_key(self.key)} id={self.id} size={self.size} "
            f"owner={self.owner} {state}>"
        )


def _rebuild(shmid: int, readonly: bool) -> SharedMemory:
    return SharedMemory.from_id(shmid, readonly=readonly)
