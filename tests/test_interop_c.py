"""Interop with a C program that does what the .NET helper (Shanewas.PosixIpc) does.

tests/interop/dotnet_like.c issues the helper's System V calls with its flags
(see the comment at its top and docs/interop.md).  It is compiled once per
session with -Wall -Wextra -Werror.  Every wait is bounded: the C side by the
subprocess timeout, the Python side by an explicit timeout.  Objects the C
program creates are removed by key on the way out, whatever happens.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmsem
import shmsem.sem
from shmsem import (
    FrameError,
    MessageQueue,
    NotFoundError,
    PosixIpcHelper,
    RemovedError,
    Semaphore,
    SemaphoreSet,
    SharedMemory,
    key_from_name,
)
from shmsem.keys import normalize_key

SOURCE = Path(__file__).parent / "interop" / "dotnet_like.c"
TIMEOUT = 10.0  # seconds; a bound on every wait, never an expectation of speed

EXIT_SYSCALL = 1
EXIT_OVERFLOW = 3
EXIT_FRAME = 4


# ---------------------------------------------------------------------------
# The C program


@pytest.fixture(scope="session")
def dotnet_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        pytest.fail("no C compiler: building shmsem needs one too; set CC or install gcc")
    exe = tmp_path_factory.mktemp("interop") / "dotnet_like"
    proc = subprocess.run(
        [cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(SOURCE)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"compiling {SOURCE.name} failed:\n{proc.stderr}"
    return exe


Arg = Union[str, int]


@pytest.fixture
def c_run(dotnet_like: Path) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """Run one dotnet_like command to completion (killed after TIMEOUT)."""

    def run(*args: Arg, input: Optional[bytes] = None, expect: int = 0) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [str(dotnet_like), *map(str, args)],
            input=input, capture_output=True, timeout=TIMEOUT,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        assert proc.returncode == expect, (
            f"dotnet_like {' '.join(map(str, args))} exited {proc.returncode}, "
            f"expected {expect}; stderr: {proc.stderr.decode(errors='replace')}"
        )
        return proc

    return run


@pytest.fixture
def c_spawn(dotnet_like: Path) -> Iterator[Callable[..., "subprocess.Popen[bytes]"]]:
    """Start a dotnet_like command in the background; killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: Arg) -> "subprocess.Popen[bytes]":
        p = subprocess.Popen(
            [str(dotnet_like), *map(str, args)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(TIMEOUT)
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()


def finish(p: "subprocess.Popen[bytes]", expect: int = 0) -> tuple[bytes, bytes]:
    """Wait (bounded) for a background command and check its exit code."""
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=TIMEOUT)
        pytest.fail(f"dotnet_like {p.args!r} still running after {TIMEOUT}s; stderr: {err!r}")
    assert p.returncode == expect, (
        f"dotnet_like {p.args!r} exited {p.returncode}, expected {expect}; stderr: {err!r}"
    )
    return out, err


def wait_until(cond: Callable[[], bool], what: str, proc: "Optional[subprocess.Popen[bytes]]" = None) -> None:
    """Poll ``cond`` until it holds; fail after TIMEOUT or if ``proc`` exits first."""
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate(timeout=TIMEOUT)
            pytest.fail(f"{what}: dotnet_like exited {proc.returncode} first; stderr: {err!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still not true after {TIMEOUT}s")
        time.sleep(0.002)


# ---------------------------------------------------------------------------
# Cleanup by key: the C program creates objects Python has no handle to.


def objects_with_keys(keys: tuple[int, ...]) -> list[tuple[str, int]]:
    wanted = {normalize_key(k) for k in keys}
    found = []
    for kind in ("shm", "sem", "msg"):
        for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[0]) in wanted:
                found.append((kind, int(fields[1])))
    return found


@contextlib.contextmanager
def reaped(*keys: int) -> Iterator[None]:
    """Remove every System V object with one of ``keys`` on the way out."""
    try:
        yield
    finally:
        for kind, ident in objects_with_keys(keys):
            with contextlib.suppress(NotFoundError, RemovedError):
                if kind == "shm":
                    seg = SharedMemory.from_id(ident)
                    seg.remove()
                    seg.detach()
                elif kind == "sem":
                    SemaphoreSet.from_id(ident).remove()
                else:
                    MessageQueue.from_id(ident).remove()


class ReadySpy:
    """Counts calls to shmsem's wait for a creator's ready mark (sem._wait_ready)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = shmsem.sem._wait_ready

        def spy(semid: int) -> None:
            self.calls += 1
            original(semid)

        monkeypatch.setattr(shmsem.sem, "_wait_ready", spy)


# ---------------------------------------------------------------------------
# Frames: Python writes, C reads


TEXTS = [
    "",
    "hello",
    "h\u00e9llo w\u00f6rld",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "clef \U0001d11e party \U0001f389 done",
    "tabs\tand\nnewlines\r\n and a NUL \x00 inside",
    "\u00e9" * 1000,
]


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_text_written_by_python_is_read_by_c(c_run, unique_key, text) -> None:
    key = unique_key()
    with PosixIpcHelper(key, 4096) as helper:
        helper.write(text)
        out = c_run("read", key).stdout
    assert out == text.encode("utf-8")
    assert out.decode("utf-8") == text


def test_bytes_written_by_python_are_read_by_c(c_run, unique_key) -> None:
    key = unique_key()
    payload = bytes(range(256)) * 3 + b"\x00\xff"
    with SharedMemory.create(key, 4 + len(payload) + 100) as shm:
        shm.write(payload)
        assert c_run("read", key).stdout == payload
        # A shorter frame over a longer one: the reader must honour the length.
        shm.write(b"\x00short")
        assert c_run("read", key).stdout == b"\x00short"
        shm.write(b"")
        assert c_run("read", key).stdout == b""


def test_header_is_int32_little_endian(c_run, unique_key) -> None:
    # Write the frame by hand, byte by byte, and have both sides read it.
    key = unique_key()
    payload = bytes(i % 251 for i in range(0x102))  # 258 bytes: header 02 01 00 00
    with SharedMemory.create(key, 1024) as shm:
        shm.write_at(0, b"\x02\x01\x00\x00" + payload)
        assert c_run("read", key).stdout == payload
        assert shm.read() == payload
        shm.write(b"xyz")
        assert shm.read_at(0, 7) == b"\x03\x00\x00\x00xyz"


# ---------------------------------------------------------------------------
# Frames: C writes, Python reads


@pytest.mark.parametrize("text", TEXTS[:-1], ids=range(len(TEXTS) - 1))
def test_text_written_by_c_is_read_by_python(c_spawn, unique_key, text) -> None:
    if "\x00" in text:
        text = text.replace("\x00", "")  # argv cannot carry a NUL; write-stdin covers it
    key = unique_key()
    with reaped(key):
        p = c_spawn("write", key, 512, text)
        finish(p)
        shm = SharedMemory.open(key)
        try:
            assert shm.read_string() == text
            assert shm.read() == text.encode("utf-8")
            st = shm.stat()
            assert (st.size, st.mode, st.cpid, st.nattch) == (512, 0o600, p.pid, 1)
            assert st.key == key
            assert not shm.owner
        finally:
            shm.detach()


def test_bytes_written_by_c_are_read_by_python(c_run, unique_key) -> None:
    key = unique_key()
    payload = bytes(range(256)) * 4
    with reaped(key):
        c_run("write-stdin", key, 4 + len(payload), input=payload)
        with SharedMemory.open(key) as shm:
            assert shm.read() == payload
            assert shm.size == 4 + len(payload)


def test_c_writes_into_a_python_segment(c_run, unique_key) -> None:
    key = unique_key()
    with SharedMemory.create(key, 64) as shm:
        # The helper's constructor opens the existing segment and writes.
        c_run("write", key, 64, "from C: \u00fc\u00f1\u00ee")
        assert shm.read_string() == "from C: \u00fc\u00f1\u00ee"
        c_run("write", key, 64, "x")
        assert shm.read() == b"x"
        # A smaller size still opens it (shmget only refuses a larger one).
        c_run("write", key, 16, "small")
        assert shm.read() == b"small"


def test_attach_existing_on_c_segment_does_not_remove_it(c_run, unique_key) -> None:
    # The .NET helper's Dispose removes a segment it only opened; shmsem's does not.
    key = unique_key()
    with reaped(key):
        c_run("write", key, 128, "kept")
        helper = PosixIpcHelper.attach_existing(key)
        assert helper.read_string() == "kept"
        helper.dispose()
        assert c_run("read", key).stdout == b"kept"
        # So does the create-or-open constructor when it only opened.
        with PosixIpcHelper(key, 128) as again:
            assert again.read_string() == "kept"
        assert c_run("read", key).stdout == b"kept"


def test_dotnet_dispose_removes_a_python_owned_segment(c_run, unique_key) -> None:
    # Documented hazard: a .NET peer's Dispose() removes the segment even though
    # it only opened it.  The Python owner keeps its mapping, and close() copes.
    key = unique_key()
    shm = SharedMemory.create(key, 256)
    try:
        shm.write("still mapped")
        c_run("dispose", key, 256)
        assert shm.stat().removed
        assert shm.read_string() == "still mapped"
        with pytest.raises(NotFoundError):
            SharedMemory.open(key)
    finally:
        shm.close()  # must tolerate a segment someone else removed
    assert objects_with_keys((key,)) == []


# ---------------------------------------------------------------------------
# Frame bounds


SIZE = 100


def test_largest_frame_both_ways(c_run, unique_key) -> None:
    key = unique_key()
    biggest = bytes((i * 7) % 256 for i in range(SIZE - 4))
    with SharedMemory.create(key, SIZE) as shm:
        shm.write(biggest)
        assert c_run("read", key).stdout == biggest
        with pytest.raises(ValueError):
            shm.write(biggest + b"!")
        assert c_run("read", key).stdout == biggest  # a refused write changes nothing

        c_run("write-stdin", key, SIZE, input=biggest[::-1])
        assert shm.read() == biggest[::-1]
        c_run("write-stdin", key, SIZE, input=biggest + b"!", expect=EXIT_FRAME)
        assert shm.read() == biggest[::-1]


@pytest.mark.parametrize(
    "length",
    [
        -1,
        -(2**31),
        SIZE - 3,  # one byte too many
        SIZE,
        4000,  # past the segment but inside its page-rounded mapping
        4096 * 16,  # past the mapping
        2**31 - 1,
    ],
)
def test_corrupt_header_from_c_raises_frame_error(c_run, unique_key, length) -> None:
    key = unique_key()
    with SharedMemory.create(key, SIZE) as shm:
        shm.write("good")
        c_run("writehdr", key, length)
        assert shm.read_at(0, 4) == length.to_bytes(4, "little", signed=True)
        with pytest.raises(FrameError):
            shm.read()
        with pytest.raises(FrameError):
            shm.read_string()
        with PosixIpcHelper.attach_existing(key) as helper:
            with pytest.raises(FrameError):
                helper.read()
        # The C reader refuses it too, rather than reading out of bounds.
        c_run("read", key, expect=EXIT_FRAME)
        # The segment stays usable.
        shm.write("good again")
        assert c_run("read", key).stdout == b"good again"


def test_header_of_exactly_size_minus_4_is_valid(c_run, unique_key) -> None:
    key = unique_key()
    with SharedMemory.create(key, SIZE) as shm:
        shm.write_at(4, b"\xab" * (SIZE - 4))
        c_run("writehdr", key, SIZE - 4)
        assert shm.read() == b"\xab" * (SIZE - 4)
        c_run("writehdr", key, 0)
        assert shm.read() == b""


# ---------------------------------------------------------------------------
# Semaphores


def test_python_opens_a_c_semaphore_without_waiting_or_resetting(
    c_run, unique_key, monkeypatch
) -> None:
    key = unique_key()
    spy = ReadySpy(monkeypatch)
    with reaped(key):
        semid = int(c_run("semcreate", key).stdout)
        sem = Semaphore.open(key)
        assert spy.calls == 0, "Semaphore.open waited for a ready mark"
        assert sem.id == semid
        st = sem.stat()
        assert (st.nsems, st.mode, st.key, st.otime) == (1, 0o600, key, 0)
        assert sem.value == 0
        assert sem.stat().otime == 0, "opening must not operate on the set"

        sem.release()
        assert sem.value == 1
        c_run("semwait", semid)
        assert sem.value == 0
        assert sem.last_pid != os.getpid()

        # The helper's CreateSemaphore on an existing key opens, never resets.
        sem.release(3)
        assert int(c_run("semcreate", key).stdout) == semid
        assert sem.value == 3
        for _ in range(3):
            c_run("semwait", semid)
        assert sem.acquire(blocking=False) is False

        c_run("semdestroy", semid)
        with pytest.raises(NotFoundError):
            Semaphore.open(key)
        with pytest.raises(RemovedError):
            sem.release()


def test_create_or_open_proceeds_on_an_unmarked_c_semaphore(c_run, unique_key, monkeypatch) -> None:
    key = unique_key()
    spy = ReadySpy(monkeypatch)
    with reaped(key):
        semid = int(c_run("semcreate", key).stdout)
        sem = Semaphore(key, value=5)
        assert not sem.created
        assert sem.id == semid
        assert sem.value == 0, "create-or-open reset a value it did not create"
        assert spy.calls == 1  # it waited (boundedly) for a mark that never comes
        assert shmsem.sem.READY_WAIT <= 0.1
        assert PosixIpcHelper.create_semaphore(key) == semid
        assert sem.value == 0
        PosixIpcHelper.destroy_semaphore(semid)
    assert objects_with_keys((key,)) == []


def test_c_waiter_is_woken_by_python(c_run, c_spawn, unique_key) -> None:
    key = unique_key()
    with reaped(key):
        semid = int(c_run("semcreate", key).stdout)
        sem = Semaphore.open(key)
        waiter = c_spawn("semwait", semid)
        wait_until(lambda: sem.ncnt == 1, "C waiter blocked in semop", waiter)
        sem.release()
        finish(waiter)
        assert sem.value == 0
        assert sem.last_pid == waiter.pid


def test_python_created_semaphore_is_signalled_by_c(c_run, unique_key) -> None:
    key = unique_key()
    semid = PosixIpcHelper.create_semaphore(key)
    try:
        sem = Semaphore.from_id(semid)
        assert sem.value == 0
        st = sem.stat()
        assert (st.nsems, st.mode) == (1, 0o600)
        assert PosixIpcHelper.semaphore_wait(semid, timeout=0.01) is False

        c_run("semsignal", semid)
        assert sem.value == 1
        assert PosixIpcHelper.semaphore_wait(semid, timeout=TIMEOUT) is True
        assert sem.value == 0

        # The helper's CreateSemaphore opens ours and leaves the value alone.
        PosixIpcHelper.semaphore_signal(semid)
        PosixIpcHelper.semaphore_signal(semid)
        assert int(c_run("semcreate", key).stdout) == semid
        assert sem.value == 2
        c_run("semwait", semid)
        c_run("semwait", semid)
        assert sem.value == 0
    finally:
        PosixIpcHelper.destroy_semaphore(semid)
    assert objects_with_keys((key,)) == []


def test_python_waiter_is_woken_by_c(c_run, unique_key) -> None:
    key = unique_key()
    semid = PosixIpcHelper.create_semaphore(key)
    try:
        sem = Semaphore.from_id(semid)
        result: list[object] = []
        t = threading.Thread(
            target=lambda: result.append(PosixIpcHelper.semaphore_wait(semid, timeout=TIMEOUT))
        )
        t.start()
        try:
            wait_until(lambda: sem.ncnt == 1, "Python waiter blocked in semop")
            c_run("semsignal", semid)
        finally:
            t.join(TIMEOUT + 5)
        assert result == [True]
        assert sem.value == 0
    finally:
        PosixIpcHelper.destroy_semaphore(semid)


def test_c_destroy_wakes_python_waiter_with_removed_error(c_run, unique_key) -> None:
    key = unique_key()
    semid = PosixIpcHelper.create_semaphore(key)
    try:
        sem = Semaphore.from_id(semid)
        result: list[object] = []

        def wait() -> None:
            try:
                result.append(PosixIpcHelper.semaphore_wait(semid, timeout=TIMEOUT))
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                result.append(e)

        t = threading.Thread(target=wait)
        t.start()
        try:
            wait_until(lambda: sem.ncnt == 1, "Python waiter blocked in semop")
            c_run("semdestroy", semid)
        finally:
            t.join(TIMEOUT + 5)
        assert len(result) == 1 and isinstance(result[0], RemovedError), result
        # Both sides tolerate destroying an id that is already gone.
        c_run("semdestroy", semid)
    finally:
        PosixIpcHelper.destroy_semaphore(semid)
    assert objects_with_keys((key,)) == []


def test_python_destroy_wakes_c_waiter(c_run, c_spawn, unique_key) -> None:
    key = unique_key()
    with reaped(key):
        semid = int(c_run("semcreate", key).stdout)
        sem = Semaphore.open(key)
        waiter = c_spawn("semwait", semid)
        wait_until(lambda: sem.ncnt == 1, "C waiter blocked in semop", waiter)
        PosixIpcHelper.destroy_semaphore(semid)
        _, err = finish(waiter, expect=EXIT_SYSCALL)
        assert b"semop(wait)" in err and b"(errno %d)" % errno.EIDRM in err


# ---------------------------------------------------------------------------
# Ping-pong through one segment and two semaphores


ROUNDS = 200
PING_SIZE = 4096


def ping_text(i: int) -> str:
    """What dotnet_like's ping_text(i) builds (keep the two in step)."""
    return f"a\u00e9\u2713\U0001d11e-{i}-" + "".join(chr(ord("a") + (i + j) % 26) for j in range(i % 37))


def request_text(i: int) -> str:
    if i % 50 == 7:  # now and then the largest frame that fits
        room = PING_SIZE - 4 - len(f"ping {i} ".encode())
        return "\u20ac" * (room // 3) + "z" * (room % 3)
    return ping_text(i) * (1 + i % 5)


def test_ping_pong_python_asks_c_answers(c_spawn, unique_key) -> None:
    key, req_key, rep_key = unique_key(), unique_key(), unique_key()
    with reaped(key, req_key, rep_key), SharedMemory.create(key, PING_SIZE) as shm:
        req = Semaphore.create(req_key, 0)
        rep = Semaphore.create(rep_key, 0)
        c = c_spawn("pong", key, PING_SIZE, req_key, rep_key, ROUNDS)
        for i in range(ROUNDS):
            text = request_text(i)
            shm.write(f"ping {i} {text}")
            req.release()
            if not rep.acquire(timeout=TIMEOUT):
                finish(c)  # reports the C side's exit code and stderr
                pytest.fail(f"no reply to request {i} within {TIMEOUT}s")
            assert shm.read_string() == f"pong {i} {text}"
        finish(c)
        assert (req.value, rep.value) == (0, 0)
        req.remove()
        rep.remove()


def test_ping_pong_c_asks_python_answers(c_spawn, unique_key) -> None:
    key, req_key, rep_key = unique_key(), unique_key(), unique_key()
    with reaped(key, req_key, rep_key), PosixIpcHelper(key, PING_SIZE) as helper:
        req = PosixIpcHelper.create_semaphore(req_key)
        rep = PosixIpcHelper.create_semaphore(rep_key)
        c = c_spawn("ping", key, PING_SIZE, req_key, rep_key, ROUNDS)
        for i in range(ROUNDS):
            if not PosixIpcHelper.semaphore_wait(req, timeout=TIMEOUT):
                finish(c)
                pytest.fail(f"no request {i} within {TIMEOUT}s")
            msg = helper.read_string()
            assert msg == f"ping {i} {ping_text(i)}"
            helper.write("pong" + msg[4:])
            PosixIpcHelper.semaphore_signal(rep)
        out, _ = finish(c)
        assert out == b"ready\n"
        PosixIpcHelper.destroy_semaphore(req)
        PosixIpcHelper.destroy_semaphore(rep)


# ---------------------------------------------------------------------------
# Keys from names


def reference_hash(name: str) -> Optional[int]:
    """FNV-1a over UTF-16 code units, written independently of shmsem.keys:
    surrogate pairs are built by hand.  None where .NET's Math.Abs throws."""
    if name == "":
        return 0
    h = 2166136261
    for ch in name:
        cp = ord(ch)
        units = [cp] if cp < 0x10000 else [0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF)]
        for u in units:
            h = ((h ^ u) * 16777619) % 2**32
    if h == 2**31:
        return None
    return abs(h - 2**32 if h >= 2**31 else h)


def c_hashes(c_run, names: list[str]) -> list[Optional[int]]:
    expect = EXIT_OVERFLOW if any(reference_hash(n) is None for n in names) else 0
    lines = c_run("hash", *names, expect=expect).stdout.decode().splitlines()
    assert len(lines) == len(names)
    return [None if line == "overflow" else int(line) for line in lines]


def shmsem_hash(name: str) -> Optional[int]:
    try:
        return key_from_name(name)
    except ValueError:
        return None


NAMES = [
    "",
    "a",
    "foobar",
    "sensor/imu0",
    "Global\\frames",
    "\u00e9",
    "e\u0301",  # the same glyph, decomposed: different code units, different key
    "\u65e5\u672c\u8a9e",
    "\ud7ff\ue000\uffff",  # the code points around the surrogate block, and U+FFFF
    "\U00010000",  # the first code point that needs a surrogate pair
    "\U0001d11e\U0001f389",
    "\U0010ffff",
    "mixed \u00e9 \U0001f600 end",
    "x" * 5000,
    "\U0001f600" * 700,
]


def test_known_fnv1a_vectors(c_run) -> None:
    # Standard FNV-1a 32 test vectors (ASCII code units equal the bytes):
    # "a" -> 0xe40c292c, "foobar" -> 0xbf9cf968; both negative as int32.
    assert key_from_name("a") == 2**32 - 0xE40C292C
    assert key_from_name("foobar") == 2**32 - 0xBF9CF968
    assert c_hashes(c_run, ["a", "foobar"]) == [2**32 - 0xE40C292C, 2**32 - 0xBF9CF968]


def test_hash_of_names_matches_c(c_run) -> None:
    expected = [reference_hash(n) for n in NAMES]
    assert [shmsem_hash(n) for n in NAMES] == expected
    assert c_hashes(c_run, NAMES) == expected
    assert PosixIpcHelper.get_deterministic_hash_code("foobar") == key_from_name("foobar")
    assert key_from_name("") == 0 == shmsem.IPC_PRIVATE


argv_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(argv_text, min_size=1, max_size=30))
def test_hash_fuzz_matches_c(c_run, names) -> None:
    expected = [reference_hash(n) for n in names]
    assert [shmsem_hash(n) for n in names] == expected
    assert c_hashes(c_run, names) == expected


def name_hashing_to_0x80000000() -> str:
    """FNV-1a's last step is h = (h ^ unit) * prime, and 0x80000000 * odd is
    0x80000000 (mod 2**32); so a prefix whose hash is 0x8000xxxx, followed by
    the unit xxxx, hashes to 0x80000000."""
    for n in range(10**6):
        prefix = f"k{n}"
        h = 2166136261
        for ch in prefix:
            h = ((h ^ ord(ch)) * 16777619) % 2**32
        unit = h & 0xFFFF
        if h >> 16 == 0x8000 and unit >= 0x20 and not 0xD800 <= unit <= 0xDFFF:
            return prefix + chr(unit)
    raise AssertionError("no name found")  # pragma: no cover


def test_hash_overflow_edge_case(c_run) -> None:
    name = name_hashing_to_0x80000000()
    assert reference_hash(name) is None
    with pytest.raises(ValueError, match="0x80000000"):
        key_from_name(name)
    with pytest.raises(ValueError):
        PosixIpcHelper.get_deterministic_hash_code(name)
    proc = c_run("hash", "a", name, expect=EXIT_OVERFLOW)
    assert proc.stdout.decode().splitlines() == [str(key_from_name("a")), "overflow"]
