"""Removal under load: `ipcrm` (util-linux) and `shmsem rm` take a segment, a
semaphore set or a message queue away while other processes block on it or
stream through it.

The outcomes asserted, which are Linux's and shmsem's documented ones:

* A semaphore set or a queue removed (IPC_RMID): every process blocked on it
  wakes with RemovedError (EIDRM), and every process streaming through it gets
  RemovedError at its next call (the id is now invalid: EINVAL, mapped to
  RemovedError).  Promptly: a timed call does not wait out its timeout.
* A segment removed: it is only *marked* for removal.  Its key is free at
  once (open by key raises NotFoundError, a create-or-open makes a new
  segment), /proc shows key 0 and the SHM_DEST bit, and every process
  attached keeps using its mapping: Channel producers and consumers,
  Mailbox writers and readers and raw frame users go on as if nothing
  happened, and a consumer blocked in get() is woken by a later put.  Linux
  also lets a process attach a removed segment by id while it is still
  attached somewhere (shmctl(2), NOTES), so Channel.from_id still works.
  The segment disappears with its last detach; from_id then raises
  NotFoundError.

Removal is done by key with one tool and by id with the other.  Every child
reports how it ended on stdout, and must exit by itself with status 0 (not a
negative status: killed by a signal).  No process may hang: each report is
awaited with a bound far shorter than the timeouts the timed calls use.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import random
import select
import subprocess
import sys
import time
from typing import Any

import pytest
from helpers_faults import WAIT, child_code, decode, emit, encode, shm_row

import shmsem
from shmsem import Channel, Lock, Mailbox, MessageQueue, SemaphoreSet, SharedMemory
from shmsem.errors import format_key

#: Timed calls in the children use this timeout: a report that arrives long
#: before it shows the call honoured the removal, not its timeout.
LONG = 120.0
#: Each report must arrive within this bound after the removal (a hang bound).
REPORT_BOUND = 15.0

TOOLS = ["ipcrm-by-id", "shmsem-rm-by-key"]


def remove_with(tool: str, kind: str, objects: list[tuple[int, int]]) -> str:
    """Remove (key, id) objects of kind shm/sem/msg with the tool; returns its stdout."""
    if tool == "ipcrm-by-id":
        flag = {"shm": "-m", "sem": "-s", "msg": "-q"}[kind]
        argv = ["ipcrm"]
        for _key, ident in objects:
            argv += [flag, str(ident)]
    else:
        argv = [sys.executable, "-m", "shmsem", "rm", "--type", kind]
        argv += [format_key(key) for key, _ident in objects]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, check=False)
    assert r.returncode == 0, f"{argv}: rc={r.returncode} {r.stdout} {r.stderr}"
    return r.stdout


def stdin_says_stop() -> bool:
    return bool(select.select([sys.stdin], [], [], 0)[0])


def outcome(e: BaseException) -> dict[str, Any]:
    return {"outcome": type(e).__name__, "oserror": isinstance(e, OSError),
            "errno": getattr(e, "errno", None), "msg": str(e)[:200]}


# ---------------------------------------------------------------------------
# Children: semaphore sets


def sem_blocked(semid: int, call: str) -> None:
    s = SemaphoreSet.from_id(semid)
    lock = Lock.from_id(semid)  # a Lock is member 0 of its set, with SEM_UNDO
    calls = {
        "acquire()": lambda: s[0].acquire(),
        "acquire(timeout)": lambda: s[0].acquire(timeout=LONG),
        "op() on two members": lambda: s.op([(0, -1), (3, -1)]),
        "op(timeout, undo)": lambda: s.op([(0, -1)], timeout=LONG, undo=True),
        "wait_zero()": lambda: s[1].wait_zero(),
        "wait_zero(timeout)": lambda: s[1].wait_zero(timeout=LONG),
        "Lock.acquire()": lambda: lock.acquire(),
        "Lock.acquire(timeout)": lambda: lock.acquire(timeout=LONG),
    }
    emit({"ready": os.getpid()})
    try:
        got = calls[call]()
    except BaseException as e:  # noqa: BLE001 - reported to the test
        emit(outcome(e))
    else:
        emit({"outcome": f"returned {got!r}"})


def sem_streamer(semid: int, how: str) -> None:
    s = SemaphoreSet.from_id(semid)
    sem = s[2]
    n = 0
    emit({"ready": os.getpid()})
    try:
        while True:
            if how == "acquire/release":
                if sem.acquire(timeout=LONG):
                    sem.release()
            else:
                s.op([(2, -1)], undo=True, timeout=LONG)
                s.op([(2, 1)], undo=True)
            n += 1
    except BaseException as e:  # noqa: BLE001 - reported to the test
        emit({**outcome(e), "ops": n})


SEM_BLOCKED = ["acquire()", "acquire(timeout)", "op() on two members", "op(timeout, undo)",
               "wait_zero()", "wait_zero(timeout)", "Lock.acquire()", "Lock.acquire(timeout)"]
SEM_STREAMERS = ["acquire/release", "acquire/release", "op(undo)"]


@pytest.mark.parametrize("tool", TOOLS)
def test_semaphore_set_removed_under_load(child, unique_key, reliability, tool) -> None:
    # Member 0 at 0 (acquirers and the Lock block), 1 at 1 (wait_zero blocks),
    # 2 at 1 (streamers pass it around), 3 at 0.
    key = unique_key()
    sset = SemaphoreSet.create(key, 4, values=[0, 1, 1, 0])
    try:
        kids = [(call, child(child_code("test_removal_under_load", "sem_blocked", sset.id, call)))
                for call in SEM_BLOCKED]
        kids += [(f"streamer {how}", child(child_code("test_removal_under_load", "sem_streamer",
                                                     sset.id, how)))
                 for how in SEM_STREAMERS]
        for _, c in kids:
            assert "ready" in json.loads(c.readline(timeout=WAIT))
        # Blocked means counted by the kernel as a waiter: six on member 0
        # (a process blocked in a multi-member op counts once, where it
        # blocks), two waiting for member 1 to reach zero.
        deadline = time.monotonic() + WAIT
        while True:
            waiting = (sset[0].ncnt, sset[1].zcnt)
            if waiting == (6, 2) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert waiting == (6, 2), f"(ncnt of 0, zcnt of 1) is {waiting}, not (6, 2)"
        time.sleep(0.2)  # let the streamers run
        t0 = time.monotonic()
        remove_with(tool, "sem", [(key, sset.id)])
        reports = {}
        latency = 0.0
        for name, c in kids:
            rep = json.loads(c.readline(timeout=REPORT_BOUND))
            latency = max(latency, time.monotonic() - t0)
            reports[name] = rep
            assert c.wait() == 0, f"{name}: exit status {c.proc.returncode}"
    finally:
        try:
            sset.remove()
        except shmsem.RemovedError:
            pass

    ops = sum(r.get("ops", 0) for r in reports.values())
    reliability(processes=len(kids), blocked=len(SEM_BLOCKED), streaming=len(SEM_STREAMERS),
                streamed_ops=ops, seconds_to_last_report=round(latency, 3))
    wrong = {n: r for n, r in reports.items() if r["outcome"] != "RemovedError" or not r["oserror"]}
    assert wrong == {}, wrong
    for name in SEM_BLOCKED:  # woken from their sleep by the removal: EIDRM
        assert reports[name]["errno"] == errno.EIDRM, (name, reports[name])
    assert all(reports[f"streamer {h}"]["ops"] > 0 for h in SEM_STREAMERS), reports


# ---------------------------------------------------------------------------
# Children: message queues

BODY = bytes(range(256)) * 4


def msg_sender(msqid: int, who: int, timed: bool) -> None:
    q = MessageQueue.from_id(msqid)
    rng = random.Random(who)
    seq = 0
    emit({"ready": os.getpid()})
    try:
        while True:
            q.send(encode(who, seq, BODY[: rng.randint(0, 200)]), timeout=LONG if timed else None)
            seq += 1
    except BaseException as e:  # noqa: BLE001 - reported to the test
        emit({**outcome(e), "sent": seq})


def msg_receiver(msqid: int, mtype: int, timed: bool) -> None:
    q = MessageQueue.from_id(msqid)
    got: dict[int, list[int]] = collections.defaultdict(list)
    errors = []
    emit({"ready": os.getpid()})
    try:
        while True:
            data, t = q.receive(mtype, timeout=LONG if timed else None)
            try:
                who, seq = decode(data)
                got[who].append(seq)
            except ValueError as e:
                errors.append(str(e))
            if t != 1:
                errors.append(f"type {t}")
            time.sleep(0.0005)  # slower than the senders: they block on a full queue
    except BaseException as e:  # noqa: BLE001 - reported to the test
        emit({**outcome(e), "got": got, "errors": errors[:5]})


MSG_CHILDREN = [
    ("sender untimed", "msg_sender", (1, False)),
    ("sender timed", "msg_sender", (2, True)),
    ("receiver untimed", "msg_receiver", (1, False)),
    ("receiver timed", "msg_receiver", (1, True)),
    ("receiver of type 99, untimed", "msg_receiver", (99, False)),
    ("receiver of type 99, timed", "msg_receiver", (99, True)),
]


@pytest.mark.parametrize("tool", TOOLS)
def test_message_queue_removed_under_load(child, unique_key, reliability, tool) -> None:
    key = unique_key()
    q = MessageQueue.create(key)
    try:
        q.max_bytes = 2048  # small: the senders keep filling it and blocking
        kids = [(name, child(child_code("test_removal_under_load", fn, q.id, *args)))
                for name, fn, args in MSG_CHILDREN]
        for _, c in kids:
            assert "ready" in json.loads(c.readline(timeout=WAIT))
        deadline = time.monotonic() + WAIT
        while q.stat().current_messages == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        streamed = q.stat()
        t0 = time.monotonic()
        remove_with(tool, "msg", [(key, q.id)])
        reports = {}
        latency = 0.0
        for name, c in kids:
            reports[name] = json.loads(c.readline(timeout=REPORT_BOUND))
            latency = max(latency, time.monotonic() - t0)
            assert c.wait() == 0, f"{name}: exit status {c.proc.returncode}"
    finally:
        try:
            q.remove()
        except shmsem.RemovedError:
            pass

    wrong = {n: r for n, r in reports.items() if r["outcome"] != "RemovedError" or not r["oserror"]}
    assert wrong == {}, wrong
    sent = {1: reports["sender untimed"]["sent"], 2: reports["sender timed"]["sent"]}
    delivered: dict[int, list[int]] = collections.defaultdict(list)
    for name, r in reports.items():
        if "got" in r:
            assert r["errors"] == [], (name, r["errors"])
            for who, seqs in r["got"].items():
                assert seqs == sorted(set(seqs)), f"{name}: sender {who} out of order"
                delivered[int(who)].extend(seqs)
    for who, seqs in delivered.items():
        dup = [s for s, n in collections.Counter(seqs).items() if n > 1]
        assert dup == [], f"sender {who}: delivered twice: {dup[:10]}"
        # What a sender got back as sent was sent: at most the call in flight
        # at the removal is missing from its count.
        assert max(seqs) < sent[who], (who, max(seqs), sent[who])
    assert reports["receiver of type 99, untimed"]["got"] == {}
    assert sum(sent.values()) > 0 and delivered
    reliability(processes=len(kids), messages=sum(len(s) for s in delivered.values()),
                queued_at_removal=streamed.current_messages, seconds_to_last_report=round(latency, 3))


# ---------------------------------------------------------------------------
# Children: segments


def ch_producer(shmid: int, who: int) -> None:
    ch = Channel.from_id(shmid)
    rng = random.Random(who)
    seq = 0
    emit({"ready": os.getpid()})
    while not (seq % 64 == 0 and stdin_says_stop()):
        ch.put_bytes(encode(who, seq, BODY[: rng.randint(0, 1000)]), timeout=WAIT)
        seq += 1
    ch.put_bytes(b"STOP", timeout=WAIT)
    ch.close()
    emit({"sent": seq})


def ch_consumer(shmid: int) -> None:
    ch = Channel.from_id(shmid)
    seqs: list[int] = []
    errors = []
    emit({"ready": os.getpid()})
    while True:
        m = ch.get_bytes(timeout=WAIT)
        if m == b"STOP":
            break
        try:
            seqs.append(decode(m)[1])
        except ValueError as e:
            errors.append(str(e))
    ch.close()
    emit({"got": len(seqs), "in_order": seqs == list(range(len(seqs))), "errors": errors[:5]})


def ch_waiter(shmid: int) -> None:
    """Blocks on an empty channel across the removal, then answers."""
    ch = Channel.from_id(shmid)
    emit({"ready": os.getpid()})
    m = ch.get_bytes(timeout=LONG)
    ch.put_bytes(b"reply to " + m, timeout=WAIT)
    ch.close()
    emit({"got": m.decode()})


def mb_writer(shmid: int) -> None:
    mb = Mailbox.from_id(shmid)
    n = 0
    emit({"ready": os.getpid()})
    while not (n % 64 == 0 and stdin_says_stop()):
        mb.publish(encode(7, n, BODY[: n % 1000]))
        n += 1
    last = mb.seq
    mb.close()
    emit({"published": n, "last": last})


def mb_reader(shmid: int) -> None:
    mb = Mailbox.from_id(shmid)
    last, reads, errors = 0, 0, []
    emit({"ready": os.getpid()})
    while not stdin_says_stop():
        got = mb.wait(last, timeout=0.1)
        if got is None:
            continue
        seq, value = got
        reads += 1
        if seq <= last:
            errors.append(f"seq went from {last} to {seq}")
        try:
            decode(value)
        except ValueError as e:
            errors.append(str(e))
        last = seq
    mb.close()
    emit({"reads": reads, "errors": errors[:5]})


def frames(shmid: int) -> None:
    """Raw SharedMemory.write/read of large frames on a private segment."""
    shm = SharedMemory.from_id(shmid)
    n, errors = 0, []
    emit({"ready": os.getpid()})
    while not stdin_says_stop():
        data = os.urandom(64) * (1 + n % 4096)
        shm.write(data)
        if shm.read() != data:
            errors.append(f"frame {n} read back wrong")
        n += 1
    shm.detach()
    emit({"frames": n, "errors": errors[:5]})


def late_joiner(shmid: int, key: int) -> None:
    """Starts after the removal: by key it is gone, by id it still attaches."""
    out: dict[str, Any] = {}
    try:
        Channel.open(key)
        out["open_by_key"] = "opened"
    except BaseException as e:  # noqa: BLE001 - reported to the test
        out["open_by_key"] = type(e).__name__
    ch = Channel.from_id(shmid)
    out["from_id"] = ch.stats().put_count > 0
    ch.close()
    emit(out)


@pytest.mark.parametrize("tool", TOOLS)
def test_segments_removed_under_load(child, unique_key, reliability, tool) -> None:
    keys = {name: unique_key() for name in ("stream", "idle", "mailbox", "frames")}
    stream = Channel.create(keys["stream"], 1 << 16)
    idle = Channel.create(keys["idle"], 4096)
    mb = Mailbox.create(keys["mailbox"], 1024)
    raw = SharedMemory.create(keys["frames"], (64 * 4096) + 4)
    handles: dict[str, Any] = {"stream": stream, "idle": idle, "mailbox": mb, "frames": raw}
    try:
        kids = {
            "producer": child(child_code("test_removal_under_load", "ch_producer", stream.id, 1)),
            "consumer": child(child_code("test_removal_under_load", "ch_consumer", stream.id)),
            "waiter": child(child_code("test_removal_under_load", "ch_waiter", idle.id)),
            "writer": child(child_code("test_removal_under_load", "mb_writer", mb.id)),
            "reader": child(child_code("test_removal_under_load", "mb_reader", mb.id)),
            "frames": child(child_code("test_removal_under_load", "frames", raw.id)),
        }
        for c in kids.values():
            assert "ready" in json.loads(c.readline(timeout=WAIT))
        deadline = time.monotonic() + WAIT
        while not idle.stats().consumers_waiting and time.monotonic() < deadline:
            time.sleep(0.005)
        assert idle.stats().consumers_waiting, "the waiter never slept"
        time.sleep(0.2)
        before = {"put_count": stream.stats().put_count, "mb_seq": mb.seq}

        out = remove_with(tool, "shm", [(keys[n], h.id) for n, h in handles.items()])
        # Marked for removal, still there for those attached; the keys are free.
        for name, h in handles.items():
            row = shm_row(h.id)
            assert row is not None and row["key"] == 0 and row["perms"] & 0o1000, (name, row)
            assert row["nattch"] >= 2, (name, row)
            assert SharedMemory.from_id(h.id).stat().removed
        with pytest.raises(shmsem.NotFoundError):
            Channel.open(keys["stream"])
        with pytest.raises(shmsem.NotFoundError):
            Mailbox.open(keys["mailbox"])
        with pytest.raises(shmsem.NotFoundError):
            SharedMemory.open(keys["frames"])
        fresh = Channel(keys["stream"], 4096)  # create-or-open: a new segment
        try:
            assert fresh.created and fresh.id != stream.id
        finally:
            fresh.close()
        if tool == "shmsem-rm-by-key":
            assert out.count("still attached") == len(handles), out

        late = child(child_code("test_removal_under_load", "late_joiner", stream.id, keys["stream"]))
        assert json.loads(late.readline(timeout=WAIT)) == {"open_by_key": "NotFoundError",
                                                           "from_id": True}
        assert late.wait() == 0

        # The waiter, asleep through the removal, is woken by a put.
        idle.put_bytes(b"after removal")
        assert json.loads(kids["waiter"].readline(timeout=WAIT)) == {"got": "after removal"}
        assert idle.get_bytes(timeout=WAIT) == b"reply to after removal"

        # Traffic goes on.
        deadline = time.monotonic() + WAIT
        while (stream.stats().put_count <= before["put_count"] + 1000
               or mb.seq <= before["mb_seq"] + 100) and time.monotonic() < deadline:
            time.sleep(0.01)
        for name in ("producer", "writer", "reader", "frames"):
            kids[name].send("stop")
        reports = {name: json.loads(c.readline(timeout=WAIT)) for name, c in kids.items()
                   if name != "waiter"}
        for name, c in kids.items():
            assert c.wait() == 0, f"{name}: exit status {c.proc.returncode}"
        after = {"put_count": stream.stats().put_count, "mb_seq": mb.seq}
    finally:
        for h in handles.values():
            h.close()

    # Gone with the last detach.
    for name, h in handles.items():
        assert shm_row(h.id) is None, name
        with pytest.raises(shmsem.NotFoundError):
            SharedMemory.from_id(h.id)

    reliability(processes=len(kids) + 1, messages=reports["consumer"]["got"],
                published=reports["writer"]["published"], frames=reports["frames"]["frames"],
                messages_after_removal=after["put_count"] - before["put_count"],
                published_after_removal=after["mb_seq"] - before["mb_seq"])
    assert after["put_count"] > before["put_count"] + 1000, "the channel stopped after the removal"
    assert after["mb_seq"] > before["mb_seq"] + 100, "the mailbox stopped after the removal"
    assert reports["consumer"] == {"got": reports["producer"]["sent"], "in_order": True,
                                   "errors": []}
    assert reports["reader"]["errors"] == [] and reports["reader"]["reads"] > 0
    assert reports["writer"]["last"] == reports["writer"]["published"]
    assert reports["frames"]["errors"] == [] and reports["frames"]["frames"] > 0
