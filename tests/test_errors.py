"""Errors: the class hierarchy, pickling, what messages say, kernel-limit
errors (inside a throwaway IPC namespace), and the permission and
key-squatting rules (with a child running as another uid)."""

from __future__ import annotations

import errno
import json
import pickle
import queue
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
from ipc_helpers import another_uid, remove_key
from proc_helpers import cannot_unshare_ipc

import shmsem
from shmsem.errors import format_key

NOBODY = 65534

# ---------------------------------------------------------------------------
# Hierarchy

BASES = [
    ("ShmsemError", (Exception,)),
    ("NotFoundError", (shmsem.ShmsemError, FileNotFoundError)),
    ("ExistsError", (shmsem.ShmsemError, FileExistsError)),
    ("PermissionDeniedError", (shmsem.ShmsemError, PermissionError)),
    ("WouldBlockError", (shmsem.ShmsemError, BlockingIOError)),
    ("RemovedError", (shmsem.ShmsemError, OSError)),
    ("ClosedError", (shmsem.ShmsemError, ValueError)),
    ("FrameError", (shmsem.ShmsemError, ValueError)),
    ("FormatError", (shmsem.ShmsemError, ValueError)),
    ("ForeignObjectError", (shmsem.PermissionDeniedError, shmsem.ShmsemError, PermissionError)),
    ("LimitError", (shmsem.ShmsemError, OSError)),
    ("QueueEmptyError", (shmsem.WouldBlockError, shmsem.ShmsemError, BlockingIOError, queue.Empty)),
    ("QueueFullError", (shmsem.WouldBlockError, shmsem.ShmsemError, BlockingIOError, queue.Full)),
]


@pytest.mark.parametrize("name, bases", BASES, ids=[b[0] for b in BASES])
def test_bases(name: str, bases: tuple[type, ...]) -> None:
    cls = getattr(shmsem, name)
    assert cls is getattr(shmsem.errors, name)
    for base in bases:
        assert issubclass(cls, base), f"{name} should derive from {base.__name__}"
    assert cls.__module__ == "shmsem"
    assert name in shmsem.__all__
    # Caught both ways, as a user would write it.
    with pytest.raises(bases[-1]):
        raise cls("boom")
    with pytest.raises(shmsem.ShmsemError):
        raise cls("boom")


def test_removed_error_is_not_closed_error() -> None:
    # "Who caused it": the two must never be confused by an except clause.
    assert not issubclass(shmsem.RemovedError, shmsem.ClosedError)
    assert not issubclass(shmsem.ClosedError, shmsem.RemovedError)
    assert not issubclass(shmsem.RemovedError, ValueError)
    assert not issubclass(shmsem.ClosedError, OSError)


@pytest.mark.parametrize("name", [b[0] for b in BASES])
def test_pickle_round_trip(name: str) -> None:
    cls = getattr(shmsem, name)
    e = cls("semop(key=0x5e000001, id=7): it broke", syscall="semop", key=0x5E000001, id=7,
            errno=errno.EIDRM)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(e, protocol=proto)
        back = pickle.loads(data)
        assert type(back) is cls
        assert str(back) == str(e)
        assert (back.syscall, back.key, back.id, back.errno) == ("semop", 0x5E000001, 7,
                                                                 errno.EIDRM)
    assert b"shmsem" in pickle.dumps(e)


def test_pickle_of_a_raised_error(unique_key) -> None:
    key = unique_key()
    with pytest.raises(shmsem.NotFoundError) as info:
        shmsem.SharedMemory.open(key)
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is shmsem.NotFoundError
    assert str(back) == str(info.value)
    assert back.key == info.value.key == key
    assert back.syscall == info.value.syscall == "shmget"
    assert back.errno == info.value.errno == errno.ENOENT
    assert isinstance(back, FileNotFoundError)


def test_format_key() -> None:
    assert format_key(0x5E) == "0x0000005e"
    assert format_key(-1) == "0xffffffff"
    assert format_key(-(2**31)) == "0x80000000"
    assert format_key(0xDEADBEEF) == "0xdeadbeef"


# ---------------------------------------------------------------------------
# Messages name the syscall, the key (0x%08x) and the id


def test_not_found_message(unique_key) -> None:
    key = unique_key() | 0x80000000  # a negative key_t: still shown as 8 hex digits
    for opener, syscall in [
        (lambda: shmsem.SharedMemory.open(key), "shmget"),
        (lambda: shmsem.Semaphore.open(key), "semget"),
        (lambda: shmsem.MessageQueue.open(key), "msgget"),
    ]:
        with pytest.raises(shmsem.NotFoundError) as info:
            opener()
        msg = str(info.value)
        assert syscall in msg
        assert f"0x{key:08x}" in msg
        assert info.value.errno == errno.ENOENT


def test_exists_message(unique_key) -> None:
    key = unique_key()
    with shmsem.SharedMemory.create(key, 64):
        with pytest.raises(shmsem.ExistsError) as info:
            shmsem.SharedMemory.create(key, 64)
    assert "shmget" in str(info.value)
    assert f"0x{key:08x}" in str(info.value)
    assert info.value.errno == errno.EEXIST


def _removed_sem(key: int) -> tuple[Any, int]:
    sem = shmsem.Semaphore.create(key, 1)
    sem.remove()
    return sem, sem.id


def _removed_set(key: int) -> tuple[Any, int]:
    s = shmsem.SemaphoreSet.create(key, 2)
    s.remove()
    return s, s.id


def _removed_queue(key: int) -> tuple[Any, int]:
    q = shmsem.MessageQueue.create(key)
    q.remove()
    return q, q.id


def _removed_segment(key: int) -> tuple[Any, int]:
    shm = shmsem.SharedMemory.create(key, 64)
    shm.owner = False
    shm.remove()
    shm.detach()
    return shm, shm.id


REMOVED_CASES: list[tuple[str, Callable[[int], tuple[Any, int]], Callable[[Any], object], str]] = [
    ("sem.acquire", _removed_sem, lambda s: s.acquire(timeout=1), "semop"),
    ("sem.release", _removed_sem, lambda s: s.release(), "semop"),
    ("sem.wait_zero", _removed_sem, lambda s: s.wait_zero(timeout=1), "semop"),
    ("sem.value", _removed_sem, lambda s: s.value, "semctl"),
    ("sem.value=", _removed_sem, lambda s: setattr(s, "value", 3), "semctl"),
    ("sem.ncnt", _removed_sem, lambda s: s.ncnt, "semctl"),
    ("sem.stat", _removed_sem, lambda s: s.stat(), "semctl"),
    ("set.op", _removed_set, lambda s: s.op([(0, 1)]), "semop"),
    ("set.values", _removed_set, lambda s: s.values, "semctl"),
    ("set.values=", _removed_set, lambda s: setattr(s, "values", (1, 1)), "semctl"),
    ("set.stat", _removed_set, lambda s: s.stat(), "semctl"),
    ("queue.send", _removed_queue, lambda q: q.send(b"x"), "msgsnd"),
    ("queue.receive", _removed_queue, lambda q: q.receive(block=False), "msgrcv"),
    ("queue.stat", _removed_queue, lambda q: q.stat(), "msgctl"),
    ("queue.max_bytes", _removed_queue, lambda q: q.max_bytes, "msgctl"),
    ("shm.stat", _removed_segment, lambda m: m.stat(), "shmctl"),
]


@pytest.mark.parametrize(
    "make, use, syscall", [c[1:] for c in REMOVED_CASES], ids=[c[0] for c in REMOVED_CASES]
)
def test_removed_message_names_syscall_key_and_id(
    unique_key, make: Callable[[int], tuple[Any, int]], use: Callable[[Any], object], syscall: str
) -> None:
    key = unique_key()
    obj, ident = make(key)
    with pytest.raises(shmsem.RemovedError) as info:
        use(obj)
    msg = str(info.value)
    assert syscall in msg, msg
    assert f"id={ident}" in msg, msg
    assert f"0x{key:08x}" in msg, f"the key is missing from: {msg}"
    assert isinstance(info.value, OSError)
    assert info.value.id == ident


def test_foreign_message_names_key_and_id(unique_key) -> None:
    key = unique_key()
    # The real refusals are in test_squatted_key_is_refused; this checks the
    # message and attributes of the policy's exception on their own.
    from shmsem._policy import check_trusted

    other = another_uid()
    with pytest.raises(shmsem.ForeignObjectError) as info:
        check_trusted("segment", key, 42, other, other, 0o666, 0o600, False)
    assert f"0x{key:08x}" in str(info.value)
    assert "id=42" in str(info.value)
    assert f"owned by uid {other}" in str(info.value)
    assert (info.value.key, info.value.id) == (key, 42)


# ---------------------------------------------------------------------------
# A mode that denies the owner what shmsem needs is refused before anything
# is created (as a normal user, the object was made and then unusable).

MAKERS: list[tuple[str, str, Callable[[Any, int], Any]]] = [
    ("SharedMemory()", "segment", lambda k, m: shmsem.SharedMemory(k, 64, mode=m)),
    ("SharedMemory.create", "segment", lambda k, m: shmsem.SharedMemory.create(k, 64, mode=m)),
    ("Channel()", "segment", lambda k, m: shmsem.Channel(k, 256, mode=m)),
    ("Channel.create", "segment", lambda k, m: shmsem.Channel.create(k, 256, mode=m)),
    ("Mailbox()", "segment", lambda k, m: shmsem.Mailbox(k, 35, mode=m)),
    ("Mailbox.create", "segment", lambda k, m: shmsem.Mailbox.create(k, 35, mode=m)),
    ("SemaphoreSet()", "sem", lambda k, m: shmsem.SemaphoreSet(k, 2, mode=m)),
    ("SemaphoreSet.create", "sem", lambda k, m: shmsem.SemaphoreSet.create(k, 2, mode=m)),
    ("Semaphore()", "sem", lambda k, m: shmsem.Semaphore(k, mode=m)),
    ("Semaphore.create", "sem", lambda k, m: shmsem.Semaphore.create(k, mode=m)),
    ("Lock()", "sem", lambda k, m: shmsem.Lock(k, mode=m)),
    ("Lock.create", "sem", lambda k, m: shmsem.Lock.create(k, mode=m)),
    ("MessageQueue()", "msg", lambda k, m: shmsem.MessageQueue(k, mode=m)),
    ("MessageQueue.create", "msg", lambda k, m: shmsem.MessageQueue.create(k, mode=m)),
]
#: Modes each kind refuses: a segment is attached read-write, a semaphore set
#: is read and altered; a queue must be readable by its owner, who may leave
#: sending to others.
UNUSABLE = {
    "segment": [0o000, 0o200, 0o400, 0o043, 0o077, 0o577, 0o266],
    "sem": [0o000, 0o200, 0o400, 0o043, 0o077, 0o577, 0o266],
    "msg": [0o000, 0o200, 0o043, 0o077, 0o266],
}


@pytest.mark.parametrize("name, kind, make", MAKERS, ids=[m[0] for m in MAKERS])
def test_mode_the_owner_cannot_use_is_refused(name: str, kind: str, make: Callable[[Any, int], Any],
                                              unique_key) -> None:
    # Nothing is made: a keyed object would still hold its key; a private one
    # would be reported by the leak check.
    for mode in UNUSABLE[kind]:
        for key in (None, unique_key()):
            with pytest.raises(ValueError) as info:
                make(key, mode)
            msg = str(info.value)
            assert f"mode {mode:#o} denies the owner" in msg, msg
            assert "give the owner at least" in msg, msg
            assert key is None or key not in keys_in_use(), f"{name} created key {key:#x}"


def test_receive_only_queue_is_usable_by_its_owner() -> None:
    q = shmsem.MessageQueue.create(None, mode=0o420)  # the group sends, the owner receives
    try:
        assert q.stat().mode == 0o420
        with pytest.raises((queue.Empty, shmsem.WouldBlockError)):  # empty, not refused
            q.receive(block=False)
    finally:
        q.remove()


def keys_in_use() -> set[int]:
    return {int(line.split()[0])
            for kind in ("shm", "sem", "msg")
            for line in Path("/proc/sysvipc", kind).read_text().splitlines()[1:]}


# ---------------------------------------------------------------------------
# Kernel limits: raised inside a throwaway IPC namespace, whose sysctls we may
# lower freely (we are root); everything in it vanishes with the child.

NS_PRELUDE = r'''
import json, pathlib, shmsem

def sysctl(name, value):
    pathlib.Path("/proc/sys/kernel", name).write_text(value)

def objects():
    return {k: pathlib.Path("/proc/sysvipc", k).read_text().splitlines()[1:]
            for k in ("shm", "sem", "msg")}

def attempt(label, fn):
    before = objects()
    try:
        fn()
    except BaseException as e:
        out = {"label": label, "cls": type(e).__name__,
               "limit": isinstance(e, shmsem.LimitError),
               "oserror": isinstance(e, OSError), "msg": str(e),
               "errno": getattr(e, "errno", None)}
    else:
        out = {"label": label, "cls": None}
    out["left_behind"] = objects() != before
    print(json.dumps(out), flush=True)

KEY = 0x5e00abcd
'''


def run_in_ipc_namespace(body: str) -> list[dict[str, Any]]:
    reason = cannot_unshare_ipc()
    if reason:
        pytest.skip(reason)
    unshare = shutil.which("unshare")
    assert unshare is not None
    code = NS_PRELUDE + textwrap.dedent(body)
    try:
        proc = subprocess.run(
            [unshare, "--ipc", sys.executable, "-c", code],
            capture_output=True, text=True, timeout=60, cwd="/", check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the namespaced child did not finish within 60 s")
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert results, proc.stdout + proc.stderr
    return results


def check_limit(results: list[dict[str, Any]], sysctl: str, err: int) -> None:
    for r in results:
        assert r["cls"] == "LimitError", r
        assert r["limit"] and r["oserror"], r
        assert sysctl in r["msg"], r
        assert r["errno"] == err, r
        assert not r["left_behind"], f"{r['label']} left an object behind"


def test_limit_shmmax() -> None:
    results = run_in_ipc_namespace("""
        sysctl("shmmax", "65536")
        attempt("private", lambda: shmsem.SharedMemory(None, 65537))
        attempt("create", lambda: shmsem.SharedMemory.create(KEY, 1 << 20))
        attempt("create-or-open", lambda: shmsem.SharedMemory(KEY, 1 << 20))
        attempt("compat", lambda: shmsem.PosixIpcHelper(KEY, 1 << 20))
    """)
    assert len(results) == 4
    check_limit(results, "kernel.shmmax", errno.EINVAL)
    assert "shmget" in results[1]["msg"] and "0x5e00abcd" in results[1]["msg"]


def test_limit_shmmni() -> None:
    results = run_in_ipc_namespace("""
        sysctl("shmmni", "1")
        first = shmsem.SharedMemory(None, 4096)
        attempt("private", lambda: shmsem.SharedMemory(None, 4096))
        attempt("create", lambda: shmsem.SharedMemory.create(KEY, 4096))
        first.close()
    """)
    check_limit(results, "kernel.shmmni", errno.ENOSPC)


def test_limit_shmall() -> None:
    results = run_in_ipc_namespace("""
        sysctl("shmall", "1")
        attempt("two pages", lambda: shmsem.SharedMemory(None, 8192))
    """)
    check_limit(results, "kernel.shmall", errno.ENOSPC)


def test_limit_sem_semmsl() -> None:
    results = run_in_ipc_namespace("""
        sysctl("sem", "1 32000 32 32000")
        attempt("set of 2", lambda: shmsem.SemaphoreSet(None, 2))
        attempt("create", lambda: shmsem.SemaphoreSet.create(KEY, 2, values=[1, 1]))
    """)
    check_limit(results, "kernel.sem", errno.EINVAL)


def test_limit_sem_semmni() -> None:
    results = run_in_ipc_namespace("""
        sysctl("sem", "250 32000 32 1")
        first = shmsem.Semaphore(None)
        attempt("second set", lambda: shmsem.Semaphore(None))
        attempt("lock", lambda: shmsem.Lock(KEY))
        attempt("compat", lambda: shmsem.PosixIpcHelper.create_semaphore(KEY))
        first.remove()
    """)
    check_limit(results, "kernel.sem", errno.ENOSPC)


def test_limit_sem_semmns() -> None:
    results = run_in_ipc_namespace("""
        sysctl("sem", "250 1 32 32000")
        attempt("two members", lambda: shmsem.SemaphoreSet(None, 2))
    """)
    check_limit(results, "kernel.sem", errno.ENOSPC)


def test_limit_sem_semopm() -> None:
    results = run_in_ipc_namespace("""
        s = shmsem.SemaphoreSet(None, 3, values=[1, 1, 1])
        sysctl("sem", "250 32000 2 32000")
        attempt("three ops", lambda: s.op([(0, -1), (1, -1), (2, -1)]))
        print(json.dumps({"values": list(s.values)}))
        s.remove()
    """)
    values = [r for r in results if "values" in r]
    check_limit([r for r in results if "label" in r], "kernel.sem", errno.E2BIG)
    assert values == [{"values": [1, 1, 1]}]


def test_limit_msgmni() -> None:
    results = run_in_ipc_namespace("""
        sysctl("msgmni", "0")
        attempt("private", lambda: shmsem.MessageQueue(None))
        attempt("create", lambda: shmsem.MessageQueue.create(KEY))
        attempt("create-or-open", lambda: shmsem.MessageQueue(KEY))
    """)
    check_limit(results, "kernel.msgmni", errno.ENOSPC)
    assert "msgget" in results[1]["msg"] and "0x5e00abcd" in results[1]["msg"]


def test_limit_msgmax() -> None:
    results = run_in_ipc_namespace("""
        sysctl("msgmax", "100")
        q = shmsem.MessageQueue(None)
        attempt("send", lambda: q.send(b"x" * 101, timeout=5))
        attempt("send nowait", lambda: q.send(b"x" * 101, block=False))
        print(json.dumps({"messages": q.stat().current_messages}))
        q.remove()
    """)
    check_limit([r for r in results if "label" in r], "kernel.msgmax", errno.EINVAL)
    assert {"messages": 0} in results


# ---------------------------------------------------------------------------
# Another uid: a child running as nobody (65534).

def test_nobody_child_runs(nobody) -> None:
    c = nobody("import os, shmsem; print(os.geteuid(), os.getegid())")
    c.expect(f"{NOBODY} {NOBODY}")
    assert c.wait() == 0


# Root creates a 0600 object; nobody may neither open nor create-or-open it.
OTHER_UID_CASES = {
    "shm": ("shmsem.SharedMemory.create(KEY, 64)",
            ["shmsem.SharedMemory.open(KEY)", "shmsem.SharedMemory.open(KEY, readonly=True)",
             "shmsem.SharedMemory(KEY, 64)", "shmsem.PosixIpcHelper.attach_existing(KEY)",
             "shmsem.PosixIpcHelper(KEY, 64)"]),
    "sem": ("shmsem.Semaphore.create(KEY, 1)",
            ["shmsem.Semaphore.open(KEY)", "shmsem.Semaphore(KEY)", "shmsem.Lock.open(KEY)",
             "shmsem.SemaphoreSet.open(KEY)", "shmsem.SemaphoreSet(KEY, 1)",
             "shmsem.PosixIpcHelper.create_semaphore(KEY)"]),
    "msg": ("shmsem.MessageQueue.create(KEY)",
            ["shmsem.MessageQueue.open(KEY)", "shmsem.MessageQueue(KEY)"]),
}

PROBE = """
import shmsem
KEY = {key}
for expr in {exprs!r}:
    try:
        eval(expr)
    except shmsem.PermissionDeniedError as e:
        ok = isinstance(e, PermissionError)
        print(expr, "denied" if ok else "not-a-PermissionError", flush=True)
    except BaseException as e:
        print(expr, type(e).__name__, flush=True)
    else:
        print(expr, "opened", flush=True)
"""


@pytest.mark.parametrize("kind", sorted(OTHER_UID_CASES))
def test_other_uid_is_denied_a_0600_object(nobody, unique_key, kind: str) -> None:
    key = unique_key()
    make, exprs = OTHER_UID_CASES[kind]
    obj = eval(make, {"shmsem": shmsem, "KEY": key})
    try:
        c = nobody(PROBE.format(key=key, exprs=exprs))
        rc, out, err = c.finish(timeout=30)
        assert rc == 0, err
        lines = out.splitlines()
        assert lines == [f"{e} denied" for e in exprs], out + err
        # Nothing was created on nobody's behalf.
        assert obj.stat().uid == 0
    finally:
        if kind == "shm":
            obj.close()
        else:
            obj.remove()
        remove_key(key)


SQUAT = """
import shmsem
KEY = {key}
objs = [shmsem.SharedMemory.create(KEY, 4096, mode=0o666),
        shmsem.Semaphore.create(KEY, 1, mode=0o666),
        shmsem.MessageQueue.create(KEY, mode=0o666)]
objs[0].write(b"planted")
objs[0].owner = False   # leave it behind on exit, as a squatter would
print(objs[0].id, objs[1].id, objs[2].id, flush=True)
"""


def test_squatted_key_is_refused(nobody, unique_key) -> None:
    key = unique_key()
    try:
        c = nobody(SQUAT.format(key=key))
        ids = [int(x) for x in c.readline(timeout=30).split()]
        assert c.wait() == 0
        shm_id, sem_id, msg_id = ids

        refusals: list[Callable[[], object]] = [
            lambda: shmsem.SharedMemory.open(key),
            lambda: shmsem.SharedMemory.open(key, mode=0o666),
            lambda: shmsem.SharedMemory(key, 64),
            lambda: shmsem.SharedMemory(key, 64, mode=0o666),
            lambda: shmsem.PosixIpcHelper(key, 64),
            lambda: shmsem.PosixIpcHelper.attach_existing(key),
            lambda: shmsem.Semaphore.open(key),
            lambda: shmsem.Semaphore(key),
            lambda: shmsem.Lock(key),
            lambda: shmsem.Lock.open(key),
            lambda: shmsem.SemaphoreSet(key, 1),
            lambda: shmsem.SemaphoreSet.open(key),
            lambda: shmsem.PosixIpcHelper.create_semaphore(key),
            lambda: shmsem.MessageQueue.open(key),
            lambda: shmsem.MessageQueue(key),
        ]
        for refuse in refusals:
            with pytest.raises(shmsem.ForeignObjectError) as info:
                refuse()
            assert isinstance(info.value, shmsem.PermissionDeniedError)
            assert f"0x{key:08x}" in str(info.value)
            assert str(NOBODY) in str(info.value)

        # trust=True accepts the object (and does not take it over).
        with shmsem.SharedMemory.open(key, trust=True) as shm:
            assert shm.id == shm_id and not shm.owner
            assert shm.read() == b"planted"
        shm2 = shmsem.SharedMemory(key, 64, trust=True)
        assert (shm2.id, shm2.created, shm2.owner) == (shm_id, False, False)
        shm2.close()
        assert shmsem.Semaphore.open(key, trust=True).id == sem_id
        sem = shmsem.Semaphore(key, 5, trust=True)
        assert (sem.id, sem.created, sem.value) == (sem_id, False, 1)
        assert shmsem.PosixIpcHelper.create_semaphore(key, trust=True) == sem_id
        q = shmsem.MessageQueue(key, trust=True)
        assert (q.id, q.created) == (msg_id, False)
        assert shmsem.MessageQueue.open(key, trust=True).id == msg_id
        # Nothing was removed by any of that.
        assert shmsem.SharedMemory.from_id(shm_id).stat().uid == NOBODY
    finally:
        remove_key(key)


BROADER = """
import shmsem
KEY = {key}
made = [shmsem.SharedMemory.create(KEY, 64, mode=0o666),
        shmsem.Semaphore.create(KEY, 1, mode=0o664),
        shmsem.MessageQueue.create(KEY, mode=0o606)]
checks = [
    ("shm open", lambda: shmsem.SharedMemory.open(KEY)),
    ("shm create-or-open", lambda: shmsem.SharedMemory(KEY, 64)),
    ("shm open 0o660", lambda: shmsem.SharedMemory.open(KEY, mode=0o660)),
    ("sem open", lambda: shmsem.Semaphore.open(KEY)),
    ("sem create-or-open", lambda: shmsem.Semaphore(KEY)),
    ("set create-or-open", lambda: shmsem.SemaphoreSet(KEY, 1)),
    ("lock open", lambda: shmsem.Lock.open(KEY)),
    ("msg open", lambda: shmsem.MessageQueue.open(KEY)),
    ("msg create-or-open", lambda: shmsem.MessageQueue(KEY)),
    ("msg open 0o600", lambda: shmsem.MessageQueue.open(KEY, mode=0o600)),
]
for label, fn in checks:
    try:
        fn()
    except shmsem.ForeignObjectError:
        print(label, "foreign", flush=True)
    except BaseException as e:
        print(label, type(e).__name__, e, flush=True)
    else:
        print(label, "opened", flush=True)
# Asking for the mode it has, or trusting it, works.
fine = [shmsem.SharedMemory.open(KEY, mode=0o666), shmsem.SharedMemory(KEY, 64, trust=True),
        shmsem.Semaphore.open(KEY, mode=0o664), shmsem.Semaphore(KEY, trust=True),
        shmsem.MessageQueue.open(KEY, mode=0o606), shmsem.MessageQueue(KEY, trust=True)]
print("fine", sum(1 for f in fine if f.id >= 0), flush=True)
for f in fine[:2]:
    f.close()
made[0].close()
made[1].remove()
made[2].remove()
print("done", flush=True)
"""


def test_mode_broader_than_asked_is_refused(nobody, unique_key) -> None:
    """Same user (not root, so no exemption): an object with a broader mode
    than the caller asked for may be a squatter's."""
    key = unique_key()
    try:
        c = nobody(BROADER.format(key=key))
        rc, out, err = c.finish(timeout=30)
        assert rc == 0, err
        lines = out.splitlines()
        expected = [
            "shm open foreign", "shm create-or-open foreign", "shm open 0o660 foreign",
            "sem open foreign", "sem create-or-open foreign", "set create-or-open foreign",
            "lock open foreign", "msg open foreign", "msg create-or-open foreign",
            "msg open 0o600 foreign", "fine 6", "done",
        ]
        assert lines == expected, out + err
    finally:
        remove_key(key)


def test_root_opening_root_owned_broad_object_is_exempt(as_root, unique_key) -> None:
    key = unique_key()
    with shmsem.SharedMemory.create(key, 64, mode=0o666) as a:
        with shmsem.SharedMemory.open(key) as b:
            assert b.id == a.id
        with shmsem.SharedMemory(key, 64) as c:
            assert c.id == a.id and not c.created
