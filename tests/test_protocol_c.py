"""docs/protocol.md against a C peer written from that document alone.

tests/protocol/channel_reader.c attaches a Channel by shmid, validates the
header (section 1), takes the locks (section 2) and reads and writes records
(section 3) with the orderings the document names.  It is compiled once per
session with -Wall -Wextra -Werror -std=c11.  If shmsem and the document
disagree, these tests fail; they never read shmsem's C sources.

Every C process runs with a timeout (its own deadline, and the subprocess
timeout); every C process started in the background is killed at teardown.
"""

from __future__ import annotations

import os
import pickle
import queue
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import shmsem
from shmsem import Channel, Mailbox, SharedMemory

SOURCE = Path(__file__).parent / "protocol" / "channel_reader.c"
WAIT = 20.0

EXIT_REFUSED, EXIT_CORRUPT, EXIT_TIMEOUT = 3, 4, 5


@pytest.fixture(scope="session")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        pytest.fail("no C compiler: building shmsem needs one too; set CC or install gcc")
    exe = tmp_path_factory.mktemp("protocol") / "channel_reader"
    proc = subprocess.run(
        [cc, "-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-Werror",
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


@pytest.fixture
def background(peer: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: object, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
        p = subprocess.Popen([str(peer), *map(str, args)], stdin=stdin, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(WAIT)
        for stream in (p.stdin, p.stdout, p.stderr):
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


def kill_in_lock(pid: int, holder: Callable[[], int], budget: float = 10.0) -> None:
    """SIGKILL pid at a moment it holds a lock (holder() is the lock's pid):
    stop it when seen holding, and kill it if it still holds once stopped."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if holder() != pid:
            continue
        os.kill(pid, signal.SIGSTOP)
        while time.monotonic() < deadline:
            text = Path(f"/proc/{pid}/stat").read_text()
            if text[text.rindex(")") + 2] in "TtZX":
                break
        if holder() == pid:
            break
        os.kill(pid, signal.SIGCONT)
    os.kill(pid, signal.SIGKILL)


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


def wait_line(p: subprocess.Popen[str], expected: str) -> None:
    assert p.stdout is not None
    import select

    ready, _, _ = select.select([p.stdout], [], [], WAIT)
    assert ready, f"the C peer said nothing within {WAIT}s"
    line = p.stdout.readline().strip()
    assert line == expected, f"C peer said {line!r}; stderr: {p.stderr.read() if p.poll() is not None else ''}"


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
    c = background("read", ch.id, len(msgs), WAIT)
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
    c = background("write", ch.id, WAIT, stdin=subprocess.PIPE)
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
        (8, struct.pack("<I", 2)),
        (12, struct.pack("<I", 128)),
        (16, struct.pack("<Q", 1024 + 8)),
        (16, struct.pack("<Q", 1020)),
        (16, struct.pack("<Q", 8)),
    ],
    ids=["magic", "version", "header-size", "cap-too-big", "cap-unaligned", "cap-small"],
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
        shm.write_at(144, struct.pack("<Q", 64))  # head past tail
        run("read", ch.id, 1, 1, expect=EXIT_CORRUPT)
        run("write", ch.id, input=hexlines([b"x"]), expect=EXIT_CORRUPT)
        shm.write_at(144, struct.pack("<Q", 0))
    assert ch.stats().consumer_lock_pid == 0 and ch.stats().producer_lock_pid == 0
    assert parse(run("read", ch.id, 1, 1).stdout) == [(1, b"0123456789")]


# ---------------------------------------------------------------------------
# Section 2: the lock, across implementations


@pytest.mark.parametrize("side", ["consumer", "producer"])
def test_a_live_c_holder_is_respected_and_a_dead_one_recovered(make, background, side) -> None:
    """The C peer computes its identity as section 2 says.  shmsem must judge
    it alive while it runs (same pid namespace tag, same start time) and dead
    once killed."""
    ch = make(1024)
    ch.put_bytes(b"queued")
    c = background("hold", ch.id, side, "full")
    wait_line(c, "held")
    s = ch.stats()
    assert (s.consumer_lock_pid if side == "consumer" else s.producer_lock_pid) == c.pid
    if side == "consumer":
        with pytest.raises(queue.Empty):
            ch.get_bytes(timeout=0.5)
    else:
        with pytest.raises(queue.Full):
            ch.put_bytes(b"more", timeout=0.5)
    assert ch.stats().recoveries == 0, "shmsem took the lock of a live C holder"
    c.send_signal(signal.SIGKILL)
    c.wait(WAIT)
    if side == "consumer":
        assert ch.get_bytes(timeout=5) == b"queued"
    else:
        ch.put_bytes(b"more", timeout=5)
    s = ch.stats()
    assert s.recoveries == 1
    assert (s.producer_lock_pid, s.consumer_lock_pid) == (0, 0)


def test_c_recovers_the_lock_of_a_killed_shmsem_producer(make, run) -> None:
    """A Python producer dies (SIGKILL) holding the producer lock; the C peer,
    following section 2, judges it dead and takes the lock over."""
    big = 8 << 20
    ch = make(2 * big + 64)
    code = (f"from shmsem import Channel\nimport queue\nch = Channel.from_id({ch.id})\n"
            f"data = bytes({big})\nprint('ready', flush=True)\n"
            "while True:\n    try:\n        ch.put_bytes(data, timeout=5)\n"
            "    except queue.Full:\n        pass\n")
    for _attempt in range(8):
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            kill_in_lock(p.pid, lambda: ch.stats().producer_lock_pid)
            p.wait(WAIT)
        finally:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=WAIT)
        held = ch.stats().producer_lock_pid == p.pid
        # Make room for C's message, then let C put it.
        while True:
            try:
                ch.get_bytes_nowait()
            except queue.Empty:
                break
        r = run("write", ch.id, 5, input=hexlines([b"from C"]))
        assert ch.get_bytes(timeout=WAIT) == b"from C"
        if held:
            assert r.stderr.startswith("recovered producer from ")
            owner = int(r.stderr.split()[-1], 16)
            assert owner & 0xFFFFFFFF == p.pid
            assert ch.stats().producer_lock_pid == 0
            return
    pytest.fail("never caught the Python producer inside the lock")


def test_c_recovers_a_lock_left_by_a_dead_pid(make, run) -> None:
    ch = make(1024)
    ch.put_bytes(b"stuck behind a dead consumer")
    dead = subprocess.Popen(["true"])
    dead.wait(WAIT)
    ident = int(run("ident").stdout, 16)  # this namespace's tag, in the high byte
    with SharedMemory.from_id(ch.id) as shm:
        shm.write_at(128, struct.pack("<Q", dead.pid | (ident & (0xFF << 56)) | 7 << 32))
    r = run("read", ch.id, 1, 5)
    assert parse(r.stdout) == [(1, b"stuck behind a dead consumer")]
    assert "recovered consumer" in r.stderr


@pytest.mark.parametrize("state", ["alive", "dead"])
@pytest.mark.parametrize("ident", ["bare", "tagonly", "startonly"])
def test_identities_with_unknown_parts(make, background, ident, state) -> None:
    """Section 2: a peer that cannot compute the start time or the namespace
    tag leaves those bits 0 ("unknown"); it is judged by what is known.  So a
    live holder keeps its lock, and a dead one is recovered."""
    ch = make(1024)
    ch.put_bytes(b"queued")
    c = background("hold", ch.id, "consumer", ident)
    wait_line(c, "held")
    assert ch.stats().consumer_lock_pid == c.pid
    if state == "alive":
        with pytest.raises(queue.Empty):
            ch.get_bytes(timeout=0.5)
        assert ch.stats().recoveries == 0, f"took the lock of a live holder ({ident} identity)"
        assert ch.stats().consumer_lock_pid == c.pid
    else:
        c.send_signal(signal.SIGKILL)
        c.wait(WAIT)
        try:
            got = ch.get_bytes(timeout=2)
        except queue.Empty:
            pytest.fail(f"the lock of a dead holder with a {ident} identity was not recovered")
        assert got == b"queued" and ch.stats().recoveries == 1
