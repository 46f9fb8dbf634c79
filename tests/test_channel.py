"""Channel in one process: FIFO order, sizes and ring wrap-around, queue.Full /
queue.Empty semantics, objects (pickle protocol 5, NumPy out-of-band),
recv_into, batches, counters, create/open, refusing bad and corrupt segments,
lifetime (close, owner, pickling), asyncio and threads.

Every wait is bounded; elapsed times are only ever checked from below (a
timeout must really wait), never from above.  Every channel is closed by the
fixture that made it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pickle
import queue
import random
import signal
import struct
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np
import pytest

import shmsem
from shmsem import Channel, ClosedError, FormatError, Mailbox, SharedMemory
from shmsem._core import CHANNEL_OFFSETS

# Offsets of docs/protocol.md, section 3.1 (the header fields from the C
# structs; tests/protocol checks them against the document).
OFF_MAGIC, OFF_VERSION, OFF_HEADER_SIZE, OFF_CAPACITY = 0, 8, 12, 16
OFF_PROD_LOCK, OFF_TAIL, OFF_PUT_COUNT = (CHANNEL_OFFSETS[k] for k in ("producer_lock", "tail", "put_count"))
OFF_CONS_LOCK, OFF_HEAD, OFF_GET_COUNT = (CHANNEL_OFFSETS[k] for k in ("consumer_lock", "head", "get_count"))
RING = 256

WAIT = 10.0  # an upper bound on any wait in this file, never an expectation


def record_size(n: int) -> int:
    return 8 + (n + 7) // 8 * 8


@pytest.fixture
def make() -> Iterator[Callable[..., Channel]]:
    """Factory for private channels; all are closed (and removed) at teardown."""
    made: list[Channel] = []

    def factory(capacity: int = 4096) -> Channel:
        ch = Channel.create(None, capacity)
        made.append(ch)
        return ch

    yield factory
    for ch in made:
        if not ch.closed:
            ch.owner = True
            ch.close()


@pytest.fixture
def raw() -> Iterator[Callable[[Channel], SharedMemory]]:
    """Factory: a second, raw attach of a channel's segment (never the owner)."""
    made: list[SharedMemory] = []

    def factory(ch: Channel) -> SharedMemory:
        shm = SharedMemory.from_id(ch.id)
        made.append(shm)
        return shm

    yield factory
    for shm in made:
        shm.close()


def u64(shm: SharedMemory, off: int) -> int:
    return struct.unpack("<Q", shm.read_at(off, 8))[0]


def put_u64(shm: SharedMemory, off: int, value: int) -> None:
    shm.write_at(off, struct.pack("<Q", value))


def drain(ch: Channel) -> list[bytes]:
    """Every queued message, taken with get_many_bytes (which may return
    fewer than are queued: it promises at least one)."""
    out: list[bytes] = []
    while True:
        try:
            out += ch.get_many_bytes(block=False)
        except queue.Empty:
            return out


class Runner:
    """Run a call in a daemon thread and collect its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def join(self, timeout: float = WAIT) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"call still blocked after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.result


# ---------------------------------------------------------------------------
# Order and sizes


def test_fifo_order(make) -> None:
    ch = make(8192)
    msgs = [f"message {i}".encode() * (i % 5) for i in range(200)]
    for m in msgs:
        ch.put_bytes(m)
    assert [ch.get_bytes_nowait() for _ in msgs] == msgs
    with pytest.raises(queue.Empty):
        ch.get_bytes_nowait()


def test_fifo_order_mixed_objects_and_bytes(make) -> None:
    ch = make(8192)
    ch.put(1)
    ch.put_bytes(b"raw")
    ch.put({"x": 2})
    ch.put_many([3, 4])
    ch.put_many_bytes([b"five", b"six"])
    assert ch.get() == 1
    assert ch.get() == b"raw"  # a raw-bytes record comes back as bytes
    assert ch.get() == {"x": 2}
    assert ch.get_many() == [3, 4, b"five", b"six"]


def test_capacity_is_rounded_up_and_max_message_size(make) -> None:
    ch = make(65)
    assert ch.capacity == 72
    assert ch.max_message_size == 64
    with pytest.raises(ValueError):
        Channel.create(None, 63)
    with pytest.raises(TypeError):
        Channel.create(None, 100.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 15, 16, 17, "max"])
def test_bytes_round_trip_sizes(make, size) -> None:
    ch = make(256)
    n = ch.max_message_size if size == "max" else size
    assert ch.max_message_size == 248
    data = bytes(random.Random(n).getrandbits(8) for _ in range(n))
    ch.put_bytes(data)
    assert ch.stats().used == record_size(n)
    assert ch.get_bytes() == data
    assert ch.empty() and ch.qsize() == 0
    # bytearray and memoryview go in as well.
    for form in (bytearray(data), memoryview(data)):
        ch.put_bytes(form, timeout=WAIT)
        assert ch.get_bytes(timeout=WAIT) == data


def test_max_message_fills_the_ring_exactly(make) -> None:
    ch = make(128)
    ch.put_bytes(b"\xab" * ch.max_message_size)
    assert ch.full()
    assert ch.stats().used == ch.capacity
    with pytest.raises(queue.Full):
        ch.put_bytes_nowait(b"")  # not even an empty record fits
    assert ch.get_bytes_nowait() == b"\xab" * 120
    assert not ch.full()


def test_every_split_across_the_ring_end(make, raw) -> None:
    """A record may wrap: start it at every 8-byte position of a small ring,
    with payloads that end before, at and after the ring's end."""
    ch = make(64)
    shm = raw(ch)
    pos = 0
    sizes = [0, 1, 7, 8, 9, 23, 31, 47, 55, 56]
    for start in range(0, 64, 8):
        for n in sizes:
            delta = (start - pos) % 64
            if delta:
                ch.put_bytes(b"f" * (delta - 8))  # a filler of exactly delta bytes
                assert ch.get_bytes_nowait() == b"f" * (delta - 8)
                pos += delta
            assert u64(shm, OFF_TAIL) % 64 == start
            data = bytes((start + n + i) % 251 for i in range(n))
            ch.put_bytes_nowait(data)
            assert ch.get_bytes_nowait() == data
            pos += record_size(n)
            assert u64(shm, OFF_HEAD) == u64(shm, OFF_TAIL) == pos


def test_wrap_around_fill_and_drain(make, raw) -> None:
    """Fill until Full, drain a random part, repeat, with odd sizes: every
    record position and split occurs; the model (a deque) must match."""
    ch = make(200)
    shm = raw(ch)
    rng = random.Random(1234)
    model: deque[bytes] = deque()
    used = 0
    serial = 0
    for _round in range(150):
        while True:
            n = rng.choice([0, 1, 3, 5, 7, 9, 13, 31, 33, 63, 77, 101, 191, 192])
            data = serial.to_bytes(4, "little")[: n] + bytes([serial % 256]) * max(0, n - 4)
            if used + record_size(n) > ch.capacity:
                with pytest.raises(queue.Full):
                    ch.put_bytes_nowait(data)
                break
            ch.put_bytes_nowait(data)
            model.append(data)
            used += record_size(n)
            serial += 1
        assert ch.stats().used == used
        assert ch.qsize() == len(model)
        for _ in range(rng.randint(1, len(model))):
            expect = model.popleft()
            assert ch.get_bytes_nowait() == expect
            used -= record_size(len(expect))
    while model:
        assert ch.get_bytes_nowait() == model.popleft()
    assert ch.empty()
    assert u64(shm, OFF_TAIL) > 50 * ch.capacity  # the ring really went round


# ---------------------------------------------------------------------------
# Too large: ValueError at once


def test_message_larger_than_max_raises_value_error(make) -> None:
    ch = make(128)
    too_big = b"x" * (ch.max_message_size + 1)
    for call in (
        lambda: ch.put_bytes(too_big),
        lambda: ch.put_bytes_nowait(too_big),
        lambda: ch.put_bytes(too_big, timeout=1),
        lambda: ch.put(too_big),
        lambda: ch.put(np.zeros(64)),  # out-of-band buffer of 512 bytes
        lambda: ch.put_many_bytes([b"ok", too_big]),
        lambda: ch.put_many([b"ok", too_big]),
    ):
        with pytest.raises(ValueError):
            call()
    assert ch.empty() and ch.stats().put_count == 0


def test_too_large_never_blocks_even_on_a_full_channel(make) -> None:
    ch = make(128)
    ch.put_bytes(b"x" * ch.max_message_size)
    assert ch.full()
    too_big = b"y" * (ch.max_message_size + 1)
    # With a timeout: a channel that waited would report queue.Full instead.
    with pytest.raises(ValueError):
        ch.put_bytes(too_big, timeout=2)
    with pytest.raises(ValueError):
        ch.put(too_big, timeout=2)
    # Blocking forever: run it in a thread that must come back on its own.
    with pytest.raises(ValueError):
        Runner(lambda: ch.put_bytes(too_big)).join()
    with pytest.raises(ValueError):
        Runner(lambda: ch.put_many_bytes([too_big])).join()
    assert ch.qsize() == 1


def test_batch_larger_than_capacity_raises_value_error(make) -> None:
    ch = make(128)
    batch = [b"a" * 40, b"b" * 40, b"c" * 40]  # 3 * 48 = 144 > 128
    with pytest.raises(ValueError):
        ch.put_many_bytes(batch)
    with pytest.raises(ValueError):
        Runner(lambda: ch.put_many_bytes(batch, timeout=None)).join()
    with pytest.raises(ValueError):
        ch.put_many([b"a" * 40] * 4)
    assert ch.empty()
    ch.put_many_bytes(batch[:2])  # 96 bytes fit
    assert ch.get_many_bytes() == batch[:2]


# ---------------------------------------------------------------------------
# queue.Full / queue.Empty


GETTERS: dict[str, Callable[[Channel, dict], Any]] = {
    "get": lambda ch, kw: ch.get(**kw),
    "get_bytes": lambda ch, kw: ch.get_bytes(**kw),
    "recv_into": lambda ch, kw: ch.recv_into(bytearray(100), **kw),
    "get_many": lambda ch, kw: ch.get_many(**kw),
    "get_many_bytes": lambda ch, kw: ch.get_many_bytes(**kw),
}
PUTTERS: dict[str, Callable[[Channel, dict], Any]] = {
    "put": lambda ch, kw: ch.put(b"z" * 10, **kw),
    "put_bytes": lambda ch, kw: ch.put_bytes(b"z" * 10, **kw),
    "put_many": lambda ch, kw: ch.put_many([1, 2], **kw),
    "put_many_bytes": lambda ch, kw: ch.put_many_bytes([b"z", b"zz"], **kw),
}
NOT_WAITING = [{"block": False}, {"block": True, "timeout": 0}, {"timeout": 0.0}]


@pytest.mark.parametrize("name", GETTERS)
@pytest.mark.parametrize("kw", NOT_WAITING, ids=["block_false", "block_timeout0", "timeout0"])
def test_empty_raises_queue_empty(make, name, kw) -> None:
    ch = make(256)
    with pytest.raises(queue.Empty):
        GETTERS[name](ch, kw)


def test_nowait_getters_raise_queue_empty(make) -> None:
    ch = make(256)
    for call in (ch.get_nowait, ch.get_bytes_nowait):
        with pytest.raises(queue.Empty):
            call()
    assert issubclass(queue.Empty, Exception)


@pytest.mark.parametrize("name", PUTTERS)
@pytest.mark.parametrize("kw", NOT_WAITING, ids=["block_false", "block_timeout0", "timeout0"])
def test_full_raises_queue_full_and_puts_nothing(make, name, kw) -> None:
    ch = make(128)
    ch.put_bytes(b"x" * 112)  # 120 of 128 bytes used: an empty record still fits
    with pytest.raises(queue.Full):
        PUTTERS[name](ch, kw)
    assert ch.qsize() == 1 and ch.stats().used == 120
    assert ch.get_bytes_nowait() == b"x" * 112


def test_nowait_putters_raise_queue_full(make) -> None:
    ch = make(64)
    ch.put_bytes(b"x" * 56)
    for call in (lambda: ch.put_nowait(1), lambda: ch.put_bytes_nowait(b"")):
        with pytest.raises(queue.Full):
            call()


@pytest.mark.parametrize("name", GETTERS)
def test_get_timeout_really_waits(make, name) -> None:
    ch = make(256)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        GETTERS[name](ch, {"timeout": 0.05})
    assert time.monotonic() - t0 >= 0.05


@pytest.mark.parametrize("name", PUTTERS)
def test_put_timeout_really_waits(make, name) -> None:
    ch = make(64)
    ch.put_bytes(b"x" * 56)
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        PUTTERS[name](ch, {"timeout": 0.05})
    assert time.monotonic() - t0 >= 0.05
    assert ch.qsize() == 1


def test_block_false_ignores_the_timeout(make) -> None:
    """As in queue.Queue: block=False never waits, whatever the timeout.  A
    thread makes room (or data) soon; a call that waited would succeed."""
    ch = make(64)
    ch.put_bytes(b"x" * 56)
    helper = threading.Timer(0.3, ch.get_bytes_nowait)
    helper.start()
    try:
        with pytest.raises(queue.Full):
            ch.put_bytes(b"y", block=False, timeout=5)
    finally:
        helper.join(WAIT)
    assert ch.empty()
    helper = threading.Timer(0.3, lambda: ch.put_bytes_nowait(b"late"))
    helper.start()
    try:
        with pytest.raises(queue.Empty):
            ch.get_bytes(block=False, timeout=5)
    finally:
        helper.join(WAIT)
    assert ch.get_bytes_nowait() == b"late"


def test_timeout_none_blocks_until_a_thread_puts(make) -> None:
    ch = make(256)
    getter = Runner(lambda: ch.get())
    time.sleep(0.1)
    assert getter.thread.is_alive()
    ch.put({"fed": True})
    assert getter.join() == {"fed": True}

    getter = Runner(lambda: ch.get_bytes(block=True, timeout=None))
    time.sleep(0.1)
    ch.put_bytes(b"fed")
    assert getter.join() == b"fed"


def test_timeout_none_put_blocks_until_a_thread_gets(make) -> None:
    ch = make(64)
    ch.put_bytes(b"a" * 56)
    putter = Runner(lambda: ch.put_bytes(b"b" * 56))
    time.sleep(0.1)
    assert putter.thread.is_alive()
    assert ch.qsize() == 1
    assert ch.get_bytes(timeout=WAIT) == b"a" * 56
    putter.join()
    assert ch.get_bytes(timeout=WAIT) == b"b" * 56


@pytest.mark.parametrize("side", ["get", "put"])
def test_a_signal_landing_anywhere_in_a_blocking_call_interrupts_it(make, side) -> None:
    """A signal whose handler raises must end a blocking call wherever it
    lands: while the call spins (GIL released) as well as while it sleeps.
    SIGALRM is swept over the first 150 us of the call.  A signal that is
    missed shows as the call running to its timeout first: the handler's
    exception then has queue.Empty (queue.Full) as its context."""

    class Alarm(Exception):
        pass

    def handler(signum: int, frame: Any) -> None:
        raise Alarm

    ch = make(64)
    if side == "put":
        ch.put_bytes(b"x" * 56)
        call: Callable[[], Any] = lambda: ch.put_bytes(b"y", timeout=0.5)
    else:
        call = lambda: ch.get_bytes(timeout=0.5)
    old = signal.signal(signal.SIGALRM, handler)
    missed: list[int] = []
    try:
        for us in range(1, 151):
            try:
                try:
                    signal.setitimer(signal.ITIMER_REAL, us / 1e6)
                    call()
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except Alarm as e:
                if isinstance(e.__context__, (queue.Empty, queue.Full)):
                    missed.append(us)
            if len(missed) >= 3:
                break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert missed == [], (
        f"SIGALRM {missed} us into a blocking {side} was handled only after the call "
        "timed out")


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, -math.inf])
def test_negative_or_nan_timeout_raises_value_error(make, bad) -> None:
    ch = make(256)
    ch.put_bytes(b"keep")
    calls = [
        lambda: ch.get(timeout=bad),
        lambda: ch.get_bytes(timeout=bad),
        lambda: ch.recv_into(bytearray(10), timeout=bad),
        lambda: ch.get_many(timeout=bad),
        lambda: ch.get_many_bytes(timeout=bad),
        lambda: ch.put(1, timeout=bad),
        lambda: ch.put_bytes(b"x", timeout=bad),
        lambda: ch.put_many([1], timeout=bad),
        lambda: ch.put_many_bytes([b"x"], timeout=bad),
        lambda: asyncio.run(ch.get_async(timeout=bad)),
        lambda: asyncio.run(ch.put_async(1, timeout=bad)),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    # Nothing was taken or added by the refused calls.
    assert ch.qsize() == 1
    assert ch.get_bytes_nowait() == b"keep"
    assert ch.empty()


def test_infinite_timeout_is_forever(make) -> None:
    ch = make(256)
    ch.put_bytes(b"x")
    assert ch.get_bytes(timeout=math.inf) == b"x"


# ---------------------------------------------------------------------------
# Objects


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


OBJECTS = [
    None, True, 0, -1, 2**200, 1.5, math.inf, "text ü €", b"bytes", b"",
    {"a": [1, 2, {"b": None}], "c": (1, (2, (3,)))}, [None] * 50,
    {1, 2, 3}, frozenset({"x"}), Point(3, 4), [[[[[]]]]],
]


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: type(o).__name__)
def test_object_round_trip(make, obj) -> None:
    ch = make(4096)
    ch.put(obj)
    got = ch.get(timeout=WAIT)
    assert got == obj and type(got) is type(obj)


def test_bytearray_round_trips_as_bytearray(make) -> None:
    ch = make(4096)
    ba = bytearray(b"abc" * 100)
    ch.put(ba)
    got = ch.get()
    assert type(got) is bytearray and got == ba
    got[0] = ord("z")  # writable, and not the original
    assert ba[0] == ord("a")
    ch.put(bytearray())
    assert ch.get() == bytearray()


def _arrays() -> list[Any]:
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    structured = np.zeros(4, dtype=[("a", "<i4"), ("b", "<f8", (2,))])
    structured["a"] = [1, 2, 3, 4]
    return [
        np.arange(10, dtype=np.int16),
        base,
        np.asfortranarray(base.astype(np.float32)),
        base[:, 1],  # non-contiguous column
        base[::2, ::3],  # non-contiguous both ways
        base.T,  # F-contiguous view
        np.array(7.5),  # 0-d
        np.zeros((0, 3)),
        np.array([True, False, True]),
        np.arange(5) * (1 + 2j),
        np.arange(6, dtype=">i4"),  # big-endian
        structured,
        np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)[:, ::-1, 1:],
    ]


@pytest.mark.parametrize("index", range(len(_arrays())))
def test_numpy_round_trip(make, index) -> None:
    a = _arrays()[index]
    ch = make(8192)
    ch.put(a)
    b = ch.get()
    assert isinstance(b, np.ndarray)
    assert b.dtype == a.dtype and b.shape == a.shape
    assert np.array_equal(b, a)
    assert b.flags.writeable and b.flags.aligned
    assert not np.shares_memory(a, b)
    if a.size:
        b.reshape(-1)[0] = b.reshape(-1)[-1]  # writes land in b only
        assert np.array_equal(a, _arrays()[index])
    if a.flags.f_contiguous and not a.flags.c_contiguous:
        assert b.flags.f_contiguous


def test_several_arrays_in_one_message_are_independent(make) -> None:
    ch = make(1 << 16)
    a, b = np.arange(1000, dtype=np.int64), np.ones((10, 10), dtype=np.float32)
    ch.put({"a": a, "b": b, "same": [a, a]})
    got = ch.get()
    assert np.array_equal(got["a"], a) and np.array_equal(got["b"], b)
    assert got["a"].flags.writeable and got["b"].flags.writeable
    got["a"][:] = -1
    assert np.array_equal(got["b"], b)
    assert got["same"][0] is got["same"][1] is got["a"]  # the pickle memo holds


def test_large_array_through_a_channel(make) -> None:
    ch = make(1 << 21)
    a = np.random.default_rng(0).standard_normal(200_000)  # 1.6 MB
    ch.put(a)
    b = ch.get()
    assert np.array_equal(a, b) and b.flags.writeable


def test_out_of_band_record_layout(make, raw) -> None:
    """Kind 3 (docs/protocol.md 3.2): u32 nbufs, u32 pickle_len, u64 lengths,
    the pickle, then each buffer at an offset rounded up to 16."""
    ch = make(8192)
    shm = raw(ch)
    a = np.arange(13, dtype=np.int64)
    c = np.arange(7, dtype=np.uint8)
    ch.put([a, c])
    length, flags = struct.unpack("<II", shm.read_at(RING, 8))
    assert flags == 3
    payload = ch.get_bytes()
    assert len(payload) == length
    nbufs, plen = struct.unpack_from("<II", payload)
    assert nbufs == 2
    lens = struct.unpack_from("<2Q", payload, 8)
    assert lens == (a.nbytes, c.nbytes)
    at = 8 + 16 + plen
    bufs = []
    for n in lens:
        at = (at + 15) // 16 * 16
        bufs.append(payload[at : at + n])
        at += n
    assert at == len(payload)
    assert bufs == [a.tobytes(), c.tobytes()]
    back = pickle.loads(payload[24 : 24 + plen], buffers=bufs)
    assert np.array_equal(back[0], a) and np.array_equal(back[1], c)


def test_header_layout(make, raw) -> None:
    """docs/protocol.md section 1: the magic spells "SHMSEMCH" in memory."""
    ch = make(1000)
    shm = raw(ch)
    assert shm.read_at(OFF_MAGIC, 8) == b"SHMSEMCH"
    version, header_size, capacity, stride, pid = struct.unpack("<IIQQI", shm.read_at(8, 28))
    assert (version, header_size, capacity, stride, pid) == (2, 256, 1000, 0, os.getpid())
    assert shm.read_at(36, 28) == bytes(28)  # reserved
    assert shm.size == 256 + 1000


def test_kind_of_records(make, raw) -> None:
    ch = make(4096)
    shm = raw(ch)
    ch.put_bytes(b"abc")
    ch.put({"k": 1})
    assert struct.unpack("<II", shm.read_at(RING, 8)) == (3, 1)
    assert struct.unpack("<I", shm.read_at(RING + 16 + 4, 4))[0] == 2
    assert ch.get_bytes() == b"abc"
    assert pickle.loads(ch.get_bytes()) == {"k": 1}  # get_bytes returns any payload


# ---------------------------------------------------------------------------
# recv_into


def test_recv_into_returns_length_and_fills_buffer(make) -> None:
    ch = make(4096)
    ch.put_bytes(b"hello")
    buf = bytearray(b"-" * 10)
    assert ch.recv_into(buf) == 5
    assert buf == b"hello-----"
    ch.put_bytes(b"")
    assert ch.recv_into(buf) == 0
    ch.put_bytes(b"0123456789")
    assert ch.recv_into(buf) == 10 and buf == b"0123456789"


def test_recv_into_other_buffers(make) -> None:
    ch = make(4096)
    ch.put_bytes(b"\x01\x02\x03\x04")
    arr = np.zeros(8, dtype=np.uint8)
    assert ch.recv_into(arr) == 4
    assert list(arr) == [1, 2, 3, 4, 0, 0, 0, 0]
    ch.put_bytes(b"xy")
    big = bytearray(8)
    assert ch.recv_into(memoryview(big)[3:]) == 2
    assert big == b"\0\0\0xy\0\0\0"
    ch.put_bytes(b"q")
    with pytest.raises((TypeError, BufferError)):
        ch.recv_into(b"read-only bytes")  # type: ignore[arg-type]
    assert ch.get_bytes_nowait() == b"q"


def test_recv_into_too_small_keeps_the_message(make) -> None:
    ch = make(4096)
    ch.put_bytes(b"0123456789")
    ch.put_bytes(b"next")
    small = bytearray(9)
    with pytest.raises(ValueError):
        ch.recv_into(small)
    assert small == bytearray(9)
    assert ch.qsize() == 2
    assert ch.stats().consumer_lock_pid == 0
    assert ch.recv_into(bytearray(10)) == 10
    assert ch.get_bytes() == b"next"


def test_recv_into_wraps(make) -> None:
    ch = make(64)
    ch.put_bytes(b"a" * 40)
    ch.get_bytes()
    ch.put_bytes(bytes(range(30)))  # starts at 48, wraps
    buf = bytearray(30)
    assert ch.recv_into(buf) == 30 and buf == bytes(range(30))


def test_recv_into_blocking(make) -> None:
    ch = make(256)
    buf = bytearray(16)
    r = Runner(lambda: ch.recv_into(buf, timeout=WAIT))
    time.sleep(0.05)
    ch.put_bytes(b"later")
    assert r.join() == 5 and buf[:5] == b"later"


# ---------------------------------------------------------------------------
# Batches


def test_put_many_get_many(make) -> None:
    ch = make(4096)
    objs = [1, "two", None, {"four": 4}, [5], np.arange(3)]
    ch.put_many(objs)
    assert ch.qsize() == 6
    got = ch.get_many(max_messages=2)
    assert got == [1, "two"]
    rest = ch.get_many()
    assert len(rest) == 4
    assert rest[:3] == [None, {"four": 4}, [5]]
    assert np.array_equal(rest[3], np.arange(3))
    ch.put_many(iter(range(5)))  # any iterable
    assert ch.get_many(max_messages=100) == list(range(5))


def test_put_many_bytes_get_many_bytes(make) -> None:
    ch = make(4096)
    items = [b"", b"a", bytearray(b"bb"), memoryview(b"ccc"), b"d" * 100]
    ch.put_many_bytes(items)
    assert ch.qsize() == 5
    assert ch.stats().used == sum(record_size(len(bytes(i))) for i in items)
    assert ch.get_many_bytes(3) == [b"", b"a", b"bb"]
    assert ch.get_many_bytes(max_messages=None) == [b"ccc", b"d" * 100]
    with pytest.raises(queue.Empty):
        ch.get_many_bytes(block=False)


def test_empty_batches_are_no_ops(make) -> None:
    ch = make(64)
    ch.put_bytes(b"x" * 56)  # full: an empty batch must not wait
    ch.put_many_bytes([])
    ch.put_many([])
    assert ch.qsize() == 1


@pytest.mark.parametrize("bad", [0, -1])
def test_get_many_max_messages_must_be_positive(make, bad) -> None:
    ch = make(256)
    ch.put_bytes(b"x")
    with pytest.raises(ValueError):
        ch.get_many_bytes(bad)
    with pytest.raises(ValueError):
        ch.get_many(max_messages=bad)
    assert ch.qsize() == 1


def test_put_many_is_all_or_nothing(make) -> None:
    ch = make(128)
    ch.put_bytes(b"x" * 56)  # 64 used, 64 free
    batch = [b"1" * 24, b"2" * 24, b"3" * 8]  # 32 + 32 + 16 = 80 > 64
    with pytest.raises(queue.Full):
        ch.put_many_bytes(batch, block=False)
    with pytest.raises(queue.Full):
        ch.put_many_bytes(batch, timeout=0.02)
    assert ch.qsize() == 1 and ch.stats().used == 64
    ch.get_bytes()
    ch.put_many_bytes(batch)
    assert ch.get_many_bytes() == batch


def test_put_many_blocking_waits_for_room_for_the_whole_batch(make) -> None:
    ch = make(128)
    ch.put_many_bytes([b"a" * 24, b"b" * 24])  # 64 used
    batch = [b"c" * 24, b"d" * 24, b"e" * 24]  # needs 96
    putter = Runner(lambda: ch.put_many_bytes(batch, timeout=WAIT))
    time.sleep(0.05)
    assert ch.get_bytes(timeout=WAIT) == b"a" * 24  # 32 used, 96 free: now it fits
    putter.join()
    assert drain(ch) == [b"b" * 24] + batch


def test_a_batch_becomes_visible_all_at_once(make) -> None:
    """A consumer that sees the first message of a batch can take the rest
    without waiting: all records are committed with one store of tail."""
    ch = make(1024)
    batches, size = 300, 5
    torn: list[tuple[int, int]] = []
    got: list[bytes] = []

    def consume() -> None:
        while len(got) < batches * size:
            first = ch.get_bytes(timeout=WAIT)
            got.append(first)
            b, i = struct.unpack("<II", first)
            assert i == 0
            for k in range(1, size):
                try:
                    got.append(ch.get_bytes_nowait())
                except queue.Empty:
                    torn.append((b, k))
                    got.append(ch.get_bytes(timeout=WAIT))

    consumer = Runner(consume)
    for b in range(batches):
        ch.put_many_bytes([struct.pack("<II", b, i) for i in range(size)], timeout=WAIT)
    consumer.join(30)
    assert torn == []
    assert got == [struct.pack("<II", b, i) for b in range(batches) for i in range(size)]


def test_get_many_blocks_until_something_arrives(make) -> None:
    ch = make(256)
    r = Runner(lambda: ch.get_many_bytes(timeout=WAIT))
    time.sleep(0.05)
    ch.put_many_bytes([b"x", b"y"])
    assert r.join() in ([b"x", b"y"], [b"x"])


# ---------------------------------------------------------------------------
# Counters


def test_qsize_empty_full(make) -> None:
    ch = make(64)
    assert (ch.qsize(), ch.empty(), ch.full()) == (0, True, False)
    ch.put_bytes(b"a" * 16)  # 24
    ch.put_bytes(b"b" * 8)  # 16 -> 40
    assert (ch.qsize(), ch.empty(), ch.full()) == (2, False, False)
    ch.put_bytes(b"c" * 9)  # 24 -> 64
    assert (ch.qsize(), ch.empty(), ch.full()) == (3, False, True)
    ch.get_bytes()
    assert (ch.qsize(), ch.empty(), ch.full()) == (2, False, False)
    ch.get_many_bytes()
    assert (ch.qsize(), ch.empty(), ch.full()) == (0, True, False)


def test_stats(make) -> None:
    ch = make(1024)
    s = ch.stats()
    assert isinstance(s, shmsem.ChannelStats)
    assert s == shmsem.ChannelStats(
        capacity=1024, used=0, messages=0, put_count=0, get_count=0,
        consumers_waiting=False, producers_waiting=False,
        producer_lock_pid=0, consumer_lock_pid=0, recoveries=0,
    )
    ch.put_bytes(b"abc")
    ch.put_many_bytes([b"", b"0123456789"])
    ch.get_bytes()
    s = ch.stats()
    assert (s.used, s.messages, s.put_count, s.get_count) == (8 + 24, 2, 3, 1)
    with pytest.raises(AttributeError):
        s.used = 0  # type: ignore[misc]  # frozen


def test_stats_shows_a_sleeping_consumer(make) -> None:
    ch = make(256)
    r = Runner(lambda: ch.get_bytes(timeout=WAIT))
    deadline = time.monotonic() + WAIT
    while not ch.stats().consumers_waiting and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ch.stats().consumers_waiting
    ch.put_bytes(b"wake")
    assert r.join() == b"wake"


@pytest.mark.parametrize("how", ["get", "put", "wait_readable", "wait_writable", "interrupted"])
def test_a_sleeper_that_leaves_unregisters(make, how) -> None:
    """Issue 8, finding 10: a call that slept and left without being woken
    (timed out, or a signal handler raised) leaves consumers_waiting
    (producers_waiting) at 0 when nobody else sleeps.  A stale 1 would cost
    every later put (get) a futex wake that wakes nobody."""

    class Alarm(Exception):
        pass

    def handler(signum: int, frame: Any) -> None:
        raise Alarm

    ch = make(64)
    if how in ("put", "wait_writable"):
        ch.put_bytes(b"x" * ch.max_message_size)
    if how == "get":
        with pytest.raises(queue.Empty):
            ch.get_bytes(timeout=0.05)
    elif how == "put":
        with pytest.raises(queue.Full):
            ch.put_bytes(b"y", timeout=0.05)
    elif how == "wait_readable":
        assert ch._wait_readable(0.05) is False
    elif how == "wait_writable":
        assert ch._wait_writable(1, 0.05) is False
    else:
        old = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(Alarm):
                ch.get_bytes(timeout=WAIT)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    s = ch.stats()
    assert (s.consumers_waiting, s.producers_waiting) == (False, False)


# ---------------------------------------------------------------------------
# Allocation failures while taking (issue 8, finding 5)

NOMEMORY_SWEEP = r"""
import asyncio, json, sys
import _testcapi
import numpy as np
from shmsem import Channel
from shmsem.channel import _decode

ch = Channel.from_id(SHMID)
PAD = b"." * 300  # recv_into's length is then an int that must be allocated
BUF = bytearray(1024)
box = [None, None]


def fill(mixed):
    drain()
    if mixed:  # one record of each kind: a pickle, one with an out-of-band buffer, bytes
        ch.put({"i": 0, "pad": PAD})
        ch.put(np.frombuffer(b"001" + PAD, dtype=np.uint8))
    else:
        ch.put_bytes(b"000" + PAD)
        ch.put_bytes(b"001" + PAD)
    ch.put_bytes(b"002" + PAD)


def drain():
    out = []
    while True:
        try:
            out.append(ch._get_record(False))
        except Exception:
            return out


def ident(x):
    if isinstance(x, dict):
        return x["i"]
    if isinstance(x, (bytes, bytearray, np.ndarray)):
        return int(bytes(x[:3]))
    if isinstance(x, tuple):  # a raw (kind, payload) record
        return ident(_decode(*x))
    raise AssertionError(repr(x)[:80])


def idents(op, result):
    if result is None:
        return []
    if op == "recv_into":
        return [ident(BUF[:result])]
    if op == "_get_records" and result and isinstance(result[0], int):  # [k, p, k, p, ...]
        result = list(zip(result[::2], result[1::2]))
    if isinstance(result, list):
        return [ident(x) for x in result]
    return [ident(result)]


OPS = {
    "get_bytes": (False, lambda: ch.get_bytes()),
    "get_bytes_nowait": (False, lambda: ch.get_bytes_nowait()),
    "_get_record": (False, lambda: ch._get_record(False)),
    "get_many_bytes": (False, lambda: ch.get_many_bytes(None, False)),
    "_get_records": (False, lambda: ch._get_records(None, False)),
    "recv_into": (False, lambda: ch.recv_into(BUF)),
    "get": (True, lambda: ch.get()),
    "get_nowait": (True, lambda: ch.get_nowait()),
    "get_many": (True, lambda: ch.get_many()),
    "get_async": (True, None),
}
PYTHON_LAYER = {"get", "get_nowait", "get_many", "get_async"}


def no_free_pairs():
    # Pairs come from a free list that the allocator hooks never see: hold
    # enough of them that those the call makes come from the allocator.
    return [(i, None) for i in range(2100)]


def attempt(fn, start, stop):
    # Nothing between the hooks allocates but the call itself.
    box[0] = box[1] = None
    held = no_free_pairs()
    _testcapi.set_nomemory(start, stop)
    plug = (held, box)  # takes back the pair of set_nomemory's own arguments
    try:
        box[0] = fn()
    except BaseException as e:
        box[1] = e
    finally:
        _testcapi.remove_mem_hooks()
    del held, plug


async def attempt_async(start, stop):
    box[0] = box[1] = None
    held = no_free_pairs()
    _testcapi.set_nomemory(start, stop)
    plug = (held, box)  # takes back the pair of set_nomemory's own arguments
    try:
        box[0] = await ch.get_async()
    except BaseException as e:
        box[1] = e
    finally:
        _testcapi.remove_mem_hooks()
    del held, plug


report = {"lost": [], "injected": {}, "errors": {}}


async def sweep(op):
    mixed, fn = OPS[op]
    # One allocation fails (the n-th); and, for the C core alone, every
    # allocation from the n-th on.  The Python layer hands a message back on
    # the exception it raises, which takes a little memory itself.
    modes = ["one"] if op in PYTHON_LAYER else ["one", "all"]
    for mode in modes:
        for n in range(400):
            fill(mixed)
            stop = n + 1 if mode == "one" else 0
            if fn is None:
                await attempt_async(n, stop)
            else:
                attempt(fn, n, stop)
            result, err = box
            box[0] = box[1] = None
            if isinstance(err, MemoryError):
                report["injected"][op] = report["injected"].get(op, 0) + 1
            elif err is not None:
                name = type(err).__name__
                report["errors"].setdefault(op, []).append(name)
            delivered = idents(op, result)
            handed = [ident(r) for r in getattr(err, "undelivered", [])]
            remaining = [ident(r) for r in drain()]
            if delivered + handed + remaining != [0, 1, 2]:
                report["lost"].append(dict(op=op, mode=mode, n=n, error=repr(err)[:80],
                                           delivered=delivered, handed=handed,
                                           remaining=remaining))


async def main():
    for op in OPS:
        await sweep(op)


asyncio.run(main())
print(json.dumps(report), flush=True)
"""


def test_an_allocation_failure_while_taking_loses_no_message(make, child) -> None:
    """Issue 8, finding 5.  Every way of taking messages, in the C core
    (get_bytes, _get_record, get_many_bytes, _get_records, recv_into) and in
    the Python layer (get, get_many, their _nowait and async forms), is run
    with one allocation failing, for each allocation it makes in turn, and
    for the C core also with every allocation failing from some point on
    (_testcapi.set_nomemory, in a child).  Each time, the three queued
    messages must all be accounted for, in order: returned, handed back on
    the exception (``exc.undelivered``), or still queued.  A MemoryError in
    the C core must leave its message queued: the result is allocated before
    head moves."""
    pytest.importorskip("_testcapi")
    ch = make(1 << 16)
    c = child(NOMEMORY_SWEEP.replace("SHMID", str(ch.id)))
    rc, out, err = c.finish(timeout=300)
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["lost"] == [], "messages lost:\n" + "\n".join(
        json.dumps(x) for x in report["lost"][:20])
    # The sweep really failed allocations inside every call ...
    assert sorted(report["injected"]) == sorted(
        ["get_bytes", "get_bytes_nowait", "_get_record", "get_many_bytes", "_get_records",
         "recv_into", "get", "get_nowait", "get_many", "get_async"]), report["injected"]
    # ... and they failed as MemoryError, never as something else.
    assert report["errors"] == {}, report["errors"]


def test_a_message_that_does_not_unpickle_is_handed_back_not_dropped(make) -> None:
    """Issue 8, finding 5, as decided: a message whose pickle fails to load
    here (its class is missing in this process, or it is not a pickle) has
    left the ring; get() raises what unpickling raised, with the message as
    ``exc.undelivered`` = [(kind, payload)], and the channel goes on.
    get_many() hands back every message of its batch, in order, the good
    ones too, and Channel.decode_record turns them back into objects."""
    ch = make(4096)
    missing = b"\x80\x05\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x0eno_such_module\x94\x8c\x05Thing\x94\x93\x94."
    ch._put_parts(shmsem._core.KIND_PICKLE, [missing])
    ch.put("next")
    with pytest.raises(ModuleNotFoundError) as info:
        ch.get()
    assert info.value.undelivered == [(shmsem._core.KIND_PICKLE, missing)]  # type: ignore[attr-defined]
    if hasattr(info.value, "add_note"):
        assert "undelivered" in "\n".join(info.value.__notes__)
    assert ch.get() == "next"

    ch.put({"a": 1})
    ch._put_parts(shmsem._core.KIND_PICKLE, [b"not a pickle"])
    ch.put(np.arange(3))  # a record with an out-of-band buffer
    with pytest.raises(pickle.UnpicklingError) as info2:
        ch.get_many()
    records = info2.value.undelivered  # type: ignore[attr-defined]
    assert [k for k, _ in records] == [shmsem._core.KIND_PICKLE, shmsem._core.KIND_PICKLE,
                                      shmsem._core.KIND_PICKLE_OOB]
    assert Channel.decode_record(*records[0]) == {"a": 1}
    with pytest.raises(pickle.UnpicklingError):
        Channel.decode_record(*records[1])
    assert Channel.decode_record(*records[2]).tolist() == [0, 1, 2]
    assert ch.empty()


# ---------------------------------------------------------------------------
# create / open / create-or-open


def test_create_open_and_create_or_open(unique_key) -> None:
    key = unique_key()
    with pytest.raises(shmsem.NotFoundError):
        Channel.open(key)
    a = Channel.create(key, 1000)
    try:
        assert (a.created, a.owner, a.capacity, a.key) == (True, True, 1000, key)
        with pytest.raises(shmsem.ExistsError):
            Channel.create(key, 1000)
        b = Channel.open(key)
        c = Channel(key, 64)  # opens: keeps the existing capacity
        d = Channel(key, 50_000)  # even when asking for more
        e = Channel.from_id(a.id)
        try:
            for h in (b, c, d, e):
                assert (h.created, h.owner, h.capacity, h.id) == (False, False, 1000, a.id)
            b.put_bytes(b"via b")
            assert d.get_bytes() == b"via b"
        finally:
            for h in (b, c, d, e):
                h.close()
        assert a.qsize() == 0 and not a.closed
    finally:
        a.close()
    with pytest.raises(shmsem.NotFoundError):
        Channel.open(key)


def test_create_or_open_creates(unique_key) -> None:
    key = unique_key()
    with Channel(key, 200) as ch:
        assert ch.created and ch.owner and ch.capacity == 200
    with pytest.raises(shmsem.NotFoundError):
        Channel.open(key)


def test_open_of_a_plain_segment_is_format_error(unique_key) -> None:
    key = unique_key()
    with SharedMemory.create(key, 4096) as shm:
        for call in (lambda: Channel.open(key), lambda: Channel(key, 1024),
                     lambda: Channel.from_id(shm.id)):
            with pytest.raises(FormatError):
                call()
        assert not shm.closed and shm.read_at(0, 8) == bytes(8)  # left alone
        shm.write_at(0, b"NOTACHAN")
        with pytest.raises(FormatError):
            Channel.open(key)
    assert issubclass(FormatError, ValueError)


def test_open_of_a_tiny_segment_is_format_error() -> None:
    with SharedMemory.create(None, 100) as shm, pytest.raises(FormatError):
        Channel.from_id(shm.id)


def test_mailbox_is_not_a_channel_and_back() -> None:
    with Mailbox.create(None, 1024) as mb, pytest.raises(FormatError):
        Channel.from_id(mb.id)
    with Channel.create(None, 1024) as ch, pytest.raises(FormatError):
        Mailbox.from_id(ch.id)


@pytest.mark.parametrize(
    "offset, value",
    [
        (OFF_MAGIC, struct.pack("<Q", 0x424D4D45534D4853)),  # a Mailbox's magic
        (OFF_MAGIC, b"SHMSEMCX"),
        (OFF_VERSION, struct.pack("<I", 1)),  # the robust-lock protocol is version 2
        (OFF_VERSION, struct.pack("<I", 0)),
        (OFF_HEADER_SIZE, struct.pack("<I", 128)),
        (OFF_CAPACITY, struct.pack("<Q", 1024 + 8)),  # larger than the segment
        (OFF_CAPACITY, struct.pack("<Q", 2**63)),
        (OFF_CAPACITY, struct.pack("<Q", 2**64 - 8)),
        (OFF_CAPACITY, struct.pack("<Q", 1020)),  # not a multiple of 8
        (OFF_CAPACITY, struct.pack("<Q", 8)),  # below 16
        (OFF_CAPACITY, struct.pack("<Q", 0)),
    ],
    ids=["mailbox-magic", "bad-magic", "version1", "version0", "header-size",
         "cap-too-big", "cap-2^63", "cap-huge", "cap-unaligned", "cap-8", "cap-0"],
)
def test_open_with_corrupt_header_is_format_error(offset, value) -> None:
    with Channel.create(None, 1024) as ch:
        with SharedMemory.from_id(ch.id) as shm:
            shm.write_at(offset, value)
            with pytest.raises(FormatError):
                Channel.from_id(ch.id)
        # The handle opened before the damage keeps its private capacity.
        assert ch.capacity == 1024
        ch.put_bytes(b"still")
        assert ch.get_bytes() == b"still"


def test_a_version_1_segment_says_which_version_it_found(make, raw) -> None:
    """A segment of shmsem before the robust locks (protocol version 1) is
    refused with a FormatError naming version 1, never half-understood."""
    ch = make(1024)
    raw(ch).write_at(OFF_VERSION, struct.pack("<I", 1))
    with pytest.raises(FormatError, match=r"version 1 is not supported \(this is 2\)"):
        Channel.from_id(ch.id)


def test_scribbled_capacity_does_not_widen_an_open_handle(make, raw) -> None:
    ch = make(128)
    shm = raw(ch)
    put_u64(shm, OFF_CAPACITY, 1 << 40)
    assert ch.capacity == 128 and ch.max_message_size == 120
    with pytest.raises(ValueError):
        ch.put_bytes(b"x" * 121)
    for i in range(50):  # go round the ring many times: all within 128 bytes
        ch.put_bytes(bytes([i]) * 100)
        assert ch.get_bytes() == bytes([i]) * 100
    assert u64(shm, OFF_TAIL) == u64(shm, OFF_HEAD) == 50 * 112


# ---------------------------------------------------------------------------
# Corrupt positions and lengths in a live channel


def _no_big_allocation(call: Callable[[], Any], exc: type) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(exc):
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"peak allocation {peak} bytes while refusing a corrupt channel"


def test_corrupt_tail_is_format_error(make, raw) -> None:
    ch = make(256)
    shm = raw(ch)
    ch.put_bytes(b"abc")
    good = u64(shm, OFF_TAIL)
    for bad in (good + 256 + 8, 2**64 - 8, good + 4):
        put_u64(shm, OFF_TAIL, bad)
        if bad % 8 == 0:
            _no_big_allocation(ch.get_bytes_nowait, FormatError)
            _no_big_allocation(lambda: ch.get(timeout=1), FormatError)
            with pytest.raises(FormatError):
                ch.get_many_bytes(block=False)
            with pytest.raises(FormatError):
                ch.recv_into(bytearray(1000), block=False)
        with pytest.raises(FormatError):
            ch.put_bytes(b"x", timeout=1)
        s = ch.stats()
        assert (s.producer_lock_pid, s.consumer_lock_pid) == (0, 0)
    put_u64(shm, OFF_TAIL, good)
    assert ch.get_bytes_nowait() == b"abc"
    ch.put_bytes(b"ok")
    assert ch.get_bytes_nowait() == b"ok"


def test_corrupt_head_is_format_error(make, raw) -> None:
    ch = make(256)
    shm = raw(ch)
    ch.put_bytes(b"abc")
    head, tail = u64(shm, OFF_HEAD), u64(shm, OFF_TAIL)
    for bad in (head + 4, tail + 8, 2**63):  # unaligned; past tail; absurd
        put_u64(shm, OFF_HEAD, bad)
        with pytest.raises(FormatError):
            ch.get_bytes(timeout=1)
        if bad > tail:
            # A producer may trust its cached head while that shows room
            # (protocol.md 3.3); one that needs more room must look, and refuse.
            with pytest.raises(FormatError):
                ch.put_bytes(b"x" * ch.max_message_size, timeout=1)
        s = ch.stats()
        assert (s.producer_lock_pid, s.consumer_lock_pid) == (0, 0)
    put_u64(shm, OFF_HEAD, head)
    assert ch.get_bytes() == b"abc"


@pytest.mark.parametrize("length", [0xFFFFFFFF, 0x7FFFFFF8, 1 << 20, 249, 17])
def test_corrupt_record_length_is_format_error(make, raw, length) -> None:
    ch = make(256)
    shm = raw(ch)
    ch.put_bytes(b"0123456789")  # a 24-byte record: 17 and more run past tail
    head = u64(shm, OFF_HEAD)
    shm.write_at(RING + head % 256, struct.pack("<I", length))
    for call in (ch.get_bytes_nowait, ch.get_nowait, lambda: ch.get_many(block=False),
                 lambda: ch.get_many_bytes(block=False),
                 lambda: ch.recv_into(bytearray(1 << 16), block=False)):
        _no_big_allocation(call, FormatError)
    assert ch.stats().consumer_lock_pid == 0
    assert u64(shm, OFF_HEAD) == head  # nothing consumed
    shm.write_at(RING + head % 256, struct.pack("<I", 10))
    assert ch.get_bytes() == b"0123456789"


def test_get_many_does_not_lose_the_good_messages_before_a_corrupt_one(make, raw) -> None:
    """Two intact messages, then a record whose length is corrupt: the batch
    call must not swallow the intact ones (taking them off the ring and then
    raising).  Either it returns them, or it leaves them queued."""
    ch = make(256)
    shm = raw(ch)
    for m in (b"one", b"two", b"three"):
        ch.put_bytes(m)
    shm.write_at(RING + 32, struct.pack("<I", 0xFFFF))  # the third record's length
    try:
        got = ch.get_many_bytes()
    except FormatError:
        got = []
    delivered = got
    while True:
        try:
            delivered += ch.get_many_bytes(block=False)
        except (FormatError, queue.Empty):
            break
    assert delivered == [b"one", b"two"], (
        f"delivered {delivered}; get_count is {ch.stats().get_count}")


def test_unknown_kind_is_format_error_for_get(make, raw) -> None:
    ch = make(256)
    shm = raw(ch)
    ch.put_bytes(b"abc")
    shm.write_at(RING + 4, struct.pack("<I", 9))
    with pytest.raises(FormatError):
        ch.get()
    ch.put_bytes(b"\x01\x00\x00\x00")  # kind 3 payload too short for its buffer table
    shm.write_at(RING + 16 + 4, struct.pack("<I", 3))
    with pytest.raises(FormatError):
        ch.get()
    ch.put_bytes(struct.pack("<IIQ", 1, 1000, 4) + b"p")  # pickle runs past the end
    shm.write_at(RING + 32 + 4, struct.pack("<I", 3))
    with pytest.raises(FormatError):
        ch.get()
    assert ch.empty()


# ---------------------------------------------------------------------------
# Lifetime


@pytest.mark.parametrize("cls", [Channel, Mailbox])
def test_a_closed_object_never_attaches_another_segment(cls) -> None:
    """The C object keeps private copies of the capacity (and the Mailbox's
    stride) that a thread still inside an operation may use: re-attaching a
    closed object to another segment must be refused."""
    a, b = cls.create(None, 256), cls.create(None, 4096)
    try:
        a.close()
        with pytest.raises(RuntimeError, match="attaches once"):
            a._attach(shmsem._core.Segment(b.id))
        assert a.closed
    finally:
        b.close()


def test_use_after_close_is_closed_error() -> None:
    ch = Channel.create(None, 256)
    ch.close()
    assert ch.closed
    calls = [
        lambda: ch.put(1), lambda: ch.get(), lambda: ch.put_bytes(b"x"),
        lambda: ch.get_bytes(), lambda: ch.recv_into(bytearray(4)),
        lambda: ch.put_many([1]), lambda: ch.get_many(),
        lambda: ch.put_many_bytes([b"x"]), lambda: ch.get_many_bytes(),
        lambda: ch.put_nowait(1),
        ch.get_nowait, lambda: ch.put_bytes_nowait(b"x"), ch.get_bytes_nowait,
        ch.qsize, ch.empty, ch.full, ch.stats,
        lambda: asyncio.run(ch.get_async(timeout=1)),
        lambda: asyncio.run(ch.put_async(1, timeout=1)),
    ]
    for call in calls:
        with pytest.raises(ClosedError):
            call()
    ch.close()  # idempotent
    assert issubclass(ClosedError, ValueError)


def test_close_removes_only_for_the_owner(unique_key) -> None:
    key = unique_key()
    a = Channel.create(key, 256)
    b = Channel.open(key)
    b.close()
    c = Channel.open(key)  # still there
    c.close()
    a.close()
    with pytest.raises(shmsem.NotFoundError):
        Channel.open(key)


def test_owner_can_be_handed_over(unique_key) -> None:
    key = unique_key()
    a = Channel.create(key, 256)
    b = Channel.open(key)
    try:
        a.owner, b.owner = False, True
        a.close()
        with Channel.open(key) as c:
            assert not c.owner
    finally:
        b.close()
        a.close()
    with pytest.raises(shmsem.NotFoundError):
        Channel.open(key)


def test_with_statement_closes(unique_key) -> None:
    key = unique_key()
    with Channel.create(key, 256) as ch:
        ch.put(1)
    assert ch.closed
    with pytest.raises(shmsem.NotFoundError):
        Channel.open(key)


def test_remove_marks_for_removal_and_the_handle_keeps_working(unique_key) -> None:
    key = unique_key()
    ch = Channel.create(key, 256)
    try:
        ch.remove()
        with pytest.raises(shmsem.NotFoundError):
            Channel.open(key)
        ch.put_bytes(b"after remove")
        assert ch.get_bytes() == b"after remove"
    finally:
        ch.close()  # tolerates the segment being gone already


def test_pickling_reopens_the_same_channel_not_as_owner(make) -> None:
    ch = make(512)
    ch.put_bytes(b"first")
    other = pickle.loads(pickle.dumps(ch))
    try:
        assert isinstance(other, Channel) and other is not ch
        assert other.id == ch.id and other.capacity == ch.capacity
        assert not other.owner
        assert other.get_bytes() == b"first"
        other.put({"back": 1})
        assert ch.get() == {"back": 1}
    finally:
        other.close()
    ch.put_bytes(b"still here")  # closing the copy did not remove it
    assert ch.get_bytes() == b"still here"


def test_repr(make) -> None:
    ch = make(256)
    assert f"id={ch.id}" in repr(ch) and "capacity=256" in repr(ch)


# ---------------------------------------------------------------------------
# asyncio


async def _ticker(counter: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        counter[0] += 1
        await asyncio.sleep(0.005)


def _when(pred: Callable[[], bool], action: Callable[[], Any]) -> threading.Thread:
    """A thread that runs action once pred() holds (or after WAIT)."""

    def run() -> None:
        deadline = time.monotonic() + WAIT
        while not pred() and time.monotonic() < deadline:
            time.sleep(0.002)
        action()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_get_async_does_not_block_the_event_loop(make) -> None:
    """The message is put only after the loop has ticked several times while
    get_async waits: a get_async that blocked the loop would time out."""
    ch = make(4096)
    ticks = [0]

    async def main() -> Any:
        stop = asyncio.Event()
        tick = asyncio.create_task(_ticker(ticks, stop))
        feeder = _when(lambda: ticks[0] >= 10, lambda: ch.put({"n": 1}))
        try:
            return await ch.get_async(timeout=WAIT)
        finally:
            stop.set()
            await tick
            feeder.join(WAIT)

    assert asyncio.run(main()) == {"n": 1}
    assert ticks[0] >= 10


def test_get_async_without_timeout(make) -> None:
    ch = make(4096)

    async def main() -> Any:
        feeder = _when(lambda: True, lambda: (time.sleep(0.1), ch.put_bytes(b"raw")))
        got = await asyncio.wait_for(ch.get_async(), WAIT)
        feeder.join(WAIT)
        return got

    assert asyncio.run(main()) == b"raw"


def test_get_async_timeout_raises_queue_empty(make) -> None:
    ch = make(4096)

    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            await ch.get_async(timeout=0.1)
        assert time.monotonic() - t0 >= 0.1
        with pytest.raises(queue.Empty):
            await ch.get_async(timeout=0)

    asyncio.run(main())


def test_get_async_returns_at_once_when_data_is_there(make) -> None:
    ch = make(4096)
    ch.put([1, 2])
    assert asyncio.run(ch.get_async(timeout=0)) == [1, 2]


def test_cancelled_get_async_takes_nothing(make) -> None:
    ch = make(4096)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ch.get_async(), 0.05)
        ch.put("kept")
        await asyncio.sleep(0.3)  # let the helper thread see the data and finish

    asyncio.run(main())  # also waits for the default executor's threads
    assert ch.get_nowait() == "kept"


def test_close_right_after_a_cancelled_get_async(unique_key) -> None:
    """A get_async cancelled by a timeout must not keep the channel busy:
    closing it right afterwards works and removes the segment."""
    key = unique_key()
    ch = Channel.create(key, 4096)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ch.get_async(), 0.05)
        try:
            ch.close()
        finally:
            if not ch.closed:  # clean up for the leak check, then fail below
                await asyncio.sleep(0.5)
                ch.close()
                pytest.fail("close() right after a cancelled get_async raised")

    asyncio.run(main())
    assert ch.closed
    with pytest.raises(shmsem.NotFoundError):
        Channel.open(key)


def test_unpicklable_object_puts_nothing(make) -> None:
    ch = make(4096)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        ch.put(lambda: 0)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        ch.put_many([1, lambda: 0, 3])
    assert ch.empty() and ch.stats().put_count == 0


def test_put_async_waits_for_room_without_blocking_the_loop(make) -> None:
    ch = make(128)
    ch.put_bytes(b"x" * 112)
    ticks = [0]

    async def main() -> None:
        stop = asyncio.Event()
        tick = asyncio.create_task(_ticker(ticks, stop))
        drainer = _when(lambda: ticks[0] >= 10, ch.get_bytes_nowait)
        try:
            await ch.put_async(b"y" * 100, timeout=WAIT)
        finally:
            stop.set()
            await tick
            drainer.join(WAIT)

    asyncio.run(main())
    assert ticks[0] >= 10
    assert ch.get() == b"y" * 100


def test_put_async_timeout_raises_queue_full(make) -> None:
    ch = make(128)
    ch.put_bytes(b"x" * 112)

    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            await ch.put_async(b"y" * 100, timeout=0.1)
        assert time.monotonic() - t0 >= 0.1
        with pytest.raises(ValueError):
            await ch.put_async(b"z" * 1000, timeout=1)  # never fits: at once

    asyncio.run(main())
    assert ch.qsize() == 1


def test_put_async_and_get_async_together(make) -> None:
    ch = make(256)
    n = 300

    async def producer() -> None:
        for i in range(n):
            await ch.put_async(i, timeout=WAIT)

    async def consumer() -> list[int]:
        return [await ch.get_async(timeout=WAIT) for _ in range(n)]

    async def main() -> list[int]:
        got, _ = await asyncio.gather(consumer(), producer())
        return got

    assert asyncio.run(main()) == list(range(n))


# ---------------------------------------------------------------------------
# Threads


def test_producer_and_consumer_threads(make) -> None:
    """A small ring forces both sides to wait on each other many times; they
    can only make progress if waiting releases the GIL."""
    ch = make(256)
    n = 3000
    got: list[int] = []

    def produce() -> None:
        for i in range(n):
            ch.put_bytes(i.to_bytes(4, "little") * (1 + i % 7), timeout=WAIT)

    def consume() -> None:
        for _ in range(n):
            m = ch.get_bytes(timeout=WAIT)
            assert len(m) % 4 == 0 and m == m[:4] * (len(m) // 4)
            got.append(int.from_bytes(m[:4], "little"))

    c, p = Runner(consume), Runner(produce)
    p.join(60)
    c.join(60)
    assert got == list(range(n))
    assert ch.empty()


def test_a_blocked_get_lets_other_threads_run(make) -> None:
    ch = make(256)
    getter = Runner(lambda: ch.get_bytes(timeout=WAIT))
    count = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.2:
        count += 1  # pure Python work: needs the GIL
    ch.put_bytes(b"done")
    assert getter.join() == b"done"
    assert count > 1000


def test_several_threads_each_side(make) -> None:
    ch = make(512)
    producers, per = 3, 500
    got: list[tuple[int, int]] = []
    lock = threading.Lock()

    def produce(p: int) -> None:
        for i in range(per):
            ch.put((p, i), timeout=WAIT)

    def consume() -> None:
        while True:
            item = ch.get(timeout=WAIT)
            if item is None:
                return
            with lock:
                got.append(item)

    cs = [Runner(consume) for _ in range(2)]
    ps = [Runner(lambda p=p: produce(p)) for p in range(producers)]
    for r in ps:
        r.join(60)
    for _ in cs:
        ch.put(None)
    for r in cs:
        r.join(60)
    assert sorted(got) == [(p, i) for p in range(producers) for i in range(per)]


def test_close_while_another_thread_waits_is_all_or_nothing(make) -> None:
    """close() while a thread sleeps in get(): either it closes (and the
    waiter gets ClosedError) or it refuses and leaves the handle as it was,
    usable and not closed.  A handle that reports closed=False must work."""
    ch = make(256)
    getter = Runner(lambda: ch.get_bytes(timeout=2))
    try:
        deadline = time.monotonic() + WAIT
        while not ch.stats().consumers_waiting and time.monotonic() < deadline:
            time.sleep(0.005)
        try:
            ch.close()
        except BufferError:
            assert not ch.closed
            ch.put_bytes(b"after a refused close")  # the handle must still work
            assert getter.join() == b"after a refused close"
        else:
            assert ch.closed
            with pytest.raises(ClosedError):
                getter.join()
    finally:
        getter.thread.join(WAIT)  # so that the fixture can close it


@pytest.mark.parametrize("side", ["get", "put"])
def test_close_with_a_view_alive_refuses_and_changes_nothing(make, side) -> None:
    """Issue 8, finding 7: while a view of the channel's own segment is
    alive, close() raises BufferError before it changes anything: the
    handle stays open and usable, and a thread blocked in it (timeout=None)
    goes on waiting and completes normally.  Once the view is gone, close()
    succeeds and a thread blocked with timeout=None gets ClosedError."""
    ch = make(64)
    filler = b"x" * ch.max_message_size
    if side == "put":
        ch.put_bytes(filler)
        call: Callable[[], Any] = lambda: ch.put_bytes(b"y")
        flag = "producers_waiting"
    else:
        call = lambda: ch.get_bytes()
        flag = "consumers_waiting"

    def asleep() -> None:
        deadline = time.monotonic() + WAIT
        while not getattr(ch.stats(), flag):
            assert time.monotonic() < deadline, "the thread never slept"
            time.sleep(0.005)

    view = ch._shm.buf  # type: ignore[union-attr]
    first = Runner(call)
    try:
        asleep()
        with pytest.raises(BufferError):
            ch.close()
        assert not ch.closed
        assert first.thread.is_alive()
        if side == "put":
            assert ch.get_bytes() == filler
            assert first.join() is None
            assert ch.get_bytes() == b"y"
            ch.put_bytes(filler)
        else:
            ch.put_bytes(b"after a refused close")
            assert first.join() == b"after a refused close"
        second = Runner(call)
        asleep()
        view.release()
        ch.close()
        assert ch.closed
        with pytest.raises(ClosedError):
            second.join()
    finally:
        view.release()
        if not ch.closed:  # a failed check: unblock the threads
            ch.put_bytes(b"") if side == "get" else ch.get_bytes(block=False)
        first.thread.join(WAIT)


def test_large_records_restart_at_the_ring_start(make) -> None:
    """Into an empty ring, a record of 64 KiB or more that would start deep
    enough in the ring for itself to fit before that point starts at offset 0,
    behind a padding record (protocol.md 3.3); consumers never see the
    padding."""
    cap = 1 << 20
    ch = make(cap)
    big = bytes(range(256)) * 512  # 128 KiB
    rec = record_size(len(big))
    ch.put_bytes(big)
    assert ch._stats()["tail"] == rec
    assert ch.get_bytes() == big
    ch.put_bytes(big)  # empty, at offset rec >= rec: pads to the end, starts at 0
    stats = ch._stats()
    assert stats["tail"] == cap + rec
    assert stats["messages"] == 1 and ch.qsize() == 1
    assert ch.get_many_bytes() == [big]  # the padding is skipped, not delivered
    assert ch.empty() and ch._stats()["head"] == cap + rec
    # A small record never rewinds, and neither does anything into a non-empty ring.
    ch.put_bytes(b"small")
    ch.put_bytes(big)
    assert ch._stats()["tail"] == cap + rec + record_size(5) + rec
    assert ch.get_bytes() == b"small" and ch.get_bytes() == big
    # Not enough room before the current offset (here 2 * rec + 16): no rewind.
    before = ch._stats()["tail"]
    ch.put_bytes(big * 3)
    assert ch._stats()["tail"] == before + record_size(3 * len(big))
    assert ch.get_bytes() == big * 3
