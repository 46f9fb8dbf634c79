"""Signal storms: SIGALRM every millisecond, and SIGINT at random instants.

Every blocking call of shmsem is run under a storm of SIGALRM (an interval
timer of 1 ms) in a child process:

* with a handler that returns, each timed wait must still end by timing out,
  no sooner than its timeout and not wildly later (PEP 475: retry with the
  time that remains), and the handler must really have run during it;
* with a handler that raises now and then, the exception must come out of
  the blocking call (never swallowed, never turned into a timeout), and the
  object must be left as it was: no value changed, no waiter left behind,
  no lock taken;
* large copies (Channel messages of several MiB between two processes, and
  8 MiB SharedMemory frames) must arrive intact, whatever the signals do,
  and a handler's exception raised around a copy must be accounted for.

KeyboardInterrupt: SIGINT is sent at random instants to children doing
put/get loops on a Channel (and publish/wait on a Mailbox), which catch it
and go on.  Afterwards the objects pass a full check: every message whose
put returned is delivered once, in order, intact; nothing else appears;
the locks are free; the counters agree.  And a ``with lock:`` (Lock or
Semaphore) interrupted by KeyboardInterrupt must never leave the lock held.

A signal handler's exception can only be raised between two bytecodes, so
around a call it may be raised just after the call did its work: a put that
raised may have committed, a get that raised may have taken its message.
The accounting says so: such calls are "ambiguous".  Consumers receive with
recv_into into their own buffer, so a message taken by a get that then
raised is still found in the buffer, and counted.
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import random
import select
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers_faults import WAIT, child_code, decode, emit, encode
from proc_helpers import FUTEX_OWNER_DIED, FUTEX_TID_MASK

import shmsem
from shmsem import (
    Channel,
    Lock,
    Mailbox,
    MessageQueue,
    Semaphore,
    SemaphoreSet,
    SharedMemory,
)
from shmsem._core import CHANNEL_OFFSETS, LOCK_OFFSETS, MAILBOX_OFFSETS

PERIOD = 0.001      # the SIGALRM interval timer
TIMEOUT = 0.25      # timed waits under the storm
#: "Not wildly more" than the timeout: a bound for a loaded two-CPU machine.
SLACK = 2.0
LONG = 30.0         # timeouts of calls that must end by the handler's exception

# The lock words of ch_locked (producer, consumer) and mb_locked (writer):
# docs/protocol.md section 2.
CH_LOCK_WORDS = [CHANNEL_OFFSETS[k] + LOCK_OFFSETS["word"] for k in ("producer_lock",
                                                                     "consumer_lock")]
MB_LOCK_WORD = MAILBOX_OFFSETS["writer_lock"] + LOCK_OFFSETS["word"]


class Boom(Exception):
    """Raised by the storm's handler."""


class Trap:
    """A signal handler that counts, and while armed raises ``exc`` at the
    ``countdown``-th signal (then disarms itself, so one arming raises once)."""

    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc
        self.armed = False
        self.countdown = 0
        self.hits = 0
        self.raised = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.hits += 1
        if self.armed:
            self.countdown -= 1
            if self.countdown <= 0:
                self.armed = False
                self.raised += 1
                raise self.exc()

    def arm(self, countdown: int) -> None:
        self.countdown = countdown
        self.armed = True


def start_storm(trap: Trap) -> None:
    signal.signal(signal.SIGALRM, trap)
    signal.setitimer(signal.ITIMER_REAL, PERIOD, PERIOD)


def stop_storm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)


def stdin_says_stop() -> bool:
    return bool(select.select([sys.stdin], [], [], 0)[0])


# ---------------------------------------------------------------------------
# The blocking calls, each on an object that never becomes ready.
# ids: sem (value 0), zero (value 1), set (values 0, 0), lock (held by the
# test), q (full), q_empty, ch_full, ch_empty, ch_locked (both locks held by
# the live test process), mb, mb_locked (writer lock held likewise).


def blocking_calls(ids: dict[str, int], timeout: float | None) -> dict[str, Callable[[], Any]]:
    sem = Semaphore.from_id(ids["sem"])
    zero = Semaphore.from_id(ids["zero"])
    sset = SemaphoreSet.from_id(ids["set"])
    lock = Lock.from_id(ids["lock"])
    q = MessageQueue.from_id(ids["q"])
    q_empty = MessageQueue.from_id(ids["q_empty"])
    ch_full = Channel.from_id(ids["ch_full"])
    ch_empty = Channel.from_id(ids["ch_empty"])
    ch_locked = Channel.from_id(ids["ch_locked"])
    mb = Mailbox.from_id(ids["mb"])
    t = timeout
    calls: dict[str, Callable[[], Any]] = {
        "Semaphore.acquire": lambda: sem.acquire(timeout=t),
        "Semaphore.wait_zero": lambda: zero.wait_zero(timeout=t),
        "SemaphoreSet.op": lambda: sset.op([(0, -1), (1, -1)], timeout=t),
        "SemaphoreSet.op(undo)": lambda: sset.op([(1, -1)], timeout=t, undo=True),
        "Lock.acquire": lambda: lock.acquire(timeout=t),
        "MessageQueue.receive": lambda: q_empty.receive(timeout=t),
        "MessageQueue.send": lambda: q.send(b"x" * 8, timeout=t),
        "Channel.get": lambda: ch_empty.get(timeout=t),
        "Channel.recv_into": lambda: ch_empty.recv_into(bytearray(64), timeout=t),
        "Channel.put (room)": lambda: ch_full.put(b"x", timeout=t),
        "Channel.put (lock)": lambda: ch_locked.put_bytes(b"x", timeout=t),
        "Channel.get (lock)": lambda: ch_locked.get_bytes(timeout=t),
        "Mailbox.wait": lambda: mb.wait(mb.seq, timeout=t),
    }
    if timeout is None:
        mb_locked = Mailbox.from_id(ids["mb_locked"])
        calls["Mailbox.publish (lock)"] = lambda: mb_locked.publish(b"never")
    return calls


TIMED_OUT = {
    "Semaphore.acquire": False, "Semaphore.wait_zero": False, "SemaphoreSet.op": False,
    "SemaphoreSet.op(undo)": False, "Lock.acquire": False, "Mailbox.wait": None,
    # queue.Empty / queue.Full, as their subclasses (results compare by name)
    "MessageQueue.receive": shmsem.QueueEmptyError, "MessageQueue.send": shmsem.QueueFullError,
    "Channel.get": queue.Empty, "Channel.recv_into": queue.Empty,
    "Channel.put (room)": queue.Full, "Channel.put (lock)": queue.Full,
    "Channel.get (lock)": queue.Empty,
}


def storm_timeouts(ids: dict[str, int]) -> None:
    """Child: each timed call under a storm whose handler returns."""
    trap = Trap(Boom)
    calls = blocking_calls(ids, TIMEOUT)
    out = {}
    start_storm(trap)
    for name, call in calls.items():
        hits = trap.hits
        t0 = time.monotonic()
        try:
            result: Any = repr(call())
        except BaseException as e:  # noqa: BLE001 - reported to the test
            result = type(e).__name__
        elapsed = time.monotonic() - t0
        out[name] = {"result": result, "elapsed": elapsed, "signals": trap.hits - hits}
    stop_storm()
    emit(out)


def storm_raising(ids: dict[str, int], rounds: int, seed: int) -> None:
    """Child: each blocking call, timed (LONG) and untimed, under a storm whose
    handler raises Boom at a random signal; the call must raise it."""
    rng = random.Random(seed)
    trap = Trap(Boom)
    sem = Semaphore.from_id(ids["sem"])
    zero = Semaphore.from_id(ids["zero"])
    out: dict[str, Any] = {}
    start_storm(trap)
    for timeout in (LONG, None):
        for name, call in blocking_calls(ids, timeout).items():
            results = []
            for _ in range(rounds):
                t0 = time.monotonic()
                try:
                    trap.arm(rng.randint(3, 30))
                    r = call()
                    trap.armed = False
                    results.append(f"returned {r!r}")
                except Boom:
                    results.append("Boom")
                except BaseException as e:  # noqa: BLE001 - reported to the test
                    trap.armed = False
                    results.append(type(e).__name__)
                results[-1] += f" {time.monotonic() - t0:.3f}"
                # No waiter may be left behind by an interrupted semop.
                waiters = sem.ncnt + zero.zcnt
                if waiters:
                    results[-1] += f" leftover-waiters={waiters}"
            out[f"{name} timeout={timeout}"] = results
    stop_storm()
    emit({"results": out, "raised": trap.raised, "signals": trap.hits})


@pytest.fixture
def never_ready() -> Any:
    """Objects that never become ready, by id; the test process (alive) holds
    the Lock and, by writing its pid into the lock words, the Channel and
    Mailbox locks of ch_locked and mb_locked."""
    made: list[Any] = []

    def keep(obj: Any) -> Any:
        made.append(obj)
        return obj

    sem = keep(Semaphore.create(None, 0))
    zero = keep(Semaphore.create(None, 1))
    sset = keep(SemaphoreSet.create(None, 2, values=[0, 0]))
    lock = keep(Lock.create(None))
    q = keep(MessageQueue.create(None))
    q_empty = keep(MessageQueue.create(None))
    ch_full = keep(Channel.create(None, 64))
    ch_empty = keep(Channel.create(None, 64))
    ch_locked = keep(Channel.create(None, 64))
    mb = keep(Mailbox.create(None, 64))
    mb_locked = keep(Mailbox.create(None, 64))
    raw_ch = SharedMemory.from_id(ch_locked.id)
    raw_mb = SharedMemory.from_id(mb_locked.id)
    try:
        assert lock.acquire(timeout=WAIT)
        q.max_bytes = 16
        q.send(b"f" * 16)
        ch_full.put_bytes(b"f" * ch_full.max_message_size)
        ch_locked.put_bytes(b"queued")
        mb.publish(b"current")
        # Lock words (docs/protocol.md section 2): our thread id, without
        # FUTEX_OWNER_DIED: held, by a live thread (the kernel does not know:
        # nothing is on our robust list, and nothing needs to be).
        me = struct.pack("<I", os.getpid())
        for at in CH_LOCK_WORDS:
            raw_ch.write_at(at, me)
        raw_mb.write_at(MB_LOCK_WORD, me)
        ids = {"sem": sem.id, "zero": zero.id, "set": sset.id, "lock": lock.id, "q": q.id,
               "q_empty": q_empty.id, "ch_full": ch_full.id, "ch_empty": ch_empty.id,
               "ch_locked": ch_locked.id, "mb": mb.id, "mb_locked": mb_locked.id}
        yield ids, {"sem": sem, "zero": zero, "set": sset, "q": q, "ch_full": ch_full,
                    "ch_locked": ch_locked, "mb": mb, "mb_locked": mb_locked,
                    "raw_ch": raw_ch, "raw_mb": raw_mb, "lock": lock}
    finally:
        for at in CH_LOCK_WORDS:
            raw_ch.write_at(at, bytes(4))
        raw_mb.write_at(MB_LOCK_WORD, bytes(4))
        raw_ch.detach()
        raw_mb.detach()
        lock.release()
        for obj in made:
            if isinstance(obj, (Channel, Mailbox)):
                obj.close()
            else:
                obj.remove()


def test_timed_waits_honour_their_timeouts_under_a_1ms_storm(child, never_ready, reliability) -> None:
    ids, _ = never_ready
    c = child(child_code("test_signal_storm", "storm_timeouts", ids))
    out = json.loads(c.readline(timeout=WAIT * 2))
    assert c.wait() == 0
    signals = sum(r["signals"] for r in out.values())
    reliability(calls=len(out), signals=signals, timeout=TIMEOUT,
                worst_overrun=round(max(r["elapsed"] for r in out.values()) - TIMEOUT, 3))
    bad = {}
    for name, r in out.items():
        expect = TIMED_OUT[name]
        want = repr(expect) if not isinstance(expect, type) else expect.__name__
        if (r["result"] != want or not TIMEOUT <= r["elapsed"] < TIMEOUT + SLACK
                or r["signals"] < 10):
            bad[name] = r
    assert bad == {}, f"expected each to time out after {TIMEOUT}s with the handler running: {bad}"


def test_a_raising_handler_exception_comes_out_of_every_blocking_call(
        child, never_ready, reliability) -> None:
    ids, objs = never_ready
    rounds = 6
    c = child(child_code("test_signal_storm", "storm_raising", ids, rounds, random.randrange(1 << 30)))
    rep = json.loads(c.readline(timeout=WAIT * 4))
    assert c.wait() == 0
    results = rep["results"]
    reliability(calls=len(results), interrupted_waits=rep["raised"], signals=rep["signals"])
    bad = {name: r for name, r in results.items()
           if not all(x.split()[0] == "Boom" and float(x.split()[1]) < WAIT and len(x.split()) == 2
                      for x in r)}
    assert bad == {}, f"the handler's exception must come out of the call, at once: {bad}"
    assert rep["raised"] == rounds * len(results), "an exception raised by the handler was lost"
    # Nothing changed.
    assert (objs["sem"].value, objs["zero"].value, objs["set"].values) == (0, 1, (0, 0))
    assert objs["sem"].ncnt == 0 and objs["zero"].zcnt == 0
    assert objs["q"].current_messages == 1
    assert objs["ch_full"].qsize() == 1 and objs["ch_locked"].qsize() == 1
    assert objs["mb"].read() == (1, b"current") and objs["mb_locked"].seq == 0
    me = os.getpid()
    for raw, at in [(objs["raw_ch"], at) for at in CH_LOCK_WORDS] + [(objs["raw_mb"], MB_LOCK_WORD)]:
        # Waiters may have set FUTEX_WAITERS; the id must be ours, unmarked.
        word = struct.unpack("<I", raw.read_at(at, 4))[0]
        assert word & (FUTEX_OWNER_DIED | FUTEX_TID_MASK) == me, (
            f"a live holder's lock was taken: {word:#x}")
    assert objs["ch_locked"].stats().recoveries == 0
    assert objs["mb_locked"].stats().recoveries == 0
    assert objs["lock"].locked()


# ---------------------------------------------------------------------------
# Large copies under the storm


BIG = 8 << 20


def big_producer(shmid: int, count: int, seed: int, logpath: str) -> None:
    rng = random.Random(seed)
    ch = Channel.from_id(shmid)
    block = os.urandom(BIG)
    trap = Trap(Boom)
    outcomes = []
    nbytes = 0
    emit({"ready": os.getpid()})
    start_storm(trap)
    for seq in range(count):
        n = rng.randint(1 << 20, 6 << 20)
        off = rng.randint(0, BIG - n)
        m = encode(1, seq, block[off:off + n])
        try:
            trap.arm(rng.randint(1, 4))
            ch.put_bytes(m, timeout=LONG)
            trap.armed = False
            outcomes.append("ok")
            nbytes += len(m)
        except Boom:
            outcomes.append("boom")  # it may or may not have been committed
    trap.armed = False
    ch.put_bytes(b"STOP", timeout=LONG)
    stop_storm()
    Path(logpath).write_text(json.dumps(outcomes))
    emit({"signals": trap.hits, "raised": trap.raised, "bytes": nbytes})


def big_consumer(shmid: int, seed: int, logpath: str) -> None:
    rng = random.Random(seed)
    ch = Channel.from_id(shmid)
    buf = bytearray(ch.max_message_size)
    view = memoryview(buf)
    trap = Trap(Boom)
    got: list[int] = []
    recovered = torn = 0
    emit({"ready": os.getpid()})
    start_storm(trap)
    while True:
        n = -1
        try:
            trap.arm(rng.randint(1, 4))
            n = ch.recv_into(buf, timeout=LONG)
            trap.armed = False
        except Boom:
            # Raised after the message was taken?  Then it is in buf.
            if buf[:4] == b"STOP":
                break  # the last message was taken: waiting for another would never end
            size = struct.unpack_from("<I", buf, 8)[0] + 16
            if size <= len(buf):
                try:
                    _who, seq = decode(view[:size])
                except ValueError:
                    continue
                if not got or seq > got[-1]:
                    got.append(seq)
                    recovered += 1
            continue
        if bytes(view[:n]) == b"STOP":
            break
        try:
            got.append(decode(view[:n])[1])
        except ValueError:
            torn += 1
    stop_storm()
    Path(logpath).write_text(json.dumps(got))
    emit({"signals": trap.hits, "raised": trap.raised, "recovered": recovered, "torn": torn})


def test_multi_mib_messages_between_processes_under_storms(child, tmp_path, reliability) -> None:
    count = 80
    ch = Channel.create(None, 16 << 20)
    try:
        seed = random.randrange(1 << 30)
        prod = child(child_code("test_signal_storm", "big_producer", ch.id, count, seed,
                                str(tmp_path / "sent.json")))
        cons = child(child_code("test_signal_storm", "big_consumer", ch.id, seed + 1,
                                str(tmp_path / "got.json")))
        for c in (prod, cons):
            assert "ready" in json.loads(c.readline(timeout=WAIT))
        p = json.loads(prod.readline(timeout=WAIT * 6))
        r = json.loads(cons.readline(timeout=WAIT * 2))
        assert prod.wait() == 0 and cons.wait() == 0
        stats = ch.stats()
    finally:
        ch.close()
    sent = json.loads((tmp_path / "sent.json").read_text())
    got = json.loads((tmp_path / "got.json").read_text())
    reliability(messages=len(got), mib_put=round(p["bytes"] / 2**20), signals=p["signals"] + r["signals"],
                interrupted_puts=p["raised"], interrupted_gets=r["raised"],
                found_in_buffer=r["recovered"], torn=r["torn"])
    assert r["torn"] == 0
    assert got == sorted(set(got)), "out of order or duplicated"
    ok = {i for i, o in enumerate(sent) if o == "ok"}
    assert ok <= set(got), f"puts that returned but never arrived: {sorted(ok - set(got))}"
    assert set(got) <= set(range(count))
    assert p["raised"] > 0 and r["raised"] > 0, "the handler's exceptions never came out"
    assert (stats.producer_lock_pid, stats.consumer_lock_pid, stats.messages) == (0, 0, 0)
    assert stats.recoveries == 0, "nobody died, yet a lock was taken over"


def big_frames(shmid: int, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    shm = SharedMemory.from_id(shmid)
    block = os.urandom(BIG)
    trap = Trap(Boom)
    torn, booms, frames = 0, 0, 0
    expected = b""
    shm.write(expected)
    start_storm(trap)
    for _ in range(rounds):
        n = rng.randint(1 << 20, shm.size - 4)
        off = rng.randint(0, BIG - n) if n < BIG else 0
        data = block[off:off + n] if n < BIG else block
        try:
            trap.arm(rng.randint(1, 2))  # a copy spans a few signals at most
            shm.write(data)
            trap.armed = False
            expected = data
        except Boom:
            booms += 1
        trap.armed = False
        while True:  # read until a read is not interrupted
            try:
                trap.arm(rng.randint(1, 2))
                back = shm.read()
                trap.armed = False
                break
            except Boom:
                booms += 1
        if back == data:
            expected = data
        frames += 1
        if back != expected:
            torn += 1
    stop_storm()
    shm.detach()
    emit({"frames": frames, "torn": torn, "booms": booms, "signals": trap.hits})


def test_large_frames_under_a_storm(child, reliability) -> None:
    shm = SharedMemory.create(None, BIG + 4)
    try:
        c = child(child_code("test_signal_storm", "big_frames", shm.id, 40, random.randrange(1 << 30)))
        rep = json.loads(c.readline(timeout=WAIT * 3))
        assert c.wait() == 0
    finally:
        shm.close()
    reliability(frames=rep["frames"], torn=rep["torn"], interrupted=rep["booms"],
                signals=rep["signals"])
    assert rep["torn"] == 0, "a frame read back was neither the old nor the new one"
    assert rep["booms"] > 0


# ---------------------------------------------------------------------------
# KeyboardInterrupt at random instants


def ki_producer(ch_id: int, mb_id: int, seed: int, logpath: str) -> None:
    """put/put_bytes/put_many and Mailbox.publish in a loop; SIGINT raises
    KeyboardInterrupt inside those calls (and only there)."""
    rng = random.Random(seed)
    ch = Channel.from_id(ch_id)
    mb = Mailbox.from_id(mb_id)
    trap = Trap(KeyboardInterrupt)
    signal.signal(signal.SIGINT, trap)
    log = open(logpath, "w")  # noqa: SIM115 - closed below; lines survive nothing
    seq = 0
    emit({"ready": os.getpid()})
    while not (seq % 16 == 0 and stdin_says_stop()):
        how = rng.random()
        k = rng.randint(2, 4) if how < 0.2 else 1
        msgs = [encode(2, seq + j, os.urandom(rng.randint(0, 3000))) for j in range(k)]
        try:
            trap.arm(1)
            if k > 1:
                ch.put_many(msgs, timeout=LONG)
            elif how < 0.6:
                ch.put(msgs[0], timeout=LONG)       # pickled, through the Python layer
            else:
                ch.put_bytes(msgs[0], timeout=LONG)
            if rng.random() < 0.3:
                mb.publish(msgs[0])
            trap.armed = False
            log.write(f"ok {seq} {k}\n")
        except KeyboardInterrupt:
            log.write(f"ki {seq} {k}\n")
        seq += k
    trap.armed = False
    ch.put_bytes(b"STOP", timeout=LONG)
    log.close()
    emit({"signals": trap.hits, "interrupts": trap.raised})


def ki_consumer(ch_id: int, mb_id: int, seed: int, logpath: str) -> None:
    rng = random.Random(seed)
    ch = Channel.from_id(ch_id)
    mb = Mailbox.from_id(mb_id)
    buf = bytearray(ch.max_message_size)
    trap = Trap(KeyboardInterrupt)
    signal.signal(signal.SIGINT, trap)
    got: list[int] = []
    ambiguous = torn = recovered = mb_bad = 0
    last_mb = 0
    emit({"ready": os.getpid()})

    def seq_of(m: Any) -> int:
        """A message's seq: put() pickles it, put_bytes() does not, and
        recv_into/get_bytes return a record's payload as it is."""
        if bytes(m[:1]) == b"\x80":  # a pickle (protocol 5), not who=2
            m = pickle.loads(m)
        return decode(m)[1]

    def take(m: Any) -> None:
        nonlocal torn
        if isinstance(m, list):
            for x in m:
                take(x)
            return
        try:
            got.append(seq_of(m))
        except ValueError:
            torn += 1

    while True:
        how = rng.random()
        m: Any = None
        try:
            trap.arm(1)
            if how < 0.5:
                n = ch.recv_into(buf, timeout=LONG)
                m = bytes(buf[:n])
            elif how < 0.7:
                m = ch.get(timeout=LONG)        # unpickled, through the Python layer
            elif how < 0.85:
                m = ch.get_bytes(timeout=LONG)
            else:
                m = ch.get_many(max_messages=1, timeout=LONG)
            mb_value = mb.read() if rng.random() < 0.2 else None
            trap.armed = False
        except KeyboardInterrupt:
            if how < 0.5:
                # recv_into copies before it commits: a message taken by an
                # interrupted call is in buf.
                if buf[:4] == b"STOP":
                    break
                seq = seq_in_buffer(buf)
                if seq is not None and (not got or seq > got[-1]):
                    got.append(seq)
                    recovered += 1
            else:
                ambiguous += 1  # may have taken one message, now lost with the call
            continue
        if m == b"STOP" or m == [b"STOP"]:
            break
        take(m)
        if mb_value is not None:
            s, v = mb_value
            if s < last_mb:
                mb_bad += 1
            if s:
                try:
                    decode(v)
                except ValueError:
                    mb_bad += 1
            last_mb = s
    trap.armed = False
    Path(logpath).write_text(json.dumps(got))
    emit({"signals": trap.hits, "interrupts": trap.raised, "ambiguous": ambiguous,
          "recovered": recovered, "torn": torn, "mailbox_bad": mb_bad})


def seq_in_buffer(buf: bytearray) -> int | None:
    """The seq of the message at the start of a recv_into buffer, raw or
    pickled, or None if there is no intact one."""
    view = memoryview(buf)
    try:
        if buf[:1] == b"\x80":
            # A pickle of bytes: opcodes PROTO 5, FRAME (8-byte length), ...
            frame = struct.unpack_from("<Q", buf, 3)[0]
            return int(decode(pickle.loads(view[: 11 + frame]))[1])
        size = struct.unpack_from("<I", buf, 8)[0] + 16
        if size > len(buf):
            return None
        return decode(view[:size])[1]
    except Exception:  # noqa: BLE001 - anything but an intact message
        return None


def sigint_storm(pids: list[int], seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        os.kill(rng.choice(pids), signal.SIGINT)
        sent += 1
        time.sleep(rng.uniform(0, 0.004))
    return sent


def test_keyboard_interrupt_storm_leaves_channel_and_mailbox_consistent(
        child, tmp_path, reliability) -> None:
    ch = Channel.create(None, 1 << 15)  # small: the producer often waits for room
    mb = Mailbox.create(None, 4096)
    try:
        seed = random.randrange(1 << 30)
        prod = child(child_code("test_signal_storm", "ki_producer", ch.id, mb.id, seed,
                                str(tmp_path / "sent.log")))
        cons = child(child_code("test_signal_storm", "ki_consumer", ch.id, mb.id, seed + 1,
                                str(tmp_path / "got.json")))
        for c in (prod, cons):
            assert "ready" in json.loads(c.readline(timeout=WAIT))
        sent_signals = sigint_storm([prod.pid, cons.pid], 5.0, seed)
        prod.send("stop")
        p = json.loads(prod.readline(timeout=WAIT))
        r = json.loads(cons.readline(timeout=WAIT))
        assert prod.wait() == 0 and cons.wait() == 0
        # The full check: nothing left, counters agree, locks free, still usable.
        s = ch.stats()
        mb_stats = mb.stats()
        seq, value = mb.read()
        ch.put({"after": "the storm"}, timeout=WAIT)
        assert ch.get(timeout=WAIT) == {"after": "the storm"}
        assert mb.publish(b"after") == seq + 1
    finally:
        ch.close()
        mb.close()
    lines = (tmp_path / "sent.log").read_text().split()
    sent = [(lines[i], int(lines[i + 1]), int(lines[i + 2])) for i in range(0, len(lines), 3)]
    got = json.loads((tmp_path / "got.json").read_text())
    committed = {s + j for what, s, k in sent if what == "ok" for j in range(k)}
    maybe = {s + j for what, s, k in sent if what == "ki" for j in range(k)}
    missing = sorted(committed - set(got))
    reliability(signals=sent_signals, interrupts=p["interrupts"] + r["interrupts"],
                messages=len(got), found_in_buffer=r["recovered"],
                interrupted_gets_unseen=r["ambiguous"],
                lost_with_interrupted_get=len(missing), torn=r["torn"])
    assert r["torn"] == 0 and r["mailbox_bad"] == 0
    assert got == sorted(set(got)), "out of order or duplicated"
    assert set(got) <= committed | maybe, "a message nobody sent"
    assert len(missing) <= r["ambiguous"], (
        f"{len(missing)} committed messages never arrived, but only {r['ambiguous']} gets "
        f"were interrupted where their message could not be seen: {missing[:10]}")
    assert p["interrupts"] > 20 and r["interrupts"] > 20, "the storm interrupted too little"
    assert (s.producer_lock_pid, s.consumer_lock_pid, s.messages) == (0, 0, 0)
    assert s.put_count == s.get_count
    assert mb_stats.writer_lock_pid == 0
    # Nobody died: an interrupted call must leave the lock free, not for a
    # takeover.
    assert s.recoveries == 0 and mb_stats.recoveries == 0
    if seq:
        decode(value)


def ki_with(kind: str, sem_id: int) -> None:
    """``with lock:`` in a loop under SIGINTs; nobody else uses the lock, so
    outside the block it must always be free."""
    obj = Lock.from_id(sem_id) if kind == "Lock" else Semaphore.from_id(sem_id)
    probe = Semaphore.from_id(sem_id)
    trap = Trap(KeyboardInterrupt)
    signal.signal(signal.SIGINT, trap)
    rounds = 0
    leaked = None
    emit({"ready": os.getpid()})
    while not (rounds % 64 == 0 and stdin_says_stop()):
        if probe.value != 1:
            leaked = {"after_rounds": rounds, "interrupts": trap.raised, "value": probe.value}
            break
        try:
            trap.arm(1)
            with obj:
                rounds += 1
            trap.armed = False
        except KeyboardInterrupt:
            pass
    trap.armed = False
    while not stdin_says_stop():  # a leak ended the loop: wait for the storm to end
        time.sleep(0.01)
    emit({"rounds": rounds, "interrupts": trap.raised, "signals": trap.hits, "leaked": leaked})


@pytest.mark.parametrize("kind", ["Lock", "Semaphore"])
def test_keyboard_interrupt_never_leaks_a_with_lock(child, reliability, kind) -> None:
    """``with lock:`` interrupted by KeyboardInterrupt at any instant must
    leave the lock free, as threading.Lock's C-level __enter__/__exit__ do.
    A Python-level __enter__ that returns self.acquire(), or __exit__ that
    calls self.release(), has a window where the exception lands after the
    acquire but outside the with block (or before the release), and the
    lock stays held by a live process: it then deadlocks even itself."""
    s = Semaphore.create(None, 1)
    try:
        c = child(child_code("test_signal_storm", "ki_with", kind, s.id))
        assert "ready" in json.loads(c.readline(timeout=WAIT))
        sent = sigint_storm([c.pid], 4.0, random.randrange(1 << 30))
        c.send("stop")
        rep = json.loads(c.readline(timeout=WAIT))
        assert c.wait() == 0
    finally:
        s.remove()
    reliability(signals=sent, interrupts=rep["interrupts"], rounds=rep["rounds"],
                leaked=int(rep["leaked"] is not None))
    assert rep["leaked"] is None, f"`with {kind.lower()}:` leaked the lock: {rep['leaked']}"
    assert rep["interrupts"] > 100
