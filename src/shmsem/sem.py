"""System V semaphores: SemaphoreSet, Semaphore and Lock.

Initialisation is race-free.  semget() creates a set with every value 0 and
there is no atomic "create with values", so the creator sets the values and
then marks the set ready with one semop, which stamps sem_otime.  Whoever
opens a set through create-or-open and finds sem_otime still 0 waits a short,
bounded time (READY_WAIT seconds) for that mark before going on.  open() never
waits: sets made by other programs (the .NET helper, sysv_ipc, C code) are not
marked until their first semop, and must open at once.
"""

from __future__ import annotations

import dataclasses
import errno
import time
from typing import Any, Iterable, Optional, Sequence, Tuple, Union

from . import _core
from ._policy import CREATE_OR_OPEN_ATTEMPTS, check_create_mode, check_mode_arg, check_trusted
from .errors import ExistsError, NotFoundError, RemovedError, format_key, from_errno
from .keys import IPC_PRIVATE, Key, normalize_key

__all__ = ["SemaphoreSet", "Semaphore", "Lock", "SemaphoreSetStat", "SEMVMX"]

#: The largest value a System V semaphore can hold.
SEMVMX: int = _core.SEMVMX

#: How long create-or-open waits for another creator to mark a new set ready.
READY_WAIT = 0.1

Op = Union[Tuple[int, int], Tuple[int, int, int]]


@dataclasses.dataclass(frozen=True)
class SemaphoreSetStat:
    """semctl(IPC_STAT) of a set.  Times are Unix seconds, 0 for never."""

    key: int
    id: int
    mode: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    nsems: int
    otime: int
    ctime: int


def _set_stat(semid: int, known_key: Optional[int] = None) -> SemaphoreSetStat:
    key, uid, gid, cuid, cgid, mode, nsems, otime, ctime = _core.sem_stat(semid, known_key)
    return SemaphoreSetStat(
        key=key, id=semid, mode=mode & 0o777, uid=uid, gid=gid, cuid=cuid, cgid=cgid,
        nsems=nsems, otime=otime, ctime=ctime,
    )


def _check_count(count: int) -> None:
    if not isinstance(count, int) or isinstance(count, bool):
        raise TypeError(f"count must be an int, not {type(count).__name__}")
    if count < 1:
        raise ValueError(f"a semaphore set needs at least 1 member, not {count}")
    if count > 2**31 - 1:  # semget takes an int; SEMMSL is far lower anyway
        raise from_errno(errno.EINVAL, "semget", detail=f"a set of {count} members")


def _check_values(count: int, values: Sequence[int]) -> list[int]:
    _check_count(count)
    vals = list(values)
    if len(vals) != count:
        raise ValueError(f"{len(vals)} values given for a set of {count}")
    for v in vals:
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"semaphore values must be ints, not {type(v).__name__}")
        if not 0 <= v <= SEMVMX:
            raise ValueError(f"semaphore value {v} is out of range [0, SEMVMX={SEMVMX}]")
    return vals


def _initial_values(count: int, values: Optional[Sequence[int]]) -> Optional[list[int]]:
    """Checked values for a new set; None for all zeros, so that nothing of
    ``count`` length is built before the kernel has accepted the count."""
    if values is None:
        _check_count(count)
        return None
    return _check_values(count, values)


def _create(key: int, count: int, values: Optional[list[int]], mode: int,
            exclusive: bool) -> int:
    """Create a set, set its values (None: all zero) and mark it ready.
    Raises ExistsError, and ValueError for a mode the owner could not use."""
    check_create_mode("semaphore set", mode)
    flags = _core.IPC_CREAT | mode | (_core.IPC_EXCL if exclusive else 0)
    semid: int = _core.semget(key, count, flags)
    try:
        if values is not None and any(values):
            _core.sem_setall(semid, values)
        # A net-zero semop on member 0 stamps sem_otime: the "ready" mark.
        mark = [(0, -1), (0, 1)] if values and values[0] > 0 else [(0, 1), (0, -1)]
        _core.semop(semid, mark, blocking=False)
    except BaseException:
        _core.semctl(semid, 0, _core.IPC_RMID)
        raise
    return semid


def _wait_ready(semid: int) -> None:
    deadline = time.monotonic() + READY_WAIT
    while _core.sem_stat(semid)[7] == 0 and time.monotonic() < deadline:
        time.sleep(0.001)


def _create_or_open(
    key: int, count: int, values: Optional[list[int]], mode: int, trust: bool
) -> tuple[int, bool]:
    if key == IPC_PRIVATE:
        return _create(key, count, values, mode, exclusive=False), True
    for _ in range(CREATE_OR_OPEN_ATTEMPTS):
        try:
            return _create(key, count, values, mode, exclusive=True), True
        except ExistsError:
            pass
        try:
            semid = _core.semget(key, 0, 0)
            st = _set_stat(semid)
        except (NotFoundError, RemovedError):
            continue
        check_trusted("semaphore set", key, semid, st.uid, st.cuid, st.mode, mode, trust)
        if st.nsems != count:
            raise ExistsError(
                f"semaphore set key={format_key(key)} id={semid} exists with {st.nsems} "
                f"members, not {count}", key=key, id=semid,
            )
        if st.otime == 0:
            _wait_ready(semid)
        return semid, False
    raise ExistsError(
        f"semaphore set key={format_key(key)} kept appearing and disappearing while being "
        "opened; another process is racing on this key", key=key,
    )


def _open(key: int, mode: int, trust: bool) -> tuple[int, SemaphoreSetStat]:
    if key == IPC_PRIVATE:
        raise ValueError("IPC_PRIVATE sets cannot be opened by key; use from_id")
    check_mode_arg(mode)
    semid = _core.semget(key, 0, 0)
    st = _set_stat(semid)
    check_trusted("semaphore set", key, semid, st.uid, st.cuid, st.mode, mode, trust)
    return semid, st


def _from_id(semid: int) -> SemaphoreSetStat:
    if not isinstance(semid, int) or isinstance(semid, bool):
        raise TypeError(f"semid must be an int, not {type(semid).__name__}")
    try:
        return _set_stat(semid)
    except RemovedError:
        raise NotFoundError(f"semctl(id={semid}): no semaphore set has this id", id=semid) from None


class SemaphoreSet:
    """A System V semaphore set of ``count`` members.

    ``SemaphoreSet(key, count, values=None)`` creates (values default to 0) or
    opens; ``.create``, ``.open`` and ``.from_id`` do one or the other.
    ``op()`` applies several operations atomically; ``set[i]`` is a Semaphore
    view of member i.
    """

    key: int = IPC_PRIVATE
    id: int = -1
    created: bool = False
    _nsems: int = 0

    def __init__(
        self,
        key: Key,
        count: int,
        *,
        values: Optional[Sequence[int]] = None,
        mode: int = 0o600,
        trust: bool = False,
    ) -> None:
        nkey = normalize_key(key)
        vals = _initial_values(count, values)
        check_mode_arg(mode)
        semid, created = _create_or_open(nkey, count, vals, mode, trust)
        self._setup(nkey, semid, count, created)

    @classmethod
    def create(
        cls, key: Key, count: int, *, values: Optional[Sequence[int]] = None, mode: int = 0o600
    ) -> "SemaphoreSet":
        """Create a new set (ExistsError if the key is taken)."""
        nkey = normalize_key(key)
        vals = _initial_values(count, values)
        check_mode_arg(mode)
        self = cls.__new__(cls)
        self._setup(nkey, _create(nkey, count, vals, mode, exclusive=True), count, True)
        return self

    @classmethod
    def open(cls, key: int, *, mode: int = 0o600, trust: bool = False) -> "SemaphoreSet":
        """Open an existing set, whatever its size.  Never waits."""
        nkey = normalize_key(key)
        semid, st = _open(nkey, mode, trust)
        self = cls.__new__(cls)
        self._setup(nkey, semid, st.nsems, False)
        return self

    @classmethod
    def from_id(cls, semid: int) -> "SemaphoreSet":
        """Open the set with this id (NotFoundError if there is none)."""
        st = _from_id(semid)
        self = cls.__new__(cls)
        self._setup(st.key, semid, st.nsems, False)
        return self

    def _setup(self, key: int, semid: int, nsems: int, created: bool) -> None:
        self.key = key
        self.id = semid
        self._nsems = nsems
        self.created = created

    def __len__(self) -> int:
        return self._nsems

    def _index(self, i: int) -> int:
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"semaphore index must be an int, not {type(i).__name__}")
        if i < 0:
            i += self._nsems
        if not 0 <= i < self._nsems:
            raise IndexError(f"semaphore index out of range for a set of {self._nsems}")
        return i

    def __getitem__(self, i: int) -> "Semaphore":
        return Semaphore._view(self.id, self._index(i), self.key)

    def op(
        self,
        ops: Iterable[Op],
        *,
        timeout: Optional[float] = None,
        undo: bool = False,
        nowait: bool = False,
    ) -> bool:
        """Apply ``ops`` atomically: all of them or none.

        Each op is ``(index, delta)`` or ``(index, delta, flags)`` with flags
        from IPC_NOWAIT and SEM_UNDO.  A negative delta waits until it can be
        subtracted, a zero delta waits for zero.  Returns True when applied,
        False when ``nowait`` is set and it would block, or when ``timeout``
        expires.  Raises RemovedError if the set is removed while waiting."""
        if nowait and timeout is not None:
            raise ValueError("can't specify a timeout for a non-blocking call")
        checked = []
        for o in ops:
            if not isinstance(o, tuple) or len(o) not in (2, 3):
                raise TypeError(f"each op must be a tuple (index, delta[, flags]), not {o!r}")
            checked.append((self._index(o[0]),) + tuple(o[1:]))
        if not checked:
            raise ValueError("op() needs at least one operation")
        return bool(
            _core.semop(self.id, checked, timeout, not nowait, undo, self.key)
        )

    @property
    def values(self) -> tuple[int, ...]:
        """All values (GETALL); assign a sequence to set them (SETALL)."""
        return tuple(_core.sem_getall(self.id, self.key))

    @values.setter
    def values(self, values: Sequence[int]) -> None:
        _core.sem_setall(self.id, _check_values(self._nsems, values), self.key)

    def stat(self) -> SemaphoreSetStat:
        """IPC_STAT of the set."""
        return _set_stat(self.id, self.key)

    def remove(self) -> None:
        """Remove the set (IPC_RMID).  Every waiter gets RemovedError."""
        _core.semctl(self.id, 0, _core.IPC_RMID, 0, self.key)

    def __repr__(self) -> str:
        return f"<SemaphoreSet key={format_key(self.key)} id={self.id} count={self._nsems}>"


class Semaphore(_core.SemBase):
    """A counting semaphore shared between processes: a 1-member set.

    The API follows threading.Semaphore: ``acquire(blocking=True,
    timeout=None)``, ``release(n=1)`` and ``with sem:``.  Waiting releases
    the GIL, runs signal handlers (their exceptions propagate) and honours the
    timeout on CLOCK_MONOTONIC.  ``value`` is only applied when the set is
    created: reopening never resets it.
    """

    created: bool = False

    def __init__(
        self,
        key: Key,
        value: int = 1,
        *,
        mode: int = 0o600,
        undo: bool = False,
        trust: bool = False,
    ) -> None:
        nkey = normalize_key(key)
        vals = _check_values(1, [value])
        check_mode_arg(mode)
        semid, self.created = _create_or_open(nkey, 1, vals, mode, trust)
        self._bind(semid, 0, nkey, undo)

    @classmethod
    def create(
        cls, key: Key, value: int = 1, *, mode: int = 0o600, undo: bool = False
    ) -> "Semaphore":
        """Create a new 1-member set with ``value`` (ExistsError if taken)."""
        nkey = normalize_key(key)
        vals = _check_values(1, [value])
        check_mode_arg(mode)
        self = cls.__new__(cls)
        self._bind(_create(nkey, 1, vals, mode, exclusive=True), 0, nkey, undo)
        self.created = True
        return self

    @classmethod
    def open(
        cls, key: int, *, mode: int = 0o600, undo: bool = False, trust: bool = False
    ) -> "Semaphore":
        """Open member 0 of an existing set.  Never waits, never resets."""
        nkey = normalize_key(key)
        semid, _ = _open(nkey, mode, trust)
        self = cls.__new__(cls)
        self._bind(semid, 0, nkey, undo)
        return self

    @classmethod
    def from_id(cls, semid: int, *, undo: bool = False) -> "Semaphore":
        """Member 0 of the set with this id."""
        st = _from_id(semid)
        self = cls.__new__(cls)
        self._bind(semid, 0, st.key, undo)
        return self

    @classmethod
    def _view(cls, semid: int, num: int, key: int) -> "Semaphore":
        self = cls.__new__(cls)
        self._bind(semid, num, key, False)
        return self

    # __enter__ and __exit__ come from the C base: see sem.c for why.

    @property
    def value(self) -> int:
        """The current value (GETVAL); assign to set it (SETVAL, which also
        clears every process's SEM_UNDO adjustment for it)."""
        return int(_core.semctl(self.id, self.num, _core.GETVAL, 0, self.key))

    @value.setter
    def value(self, value: int) -> None:
        _core.semctl(self.id, self.num, _core.SETVAL, _check_values(1, [value])[0], self.key)

    def wait_zero(self, timeout: Optional[float] = None) -> bool:
        """Wait until the value is 0.  Returns False if the timeout expires."""
        return bool(_core.semop(self.id, [(self.num, 0)], timeout, True, False, self.key))

    @property
    def ncnt(self) -> int:
        """How many processes wait for the value to increase (GETNCNT)."""
        return int(_core.semctl(self.id, self.num, _core.GETNCNT, 0, self.key))

    @property
    def zcnt(self) -> int:
        """How many processes wait for the value to become 0 (GETZCNT)."""
        return int(_core.semctl(self.id, self.num, _core.GETZCNT, 0, self.key))

    @property
    def last_pid(self) -> int:
        """The pid of the last process that operated on it (GETPID)."""
        return int(_core.semctl(self.id, self.num, _core.GETPID, 0, self.key))

    def stat(self) -> SemaphoreSetStat:
        """IPC_STAT of the set this semaphore belongs to."""
        return _set_stat(self.id, self.key)

    def remove(self) -> None:
        """Remove the whole set (IPC_RMID).  Waiters get RemovedError."""
        _core.semctl(self.id, 0, _core.IPC_RMID, 0, self.key)

    def __reduce__(self) -> Any:
        return (_rebuild_semaphore, (type(self), self.id, self.num, self.undo))

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} key={format_key(self.key)} id={self.id} num={self.num}"
            f"{' undo' if self.undo else ''}>"
        )


class Lock(_core.SemBase):
    """A mutex shared between processes, released by the kernel if its holder
    dies (SEM_UNDO).

    ``acquire(blocking=True, timeout=None)``, ``release()``, ``locked()`` and
    ``with lock:``.  Only the process that acquired the lock may release it.
    """

    created: bool = False

    def __init__(self, key: Key, *, mode: int = 0o600, trust: bool = False) -> None:
        nkey = normalize_key(key)
        check_mode_arg(mode)
        semid, self.created = _create_or_open(nkey, 1, [1], mode, trust)
        self._bind(semid, 0, nkey, True, True)

    @classmethod
    def create(cls, key: Key, *, mode: int = 0o600) -> "Lock":
        """Create a new, unlocked lock (ExistsError if the key is taken)."""
        nkey = normalize_key(key)
        check_mode_arg(mode)
        self = cls.__new__(cls)
        self._bind(_create(nkey, 1, [1], mode, exclusive=True), 0, nkey, True, True)
        self.created = True
        return self

    @classmethod
    def open(cls, key: int, *, mode: int = 0o600, trust: bool = False) -> "Lock":
        """Open an existing lock.  Never waits."""
        nkey = normalize_key(key)
        semid, _ = _open(nkey, mode, trust)
        self = cls.__new__(cls)
        self._bind(semid, 0, nkey, True, True)
        return self

    @classmethod
    def from_id(cls, semid: int) -> "Lock":
        """The lock whose set has this id."""
        st = _from_id(semid)
        self = cls.__new__(cls)
        self._bind(semid, 0, st.key, True, True)
        return self

    def locked(self) -> bool:
        """Whether some process holds the lock."""
        return int(_core.semctl(self.id, 0, _core.GETVAL, 0, self.key)) == 0

    # __enter__ and __exit__ come from the C base: see sem.c for why.

    def remove(self) -> None:
        """Remove the lock's set (IPC_RMID).  Waiters get RemovedError."""
        _core.semctl(self.id, 0, _core.IPC_RMID, 0, self.key)

    def __reduce__(self) -> Any:
        return (_rebuild_lock, (self.id,))

    def __repr__(self) -> str:
        held = " held" if self._held else ""
        return f"<Lock key={format_key(self.key)} id={self.id}{held}>"


def _rebuild_semaphore(cls: type[Semaphore], semid: int, num: int, undo: bool) -> Semaphore:
    self = cls.__new__(cls)
    self._bind(semid, num, _from_id(semid).key, undo)
    return self


def _rebuild_lock(semid: int) -> Lock:
    return Lock.from_id(semid)
