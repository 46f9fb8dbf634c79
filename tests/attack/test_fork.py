"""fork() and exec() after opening: what a child inherits, and what survives.

Each scenario runs in a child of the test, which forks (os.fork, or
multiprocessing with the fork start method) and reports on stdout.

* A forked child shares the parent's attachments: it sees and writes the
  same memory, and detaching or closing its inherited handle unmaps only its
  own copy; the parent's mapping and data are untouched.
* A forked child that closes an inherited *owner* handle (SharedMemory,
  Channel, Mailbox) must not remove the parent's object: ownership belongs to
  the process that created it, as DESIGN.md section 1 forbids the .NET
  helper's flaw of a handle that did not create a segment removing it.
* A child using an inherited Channel or Mailbox locks with its own identity
  (pid, its own start time, PID namespace tag): killed inside a lock, the
  parent recovers the lock; and a live child's lock is never mistaken for
  a dead process's.
* SEM_UNDO: adjustments are not inherited by fork (a child's exit does not
  undo its parent's acquire), a child cannot release the parent's Lock
  (RuntimeError), and adjustments survive exec (the lock is released when
  the exec'd program exits).
* exec: System V ids survive (kernel objects; the new image re-attaches by
  id), mappings do not (the kernel detaches them at exec: nattch drops, no
  SYSV mapping in /proc/self/maps).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import signal
import struct
import sys
import threading
import time
from typing import Any, Callable

import pytest
from helpers_faults import (
    HERE,
    WAIT,
    child_code,
    die_with_parent,
    emit,
    exit_code,
    kill_in_lock,
    shm_row,
    sysv_maps,
    waitpid_bounded,
)
from proc_helpers import lock_identity

import shmsem
from shmsem import Channel, Lock, Mailbox, MessageQueue, Semaphore, SharedMemory


def report(c: Any, timeout: float = WAIT) -> dict[str, Any]:
    """The JSON line a scenario child prints; it must then exit 0."""
    out = json.loads(c.readline(timeout=timeout))
    rc = c.wait(timeout)
    assert rc == 0, f"scenario child exited with {rc}: {c.stderr_text()}"
    return out


def in_child(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Fork; run fn in the child (which reports through a pipe and _exits);
    return the child's report, with its exit code."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            die_with_parent()
            out = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = {"error": repr(e)}
            code = 3
        os.write(w, json.dumps(out).encode())
        os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    status = waitpid_bounded(pid, WAIT)
    assert status is not None, "forked child hung"
    out = json.loads(data) if data else {}
    out["exit"] = exit_code(status)
    return out


def mapped(shmid: int) -> bool:
    """Whether this process maps the segment (the inode of a SYSV line is the id)."""
    return any(int(line.split()[4]) == shmid for line in sysv_maps())


# ---------------------------------------------------------------------------
# Inherited handles work, and detaching them in the child is private to it


def inherited_handles_work() -> None:
    shm = SharedMemory.create(None, 1 << 16)
    sem = Semaphore.create(None, 0)
    q = MessageQueue.create(None)
    ch = Channel.create(None, 4096)
    mb = Mailbox.create(None, 64)
    try:
        shm.write(b"parent")

        def child() -> dict[str, Any]:
            out: dict[str, Any] = {"sees": shm.read().decode(), "owner": shm.owner}
            shm.write(b"from the child")
            sem.release()
            q.send(b"queued by the child")
            ch.put({"from": "child"})
            out["seq"] = mb.publish(b"child value")
            # Detach and close this process's copies only (not the owner ones).
            shm.detach()
            out["mapped_after_detach"] = mapped(shm.id)
            try:
                shm.read()
            except shmsem.ClosedError:
                out["read_after_detach"] = "ClosedError"
            for obj in (ch, mb):
                obj.owner = False
                obj.close()
            return out

        nattch = shm.stat().nattch
        out = in_child(child)
        out["parent_reads"] = shm.read().decode()
        out["nattch"] = (nattch, shm.stat().nattch)
        out["sem"] = sem.acquire(timeout=WAIT)
        out["q"] = q.receive(timeout=WAIT)[0].decode()
        out["ch"] = ch.get(timeout=WAIT)
        out["mb"] = list(mb.read())
        out["mb"][1] = out["mb"][1].decode()
        shm.write(b"parent again")
        out["parent_rw"] = shm.read().decode()
        out["parent_mapped"] = mapped(shm.id)
    finally:
        shm.close()
        sem.remove()
        q.remove()
        ch.close()
        mb.close()
    emit(out)


def test_inherited_handles_work_and_the_childs_detach_is_its_own(child) -> None:
    out = report(child(child_code("test_fork", "inherited_handles_work")))
    # The child does not own what its parent created: owner is per process.
    assert out == {
        "sees": "parent", "owner": False, "seq": 1, "mapped_after_detach": False,
        "read_after_detach": "ClosedError", "exit": 0,
        "parent_reads": "from the child", "nattch": [1, 1], "sem": True,
        "q": "queued by the child", "ch": {"from": "child"}, "mb": [1, "child value"],
        "parent_rw": "parent again", "parent_mapped": True,
    }


# ---------------------------------------------------------------------------
# Owner handles: the child did not create the object, so it must not remove it


def owner_close_in_child(kind: str, key: int, how: str) -> None:
    if kind == "SharedMemory":
        obj: Any = SharedMemory.create(key, 4096)
        obj.write(b"x")
    elif kind == "Channel":
        obj = Channel.create(key, 4096)
        obj.put_bytes(b"x")
    else:
        obj = Mailbox.create(key, 64)
        obj.publish(b"x")
    cls = type(obj)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if how == "close":
                obj.close()
            elif how == "with":
                with obj:
                    pass
        except BaseException:  # noqa: BLE001 - the exit status says so
            code = 3
        if how == "exit":
            # A normal exit: interpreter shutdown finalizes the inherited
            # handle (garbage collection only detaches).
            sys.exit(0)
        os._exit(code)
    status = waitpid_bounded(pid, WAIT)
    assert status is not None
    out: dict[str, Any] = {"exit": exit_code(status)}
    try:
        cls.open(key).close() if kind != "SharedMemory" else cls.open(key).detach()
        out["still_there"] = True
    except shmsem.NotFoundError:
        out["still_there"] = False
    # The parent's own mapping is untouched either way.
    if kind == "SharedMemory":
        out["parent_works"] = obj.read() == b"x"
    elif kind == "Channel":
        out["parent_works"] = obj.get_bytes(timeout=WAIT) == b"x"
    else:
        out["parent_works"] = obj.read() == (1, b"x")
    obj.close()  # the creator removes it (tolerating an earlier removal)
    out["gone_after_parent_close"] = shm_row(obj.id) is None
    emit(out)


@pytest.mark.parametrize(("kind", "how"), [
    ("SharedMemory", "close"), ("Channel", "close"), ("Channel", "with"), ("Mailbox", "close"),
])
def test_a_forked_child_closing_an_inherited_owner_handle_does_not_remove_it(
        child, unique_key, kind, how) -> None:
    """Library bug today: `owner` is copied into the child by fork, and the
    child's close() (or `with`) removes the parent's segment (IPC_RMID).  The
    parent keeps its mapping, but the key is gone: every process that opens
    it later gets NotFoundError, or creates a new, empty object.  With
    multiprocessing's fork start method, a worker that does `with ch:` on the
    Channel it was given does exactly this."""
    out = report(child(child_code("test_fork", "owner_close_in_child", kind, unique_key(), how)))
    assert out["exit"] == 0 and out["parent_works"] and out["gone_after_parent_close"], out
    assert out["still_there"], (
        f"a forked child's {how} of an inherited {kind} owner handle removed the parent's object")


def test_a_forked_child_dropping_an_inherited_owner_handle_removes_nothing(child, unique_key) -> None:
    out = report(child(child_code("test_fork", "owner_close_in_child", "Channel", unique_key(), "exit")))
    assert out == {"exit": 0, "still_there": True, "parent_works": True,
                   "gone_after_parent_close": True}


# ---------------------------------------------------------------------------
# Process-lock identity after fork


def _loop_channel(ch: Channel, big: bytes) -> None:
    die_with_parent()
    while True:
        ch.put_bytes(big, timeout=WAIT)
        ch.get_bytes(timeout=WAIT)


def _loop_mailbox(mb: Mailbox, big: bytes) -> None:
    die_with_parent()
    while True:
        mb.publish(big)


def lock_identity_after_fork(how: str) -> None:
    """A child (or grandchild) loops over an inherited Channel or Mailbox; it
    is killed while it holds a lock; the lock's owner word must have been its
    own identity, and the parent must take the lock over."""
    big = os.urandom(4 << 20)
    if how.startswith("Mailbox"):
        obj: Any = Mailbox.create(None, len(big))
        at = 64
    else:
        obj = Channel.create(None, 3 * len(big))
        at = 128 if "consumer" in how else 64
    raw = SharedMemory.from_id(obj.id)

    def owner() -> int:
        return int(struct.unpack("<Q", raw.read_at(at, 8))[0])

    loop = _loop_mailbox if how.startswith("Mailbox") else _loop_channel
    if "multiprocessing" in how:
        proc = multiprocessing.get_context("fork").Process(target=loop, args=(obj, big))
        proc.start()
        pid = proc.pid
    elif "grandchild" in how:
        r, w = os.pipe()
        middle = os.fork()
        if middle == 0:
            die_with_parent()
            grand = os.fork()
            if grand == 0:
                loop(obj, big)
            os.write(w, str(grand).encode())
            os.waitpid(grand, 0)
            os._exit(0)
        os.close(w)
        pid = int(os.read(r, 64))
    else:
        pid = os.fork()
        if pid == 0:
            loop(obj, big)
    seen: dict[str, int] = {}

    def look() -> None:
        seen["owner"] = owner()
        seen["expected"] = lock_identity(pid)

    held = kill_in_lock(pid, lambda: owner() & 0xFFFFFFFF, budget=10.0, on_stopped=look)
    if "multiprocessing" in how:
        proc.join(WAIT)
    elif "grandchild" in how:
        waitpid_bounded(middle, WAIT)
    else:
        waitpid_bounded(pid, WAIT)
    t0 = time.monotonic()
    if how.startswith("Mailbox"):
        obj.publish(b"parent")
        recoveries = obj.stats()["recoveries"]
    elif "consumer" in how:
        obj.put_bytes(b"parent", timeout=WAIT)  # at least one message to get
        while obj.get_bytes(timeout=WAIT) != b"parent":
            pass
        recoveries = obj.stats().recoveries
    else:
        obj.put_bytes(b"parent", timeout=WAIT)
        recoveries = obj.stats().recoveries
    out = {"held": held, "owner_is_child": seen.get("owner") == seen.get("expected"),
           "owner_pid": seen.get("owner", 0) & 0xFFFFFFFF, "child": pid, "parent": os.getpid(),
           "recoveries": recoveries, "took_over_in": round(time.monotonic() - t0, 3)}
    raw.detach()
    obj.close()
    emit(out)


@pytest.mark.parametrize("how", [
    "Channel producer lock, os.fork",
    "Channel consumer lock, os.fork",
    "Channel producer lock, grandchild",
    "Mailbox writer lock, multiprocessing fork",
])
def test_a_forked_childs_locks_carry_its_own_identity(child, reliability, how) -> None:
    out = report(child(child_code("test_fork", "lock_identity_after_fork", how)), timeout=WAIT * 2)
    reliability(kills=1, held=int(out["held"]), recovered=out["recoveries"],
                seconds_to_take_over=out["took_over_in"])
    assert out["held"], f"the child was never caught holding the lock: {out}"
    assert out["owner_pid"] == out["child"] != out["parent"], out
    assert out["owner_is_child"], f"owner word is not the child's own identity: {out}"
    assert out["recoveries"] == 1, out


# ---------------------------------------------------------------------------
# SEM_UNDO across fork and exec


def undo_across_fork() -> None:
    lock = Lock.create(None)
    sem = Semaphore.create(None, 1, undo=True)
    try:
        assert lock.acquire(timeout=WAIT) and sem.acquire(timeout=WAIT)

        def child() -> dict[str, Any]:
            out: dict[str, Any] = {"held_here": lock._held}
            try:
                lock.release()
                out["release"] = "released"
            except RuntimeError as e:
                out["release"] = f"RuntimeError: {e}"
            out["acquire"] = lock.acquire(timeout=0.2)  # the parent holds it
            return out

        out = in_child(child)  # the child exits: nothing of the parent's is undone
        out["after_child_exit"] = [lock.locked(), sem.value]
        lock.release()
        sem.release()

        # A child that takes both (with SEM_UNDO) and is killed gives them back.
        def taker() -> dict[str, Any]:
            lock.acquire(timeout=WAIT)
            sem.acquire(timeout=WAIT)
            os.kill(os.getpid(), signal.SIGKILL)
            return {}

        killed = in_child(taker)
        out["taker_exit"] = killed["exit"]
        out["after_taker_killed"] = [lock.locked(), sem.value]
    finally:
        lock.remove()
        sem.remove()
    emit(out)


def test_sem_undo_is_not_inherited_by_fork(child) -> None:
    out = report(child(child_code("test_fork", "undo_across_fork")))
    assert out["held_here"] is False
    assert out["release"].startswith("RuntimeError") and "forked child" in out["release"]
    assert out["acquire"] is False and out["exit"] == 0
    assert out["after_child_exit"] == [True, 0]
    assert out["taker_exit"] == -signal.SIGKILL and out["after_taker_killed"] == [False, 1]


def exec_then_report(lock_id: int, sem_id: int, ch_id: int, stale: bool) -> None:
    """Run by the exec'd image: what survived the exec."""
    out: dict[str, Any] = {"pid": os.getpid(), "sysv_maps": len(sysv_maps()),
                           "nattch": (shm_row(ch_id) or {}).get("nattch")}
    lock = Lock.from_id(lock_id)
    out["lock_still_held"] = lock.locked()
    ch = Channel.from_id(ch_id)  # re-attach by id
    if stale:
        # A thread of the previous image was inside put_bytes: its lock now
        # carries our identity (same pid, same start time).
        try:
            ch.put_bytes(b"from the exec'd image", timeout=2.0)
            out["put"] = "ok"
        except queue.Full:
            out["put"] = "Full"
        out["recoveries"] = ch.stats().recoveries
    else:
        ch.put_bytes(b"from the exec'd image", timeout=WAIT)
        out["put"] = "ok"
    ch.close()
    emit(out)
    sys.stdin.readline()  # hold on (and hold the lock) until the test says go


def exec_keeps_ids_and_undo(lock_id: int, sem_id: int, ch_id: int, stale: bool) -> None:
    lock = Lock.from_id(lock_id)
    sem = Semaphore.from_id(sem_id, undo=True)
    ch = Channel.from_id(ch_id)
    assert lock.acquire(timeout=WAIT) and sem.acquire(timeout=WAIT)
    if stale:
        raw = SharedMemory.from_id(ch_id)
        big = b"x" * (16 << 20)

        def putter() -> None:
            while True:
                ch.put_bytes(big)
                ch.get_bytes()

        threading.Thread(target=putter, daemon=True).start()
        deadline = time.monotonic() + WAIT
        while struct.unpack("<Q", raw.read_at(64, 8))[0] & 0xFFFFFFFF != os.getpid():
            if time.monotonic() > deadline:
                raise SystemExit("the thread never held the producer lock")
    emit({"mapped_before_exec": len(sysv_maps()), "nattch_before": shm_row(ch_id)["nattch"]})
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r})\n"
            f"from test_fork import exec_then_report\n"
            f"exec_then_report({lock_id}, {sem_id}, {ch_id}, {stale})\n")
    os.execv(sys.executable, [sys.executable, "-c", code])


@pytest.mark.parametrize("stale", [False, True], ids=["quiet", "thread-inside-put"])
def test_exec_keeps_ids_and_sem_undo_but_drops_mappings(child, stale) -> None:
    """Across exec: the Lock taken with SEM_UNDO stays held until the exec'd
    program exits, then comes back; the segment's mapping is dropped (nattch
    falls, no SYSV line in /proc/self/maps) and its id still attaches.

    With another thread inside put_bytes at the exec (thread-inside-put),
    the Channel's producer lock is left with an owner word that is, to the
    letter, the exec'd image's own identity (pid and start time do not
    change at exec).  The exec'd image must still be able to put (library
    bug today: it waits for itself until its timeout, and every other
    producer waits until it exits); after it exits the lock must be taken
    over."""
    lock = Lock.create(None)
    sem = Semaphore.create(None, 1)
    ch = Channel.create(None, 32 << 20 if stale else 4096)
    try:
        c = child(child_code("test_fork", "exec_keeps_ids_and_undo", lock.id, sem.id, ch.id, stale))
        before = json.loads(c.readline(timeout=WAIT))
        after = json.loads(c.readline(timeout=WAIT))
        held_while_running = [lock.locked(), sem.value]
        last_pid = Semaphore.from_id(lock.id).last_pid
        c.send("go")
        assert c.wait(WAIT) == 0, c.stderr_text()
        released = [lock.locked(), sem.value]
        ch.put_bytes(b"parent", timeout=WAIT)
        recoveries = ch.stats().recoveries
        got = []
        while True:
            try:
                got.append(ch.get_bytes(timeout=0.2))
            except queue.Empty:
                break
    finally:
        lock.remove()
        sem.remove()
        ch.close()
    assert before["mapped_before_exec"] >= 1
    assert after["pid"] == c.pid and last_pid == c.pid
    assert after["sysv_maps"] == 0, "a System V mapping survived exec"
    assert after["nattch"] == before["nattch_before"] - (2 if stale else 1)
    assert after["lock_still_held"] and held_while_running == [True, 0]
    assert released == [False, 1], "SEM_UNDO adjustments did not survive exec"
    # The exec'd image takes the stale lock over itself; the parent never has to.
    assert recoveries == 0
    assert after.get("recoveries") == (1 if stale else None)
    assert b"parent" in got
    assert after["put"] == "ok", (
        "the exec'd image could not put: the producer lock left by a thread of the "
        "previous image carries its own identity, and it waits for itself")
    assert b"from the exec'd image" in got
