"""PosixIpcHelper: the .NET helper's API in snake_case, without its flaws
(dispose removes only what it created, bounded frames, IPC_STAT sizes,
race-free semaphore creation, timeouts)."""

from __future__ import annotations

import pathlib
import struct
import time
from collections.abc import Iterator

import pytest

import shmsem
from shmsem import PosixIpcHelper
from shmsem.compat import PosixIpcHelper as CompatHelper


def shm_exists(shmid: int) -> bool:
    lines = pathlib.Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return shmid in {int(line.split()[1]) for line in lines}


def wait_until(pred, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def semid(unique_key) -> Iterator[int]:
    sid = PosixIpcHelper.create_semaphore(unique_key())
    try:
        yield sid
    finally:
        PosixIpcHelper.destroy_semaphore(sid)


def test_exported_from_both_places() -> None:
    assert PosixIpcHelper is CompatHelper


# ---------------------------------------------------------------------------
# Segment


def test_constructor_creates_or_opens(unique_key) -> None:
    key = unique_key()
    a = PosixIpcHelper(key, 1024)
    try:
        shmid = a.shared_memory.id
        assert a.shared_memory.created and a.shared_memory.owner
        b = PosixIpcHelper(key, 1024)
        assert b.shared_memory.id == shmid
        assert not b.shared_memory.created and not b.shared_memory.owner
        a.write(b"from a")
        assert b.read() == b"from a"
        # The .NET helper removed the segment here even though b only opened
        # it; shmsem must not.
        b.dispose()
        assert shm_exists(shmid)
        assert a.read() == b"from a"
    finally:
        a.dispose()
    assert not shm_exists(shmid)


def test_constructor_refuses_a_smaller_existing_segment(unique_key) -> None:
    key = unique_key()
    with PosixIpcHelper(key, 100), pytest.raises(shmsem.ExistsError):
        PosixIpcHelper(key, 200)


def test_attach_existing_size_from_ipc_stat(unique_key) -> None:
    key = unique_key()
    with shmsem.SharedMemory.create(key, 1000) as owner:
        owner.write(b"existing")
        h = PosixIpcHelper.attach_existing(key)
        try:
            assert h.shared_memory.size == 1000 == owner.stat().size
            assert h.read() == b"existing"
            # A frame using the whole (odd) size fits: the size is real.
            h.write(b"x" * 996)
            assert owner.read() == b"x" * 996
            with pytest.raises(ValueError):
                h.write(b"x" * 997)
        finally:
            h.dispose()
        assert shm_exists(owner.id)  # an attach_existing handle never removes


def test_attach_existing_missing(unique_key) -> None:
    with pytest.raises(shmsem.NotFoundError):
        PosixIpcHelper.attach_existing(unique_key())


def test_write_read_and_frame_format(unique_key) -> None:
    with PosixIpcHelper(unique_key(), 64) as h:
        h.write(b"abc")
        assert h.read() == b"abc"
        # The .NET helper's layout: int32 little-endian length, then bytes.
        assert h.shared_memory.read_at(0, 7) == struct.pack("<i", 3) + b"abc"
        h.write("h\u00e9llo \U0001f600")
        assert h.read_string() == "h\u00e9llo \U0001f600"
        assert h.read() == "h\u00e9llo \U0001f600".encode("utf-8")
        h.write("")
        assert h.read_string() == ""


def test_write_too_large_is_refused(unique_key) -> None:
    with PosixIpcHelper(unique_key(), 16) as h:
        h.write(b"keep")
        with pytest.raises(ValueError):
            h.write(b"x" * 13)
        assert h.read() == b"keep"


@pytest.mark.parametrize("header", [-1, 13, 2**31 - 1])
def test_corrupt_length_is_not_trusted(unique_key, header: int) -> None:
    with PosixIpcHelper(unique_key(), 16) as h:
        h.shared_memory.write_at(0, struct.pack("<i", header))
        with pytest.raises(shmsem.FrameError):
            h.read()
        with pytest.raises(shmsem.FrameError):
            h.read_string()


def test_dispose_and_with(unique_key) -> None:
    key = unique_key()
    with PosixIpcHelper(key, 64) as h:
        shmid = h.shared_memory.id
    assert not shm_exists(shmid)
    h.dispose()  # idempotent
    for call in (h.read, h.read_string, lambda: h.write(b"x"), lambda: h.shared_memory):
        with pytest.raises(shmsem.ClosedError):
            call()


def test_dispose_tolerates_removal_by_someone_else(unique_key) -> None:
    h = PosixIpcHelper(unique_key(), 64)
    shmid = h.shared_memory.id
    h.shared_memory.remove()
    h.dispose()
    assert not shm_exists(shmid)
    with pytest.raises(shmsem.ClosedError):
        _ = h.shared_memory


def test_segment_across_processes(unique_key, child) -> None:
    key = unique_key()
    with PosixIpcHelper(key, 256) as h:
        h.write("hello child")
        c = child(f"""
            from shmsem.compat import PosixIpcHelper
            h = PosixIpcHelper.attach_existing({key})
            print(h.read_string(), flush=True)
            h.write("hello parent")
            h.dispose()
        """)
        rc, out, err = c.finish(timeout=30)
        assert rc == 0, err
        assert out.strip() == "hello child"
        assert h.read_string() == "hello parent"


# ---------------------------------------------------------------------------
# Semaphores


def test_create_semaphore_starts_at_zero(semid: int) -> None:
    s = shmsem.SemaphoreSet.from_id(semid)
    assert len(s) == 1 and s.values == (0,)
    st = s.stat()
    assert st.mode == 0o600
    assert st.otime != 0  # marked ready: no initialisation race


def test_create_semaphore_reopen_does_not_reset(unique_key) -> None:
    key = unique_key()
    semid = PosixIpcHelper.create_semaphore(key)
    try:
        PosixIpcHelper.semaphore_signal(semid)
        PosixIpcHelper.semaphore_signal(semid)
        again = PosixIpcHelper.create_semaphore(key)
        assert again == semid
        assert shmsem.Semaphore.from_id(semid).value == 2
    finally:
        PosixIpcHelper.destroy_semaphore(semid)


def test_create_semaphore_private_key() -> None:
    a = PosixIpcHelper.create_semaphore(0)
    b = PosixIpcHelper.create_semaphore(0)
    try:
        assert a != b
    finally:
        PosixIpcHelper.destroy_semaphore(a)
        PosixIpcHelper.destroy_semaphore(b)


def test_wait_and_signal(semid: int) -> None:
    assert PosixIpcHelper.semaphore_wait(semid, timeout=0) is False
    t0 = time.monotonic()
    assert PosixIpcHelper.semaphore_wait(semid, timeout=0.2) is False
    assert time.monotonic() - t0 >= 0.2
    PosixIpcHelper.semaphore_signal(semid)
    assert PosixIpcHelper.semaphore_wait(semid, timeout=5) is True
    assert shmsem.Semaphore.from_id(semid).value == 0


def test_wait_timeout_validation(semid: int) -> None:
    with pytest.raises(ValueError):
        PosixIpcHelper.semaphore_wait(semid, timeout=-1)
    with pytest.raises(ValueError):
        PosixIpcHelper.semaphore_wait(semid, timeout=float("nan"))


def test_child_waits_parent_signals(semid: int, child) -> None:
    c = child(f"""
        from shmsem.compat import PosixIpcHelper
        print(PosixIpcHelper.semaphore_wait({semid}, timeout=20), flush=True)
    """)
    sem = shmsem.Semaphore.from_id(semid)
    wait_until(lambda: sem.ncnt == 1, "the child to wait")
    PosixIpcHelper.semaphore_signal(semid)
    c.expect("True")
    assert c.wait() == 0
    assert sem.value == 0


def test_parent_waits_child_signals(semid: int, child) -> None:
    c = child(f"""
        import time
        import shmsem
        from shmsem.compat import PosixIpcHelper
        sem = shmsem.Semaphore.from_id({semid})
        deadline = time.monotonic() + 10
        while sem.ncnt != 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        PosixIpcHelper.semaphore_signal({semid})
        print("signalled", flush=True)
    """)
    assert PosixIpcHelper.semaphore_wait(semid, timeout=20) is True
    c.expect("signalled")
    assert c.wait() == 0


def test_signal_has_no_undo(semid: int, child) -> None:
    # The .NET helper uses no SEM_UNDO: a signal survives its sender's exit.
    c = child(f"""
        from shmsem.compat import PosixIpcHelper
        PosixIpcHelper.semaphore_signal({semid})
        PosixIpcHelper.semaphore_signal({semid})
        print("done", flush=True)
    """)
    c.expect("done")
    assert c.wait() == 0
    assert shmsem.Semaphore.from_id(semid).value == 2


def test_destroy_while_waiting(unique_key, child) -> None:
    semid = PosixIpcHelper.create_semaphore(unique_key())
    try:
        c = child(f"""
            import shmsem
            from shmsem.compat import PosixIpcHelper
            try:
                PosixIpcHelper.semaphore_wait({semid})
            except BaseException as e:
                print(type(e).__name__, flush=True)
        """)
        sem = shmsem.Semaphore.from_id(semid)
        wait_until(lambda: sem.ncnt == 1, "the child to wait")
        PosixIpcHelper.destroy_semaphore(semid)
        c.expect("RemovedError", timeout=5)
        assert c.wait() == 0
    finally:
        PosixIpcHelper.destroy_semaphore(semid)


def test_destroy_semaphore_of_a_gone_id_is_silent(unique_key) -> None:
    semid = PosixIpcHelper.create_semaphore(unique_key())
    PosixIpcHelper.destroy_semaphore(semid)
    with pytest.raises(shmsem.NotFoundError):
        shmsem.SemaphoreSet.from_id(semid)
    PosixIpcHelper.destroy_semaphore(semid)
    PosixIpcHelper.destroy_semaphore(semid)


def test_signal_on_a_gone_id_raises(unique_key) -> None:
    semid = PosixIpcHelper.create_semaphore(unique_key())
    PosixIpcHelper.destroy_semaphore(semid)
    with pytest.raises(shmsem.RemovedError):
        PosixIpcHelper.semaphore_signal(semid)
    with pytest.raises(shmsem.RemovedError):
        PosixIpcHelper.semaphore_wait(semid, timeout=1)


# ---------------------------------------------------------------------------
# Keys


@pytest.mark.parametrize("name", ["", "a", "foobar", "sensor/7", "caf\u00e9", "\U0001f600x"])
def test_get_deterministic_hash_code(name: str) -> None:
    assert PosixIpcHelper.get_deterministic_hash_code(name) == shmsem.key_from_name(name)
    assert CompatHelper.get_deterministic_hash_code(name) == shmsem.key_from_name(name)


def test_named_key_end_to_end(unique_key) -> None:
    name = f"shmsem-compat-{unique_key()}"
    key = PosixIpcHelper.get_deterministic_hash_code(name)
    with PosixIpcHelper(key, 64) as h:
        h.write(name)
        other = PosixIpcHelper.attach_existing(shmsem.key_from_name(name))
        try:
            assert other.read_string() == name
        finally:
            other.dispose()
