"""Kernel limits, exhausted in a throwaway IPC namespace.

Each scenario runs in a child started with `unshare --ipc` (we are root):
it lowers the IPC sysctls of its own, new namespace (they are per namespace:
/proc/sys/kernel/shmmni, shmmax, shmall, sem, msgmni, msgmnb), fills them
up, and tries every way shmsem creates objects.  Each attempt is reported as
one JSON line with the exception's class, errno and message, and whether
/proc/sysvipc differs before and after it.  The namespace, and anything in
it, vanishes with the child.

Checked, beyond tests/test_errors.py:

* every creation path (create, create-or-open, IPC_PRIVATE, Channel,
  Mailbox, SemaphoreSet, Semaphore, Lock, PosixIpcHelper, MessageQueue)
  fails with LimitError naming the tunable to raise, and leaves nothing;
* a segment that is created but cannot be attached (RLIMIT_AS) is removed;
* a set too large for SEMMSL, a total beyond SEMMNS, an op beyond SEMOPM
  (blocking or not: at once, never a wait), with values untouched;
* two objects made in a row where the second fails: `with` cleans up the
  first, and `shmsem demo` must too;
* kernel.msgmnb: a new queue's max_bytes; a message larger than it is a
  ValueError at once (even for a blocking send without timeout), and a full
  queue gives queue.Full, as QueueFullError (at once without blocking, after
  the timeout with one).
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import pytest
from helpers_faults import WAIT, child_code
from proc_helpers import cannot_unshare_ipc

import shmsem
from shmsem import (
    Channel,
    Lock,
    Mailbox,
    MessageQueue,
    PosixIpcHelper,
    Semaphore,
    SemaphoreSet,
    SharedMemory,
)

KEY = 0x5E0FA017


# ---------------------------------------------------------------------------
# Inside the namespace


def sysctl(name: str, value: str) -> None:
    pathlib.Path("/proc/sys/kernel", name).write_text(value)


def objects() -> dict[str, list[str]]:
    """(key id) of every object, by kind: what exists, not what it holds."""
    return {k: sorted(" ".join(line.split()[:2])
                      for line in pathlib.Path("/proc/sysvipc", k).read_text().splitlines()[1:])
            for k in ("shm", "sem", "msg")}


def cleanup(obj: Any) -> None:
    if isinstance(obj, (Channel, Mailbox, SharedMemory)):
        obj.owner = True
        obj.close()
    elif isinstance(obj, PosixIpcHelper):
        obj.dispose()
    elif isinstance(obj, (SemaphoreSet, Semaphore, Lock, MessageQueue)):
        obj.remove()
    elif isinstance(obj, int) and not isinstance(obj, bool):  # create_semaphore: a semid
        PosixIpcHelper.destroy_semaphore(obj)


def hang_guard(signum: int, frame: Any) -> None:
    raise TimeoutError("the call hung (10 s guard)")


def attempt(label: str, fn: Callable[[], Any]) -> dict[str, Any]:
    """Run fn; print and return what happened.  A result is cleaned up."""
    before = objects()
    t0 = time.monotonic()
    signal.alarm(10)
    try:
        result = fn()
    except BaseException as e:  # noqa: BLE001 - reported to the test
        signal.alarm(0)
        out = {"label": label, "cls": type(e).__name__, "msg": str(e),
               "errno": getattr(e, "errno", None), "limit": isinstance(e, shmsem.LimitError),
               "oserror": isinstance(e, OSError)}
    else:
        signal.alarm(0)
        out = {"label": label, "cls": None, "result": repr(result)[:100]}
    out["elapsed"] = round(time.monotonic() - t0, 3)
    out["left_behind"] = objects() != before
    if out["cls"] is None:
        cleanup(result)
        out["left_after_cleanup"] = objects() != before
    print(json.dumps(out), flush=True)
    return out


def ns_main(scenario: str) -> None:
    signal.signal(signal.SIGALRM, hang_guard)
    assert objects() == {"shm": [], "sem": [], "msg": []}, "not a fresh IPC namespace"
    globals()["ns_" + scenario]()
    print(json.dumps({"left_at_end": objects()}), flush=True)


def ns_shmmni() -> None:
    sysctl("shmmni", "3")
    held = [SharedMemory(None, 4096) for _ in range(3)]
    attempt("SharedMemory.create", lambda: SharedMemory.create(KEY, 4096))
    attempt("SharedMemory create-or-open", lambda: SharedMemory(KEY, 4096))
    attempt("SharedMemory private", lambda: SharedMemory(None, 4096))
    attempt("Channel.create", lambda: Channel.create(KEY, 4096))
    attempt("Channel create-or-open", lambda: Channel(KEY, 4096))
    attempt("Channel private", lambda: Channel(None, 4096))
    attempt("Mailbox.create", lambda: Mailbox.create(KEY, 64))
    attempt("Mailbox create-or-open", lambda: Mailbox(KEY, 64))
    attempt("PosixIpcHelper", lambda: PosixIpcHelper(KEY, 4096))
    held.pop().close()  # one free: the first of two fits, the second does not

    def two() -> None:
        with Channel.create(None, 4096) as ch, Mailbox.create(None, 64) as mb:
            ch.put(mb.publish(b"never"))

    attempt("Channel then Mailbox, with", two)
    attempt("Channel.create, one free", lambda: Channel.create(KEY, 4096))
    for shm in held:
        shm.close()


def ns_shmmax_shmall() -> None:
    sysctl("shmmax", str(1 << 20))
    attempt("Channel beyond shmmax", lambda: Channel.create(KEY, 2 << 20))
    attempt("Mailbox beyond shmmax", lambda: Mailbox(None, 1 << 20))
    attempt("SharedMemory beyond shmmax", lambda: SharedMemory(KEY, (1 << 20) + 1))
    sysctl("shmmax", str(1 << 30))
    sysctl("shmall", "16")  # pages in all
    attempt("Channel beyond shmall", lambda: Channel.create(KEY, 128 << 10))
    attempt("Mailbox beyond shmall", lambda: Mailbox.create(KEY, 64 << 10))


def ns_attach_fails() -> None:
    """shmget succeeds, shmat fails (RLIMIT_AS): the new segment must go."""
    status = pathlib.Path("/proc/self/status").read_text().splitlines()
    vm = int(next(line.split()[1] for line in status if line.startswith("VmSize:")))
    limit = (vm << 10) + (64 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    size = 512 << 20  # shmget reserves no memory; shmat needs the address space
    attempt("SharedMemory.create, no address space", lambda: SharedMemory.create(KEY, size))
    attempt("SharedMemory create-or-open, no address space", lambda: SharedMemory(KEY, size))
    attempt("SharedMemory private, no address space", lambda: SharedMemory(None, size))
    attempt("Channel.create, no address space", lambda: Channel.create(KEY, size))
    attempt("Channel private, no address space", lambda: Channel(None, size))
    attempt("Mailbox.create, no address space", lambda: Mailbox.create(KEY, size // 2))


def ns_sem() -> None:
    # SEMMSL: members per set.
    sysctl("sem", "4 32000 8 32000")
    attempt("set of SEMMSL", lambda: SemaphoreSet(None, 4))
    attempt("set beyond SEMMSL", lambda: SemaphoreSet(None, 5))
    attempt("create beyond SEMMSL", lambda: SemaphoreSet.create(KEY, 5, values=[1] * 5))
    # SEMMNS: members in all.
    sysctl("sem", "250 10 8 32000")
    a = SemaphoreSet(None, 4)
    b = SemaphoreSet(None, 4)
    attempt("set beyond SEMMNS", lambda: SemaphoreSet(None, 4, values=[1, 2, 3, 4]))
    attempt("Lock within SEMMNS", lambda: Lock(KEY))
    a.remove()
    b.remove()
    # SEMMNI: sets.
    sysctl("sem", "250 32000 8 3")
    sets = [Semaphore(None) for _ in range(3)]
    attempt("Semaphore beyond SEMMNI", lambda: Semaphore(None))
    attempt("Semaphore.create beyond SEMMNI", lambda: Semaphore.create(KEY, 1))
    attempt("SemaphoreSet create-or-open beyond SEMMNI", lambda: SemaphoreSet(KEY, 2))
    attempt("Lock beyond SEMMNI", lambda: Lock(KEY))
    attempt("Lock.create beyond SEMMNI", lambda: Lock.create(None))
    attempt("create_semaphore beyond SEMMNI", lambda: PosixIpcHelper.create_semaphore(KEY))
    for s in sets:
        s.remove()
    # SEMOPM: operations per semop.
    sysctl("sem", "250 32000 4 32000")
    s = SemaphoreSet(None, 6, values=[1] * 6)
    attempt("op of SEMOPM", lambda: s.op([(i, -1) for i in range(4)]) and s.op([(i, 1) for i in range(4)]))
    for kw in ({}, {"timeout": 5.0}, {"nowait": True}, {"undo": True}):
        attempt(f"op beyond SEMOPM {kw}", lambda kw=kw: s.op([(i, -1) for i in range(5)], **kw))
    print(json.dumps({"values": list(s.values)}), flush=True)
    s.remove()
    # SEMOPM 1: creating marks the set ready with a two-op semop.
    sysctl("sem", "250 32000 1 32000")
    attempt("Semaphore when SEMOPM is 1", lambda: Semaphore(None, 1))
    attempt("Lock when SEMOPM is 1", lambda: Lock(KEY))


def ns_msg() -> None:
    sysctl("msgmni", "2")
    held = [MessageQueue(None) for _ in range(2)]
    attempt("queue beyond msgmni", lambda: MessageQueue(None))
    attempt("MessageQueue.create beyond msgmni", lambda: MessageQueue.create(KEY))
    attempt("create-or-open beyond msgmni", lambda: MessageQueue(KEY))
    for q in held:
        q.remove()
    sysctl("msgmnb", "1024")
    q = MessageQueue(None)
    print(json.dumps({"max_bytes": q.max_bytes}), flush=True)
    too_big = b"x" * 1025
    attempt("send beyond max_bytes, blocking", lambda: q.send(too_big))
    attempt("send beyond max_bytes, timeout", lambda: q.send(too_big, timeout=5.0))
    attempt("send beyond max_bytes, nowait", lambda: q.send(too_big, block=False))
    for _ in range(4):
        q.send(b"y" * 256)
    attempt("send to a full queue, nowait", lambda: q.send(b"z", block=False))
    attempt("send to a full queue, timeout", lambda: q.send(b"z", timeout=0.3))
    print(json.dumps({"messages": q.current_messages, "first": q.receive()[0][:1].decode()}),
          flush=True)
    attempt("send after room was made", lambda: q.send(b"z", block=False))
    q.remove()


def ns_demo() -> None:
    """`shmsem demo` when its second or third object cannot be created."""
    for sem, shmmni in (("250 32000 32 1", "4096"), ("250 32000 32 32000", "1")):
        sysctl("sem", sem)
        sysctl("shmmni", shmmni)
        before = objects()
        r = subprocess.run([sys.executable, "-m", "shmsem", "demo"], capture_output=True,
                           text=True, timeout=60, check=False)
        left = {k: len(v) - len(before[k]) for k, v in objects().items()}
        print(json.dumps({"label": f"demo sem={sem} shmmni={shmmni}", "rc": r.returncode,
                          "stderr": r.stderr.strip()[-400:], "left": left}), flush=True)
        for line in pathlib.Path("/proc/sysvipc/shm").read_text().splitlines()[1:]:
            shmsem._core.shm_rmid(int(line.split()[1]))
        for line in pathlib.Path("/proc/sysvipc/sem").read_text().splitlines()[1:]:
            shmsem._core.semctl(int(line.split()[1]), 0, shmsem._core.IPC_RMID)


# ---------------------------------------------------------------------------
# The tests


def run_in_namespace(scenario: str) -> dict[str, dict[str, Any]]:
    reason = cannot_unshare_ipc()
    if reason:
        pytest.skip(reason)
    unshare = shutil.which("unshare")
    assert unshare is not None
    code = child_code("test_kernel_limits", "ns_main", scenario)
    try:
        proc = subprocess.run([unshare, "--ipc", sys.executable, "-c", code], capture_output=True,
                              text=True, timeout=4 * WAIT, cwd="/", check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the namespaced child ({scenario}) did not finish in {4 * WAIT}s")
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    results: dict[str, dict[str, Any]] = {}
    for line in proc.stdout.splitlines():
        r = json.loads(line)
        results[r.get("label", next(iter(r)))] = r
    assert results["left_at_end"]["left_at_end"] == {"shm": [], "sem": [], "msg": []}
    return results


def leaks(results: dict[str, dict[str, Any]]) -> int:
    """Attempts that left an object behind: a failed one that left anything,
    or a successful one whose object could not be cleaned up."""
    return sum(1 for r in results.values() if "label" in r and "cls" in r
               and (r["left_behind"] if r["cls"] else r["left_after_cleanup"]))


def limit_failures(results: dict[str, dict[str, Any]], labels: list[str], sysctl_name: str,
                   err: int) -> dict[str, Any]:
    """The attempts that did not fail as they should: LimitError (an OSError)
    with this errno, naming the sysctl, leaving nothing."""
    bad = {}
    for label in labels:
        r = results[label]
        if (r["cls"] != "LimitError" or not r["oserror"] or r["errno"] != err
                or sysctl_name not in r["msg"] or r["left_behind"]):
            bad[label] = r
    return bad


def test_shmmni_every_way_to_make_a_segment(reliability) -> None:
    res = run_in_namespace("shmmni")
    labels = ["SharedMemory.create", "SharedMemory create-or-open", "SharedMemory private",
              "Channel.create", "Channel create-or-open", "Channel private", "Mailbox.create",
              "Mailbox create-or-open", "PosixIpcHelper", "Channel then Mailbox, with"]
    reliability(attempts=len(labels) + 1, leaks=leaks(res))
    assert limit_failures(res, labels, "kernel.shmmni", errno.ENOSPC) == {}
    assert "0x5e0fa017" in res["Channel.create"]["msg"]
    ok = res["Channel.create, one free"]
    assert ok["cls"] is None and not ok["left_after_cleanup"], ok


def test_shmmax_and_shmall(reliability) -> None:
    res = run_in_namespace("shmmax_shmall")
    reliability(attempts=5, leaks=leaks(res))
    assert limit_failures(res, ["Channel beyond shmmax", "Mailbox beyond shmmax",
                                "SharedMemory beyond shmmax"], "kernel.shmmax", errno.EINVAL) == {}
    assert limit_failures(res, ["Channel beyond shmall", "Mailbox beyond shmall"],
                          "kernel.shmall", errno.ENOSPC) == {}


def test_a_segment_that_cannot_be_attached_is_removed(reliability) -> None:
    res = run_in_namespace("attach_fails")
    labels = [label for label in res if "address space" in label]
    reliability(attempts=len(labels), leaks=leaks(res))
    bad = {x: res[x] for x in labels
           if res[x]["cls"] is None or res[x]["errno"] != errno.ENOMEM or res[x]["left_behind"]
           or "shmat" not in res[x]["msg"]}
    assert bad == {}, bad


def test_semaphore_limits(reliability) -> None:
    res = run_in_namespace("sem")
    failing = [label for label in res if label.startswith(("set beyond", "create beyond"))
               or "beyond SEMMNI" in label]
    reliability(attempts=len(failing) + 8, leaks=leaks(res))
    assert res["set of SEMMSL"]["cls"] is None and res["Lock within SEMMNS"]["cls"] is None
    assert limit_failures(res, ["set beyond SEMMSL", "create beyond SEMMSL"], "kernel.sem",
                          errno.EINVAL) == {}
    assert limit_failures(res, ["set beyond SEMMNS"] + [x for x in failing if "SEMMNI" in x],
                          "kernel.sem", errno.ENOSPC) == {}
    assert res["op of SEMOPM"]["cls"] is None
    semopm = [x for x in res if x.startswith("op beyond SEMOPM")]
    assert len(semopm) == 4
    assert limit_failures(res, semopm, "kernel.sem", errno.E2BIG) == {}
    assert all(res[x]["elapsed"] < 5.0 for x in semopm), "a refused op waited for its timeout"
    assert res["values"]["values"] == [1] * 6
    # SEMOPM 1: either the set is made, or LimitError names kernel.sem; never a leak.
    for label in ("Semaphore when SEMOPM is 1", "Lock when SEMOPM is 1"):
        r = res[label]
        assert not r["left_behind"] or r["cls"] is None, r
        assert r["cls"] is None or (r["cls"] == "LimitError" and "kernel.sem" in r["msg"]), r


def test_message_queue_limits(reliability) -> None:
    res = run_in_namespace("msg")
    labels = ["queue beyond msgmni", "MessageQueue.create beyond msgmni",
              "create-or-open beyond msgmni"]
    assert limit_failures(res, labels, "kernel.msgmni", errno.ENOSPC) == {}
    assert res["max_bytes"]["max_bytes"] == 1024
    too_big = [x for x in res if x.startswith("send beyond max_bytes")]
    reliability(attempts=len(labels) + len(too_big) + 3, leaks=leaks(res))
    for label in too_big:
        r = res[label]
        # At once: not a hang (the guard), not the 5 s timeout.
        assert r["cls"] == "ValueError" and r["elapsed"] < 5.0, r
        assert "max_bytes is 1024" in r["msg"] and "kernel.msgmnb" in r["msg"], r
    nowait, timed = res["send to a full queue, nowait"], res["send to a full queue, timeout"]
    assert nowait["cls"] == "QueueFullError" and nowait["elapsed"] < 0.3, nowait
    assert timed["cls"] == "QueueFullError" and 0.3 <= timed["elapsed"] < 5.0, timed
    assert res["messages"] == {"messages": 4, "first": "y"}
    assert res["send after room was made"]["cls"] is None


def test_demo_leaves_nothing_when_an_object_cannot_be_created(reliability) -> None:
    """`shmsem demo` promises that everything it creates is removed.  Its
    objects are created in a row before its try/finally, so when the second
    or third one fails (SEMMNI=1: the second semaphore; shmmni=1: the Mailbox
    after the Channel), the first ones stay behind.  Library bug today."""
    res = run_in_namespace("demo")
    runs = [r for label, r in res.items() if label.startswith("demo")]
    reliability(runs=len(runs), leaked_objects=sum(sum(r["left"].values()) for r in runs))
    for r in runs:
        assert r["rc"] == 1 and "kernel.s" in r["stderr"], r
    assert [r["left"] for r in runs] == [{"shm": 0, "sem": 0, "msg": 0}] * 2, runs
