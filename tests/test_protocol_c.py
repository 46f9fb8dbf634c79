"""docs/protocol.md against a C peer written from that document alone.

tests/protocol/channel_reader.c attaches a Channel or a Mailbox by shmid,
validates the header (section 1), takes the locks as robust futexes on the
thread's robust list (section 2) and reads and writes records and values
(sections 3 and 4) with the orderings the document names.  It is compiled
once per session with -Wall -Wextra -Werror -std=c11 (and
-fsanitize=address,undefined with SHMSEM_SANITIZE=1).  If shmsem and the
document disagree, these tests fail; they never read shmsem's C sources, and
the offsets below are the document's.

Every C process runs with a timeout (its own deadline, and the subprocess
timeout); every C process started in the background is killed at teardown.
No elapsed time is ever asserted.
"""

from __future__ import annotations

import os
import pickle
import queue
import random
import select
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from proc_helpers import FUTEX_OWNER_DIED, FUTEX_WAITERS, kill_in_lock

import shmsem
from shmsem import Channel, Mailbox, SharedMemory

SOURCE = Path(__file__).parent / "protocol" / "channel_reader.c"
WAIT = 20.0

EXIT_USAGE, EXIT_REFUSED, EXIT_CORRUPT, EXIT_TIMEOUT = 2, 3, 4, 5

# docs/protocol.md, sections 2, 3.1 and 4.1
LOCK = {"word": 0, "recoveries": 8, "links": 24, "size": 48}
CH = {"producer_lock": 64, "tail": 112, "put_count": 120, "consumer_lock": 128, "head": 176,
      "get_count": 184, "data_event": 192, "space_event": 196, "consumers_waiting": 200,
      "producers_waiting": 204}
MB = {"writer_lock": 64, "state": 112, "event": 120, "waiting": 124}
LOCK_AT = {"producer": CH["producer_lock"], "consumer": CH["consumer_lock"],
           "writer": MB["writer_lock"]}


@pytest.fixture(scope="session")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        pytest.fail("no C compiler: building shmsem needs one too; set CC or install gcc")
    exe = tmp_path_factory.mktemp("protocol") / "channel_reader"
    sanitize = ["-fsanitize=address,undefined"] if os.environ.get("SHMSEM_SANITIZE") == "1" else []
    proc = subprocess.run(
        [cc, "-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-Werror", *sanitize,
         "-o", str(exe), str(SOURCE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, f"compiling {SOURCE.name} failed:\n{proc.stderr}"
    return exe


@pytest.fixture
def run(peer: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: object, input: str | None = None, expect: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(peer), *map(str, args)], input=input, capture_output=True,
                              text=True, timeout=WAIT + 10, check=False)
        assert proc.returncode == expect, (
            f"channel_reader {args}: exit {proc.returncode}, expected {expect}; "
            f"stderr: {proc.stderr[-2000:]}"
        )
        return proc

    return run


class Peer:
    """A C peer running in the background."""

    def __init__(self, argv: list[str], stdin: int | None) -> None:
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self._pending = b""

    def expect(self, expected: str) -> None:
        """The next line of its stdout is ``expected`` (read unbuffered, so
        that two lines printed together are both seen)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + WAIT
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                pytest.fail(f"the C peer did not say {expected!r} within {WAIT}s")
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait(WAIT)
                err = self.proc.stderr.read() if self.proc.stderr else ""
                pytest.fail(f"the C peer exited ({self.proc.returncode}) before saying "
                            f"{expected!r}: {err}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        assert line.decode() == expected

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)

    def finish(self) -> tuple[int, str]:
        """Wait for it to exit: (exit code, stderr).  For peers that print
        little: their pipes are not drained meanwhile."""
        rc = self.proc.wait(WAIT + 10)
        assert self.proc.stderr is not None
        return rc, self.proc.stderr.read()


@pytest.fixture
def background(peer: Path) -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(*args: object, stdin: int | None = subprocess.DEVNULL) -> Peer:
        p = Peer([str(peer), *map(str, args)], stdin)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
        p.proc.wait(WAIT)
        for stream in (p.proc.stdin, p.proc.stdout, p.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def make() -> Iterator[Callable[[int], Channel]]:
    made: list[Channel] = []

    def factory(capacity: int) -> Channel:
        ch = Channel.create(None, capacity)
        made.append(ch)
        return ch

    yield factory
    for ch in made:
        if not ch.closed:
            ch.owner = True
            ch.close()


def record_size(n: int) -> int:
    return 8 + (n + 7) // 8 * 8


def parse(out: str) -> list[tuple[int, bytes]]:
    """channel_reader's "<kind> <len> <hex>" lines."""
    result = []
    for line in out.splitlines():
        kind, n, *hx = line.split(" ")
        data = bytes.fromhex(hx[0] if hx else "")
        assert len(data) == int(n)
        result.append((int(kind), data))
    return result


def payload(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


# ---------------------------------------------------------------------------
# Python puts, C gets


def test_c_reads_what_python_put_across_the_ring_end(make, run) -> None:
    ch = make(256)
    rng = random.Random(5)
    pos, wrapped = 0, 0
    sizes = [0, 1, 7, 8, 9, 15, 16, 17, 31, 100, 200, 248]
    for _round in range(30):
        group: list[bytes] = []
        free = 256
        while True:
            n = rng.choice(sizes)
            if record_size(n) > free:
                break
            group.append(payload(rng, n))
            free -= record_size(n)
        for m in group:
            ch.put_bytes_nowait(m)
            wrapped += pos % 256 + record_size(len(m)) > 256
            pos += record_size(len(m))
        out = run("read", ch.id, len(group), 5).stdout
        assert parse(out) == [(1, m) for m in group]
        assert ch.empty() and ch.qsize() == 0
    assert wrapped >= 5  # records really were split across the end
    s = ch.stats()
    assert s.put_count == s.get_count and s.consumer_lock_pid == 0


def test_c_streams_from_python(make, background) -> None:
    """C takes 400 messages while Python puts them into a small ring: each
    side waits for the other (3.5) and must be woken by it."""
    ch = make(256)
    rng = random.Random(6)
    msgs = [payload(rng, rng.randint(0, 248)) for _ in range(400)]
    c = background("read", ch.id, len(msgs), WAIT).proc
    outputs: list[tuple[str, str]] = []
    reader = threading.Thread(target=lambda: outputs.append(c.communicate()), daemon=True)
    reader.start()  # drain C's stdout as it goes, or C would block on a full pipe
    for m in msgs:
        ch.put_bytes(m, timeout=WAIT)
    reader.join(WAIT + 10)
    assert outputs, "the C reader did not finish"
    out, err = outputs[0]
    assert c.returncode == 0, err
    assert parse(out) == [(1, m) for m in msgs]
    assert ch.empty()


def test_c_sees_the_kinds_python_writes(make, run) -> None:
    ch = make(4096)
    obj = {"a": [1, 2, 3], "b": "text"}
    arr = np.arange(10, dtype=np.int32)
    ch.put_bytes(b"raw")
    ch.put(obj)
    ch.put(arr)
    got = parse(run("read", ch.id, 3, 5).stdout)
    assert got[0] == (1, b"raw")
    assert got[1] == (2, pickle.dumps(obj, protocol=5))
    kind, body = got[2]
    assert kind == 3
    nbufs, plen = struct.unpack_from("<II", body)
    assert nbufs == 1 and struct.unpack_from("<Q", body, 8)[0] == arr.nbytes
    start = (8 + 8 + plen + 15) // 16 * 16
    assert body[start:] == arr.tobytes()


def test_c_waits_then_times_out_on_an_empty_channel(make, run) -> None:
    ch = make(256)
    r = run("read", ch.id, 1, 0.2, expect=EXIT_TIMEOUT)
    assert "timed out" in r.stderr
    s = ch.stats()
    assert s.consumer_lock_pid == 0  # C let go of the lock before waiting


# ---------------------------------------------------------------------------
# C puts, Python gets


def hexlines(msgs: list[bytes]) -> str:
    return "".join(m.hex() + "\n" for m in msgs)


def test_python_reads_what_c_put_across_the_ring_end(make, run) -> None:
    ch = make(256)
    rng = random.Random(7)
    sizes = [0, 1, 7, 8, 9, 23, 64, 111, 248]
    for _round in range(25):
        group, free = [], 256
        while True:
            n = rng.choice(sizes)
            if record_size(n) > free:
                break
            group.append(payload(rng, n))
            free -= record_size(n)
        run("write", ch.id, 5, input=hexlines(group))
        assert ch.qsize() == len(group)
        assert [ch.get_bytes_nowait() for _ in group] == group
        assert ch.empty()
    ch.put_bytes(b"py")  # and Python can still put after C
    run("write", ch.id, input=hexlines([b"c"]))
    assert ch.get() == b"py" and ch.get() == b"c"  # kind 1 comes back as bytes


def test_c_streams_to_python(make, background) -> None:
    ch = make(256)
    rng = random.Random(8)
    msgs = [payload(rng, rng.randint(0, 248)) for _ in range(400)]
    c = background("write", ch.id, WAIT, stdin=subprocess.PIPE).proc
    assert c.stdin is not None

    def feed() -> None:
        try:
            c.stdin.write(hexlines(msgs))
            c.stdin.close()
        except OSError:  # the peer died: the checks below say why
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    got = [ch.get_bytes(timeout=WAIT) for _ in msgs]
    feeder.join(WAIT)
    assert c.wait(WAIT) == 0, c.stderr.read() if c.stderr else ""
    assert got == msgs
    assert ch.stats().producer_lock_pid == 0


def test_c_batch_is_committed_at_once(make, run) -> None:
    ch = make(1024)
    msgs = [b"one", b"", b"three" * 10, b"4"]
    run("write-batch", ch.id, input=hexlines(msgs))
    s = ch.stats()
    assert s.put_count == 4 and s.used == sum(record_size(len(m)) for m in msgs)
    got: list[bytes] = []
    while len(got) < 4:
        got += ch.get_many_bytes(block=False)
    assert got == msgs


def test_c_refuses_a_message_that_can_never_fit(make, run) -> None:
    ch = make(64)
    run("write", ch.id, input=hexlines([b"x" * 57]), expect=2)
    assert ch.empty()


# ---------------------------------------------------------------------------
# Section 1: creating and validating


@pytest.mark.parametrize("capacity", [16, 1000])
def test_channel_created_by_c_opens_in_python(run, capacity) -> None:
    """Section 1 allows any capacity from 16 up (a multiple of 8), even though
    shmsem itself creates rings of at least 64 bytes."""
    shmid = int(run("create", capacity).stdout)
    try:
        ch = Channel.from_id(shmid)
    except BaseException:
        shmsem._core.shm_rmid(shmid)
        raise
    try:
        ch.owner = True  # so that close() removes what C created
        assert ch.capacity == capacity and ch.max_message_size == capacity - 8
        for _ in range(5):  # round the ring a few times
            ch.put_bytes(b"hello C!"[: capacity - 8])
            assert parse(run("read", shmid, 1, 5).stdout) == [(1, b"hello C!"[: capacity - 8])]
            run("write", shmid, input=hexlines([b"hello Py"]))
            assert ch.get_bytes() == b"hello Py"
        assert ch.stats().put_count == ch.stats().get_count == 10
    finally:
        ch.close()


@pytest.mark.parametrize(
    "offset, value",
    [
        (0, b"SHMSEMCX"),
        (8, struct.pack("<I", 1)),
        (8, struct.pack("<I", 3)),
        (12, struct.pack("<I", 128)),
        (16, struct.pack("<Q", 1024 + 8)),
        (16, struct.pack("<Q", 1020)),
        (16, struct.pack("<Q", 8)),
    ],
    ids=["magic", "version-1", "version-3", "header-size", "cap-too-big", "cap-unaligned",
         "cap-small"],
)
def test_c_and_python_refuse_the_same_headers(make, run, offset, value) -> None:
    ch = make(1024)
    run("check", ch.id)
    with SharedMemory.from_id(ch.id) as shm:
        shm.write_at(offset, value)
    run("check", ch.id, expect=EXIT_REFUSED)
    with pytest.raises(shmsem.FormatError):
        Channel.from_id(ch.id)


def test_c_refuses_a_plain_segment_and_a_mailbox(run) -> None:
    with SharedMemory.create(None, 4096) as shm:
        run("check", shm.id, expect=EXIT_REFUSED)  # magic stays 0
    with Mailbox.create(None, 1024) as mb:
        run("check", mb.id, expect=EXIT_REFUSED)


def test_c_reports_corrupt_records_and_positions(make, run) -> None:
    ch = make(256)
    ch.put_bytes(b"0123456789")
    with SharedMemory.from_id(ch.id) as shm:
        shm.write_at(256, struct.pack("<I", 0xFFFFFFF0))  # record length
        run("read", ch.id, 1, 1, expect=EXIT_CORRUPT)
        with pytest.raises(shmsem.FormatError):
            ch.get_bytes_nowait()
        shm.write_at(256, struct.pack("<I", 10))
        shm.write_at(CH["head"], struct.pack("<Q", 64))  # head past tail
        run("read", ch.id, 1, 1, expect=EXIT_CORRUPT)
        run("write", ch.id, input=hexlines([b"x"]), expect=EXIT_CORRUPT)
        shm.write_at(CH["head"], struct.pack("<Q", 0))
    assert ch.stats().consumer_lock_pid == 0 and ch.stats().producer_lock_pid == 0
    assert parse(run("read", ch.id, 1, 1).stdout) == [(1, b"0123456789")]


def test_the_documents_offsets_are_the_librarys() -> None:
    """The offsets these tests (and the C peer) take from docs/protocol.md are
    the ones shmsem exports."""
    from shmsem._core import CHANNEL_OFFSETS, LOCK_OFFSETS, MAILBOX_OFFSETS

    assert CHANNEL_OFFSETS == CH and MAILBOX_OFFSETS == MB and LOCK_OFFSETS == LOCK


# ---------------------------------------------------------------------------
# Section 2: the lock, across implementations


def word(shmid: int, lock: str) -> int:
    """The raw lock word."""
    with SharedMemory.from_id(shmid) as shm:
        return int(struct.unpack("<I", shm.read_at(LOCK_AT[lock] + LOCK["word"], 4))[0])


def set_word(shmid: int, lock: str, value: int) -> None:
    with SharedMemory.from_id(shmid) as shm:
        shm.write_at(LOCK_AT[lock] + LOCK["word"], struct.pack("<I", value))


def wait_until(pred: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)


def blocked_op(ch: Channel, side: str, timeout: float) -> object:
    """The operation that needs `side`'s lock: a put, or a get of the message
    queued beforehand."""
    if side == "producer":
        return ch.put_bytes(b"through", timeout=timeout)
    return ch.get_bytes(timeout=timeout)


def lock_pid(ch: Channel, side: str) -> int:
    s = ch.stats()
    return s.producer_lock_pid if side == "producer" else s.consumer_lock_pid


@pytest.mark.parametrize("side", ["consumer", "producer"])
def test_a_live_c_holder_is_respected_and_a_killed_one_taken_over(make, background, side) -> None:
    """The C peer holds a lock (paused, printing "held"): its word is its
    tid, and shmsem waits for it (FUTEX_WAITERS) and gives up without taking
    it over.  SIGKILL: the kernel marks the word FUTEX_OWNER_DIED (the C
    peer's node was on its robust list), and the next operation takes it
    over, counting one recovery."""
    ch = make(1024)
    ch.put_bytes(b"queued")
    c = background("hold", ch.id, side)
    c.expect("held")
    assert word(ch.id, side) == c.pid  # single-threaded: the tid is the pid
    assert lock_pid(ch, side) == c.pid
    with pytest.raises(queue.Full if side == "producer" else queue.Empty):
        blocked_op(ch, side, timeout=0.3)
    assert ch.stats().recoveries == 0, "shmsem took the lock of a live C holder"
    assert word(ch.id, side) == c.pid | FUTEX_WAITERS  # shmsem slept on it
    c.kill()
    assert word(ch.id, side) == FUTEX_OWNER_DIED | FUTEX_WAITERS
    assert lock_pid(ch, side) == 0
    assert blocked_op(ch, side, timeout=5) in (None, b"queued")
    s = ch.stats()
    assert s.recoveries == 1
    assert (s.producer_lock_pid, s.consumer_lock_pid) == (0, 0)
    assert word(ch.id, side) == 0


@pytest.mark.parametrize("how", ["exit", "exec"])
def test_a_c_holder_that_exits_or_execs_leaves_the_lock_marked(make, background, how) -> None:
    """The kernel walks the robust list at exit and at exec.  After an exec
    the pid lives on, but the holder (the old image) is gone: the lock is
    marked all the same."""
    ch = make(1024)
    c = background("hold", ch.id, "producer", how)
    c.expect("held")
    if how == "exit":
        assert c.finish()[0] == 0
    else:
        c.expect("paused")  # the new image runs, under the same pid
        assert c.proc.poll() is None
    assert word(ch.id, "producer") == FUTEX_OWNER_DIED
    ch.put_bytes(b"after", timeout=5)
    assert ch.stats().recoveries == 1 and ch.get_bytes_nowait() == b"after"


@pytest.mark.parametrize("holder_list", ["libc", "own"])
def test_a_sleeper_is_woken_when_the_c_holder_dies(make, background, holder_list) -> None:
    """A C holder (on the C library's robust list, or on a head it registered
    itself); a C writer and a Python putter sleep on the lock (FUTEX_WAITERS).
    When the holder is killed, the kernel wakes a sleeper and each sleeper's
    unlock wakes the next: both puts complete, and exactly one of them counts
    the recovery."""
    ch = make(1024)
    flag = ["--no-libc-list"] if holder_list == "own" else []
    holder = background(*flag, "hold", ch.id, "producer")
    holder.expect("held")
    writer = background("write", ch.id, WAIT, stdin=subprocess.PIPE)
    assert writer.proc.stdin is not None
    writer.proc.stdin.write(b"from C".hex() + "\n")
    writer.proc.stdin.close()
    wait_until(lambda: word(ch.id, "producer") & FUTEX_WAITERS, "the C writer to sleep on the lock")
    errors: list[BaseException] = []

    def put() -> None:
        try:
            ch.put_bytes(b"from Python", timeout=WAIT)
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=put)
    t.start()
    try:
        holder.kill()
        rc, err = writer.finish()
    finally:
        t.join(WAIT + 10)
    assert rc == 0, err
    assert not t.is_alive() and not errors, errors
    assert ch.stats().recoveries == 1
    assert sorted([ch.get_bytes_nowait(), ch.get_bytes_nowait()]) == [b"from C", b"from Python"]
    assert word(ch.id, "producer") == 0


def test_c_takes_over_the_lock_of_a_killed_python_producer(make, child, run) -> None:
    """A Python producer is SIGKILLed while it holds the producer lock: the
    C peer finds the word FUTEX_OWNER_DIED, takes it over and counts it."""
    big = 8 << 20
    ch = make(2 * big + 64)
    for _attempt in range(8):
        c = child(f"""
            import queue
            from shmsem import Channel
            ch = Channel.from_id({ch.id})
            data = bytes({big})
            print("ready", flush=True)
            while True:
                try:
                    ch.put_bytes(data, timeout=5)
                except queue.Full:
                    pass
        """)
        c.expect("ready")
        died_holding = kill_in_lock(c.pid, lambda: ch.stats().producer_lock_pid, 10.0)
        c.proc.wait(WAIT)
        for _ in range(2):  # make room for C's message
            try:
                assert ch.get_bytes_nowait() == bytes(big)
            except queue.Empty:
                break
        if not died_holding:
            continue
        assert word(ch.id, "producer") & ~FUTEX_WAITERS == FUTEX_OWNER_DIED
        before = ch.stats().recoveries
        r = run("write", ch.id, 5, input=hexlines([b"from C"]))
        assert "recovered producer lock" in r.stderr
        assert ch.stats().recoveries == before + 1
        assert ch.get_bytes(timeout=WAIT) == b"from C"
        assert ch.stats().producer_lock_pid == 0
        return
    pytest.fail("never caught the Python producer inside the lock")


@pytest.mark.parametrize("side", ["consumer", "producer"])
def test_c_never_guesses_a_holder_dead(make, run, side) -> None:
    """A word naming a thread that does not exist, but not marked by the
    kernel: the C peer waits (FUTEX_WAITERS) and times out without taking it.
    Marked FUTEX_OWNER_DIED, the C peer takes it over and counts it."""
    ch = make(1024)
    ch.put_bytes(b"queued")
    dead = subprocess.Popen(["true"])
    dead.wait(WAIT)
    set_word(ch.id, side, dead.pid)
    if side == "consumer":
        r = run("read", ch.id, 1, 0.3, expect=EXIT_TIMEOUT)
    else:
        r = run("write", ch.id, 0.3, input=hexlines([b"x"]), expect=EXIT_TIMEOUT)
    assert "recovered" not in r.stderr
    assert word(ch.id, side) == dead.pid | FUTEX_WAITERS
    assert ch.stats().recoveries == 0
    set_word(ch.id, side, FUTEX_OWNER_DIED | FUTEX_WAITERS)
    if side == "consumer":
        r = run("read", ch.id, 1, 5)
        assert parse(r.stdout) == [(1, b"queued")]
    else:
        r = run("write", ch.id, 5, input=hexlines([b"x"]))
    assert f"recovered {side} lock (word 0x{FUTEX_OWNER_DIED | FUTEX_WAITERS:08x})" in r.stderr
    assert ch.stats().recoveries == 1
    assert word(ch.id, side) == 0


def test_c_peer_with_a_robust_list_of_its_own(make, run) -> None:
    """Section 2: a peer whose C library registered no robust list registers
    a head of its own (futex_offset -32) and works the same."""
    ch = make(256)
    ch.put_bytes(b"to C")
    assert parse(run("--no-libc-list", "read", ch.id, 1, 5).stdout) == [(1, b"to C")]
    run("--no-libc-list", "write", ch.id, 5, input=hexlines([b"from C"]))
    assert ch.get_bytes_nowait() == b"from C"
    assert ch.stats().recoveries == 0 and word(ch.id, "producer") == word(ch.id, "consumer") == 0


# ---------------------------------------------------------------------------
# Section 4: Mailbox


@pytest.fixture
def mailbox() -> Iterator[Callable[[int], Mailbox]]:
    made: list[Mailbox] = []

    def factory(capacity: int) -> Mailbox:
        mb = Mailbox.create(None, capacity)
        made.append(mb)
        return mb

    yield factory
    for mb in made:
        if not mb.closed:
            mb.close()


def c_mailbox_read(run, mb: Mailbox) -> tuple[int, bytes]:
    seq, _, hx = run("mb-read", mb.id).stdout.strip().partition(" ")
    return int(seq), bytes.fromhex(hx)


def test_mailbox_values_cross_both_ways(mailbox, run) -> None:
    mb = mailbox(100)
    assert c_mailbox_read(run, mb) == (0, b"")
    rng = random.Random(9)
    for i in range(1, 9):  # both cells, several times
        value = payload(rng, rng.choice([0, 1, 63, 64, 100]))
        if i % 2:
            assert mb.publish(value) == i
        else:
            assert int(run("mb-publish", mb.id, value.hex()).stdout) == i
        assert c_mailbox_read(run, mb) == (i, value)
        assert mb.read() == (i, value)
    run("mb-publish", mb.id, (b"x" * 101).hex(), expect=EXIT_USAGE)
    assert mb.read()[0] == 8 and mb.stats().recoveries == 0


def test_a_live_c_mailbox_writer_is_waited_for_until_killed(mailbox, background, child) -> None:
    """The C peer holds the writer lock; a Python publish (in a child: it has
    no timeout) sleeps on it and publishes once the C holder is killed,
    taking the lock over."""
    mb = mailbox(100)
    c = background("hold", mb.id, "writer")
    c.expect("held")
    assert word(mb.id, "writer") == c.pid and mb.stats().writer_lock_pid == c.pid
    py = child(f"""
        from shmsem import Mailbox
        mb = Mailbox.from_id({mb.id})
        print(mb.publish(b"from Python"), flush=True)
    """)
    wait_until(lambda: word(mb.id, "writer") & FUTEX_WAITERS, "the Python writer to sleep on the lock")
    assert py.proc.poll() is None and mb.read() == (0, b"")
    assert mb.stats().recoveries == 0
    c.kill()
    py.expect("1", timeout=WAIT)
    assert py.wait(WAIT) == 0
    assert mb.read() == (1, b"from Python")
    s = mb.stats()
    assert s.recoveries == 1 and s.writer_lock_pid == 0


def test_c_takes_over_the_mailbox_lock_of_a_killed_python_writer(mailbox, child, run) -> None:
    big = 8 << 20
    mb = mailbox(big)
    for _attempt in range(8):
        c = child(f"""
            from shmsem import Mailbox
            mb = Mailbox.from_id({mb.id})
            data = bytes({big})
            print("ready", flush=True)
            while True:
                mb.publish(data)
        """)
        c.expect("ready")
        died_holding = kill_in_lock(c.pid, lambda: mb.stats().writer_lock_pid, 10.0)
        c.proc.wait(WAIT)
        if not died_holding:
            continue
        assert word(mb.id, "writer") & ~FUTEX_WAITERS == FUTEX_OWNER_DIED
        seq, value = mb.read()
        assert value == (bytes(big) if seq else b"")  # never a torn value
        before = mb.stats().recoveries
        r = run("mb-publish", mb.id, "c0ffee")
        assert "recovered writer lock" in r.stderr
        assert int(r.stdout) == seq + 1
        assert mb.read() == (seq + 1, b"\xc0\xff\xee")
        assert mb.stats().recoveries == before + 1
        assert mb.stats().writer_lock_pid == 0
        return
    pytest.fail("never caught the Python writer inside the lock")
