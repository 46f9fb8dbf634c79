"""Channel: a FIFO queue of messages in one shared memory segment.

``multiprocessing.Queue`` semantics at shared-memory speed: any number of
producer and consumer processes, ``queue.Full`` / ``queue.Empty`` with the
same block/timeout rules as ``queue.Queue``, and safety when a process dies:
a producer killed mid-put leaves nothing behind, a consumer killed mid-get
leaves the message for the next consumer, and a lock held by a dead process
is taken over.  The binary layout is in docs/protocol.md.

Objects travel as pickles (protocol 5).  Out-of-band buffers (NumPy arrays,
bytearrays, ...) are copied straight into the ring, once, and come back as
writable arrays backed by one bytearray.  Unpickling runs code chosen by the
sender: exchange objects only with processes you trust, and use
``put_bytes``/``get_bytes`` with anything else.

No message is dropped silently.  A get allocates whatever it returns before
the message leaves the ring, so a MemoryError there leaves it queued.  Once
messages have left the ring they are the call's to deliver: if turning one
back into an object raises (the sender's class is missing here, a corrupt
pickle, MemoryError while unpickling, ...), that exception propagates
unchanged and carries every message the call took, undecoded, as
``exc.undelivered``: a list of ``(kind, payload)`` records in FIFO order,
which ``Channel.decode_record`` turns into objects.  (Python 3.11+ also adds
a note to the exception.)  The channel goes on with the next message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import pickle
import queue
import struct
from typing import Any, Iterable, Optional, Union

from . import _core
from ._policy import check_mode_arg
from ._segment_object import SegmentObject
from .errors import FormatError
from .keys import Key, normalize_key
from .shm import SharedMemory

__all__ = ["Channel", "ChannelStats"]

BytesLike = Union[bytes, bytearray, memoryview]

#: The smallest ring accepted (bytes).
MIN_CAPACITY = 64
#: Longest single wait of an asyncio helper thread, so cancellation frees it soon.
_ASYNC_SLICE = 0.25
#: Out-of-band buffers start at this alignment inside a message.
_OOB_ALIGN = 16

_KIND_BYTES = _core.KIND_BYTES
_KIND_PICKLE = _core.KIND_PICKLE
_KIND_PICKLE_OOB = _core.KIND_PICKLE_OOB


@dataclasses.dataclass(frozen=True)
class ChannelStats:
    """A snapshot of a Channel's header counters."""

    capacity: int
    #: bytes of the ring in use (headers and padding included)
    used: int
    #: messages queued (approximate while others are active)
    messages: int
    #: messages ever put / taken
    put_count: int
    get_count: int
    #: a consumer (producer) sleeps waiting for data (room)
    consumers_waiting: bool
    producers_waiting: bool
    #: thread id holding the producer (consumer) lock, as the holder's own
    #: PID namespace numbers it (the pid of a single-threaded process); 0 if free
    producer_lock_pid: int
    consumer_lock_pid: int
    #: locks taken over from holders that died, by any process, ever
    recoveries: int


def _check_capacity(capacity: int) -> int:
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
    if capacity < MIN_CAPACITY:
        raise ValueError(f"capacity must be at least {MIN_CAPACITY} bytes, not {capacity}")
    if capacity > 2**48:
        raise ValueError(f"capacity {capacity} is too large")
    return (capacity + 7) & ~7


def _check_timeout(timeout: Optional[float]) -> Optional[float]:
    """Seconds to wait, or None for forever; the same rules as the C core."""
    if timeout is None:
        return None
    if isinstance(timeout, (bool, str, bytes, bytearray)):
        raise TypeError(f"timeout must be a number of seconds or None, "
                        f"not {type(timeout).__name__}")
    try:
        t = float(timeout)
    except OverflowError:  # an int beyond float range
        t = math.inf if timeout > 0 else -1.0
    if t != t or t < 0:
        raise ValueError("timeout must be a non-negative number or None")
    return None if t > 1e9 else t  # beyond ~30 years is forever


def _align(n: int) -> int:
    return (n + _OOB_ALIGN - 1) & ~(_OOB_ALIGN - 1)


def _encode(obj: Any) -> tuple[int, list[Any]]:
    """Pickle obj; return (kind, parts) whose concatenation is the payload."""
    raws: list[memoryview] = []

    def out_of_band(pb: pickle.PickleBuffer) -> bool:
        try:
            raws.append(pb.raw())
        except BufferError:  # not contiguous: let pickle copy it in-band
            return True
        return False

    data = pickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
    if not raws:
        return _KIND_PICKLE, [data]
    # [u32 nbufs][u32 pickle_len][u64 len]*nbufs, pickle, then each buffer at
    # a 16-byte boundary (from the payload start), so arrays come back aligned.
    prefix = struct.pack(f"<II{len(raws)}Q", len(raws), len(data), *(r.nbytes for r in raws))
    parts: list[Any] = [prefix, data]
    at = len(prefix) + len(data)
    for raw in raws:
        pad = _align(at) - at
        if pad:
            parts.append(bytes(pad))
        parts.append(raw)
        at += pad + raw.nbytes
    return _KIND_PICKLE_OOB, parts


def _hand_back(exc: BaseException, records: list[tuple[int, Any]]) -> None:
    """Attach to ``exc``, which stopped a get from decoding them, the records
    that the get took out of the ring, so that they are not lost silently."""
    try:
        setattr(exc, "undelivered", records)
        add_note = getattr(exc, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(f"shmsem: the {len(records)} message(s) this call took from the channel "
                     "were not delivered; they are in this exception's .undelivered as "
                     "(kind, payload) records, for Channel.decode_record()")
    except Exception:  # noqa: BLE001 - out of memory even for this: exc goes on
        pass


def _decode(kind: int, payload: Union[bytes, bytearray]) -> Any:
    if kind == _KIND_PICKLE:
        return pickle.loads(payload)
    if kind == _KIND_BYTES:
        return payload
    if kind != _KIND_PICKLE_OOB:
        raise FormatError(f"channel record has unknown kind {kind}")
    view = memoryview(payload)
    try:
        nbufs, plen = struct.unpack_from("<II", view)
        lens = struct.unpack_from(f"<{nbufs}Q", view, 8)
    except struct.error:
        raise FormatError("channel record with out-of-band buffers is truncated") from None
    at = 8 + 8 * nbufs
    end = at + plen
    if end > len(view):
        raise FormatError("channel record's pickle runs past its end")
    body = view[at:end]
    buffers = []
    at = end
    for n in lens:
        at = _align(at)
        if at + n > len(view):
            raise FormatError("channel record's buffer runs past its end")
        buffers.append(view[at : at + n])
        at += n
    return pickle.loads(body, buffers=buffers)


class Channel(SegmentObject, _core.ChannelBase):
    """A FIFO queue of messages between processes, in one segment.

    * ``Channel(key, capacity)`` creates the channel or opens it (an existing
      channel keeps its own capacity); ``Channel.create`` and ``Channel.open``
      do one or the other.  ``capacity`` is the ring size in bytes; each
      message takes 8 bytes of header plus its payload rounded up to 8.
    * ``put``/``get`` carry Python objects (pickle protocol 5);
      ``put_bytes``/``get_bytes``/``recv_into`` carry raw bytes;
      ``put_many``/``get_many`` (and their ``_bytes`` forms) move batches.
    * ``block``/``timeout`` behave as in ``queue.Queue``: ``timeout=None``
      waits forever; ``queue.Full``/``queue.Empty`` when it gives up.
    * A message larger than ``max_message_size`` raises ValueError at once.

    Lifetime: ``close()`` detaches and, if this handle created the segment
    (``owner``), removes it; ``with`` calls close().
    """

    def __init__(
        self, key: Key, capacity: int, *, mode: int = 0o600, trust: bool = False
    ) -> None:
        nkey = normalize_key(key)
        cap = _check_capacity(capacity)
        check_mode_arg(mode)
        shm = self._create_or_open_segment(nkey, _core.CHANNEL_HEADER_SIZE + cap, mode, trust)
        self._setup(shm)

    @classmethod
    def create(cls, key: Key, capacity: int, *, mode: int = 0o600) -> "Channel":
        """Create a new channel (ExistsError if the key is taken)."""
        cap = _check_capacity(capacity)
        shm = SharedMemory.create(key, _core.CHANNEL_HEADER_SIZE + cap, mode=mode)
        self = cls.__new__(cls)
        self._setup(shm)
        return self

    @classmethod
    def open(cls, key: int, *, mode: int = 0o600, trust: bool = False) -> "Channel":
        """Open an existing channel.  NotFoundError if the key does not exist,
        FormatError if the segment is not a channel, ForeignObjectError if it
        belongs to someone else (unless trust)."""
        shm = SharedMemory.open(key, mode=mode, trust=trust)
        self = cls.__new__(cls)
        self._setup(shm)
        return self

    @classmethod
    def from_id(cls, shmid: int) -> "Channel":
        """Open the channel in the segment with this id."""
        shm = SharedMemory.from_id(shmid)
        self = cls.__new__(cls)
        self._setup(shm)
        return self

    # -- objects -------------------------------------------------------------

    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Put a Python object (pickled, protocol 5, buffers out-of-band)."""
        kind, parts = _encode(obj)
        self._put_parts(kind, parts, block, timeout)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Remove and return the oldest message as an object (a raw-bytes
        message comes back as bytes).  If unpickling it raises, the
        exception carries the message as ``exc.undelivered`` (see the
        module's docstring)."""
        record = self._get_record(block, timeout)
        try:
            return _decode(*record)
        except BaseException as exc:
            _hand_back(exc, [record])
            raise

    def put_nowait(self, obj: Any) -> None:
        """put(obj, block=False)."""
        self.put(obj, False)

    def get_nowait(self) -> Any:
        """get(block=False)."""
        return self.get(False)

    def put_many(
        self, objs: Iterable[Any], block: bool = True, timeout: Optional[float] = None
    ) -> None:
        """Put several objects, committed all at once (their total size must
        fit the capacity).  Buffers are pickled in-band here."""
        self._put_records(_KIND_PICKLE, [pickle.dumps(o, protocol=5) for o in objs], block,
                          timeout)

    def get_many(
        self,
        max_messages: Optional[int] = None,
        block: bool = True,
        timeout: Optional[float] = None,
    ) -> list[Any]:
        """Remove and return up to ``max_messages`` objects (at least one).
        If unpickling one raises, the exception carries every message of
        the batch, in order, as ``exc.undelivered`` (see the module's
        docstring)."""
        flat = self._get_records(max_messages, block, timeout)  # [kind, payload, ...]
        try:
            return [_decode(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        except BaseException as exc:
            _hand_back(exc, list(zip(flat[::2], flat[1::2])))
            raise

    @staticmethod
    def decode_record(kind: int, payload: Union[bytes, bytearray]) -> Any:
        """The object that get() returns for a raw ``(kind, payload)``
        record, such as those in an exception's ``undelivered``.  Raises
        what unpickling raises, and FormatError for an unknown kind."""
        return _decode(kind, payload)

    # -- asyncio -------------------------------------------------------------

    async def get_async(self, timeout: Optional[float] = None) -> Any:
        """Await the next object without blocking the event loop.  Raises
        queue.Empty if ``timeout`` expires."""
        loop = asyncio.get_running_loop()
        t = _check_timeout(timeout)
        deadline = None if t is None else loop.time() + t
        while True:
            try:
                return self.get(False)
            except queue.Empty:
                pass
            wait = _ASYNC_SLICE if deadline is None else min(_ASYNC_SLICE, deadline - loop.time())
            if wait <= 0:
                raise queue.Empty
            await loop.run_in_executor(None, self._wait_readable, wait)

    async def put_async(self, obj: Any, timeout: Optional[float] = None) -> None:
        """Await room and put ``obj`` without blocking the event loop.  Raises
        queue.Full if ``timeout`` expires."""
        loop = asyncio.get_running_loop()
        t = _check_timeout(timeout)
        deadline = None if t is None else loop.time() + t
        kind, parts = _encode(obj)
        nbytes = sum(memoryview(p).nbytes for p in parts)
        while True:
            try:
                self._put_parts(kind, parts, False)
                return
            except queue.Full:
                pass
            wait = _ASYNC_SLICE if deadline is None else min(_ASYNC_SLICE, deadline - loop.time())
            if wait <= 0:
                raise queue.Full
            await loop.run_in_executor(None, self._wait_writable, nbytes, wait)

    # -- state ---------------------------------------------------------------

    def stats(self) -> ChannelStats:
        """A snapshot of the header counters."""
        s = self._stats()
        return ChannelStats(
            capacity=s["capacity"], used=s["used"], messages=s["messages"],
            put_count=s["put_count"], get_count=s["get_count"],
            consumers_waiting=bool(s["consumers_waiting"]),
            producers_waiting=bool(s["producers_waiting"]),
            producer_lock_pid=s["producer_lock_pid"], consumer_lock_pid=s["consumer_lock_pid"],
            recoveries=s["recoveries"],
        )
