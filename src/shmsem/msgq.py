"""MessageQueue: a System V message queue."""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from . import _core
from ._policy import CREATE_OR_OPEN_ATTEMPTS, check_create_mode, check_mode_arg, check_trusted
from .errors import (
    ExistsError,
    NotFoundError,
    QueueEmptyError,
    QueueFullError,
    RemovedError,
    format_key,
)
from .keys import IPC_PRIVATE, Key, normalize_key

__all__ = ["MessageQueue", "MessageQueueStat"]

Data = Union[bytes, bytearray, memoryview, str]


@dataclasses.dataclass(frozen=True)
class MessageQueueStat:
    """msgctl(IPC_STAT) of a queue.  Times are Unix seconds, 0 for never."""

    key: int
    id: int
    mode: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    #: bytes currently queued
    current_bytes: int
    #: messages currently queued
    current_messages: int
    #: the most bytes the queue may hold (msg_qbytes)
    max_bytes: int
    last_send_pid: int
    last_receive_pid: int
    stime: int
    rtime: int
    ctime: int


def _queue_stat(msqid: int, known_key: Optional[int] = None) -> MessageQueueStat:
    (key, uid, gid, cuid, cgid, mode, cbytes, qnum, qbytes, lspid, lrpid, stime, rtime,
     ctime) = _core.msg_stat(msqid, known_key)
    return MessageQueueStat(
        key=key, id=msqid, mode=mode & 0o777, uid=uid, gid=gid, cuid=cuid, cgid=cgid,
        current_bytes=cbytes, current_messages=qnum, max_bytes=qbytes,
        last_send_pid=lspid, last_receive_pid=lrpid, stime=stime, rtime=rtime, ctime=ctime,
    )


def _read_msgmax() -> int:
    # Read at run time: the limit is a sysctl and may change (sysv_ipc #48).
    try:
        with open("/proc/sys/kernel/msgmax") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 8192


def _check_type(type: int, what: str) -> int:
    if not isinstance(type, int) or isinstance(type, bool):
        raise TypeError(f"{what} must be an int, not {type.__class__.__name__}")
    if not -(2**63) <= type < 2**63:
        raise ValueError(f"{what} {type} does not fit a C long")
    return type


class MessageQueue:
    """A System V message queue.

    ``MessageQueue(key)`` creates or opens; ``.create``, ``.open`` and
    ``.from_id`` do one or the other.  ``send`` and ``receive`` block by
    default, with the GIL released; ``send_nowait`` and ``receive_nowait``
    never block.  As for ``queue.Queue`` and Channel, giving up raises
    ``queue.Full`` / ``queue.Empty`` (QueueFullError / QueueEmptyError, which
    are also WouldBlockError).  Linux has no timed msgsnd/msgrcv, so a call
    with a timeout polls, with at most 1 ms between attempts.
    """

    key: int = IPC_PRIVATE
    id: int = -1
    created: bool = False
    _bufsize: int = 8192

    def __init__(self, key: Key, *, mode: int = 0o600, trust: bool = False) -> None:
        nkey = normalize_key(key)
        check_create_mode("message queue", mode)
        if nkey == IPC_PRIVATE:
            self._setup(nkey, _core.msgget(nkey, _core.IPC_CREAT | mode), True)
            return
        for _ in range(CREATE_OR_OPEN_ATTEMPTS):
            try:
                msqid = _core.msgget(nkey, _core.IPC_CREAT | _core.IPC_EXCL | mode)
            except ExistsError:
                pass
            else:
                self._setup(nkey, msqid, True)
                return
            try:
                msqid = _core.msgget(nkey, 0)
                st = _queue_stat(msqid)
            except (NotFoundError, RemovedError):
                continue
            check_trusted("message queue", nkey, msqid, st.uid, st.cuid, st.mode, mode, trust)
            self._setup(nkey, msqid, False)
            return
        raise ExistsError(
            f"message queue key={format_key(nkey)} kept appearing and disappearing while "
            "being opened; another process is racing on this key", key=nkey,
        )

    @classmethod
    def create(cls, key: Key, *, mode: int = 0o600) -> "MessageQueue":
        """Create a new queue (ExistsError if the key is taken)."""
        nkey = normalize_key(key)
        check_create_mode("message queue", mode)
        flags = _core.IPC_CREAT | mode | (0 if nkey == IPC_PRIVATE else _core.IPC_EXCL)
        self = cls.__new__(cls)
        self._setup(nkey, _core.msgget(nkey, flags), True)
        return self

    @classmethod
    def open(cls, key: int, *, mode: int = 0o600, trust: bool = False) -> "MessageQueue":
        """Open an existing queue (NotFoundError if there is none)."""
        nkey = normalize_key(key)
        if nkey == IPC_PRIVATE:
            raise ValueError("IPC_PRIVATE queues cannot be opened by key; use from_id")
        check_mode_arg(mode)
        msqid = _core.msgget(nkey, 0)
        st = _queue_stat(msqid)
        check_trusted("message queue", nkey, msqid, st.uid, st.cuid, st.mode, mode, trust)
        self = cls.__new__(cls)
        self._setup(nkey, msqid, False)
        return self

    @classmethod
    def from_id(cls, msqid: int) -> "MessageQueue":
        """Open the queue with this id (NotFoundError if there is none)."""
        if not isinstance(msqid, int) or isinstance(msqid, bool):
            raise TypeError(f"msqid must be an int, not {type(msqid).__name__}")
        try:
            st = _queue_stat(msqid)
        except RemovedError:
            raise NotFoundError(
                f"msgctl(id={msqid}): no message queue has this id", id=msqid
            ) from None
        self = cls.__new__(cls)
        self._setup(st.key, msqid, False)
        return self

    def _setup(self, key: int, msqid: int, created: bool) -> None:
        self.key = key
        self.id = msqid
        self.created = created
        self._bufsize = _read_msgmax()

    def send(
        self,
        data: Data,
        type: int = 1,
        *,
        block: bool = True,
        timeout: Optional[float] = None,
    ) -> None:
        """Send one message (str is encoded as UTF-8) with a positive ``type``.

        Waits while the queue is full, unless ``block`` is false.  Raises
        queue.Full (QueueFullError) when it could not send (full and not
        blocking, or the timeout expired), ValueError if the message can
        never fit the queue, and RemovedError if the queue is removed while
        waiting."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        _check_type(type, "message type")
        if not block and timeout is not None:
            raise ValueError("can't specify a timeout for a non-blocking call")
        if not _core.msgsnd(self.id, data, type, block, timeout, self.key):
            raise QueueFullError(
                f"msgsnd(key={format_key(self.key)}, id={self.id}): the queue is full"
                + (" (timed out)" if block else ""),
                syscall="msgsnd", key=self.key, id=self.id,
            )

    def receive(
        self, type: int = 0, *, block: bool = True, timeout: Optional[float] = None
    ) -> tuple[bytes, int]:
        """Receive one message as ``(data, type)``.

        ``type`` 0 takes the first message; a positive type the first of that
        type; a negative type the first with the lowest type <= abs(type).
        Raises queue.Empty (QueueEmptyError) when nothing arrived (not
        blocking, or timed out) and RemovedError if the queue is removed
        while waiting."""
        _check_type(type, "message type")
        if not block and timeout is not None:
            raise ValueError("can't specify a timeout for a non-blocking call")
        got = _core.msgrcv(self.id, self._bufsize, type, block, timeout, self.key)
        if got is None:
            raise QueueEmptyError(
                f"msgrcv(key={format_key(self.key)}, id={self.id}): no message"
                + (" (timed out)" if block else ""),
                syscall="msgrcv", key=self.key, id=self.id,
            )
        data, mtype = got
        return data, mtype

    def send_nowait(self, data: Data, type: int = 1) -> None:
        """send(data, type, block=False)."""
        self.send(data, type, block=False)

    def receive_nowait(self, type: int = 0) -> tuple[bytes, int]:
        """receive(type, block=False)."""
        return self.receive(type, block=False)

    @property
    def max_bytes(self) -> int:
        """The most bytes the queue may hold (msg_qbytes).  Raising it above
        kernel.msgmnb needs CAP_SYS_RESOURCE."""
        return self.stat().max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"max_bytes must be an int, not {type(value).__name__}")
        if value < 0:
            raise ValueError(f"max_bytes must be non-negative, not {value}")
        _core.msg_set(self.id, value, -1, self.key)

    @property
    def current_messages(self) -> int:
        """How many messages are queued now."""
        return self.stat().current_messages

    def stat(self) -> MessageQueueStat:
        """IPC_STAT of the queue."""
        return _queue_stat(self.id, self.key)

    def remove(self) -> None:
        """Remove the queue (IPC_RMID).  Waiters get RemovedError."""
        _core.msg_rmid(self.id, self.key)

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (MessageQueue.from_id, (self.id,))

    def __repr__(self) -> str:
        return f"<MessageQueue key={format_key(self.key)} id={self.id}>"
