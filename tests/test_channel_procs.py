"""Channel between real processes: many producers and consumers, SIGKILL of
producers and consumers in the middle of traffic, wake-ups across
processes, signals while blocked, removal while blocked, and locks held by
dead processes.

Children only open the channel (by id or key), never create it; the parent
creates and closes it.  Processes that are killed on purpose are forked by a
child "spawner" (cheap, and many kills fit in the time budget); they die with
their spawner (PR_SET_PDEATHSIG), so nothing outlives the test.  Every wait
has a timeout; no elapsed time is ever asserted.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import struct
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from proc_helpers import FUTEX_OWNER_DIED, FUTEX_TID_MASK, FUTEX_WAITERS, IMPORT_LINE

import shmsem
from shmsem import Channel, Mailbox, SharedMemory
from shmsem._core import CHANNEL_OFFSETS

WAIT = 20.0  # an upper bound on waits, never an expectation

# Helpers shared by the parent and the children (exec'd in both).
HELPERS = IMPORT_LINE + r'''
import os, random, select, signal, struct, sys, time, zlib, queue

HDR = struct.Struct("<cIIII")  # tag, who, seq, body length, crc32


def encode(tag, who, seq, body):
    head = struct.pack("<cIII", tag, who, seq, len(body))
    return head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body


def decode(m):
    """(tag, who, seq) of an intact message; ValueError if it is torn."""
    if len(m) < HDR.size:
        raise ValueError(f"short message of {len(m)} bytes")
    tag, who, seq, n, crc = HDR.unpack_from(m)
    body = memoryview(m)[HDR.size:]
    if len(body) != n or zlib.crc32(body, zlib.crc32(m[: HDR.size - 4])) != crc:
        raise ValueError(f"torn message tag={tag!r} who={who} seq={seq} len={len(m)}")
    return tag, who, seq

'''
H: dict[str, Any] = {}
exec(HELPERS, H)  # noqa: S102 - our own helper source, shared with the children
decode: Callable[[bytes], tuple[bytes, int, int]] = H["decode"]
kill_in_lock: Callable[..., bool] = H["kill_in_lock"]
encode: Callable[[bytes, int, int, bytes], bytes] = H["encode"]


def child_code(shmid: int, body: str) -> str:
    return HELPERS + f"\nfrom shmsem import Channel\nch = Channel.from_id({shmid})\n" + textwrap.dedent(body)


@pytest.fixture
def make() -> Iterator[Callable[..., Channel]]:
    made: list[Channel] = []

    def factory(capacity: int = 4096, key: int | None = None) -> Channel:
        ch = Channel.create(key, capacity)
        made.append(ch)
        return ch

    yield factory
    for ch in made:
        if not ch.closed:
            ch.owner = True
            ch.close()


def wait_for(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


class LineReader:
    """Collects a child's stdout lines in a thread, so the pipe never fills."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.eof = False
        self.thread = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self.thread.start()

    def _run(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with self.cond:
                self.lines.append(raw.decode().rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_line(self, pred: Callable[[str], bool], timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    pytest.fail(f"no such line from the child; got {self.lines[-5:]}")
                self.cond.wait(left)

    def join(self, timeout: float = WAIT) -> list[str]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "child's stdout did not close"
        return self.lines


def proc_shm_line(shmid: int) -> list[str] | None:
    for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1]) == shmid:
            return f
    return None


# ---------------------------------------------------------------------------
# Many producers, many consumers


def test_three_producers_two_consumers(make, child, tmp_path) -> None:
    ch = make(2048)  # small: the ring wraps constantly and both sides wait
    per = 3000
    producer = child_code(ch.id, """
        p, n = P, N
        rng = random.Random(p)
        i = 0
        while i < n:
            if rng.random() < 0.2:  # a batch now and then
                k = min(n - i, rng.randint(1, 8))
                ch.put_many_bytes([encode(b"P", p, j, bytes([j % 256]) * (j % 50))
                                   for j in range(i, i + k)], timeout=20)
                i += k
            else:
                ch.put_bytes(encode(b"P", p, i, bytes([i % 256]) * (i % 50)), timeout=20)
                i += 1
        print("done", flush=True)
    """)
    consumer = child_code(ch.id, """
        import json
        rng = random.Random(C)
        got, bad = [], []
        while True:
            if rng.random() < 0.3:
                batch = ch.get_many_bytes(max_messages=rng.randint(1, 10), timeout=20)
            else:
                batch = [ch.get_bytes(timeout=20)]
            stop = False
            for m in batch:
                if m == b"STOP":
                    stop = True
                    continue
                try:
                    tag, p, seq = decode(m)
                    got.append((p, seq))
                except ValueError as e:
                    bad.append(str(e))
            if stop:
                break
        with open(OUT, "w") as f:
            json.dump({"got": got, "bad": bad}, f)
        print("done", flush=True)
    """)
    cons = []
    for c in range(2):
        out = tmp_path / f"consumer{c}.json"
        cons.append((child(f"C = {c}\nOUT = {str(out)!r}\n" + consumer), out))
    prods = [child(f"P, N = {p}, {per}\n" + producer) for p in range(3)]
    for pr in prods:
        pr.expect("done", timeout=60)
        assert pr.wait() == 0
    # One STOP at a time: each consumer takes exactly one and leaves.
    remaining = list(cons)
    while remaining:
        ch.put_bytes(b"STOP", timeout=WAIT)
        wait_for(lambda: any(c.proc.poll() is not None for c, _ in remaining), "a consumer to stop")
        for c, out in list(remaining):
            if c.proc.poll() is not None:
                assert c.proc.returncode == 0, c.stderr_text()
                remaining.remove((c, out))

    union: list[tuple[int, int]] = []
    for _, out in cons:
        data = json.loads(out.read_text())
        assert data["bad"] == []
        last: dict[int, int] = {}
        for p, seq in data["got"]:
            assert seq > last.get(p, -1), f"producer {p}: seq {seq} after {last.get(p)}"
            last[p] = seq
        union += [(p, s) for p, s in data["got"]]
    counts = collections.Counter(union)
    assert [k for k, v in counts.items() if v > 1] == []  # no duplicates
    assert sorted(union) == [(p, s) for p in range(3) for s in range(per)]  # no loss
    assert ch.empty()
    s = ch.stats()
    assert s.put_count == s.get_count == 3 * per + 2


# ---------------------------------------------------------------------------
# SIGKILL of producers in the middle of traffic


def test_producers_killed_mid_put(make, child) -> None:
    """A spawner forks producers that put large messages and SIGKILLs each at
    a random instant; two steady producers and the parent (consumer) carry
    on.  No message may be torn, lost or duplicated for the survivors; each
    killed producer's messages must arrive as a gapless prefix."""
    ch = make(1 << 20)
    kills = 10
    steady = child_code(ch.id, """
        i = 0
        rng = random.Random(W)
        while True:
            if i % 32 == 0 and select.select([sys.stdin], [], [], 0)[0]:
                break
            ch.put_bytes(encode(b"S", W, i, os.urandom(rng.randint(0, 300))), timeout=20)
            i += 1
            if i % 16 == 0:
                time.sleep(0.001)  # steady, not flooding: the parent checks every message
        print("count", i, ch.stats().recoveries, flush=True)
    """)
    spawner = child_code(ch.id, f"""
        block = os.urandom(1 << 19)
        held = 0
        for r in range({kills}):
            rd, wr = os.pipe()
            pid = os.fork()
            if pid == 0:
                die_with_parent()
                os.close(rd)
                rng = random.Random(r)
                seq = 0
                while True:
                    n = rng.randint(1 << 15, 1 << 19)
                    off = rng.randint(0, len(block) - n)
                    try:
                        ch.put_bytes(encode(b"V", r, seq, block[off:off + n]), timeout=5)
                    except queue.Full:
                        continue
                    seq += 1
                    if seq == 1:
                        os.write(wr, b"1")
            os.close(wr)
            if not select.select([rd], [], [], 20)[0]:
                print("victim never put", flush=True)
                sys.exit(1)
            if r % 2:
                time.sleep(random.uniform(0, 0.03))
                os.kill(pid, signal.SIGKILL)
            else:  # aim: kill it while it holds the producer lock
                held += kill_in_lock(pid, lambda: ch.stats().producer_lock_pid)
            os.waitpid(pid, 0)
            os.close(rd)
        print("done", held, flush=True)
    """)

    got: dict[tuple[bytes, int], list[int]] = collections.defaultdict(list)
    errors: list[str] = []
    stop = threading.Event()

    def consume() -> None:
        while True:
            try:
                m = ch.get_bytes(timeout=0.2)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            try:
                tag, who, seq = decode(m)
                got[(tag, who)].append(seq)
            except ValueError as e:
                errors.append(str(e))

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    try:
        steadies = [child(f"W = {w}\n" + steady) for w in range(2)]
        sp = child(spawner)
        done = sp.readline(timeout=90).split()
        assert done[0] == "done", done
        held = int(done[1])
        assert sp.wait() == 0
        counts = []
        for st in steadies:
            st.send("stop")
            line = st.readline(timeout=WAIT).split()
            assert line[0] == "count", line
            counts.append(int(line[1]))
            assert st.wait() == 0
    finally:
        stop.set()
        consumer.join(WAIT)
    assert not consumer.is_alive()

    assert held >= 1, "no victim was ever killed inside the producer lock"
    assert errors == []  # nothing torn
    for w in range(2):
        assert got[(b"S", w)] == list(range(counts[w])), f"steady producer {w}"
    victims = {who: seqs for (tag, who), seqs in got.items() if tag == b"V"}
    assert set(victims) == set(range(kills))  # every victim delivered its first message
    for who, seqs in victims.items():
        assert seqs == list(range(len(seqs))), f"victim {who}: gap or duplicate"
    # Still usable, and no lock left with a dead process.
    ch.put_bytes(b"after the storm", timeout=WAIT)
    assert ch.get_bytes(timeout=WAIT) == b"after the storm"
    s = ch.stats()
    assert (s.producer_lock_pid, s.consumer_lock_pid) == (0, 0)
    assert ch.empty()


# ---------------------------------------------------------------------------
# SIGKILL of consumers in the middle of traffic


def test_consumers_killed_mid_get(make, child) -> None:
    """Consumers report each message on a pipe as soon as they have it; a
    spawner forks consumers and SIGKILLs each at a random instant.  Nothing
    may be delivered twice, and at most one message per killed consumer may
    go unreported (taken, then killed before it could say so)."""
    ch = make(1 << 21)
    kills = 8
    survivor = child_code(ch.id, """
        while True:
            m = ch.get_bytes(timeout=30)
            if m == b"STOP":
                break
            tag, who, seq = decode(m)
            os.write(1, b"S %d\\n" % seq)
        os.write(1, b"end\\n")
    """)
    spawner = child_code(ch.id, f"""
        held = 0
        for r in range({kills}):
            rd, wr = os.pipe()
            pid = os.fork()
            if pid == 0:
                die_with_parent()
                os.close(rd)
                first = True
                while True:
                    m = ch.get_bytes(timeout=30)
                    try:
                        tag, who, seq = decode(m)
                        os.write(1, b"K%d %d\\n" % (r, seq))
                    except ValueError as e:
                        os.write(1, b"BAD %s\\n" % str(e).encode())
                    if first:
                        os.write(wr, b"1")
                        first = False
            os.close(wr)
            if not select.select([rd], [], [], 20)[0]:
                os.write(1, b"victim never got\\n")
                sys.exit(1)
            if r % 2:
                time.sleep(random.uniform(0, 0.03))
                os.kill(pid, signal.SIGKILL)
            else:  # aim: kill it while it holds the consumer lock
                held += kill_in_lock(pid, lambda: ch.stats().consumer_lock_pid)
            os.waitpid(pid, 0)
            os.close(rd)
        os.write(1, b"done %d\\n" % held)
    """)
    surv = child(survivor)
    surv_out = LineReader(surv.proc)
    sp = child(spawner)
    sp_out = LineReader(sp.proc)
    done = threading.Event()

    def watch() -> None:
        sp_out.wait_line(lambda l: l.startswith(("done", "victim")), timeout=90)
        done.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    seq = 0
    deadline = time.monotonic() + 90
    pad = os.urandom(1 << 18)
    sizes = [512, 1 << 14, 1 << 16, 1 << 17, 1 << 18]  # large ones: long lock holds
    while not done.is_set() and time.monotonic() < deadline:
        try:
            ch.put_bytes(encode(b"M", 0, seq, pad[: sizes[seq % 5]]), timeout=0.05)
        except queue.Full:
            continue
        seq += 1
    assert done.is_set()
    assert sp.wait() == 0
    ch.put_bytes(b"STOP", timeout=WAIT)
    assert surv.wait() == 0
    lines = sp_out.join() + surv_out.join()
    watcher.join(WAIT)

    assert not [l for l in lines if l.startswith(("BAD", "victim"))], lines[-5:]
    assert "end" in lines
    held = [int(l.split()[1]) for l in lines if l.startswith("done")]
    assert held and held[0] >= 1, "no consumer was ever killed inside the consumer lock"
    per_consumer: dict[str, list[int]] = collections.defaultdict(list)
    for line in lines:
        if line == "end" or line.startswith("done"):
            continue
        who, s = line.split()
        per_consumer[who].append(int(s))
    assert len([w for w in per_consumer if w.startswith("K")]) == kills
    for who, seqs in per_consumer.items():
        assert seqs == sorted(set(seqs)), f"consumer {who} went backwards or repeated"
    everything = [s for seqs in per_consumer.values() for s in seqs]
    dup = [s for s, n in collections.Counter(everything).items() if n > 1]
    assert dup == [], f"delivered twice: {dup[:10]}"
    assert set(everything) <= set(range(seq))
    missing = sorted(set(range(seq)) - set(everything))
    assert len(missing) <= kills, f"{len(missing)} messages lost by {kills} kills: {missing[:20]}"
    assert ch.empty()
    ch.put_bytes(b"again", timeout=WAIT)
    assert ch.get_bytes(timeout=WAIT) == b"again"
    s = ch.stats()
    assert (s.producer_lock_pid, s.consumer_lock_pid) == (0, 0)


# ---------------------------------------------------------------------------
# Wake-ups, signals and removal while blocked


def test_consumer_in_child_is_woken_by_a_put(make, child) -> None:
    ch = make(1024)
    c = child(child_code(ch.id, """
        print("ready", flush=True)
        print(repr(ch.get(timeout=30)), flush=True)
    """))
    c.expect("ready")
    wait_for(lambda: ch.stats().consumers_waiting, "the child to sleep")
    ch.put({"hello": "child"})
    c.expect(repr({"hello": "child"}))
    assert c.wait() == 0


def test_producer_in_child_is_woken_by_a_get(make, child) -> None:
    ch = make(256)
    ch.put_bytes(b"x" * ch.max_message_size)
    c = child(child_code(ch.id, """
        print("ready", flush=True)
        ch.put_bytes(b"from the child", timeout=30)
        print("put", flush=True)
    """))
    c.expect("ready")
    wait_for(lambda: ch.stats().producers_waiting, "the child to sleep")
    assert ch.get_bytes() == b"x" * ch.max_message_size
    c.expect("put")
    assert ch.get_bytes(timeout=WAIT) == b"from the child"
    assert c.wait() == 0


@pytest.mark.parametrize("side", ["get", "put"])
def test_sigint_interrupts_a_blocked_call(make, child, side) -> None:
    ch = make(256)
    if side == "put":
        ch.put_bytes(b"x" * ch.max_message_size)
    call = "ch.get(timeout=60)" if side == "get" else "ch.put_bytes(b'y', timeout=60)"
    c = child(child_code(ch.id, f"""
        print("ready", flush=True)
        try:
            {call}
            print("returned", flush=True)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
    """))
    c.expect("ready")
    flag = "consumers_waiting" if side == "get" else "producers_waiting"
    wait_for(lambda: getattr(ch.stats(), flag), "the child to sleep")
    c.signal(signal.SIGINT)
    c.expect("KeyboardInterrupt")
    assert c.wait() == 0
    s = ch.stats()
    assert (s.producer_lock_pid, s.consumer_lock_pid) == (0, 0)
    assert ch.qsize() == (1 if side == "put" else 0)


def test_a_signal_whose_handler_returns_does_not_end_the_wait(make, child) -> None:
    """PEP 475: the handler runs, then the call goes on waiting."""
    ch = make(256)
    c = child(child_code(ch.id, """
        hits = []
        signal.signal(signal.SIGUSR1, lambda *a: hits.append(1))
        print("ready", flush=True)
        m = ch.get_bytes(timeout=60)
        print(m.decode(), len(hits), flush=True)
    """))
    c.expect("ready")
    wait_for(lambda: ch.stats().consumers_waiting, "the child to sleep")
    c.signal(signal.SIGUSR1)
    time.sleep(0.2)
    assert c.proc.poll() is None  # still waiting
    ch.put_bytes(b"late")
    c.expect("late 1")
    assert c.wait() == 0


def test_remove_while_a_child_waits(make, child, unique_key) -> None:
    """remove() is IPC_RMID: the key is free at once, but attached processes
    keep their mapping.  The waiter keeps waiting on it, and a put through a
    handle still attached (the parent's) reaches it."""
    key = unique_key()
    ch = make(1024, key=key)
    c = child(HELPERS + f"""
from shmsem import Channel
ch = Channel.open({key})
print("ready", flush=True)
m = ch.get_bytes(timeout=30).decode()
ch.put_bytes(b"reply", timeout=30)
ch.close()
print(m, "closed", flush=True)
""")
    c.expect("ready")
    wait_for(lambda: ch.stats().consumers_waiting, "the child to sleep")
    ch.remove()
    with pytest.raises(shmsem.NotFoundError):
        Channel.open(key)
    line = proc_shm_line(ch.id)
    assert line is not None and int(line[0]) == 0  # now private, still there
    assert c.proc.poll() is None
    ch.put_bytes(b"after remove")
    wait_for(lambda: ch.stats().get_count == 1, "the child to take it")
    assert ch.get_bytes(timeout=WAIT) == b"reply"
    c.expect("after remove closed")
    assert c.wait() == 0
    ch.close()
    assert proc_shm_line(ch.id) is None  # gone with its last attach


# ---------------------------------------------------------------------------
# Locks held by dead (or live) processes


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait(WAIT)
    return p.pid


LOCKS = {"producer": CHANNEL_OFFSETS["producer_lock"], "consumer": CHANNEL_OFFSETS["consumer_lock"]}


def _blocked_op(ch: Channel, side: str, timeout: float) -> Any:
    if side == "producer":
        return ch.put_bytes(b"through", timeout=timeout)
    return ch.get_bytes(timeout=timeout)


def _prepare(ch: Channel, side: str) -> None:
    if side == "consumer":
        ch.put_bytes(b"through")


def _lock_pid(ch: Channel, side: str) -> int:
    s = ch.stats()
    return s.producer_lock_pid if side == "producer" else s.consumer_lock_pid


def _set_word(ch: Channel, side: str, word: int) -> None:
    with SharedMemory.from_id(ch.id) as shm:
        shm.write_at(LOCKS[side], struct.pack("<I", word))


@pytest.mark.parametrize("side", LOCKS)
def test_lock_marked_owner_died_is_recovered(make, side) -> None:
    """The word the kernel leaves when a holder dies (FUTEX_OWNER_DIED, id
    cleared; protocol.md section 2): the next locker takes it, and counts it."""
    ch = make(1024)
    _prepare(ch, side)
    _set_word(ch, side, FUTEX_OWNER_DIED | FUTEX_WAITERS)
    assert _blocked_op(ch, side, timeout=5) in (None, b"through")
    assert ch.stats().recoveries == 1
    assert _lock_pid(ch, side) == 0
    # And the lock works normally afterwards.
    ch.put_bytes(b"next")
    assert ch.get_bytes() in (b"next", b"through")


@pytest.mark.parametrize("side", LOCKS)
def test_lock_naming_a_dead_thread_is_never_guessed_free(make, side) -> None:
    """A word naming a thread id that no longer runs, but that the kernel did
    not mark: only the kernel judges whether a holder died (the id may be a
    live thread's in another PID namespace), so nobody takes it."""
    ch = make(1024)
    _prepare(ch, side)
    pid = dead_pid()
    _set_word(ch, side, pid)
    assert _lock_pid(ch, side) == pid
    with pytest.raises(queue.Full if side == "producer" else queue.Empty):
        _blocked_op(ch, side, timeout=0.3)
    assert ch.stats().recoveries == 0
    assert _lock_pid(ch, side) == pid
    _set_word(ch, side, 0)  # release it by hand
    assert _blocked_op(ch, side, timeout=WAIT) in (None, b"through")


@pytest.mark.parametrize("side", LOCKS)
def test_a_zero_timeout_waits_for_a_lock_about_to_be_free(make, side) -> None:
    """timeout=0 means "do not sleep for data or room", not "give up on a
    lock held for a moment": get(timeout=0) on a non-empty channel and
    put(timeout=0) on a non-full one succeed while another holder still has
    the lock when the call starts.  The holder here lets go only once the
    call has gone to sleep on the lock (FUTEX_WAITERS), long after any spin."""
    ch = make(1 << 20)
    _prepare(ch, side)
    _set_word(ch, side, dead_pid())  # held by "someone"

    def holder() -> None:
        wait_for(lambda: _word(ch, side) & FUTEX_WAITERS, "the caller to sleep on the lock")
        with SharedMemory.from_id(ch.id) as shm:
            shm.write_at(LOCKS[side], bytes(4))
            futex_wake(shm, LOCKS[side])

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert _blocked_op(ch, side, timeout=0) in (None, b"through")
    finally:
        t.join(WAIT)
    assert ch.stats().recoveries == 0


def futex_wake(shm: SharedMemory, offset: int, n: int = 1) -> None:
    """FUTEX_WAKE on a word of shm, as an unlock does (docs/protocol.md)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    view = shm.buf
    cell = ctypes.c_char.from_buffer(view, offset)
    try:
        SYS_futex = {"x86_64": 202, "aarch64": 98}[os.uname().machine]
        libc.syscall(SYS_futex, ctypes.byref(cell), 1, n, None, None, 0)  # FUTEX_WAKE
    finally:
        del cell
        view.release()


def _word(ch: Channel, side: str) -> int:
    with SharedMemory.from_id(ch.id) as shm:
        return int(struct.unpack("<I", shm.read_at(LOCKS[side], 4))[0])


def test_threads_of_one_process_never_take_each_others_locks(make) -> None:
    """Threads share the process identity.  A thread that finds our identity
    in a lock word must see that a sibling holds it (or is taking it), and
    never recover it as an exec'd image's: every message arrives once, in
    order per thread, and no recovery is ever counted."""
    ch = make(4096)
    producers, per_thread = 3, 4000
    got: list[bytes] = []
    errors: list[BaseException] = []

    def produce(t: int) -> None:
        try:
            for i in range(per_thread):
                ch.put_bytes(struct.pack("<II", t, i) * 4, timeout=WAIT)
        except BaseException as e:  # reported below
            errors.append(e)

    def consume() -> None:
        try:
            for _ in range(producers * per_thread // 2):
                got.append(ch.get_bytes(timeout=WAIT))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(producers)]
    threads += [threading.Thread(target=consume) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(WAIT * 3)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert not errors, errors
    assert ch.stats().recoveries == 0
    seen = collections.defaultdict(list)
    for m in got:
        assert m[:8] * 4 == m, f"torn message {m!r}"
        t, i = struct.unpack("<II", m[:8])
        seen[t].append(i)
    assert {t: len(v) for t, v in seen.items()} == {t: per_thread for t in range(producers)}
    # Two consumers interleave, so only the set is checked per producer.
    assert all(sorted(v) == list(range(per_thread)) for v in seen.values())


def test_producer_killed_while_holding_the_lock(make, child) -> None:
    """A child puts very large messages in a loop; the parent waits until it
    sees the child holding the producer lock, then SIGKILLs it.  The kernel
    marks the lock FUTEX_OWNER_DIED, the next put takes it over (recoveries
    grows), and what the
    consumer then finds is only whole messages."""
    big = 8 << 20
    ch = make(2 * big + 64)
    held_at_death = 0
    for attempt in range(8):
        c = child(child_code(ch.id, f"""
            data = bytes([{attempt}]) * {big}
            print("ready", flush=True)
            while True:
                try:
                    ch.put_bytes(data, timeout=5)
                except queue.Full:
                    pass
        """))
        c.expect("ready")
        died_holding = kill_in_lock(c.pid, lambda: ch.stats().producer_lock_pid, 10.0)
        c.proc.wait(WAIT)
        if died_holding:
            # The kernel marked the lock at the holder's death.
            assert _word(ch, "producer") & (FUTEX_OWNER_DIED | FUTEX_TID_MASK) == FUTEX_OWNER_DIED
            assert ch.stats().producer_lock_pid == 0
            held_at_death += 1
            before = ch.stats().recoveries
            ch.put_bytes(b"recovered", timeout=5)
            assert ch.stats().recoveries == before + 1
            assert ch.stats().producer_lock_pid == 0
        for m in iter_nowait(ch):
            assert m in (b"recovered", bytes([attempt]) * big), f"torn message of {len(m)} bytes"
        if held_at_death >= 3:
            break
    assert held_at_death >= 1, "never caught the child inside the lock"


def iter_nowait(ch: Channel) -> Iterator[bytes]:
    while True:
        try:
            yield ch.get_bytes_nowait()
        except queue.Empty:
            return


# ---------------------------------------------------------------------------
# A signal that lands while a blocking call spins

SPIN_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sched.h>
#include <signal.h>
static volatile int armed, fired;
void shim_arm(void) { armed = 1; }
void shim_disarm(void) { armed = 0; }
int shim_fired(void) { return fired; }
/* The first sched_yield() after shim_arm() raises SIGALRM in the calling
 * thread: with one CPU allowed, a blocking shmsem call yields from inside its
 * spin, with the GIL released, before it sleeps. */
int sched_yield(void)
{
    static int (*real)(void);
    if (!real)
        real = (int (*)(void))dlsym(RTLD_NEXT, "sched_yield");
    if (armed) {
        armed = 0;
        fired++;
        raise(SIGALRM);
    }
    return real();
}
"""


def compile_shim(tmp_path_factory: pytest.TempPathFactory, name: str, source: str) -> Path:
    """Build an LD_PRELOAD shim from C source; its path."""
    d = tmp_path_factory.mktemp(name)
    src, so = d / f"{name}.c", d / f"{name}.so"
    src.write_text(source)
    proc = subprocess.run(["gcc", "-std=c11", "-shared", "-fPIC", "-O2", "-Wall", "-Werror",
                           "-o", str(so), str(src), "-ldl"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return so


@pytest.fixture(scope="session")
def spin_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_shim(tmp_path_factory, "spin_shim", SPIN_SHIM)


def test_a_signal_that_lands_while_a_call_spins_is_not_lost(make, child, spin_shim) -> None:
    """A blocking get/put/wait first spins with the GIL released, then sleeps.
    A signal delivered during the spin interrupts no system call, so the call
    must itself run the handlers before it sleeps; otherwise the handler
    (KeyboardInterrupt on Ctrl-C) waits for the whole timeout, or forever.
    An LD_PRELOAD shim raises SIGALRM from the spin's first sched_yield()."""
    empty, full = make(64), make(64)
    full.put_bytes(b"x" * 56)
    mb = Mailbox.create(None, 64)
    try:
        c = child(f"""
import ctypes, os, queue, signal, time
from shmsem import Channel, Mailbox
os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})  # one CPU: the spin yields
shim = ctypes.CDLL(None)
class Alarm(Exception):
    pass
def handler(signum, frame):
    raise Alarm
signal.signal(signal.SIGALRM, handler)
empty, full = Channel.from_id({empty.id}), Channel.from_id({full.id})
mb = Mailbox.from_id({mb.id})
def attempt(call):
    t0 = time.monotonic()
    try:
        try:
            shim.shim_arm()
            call()
            return "returned"
        finally:
            shim.shim_disarm()
    except Alarm as e:
        if isinstance(e.__context__, (queue.Empty, queue.Full)):
            return "after-timeout"
        return "interrupted %.3f" % (time.monotonic() - t0)
    except (queue.Empty, queue.Full):
        return "timed-out"
print("get", attempt(lambda: empty.get_bytes(timeout=1)), flush=True)
print("put", attempt(lambda: full.put_bytes(b"y", timeout=1)), flush=True)
print("wait", attempt(lambda: mb.wait(0, timeout=10)), flush=True)
print("fired", shim.shim_fired(), flush=True)
""", env=dict(os.environ, LD_PRELOAD=" ".join(  # keep a sanitizer runtime first
        filter(None, [os.environ.get("LD_PRELOAD", ""), str(spin_shim)]))))
        rc, out, err = c.finish(timeout=60)
        assert rc == 0, err
        lines = dict(line.split(" ", 1) for line in out.splitlines())
        assert lines["fired"] == "3", f"the shim never ran inside the calls: {out}"
        assert lines["get"].startswith("interrupted"), lines["get"]
        assert lines["put"].startswith("interrupted"), lines["put"]
        # wait() returns None on timeout, so only the time tells: 10 s if missed.
        how, elapsed = lines["wait"].split()
        assert how == "interrupted" and float(elapsed) < 5, lines["wait"]
    finally:
        mb.close()


# ---------------------------------------------------------------------------
# Sleepers that leave, and wake-ups that must not be lost (issue 8)

NO_SLICE_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <linux/futex.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <time.h>
/* The wait engine sleeps on its futex in slices of 100 ms and re-checks
 * after each, so that a lost wake-up costs 100 ms instead of a hang.  This
 * shim turns exactly those slices into sleeps without end: a wake-up that
 * is lost then shows as a hang, which a test can see without timing. */
long syscall(long number, ...)
{
    static long (*real)(long, ...);
    if (!real)
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    va_list ap;
    va_start(ap, number);
    long a[6];
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_futex && (a[1] & FUTEX_CMD_MASK) == FUTEX_WAIT && a[3] != 0) {
        const struct timespec *ts = (const struct timespec *)a[3];
        if (ts->tv_sec == 0 && ts->tv_nsec == 100000000L)
            a[3] = 0;
    }
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
"""


@pytest.fixture(scope="session")
def no_slice_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_shim(tmp_path_factory, "no_slice_shim", NO_SLICE_SHIM)


def shim_env(shim: Path) -> dict[str, str]:
    return dict(os.environ, LD_PRELOAD=" ".join(  # keep a sanitizer runtime first
        filter(None, [os.environ.get("LD_PRELOAD", ""), str(shim)])))


def asleep_in_futex(pid: int) -> bool:
    """Whether pid's main thread sleeps in the kernel on a futex."""
    return _thread_asleep_in_futex(pid, pid)


def test_the_no_slice_shim_really_removes_the_safety_net(make, child, no_slice_shim) -> None:
    """Control for the tests below: under the shim, a sleeper that is never
    woken stays asleep past its 100 ms slices, even though the data it waits
    for is there (written behind the protocol's back, with no wake)."""
    ch = make(256)
    raw = SharedMemory.from_id(ch.id)
    try:
        c = child(child_code(ch.id, """
            print("ready", flush=True)
            print("got", ch.get_bytes().decode(), flush=True)
        """), env=shim_env(no_slice_shim))
        c.expect("ready")
        wait_for(lambda: ch.stats().consumers_waiting and asleep_in_futex(c.pid),
                 "the child to sleep")
        # A record {len 2, kind BYTES} "hi" at ring offset 0, then tail, and no wake.
        raw.write_at(256, struct.pack("<II", 2, 1) + b"hi")
        raw.write_at(CHANNEL_OFFSETS["tail"], struct.pack("<Q", 16))
        time.sleep(0.5)  # five slices: without the shim the child finds it
        assert c.proc.poll() is None and asleep_in_futex(c.pid)
        ch.put_bytes(b"wake")  # a real put wakes it
        c.expect("got hi")
        assert c.wait() == 0
    finally:
        raw.close()


@pytest.mark.parametrize("kind", ["get", "put", "mailbox"])
def test_a_sleeper_leaving_never_strands_the_others(make, child, no_slice_shim, kind) -> None:
    """Issue 8, finding 10: a sleeper that leaves unwoken (here it times out)
    clears its registration, but never that of others still asleep: every
    sleeper must still be woken by the next put (get, publish).  The
    sleepers run under the no-slice shim, so a lost wake-up is a hang; every
    wait here is bounded."""
    n = 3
    mb: Mailbox | None = None
    if kind == "mailbox":
        mb = Mailbox.create(None, 64)
        code = f"""
            from shmsem import Mailbox
            mb = Mailbox.from_id({mb.id})
            print("ready", flush=True)
            print("got", mb.wait(0)[0], flush=True)
            mb.close()
        """
        shmid = mb.id
    else:
        ch = make(256)
        shmid = ch.id
        if kind == "get":
            code = """
                print("ready", flush=True)
                print("got", ch.get_bytes().decode(), flush=True)
            """
        else:
            ch.put_bytes(b"x" * ch.max_message_size)
            code = """
                print("ready", flush=True)
                ch.put_bytes(b"from %d" % os.getpid())
                print("got put", flush=True)
            """
    try:
        source = HELPERS + textwrap.dedent(code) if mb is not None else child_code(shmid, code)
        kids = [child(source, env=shim_env(no_slice_shim)) for _ in range(n)]
        for c in kids:
            c.expect("ready")

        def flag() -> bool:
            if mb is not None:
                return mb.stats().readers_waiting
            s = ch.stats()
            return s.consumers_waiting if kind == "get" else s.producers_waiting

        wait_for(lambda: flag() and all(asleep_in_futex(c.pid) for c in kids),
                 "every child to sleep")
        # The leaver: registers too, times out, and leaves unwoken.
        if kind == "get":
            with pytest.raises(queue.Empty):
                ch.get_bytes(timeout=0.2)
        elif kind == "put":
            with pytest.raises(queue.Full):
                ch.put_bytes(b"leaver", timeout=0.2)
        else:
            assert mb is not None and mb.wait(0, timeout=0.2) is None
        assert all(c.proc.poll() is None for c in kids)
        # One event for all of them; each must see it.
        if kind == "get":
            for i in range(n):
                ch.put_bytes(b"m%d" % i)
            got = sorted(c.readline(timeout=WAIT) for c in kids)
            assert got == [f"got m{i}" for i in range(n)]
        elif kind == "put":
            assert ch.get_bytes(timeout=WAIT) == b"x" * ch.max_message_size
            for c in kids:
                c.expect("got put", timeout=WAIT)
            assert sorted(ch.get_bytes(timeout=WAIT) for _ in kids) == sorted(
                b"from %d" % c.pid for c in kids)
        else:
            assert mb is not None
            mb.publish(b"news")
            for c in kids:
                c.expect("got 1", timeout=WAIT)
        for c in kids:
            assert c.wait() == 0
        assert not flag()  # the last one out left nothing registered
    finally:
        if mb is not None:
            mb.close()


@pytest.mark.parametrize("what", ["get", "put", "recv_into", "wait_readable", "mailbox"])
def test_close_wakes_a_thread_blocked_forever(make, child, no_slice_shim, what) -> None:
    """Issue 8, finding 7: a thread blocked with timeout=None in a Channel
    get/put (or Mailbox.wait) gets ClosedError when another thread closes the
    handle.  Under the no-slice shim a wake that close() misses is a hang
    rather than a 100 ms delay, so "at once" is checked without timing."""
    ch = make(64)
    mb = Mailbox.create(None, 64)
    if what == "put":
        ch.put_bytes(b"x" * ch.max_message_size)
    call = {
        "get": "ch.get_bytes()",
        "put": "ch.put_bytes(b'y')",
        "recv_into": "ch.recv_into(bytearray(64))",
        "wait_readable": "ch._wait_readable(None)",
        "mailbox": "mb.wait(0)",
    }[what]
    obj = "mb" if what == "mailbox" else "ch"
    try:
        c = child(child_code(ch.id, f"""
            import threading
            from pathlib import Path
            from shmsem import ClosedError, Mailbox
            mb = Mailbox.from_id({mb.id})
            box, tid = [], []
            def run():
                tid.append(threading.get_native_id())
                try:
                    box.append({call})
                except BaseException as e:
                    box.append(e)
            t = threading.Thread(target=run, daemon=True)
            t.start()
            deadline = time.monotonic() + 20
            while not tid or "futex" not in Path(f"/proc/self/task/{{tid[0]}}/wchan").read_text():
                assert time.monotonic() < deadline, "the thread never slept"
                time.sleep(0.005)
            time.sleep(0.05)  # past its spin, asleep on the wait engine's futex
            {obj}.close()
            t.join(20)
            print("alive" if t.is_alive() else type(box[0]).__name__, flush=True)
        """), env=shim_env(no_slice_shim))
        c.expect("ClosedError", timeout=WAIT)
        assert c.wait() == 0
    finally:
        mb.close()


def _thread_asleep_in_futex(pid: int, tid: int) -> bool:
    """Whether thread tid of pid sleeps in the kernel on a futex."""
    try:
        wchan = Path(f"/proc/{pid}/task/{tid}/wchan").read_text()
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] == "S" and "futex" in wchan


def _signal_pending(pid: int, signum: int) -> bool:
    """Whether signum waits, undelivered, in pid's shared pending set."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_a_woken_lock_waiter_that_gives_up_passes_the_wake_up_on(make, child, no_slice_shim) -> None:
    """Issue 8, finding 6.  Two threads of a child wait for the producer lock
    with no timeout: the main thread first, then thread B.  The unlock wakes
    one sleeper, the main thread, which then gives up (a signal handler
    raises).  It must pass the wake-up on, and B takes the lock.  Under the
    no-slice shim a lost wake-up is a hang, so nothing here depends on time.

    The main thread blocks the signal, so the kernel delivers it to B, which
    goes back to sleep (only the main thread runs Python handlers); the main
    thread runs the handler only once the unlock has woken it."""
    ch = make(1 << 16)
    lock = LOCKS["producer"]
    _set_word(ch, "producer", dead_pid())  # held by "someone"
    c = child(child_code(ch.id, """
        import threading
        class GaveUp(Exception):
            pass
        def handler(signum, frame):
            raise GaveUp
        signal.signal(signal.SIGUSR1, handler)
        said = threading.Lock()
        def say(line):  # the two threads print at the same moment
            with said:
                sys.stdout.write(line + "\\n")
                sys.stdout.flush()
        def b():
            sys.stdin.readline()  # the parent says when: after the main thread sleeps
            ch.put_bytes(b"from B")
            say("B put")
        t = threading.Thread(target=b)
        t.start()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        print("tids", os.getpid(), t.native_id, flush=True)
        try:
            ch.put_bytes(b"from main")
            say("main put")
        except GaveUp:
            say("main gave up")
        t.join()
    """), env=shim_env(no_slice_shim))
    _, main_tid, b_tid = c.readline().split()
    main_tid, b_tid = int(main_tid), int(b_tid)
    wait_for(lambda: _thread_asleep_in_futex(c.pid, main_tid) and _word(ch, "producer") & FUTEX_WAITERS,
             "the main thread to sleep on the lock")
    c.send("go")
    wait_for(lambda: _thread_asleep_in_futex(c.pid, b_tid), "B to sleep on the lock")
    os.kill(c.pid, signal.SIGUSR1)  # only B can take it
    wait_for(lambda: not _signal_pending(c.pid, signal.SIGUSR1), "B to take the signal")
    wait_for(lambda: _thread_asleep_in_futex(c.pid, b_tid), "B to sleep again")
    assert _thread_asleep_in_futex(c.pid, main_tid)
    with SharedMemory.from_id(ch.id) as shm:  # unlock as a holder does: free, wake one
        shm.write_at(lock, bytes(4))
        futex_wake(shm, lock, 1)
    lines = {c.readline(timeout=WAIT), c.readline(timeout=WAIT)}
    assert lines == {"main gave up", "B put"}, lines
    assert c.wait() == 0
    assert ch.get_bytes_nowait() == b"from B"
