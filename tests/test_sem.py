"""Semaphores: SemaphoreSet, Semaphore and Lock.

Cross-process behaviour runs in real child processes: wake-ups both ways,
SEM_UNDO on death (SIGKILL), RemovedError and KeyboardInterrupt while
blocked, and signal handlers that do not raise (PEP 475 retries).
"""

from __future__ import annotations

import math
import os
import pickle
import select
import signal
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from proc_helpers import sigint_rounds
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import shmsem
from shmsem import Lock, Semaphore, SemaphoreSet, _core
from shmsem import sem as sem_module

SEMVMX = shmsem.SEMVMX


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def assert_silent(c: Any, seconds: float) -> None:
    """The child printed nothing for ``seconds`` (it is still blocked)."""
    ready, _, _ = select.select([c.proc.stdout], [], [], seconds)
    assert not ready, f"child should still be blocked but said {c.proc.stdout.readline()!r}"
    assert c.proc.poll() is None


@pytest.fixture
def sem() -> Iterator[Semaphore]:
    s = Semaphore(None, 0)
    try:
        yield s
    finally:
        s.remove()


@pytest.fixture
def sset() -> Iterator[SemaphoreSet]:
    s = SemaphoreSet(None, 3, values=[1, 0, 2])
    try:
        yield s
    finally:
        s.remove()


@pytest.fixture
def lock() -> Iterator[Lock]:
    lk = Lock(None)
    try:
        yield lk
    finally:
        lk.remove()


# ---------------------------------------------------------------------------
# Semaphore: the threading-style API


def test_semaphore_basics() -> None:
    s = Semaphore(None, 2)
    try:
        assert s.created and s.value == 2 and s.num == 0 and s.key == 0
        assert s.acquire(timeout=5) is True
        assert s.value == 1
        assert s.acquire(blocking=False) is True
        assert s.acquire(False) is False
        assert s.acquire(timeout=0) is False
        assert s.value == 0
        s.release()
        assert s.value == 1
        s.release(3)
        assert s.value == 4
        s.value = 7
        assert s.value == 7
        s.value = 0
        assert s.acquire(blocking=False) is False
    finally:
        s.remove()


def test_semaphore_with(sem: Semaphore) -> None:
    sem.value = 2
    with sem as got:
        assert got is True
        assert sem.value == 1
    assert sem.value == 2
    with pytest.raises(KeyError), sem:
        raise KeyError
    assert sem.value == 2


@pytest.mark.parametrize("n", [0, -1])
def test_release_n_must_be_positive(sem: Semaphore, n: int) -> None:
    with pytest.raises(ValueError):
        sem.release(n)
    assert sem.value == 0


@pytest.mark.parametrize("value", [-1, SEMVMX + 1, 2**31])
def test_value_out_of_range(sem: Semaphore, value: int) -> None:
    with pytest.raises(ValueError):
        sem.value = value
    with pytest.raises(ValueError):
        Semaphore(None, value)
    assert sem.value == 0


def test_value_types(sem: Semaphore) -> None:
    with pytest.raises(TypeError):
        sem.value = 1.0  # type: ignore[assignment]
    with pytest.raises(TypeError):
        Semaphore(None, True)


def test_semvmx() -> None:
    assert SEMVMX == 32767
    s = Semaphore(None, SEMVMX)
    try:
        assert s.value == SEMVMX
        with pytest.raises(ValueError):
            s.release()
        assert s.value == SEMVMX
        s.value = SEMVMX - 1
        with pytest.raises(ValueError):
            s.release(2)
        assert s.value == SEMVMX - 1
        s.release()
        assert s.value == SEMVMX
    finally:
        s.remove()


def test_release_n_beyond_semvmx(sem: Semaphore) -> None:
    with pytest.raises(ValueError):
        sem.release(SEMVMX + 1)
    assert sem.value == 0
    sem.release(SEMVMX)
    assert sem.value == SEMVMX


def test_reopen_does_not_reset(unique_key) -> None:
    key = unique_key()
    a = Semaphore(key, value=2)
    try:
        assert a.created
        assert a.acquire(timeout=1)
        b = Semaphore(key, value=5)
        assert not b.created and b.id == a.id
        assert b.value == 1
        assert Semaphore.open(key).value == 1
        assert Semaphore(key, 0).value == 1
        assert a.stat().otime != 0
    finally:
        a.remove()


def test_create_is_exclusive(unique_key) -> None:
    key = unique_key()
    a = Semaphore.create(key, 3)
    try:
        assert a.created and a.value == 3
        with pytest.raises(shmsem.ExistsError):
            Semaphore.create(key)
        with pytest.raises(shmsem.ExistsError):
            Lock.create(key)
        with pytest.raises(shmsem.ExistsError):
            SemaphoreSet.create(key, 1)
    finally:
        a.remove()


def test_open_and_from_id(unique_key) -> None:
    key = unique_key()
    with pytest.raises(shmsem.NotFoundError):
        Semaphore.open(key)
    with pytest.raises(ValueError):
        Semaphore.open(None)  # type: ignore[arg-type]
    a = Semaphore.create(key, 4)
    try:
        b = Semaphore.open(key)
        assert (b.id, b.key, b.value, b.created) == (a.id, key, 4, False)
        c = Semaphore.from_id(a.id)
        assert (c.id, c.key, c.value) == (a.id, key, 4)
        b.release()
        assert a.value == 5
    finally:
        a.remove()
    with pytest.raises(shmsem.NotFoundError):
        Semaphore.from_id(a.id)


def test_create_or_open_refuses_a_set_of_another_size(unique_key) -> None:
    key = unique_key()
    s = SemaphoreSet.create(key, 2)
    try:
        with pytest.raises(shmsem.ExistsError):
            Semaphore(key)
        with pytest.raises(shmsem.ExistsError):
            SemaphoreSet(key, 3)
    finally:
        s.remove()


def test_stat(unique_key) -> None:
    key = unique_key()
    s = Semaphore.create(key, 1, mode=0o640)
    try:
        st_ = s.stat()
        assert isinstance(st_, shmsem.SemaphoreSetStat)
        assert (st_.key, st_.id, st_.nsems, st_.mode) == (key, s.id, 1, 0o640)
        assert st_.uid == st_.cuid == os.geteuid()
        assert st_.otime != 0 and st_.ctime != 0
    finally:
        s.remove()


def test_pickle_semaphore(sem: Semaphore) -> None:
    b = pickle.loads(pickle.dumps(sem))
    assert type(b) is Semaphore and (b.id, b.num) == (sem.id, sem.num)
    b.release()
    assert sem.value == 1


def test_last_pid(sem: Semaphore, child) -> None:
    sem.release()
    assert sem.last_pid == os.getpid()
    c = child(f"""
        import os, shmsem
        shmsem.Semaphore.from_id({sem.id}).release()
        print(os.getpid(), flush=True)
    """)
    pid = int(c.readline())
    assert c.wait() == 0
    assert sem.last_pid == pid == c.pid
    assert sem.value == 2


def test_wait_zero(sem: Semaphore) -> None:
    assert sem.wait_zero() is True
    assert sem.wait_zero(timeout=0) is True
    sem.value = 1
    assert sem.wait_zero(timeout=0) is False


# ---------------------------------------------------------------------------
# Waking across processes


def test_child_waiter_woken_by_parent_release(sem: Semaphore, child) -> None:
    c = child(f"""
        import shmsem
        s = shmsem.Semaphore.from_id({sem.id})
        print("waiting", flush=True)
        print(s.acquire(timeout=20), flush=True)
    """)
    c.expect("waiting")
    wait_until(lambda: sem.ncnt == 1, "the child to block in acquire()")
    assert_silent(c, 0.1)
    sem.release()
    c.expect("True")
    assert c.wait() == 0
    assert sem.value == 0 and sem.ncnt == 0


def test_parent_waiter_woken_by_child_release(sem: Semaphore, child) -> None:
    c = child(f"""
        import time, shmsem
        s = shmsem.Semaphore.from_id({sem.id})
        input()
        deadline = time.monotonic() + 10
        while s.ncnt != 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        seen = s.ncnt
        s.release()
        print("released", seen, flush=True)
    """)
    c.send("go")
    assert sem.acquire(timeout=20) is True
    c.expect("released 1")  # the child saw us blocked before it released
    assert c.wait() == 0
    assert sem.value == 0


def test_ncnt_and_zcnt(sem: Semaphore, child) -> None:
    assert sem.ncnt == 0 and sem.zcnt == 0
    sem.value = 1
    c = child(f"""
        import shmsem
        s = shmsem.Semaphore.from_id({sem.id})
        print(s.wait_zero(timeout=20), flush=True)
        print(s.acquire(timeout=20), flush=True)
    """)
    wait_until(lambda: sem.zcnt == 1, "the child to wait for zero")
    assert sem.ncnt == 0
    sem.value = 0
    c.expect("True")
    wait_until(lambda: sem.ncnt == 1, "the child to wait in acquire()")
    assert sem.zcnt == 0
    sem.release()
    c.expect("True")
    assert c.wait() == 0
    assert (sem.ncnt, sem.zcnt) == (0, 0)


@pytest.mark.parametrize("timeout", ["None", "float('inf')", "1e12"])
def test_infinite_timeouts_block(sem: Semaphore, child, timeout: str) -> None:
    c = child(f"""
        import shmsem
        s = shmsem.Semaphore.from_id({sem.id})
        print(s.acquire(timeout={timeout}), flush=True)
    """)
    wait_until(lambda: sem.ncnt == 1, "the child to block")
    assert_silent(c, 0.3)
    assert sem.ncnt == 1
    sem.release()
    c.expect("True")
    assert c.wait() == 0


def test_infinite_wait_zero_blocks(sem: Semaphore, child) -> None:
    sem.value = 1
    c = child(f"""
        import shmsem
        s = shmsem.Semaphore.from_id({sem.id})
        print(s.wait_zero(timeout=float("inf")), flush=True)
    """)
    wait_until(lambda: sem.zcnt == 1, "the child to wait for zero")
    assert_silent(c, 0.3)
    assert sem.acquire(timeout=1)
    c.expect("True")
    assert c.wait() == 0


# ---------------------------------------------------------------------------
# Timeouts


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    result = fn()
    return result, time.monotonic() - t0


def test_acquire_times_out(sem: Semaphore) -> None:
    got, elapsed = timed(lambda: sem.acquire(timeout=0.2))
    assert got is False
    assert 0.2 <= elapsed < 5
    assert sem.value == 0 and sem.ncnt == 0


def test_wait_zero_times_out(sem: Semaphore) -> None:
    sem.value = 1
    got, elapsed = timed(lambda: sem.wait_zero(timeout=0.2))
    assert got is False
    assert 0.2 <= elapsed < 5
    assert sem.value == 1


def test_op_times_out(sset: SemaphoreSet) -> None:
    got, elapsed = timed(lambda: sset.op([(0, -1), (1, -1)], timeout=0.2))
    assert got is False
    assert 0.2 <= elapsed < 5
    assert sset.values == (1, 0, 2)


def test_lock_acquire_times_out(lock: Lock, child) -> None:
    c = child(f"""
        import shmsem
        lk = shmsem.Lock.from_id({lock.id})
        lk.acquire()
        print("held", flush=True)
        input()
    """)
    c.expect("held")
    got, elapsed = timed(lambda: lock.acquire(timeout=0.2))
    assert got is False and 0.2 <= elapsed < 5
    assert lock.acquire(blocking=False) is False
    c.send("bye")
    assert c.wait() == 0
    assert lock.acquire(timeout=5) is True
    lock.release()


BAD_TIMEOUT_CALLS: list[tuple[str, Callable[[Semaphore, SemaphoreSet], Any], type]] = [
    ("acquire(timeout=-1)", lambda s, ss: s.acquire(timeout=-1), ValueError),
    ("acquire(timeout=-1e-9)", lambda s, ss: s.acquire(timeout=-1e-9), ValueError),
    ("acquire(timeout=nan)", lambda s, ss: s.acquire(timeout=math.nan), ValueError),
    ("acquire(timeout=-inf)", lambda s, ss: s.acquire(timeout=-math.inf), ValueError),
    ("acquire(False, 1)", lambda s, ss: s.acquire(False, 1), ValueError),
    ("acquire(blocking=False, timeout=0)", lambda s, ss: s.acquire(blocking=False, timeout=0),
     ValueError),
    ("acquire(timeout='1')", lambda s, ss: s.acquire(timeout="1"), TypeError),
    ("acquire(timeout=True)", lambda s, ss: s.acquire(timeout=True), TypeError),
    ("wait_zero(timeout=-1)", lambda s, ss: s.wait_zero(timeout=-1), ValueError),
    ("wait_zero(timeout=nan)", lambda s, ss: s.wait_zero(timeout=math.nan), ValueError),
    ("op(timeout=-1)", lambda s, ss: ss.op([(0, -1)], timeout=-1), ValueError),
    ("op(timeout=nan)", lambda s, ss: ss.op([(0, -1)], timeout=math.nan), ValueError),
    ("op(nowait=True, timeout=1)", lambda s, ss: ss.op([(1, -1)], nowait=True, timeout=1),
     ValueError),
]


@pytest.mark.parametrize(
    "call, exc", [c[1:] for c in BAD_TIMEOUT_CALLS], ids=[c[0] for c in BAD_TIMEOUT_CALLS]
)
def test_timeout_validation(sem: Semaphore, sset: SemaphoreSet, call: Any, exc: type) -> None:
    sem.value = 1
    with pytest.raises(exc):
        call(sem, sset)
    # Validation happens before anything is applied.
    assert sem.value == 1
    assert sset.values == (1, 0, 2)


def test_lock_timeout_validation(lock: Lock) -> None:
    with pytest.raises(ValueError):
        lock.acquire(timeout=-1)
    with pytest.raises(ValueError):
        lock.acquire(timeout=math.nan)
    with pytest.raises(ValueError):
        lock.acquire(False, 0.5)
    assert not lock.locked()


# ---------------------------------------------------------------------------
# Signals while blocked


@pytest.fixture
def alarm() -> Iterator[list[int]]:
    """SIGALRM every 5 ms with a handler that only counts."""
    calls: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda signum, frame: calls.append(signum))
    signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
    try:
        yield calls
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)


def test_acquire_with_non_raising_handler(sem: Semaphore, alarm: list[int]) -> None:
    got, elapsed = timed(lambda: sem.acquire(timeout=0.3))
    assert got is False
    assert 0.3 <= elapsed < 3
    assert len(alarm) >= 10, f"the handler ran only {len(alarm)} times"


def test_wait_zero_with_non_raising_handler(sem: Semaphore, alarm: list[int]) -> None:
    sem.value = 1
    got, elapsed = timed(lambda: sem.wait_zero(timeout=0.3))
    assert got is False
    assert 0.3 <= elapsed < 3
    assert len(alarm) >= 10


def test_op_with_non_raising_handler(sset: SemaphoreSet, alarm: list[int]) -> None:
    got, elapsed = timed(lambda: sset.op([(0, -1), (1, -1)], timeout=0.3))
    assert got is False
    assert 0.3 <= elapsed < 3
    assert len(alarm) >= 10
    assert sset.values == (1, 0, 2)


def test_lock_with_non_raising_handler(lock: Lock, alarm: list[int]) -> None:
    assert lock.acquire(timeout=5)
    try:
        other = Lock.from_id(lock.id)
        got, elapsed = timed(lambda: other.acquire(timeout=0.3))
        assert got is False and 0.3 <= elapsed < 3
        assert len(alarm) >= 10
    finally:
        lock.release()


def test_handler_that_releases_lets_the_wait_succeed(sem: Semaphore) -> None:
    """After EINTR the wait is retried, so a release made by the handler
    itself is seen (an implementation that returned False on EINTR would
    fail here)."""
    calls: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        calls.append(signum)
        if len(calls) == 3:
            sem.release()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
    try:
        got = sem.acquire(timeout=10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    assert got is True
    assert len(calls) >= 3
    assert sem.value == 0


def test_handler_exception_propagates(sem: Semaphore) -> None:
    class Boom(Exception):
        pass

    def handler(signum: int, frame: Any) -> None:
        raise Boom

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        with pytest.raises(Boom):
            sem.acquire(timeout=10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    assert sem.value == 0 and sem.ncnt == 0


BLOCKING_CALLS = {
    "acquire()": ("shmsem.Semaphore.from_id(ID).acquire()", "ncnt"),
    "acquire(timeout=30)": ("shmsem.Semaphore.from_id(ID).acquire(timeout=30)", "ncnt"),
    "wait_zero()": ("shmsem.Semaphore.from_id(ID).wait_zero()", "zcnt"),
    "wait_zero(timeout=30)": ("shmsem.Semaphore.from_id(ID).wait_zero(timeout=30)", "zcnt"),
    "op()": ("shmsem.SemaphoreSet.from_id(ID).op([(0, -1)])", "ncnt"),
    "op(timeout=30)": ("shmsem.SemaphoreSet.from_id(ID).op([(0, -1)], timeout=30)", "ncnt"),
    "Lock.acquire()": ("shmsem.Lock.from_id(ID).acquire()", "ncnt"),
}

BLOCKED_CHILD = """
import shmsem, sys
try:
    {call}
except BaseException as e:
    print(type(e).__name__, isinstance(e, OSError), flush=True)
else:
    print("returned", flush=True)
"""


def _blocked_setup(name: str) -> tuple[Semaphore, str, str]:
    call, counter = BLOCKING_CALLS[name]
    value = 1 if counter == "zcnt" else 0
    if name.startswith("Lock"):
        s = Semaphore(None, 0)  # a held lock: value 0
    else:
        s = Semaphore(None, value)
    return s, call.replace("ID", str(s.id)), counter


@pytest.mark.parametrize("name", list(BLOCKING_CALLS))
def test_removal_wakes_a_blocked_waiter(child, name: str) -> None:
    s, call, counter = _blocked_setup(name)
    try:
        c = child(BLOCKED_CHILD.format(call=call))
        wait_until(lambda: getattr(s, counter) == 1, f"the child to block in {name}")
        t0 = time.monotonic()
        s.remove()
        c.expect("RemovedError True", timeout=5)
        assert time.monotonic() - t0 < 5
        assert c.wait() == 0
    finally:
        try:
            s.remove()
        except shmsem.RemovedError:
            pass


@pytest.mark.parametrize("name", list(BLOCKING_CALLS))
def test_sigint_interrupts_a_blocked_waiter(child, name: str) -> None:
    s, call, counter = _blocked_setup(name)
    try:
        c = child(BLOCKED_CHILD.format(call=call))
        wait_until(lambda: getattr(s, counter) == 1, f"the child to block in {name}")
        c.signal(signal.SIGINT)
        c.expect("KeyboardInterrupt False", timeout=5)
        assert c.wait() == 0
        # The interrupted wait applied nothing and left no waiter behind.
        assert getattr(s, counter) == 0
        assert s.value == (1 if counter == "zcnt" else 0)
    finally:
        s.remove()


ROUNDS = """
import shmsem
s = shmsem.SemaphoreSet.from_id({id})
for i in range({rounds}):
    input()
    try:
        print("ready", flush=True)
        got = {call}
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    else:
        print("missed: returned", got, flush=True)
"""


@pytest.mark.parametrize(
    "call", ["s[0].acquire(timeout=3)", "s.op([(0, -1)], timeout=3)", "s[0].acquire()"]
)
def test_sigint_is_never_missed(sem: Semaphore, child, call: str) -> None:
    """Twenty rounds of SIGINT at varied moments of a blocked wait: every one
    must interrupt it at once."""
    rounds = 20
    sigint_rounds(child(ROUNDS.format(id=sem.id, rounds=rounds, call=call)), rounds)
    assert sem.value == 0


# ---------------------------------------------------------------------------
# Lock


def test_lock_basics(lock: Lock) -> None:
    assert lock.created and not lock.locked()
    assert lock.undo  # the kernel undoes a dead holder's acquire
    with pytest.raises(RuntimeError):
        lock.release()
    assert lock.acquire(timeout=5) is True
    assert lock.locked()
    assert lock.acquire(blocking=False) is False  # not reentrant
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()
    with lock as got:
        assert got is True and lock.locked()
    assert not lock.locked()


def test_lock_reopen_keeps_state(unique_key) -> None:
    key = unique_key()
    a = Lock(key)
    try:
        assert a.created
        assert a.acquire(timeout=1)
        b = Lock(key)
        assert not b.created and b.locked()
        assert Lock.open(key).locked()
        assert b.acquire(timeout=0.05) is False
        a.release()
        assert not b.locked()
        with pytest.raises(shmsem.ExistsError):
            Lock.create(key)
    finally:
        a.remove()


def test_lock_holder_killed_releases(lock: Lock, child) -> None:
    c = child(f"""
        import shmsem, time
        lk = shmsem.Lock.from_id({lock.id})
        print(lk.acquire(timeout=10), flush=True)
        time.sleep(60)
    """)
    c.expect("True")
    assert lock.locked()
    assert lock.acquire(timeout=0.05) is False
    c.signal(signal.SIGKILL)
    assert c.wait() == -signal.SIGKILL
    assert lock.acquire(timeout=5) is True
    assert lock.locked()
    lock.release()
    assert not lock.locked()


def test_lock_passes_to_a_waiter_and_back_after_its_death(lock: Lock, child) -> None:
    assert lock.acquire(timeout=5)
    holder = child(f"""
        import shmsem, time
        print(shmsem.Lock.from_id({lock.id}).acquire(timeout=20), flush=True)
        time.sleep(60)
    """)
    wait_until(lambda: _core.semctl(lock.id, 0, _core.GETNCNT) == 1,
               "the child to wait for the lock")
    lock.release()
    holder.expect("True")
    holder.kill()
    assert lock.acquire(timeout=5) is True
    lock.release()


def test_lock_release_by_forked_child_refused(lock: Lock, child) -> None:
    c = child(f"""
        import os, sys, shmsem
        lk = shmsem.Lock.from_id({lock.id})
        assert lk.acquire(timeout=10)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                lk.release()
            except RuntimeError:
                os.write(1, b"refused\\n")
            else:
                os.write(1, b"released by the fork\\n")
            os._exit(0)
        os.waitpid(pid, 0)
        print("still locked", lk.locked(), flush=True)
        lk.release()
        print("released", lk.locked(), flush=True)
    """)
    rc, out, err = c.finish(timeout=20)
    assert rc == 0, err
    assert out.splitlines() == ["refused", "still locked True", "released False"], out + err
    assert not lock.locked()


def test_lock_pickle(lock: Lock) -> None:
    b = pickle.loads(pickle.dumps(lock))
    assert type(b) is Lock and b.id == lock.id
    assert b.acquire(timeout=1)
    assert lock.locked()
    b.release()


# ---------------------------------------------------------------------------
# SEM_UNDO


def test_semaphore_undo_on_death(child) -> None:
    s = Semaphore(None, 3)
    try:
        c = child(f"""
            import shmsem, time
            s = shmsem.Semaphore.from_id({s.id}, undo=True)
            print(s.acquire(timeout=10), s.acquire(timeout=10), flush=True)
            time.sleep(60)
        """)
        c.expect("True True")
        assert s.value == 1
        c.signal(signal.SIGKILL)
        c.wait()
        assert s.value == 3
    finally:
        s.remove()


def test_no_undo_by_default(sem: Semaphore, child) -> None:
    sem.value = 2
    c = child(f"""
        import shmsem
        s = shmsem.Semaphore.from_id({sem.id})
        print(s.acquire(timeout=10), flush=True)
    """)
    c.expect("True")
    assert c.wait() == 0
    assert sem.value == 1


def test_set_op_undo_on_exit(sset: SemaphoreSet, child) -> None:
    # One line per step: conftest's Child.readline selects on the pipe, so
    # lines that arrive together in one read would be lost to a second call.
    c = child(f"""
        import shmsem
        s = shmsem.SemaphoreSet.from_id({sset.id})
        a = s.op([(0, -1), (1, 5)], undo=True, timeout=10)
        b = s.op([(2, -1, shmsem.SEM_UNDO), (1, 1)], timeout=10)
        print(a, b, s.values, flush=True)
        input()
    """)
    c.expect("True True (0, 6, 1)")
    assert sset.values == (0, 6, 1)
    c.send("exit")
    assert c.wait() == 0
    # Undone: the undo=True op entirely, and member 2 of the second op; the
    # +1 on member 1 had no SEM_UNDO and stays.
    assert sset.values == (1, 1, 2)


# ---------------------------------------------------------------------------
# SemaphoreSet


def test_set_basics(sset: SemaphoreSet) -> None:
    assert len(sset) == 3
    assert sset.created and sset.key == 0
    assert sset.values == (1, 0, 2)
    sset.values = [5, 6, 7]
    assert sset.values == (5, 6, 7)
    sset.values = (0, 0, 0)
    assert sset.values == (0, 0, 0)
    st_ = sset.stat()
    assert st_.nsems == 3 and st_.otime != 0 and st_.id == sset.id


def test_set_default_values_are_zero() -> None:
    s = SemaphoreSet(None, 4)
    try:
        assert s.values == (0, 0, 0, 0)
    finally:
        s.remove()


def test_set_items(sset: SemaphoreSet) -> None:
    views = [sset[i] for i in range(3)]
    assert [v.value for v in views] == [1, 0, 2]
    assert [v.num for v in views] == [0, 1, 2]
    assert all(v.id == sset.id for v in views)
    views[1].release(4)
    assert sset.values == (1, 4, 2)
    assert sset[-1].num == 2 and sset[-3].num == 0
    views[2].value = 9
    assert sset.values == (1, 4, 9)
    assert views[0].acquire(blocking=False) is True
    assert sset.values == (0, 4, 9)


@pytest.mark.parametrize("index", [3, -4, 100, 2**40])
def test_set_index_errors(sset: SemaphoreSet, index: int) -> None:
    with pytest.raises(IndexError):
        sset[index]
    with pytest.raises(IndexError):
        sset.op([(index, 1)])
    assert sset.values == (1, 0, 2)


@pytest.mark.parametrize("index", ["0", 0.0, None, True])
def test_set_index_types(sset: SemaphoreSet, index: Any) -> None:
    with pytest.raises(TypeError):
        sset[index]


@pytest.mark.parametrize(
    "values", [[1, 2], [1, 2, 3, 4], [0, -1, 0], [0, SEMVMX + 1, 0], [0, 40000, 0]]
)
def test_set_bad_values(sset: SemaphoreSet, values: list[int]) -> None:
    with pytest.raises(ValueError):
        sset.values = values
    assert sset.values == (1, 0, 2)


@pytest.mark.parametrize("count, values", [(0, None), (-1, None), (2, [1]), (2, [0, SEMVMX + 1])])
def test_set_bad_construction(count: int, values: Any) -> None:
    with pytest.raises(ValueError):
        SemaphoreSet(None, count, values=values)


def test_set_semvmx_values() -> None:
    s = SemaphoreSet(None, 2, values=[SEMVMX, 0])
    try:
        assert s.values == (SEMVMX, 0)
        with pytest.raises(ValueError):
            s.op([(0, 1)])
        with pytest.raises(ValueError):
            s.op([(1, SEMVMX + 1)])
        with pytest.raises(ValueError):
            s[0].release()
        assert s.values == (SEMVMX, 0)
    finally:
        s.remove()


def test_op_is_atomic(sset: SemaphoreSet) -> None:
    # Member 1 is 0: nothing may be applied, not even member 0's part.
    assert sset.op([(0, -1), (1, -1)], nowait=True) is False
    assert sset.values == (1, 0, 2)
    assert sset.op([(2, -2), (1, -1)], nowait=True) is False
    assert sset.values == (1, 0, 2)
    sset[1].release()
    assert sset.op([(0, -1), (1, -1), (2, 3)], nowait=True) is True
    assert sset.values == (0, 0, 5)


def test_op_per_op_nowait_flag(sset: SemaphoreSet) -> None:
    got, elapsed = timed(lambda: sset.op([(1, -1, shmsem.IPC_NOWAIT)], timeout=10))
    assert got is False and elapsed < 5
    assert sset.values == (1, 0, 2)


def test_op_wait_for_zero(sset: SemaphoreSet) -> None:
    assert sset.op([(1, 0), (0, -1)], timeout=5) is True
    assert sset.values == (0, 0, 2)
    assert sset.op([(2, 0)], nowait=True) is False


def test_op_waits_for_all_members(sset: SemaphoreSet, child) -> None:
    sset.values = (0, 0, 0)
    c = child(f"""
        import shmsem
        s = shmsem.SemaphoreSet.from_id({sset.id})
        print(s.op([(0, -1), (1, -1)], timeout=20), flush=True)
    """)
    wait_until(lambda: sset[0].ncnt == 1, "the child to block in op()")
    sset[0].release()
    assert_silent(c, 0.2)  # member 1 is still 0
    assert sset.values == (1, 0, 0)
    sset[1].release()
    c.expect("True")
    assert c.wait() == 0
    assert sset.values == (0, 0, 0)


@pytest.mark.parametrize(
    "ops, exc",
    [
        ([], ValueError),
        ([(0,)], TypeError),
        ([(0, 1, 0, 0)], TypeError),
        ([[0, 1]], TypeError),
        ([(0, 1.0)], TypeError),
        ([(0, 1, 0o777777)], ValueError),
        ([(0, 40000)], ValueError),
        ([(0, -40000)], ValueError),
    ],
)
def test_op_argument_errors(sset: SemaphoreSet, ops: Any, exc: type) -> None:
    with pytest.raises(exc):
        sset.op(ops)
    assert sset.values == (1, 0, 2)


def test_set_reopen_does_not_reset(unique_key) -> None:
    key = unique_key()
    a = SemaphoreSet(key, 2, values=[3, 4])
    try:
        assert a.created and a.values == (3, 4)
        assert a.op([(0, -1), (1, -2)])
        b = SemaphoreSet(key, 2, values=[9, 9])
        assert not b.created and b.id == a.id
        assert b.values == (2, 2)
        c = SemaphoreSet.open(key)
        assert len(c) == 2 and c.values == (2, 2)
        with pytest.raises(shmsem.ExistsError):
            SemaphoreSet.create(key, 2)
        d = SemaphoreSet.from_id(a.id)
        assert (d.key, len(d), d.values) == (key, 2, (2, 2))
    finally:
        a.remove()
    with pytest.raises(shmsem.NotFoundError):
        SemaphoreSet.from_id(a.id)
    with pytest.raises(shmsem.NotFoundError):
        SemaphoreSet.open(key)


def test_set_remove(sset: SemaphoreSet) -> None:
    other = SemaphoreSet(None, 1)
    other.remove()
    with pytest.raises(shmsem.RemovedError):
        _ = other.values
    with pytest.raises(shmsem.RemovedError):
        other.remove()


# ---------------------------------------------------------------------------
# The sem_otime "ready" mark


class SpyTime:
    """Stands in for the time module inside shmsem.sem: records sleeps."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        time.sleep(seconds)


def test_created_sets_are_marked(unique_key) -> None:
    for make in (
        lambda k: SemaphoreSet(k, 2),
        lambda k: SemaphoreSet.create(k, 2, values=[0, 5]),
        lambda k: Semaphore(k, 0),
        lambda k: Semaphore.create(k, SEMVMX),
        lambda k: Lock(k),
        lambda k: Lock.create(k),
    ):
        key = unique_key()
        s = make(key)
        try:
            assert SemaphoreSet.from_id(s.id).stat().otime != 0
        finally:
            s.remove()


def test_unmarked_set_opens_at_once_and_create_or_open_waits_briefly(
    unique_key, monkeypatch
) -> None:
    key = unique_key()
    # A set as another program makes it: semget only, no semop yet.
    semid = _core.semget(key, 1, _core.IPC_CREAT | _core.IPC_EXCL | 0o600)
    try:
        assert SemaphoreSet.from_id(semid).stat().otime == 0
        spy = SpyTime()
        monkeypatch.setattr(sem_module, "time", spy)

        for opener in (SemaphoreSet.open, Semaphore.open, Lock.open):
            h = opener(key)
            assert h.id == semid
        assert spy.sleeps == [], "open() must never wait"

        t0 = time.monotonic()
        s = SemaphoreSet(key, 1)
        elapsed = time.monotonic() - t0
        assert s.id == semid and not s.created
        assert spy.sleeps, "create-or-open should wait for the ready mark"
        assert sem_module.READY_WAIT * 0.9 <= elapsed < 2.0
        assert s.values == (0,)  # and it did not initialise someone else's set
        assert s.stat().otime == 0
    finally:
        _core.semctl(semid, 0, _core.IPC_RMID)


def test_create_or_open_does_not_wait_for_a_marked_set(unique_key, monkeypatch) -> None:
    key = unique_key()
    a = SemaphoreSet.create(key, 1)
    try:
        spy = SpyTime()
        monkeypatch.setattr(sem_module, "time", spy)
        b = SemaphoreSet(key, 1)
        assert b.id == a.id and spy.sleeps == []
    finally:
        a.remove()


# ---------------------------------------------------------------------------
# A model of a semaphore set, checked by Hypothesis


class SemaphoreSetModel(RuleBasedStateMachine):
    N = 3

    def __init__(self) -> None:
        super().__init__()
        self.s = SemaphoreSet(None, self.N)
        self.model = [0] * self.N

    @rule(values=st.lists(st.integers(0, SEMVMX), min_size=N, max_size=N))
    def set_all(self, values: list[int]) -> None:
        self.s.values = values
        self.model = list(values)

    @rule(i=st.integers(0, N - 1), value=st.integers(0, SEMVMX))
    def set_one(self, i: int, value: int) -> None:
        self.s[i].value = value
        self.model[i] = value

    @rule(ops=st.lists(st.tuples(st.integers(0, N - 1), st.integers(-5, 5)), min_size=1,
                       max_size=4))
    def op_nowait(self, ops: list[tuple[int, int]]) -> None:
        # The kernel applies the ops in order and the first one that cannot
        # proceed decides: one that would block makes the call fail with
        # EAGAIN (False), one that would pass SEMVMX with ERANGE (ValueError).
        trial = list(self.model)
        ok, too_big = True, False
        for i, d in ops:
            if (d == 0 and trial[i] != 0) or trial[i] + d < 0:
                ok = False
                break
            if trial[i] + d > SEMVMX:
                too_big = True
                break
            trial[i] += d
        if too_big:
            with pytest.raises(ValueError):
                self.s.op(ops, nowait=True)
            return
        assert self.s.op(ops, nowait=True) is ok
        if ok:
            self.model = trial

    @rule(i=st.integers(0, N - 1), n=st.integers(1, 3))
    def release(self, i: int, n: int) -> None:
        if self.model[i] + n > SEMVMX:
            with pytest.raises(ValueError):
                self.s[i].release(n)
        else:
            self.s[i].release(n)
            self.model[i] += n

    @rule(i=st.integers(0, N - 1))
    def acquire_nowait(self, i: int) -> None:
        got = self.s[i].acquire(blocking=False)
        assert got is (self.model[i] > 0)
        if got:
            self.model[i] -= 1

    @invariant()
    def matches(self) -> None:
        assert list(self.s.values) == self.model

    def teardown(self) -> None:
        self.s.remove()


SemaphoreSetModel.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None
)
test_semaphore_set_model = SemaphoreSetModel.TestCase
