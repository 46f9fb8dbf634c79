"""Mailbox: publish/read/wait, sizes, create/open, refusing bad and corrupt
segments, lifetime, and between processes: a writer hammering readers that
check every value, writers excluding each other, writers SIGKILLed in the
middle of a publish, and wake-ups.

Values that cross processes carry their own sequence number and a crc32, so
a torn value (a mix of two publishes) cannot go unnoticed.  Every wait is
bounded; elapsed times are only checked from below.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import struct
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from proc_helpers import FUTEX_OWNER_DIED, IMPORT_LINE

import shmsem
from shmsem import Channel, ClosedError, FormatError, Mailbox, SharedMemory
from shmsem._core import MAILBOX_OFFSETS

WAIT = 20.0

# docs/protocol.md, section 4.1
OFF_MAGIC, OFF_VERSION, OFF_HEADER_SIZE, OFF_CAPACITY, OFF_STRIDE = 0, 8, 12, 16, 24
OFF_LOCK, OFF_STATE = MAILBOX_OFFSETS["writer_lock"], MAILBOX_OFFSETS["state"]
CELLS = 128
CELL_LOCK_SEQ, CELL_SEQ, CELL_LENGTH, CELL_VALUE = 0, 8, 16, 64


def stride_for(capacity: int) -> int:
    return 64 + (capacity + 63) // 64 * 64


@pytest.fixture
def make() -> Iterator[Callable[..., Mailbox]]:
    made: list[Mailbox] = []

    def factory(capacity: int = 1024, key: int | None = None) -> Mailbox:
        mb = Mailbox.create(key, capacity)
        made.append(mb)
        return mb

    yield factory
    for mb in made:
        if not mb.closed:
            mb.owner = True
            mb.close()


@pytest.fixture
def raw() -> Iterator[Callable[[Mailbox], SharedMemory]]:
    made: list[SharedMemory] = []

    def factory(mb: Mailbox) -> SharedMemory:
        shm = SharedMemory.from_id(mb.id)
        made.append(shm)
        return shm

    yield factory
    for shm in made:
        shm.close()


def u64(shm: SharedMemory, off: int) -> int:
    return struct.unpack("<Q", shm.read_at(off, 8))[0]


def put_u64(shm: SharedMemory, off: int, value: int) -> None:
    shm.write_at(off, struct.pack("<Q", value))


def wait_for(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


# ---------------------------------------------------------------------------
# Basics


def test_read_before_any_publish(make) -> None:
    mb = make(100)
    assert mb.read() == (0, b"")
    assert mb.seq == 0
    assert mb.capacity == 100


def test_publish_returns_increasing_seq_and_read_sees_the_latest(make) -> None:
    mb = make(100)
    for i in range(1, 20):
        assert mb.publish(b"v%d" % i) == i
        assert mb.read() == (i, b"v%d" % i)
        assert mb.seq == i


def test_value_sizes(make) -> None:
    mb = make(100)
    for n in (0, 1, 63, 64, 65, 99, 100):
        data = bytes(range(n))
        seq = mb.publish(data)
        assert mb.read() == (seq, data)
    mb.publish(bytearray(b"ba"))
    assert mb.read()[1] == b"ba"
    mb.publish(memoryview(b"xmvx")[1:3])
    assert mb.read()[1] == b"mv"


def test_value_larger_than_capacity_raises_value_error(make) -> None:
    mb = make(100)
    mb.publish(b"keep")
    with pytest.raises(ValueError):
        mb.publish(b"x" * 101)
    assert mb.read() == (1, b"keep")
    with pytest.raises(TypeError):
        mb.publish("a str")  # type: ignore[arg-type]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Mailbox.create(None, 0)
    with pytest.raises(TypeError):
        Mailbox.create(None, 1.5)  # type: ignore[arg-type]


def test_wait_returns_at_once_when_newer_exists(make) -> None:
    mb = make(100)
    mb.publish(b"a")
    mb.publish(b"b")
    assert mb.wait(0, timeout=0) == (2, b"b")
    assert mb.wait(1, timeout=WAIT) == (2, b"b")  # the latest, not the next


@pytest.mark.parametrize("timeout", [0, 0.05])
def test_wait_timeout_returns_none(make, timeout) -> None:
    mb = make(100)
    mb.publish(b"a")
    t0 = time.monotonic()
    assert mb.wait(1, timeout=timeout) is None
    assert time.monotonic() - t0 >= timeout
    assert mb.wait(5, timeout=0.01) is None  # a seq from the future: nothing newer


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan])
def test_wait_bad_timeout(make, bad) -> None:
    mb = make(100)
    with pytest.raises(ValueError):
        mb.wait(0, timeout=bad)


def test_wait_bad_after_seq(make) -> None:
    mb = make(100)
    with pytest.raises(ValueError):
        mb.wait(-1, timeout=0)
    with pytest.raises(TypeError):
        mb.wait("1", timeout=0)  # type: ignore[arg-type]


def test_wait_in_a_thread_is_woken_by_publish(make) -> None:
    mb = make(100)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(mb.wait(0, timeout=WAIT)), daemon=True)
    t.start()
    wait_for(lambda: mb.stats().readers_waiting, "the thread to sleep")
    mb.publish(b"wake")
    t.join(WAIT)
    assert not t.is_alive()
    assert result == [(1, b"wake")]


def test_a_wait_that_times_out_unregisters(make) -> None:
    """Issue 8, finding 10: a wait() that slept and timed out with nobody
    else waiting leaves `waiting` at 0, so that publish() makes no futex
    wake for nobody."""
    mb = make(100)
    assert mb.wait(0, timeout=0.05) is None
    assert not mb.stats().readers_waiting
    mb.publish(b"x")
    assert mb.wait(1, timeout=0.05) is None
    assert not mb.stats().readers_waiting


def test_wait_forever_is_woken(make) -> None:
    mb = make(100)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(mb.wait(0)), daemon=True)
    t.start()
    time.sleep(0.05)
    mb.publish(b"x")
    t.join(WAIT)
    assert result == [(1, b"x")]


def test_stats(make) -> None:
    mb = make(100)
    mb.publish(b"1")
    mb.publish(b"2")
    s = mb.stats()
    assert s.capacity == 100 and s.seq == 2
    assert s.writer_lock_pid == 0 and s.recoveries == 0
    assert s.current_cell in (0, 1)


def test_header_layout(make, raw) -> None:
    """docs/protocol.md section 1: the magic spells "SHMSEMMB" in memory."""
    mb = make(1000)
    shm = raw(mb)
    assert shm.read_at(OFF_MAGIC, 8) == b"SHMSEMMB"
    version, header_size, capacity, stride, pid = struct.unpack("<IIQQI", shm.read_at(8, 28))
    assert (version, header_size, capacity, stride, pid) == (2, 128, 1000, stride_for(1000),
                                                             os.getpid())
    assert shm.size == 128 + 2 * stride_for(1000)


def test_cells_alternate_and_layout_matches_the_protocol(make, raw) -> None:
    mb = make(100)
    shm = raw(mb)
    stride = stride_for(100)
    assert u64(shm, OFF_STRIDE) == stride and u64(shm, OFF_CAPACITY) == 100
    assert shm.size >= 128 + 2 * stride
    for seq in range(1, 6):
        mb.publish(b"value %d" % seq)
        state = u64(shm, OFF_STATE)
        assert state >> 1 == seq
        cell = CELLS + (state & 1) * stride
        assert u64(shm, cell + CELL_SEQ) == seq
        assert u64(shm, cell + CELL_LOCK_SEQ) % 2 == 0
        n = u64(shm, cell + CELL_LENGTH)
        assert shm.read_at(cell + CELL_VALUE, n) == b"value %d" % seq
        assert (state & 1) == (seq & 1)  # cell 1 first, then alternating


# ---------------------------------------------------------------------------
# create / open


def test_create_open_create_or_open(unique_key) -> None:
    key = unique_key()
    with pytest.raises(shmsem.NotFoundError):
        Mailbox.open(key)
    a = Mailbox.create(key, 300)
    try:
        with pytest.raises(shmsem.ExistsError):
            Mailbox.create(key, 300)
        a.publish(b"shared")
        for h in (Mailbox.open(key), Mailbox(key, 10), Mailbox(key, 5000), Mailbox.from_id(a.id)):
            try:
                assert (h.created, h.owner, h.capacity) == (False, False, 300)
                assert h.read() == (1, b"shared")
            finally:
                h.close()
    finally:
        a.close()
    with pytest.raises(shmsem.NotFoundError):
        Mailbox.open(key)
    with Mailbox(key, 64) as c:
        assert c.created and c.owner


def test_plain_segment_is_format_error(unique_key) -> None:
    key = unique_key()
    with SharedMemory.create(key, 4096) as shm:
        with pytest.raises(FormatError):
            Mailbox.open(key)
        with pytest.raises(FormatError):
            Mailbox(key, 100)
        shm.write_at(0, b"SHMSEMXX")
        with pytest.raises(FormatError):
            Mailbox.from_id(shm.id)


def test_channel_is_not_a_mailbox() -> None:
    with Channel.create(None, 1024) as ch, pytest.raises(FormatError):
        Mailbox.from_id(ch.id)


@pytest.mark.parametrize(
    "offset, value",
    [
        (OFF_MAGIC, b"SHMSEMCH"),
        (OFF_VERSION, struct.pack("<I", 1)),  # the robust-lock protocol is version 2
        (OFF_VERSION, struct.pack("<I", 3)),
        (OFF_HEADER_SIZE, struct.pack("<I", 256)),
        (OFF_STRIDE, struct.pack("<Q", stride_for(1000) + 8)),  # not a multiple of 64
        (OFF_STRIDE, struct.pack("<Q", 0)),
        (OFF_STRIDE, struct.pack("<Q", stride_for(1000) + 64)),  # cells run past the end
        (OFF_STRIDE, struct.pack("<Q", 2**63)),
        (OFF_CAPACITY, struct.pack("<Q", stride_for(1000) - 63)),  # larger than a cell
        (OFF_CAPACITY, struct.pack("<Q", 2**64 - 1)),
    ],
    ids=["magic", "version1", "version3", "header-size", "stride-unaligned", "stride-0", "stride-too-big",
         "stride-huge", "cap-too-big", "cap-huge"],
)
def test_corrupt_header_is_format_error(offset, value) -> None:
    with Mailbox.create(None, 1000) as mb:
        mb.publish(b"before")
        with SharedMemory.from_id(mb.id) as shm:
            shm.write_at(offset, value)
            with pytest.raises(FormatError):
                Mailbox.from_id(mb.id)
        assert mb.read() == (1, b"before")  # the open handle keeps its private copy


def _no_big_allocation(call: Callable[[], Any]) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"peak allocation {peak} bytes"


@pytest.mark.parametrize("length", [101, 2**32, 2**63, 2**64 - 1])
def test_corrupt_cell_length_is_format_error(make, raw, length) -> None:
    mb = make(100)
    shm = raw(mb)
    mb.publish(b"good")
    cell = CELLS + (u64(shm, OFF_STATE) & 1) * stride_for(100)
    put_u64(shm, cell + CELL_LENGTH, length)
    _no_big_allocation(mb.read)
    _no_big_allocation(lambda: mb.wait(0, timeout=1))
    put_u64(shm, cell + CELL_LENGTH, 4)
    assert mb.read() == (1, b"good")


def test_current_cell_stuck_odd_is_format_error_not_a_hang(make, raw) -> None:
    """Writers only ever write the cell that is not current, so an odd
    counter on the current cell that never changes is corruption: read()
    must give up with FormatError (bounded here by a thread), not spin."""
    mb = make(100)
    shm = raw(mb)
    mb.publish(b"good")
    cell = CELLS + (u64(shm, OFF_STATE) & 1) * stride_for(100)
    counter = u64(shm, cell + CELL_LOCK_SEQ)
    put_u64(shm, cell + CELL_LOCK_SEQ, counter + 1)
    result: list[Any] = []

    def read() -> None:
        try:
            result.append(mb.read())
        except FormatError as e:
            result.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(WAIT)
    stuck = t.is_alive()
    put_u64(shm, cell + CELL_LOCK_SEQ, counter)  # repair, so that a stuck reader ends
    t.join(WAIT)
    assert not stuck, "read() spun for 20 s on a stuck odd counter"
    assert len(result) == 1 and isinstance(result[0], FormatError), result
    assert mb.read() == (1, b"good")


def test_scribbled_capacity_does_not_widen_an_open_handle(make, raw) -> None:
    mb = make(100)
    shm = raw(mb)
    put_u64(shm, OFF_CAPACITY, 1 << 40)
    assert mb.capacity == 100
    with pytest.raises(ValueError):
        mb.publish(b"x" * 101)
    mb.publish(b"x" * 100)
    assert mb.read() == (1, b"x" * 100)


def test_writer_died_mid_publish_leaves_the_last_value(make, raw) -> None:
    """What a writer killed inside publish() leaves behind (protocol.md 4.2):
    the other cell half-written with an odd counter, state unchanged."""
    mb = make(100)
    shm = raw(mb)
    mb.publish(b"complete")
    state = u64(shm, OFF_STATE)
    other = CELLS + ((state & 1) ^ 1) * stride_for(100)
    put_u64(shm, other + CELL_LOCK_SEQ, u64(shm, other + CELL_LOCK_SEQ) + 1)  # odd
    put_u64(shm, other + CELL_SEQ, 2)
    put_u64(shm, other + CELL_LENGTH, 2**40)
    shm.write_at(other + CELL_VALUE, b"garbage" * 10)
    assert mb.read() == (1, b"complete")
    assert mb.wait(1, timeout=0.01) is None
    assert mb.publish(b"next") == 2
    assert mb.read() == (2, b"next")
    assert u64(shm, other + CELL_LOCK_SEQ) % 2 == 0
    assert mb.publish(b"third") == 3 and mb.read() == (3, b"third")


def test_dead_writer_lock_is_recovered(make, raw) -> None:
    """The word the kernel leaves when the writer dies holding the lock
    (docs/protocol.md section 2): the next publish takes it over."""
    mb = make(100)
    shm = raw(mb)
    shm.write_at(OFF_LOCK, struct.pack("<I", FUTEX_OWNER_DIED))
    assert mb.stats().writer_lock_pid == 0
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(mb.publish(b"after")), daemon=True)
    t.start()
    t.join(WAIT)  # publish() has no timeout: a thread bounds the wait
    assert not t.is_alive(), "publish() never took over the dead writer's lock"
    assert result == [1]
    s = mb.stats()
    assert s.recoveries == 1 and s.writer_lock_pid == 0


# ---------------------------------------------------------------------------
# Lifetime


def test_close_with_a_view_alive_refuses_and_changes_nothing(make) -> None:
    """Issue 8, finding 7: while a view of the mailbox's own segment is
    alive, close() raises BufferError before it changes anything: the
    handle stays usable and a wait(timeout=None) in another thread goes on
    and returns the next value.  Once the view is gone, close() succeeds
    and a wait(timeout=None) gets ClosedError."""
    mb = make(100)
    view = mb._shm.buf  # type: ignore[union-attr]
    box: list[Any] = []

    def waiter(after: int) -> threading.Thread:
        box.clear()

        def run() -> None:
            try:
                box.append(mb.wait(after))
            except BaseException as e:  # noqa: BLE001 - handed to the test
                box.append(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        wait_for(lambda: mb.stats().readers_waiting, "the thread to sleep")
        return t

    t = waiter(0)
    try:
        with pytest.raises(BufferError):
            mb.close()
        assert not mb.closed and t.is_alive()
        assert mb.publish(b"after a refused close") == 1
        t.join(WAIT)
        assert box == [(1, b"after a refused close")]
        t = waiter(1)
        view.release()
        mb.close()
        assert mb.closed
        t.join(WAIT)
        assert not t.is_alive() and len(box) == 1 and isinstance(box[0], ClosedError), box
    finally:
        view.release()
        if not mb.closed:
            mb.publish(b"unblock")
        t.join(WAIT)


def test_use_after_close_is_closed_error() -> None:
    mb = Mailbox.create(None, 100)
    mb.close()
    assert mb.closed
    for call in (lambda: mb.publish(b"x"), mb.read, lambda: mb.wait(0, timeout=0),
                 mb.stats, lambda: mb.seq):
        with pytest.raises(ClosedError):
            call()
    mb.close()


def test_owner_close_and_pickle(unique_key) -> None:
    key = unique_key()
    mb = Mailbox.create(key, 100)
    try:
        mb.publish(b"p")
        other = pickle.loads(pickle.dumps(mb))
        assert isinstance(other, Mailbox) and not other.owner and other.id == mb.id
        assert other.read() == (1, b"p")
        other.publish(b"q")
        other.close()
        assert mb.read() == (2, b"q")  # the copy's close did not remove it
    finally:
        mb.close()
    with pytest.raises(shmsem.NotFoundError):
        Mailbox.open(key)


def test_with_and_remove(unique_key) -> None:
    key = unique_key()
    with Mailbox.create(key, 100) as mb:
        mb.remove()
        with pytest.raises(shmsem.NotFoundError):
            Mailbox.open(key)
        mb.publish(b"still usable")
        assert mb.read() == (1, b"still usable")
    assert mb.closed


# ---------------------------------------------------------------------------
# Processes

CHECKSUM = IMPORT_LINE + r'''
import json, os, random, select, signal, struct, sys, time, zlib


def make_value(seq, body):
    head = struct.pack("<Q", seq)
    return head + body + struct.pack("<I", zlib.crc32(body, zlib.crc32(head)))


def crc_ok(value):
    if len(value) < 12:
        return False
    (crc,) = struct.unpack_from("<I", value, len(value) - 4)
    return zlib.crc32(value[8:-4], zlib.crc32(value[:8])) == crc


def check_value(seq, value):
    """None if value is the intact value of publish number seq."""
    if seq == 0:
        return None if value == b"" else f"seq 0 with {len(value)} bytes"
    if len(value) < 12:
        return f"seq {seq}: short value of {len(value)} bytes"
    (inner,) = struct.unpack_from("<Q", value)
    if not crc_ok(value):
        return f"seq {seq}: bad crc over {len(value)} bytes (torn)"
    if inner != seq:
        return f"returned seq {seq} but the value is publish {inner}"
    return None

'''
CS: dict[str, Any] = {}
exec(CHECKSUM, CS)  # noqa: S102 - our own helper source, shared with the children
make_value: Callable[[int, bytes], bytes] = CS["make_value"]
check_value: Callable[[int, bytes], str | None] = CS["check_value"]

READER = r'''
rng = random.Random(READER_ID)
end = time.monotonic() + DURATION
last, reads, seen, errors = 0, 0, set(), []
while time.monotonic() < end:
    if rng.random() < 0.2:
        r = mb.wait(last, timeout=0.05)
        if r is None:
            continue
        seq, value = r
        if seq <= last:
            errors.append(f"wait({last}) returned seq {seq}")
    else:
        seq, value = mb.read()
    reads += 1
    if seq < last:
        errors.append(f"seq went back from {last} to {seq}")
    err = check_value(seq, value)
    if err:
        errors.append(err)
    last = max(last, seq)
    seen.add(seq)
print(json.dumps({"reads": reads, "distinct": len(seen), "last": last, "errors": errors[:5],
                  "nerrors": len(errors)}), flush=True)
'''


def mb_code(shmid: int, body: str, **consts: Any) -> str:
    head = "".join(f"{k} = {v!r}\n" for k, v in consts.items())
    return (head + CHECKSUM + f"\nfrom shmsem import Mailbox\nmb = Mailbox.from_id({shmid})\n"
            + textwrap.dedent(body))


def test_writer_hammering_two_readers(make, child) -> None:
    cap = 1 << 16
    mb = make(cap)
    writer = child(mb_code(mb.id, """
        rng = random.Random(7)
        block = os.urandom(CAP)
        end = time.monotonic() + DURATION
        seq = mb.seq
        while time.monotonic() < end:
            n = rng.randint(0, CAP - 12)
            off = rng.randint(0, CAP - n)
            got = mb.publish(make_value(seq + 1, block[off:off + n]))
            if got != seq + 1:
                print("publish returned", got, "expected", seq + 1, flush=True)
                sys.exit(1)
            seq = got
        print("published", seq, flush=True)
    """, CAP=cap, DURATION=1.5))
    readers = [child(mb_code(mb.id, READER, READER_ID=i, DURATION=2.0)) for i in range(2)]
    line = writer.readline(timeout=WAIT).split()
    assert line[0] == "published", line
    total = int(line[1])
    assert writer.wait() == 0
    for r in readers:
        rep = json.loads(r.readline(timeout=WAIT))
        assert rep["nerrors"] == 0, rep["errors"]
        assert rep["reads"] > 0 and rep["distinct"] >= 2
        assert rep["last"] <= total
        assert r.wait() == 0
    seq, value = mb.read()
    assert seq == total and check_value(seq, value) is None


def test_writers_exclude_each_other(make, child, tmp_path) -> None:
    """Two writers publishing at once: every publish gets its own seq (the
    union is exactly 1..N) and every value read is intact."""
    mb = make(4096)
    per = 3000
    writers = []
    for w in range(2):
        out = tmp_path / f"w{w}.json"
        writers.append((child(mb_code(mb.id, """
            rng = random.Random(W)
            seqs = []
            for i in range(PER):
                body = bytes([W]) * rng.randint(0, 4000)
                # The seq is not known before publishing: the reader checks
                # the crc only.
                seqs.append(mb.publish(make_value(W << 32 | i, body)))
            json.dump(seqs, open(OUT, "w"))
            print("done", flush=True)
        """, W=w, PER=per, OUT=str(out))), out))
    reader = child(mb_code(mb.id, """
        end = time.monotonic() + 1.0
        errs, last = [], 0
        while time.monotonic() < end:
            seq, value = mb.read()
            if seq < last:
                errs.append("back")
            last = seq
            if seq and not crc_ok(value):
                errs.append("torn")
        print(len(errs), flush=True)
    """))
    for c, _ in writers:
        c.expect("done", timeout=60)
        assert c.wait() == 0
    assert reader.readline(timeout=WAIT) == "0"
    seqs = [s for _, out in writers for s in json.loads(out.read_text())]
    assert sorted(seqs) == list(range(1, 2 * per + 1))
    for _, out in writers:
        mine = json.loads(out.read_text())
        assert mine == sorted(mine)
    assert mb.seq == 2 * per


def test_writers_killed_mid_publish(make, child) -> None:
    """A spawner forks writers of large values and SIGKILLs each, half of
    them while they hold the writer lock.  A reader checks every value all
    along; afterwards the last complete value reads back intact and a new
    writer can publish (the lock is taken over)."""
    cap = 1 << 19
    mb = make(cap)
    kills = 8
    spawner = child(mb_code(mb.id, """
        block = os.urandom(CAP)
        held = 0
        for r in range(KILLS):
            rd, wr = os.pipe()
            pid = os.fork()
            if pid == 0:
                die_with_parent()
                os.close(rd)
                rng = random.Random(r)
                first = True
                while True:
                    n = rng.randint(CAP // 4, CAP - 12)
                    seq = mb.seq  # a single writer at a time: the next is seq + 1
                    mb.publish(make_value(seq + 1, block[:n]))
                    if first:
                        os.write(wr, b"1")
                        first = False
            os.close(wr)
            if not select.select([rd], [], [], 20)[0]:
                print("writer never published", flush=True)
                sys.exit(1)
            if r % 2 and r != KILLS - 1:
                time.sleep(random.uniform(0, 0.02))
                os.kill(pid, signal.SIGKILL)
                last_held = False
            else:  # aim: kill it inside publish(), holding the lock
                last_held = kill_in_lock(pid, lambda: mb.stats().writer_lock_pid)
            os.waitpid(pid, 0)
            held += last_held
            os.close(rd)
        print("done", held, int(last_held), flush=True)
    """, CAP=cap, KILLS=kills))
    reader = child(mb_code(mb.id, """
        last, reads, errors = 0, 0, []
        while not select.select([sys.stdin], [], [], 0)[0]:
            seq, value = mb.read()
            reads += 1
            if seq < last:
                errors.append(f"seq went back from {last} to {seq}")
            err = check_value(seq, value)
            if err:
                errors.append(err)
            last = seq
        print(json.dumps({"reads": reads, "errors": errors[:5]}), flush=True)
    """))
    line = spawner.readline(timeout=90).split()
    assert line[0] == "done", line
    assert spawner.wait() == 0
    reader.send("stop")
    rep = json.loads(reader.readline(timeout=WAIT))
    assert rep["errors"] == [] and rep["reads"] > 0
    assert reader.wait() == 0
    assert int(line[1]) >= 1, "no writer was ever killed inside the writer lock"

    seq, value = mb.read()
    assert seq >= kills and check_value(seq, value) is None
    # A new writer, in a new process: must take the dead writer's lock over.
    newcomer = child(mb_code(mb.id, """
        before = mb.stats().recoveries
        seq = mb.publish(make_value(mb.seq + 1, b"newcomer"))
        print(seq, mb.stats().recoveries - before, flush=True)
    """))
    got, recoveries = map(int, newcomer.readline(timeout=WAIT).split())
    assert newcomer.wait() == 0
    assert got == seq + 1
    # The last writer died holding the lock: the newcomer took it over.
    assert recoveries == int(line[2])
    # Every writer killed in the lock was taken over once (the counter lives
    # in the segment, shared by every process).  The kills not aimed at the
    # lock may have landed in it too.
    assert int(line[1]) <= mb.stats().recoveries <= kills
    assert mb.read() == (got, make_value(got, b"newcomer"))
    assert mb.stats().writer_lock_pid == 0


def test_wait_in_a_child_is_woken_by_publish(make, child) -> None:
    mb = make(100)
    c = child(mb_code(mb.id, """
        print("ready", flush=True)
        print(mb.wait(0, timeout=30), flush=True)
    """))
    c.expect("ready")
    wait_for(lambda: mb.stats().readers_waiting, "the child to sleep")
    mb.publish(b"hello")
    c.expect(repr((1, b"hello")))
    assert c.wait() == 0


def test_sigint_interrupts_wait_in_a_child(make, child) -> None:
    mb = make(100)
    c = child(mb_code(mb.id, """
        try:
            print("ready", flush=True)
            mb.wait(0, timeout=60)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
    """))
    c.expect("ready")
    wait_for(lambda: mb.stats().readers_waiting, "the child to sleep")
    c.signal(signal.SIGINT)
    c.expect("KeyboardInterrupt")
    assert c.wait() == 0
