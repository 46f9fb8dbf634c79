"""Interop with sysv_ipc: each library opens, by key, what the other created.

sysv_ipc is the long-standing Python binding for the same kernel objects, so
anything one creates the other must open and use.  Two sysv_ipc traits shape
these tests:

* it fills a new segment with spaces, so its fresh segments do not hold a
  valid frame (the header reads 0x20202020);
* semaphores it creates set their value with SETVAL and are never "marked"
  (sem_otime stays 0), which is exactly the case where shmsem's open() must not
  wait and its create-or-open must wait only briefly;
* some builds have no semaphore timeouts (SEMAPHORE_TIMEOUT_SUPPORTED False),
  so a blocking sysv_ipc acquire only ever runs in a child process with a
  bounded wait.
"""

from __future__ import annotations

import contextlib
import os
import queue
import struct
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import sysv_ipc
from ipc_helpers import another_uid

import shmsem
import shmsem.sem
from shmsem import (
    ExistsError,
    ForeignObjectError,
    FrameError,
    Lock,
    MessageQueue,
    PermissionDeniedError,
    RemovedError,
    Semaphore,
    SemaphoreSet,
    SharedMemory,
)
from shmsem.keys import normalize_key

TIMEOUT = 10.0  # seconds; a bound on every wait, never an expectation of speed


@contextlib.contextmanager
def reaped(*keys: int) -> Iterator[None]:
    """Remove every System V object with one of ``keys`` on the way out
    (the sysv_ipc handles here are never owners)."""
    try:
        yield
    finally:
        wanted = {normalize_key(k) for k in keys}
        removers = {
            "shm": sysv_ipc.remove_shared_memory,
            "sem": sysv_ipc.remove_semaphore,
            "msg": sysv_ipc.remove_message_queue,
        }
        for kind, remove in removers.items():
            for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[0]) in wanted:
                    with contextlib.suppress(sysv_ipc.ExistentialError):
                        remove(int(fields[1]))


def shmids_with_key(key: int) -> list[int]:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return [int(f[1]) for f in map(str.split, lines) if int(f[0]) == normalize_key(key)]


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still not true after {TIMEOUT}s")
        time.sleep(0.002)


class ReadySpy:
    """Counts calls to shmsem's wait for a creator's ready mark (sem._wait_ready)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = shmsem.sem._wait_ready

        def spy(semid: int) -> None:
            self.calls += 1
            original(semid)

        monkeypatch.setattr(shmsem.sem, "_wait_ready", spy)


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run fn in a thread; its result or exception lands in the list."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            result.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t, result


def frame(payload: bytes) -> bytes:
    return struct.pack("<i", len(payload)) + payload


# ---------------------------------------------------------------------------
# Shared memory


def test_sysv_ipc_opens_a_shmsem_segment(unique_key) -> None:
    key = unique_key()
    with SharedMemory.create(key, 4096) as shm:
        text = "h\u00e9llo from shmsem \U0001f40d"
        n = shm.write(text)
        mem = sysv_ipc.SharedMemory(key)
        try:
            assert (mem.key, mem.id, mem.size) == (key, shm.id, 4096)
            assert mem.mode & 0o777 == 0o600
            assert (mem.uid, mem.cuid, mem.creator_pid) == (os.geteuid(), os.geteuid(), os.getpid())
            assert shm.stat().nattch == 2
            # The frame, read by hand: little-endian int32 length, then UTF-8.
            assert mem.read(4) == n.to_bytes(4, "little")
            assert mem.read(n, offset=4).decode("utf-8") == text

            mem.write(frame(b"\x00from sysv_ipc\xff"))
            assert shm.read() == b"\x00from sysv_ipc\xff"
            mem.write(frame(b""))
            assert shm.read() == b""
            # A corrupt header written by the peer is caught, not trusted.
            mem.write(struct.pack("<i", 4093))
            with pytest.raises(FrameError):
                shm.read()
            mem.write(struct.pack("<i", -5))
            with pytest.raises(FrameError):
                shm.read()
            # Raw access agrees both ways.
            mem.write(b"raw", offset=1000)
            assert shm.read_at(1000, 3) == b"raw"
            shm.write_at(2000, b"back")
            assert mem.read(4, offset=2000) == b"back"
        finally:
            mem.detach()
        assert shm.stat().nattch == 1
    # The owner's close removed it: sysv_ipc no longer finds the key.
    with pytest.raises(sysv_ipc.ExistentialError):
        sysv_ipc.SharedMemory(key)


def test_shmsem_opens_a_sysv_ipc_segment(unique_key) -> None:
    key = unique_key()
    mem = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o600, size=1000)
    try:
        shm = SharedMemory.open(key)
        try:
            st = shm.stat()
            assert (shm.size, shm.id, shm.key, shm.owner) == (1000, mem.id, key, False)
            assert (st.size, st.mode, st.cpid, st.nattch) == (1000, 0o600, os.getpid(), 2)
            assert (st.uid, st.cuid) == (os.geteuid(), os.geteuid())
            # sysv_ipc fills a new segment with spaces: no valid frame yet.
            assert shm.read_at(0, 4) == b"    "
            with pytest.raises(FrameError):
                shm.read()

            mem.write(frame("from sysv_ipc \u2713".encode()))
            assert shm.read_string() == "from sysv_ipc \u2713"
            shm.write(b"from shmsem")
            assert mem.read(4 + 11) == frame(b"from shmsem")
            # The largest frame fits exactly; one more byte is refused.
            shm.write(b"m" * 996)
            assert mem.read(4) == struct.pack("<i", 996)
            with pytest.raises(ValueError):
                shm.write(b"m" * 997)
        finally:
            shm.close()  # not the owner: detaches only
        assert mem.id in shmids_with_key(key)  # still there: shmsem did not own it

        # Create-or-open opens it (and is not its owner); exclusive create refuses.
        with SharedMemory(key, 1000) as again:
            assert (again.created, again.owner, again.id) == (False, False, mem.id)
            assert again.read() == b"m" * 996
        with pytest.raises(ExistsError):
            SharedMemory(key, 1001)  # asks for more than the segment has
        with pytest.raises(ExistsError):
            SharedMemory.create(key, 10)
        with SharedMemory.open(key, readonly=True) as ro:
            assert ro.read() == b"m" * 996
            with pytest.raises(PermissionDeniedError):
                ro.write(b"no")
    finally:
        mem.detach()
        mem.remove()


def test_zero_copy_views_see_each_other(unique_key) -> None:
    key = unique_key()
    with SharedMemory.create(key, 64) as shm:
        mem = sysv_ipc.SharedMemory(key)
        try:
            view = shm.buf
            mem.write(b"\x01\x02\x03", offset=10)
            assert bytes(view[10:13]) == b"\x01\x02\x03"
            view[20:22] = b"ok"
            assert mem.read(2, offset=20) == b"ok"
            view.release()
        finally:
            mem.detach()


# ---------------------------------------------------------------------------
# Semaphores


def test_sysv_ipc_opens_a_shmsem_semaphore(unique_key) -> None:
    key = unique_key()
    sem = Semaphore.create(key, 3)
    try:
        s = sysv_ipc.Semaphore(key)
        assert (s.key, s.id, s.value) == (key, sem.id, 3)
        assert s.mode & 0o777 == 0o600
        assert s.o_time != 0  # shmsem marked the new set ready with a semop
        s.block = False
        s.acquire()
        assert sem.value == 2
        s.release()
        s.release()
        assert sem.value == 4
        assert sem.last_pid == s.last_pid == os.getpid()
        for _ in range(4):
            assert sem.acquire(timeout=TIMEOUT)
        assert s.value == 0
        with pytest.raises(sysv_ipc.BusyError):
            s.acquire()

        # A shmsem waiter is woken by a sysv_ipc release.
        t, result = in_thread(lambda: sem.acquire(timeout=TIMEOUT))
        try:
            wait_until(lambda: sem.ncnt == 1, "shmsem waiter blocked")
            s.release()
        finally:
            t.join(TIMEOUT + 5)
        assert result == [True]
        assert s.value == 0

        # Removal through sysv_ipc wakes a shmsem waiter with RemovedError.
        t, result = in_thread(lambda: sem.acquire(timeout=TIMEOUT))
        try:
            wait_until(lambda: sem.ncnt == 1, "shmsem waiter blocked")
            s.remove()
        finally:
            t.join(TIMEOUT + 5)
        assert len(result) == 1 and isinstance(result[0], RemovedError), result
    finally:
        with contextlib.suppress(RemovedError):
            sem.remove()


def test_sysv_ipc_waiter_is_woken_by_shmsem(unique_key, child) -> None:
    key = unique_key()
    sem = Semaphore.create(key, 0)
    try:
        # sysv_ipc may have no timed wait: block in a child, bounded from here.
        c = child(f"""
            import sysv_ipc
            s = sysv_ipc.Semaphore({key})
            print("waiting", flush=True)
            s.acquire()
            print("acquired", flush=True)
        """)
        c.expect("waiting")
        wait_until(lambda: sem.ncnt == 1, "sysv_ipc waiter blocked")
        sem.release()
        c.expect("acquired")
        assert c.wait() == 0
        assert sem.value == 0
        assert sem.last_pid == c.pid
    finally:
        sem.remove()


def test_shmsem_opens_an_unmarked_sysv_ipc_semaphore(unique_key, monkeypatch) -> None:
    key = unique_key()
    spy = ReadySpy(monkeypatch)
    s = sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode=0o600, initial_value=2)
    try:
        assert s.o_time == 0  # set with SETVAL: never marked

        sem = Semaphore.open(key)
        assert spy.calls == 0, "Semaphore.open waited for a ready mark"
        st = sem.stat()
        assert (sem.id, st.key, st.nsems, st.mode, st.otime) == (s.id, key, 1, 0o600, 0)
        assert (st.uid, st.cuid) == (os.geteuid(), os.geteuid())
        assert sem.value == 2

        # Create-or-open waits briefly for a mark that never comes, then
        # proceeds, and never resets the value it did not create.
        again = Semaphore(key, value=7)
        assert (again.created, again.id, again.value) == (False, s.id, 2)
        assert spy.calls == 1
        assert shmsem.sem.READY_WAIT <= 0.1
        whole = SemaphoreSet(key, 1, values=[9])
        assert (whole.created, whole.values) == (False, (2,))
        assert spy.calls == 2
        with pytest.raises(ExistsError):
            SemaphoreSet(key, 2)  # the set has 1 member, not 2
        with pytest.raises(ExistsError):
            Semaphore.create(key)
        assert len(SemaphoreSet.open(key)) == 1
        assert spy.calls == 2

        assert sem.acquire(blocking=False)
        assert s.value == 1
        sem.release(2)
        assert s.value == 3
        assert s.last_pid == os.getpid()
        s.block = False
        s.acquire()
        assert sem.value == 2
        sem.value = 0
        assert s.value == 0
        assert sem.acquire(timeout=0.01) is False

        # A shmsem waiter is woken by sysv_ipc.
        t, result = in_thread(lambda: sem.acquire(timeout=TIMEOUT))
        try:
            wait_until(lambda: sem.ncnt == 1, "shmsem waiter blocked")
            s.release()
        finally:
            t.join(TIMEOUT + 5)
        assert result == [True]

        # wait_zero across libraries.
        s.release()
        t, result = in_thread(lambda: sem.wait_zero(timeout=TIMEOUT))
        try:
            wait_until(lambda: sem.zcnt == 1, "shmsem zero-waiter blocked")
            s.acquire()
        finally:
            t.join(TIMEOUT + 5)
        assert result == [True]
    finally:
        s.remove()


def test_lock_state_is_visible_to_sysv_ipc(unique_key) -> None:
    key = unique_key()
    lock = Lock.create(key)
    try:
        s = sysv_ipc.Semaphore(key)
        assert s.value == 1
        with lock:
            assert s.value == 0
            assert lock.locked()
        assert s.value == 1
        assert not lock.locked()
    finally:
        lock.remove()


# ---------------------------------------------------------------------------
# Message queues


def test_sysv_ipc_opens_a_shmsem_queue(unique_key) -> None:
    key = unique_key()
    q = MessageQueue.create(key)
    try:
        sq = sysv_ipc.MessageQueue(key)
        assert (sq.key, sq.id) == (key, q.id)
        assert sq.mode & 0o777 == 0o600
        assert sq.max_size == q.max_bytes

        q.send(b"one", type=5)
        q.send("tw\u00f6", type=2)
        q.send(b"\x00bin\xff", type=9)
        assert sq.current_messages == 3
        assert sq.last_send_pid == os.getpid()
        assert sq.receive(block=False, type=2) == ("tw\u00f6".encode(), 2)
        assert sq.receive(block=False, type=-6) == (b"one", 5)  # lowest type <= 6
        assert sq.receive(block=False) == (b"\x00bin\xff", 9)
        with pytest.raises(sysv_ipc.BusyError):
            sq.receive(block=False)

        sq.send(b"abc", type=3)
        sq.send("d\u00e9f", type=1)
        sq.send(b"", type=4)
        st = q.stat()
        assert (st.current_messages, st.current_bytes) == (3, 3 + 4 + 0)
        assert q.receive(type=1, block=False) == ("d\u00e9f".encode(), 1)
        assert q.receive(block=False) == (b"abc", 3)
        assert q.receive(block=False) == (b"", 4)
        with pytest.raises(queue.Empty):
            q.receive(block=False)

        # A shmsem receiver is woken by a sysv_ipc send.
        t, result = in_thread(lambda: q.receive(type=7, timeout=TIMEOUT))
        try:
            sq.send(b"not for you", type=8)
            sq.send(b"for you", type=7)
        finally:
            t.join(TIMEOUT + 5)
        assert result == [(b"for you", 7)]
        assert q.receive(block=False) == (b"not for you", 8)

        # Removal through sysv_ipc wakes a shmsem receiver with RemovedError.
        t, result = in_thread(lambda: q.receive(timeout=TIMEOUT))
        try:
            time.sleep(0.01)  # let it start waiting; correct either way
            sq.remove()
        finally:
            t.join(TIMEOUT + 5)
        assert len(result) == 1 and isinstance(result[0], RemovedError), result
    finally:
        with contextlib.suppress(RemovedError):
            q.remove()


def test_shmsem_opens_a_sysv_ipc_queue(unique_key) -> None:
    key = unique_key()
    sq = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, mode=0o600)
    try:
        q = MessageQueue.open(key)
        st = q.stat()
        assert (q.id, st.key, st.mode, st.current_messages) == (sq.id, key, 0o600, 0)
        assert (st.uid, st.cuid) == (os.geteuid(), os.geteuid())
        assert st.max_bytes == sq.max_size
        again = MessageQueue(key)
        assert (again.created, again.id) == (False, sq.id)
        with pytest.raises(ExistsError):
            MessageQueue.create(key)

        big = bytes(range(256)) * 7  # 1792 bytes: within sysv_ipc's receive buffer
        for i, data in enumerate([b"x", big, "\u65e5\u672c".encode()]):
            q.send(data, type=10 + i)
        assert sq.receive(block=False, type=11) == (big, 11)
        assert sq.receive(block=False) == (b"x", 10)
        assert sq.receive(block=False) == ("\u65e5\u672c".encode(), 12)

        sq.send(big, type=2**31 - 1)  # the largest type both accept
        sq.send(b"low", type=1)
        assert q.receive(type=-5, block=False) == (b"low", 1)
        assert q.receive(block=False) == (big, 2**31 - 1)
        assert q.stat().last_receive_pid == os.getpid()
        assert sq.current_messages == 0

        q.max_bytes = 4096
        assert sq.max_size == 4096
    finally:
        sq.remove()


# ---------------------------------------------------------------------------
# Key squatting: objects made by sysv_ipc that shmsem should not trust


def make_squatters(key: int, mode: int) -> list[object]:
    return [
        sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=mode, size=64),
        sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode=mode),
        sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, mode=mode),
    ]


OPENERS: list[tuple[str, Callable[..., object]]] = [
    ("SharedMemory.open", lambda key, **kw: SharedMemory.open(key, **kw)),
    ("SharedMemory()", lambda key, **kw: SharedMemory(key, 64, **kw)),
    ("Semaphore.open", lambda key, **kw: Semaphore.open(key, **kw)),
    ("Semaphore()", lambda key, **kw: Semaphore(key, **kw)),
    ("SemaphoreSet.open", lambda key, **kw: SemaphoreSet.open(key, **kw)),
    ("Lock.open", lambda key, **kw: Lock.open(key, **kw)),
    ("MessageQueue.open", lambda key, **kw: MessageQueue.open(key, **kw)),
    ("MessageQueue()", lambda key, **kw: MessageQueue(key, **kw)),
]


def release(obj: object) -> None:
    if isinstance(obj, SharedMemory):
        obj.detach()


def test_objects_owned_by_another_user_are_refused(unique_key) -> None:
    key = unique_key()
    with reaped(key):
        objs = make_squatters(key, 0o600)
        for o in objs:
            o.uid = another_uid()  # IPC_SET: another user now owns them
        try:
            for name, opener in OPENERS:
                with pytest.raises(ForeignObjectError):
                    opener(key)
                release(opener(key, trust=True))
        finally:
            objs[0].detach()


def test_objects_more_permissive_than_asked(unique_key) -> None:
    key = unique_key()
    with reaped(key):
        objs = make_squatters(key, 0o666)
        try:
            for name, opener in OPENERS:
                if os.geteuid() == 0:
                    # Root opening a root-owned object is exempt (DESIGN.md).
                    release(opener(key))
                else:
                    with pytest.raises(ForeignObjectError):
                        opener(key)
                release(opener(key, mode=0o666))
                release(opener(key, trust=True))
        finally:
            objs[0].detach()
