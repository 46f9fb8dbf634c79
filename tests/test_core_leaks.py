"""Leak hunt in the C core: every _core function and method, many times.

Each group of calls runs in a fresh interpreter (so other tests cannot
pollute its memory): WARM iterations to warm caches up, then two measured
batches of N iterations.  After each batch (and a gc.collect()) the child
records:

* ``traced``  bytes traced by tracemalloc (PyMem/PyObject allocations, which
  the C core uses for everything it allocates);
* ``blocks``  sys.getallocatedblocks(): live pymalloc blocks, so one leaked
  object per iteration shows even if it is tiny;
* ``rss``     VmRSS, for allocations tracemalloc does not see (raw malloc,
  mappings touched);
* ``maps``    lines of /proc/self/maps: a Segment that never detaches leaves
  its mapping behind;
* ``fds``     open file descriptors;
* ``refs``    sys.getrefcount of every object the group passes in again and
  again (a missing Py_DECREF of an argument leaks no memory, only a count).

The verdict compares the second batch with the first: warm-up effects
(free lists, dict resizes, pymalloc arenas, interned strings, tracemalloc's
own tables) happen early, a leak happens in every batch.  The bounds (LIMITS)
sit well above the noise of a clean run (a few hundred bytes, a few blocks,
a page or two of RSS) and well below what a leak of one object per
iteration, or one in ten, produces over N iterations.  Maps, fds and refs
must not move at all.  The self-tests at the end run deliberately leaking
loops through the same measurement and verdict, and check that each kind of
leak is caught.

Nothing here times anything.  The whole module runs in about 10 s.
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any, Callable

import pytest

WARM = 300
N = 2000

#: Largest growth allowed over the second batch, per measure.
LIMITS = {
    "traced": 8 << 10,
    "blocks": 40,
    "rss": 512 << 10,
    "maps": 0,
    "fds": 0,
    "refs": 0,
}

HARNESS = r'''
import ctypes, gc, json, os, pickle, queue, sys, tracemalloc
import shmsem
from shmsem import _core, Channel, Mailbox
from shmsem.errors import (ClosedError, ExistsError, FormatError, FrameError, NotFoundError,
                           PermissionDeniedError, RemovedError, ShmsemError)

PRIVATE = _core.IPC_PRIVATE
CREAT = _core.IPC_CREAT | 0o600
KEYS = {keys!r}
CLEANUP = []


def expect(exc, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc:
        return
    raise AssertionError(f"{{fn!r}}{{args!r}} did not raise {{exc}}")


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024


def measure(tracked):
    gc.collect()
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    return {{
        "traced": tracemalloc.get_traced_memory()[0],
        "blocks": sys.getallocatedblocks(),
        "rss": rss(),
        "maps": maps,
        "fds": len(os.listdir("/proc/self/fd")),
        "refs": [sys.getrefcount(o) for o in tracked],
    }}
'''

RUNNER = r'''
tracemalloc.start()
body, tracked = setup()
try:
    for i in range({warm}):
        body(i)
    m0 = measure(tracked)
    for i in range({n}):
        body(i)
    m1 = measure(tracked)
    for i in range({n}):
        body(i)
    m2 = measure(tracked)
finally:
    for fn in reversed(CLEANUP):
        fn()
print(json.dumps({{"m0": m0, "m1": m1, "m2": m2}}))
'''

# Each group defines setup() -> (body(i), objects whose refcounts must hold);
# what it must remove at the end goes on CLEANUP.
GROUPS: dict[str, str] = {}

GROUPS["shm"] = r'''
def setup():
    key = KEYS[0]

    def body(i):
        sid = _core.shmget(PRIVATE, 4096 * (1 + i % 3), CREAT)
        try:
            st = _core.shm_stat(sid)
            assert st[6] >= 4096
            _core.shm_stat(sid, 0)
            _core.shm_set_mode(sid, 0o600)
            seg = _core.Segment(sid)
            assert seg.attached and seg.shmid == sid and not seg.readonly
            assert seg.size >= 4096 and seg.exports == 0 and seg.address
            ro = _core.Segment(sid, True)
            assert ro.readonly
            ro.read_at(0, 8)
            expect(PermissionDeniedError, ro.write_at, 0, b"x")
            ro.detach()
            seg.detach()
            seg.detach()  # a second detach does nothing
            assert not seg.attached
            _core.Segment(sid)  # dropped attached: dealloc detaches
        finally:
            _core.shm_rmid(sid)
        # by key: exclusive create, open, refused re-create, removal by key
        sid = _core.shmget(key, 4096, CREAT | _core.IPC_EXCL)
        try:
            assert _core.shmget(key, 0, 0) == sid
            expect(ExistsError, _core.shmget, key, 4096, CREAT | _core.IPC_EXCL)
            _core.shm_stat(sid, key)
            _core.shm_set_mode(sid, 0o600, key)
        finally:
            _core.shm_rmid(sid, key)
        _core.monotonic_ns()
        _core.mailbox_segment_size(64 + i)

    return body, [key]
'''

GROUPS["sem"] = r'''
def setup():
    ops_up = [(0, 2, 0), (1, 1, 0)]
    ops_down = [(0, -1, 0), (1, -1, 0)]
    values = [1, 2, 1]

    def body(i):
        semid = _core.semget(PRIVATE, 3, CREAT)
        try:
            assert _core.semop(semid, ops_up)
            assert _core.semop(semid, ops_down, timeout=1.0)
            assert not _core.semop(semid, [(2, -1, 0)], blocking=False)
            if i % 20 == 0:
                assert not _core.semop(semid, [(2, -1, 0)], timeout=1e-6)
            assert _core.semop(semid, [(0, 1)], undo=True)
            assert _core.semop(semid, [(0, -1, _core.SEM_UNDO)], blocking=False)
            assert _core.semctl(semid, 0, _core.GETVAL) == 1
            _core.semctl(semid, 2, _core.SETVAL, 1)
            _core.semctl(semid, 0, _core.GETPID)
            _core.semctl(semid, 0, _core.GETNCNT)
            _core.semctl(semid, 0, _core.GETZCNT)
            _core.sem_stat(semid)
            _core.sem_setall(semid, values)
            assert _core.sem_getall(semid) == (1, 2, 1)
            _core.sem_set_mode(semid, 0o600)
            s = _core.SemBase()
            s._bind(semid, 1, None, False, False)
            assert s.acquire() and s.acquire(False) and not s.acquire(False)
            s.release()
            s.release(2)
            assert (s.id, s.num, s.key, s.undo) == (semid, 1, None, False)
            s._unbind()
            expect(ClosedError, s.acquire, False)
            lock = _core.SemBase()
            lock._bind(semid, 2, None, True, True)
            assert lock.acquire(timeout=1.0) and lock._held
            assert not lock.acquire(False)
            lock.release()
            expect(RuntimeError, lock.release)
            with lock:
                assert lock._held
            try:
                with lock:
                    raise KeyError(i)
            except KeyError:
                pass
            assert not lock._held
            undo = _core.SemBase()
            undo._bind(semid, 0, None, True, False)
            undo.release()
            assert undo.acquire(True, 1.0)
            undo.release()
            with undo:
                pass
        finally:
            _core.semctl(semid, 0, _core.IPC_RMID)
        expect(RemovedError, lock.acquire, False)

    return body, [ops_up, ops_down, values]
'''

GROUPS["msg"] = r'''
def setup():
    small = b"hello"
    big = bytes(4000)
    ba = bytearray(b"abc" * 10)
    mv = memoryview(b"0123456789")[2:8]

    def body(i):
        q = _core.msgget(PRIVATE, CREAT)
        try:
            assert _core.msgsnd(q, small, 1)
            assert _core.msgsnd(q, ba, 2, blocking=False)
            assert _core.msgsnd(q, mv, 3, timeout=1.0)
            assert _core.msgsnd(q, big, 4)
            assert _core.msgrcv(q, 8192, 2) == (bytes(ba), 2)
            assert _core.msgrcv(q, 8192, -3, blocking=False) == (b"hello", 1)
            assert _core.msgrcv(q, 2) == (b"234567", 3)  # a short buffer is enlarged
            assert _core.msgrcv(q, 8192, 0, True, 1.0) == (big, 4)
            assert _core.msgrcv(q, 8192, blocking=False) is None
            if i % 20 == 0:
                assert _core.msgrcv(q, 8192, timeout=1e-6) is None
            st = _core.msg_stat(q)
            _core.msg_set(q, 64, 0o600)
            assert _core.msgsnd(q, bytes(60), 5, blocking=False)
            assert not _core.msgsnd(q, bytes(60), 5, blocking=False)  # full
            if i % 20 == 0:
                assert not _core.msgsnd(q, bytes(60), 5, timeout=1e-6)
            _core.msg_stat(q, 0)
        finally:
            _core.msg_rmid(q)
        expect(RemovedError, _core.msgsnd, q, small, 1, False)
        expect(RemovedError, _core.msgrcv, q, 100, 0, False)
        _core.ftok("/", 1 + i % 255)
        _core.ftok(b"/tmp", 7)

    return body, [small, big, ba, mv]
'''

GROUPS["segment_io"] = r'''
def setup():
    sid = _core.shmget(PRIVATE, 1 << 16, CREAT)
    CLEANUP.append(lambda: _core.shm_rmid(sid))
    seg = _core.Segment(sid)
    CLEANUP.append(seg.detach)
    data = bytes(range(256)) * 16
    ba = bytearray(data[:100])
    mv = memoryview(data)[10:300]
    text = "fr\u00e9d\u00e9ric \u2603" * 3

    def body(i):
        off = (i * 104) % 60000
        assert seg.write_at(off, data) == len(data)
        assert seg.read_at(off, 256) == data[:256]
        seg.write_at(off, ba)
        seg.write_at(off + 7, mv)
        seg.read_at(off + 7, len(mv))
        assert seg.write_frame(data[: 1 + i % 500]) == 1 + i % 500
        assert seg.read_frame() == data[: 1 + i % 500]
        seg.write_frame(text)
        assert seg.read_frame() == text.encode()
        seg.write_frame(ba)
        view = memoryview(seg)
        assert seg.exports == 1
        view[off : off + 4] = b"abcd"
        part = view[off : off + 64]
        bytes(part)
        words = view.cast("I")
        words[0]
        words.release()
        part.release()
        view.release()
        with memoryview(seg) as again:
            again[5]
        assert seg.exports == 0
        seg.size, seg.shmid, seg.address, seg.readonly, seg.attached
        expect(BufferError, _detach_with_view, seg)

    def _detach_with_view(s):
        v = memoryview(s)
        try:
            s.detach()
        finally:
            v.release()

    return body, [seg, data, ba, mv, text]
'''

GROUPS["channel"] = r'''
def setup():
    ch = Channel.create(None, 1 << 16)
    CLEANUP.append(ch.close)
    small = b"x" * 40
    parts = [b"ab", bytearray(b"cd"), memoryview(b"efgh")[1:3]]
    batch = [b"1", b"22", bytearray(b"333"), memoryview(b"4444")]
    obj = {"k": [1, 2.5, "three"], "b": b"bytes"}
    oob = bytearray(range(256)) * 4
    into = bytearray(4096)
    into_view = memoryview(bytearray(4096))
    filler = bytes(3000)
    huge = bytes(1 << 17)

    def body(i):
        ch.put(obj)
        assert ch.get() == obj
        ch.put_nowait(i)
        assert ch.get_nowait() == i
        ch.put(oob)  # out-of-band buffer
        assert ch.get(True, 1.0) == oob
        ch.put(oob)
        assert ch._wait_readable(0)
        assert ch.get_many(4) == [oob]
        ch.put(oob)
        assert len(ch.get_bytes()) > len(oob)  # the raw OOB payload
        ch.put_bytes(small)
        assert ch.get_bytes() == small
        ch.put_bytes_nowait(small)
        assert ch.get_bytes_nowait() == small
        ch.put_bytes(small, True, 1.0)
        assert ch.get_bytes(True, 1.0) == small
        ch.put_many_bytes(batch)
        assert len(ch.get_many_bytes(2)) == 2
        assert len(ch.get_many_bytes()) == 2
        ch.put_many([obj, i, None])
        assert ch.get_many() == [obj, i, None]
        ch.put_bytes(small)
        assert ch.recv_into(into) == len(small)
        ch.put_bytes(small)
        assert ch.recv_into(into_view, True, 1.0) == len(small)
        ch._put_parts(_core.KIND_BYTES, parts)
        assert ch._get_record() == (_core.KIND_BYTES, b"abcdfg")
        ch._put_records(_core.KIND_BYTES, batch)
        assert len(ch._get_records(3)) == 6  # flat: kind, payload, ...
        assert len(ch._get_records(None, True, 1.0)) == 2
        ch.qsize(), ch.empty(), ch.full(), ch._stats(), ch.stats()
        ch._wait_readable(0)
        ch._wait_writable(100, 0)
        ch.capacity, ch.max_message_size
        # error paths
        expect(queue.Empty, ch.get_bytes, False)
        expect(queue.Empty, ch.get_many_bytes, 4, False)
        expect(queue.Empty, ch.get, True, 0)
        expect(queue.Empty, ch._get_record, False)
        expect(queue.Empty, ch.recv_into, into, False)
        expect(ValueError, ch.put_bytes, huge)
        expect(ValueError, ch.put, huge)
        expect(ValueError, ch.get_many_bytes, 0)
        expect(ValueError, ch.put_bytes, small, True, -1.0)
        expect(TypeError, ch.recv_into, b"immutable")
        expect(TypeError, ch.put_bytes, "text")
        expect(ValueError, ch._put_parts, 99, parts)
        expect(ValueError, ch._put_records, _core.KIND_PICKLE_OOB, batch)
        ch.put_bytes(filler)
        expect(ValueError, ch.recv_into, bytearray(10))  # it stays queued
        assert ch.get_bytes() == filler
        if i % 4 == 0:  # fill the ring (wrapping around it), then drain
            n = 0
            try:
                while True:
                    ch.put_bytes_nowait(filler[: 1000 + 97 * (n % 20)])
                    n += 1
            except queue.Full:
                pass
            expect(queue.Full, ch.put_bytes, filler, True, 0)
            expect(queue.Full, ch.put_many_bytes, [filler, filler], False)
            expect(queue.Full, ch.put, filler, False)
            got = 0
            while got < n:
                got += len(ch.get_many_bytes(7))
            assert ch.empty()

    return body, [ch, small, parts, batch, obj, oob, into, into_view, filler, *parts, *batch]
'''

GROUPS["channel_life"] = r'''
def setup():
    data = b"payload"

    def body(i):
        c = Channel.create(None, 4096)
        try:
            c.put_bytes(data)
            d = Channel.from_id(c.id)
            assert d.get_bytes() == data
            d.close()
            expect(ClosedError, d.get_bytes, False)
            expect(ClosedError, d.put_bytes, data)
        finally:
            c.close()
        expect(ClosedError, c.put_bytes, data)
        expect(ClosedError, c.get, False)
        expect(ClosedError, c.qsize)
        expect(ClosedError, pickle.dumps, c)
        # the raw type on a raw segment
        sid = _core.shmget(PRIVATE, _core.CHANNEL_HEADER_SIZE + 1024, CREAT)
        try:
            seg = _core.Segment(sid)
            raw = _core.ChannelBase()
            expect(ClosedError, raw.put_bytes, data)
            assert not raw._attach(seg, False)  # zeros: not a channel yet
            assert raw._attach(seg, True)
            raw.put_bytes(data)
            assert raw.get_bytes() == data
            expect(RuntimeError, raw._attach, seg, True)
            raw._detach_core()
            expect(ClosedError, raw.get_bytes, False)
            other = _core.ChannelBase()
            assert other._attach(seg, False)
            del other  # dropped attached
            mb = _core.MailboxBase()
            expect((FormatError, ValueError), mb._attach, seg, False)
            seg.detach()
        finally:
            _core.shm_rmid(sid)
        expect((NotFoundError, RemovedError), Channel.from_id, sid)

    return body, [data]
'''

GROUPS["mailbox"] = r'''
def setup():
    mb = Mailbox.create(None, 512)
    CLEANUP.append(mb.close)
    value = b"v" * 100
    ba = bytearray(b"w" * 300)
    mv = memoryview(value)[10:50]
    too_big = bytes(513)

    def body(i):
        seq = mb.publish(value)
        assert mb.read() == (seq, value)
        assert mb.wait(seq - 1) == (seq, value)
        assert mb.wait(seq, 0) is None
        if i % 20 == 0:
            assert mb.wait(seq, 1e-6) is None
        mb.publish(ba)
        mb.publish(mv)
        assert mb.wait(seq, 1.0)[1] == bytes(mv)
        mb.seq, mb.capacity, mb._stats(), mb.stats()
        expect(ValueError, mb.publish, too_big)
        expect(TypeError, mb.publish, "text")
        m = Mailbox.create(None, 64 + i % 64)
        try:
            m.publish(value[:32])
            n = Mailbox.from_id(m.id)
            assert n.read()[1] == value[:32]
            n.close()
            expect(ClosedError, n.read)
            expect(ClosedError, n.publish, value[:8])
            expect(ClosedError, n.wait, 0, 0)
        finally:
            m.close()
        expect(ClosedError, pickle.dumps, m)
        sid = _core.shmget(PRIVATE, _core.mailbox_segment_size(64), CREAT)
        try:
            seg = _core.Segment(sid)
            raw = _core.MailboxBase()
            assert raw._attach(seg, True, 64)
            raw.publish(value[:64])
            raw.read()
            raw._detach_core()
            expect(ClosedError, raw.read)
            seg.detach()
        finally:
            _core.shm_rmid(sid)

    return body, [mb, value, ba, mv, too_big]
'''

GROUPS["errors"] = r'''
def setup():
    missing = KEYS[1]
    dead_shm = _core.shmget(PRIVATE, 4096, CREAT)
    _core.shm_rmid(dead_shm)
    dead_sem = _core.semget(PRIVATE, 1, CREAT)
    _core.semctl(dead_sem, 0, _core.IPC_RMID)
    dead_q = _core.msgget(PRIVATE, CREAT)
    _core.msg_rmid(dead_q)
    sid = _core.shmget(PRIVATE, 4096, CREAT)
    CLEANUP.append(lambda: _core.shm_rmid(sid))
    live = _core.Segment(sid)
    CLEANUP.append(live.detach)
    detached = _core.Segment(sid)
    detached.detach()
    semid = _core.semget(PRIVATE, 1, CREAT)
    CLEANUP.append(lambda: _core.semctl(semid, 0, _core.IPC_RMID))
    data = b"data"
    bad_ops = [(0,)]
    corrupt = b"\xff\xff\xff\x7f"
    factory = shmsem.errors._from_core

    def body(i):
        expect(NotFoundError, _core.shmget, missing, 0, 0)
        expect(NotFoundError, _core.semget, missing, 0, 0)
        expect(NotFoundError, _core.msgget, missing, 0)
        expect(NotFoundError, _core.ftok, "/nonexistent/shmsem", 1)
        expect(RemovedError, _core.shm_stat, dead_shm)
        expect(RemovedError, _core.shm_rmid, dead_shm)
        expect(RemovedError, _core.Segment, dead_shm)
        expect(RemovedError, _core.semop, dead_sem, [(0, 1)])
        expect(RemovedError, _core.semctl, dead_sem, 0, _core.GETVAL)
        expect(RemovedError, _core.sem_getall, dead_sem)
        expect(RemovedError, _core.msgsnd, dead_q, data)
        expect(RemovedError, _core.msgrcv, dead_q, 10)
        expect(RemovedError, _core.msg_stat, dead_q)
        expect(RemovedError, _core.shm_stat, dead_shm, missing)
        expect(RemovedError, _core.semop, dead_sem, [(0, 1)], key=missing)
        expect(RemovedError, _core.sem_stat, dead_sem, missing)
        expect(RemovedError, _core.sem_setall, dead_sem, [1], missing)
        expect(RemovedError, _core.sem_set_mode, dead_sem, 0o600, missing)
        expect(RemovedError, _core.msgsnd, dead_q, data, key=missing)
        expect(RemovedError, _core.msgrcv, dead_q, 10, key=missing)
        expect(RemovedError, _core.msg_set, dead_q, 100, 0o600, missing)
        expect(RemovedError, _core.msg_rmid, dead_q, missing)
        _core._set_error_factory(factory)
        expect(ClosedError, detached.read_at, 0, 1)
        expect(ClosedError, detached.write_at, 0, data)
        expect(ClosedError, detached.read_frame)
        expect(ClosedError, detached.write_frame, data)
        expect(ClosedError, memoryview, detached)
        live.write_at(0, corrupt)
        expect(FrameError, live.read_frame)
        expect(ValueError, live.read_at, -1, 1)
        expect(ValueError, live.read_at, 4000, 200)
        expect(ValueError, live.write_at, 4095, data)
        expect(ValueError, live.write_frame, bytes(5000))
        expect(TypeError, live.read_at, "0", 1)
        expect(TypeError, live.write_at, 0, 123)
        expect(TypeError, live.write_frame, 123)
        expect(ValueError, _core.semop, semid, [])
        expect(ValueError, _core.semop, semid, bad_ops)
        expect(ValueError, _core.semop, semid, [(0, 1)], -1.0)
        expect(ValueError, _core.semop, semid, [(0, 1)], float("nan"))
        expect(ValueError, _core.semop, semid, [(9, 1)])  # EFBIG: index beyond the set
        expect(ValueError, _core.semctl, semid, 0, 9999)
        expect(ValueError, _core.semctl, semid, 0, _core.SETVAL, -1)
        expect(ValueError, _core.sem_setall, semid, [1, 2])
        expect(ValueError, _core.shmget, PRIVATE, -1, CREAT)
        expect(ValueError, _core.msgsnd, dead_q, data, 0)
        expect(ValueError, _core.msgrcv, dead_q, -1)
        expect(ValueError, _core.ftok, "/", 0)
        expect(TypeError, _core.ftok, 42, 1)
        expect(OverflowError, _core.mailbox_segment_size, -1)
        try:
            _core.shmget(missing, 0, 0)
        except NotFoundError as e:
            assert (e.errno, e.key, e.syscall) == (2, missing, "shmget") and str(e)

    return body, [live, detached, data, bad_ops, corrupt, factory]
'''

# Deliberate leaks, each through the same measurement and verdict: name ->
# (setup code, the measure that must catch it).  Small on purpose.
SELF_TESTS: dict[str, tuple[str, str]] = {
    "one_object_in_ten_iterations": (r'''
def setup():
    kept = []
    def body(i):
        if i % 10 == 0:
            kept.append(i * 1000)  # one int object
    return body, []
''', "blocks"),
    "64_bytes_per_iteration": (r'''
def setup():
    kept = []
    return (lambda i: kept.append(bytes(64))), []
''', "traced"),
    "raw_malloc_1k_per_iteration": (r'''
def setup():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    def body(i):  # touched, and invisible to tracemalloc
        ctypes.memset(libc.malloc(1024), 1, 1024)
    return body, []
''', "rss"),
    "reference_to_an_argument": (r'''
def setup():
    data = b"shared argument"
    incref = ctypes.pythonapi.Py_IncRef
    incref.argtypes = [ctypes.py_object]
    return (lambda i: incref(data)), [data]
''', "refs"),
    "attach_never_detached": (r'''
def setup():
    kept = []
    def body(i):  # every 50th: attached for good (removed at once, gone at exit)
        if i % 50 == 0:
            sid = _core.shmget(PRIVATE, 4096, CREAT)
            kept.append(_core.Segment(sid))
            _core.shm_rmid(sid)
    return body, []
''', "maps"),
    "file_descriptor": (r'''
def setup():
    def body(i):
        if i % 100 == 0:
            os.open("/dev/null", os.O_RDONLY)
    return body, []
''', "fds"),
}


def run_group(child: Callable[..., Any], code: str, keys: list[int]) -> dict[str, Any]:
    src = HARNESS.format(keys=keys) + textwrap.dedent(code) + RUNNER.format(warm=WARM, n=N)
    rc, out, err = child(src).finish(timeout=120)
    assert rc == 0, f"child failed (rc={rc}):\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def growth(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    g = {k: after[k] - before[k] for k in LIMITS if k != "refs"}
    g["refs"] = max((abs(a - b) for a, b in zip(before["refs"], after["refs"])), default=0)
    return g


def leaks(result: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The measures that grew beyond their limit over the second batch."""
    g = growth(result["m1"], result["m2"])
    return [k for k, limit in LIMITS.items() if g[k] > limit and k not in ignore]


#: Under the ASan build (CI stage 3) freed memory sits in ASan's quarantine,
#: up to 256 MiB, so RSS grows by design there; the normal build checks it.
UNDER_ASAN = "asan" in os.environ.get("LD_PRELOAD", "")


def describe(result: dict[str, Any]) -> str:
    return (f"batch 1 grew {growth(result['m0'], result['m1'])}; "
            f"batch 2 grew {growth(result['m1'], result['m2'])} (limits {LIMITS}, N={N})")


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_core_calls_do_not_leak(
    group: str, child: Callable[..., Any], unique_key: Callable[[], int]
) -> None:
    result = run_group(child, GROUPS[group], [unique_key(), unique_key()])
    found = leaks(result, ignore=("rss",) if UNDER_ASAN else ())
    assert not found, f"{group}: {found} leaked: {describe(result)}"


@pytest.mark.parametrize("leak", sorted(SELF_TESTS))
def test_leak_measurement_catches_a_deliberate_leak(leak: str, child: Callable[..., Any]) -> None:
    code, measure = SELF_TESTS[leak]
    result = run_group(child, code, [])
    assert measure in leaks(result), f"{leak}: unseen by {measure!r}: {describe(result)}"
