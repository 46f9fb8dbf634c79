"""PosixIpcHelper: the .NET helper's API (Shanewas.PosixIpc) in snake_case.

A program written against the .NET helper ports to Python line by line, and
talks to .NET programs that still use it: same frame format, same semaphore
convention (1-member sets, mode 0600, value 0 on create, no SEM_UNDO), same
name-to-key hash.  It does not copy the helper's flaws:

* ``dispose()`` removes the segment only if this handle created it;
* frame lengths are bounds-checked (FrameError), never trusted;
* the segment size comes from IPC_STAT through the real struct, not an offset;
* a new semaphore is marked ready atomically (no initialisation race);
* waits take an optional timeout, and EINTR never surfaces.
"""

from __future__ import annotations

from typing import Optional, Union

from . import _core
from ._policy import CREATE_OR_OPEN_ATTEMPTS, check_trusted
from .errors import ExistsError, NotFoundError, RemovedError
from .keys import key_from_name, normalize_key
from .sem import _create, _from_id
from .shm import SharedMemory

__all__ = ["PosixIpcHelper"]


class PosixIpcHelper:
    """Shared memory frames plus static semaphore helpers, as in the .NET helper."""

    _shm: Optional[SharedMemory] = None

    def __init__(self, key: int, size: int, *, trust: bool = False) -> None:
        """Create the segment, or attach it if it exists (the .NET constructor).

        Unlike the .NET helper, only a handle that created the segment removes
        it on dispose()."""
        self._shm = SharedMemory(key, size, trust=trust)

    @classmethod
    def attach_existing(cls, key: int, *, trust: bool = False) -> "PosixIpcHelper":
        """Attach an existing segment; its size comes from IPC_STAT.  Raises
        NotFoundError when it does not exist."""
        self = cls.__new__(cls)
        self._shm = SharedMemory.open(key, trust=trust)
        return self

    @property
    def shared_memory(self) -> SharedMemory:
        """The underlying SharedMemory (ClosedError after dispose())."""
        shm = self._shm
        if shm is None:
            from .errors import ClosedError

            raise ClosedError("PosixIpcHelper is disposed")
        return shm

    def write(self, data: Union[bytes, bytearray, memoryview, str]) -> None:
        """Write one frame (str as UTF-8).  ValueError if it does not fit."""
        self.shared_memory.write(data)

    def read(self) -> bytes:
        """The last frame written (FrameError if its header is corrupt)."""
        return self.shared_memory.read()

    def read_string(self) -> str:
        """The last frame written, decoded as UTF-8."""
        return self.shared_memory.read_string()

    # -- semaphores: static, by id, as in the .NET helper --------------------

    @staticmethod
    def create_semaphore(key: int, *, trust: bool = False) -> int:
        """Create a 1-member set with value 0 (mode 0600), or open the existing
        one without touching its value.  Returns the semid.  An existing set
        goes through the key-squatting check (see ``trust``)."""
        nkey = normalize_key(key)
        for _ in range(CREATE_OR_OPEN_ATTEMPTS):
            try:
                return _create(nkey, 1, [0], 0o600, exclusive=nkey != 0)
            except ExistsError:
                pass
            try:
                semid = int(_core.semget(nkey, 1, 0o600))
                st = _from_id(semid)
            except (NotFoundError, RemovedError):
                continue
            check_trusted("semaphore set", nkey, semid, st.uid, st.cuid, st.mode, 0o600, trust)
            return semid
        raise ExistsError(f"semaphore key {key} kept vanishing while being opened", key=nkey)

    @staticmethod
    def semaphore_wait(semid: int, timeout: Optional[float] = None) -> bool:
        """Decrement (wait).  Returns False only if ``timeout`` expires.
        Raises RemovedError if the set is removed while waiting."""
        return bool(_core.semop(semid, [(0, -1)], timeout))

    @staticmethod
    def semaphore_signal(semid: int) -> None:
        """Increment (signal)."""
        _core.semop(semid, [(0, 1)], None, False)

    @staticmethod
    def destroy_semaphore(semid: int) -> None:
        """Remove the set; an id that is already gone is not an error."""
        try:
            _from_id(semid)
            _core.semctl(semid, 0, _core.IPC_RMID)
        except (NotFoundError, RemovedError):
            pass

    @staticmethod
    def get_deterministic_hash_code(s: str) -> int:
        """The .NET helper's FNV-1a key for a name (see shmsem.key_from_name)."""
        return key_from_name(s)

    # -- lifetime ------------------------------------------------------------

    def dispose(self) -> None:
        """Detach, and remove the segment if this handle created it.  Idempotent."""
        shm, self._shm = self._shm, None
        if shm is not None:
            shm.close()

    def __enter__(self) -> "PosixIpcHelper":
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"<PosixIpcHelper {self._shm!r}>"
