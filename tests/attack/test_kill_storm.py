"""SIGKILL storm: hundreds of kills of random participants at random instants.

One Channel, one Mailbox and one Lock are used at once by a small crew of
forked workers: two producers and two consumers of the Channel, two processes
incrementing a counter under the Lock, two Mailbox writers, and two Mailbox
readers that check every value they see.  A conductor (a child of the test)
forks the crew, then again and again picks a producer, consumer, lock holder
or writer, kills it with SIGKILL at a random instant (a third of the time
aimed at a moment it holds its lock: stopped with SIGSTOP when seen holding,
killed if it still holds), reaps it and forks a replacement.  Survivors go on
all along.  At the end the crew is stopped and the test does the accounting
from what every worker logged.

The accounting is exact, not statistical:

* Each worker appends fixed-size records to its own log file, with one write
  per record, *after* each operation returns, so a record survives the
  worker's death.  What happened between an operation's return and its
  record is recovered from a per-worker slot in a control segment, written
  *before* the operation (the conductor reads it once the worker is dead).
* Producer: a record per committed put (or batch) with the count committed
  so far.  A killed producer's messages must be exactly seqs [0, n), where n
  is the count it logged, or the end of the put it was in (the slot) if that
  put committed.  A producer stopped at the end must have all of [0, n).
* Consumer: receives into a buffer that lives in the control segment, and
  logs (producer, seq, intact) before it takes the next message.  So a
  consumer killed after taking a message but before logging it leaves that
  message in its buffer, where the conductor finds it: every message not
  delivered must be such a message (or, for a kill during a get_bytes, whose
  result is not visible, one unknown message).  Nothing is delivered twice,
  nothing torn, and each consumer sees each producer's messages in order.
* Lock holders: under the Lock they read the counter v, write v + 1 and log
  v (the slot says v before the write).  No v may be logged twice (a lost
  update), and every v below the final counter is logged, or is the slot
  value of a holder killed in the lock.  After every kill of a holder inside
  the lock, the conductor must get the lock within a bound.
* Mailbox writers log (seq, crc) after each publish; readers log each new
  (seq, crc) they see, and check the value's own checksum and that seq never
  goes back.  Two publishes never get the same seq; a seq seen by a reader
  has the crc its writer logged, or belongs to the publish a killed writer
  was in (its slot names it).

"No lock is left with a dead process": after each kill inside a Channel or
Mailbox lock, the kernel has marked the lock FUTEX_OWNER_DIED by the time the
holder is reaped (docs/protocol.md section 2: its id is gone from the word),
and a survivor takes it over within a bound.  Each takeover is counted once
in the segment: at the end the Channel's recoveries are exactly the kills
inside its producer and consumer locks, and the Mailbox's exactly the kills
inside its writer lock; every lock word is 0.  No deadlock: the conductor checks that the
Channel, the Lock counter and the Mailbox keep moving, and every worker
stopped at the end exits by itself, with status 0.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import random
import signal
import struct
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

from helpers_faults import (
    WAIT,
    child_code,
    decode,
    die_with_parent,
    encode,
    exit_code,
    kill_in_lock,
    stop_and_kill,
    stopped_in_futex_wait,
    waitpid_bounded,
)

from proc_helpers import FUTEX_OWNER_DIED, FUTEX_TID_MASK

import shmsem
from shmsem import Channel, Lock, Mailbox, SharedMemory
from shmsem._core import CHANNEL_OFFSETS, LOCK_OFFSETS, MAILBOX_OFFSETS

#: The storm ends after this many kills, or after STORM_SECONDS, whichever is first.
KILLS = 400
STORM_SECONDS = 35.0
#: Progress must be seen at least this often (a stall is a deadlock).
STALL_SECONDS = 15.0

CAPACITY = 1 << 20          # the Channel's ring
MAX_BODY = 200_000          # largest Channel message body
MB_CAPACITY = 1 << 18       # the Mailbox's largest value
BATCH_MAX = 4

# Control segment layout.
STOP = 0                    # u8: 0 run, 1 producers/holders/writers stop, 2 all stop
COUNTER = 8                 # u64: incremented under the Lock
SLOTS = 64                  # per worker slot: u64 state, u64 aux
SLOT_SIZE = 16
N_SLOTS = 16
BUFS = 4096                 # consumers' receive buffers
BUF_SIZE = 256 * 1024
CTL_SIZE = BUFS + 2 * BUF_SIZE

# The lock words (docs/protocol.md section 2): in the Channel, then the Mailbox.
PRODUCER_WORD = CHANNEL_OFFSETS["producer_lock"] + LOCK_OFFSETS["word"]
CONSUMER_WORD = CHANNEL_OFFSETS["consumer_lock"] + LOCK_OFFSETS["word"]
WRITER_WORD = MAILBOX_OFFSETS["writer_lock"] + LOCK_OFFSETS["word"]

CREW = {"producer": 2, "consumer": 2, "locker": 2, "writer": 2, "reader": 2}
KILLABLE = ("producer", "consumer", "locker", "writer")

# Log records.
REC_PRODUCER = struct.Struct("<Q")        # messages committed so far
REC_CONSUMER = struct.Struct("<IIi")      # producer, seq, intact (1) / torn (0)
REC_LOCKER = struct.Struct("<q")          # v read under the lock (-1: acquire timed out)
REC_WRITER = struct.Struct("<QII")        # mailbox seq, crc32 of the value, own seq
REC_READER = struct.Struct("<QIIII")      # mailbox seq, crc32, flags, writer, its seq
READER_TORN, READER_BACKWARDS = 1, 2


# ---------------------------------------------------------------------------
# The workers (each runs in a process forked by the conductor)


class Slot:
    def __init__(self, ctl: SharedMemory, index: int) -> None:
        self.ctl = ctl
        self.at = SLOTS + SLOT_SIZE * index

    def set(self, state: int, aux: int = 0) -> None:
        # aux first: a state that says "in an operation" always has its aux.
        self.ctl.write_at(self.at + 8, struct.pack("<Q", aux))
        self.ctl.write_at(self.at, struct.pack("<Q", state))

    def get(self) -> tuple[int, int]:
        state, aux = struct.unpack("<QQ", self.ctl.read_at(self.at, 16))
        return state, aux


def mailbox_value(writer: int, wseq: int, body: bytes | memoryview) -> bytes:
    return encode(writer, wseq, body)


def worker(role: str, inc: int, slot_index: int, cfg: dict[str, Any]) -> None:
    die_with_parent()
    rng = random.Random(cfg["seed"] * 100_003 + inc)
    ctl = SharedMemory.from_id(cfg["ctl"])
    slot = Slot(ctl, slot_index)
    fd = os.open(f"{cfg['logdir']}/{role}-{inc}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def stop() -> int:
        return ctl.read_at(STOP, 1)[0]

    if role == "producer":
        ch = Channel.from_id(cfg["ch"])
        block = os.urandom(MAX_BODY)
        seq = 0
        while stop() == 0:
            k = rng.randint(2, BATCH_MAX) if rng.random() < 0.15 else 1
            bodies = []
            for _ in range(k):
                # Mostly small; now and then large, for long copies under the lock.
                n = rng.randint(MAX_BODY // 4, MAX_BODY) if rng.random() < 0.1 else rng.randint(0, 2000)
                off = rng.randint(0, MAX_BODY - n)
                bodies.append(block[off:off + n])
            msgs = [encode(inc, seq + j, b) for j, b in enumerate(bodies)]
            slot.set(1, seq + k)
            try:
                if k == 1:
                    ch.put_bytes(msgs[0], timeout=0.5)
                else:
                    ch.put_many_bytes(msgs, timeout=0.5)
            except queue.Full:
                continue  # nothing was committed: the same seqs again
            seq += k
            os.write(fd, REC_PRODUCER.pack(seq))
            slot.set(0)

    elif role == "consumer":
        ch = Channel.from_id(cfg["ch"])
        at = BUFS + BUF_SIZE * (slot_index - cfg["first_consumer_slot"])
        buf = ctl.buf[at:at + BUF_SIZE]
        while True:
            use_buffer = rng.random() < 0.9
            slot.set(1 if use_buffer else 2)
            try:
                if use_buffer:
                    n = ch.recv_into(buf, timeout=0.2)
                    m: Any = buf[:n]
                else:
                    m = ch.get_bytes(timeout=0.2)
            except queue.Empty:
                slot.set(0)
                if stop() >= 2:
                    break
                continue
            try:
                who, seq = decode(m)
                ok = 1
            except ValueError:
                who, seq = struct.unpack_from("<II", m) if len(m) >= 8 else (0, 0)
                ok = 0
            os.write(fd, REC_CONSUMER.pack(who, seq, ok))
            slot.set(0)

    elif role == "locker":
        lock = Lock.from_id(cfg["lock"])
        while stop() == 0:
            if not lock.acquire(timeout=10):
                os.write(fd, REC_LOCKER.pack(-1))
                continue
            try:
                (v,) = struct.unpack("<Q", ctl.read_at(COUNTER, 8))
                slot.set(1, v)
                spin = time.perf_counter() + rng.uniform(0, 100e-6)
                while time.perf_counter() < spin:
                    pass
                ctl.write_at(COUNTER, struct.pack("<Q", v + 1))
                os.write(fd, REC_LOCKER.pack(v))
                slot.set(0)
            finally:
                lock.release()
            time.sleep(rng.uniform(0, 0.001))

    elif role == "writer":
        mb = Mailbox.from_id(cfg["mb"])
        block = os.urandom(MB_CAPACITY)
        limit = MB_CAPACITY - 16
        wseq = 0
        while stop() == 0:
            n = rng.randint(limit // 2, limit) if rng.random() < 0.6 else rng.randint(0, 4000)
            off = rng.randint(0, MB_CAPACITY - n)
            value = mailbox_value(inc, wseq, block[off:off + n])
            slot.set(1, (inc << 32) | wseq)
            s = mb.publish(value)
            os.write(fd, REC_WRITER.pack(s, zlib.crc32(value), wseq))
            slot.set(0)
            wseq += 1
            time.sleep(rng.uniform(0, 0.001))

    elif role == "reader":
        mb = Mailbox.from_id(cfg["mb"])
        use_wait = slot_index % 2 == 0
        last = 0
        while stop() < 2:
            if use_wait:
                got = mb.wait(last, timeout=0.2)
                if got is None:
                    continue
            else:
                got = mb.read()
                time.sleep(0.0005)
                if got[0] == last:
                    continue
            s, value = got
            flags = who = wseq = 0
            if s < last or (use_wait and s == last):
                flags |= READER_BACKWARDS
            if s > 0:
                try:
                    who, wseq = decode(value)
                except ValueError:
                    flags |= READER_TORN
            os.write(fd, REC_READER.pack(s, zlib.crc32(value), flags, who, wseq))
            last = max(last, s)
    os.close(fd)


# ---------------------------------------------------------------------------
# The conductor (a child of the test)


def conductor(cfg: dict[str, Any]) -> None:
    try:
        _conduct(cfg)
    except BaseException:  # noqa: BLE001 - reported on stderr, and the exit status says so
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _conduct(cfg: dict[str, Any]) -> None:
    rng = random.Random(cfg["seed"])
    ch = Channel.from_id(cfg["ch"])
    mb = Mailbox.from_id(cfg["mb"])
    lock = Lock.from_id(cfg["lock"])
    ctl = SharedMemory.from_id(cfg["ctl"])
    # Raw views of the lock words: the holder's thread id (a worker's pid: its
    # only thread) is the word's low 30 bits.
    raw_ch = SharedMemory.from_id(cfg["ch"])
    raw_mb = SharedMemory.from_id(cfg["mb"])
    sem = shmsem.Semaphore.from_id(cfg["lock"])

    words = {
        "producer": lambda: lock_word(raw_ch, PRODUCER_WORD),
        "consumer": lambda: lock_word(raw_ch, CONSUMER_WORD),
        "writer": lambda: lock_word(raw_mb, WRITER_WORD),
    }
    holders = {role: (lambda word=word: word() & FUTEX_TID_MASK) for role, word in words.items()}
    holders["locker"] = lambda: sem.last_pid if sem.value == 0 else 0

    slot_of: dict[tuple[str, int], int] = {}
    for role, n in CREW.items():
        for i in range(n):
            slot_of[(role, i)] = len(slot_of)
    cfg["first_consumer_slot"] = slot_of[("consumer", 0)]

    incs = iter(range(1, 1 << 30))
    crew: dict[tuple[str, int], tuple[int, int]] = {}  # (role, i) -> (pid, inc)
    meta: dict[int, dict[str, Any]] = {}

    def spawn(role: str, i: int) -> None:
        inc = next(incs)
        slot = slot_of[(role, i)]
        Slot(ctl, slot).set(0)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                worker(role, inc, slot, cfg)
            except BaseException:  # noqa: BLE001 - reported on stderr and in the status
                traceback.print_exc()
                code = 3
            os._exit(code)
        crew[(role, i)] = (pid, inc)
        meta[inc] = {"role": role, "pid": pid, "killed": False}

    for role, n in CREW.items():
        for i in range(n):
            spawn(role, i)

    kills: list[dict[str, Any]] = []
    problems: list[str] = []

    def marks() -> tuple[int, ...]:
        s = ch.stats()
        return (s.put_count, s.get_count, mb.seq,
                struct.unpack("<Q", ctl.read_at(COUNTER, 8))[0])

    # Progress: every one of the marks has moved since base_marks was taken.
    base_marks, base_time = marks(), time.monotonic()
    next_check = base_time + 1.0

    start = time.monotonic()
    while len(kills) < cfg["kills"] and time.monotonic() - start < cfg["seconds"]:
        role = rng.choice(KILLABLE)
        i = rng.randrange(CREW[role])
        pid, inc = crew[(role, i)]
        holder = holders[role]
        aimed = rng.random() < 0.33
        waiting = [False]

        def look(pid: int = pid, waiting: list[bool] = waiting) -> None:
            waiting[0] = stopped_in_futex_wait(pid)

        if aimed:
            held = kill_in_lock(pid, holder, budget=0.3, on_stopped=look)
        else:
            time.sleep(rng.uniform(0, 0.03))
            held = stop_and_kill(pid, holder, on_stopped=look)
        status = waitpid_bounded(pid, WAIT)
        if status is None:
            problems.append(f"{role} {inc} (pid {pid}) did not die of SIGKILL")
            break
        state, aux = Slot(ctl, slot_of[(role, i)]).get()
        rec: dict[str, Any] = {"role": role, "inc": inc, "held": held, "aimed": aimed,
                               "rc": exit_code(status), "slot": [state, aux],
                               "waiting": waiting[0]}
        if role == "consumer" and state == 1:
            at = BUFS + BUF_SIZE * (slot_of[(role, i)] - cfg["first_consumer_slot"])
            try:
                rec["buffer"] = list(decode_prefix(ctl.read_at(at, BUF_SIZE)))
            except ValueError:
                rec["buffer"] = None  # mid-copy: that message was not taken
        meta[inc]["killed"] = True
        kills.append(rec)
        spawn(role, i)

        if held:
            # The lock must not stay with the dead process.
            t0 = time.monotonic()
            if role == "locker":
                if lock.acquire(timeout=WAIT):
                    lock.release()
                    back = True
                else:
                    back = False
            else:
                # Reaped: the kernel has marked the word (FUTEX_OWNER_DIED, the
                # id cleared), unless a survivor has already taken it over,
                # which clears the mark.  Wait for that takeover.
                word = words[role]()
                rec["kernel_mark_seen"] = bool(word & FUTEX_OWNER_DIED)
                if word & FUTEX_TID_MASK == pid:
                    problems.append(f"the kernel did not mark the {role} lock of dead pid {pid}: "
                                    f"word {word:#x}")
                back = False
                while time.monotonic() - t0 < WAIT:
                    word = words[role]()
                    if not word & FUTEX_OWNER_DIED and word & FUTEX_TID_MASK != pid:
                        back = True
                        break
                    time.sleep(0.001)
            rec["lock_back_after"] = round(time.monotonic() - t0, 4)
            if not back:
                problems.append(f"the {role} lock stayed with dead pid {pid} for {WAIT}s")

        now = time.monotonic()
        if now >= next_check:
            next_check = now + 1.0
            m = marks()
            if all(a != b for a, b in zip(m, base_marks)):
                base_marks, base_time = m, now
            elif now - base_time > STALL_SECONDS:
                problems.append(f"no progress for {STALL_SECONDS}s: marks {base_marks} -> {m} "
                                "(put_count, get_count, mailbox seq, counter)")
                break
    storm_seconds = time.monotonic() - start

    # Stop: producers, holders and writers first, then consumers (which drain)
    # and readers.  Each must exit by itself, with status 0.
    exits: dict[int, int] = {}

    def reap(roles: tuple[str, ...]) -> None:
        for (role, i), (pid, inc) in crew.items():
            if role not in roles:
                continue
            status = waitpid_bounded(pid, WAIT)
            if status is None:
                problems.append(f"{role} {inc} (pid {pid}) did not stop within {WAIT}s: hung")
                os.kill(pid, signal.SIGKILL)
                status = os.waitpid(pid, 0)[1]
            exits[inc] = exit_code(status)

    ctl.write_at(STOP, b"\x01")
    reap(("producer", "locker", "writer"))
    ctl.write_at(STOP, b"\x02")
    reap(("consumer", "reader"))
    s = ch.stats()
    summary = {
        "kills": kills, "meta": meta, "exits": exits, "problems": problems,
        "storm_seconds": storm_seconds,
        "final": {"counter": struct.unpack("<Q", ctl.read_at(COUNTER, 8))[0],
                  "mb_seq": mb.seq, "put_count": s.put_count, "get_count": s.get_count,
                  "words": {role: word() for role, word in words.items()}},
    }
    Path(cfg["logdir"], "summary.json").write_text(json.dumps(summary))
    print("done", flush=True)


def lock_word(raw: SharedMemory, at: int) -> int:
    return int(struct.unpack("<I", raw.read_at(at, 4))[0])


def decode_prefix(buf: bytes) -> tuple[int, int]:
    """(who, seq) of the intact message at the start of a receive buffer."""
    if len(buf) < 16:
        raise ValueError("short")
    n = struct.unpack_from("<I", buf, 8)[0]
    if 16 + n > len(buf):
        raise ValueError("length runs past the buffer")
    return decode(buf[:16 + n])


# ---------------------------------------------------------------------------
# The test


def read_log(path: Path, rec: struct.Struct) -> list[tuple[Any, ...]]:
    data = path.read_bytes() if path.exists() else b""
    assert len(data) % rec.size == 0, f"{path.name}: a record was torn ({len(data)} bytes)"
    return list(rec.iter_unpack(data))


def test_kill_storm(child, tmp_path, reliability) -> None:
    ch = Channel.create(None, CAPACITY)
    mb = Mailbox.create(None, MB_CAPACITY)
    lock = Lock.create(None)
    ctl = SharedMemory.create(None, CTL_SIZE)
    try:
        cfg = {"ch": ch.id, "mb": mb.id, "lock": lock.id, "ctl": ctl.id,
               "logdir": str(tmp_path), "seed": random.randrange(1 << 30),
               "kills": KILLS, "seconds": STORM_SECONDS}
        c = child(child_code("test_kill_storm", "conductor", cfg))
        line = c.readline(timeout=STORM_SECONDS + 8 * WAIT)
        rc = c.wait(WAIT)
        assert (line, rc) == ("done", 0), f"conductor: {line!r} rc={rc}: {c.stderr_text()}"
        summary = json.loads((tmp_path / "summary.json").read_text())
        # Whatever is still queued (there should be nothing) is delivered to us.
        leftover = []
        while True:
            try:
                leftover.append(decode(ch.get_bytes_nowait()))
            except queue.Empty:
                break
        stats = ch.stats()
        mb_stats = mb.stats()
        final_value = mb.read()
        lock_free = lock.acquire(timeout=WAIT)
        if lock_free:
            lock.release()
    finally:
        ch.close()
        mb.close()
        ctl.close()
        lock.remove()

    figures = analyse(tmp_path, summary, leftover, final_value)
    details = figures.pop("details")
    figures["stuck_locks"] = len([p for p in summary["problems"] if "stayed" in p])
    figures["recoveries_channel"] = stats.recoveries
    figures["recoveries_mailbox"] = mb_stats.recoveries
    reliability(**figures)

    assert summary["problems"] == [], summary["problems"]
    assert lock_free, "the Lock is held by nobody alive, yet cannot be acquired"
    assert (stats.producer_lock_pid, stats.consumer_lock_pid) == (0, 0)
    assert mb_stats.writer_lock_pid == 0
    # Free, unmarked, and no waiter bit left behind.
    assert summary["final"]["words"] == {"producer": 0, "consumer": 0, "writer": 0}, (
        summary["final"]["words"])
    # Every takeover counted once, in the segment, whoever took it over: one
    # per kill inside the lock (nobody else died, nobody died twice).
    assert (stats.recoveries, mb_stats.recoveries) == (
        figures["kills_holding_lock_producer"] + figures["kills_holding_lock_consumer"],
        figures["kills_holding_lock_writer"]), (stats, mb_stats, figures)
    assert leftover == [], "consumers stopped at an empty channel, yet messages remain"

    kills = summary["kills"]
    assert len(kills) >= 50, f"only {len(kills)} kills: the storm did not run"
    assert all(k["rc"] == -signal.SIGKILL for k in kills), "a victim died of something else"
    by_role = collections.Counter(k["role"] for k in kills)
    held = collections.Counter(k["role"] for k in kills if k["held"])
    for role in KILLABLE:
        assert by_role[role] >= 5, f"too few kills of {role}: {by_role}"
        assert held[role] >= 1, f"no {role} was ever killed holding its lock: {held}"
    bad_exits = {inc: rc for inc, rc in summary["exits"].items() if rc != 0}
    assert bad_exits == {}, f"workers stopped at the end exited with {bad_exits}"
    for name in ("lost", "duplicates", "torn", "phantoms", "reordered", "lost_updates",
                 "counter_gaps", "lock_timeouts", "mailbox_seq_reused", "mailbox_mismatches",
                 "mailbox_backwards", "mailbox_torn", "mailbox_unexplained"):
        assert figures[name] == 0, f"{name}: {figures[name]}; details: {details.get(name)}"
    assert figures["messages"] > 0 and figures["lock_increments"] > 0
    assert figures["mailbox_reads"] > 0


def analyse(logdir: Path, summary: dict[str, Any], leftover: list[tuple[int, int]],
            final_value: tuple[int, bytes]) -> dict[str, Any]:
    meta = {int(k): v for k, v in summary["meta"].items()}
    kills = summary["kills"]
    killed_slot = {k["inc"]: k["slot"] for k in kills}
    details: dict[str, Any] = {}

    def incs(role: str) -> list[int]:
        return [inc for inc, m in meta.items() if m["role"] == role]

    # -- Channel ------------------------------------------------------------
    delivered: dict[int, list[int]] = collections.defaultdict(list)
    torn = reordered = 0
    for inc in incs("consumer"):
        last: dict[int, int] = {}
        for who, seq, ok in read_log(logdir / f"consumer-{inc}.log", REC_CONSUMER):
            if not ok:
                torn += 1
                continue
            delivered[who].append(seq)
            if seq <= last.get(who, -1):
                reordered += 1
            last[who] = seq
    for who, seq in leftover:
        delivered[who].append(seq)
    duplicates = sum(n - 1 for seqs in delivered.values()
                     for n in collections.Counter(seqs).values() if n > 1)

    # Messages a killed consumer may have taken without logging.
    maybe_taken = {tuple(k["buffer"]) for k in kills
                   if k["role"] == "consumer" and k.get("buffer")}
    # A kill during get_bytes: its result is invisible, so one message may be
    # gone unseen, unless the consumer was stopped asleep waiting (nothing
    # taken yet: a get takes one message and returns without waiting again).
    unknown_takes = sum(1 for k in kills
                        if k["role"] == "consumer" and k["slot"][0] == 2 and not k["waiting"])

    missing: list[tuple[int, int]] = []
    phantoms: list[tuple[int, int]] = []
    messages = 0
    for inc in incs("producer"):
        log = read_log(logdir / f"producer-{inc}.log", REC_PRODUCER)
        logged = log[-1][0] if log else 0
        got = set(delivered.get(inc, []))
        messages += len(got)
        allowed = {logged}
        state, aux = killed_slot.get(inc, (0, 0))
        if meta[inc]["killed"] and state == 1:
            allowed.add(aux)  # the put it was in may have committed
        # The committed prefix is the longest allowed count that explains
        # what was delivered.
        top = max(got) + 1 if got else 0
        fits = [n for n in sorted(allowed) if n >= top]
        if not fits:
            phantoms.extend((inc, s) for s in sorted(got) if s >= max(allowed))
            n = max(allowed)
        else:
            n = fits[0]
        missing.extend((inc, s) for s in range(n) if s not in got)
    producers = set(incs("producer"))
    phantoms.extend((who, s) for who, seqs in delivered.items() if who not in producers
                    for s in seqs)
    unexplained = [m for m in missing if m not in maybe_taken]
    lost = max(0, len(unexplained) - unknown_takes)
    details["lost"] = unexplained[:20]
    details["phantoms"] = phantoms[:20]

    # -- Lock ---------------------------------------------------------------
    values: list[int] = []
    lock_timeouts = 0
    for inc in incs("locker"):
        for (v,) in read_log(logdir / f"locker-{inc}.log", REC_LOCKER):
            if v < 0:
                lock_timeouts += 1
            else:
                values.append(v)
    counter = summary["final"]["counter"]
    lost_updates = sum(n - 1 for n in collections.Counter(values).values() if n > 1)
    in_lock = {aux for inc, (state, aux) in killed_slot.items()
               if meta[inc]["role"] == "locker" and state == 1}
    gaps = sorted(set(range(counter)) - set(values) - in_lock)
    beyond = [v for v in values if v >= counter]
    details["lost_updates"] = [v for v, n in collections.Counter(values).items() if n > 1][:20]
    details["counter_gaps"] = gaps[:20] + beyond[:5]

    # -- Mailbox ------------------------------------------------------------
    published: dict[int, int] = {}
    seq_reused = 0
    for inc in incs("writer"):
        for s, crc, _wseq in read_log(logdir / f"writer-{inc}.log", REC_WRITER):
            if s in published:
                seq_reused += 1
            published[s] = crc
    in_publish = {(aux >> 32, aux & 0xFFFFFFFF) for inc, (state, aux) in killed_slot.items()
                  if meta[inc]["role"] == "writer" and state == 1}
    seen: dict[int, set[tuple[int, int, int]]] = collections.defaultdict(set)
    mb_torn = mb_backwards = mb_reads = 0
    for inc in incs("reader"):
        for s, crc, flags, who, wseq in read_log(logdir / f"reader-{inc}.log", REC_READER):
            mb_reads += 1
            mb_torn += bool(flags & READER_TORN)
            mb_backwards += bool(flags & READER_BACKWARDS)
            seen[s].add((crc, who, wseq))
    final_seq, final_bytes = final_value
    if final_seq:
        try:
            seen[final_seq].add((zlib.crc32(final_bytes), *decode(final_bytes)))
        except ValueError:
            mb_torn += 1
    mismatches = [s for s, vals in seen.items()
                  if s in published and {v[0] for v in vals} != {published[s]}]
    # A seq no writer logged must be the publish a killed writer was in.
    unexplained_mb = [s for s, vals in seen.items()
                      if s and s not in published
                      and (len(vals) != 1 or next(iter(vals))[1:] not in in_publish)]
    details["mailbox_mismatches"] = mismatches[:20]
    details["mailbox_unexplained"] = unexplained_mb[:20]

    by_role = collections.Counter(k["role"] for k in kills)
    held = collections.Counter(k["role"] for k in kills if k["held"])
    return {
        "kills": len(kills),
        **{f"kills_{r}": by_role[r] for r in KILLABLE},
        **{f"kills_holding_lock_{r}": held[r] for r in KILLABLE},
        "seconds": round(summary["storm_seconds"], 1),
        "messages": messages,
        "lost": lost,
        # Taken by a consumer killed before it could log them: found in its
        # receive buffer, or (at most one each) by kills during get_bytes.
        "taken_by_killed_consumers_found": len(missing) - len(unexplained),
        "taken_by_killed_consumers_unseen": len(unexplained) - lost,
        "consumer_kills_during_get_bytes": unknown_takes,
        "duplicates": duplicates,
        "torn": torn,
        "phantoms": len(phantoms),
        "reordered": reordered,
        "lock_increments": len(values),
        "lost_updates": lost_updates,
        "counter_gaps": len(gaps) + len(beyond),
        "lock_timeouts": lock_timeouts,
        "mailbox_publishes": final_seq,
        "mailbox_reads": mb_reads,
        "mailbox_seq_reused": seq_reused,
        "mailbox_mismatches": len(mismatches),
        "mailbox_backwards": mb_backwards,
        "mailbox_torn": mb_torn,
        "mailbox_unexplained": len(unexplained_mb),
        "details": details,
    }
