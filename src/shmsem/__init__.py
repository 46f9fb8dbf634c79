"""shmsem: System V shared memory, semaphores and message queues for Python
on Linux, with shared-memory channels on top.

    >>> import shmsem
    >>> with shmsem.SharedMemory(None, 4096) as shm:
    ...     shm.write(b"hello")
    ...     shm.read()
    5
    b'hello'
"""

import sys

if not sys.platform.startswith("linux"):
    raise ImportError(
        f"shmsem supports Linux only (System V IPC and futexes as Linux provides them); "
        f"this platform is {sys.platform!r}. For POSIX shared memory elsewhere, use "
        "multiprocessing.shared_memory or posix_ipc."
    )

from ._version import __version__

try:
    from . import _core
except ImportError as e:  # pragma: no cover - depends on how it was installed
    raise ImportError(
        f"shmsem's C core could not be imported ({e}). Reinstall with "
        "'pip install --force-reinstall shmsem' (a C compiler and Python headers are needed "
        "to build from source)."
    ) from e

if _core.__version__ != __version__:  # pragma: no cover - a stale in-place build
    raise ImportError(
        f"shmsem {__version__} found a C core built for {_core.__version__}: rebuild it "
        "('pip install -e .' or 'python setup.py build_ext --inplace')"
    )

from . import errors as _errors

_core._set_error_factory(_errors._from_core)

from .channel import Channel as Channel, ChannelStats as ChannelStats
from .compat import PosixIpcHelper as PosixIpcHelper
from .errors import (
    ClosedError as ClosedError,
    ExistsError as ExistsError,
    ForeignObjectError as ForeignObjectError,
    FormatError as FormatError,
    FrameError as FrameError,
    LimitError as LimitError,
    NotFoundError as NotFoundError,
    PermissionDeniedError as PermissionDeniedError,
    QueueEmptyError as QueueEmptyError,
    QueueFullError as QueueFullError,
    RemovedError as RemovedError,
    ShmsemError as ShmsemError,
    WouldBlockError as WouldBlockError,
)
from .keys import IPC_PRIVATE as IPC_PRIVATE, ftok as ftok, key_from_name as key_from_name
from .mailbox import Mailbox as Mailbox, MailboxStats as MailboxStats
from .msgq import MessageQueue as MessageQueue, MessageQueueStat as MessageQueueStat
from .sem import (
    SEMVMX as SEMVMX,
    Lock as Lock,
    Semaphore as Semaphore,
    SemaphoreSet as SemaphoreSet,
    SemaphoreSetStat as SemaphoreSetStat,
)
from .shm import SegmentStat as SegmentStat, SharedMemory as SharedMemory

IPC_NOWAIT: int = _core.IPC_NOWAIT
SEM_UNDO: int = _core.SEM_UNDO

__all__ = [
    "__version__",
    "IPC_PRIVATE",
    "IPC_NOWAIT",
    "SEM_UNDO",
    "SEMVMX",
    "ftok",
    "key_from_name",
    "SharedMemory",
    "SegmentStat",
    "SemaphoreSet",
    "SemaphoreSetStat",
    "Semaphore",
    "Lock",
    "MessageQueue",
    "MessageQueueStat",
    "Channel",
    "ChannelStats",
    "Mailbox",
    "MailboxStats",
    "PosixIpcHelper",
    "ShmsemError",
    "NotFoundError",
    "ExistsError",
    "PermissionDeniedError",
    "ForeignObjectError",
    "WouldBlockError",
    "QueueEmptyError",
    "QueueFullError",
    "RemovedError",
    "ClosedError",
    "FrameError",
    "FormatError",
    "LimitError",
]
