"""Look inside a segment without changing it: recognise shmsem Channel and
Mailbox headers (docs/protocol.md) and read their counters, and read a
.NET-format frame header.

The segment is attached read-only (SHM_RDONLY), the bytes are copied out,
and it is detached at once.  The kernel records that attach in the
segment's lpid, atime and dtime; nothing in the segment itself changes.
Every value read from the segment is checked against the segment size
before it is used, as docs/protocol.md requires of any peer.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, Optional, Union

from .. import _core
from ..channel import ChannelStats
from ..errors import ShmsemError
from ..mailbox import MailboxStats
from ..shm import SharedMemory

__all__ = ["ShmsemHeader", "FrameInfo", "Peek", "parse_header", "parse_frame", "peek"]

# The magics as docs/protocol.md gives them: 8 ASCII bytes at offset 0.
CHANNEL_MAGIC = b"SHMSEMCH"
MAILBOX_MAGIC = b"SHMSEMMB"
CHANNEL_HEADER = _core.CHANNEL_HEADER_SIZE
MAILBOX_HEADER = _core.MAILBOX_HEADER_SIZE
CELL_HEADER = _core.MAILBOX_CELL_HEADER_SIZE
VERSION = _core.LAYOUT_VERSION
# Field offsets, from the C structs (one source of truth).
_CH = _core.CHANNEL_OFFSETS
_MB = _core.MAILBOX_OFFSETS
_LOCK_WORD = _core.LOCK_OFFSETS["word"]
_LOCK_RECOVERIES = _core.LOCK_OFFSETS["recoveries"]
#: The smallest segment that can hold either format (a Mailbox with 2 empty cells).
MIN_SHMSEM_SIZE = MAILBOX_HEADER + 2 * CELL_HEADER
#: How much of a frame's payload `show` and `watch` read.
PREVIEW = 256

# magic, version, header_size, capacity, cell_stride, creator_pid
_COMMON = struct.Struct("<8sIIQQI")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I32 = struct.Struct("<i")


@dataclasses.dataclass(frozen=True)
class ShmsemHeader:
    """What the header of a Channel or Mailbox says, at one instant.

    The counters are ``stats``: the ChannelStats or MailboxStats that
    ``stats()`` of an attached Channel or Mailbox would return.  It is None
    when ``problem`` is set (the header failed the checks of
    docs/protocol.md section 1, so its counters cannot be trusted)."""

    kind: str  # "channel" or "mailbox"
    version: int
    capacity: int
    creator_pid: int
    problem: Optional[str] = None
    stats: Union[ChannelStats, MailboxStats, None] = None
    #: mailbox: bytes between the starts of the two cells
    cell_stride: Optional[int] = None
    #: mailbox: length of the latest value (None while it is being written)
    value_length: Optional[int] = None

    def counter(self, name: str) -> Any:
        """The ``stats`` field ``name``, or None (no stats, or the other kind's field)."""
        return getattr(self.stats, name, None)

    @property
    def used(self) -> Optional[int]:
        """channel: bytes queued (records, headers, padding); mailbox: the latest value's length."""
        if isinstance(self.stats, ChannelStats):
            return self.stats.used
        return self.value_length if self.stats is not None else None

    @property
    def messages(self) -> Optional[int]:
        """channel: messages queued; mailbox: values published (the latest seq)."""
        if isinstance(self.stats, ChannelStats):
            return self.stats.messages
        return self.last_seq

    @property
    def last_seq(self) -> Optional[int]:
        """channel: messages ever put (the last message's seq); mailbox: the latest seq."""
        if isinstance(self.stats, ChannelStats):
            return self.stats.put_count
        return self.stats.seq if self.stats is not None else None

    @property
    def fill(self) -> Optional[float]:
        """used / capacity, in [0, 1]."""
        if self.used is None or self.capacity <= 0:
            return None
        return min(1.0, self.used / self.capacity)

    @property
    def title(self) -> str:
        return "Channel" if self.kind == "channel" else "Mailbox"


@dataclasses.dataclass(frozen=True)
class FrameInfo:
    """The segment read as a .NET-format frame: int32 LE length, payload."""

    length: int
    #: the length fits the segment (0 <= length <= size - 4)
    valid: bool
    #: the first PREVIEW bytes of the payload (empty when not valid)
    preview: bytes


@dataclasses.dataclass(frozen=True)
class Peek:
    header: Optional[ShmsemHeader]
    frame: Optional[FrameInfo]
    #: why the segment could not be read (permission...), or None
    error: Optional[str]


def _lock_holder(head: bytes, lock: int) -> int:
    """The lock holder's thread id, as its own PID namespace numbers it (0: free)."""
    word: int = _U32.unpack_from(head, lock + _LOCK_WORD)[0]
    return word & 0x3FFFFFFF  # FUTEX_TID_MASK


def _lock_recoveries(head: bytes, lock: int) -> int:
    n: int = _U64.unpack_from(head, lock + _LOCK_RECOVERIES)[0]
    return n


def parse_header(
    head: bytes, size: int, cell: Optional[bytes] = None
) -> Optional[ShmsemHeader]:
    """Parse the first bytes of a segment of ``size`` bytes.

    ``head`` holds up to CHANNEL_HEADER bytes; ``cell`` the 64-byte header of
    a Mailbox's current cell (see :func:`mailbox_cell_offset`).  Returns None
    when the magic is not a shmsem one (or is still 0: a creator is
    initialising it)."""
    if len(head) < _COMMON.size:
        return None
    magic, version, header_size, capacity, stride, creator = _COMMON.unpack_from(head)
    if magic == CHANNEL_MAGIC:
        return _channel(head, size, version, header_size, capacity, creator)
    if magic == MAILBOX_MAGIC:
        return _mailbox(head, size, version, header_size, capacity, stride, creator, cell)
    return None


def _channel(
    head: bytes, size: int, version: int, header_size: int, capacity: int, creator: int
) -> ShmsemHeader:
    problem = None
    if version != VERSION:
        problem = f"version {version}, this shmsem reads version {VERSION}"
    elif header_size != CHANNEL_HEADER:
        problem = f"header_size {header_size}, expected {CHANNEL_HEADER}"
    elif capacity < 16 or capacity % 8 or CHANNEL_HEADER + capacity > size:
        problem = f"capacity {capacity} does not fit a {size}-byte segment"
    elif len(head) < CHANNEL_HEADER:
        problem = "header truncated"
    if problem is not None:
        return ShmsemHeader("channel", version, capacity, creator, problem=problem)
    tail = _U64.unpack_from(head, _CH["tail"])[0]
    put_count = _U64.unpack_from(head, _CH["put_count"])[0]
    hd = _U64.unpack_from(head, _CH["head"])[0]
    get_count = _U64.unpack_from(head, _CH["get_count"])[0]
    consumers_waiting = _U32.unpack_from(head, _CH["consumers_waiting"])[0]
    producers_waiting = _U32.unpack_from(head, _CH["producers_waiting"])[0]
    used = tail - hd
    if tail < hd or used > capacity or tail % 8 or hd % 8:
        return ShmsemHeader(
            "channel", version, capacity, creator,
            problem=f"inconsistent positions head={hd} tail={tail} (corrupt, or changing fast)",
        )
    messages = put_count - get_count if put_count >= get_count else 0
    stats = ChannelStats(
        capacity=capacity, used=used, messages=messages,
        put_count=put_count, get_count=get_count,
        consumers_waiting=bool(consumers_waiting), producers_waiting=bool(producers_waiting),
        producer_lock_pid=_lock_holder(head, _CH["producer_lock"]),
        consumer_lock_pid=_lock_holder(head, _CH["consumer_lock"]),
        recoveries=_lock_recoveries(head, _CH["producer_lock"])
        + _lock_recoveries(head, _CH["consumer_lock"]),
    )
    return ShmsemHeader("channel", version, capacity, creator, stats=stats)


def mailbox_cell_offset(head: bytes) -> Optional[int]:
    """Offset of the current cell of a Mailbox header (unchecked), or None."""
    if len(head) < _MB["state"] + 8:
        return None
    stride: int = _U64.unpack_from(head, 24)[0]
    state: int = _U64.unpack_from(head, _MB["state"])[0]
    return MAILBOX_HEADER + (state & 1) * stride


def _mailbox(
    head: bytes, size: int, version: int, header_size: int, capacity: int, stride: int,
    creator: int, cell: Optional[bytes],
) -> ShmsemHeader:
    problem = None
    if version != VERSION:
        problem = f"version {version}, this shmsem reads version {VERSION}"
    elif header_size != MAILBOX_HEADER:
        problem = f"header_size {header_size}, expected {MAILBOX_HEADER}"
    elif stride % 64 or stride < 64 or capacity > stride - 64:
        problem = f"cell_stride {stride} and capacity {capacity} are inconsistent"
    elif MAILBOX_HEADER + 2 * stride > size:
        problem = f"cells of {stride} bytes do not fit a {size}-byte segment"
    elif len(head) < MAILBOX_HEADER:
        problem = "header truncated"
    if problem is not None:
        return ShmsemHeader("mailbox", version, capacity, creator, problem=problem,
                            cell_stride=stride)
    state = _U64.unpack_from(head, _MB["state"])[0]
    waiting = _U32.unpack_from(head, _MB["waiting"])[0]
    seq = state >> 1
    length: Optional[int] = None
    if seq == 0:
        length = 0
    elif cell is not None and len(cell) >= 24:
        n = _U64.unpack_from(cell, 16)[0]
        length = n if n <= capacity else None  # mid-write or corrupt: do not report it
    stats = MailboxStats(
        capacity=capacity, seq=seq, current_cell=state & 1, readers_waiting=bool(waiting),
        writer_lock_pid=_lock_holder(head, _MB["writer_lock"]),
        recoveries=_lock_recoveries(head, _MB["writer_lock"]),
    )
    return ShmsemHeader("mailbox", version, capacity, creator, stats=stats,
                        cell_stride=stride, value_length=length)


def parse_frame(data: bytes, size: int) -> Optional[FrameInfo]:
    """``data`` is the first bytes of a ``size``-byte segment."""
    if len(data) < 4 or size < 4:
        return None
    length = _I32.unpack_from(data)[0]
    valid = 0 <= length <= size - 4
    return FrameInfo(length, valid, bytes(data[4:4 + min(length, PREVIEW)]) if valid else b"")


def read_segment(
    shm: SharedMemory, frame: bool = False
) -> tuple[Optional[ShmsemHeader], Optional[FrameInfo]]:
    """Header (and frame) of an attached segment; only reads."""
    size = shm.size
    head = shm.read_at(0, min(size, max(CHANNEL_HEADER, 4 + PREVIEW if frame else 0)))
    header: Optional[ShmsemHeader] = None
    if size >= MIN_SHMSEM_SIZE:
        cell = None
        if head[:8] == MAILBOX_MAGIC:
            off = mailbox_cell_offset(head)
            if off is not None and off + CELL_HEADER <= size:
                cell = shm.read_at(off, CELL_HEADER)
        header = parse_header(head, size, cell)
    # With frame, head holds 4 + PREVIEW bytes (or the whole segment): the preview is complete.
    return header, parse_frame(head, size) if frame else None


def peek(shmid: int, size: int, *, frame: bool = False) -> Peek:
    """Attach segment ``shmid`` read-only, read its header (and frame
    header), detach.  Never raises for a segment that cannot be attached:
    the reason is in ``Peek.error``."""
    if size < MIN_SHMSEM_SIZE and not frame:
        return Peek(None, None, None)  # too small for either format: do not even attach
    try:
        shm = SharedMemory.from_id(shmid, readonly=True)
    except (ShmsemError, OSError) as e:
        return Peek(None, None, _reason(e))
    try:
        header, info = read_segment(shm, frame)
    except (ShmsemError, OSError, ValueError) as e:
        return Peek(None, None, _reason(e))
    finally:
        shm.detach()
    return Peek(header, info, None)


def _reason(e: BaseException) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, FileNotFoundError):
        return "removed"
    return str(e) or type(e).__name__
