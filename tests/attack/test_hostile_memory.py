"""Shared memory is hostile input.

A peer that can attach a segment can store anything into it.  Here a hostile
writer process does so -- random bytes anywhere, adversarial values in the
fields of docs/protocol.md, values held or churned forever, lock words naming
live or dead threads or marked FUTEX_OWNER_DIED, the locks' robust-list links
aimed at the victims' own nodes, words and list heads -- while victim
processes use the same Channel, Mailbox or SharedMemory.  Whatever it writes, a victim must:

* only ever see FormatError / FrameError (or queue.Empty / queue.Full when a
  timeout expires), never another exception and never a crash (a negative exit
  status; under the ASan/UBSan build, any sanitizer report);
* return only payloads within its private capacity;
* return from every call within a bound (each call has a timeout, or a SIGALRM
  bound where the API has none), and keep answering: a watchdog thread in the
  victim ticks every 10 ms, and a long gap means the GIL was held;
* keep its allocations bounded: the tracemalloc peak (which counts every
  buffer the C core allocates) and the growth of anonymous RSS stay under
  4x the segment size plus a fixed margin;
* work again, exactly, once the corruption is repaired (the recovery phase
  after each attack), and be undisturbed, exactly, by fields it must not
  depend on once open.

The victims and the hostile writer live in helpers_hostile.py; each is its own
process, started with this environment (a preloaded sanitizer runtime stays).
A victim serves many cases in a row, so that process start-up stays a small
part of the run time.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from typing import Any, Callable

import helpers_hostile as H
import pytest

from shmsem import Channel, Mailbox, SharedMemory

CAP = 16384  # Channel ring and Mailbox capacity used here
ATTACK_SECONDS = 1.0
GAP_LIMIT = 5.0  # a watchdog gap this long means the GIL was held
CALL_LIMIT = 10.0  # a call this long did not honour its bound
TRACED_MARGIN = 8 << 20
RSS_MARGIN = (768 << 20) if H.under_asan() else (64 << 20)  # ASan keeps a quarantine
RECOVER_N = 60

Start = Callable[[dict[str, Any]], H.Proc]


# ---------------------------------------------------------------------------
# Fixtures and drivers


@pytest.fixture
def procs() -> Iterator[Start]:
    """Start helper roles; every one is stopped and killed at teardown."""
    started: list[H.Proc] = []

    def start(spec: dict[str, Any]) -> H.Proc:
        p = H.start_role(spec)
        started.append(p)
        return p

    yield start
    for p in started:
        p.send("stop")
    for p in started:
        p.close()


@pytest.fixture
def objects() -> Iterator[list[Any]]:
    """Channels, Mailboxes, raw attaches and views to close at teardown (a
    Channel or Mailbox made here is its segment's owner: closing removes it)."""
    made: list[Any] = []
    yield made
    for obj in reversed(made):
        try:
            if isinstance(obj, H.Words):
                obj.release()
            else:
                obj.close()
        except Exception as e:  # noqa: BLE001 - teardown must go on
            print(f"teardown: closing {obj!r} failed: {e!r}")


def victim(procs: Start, kind: str, shmid: int, seg_size: int, **spec: Any) -> H.Proc:
    p = procs({"role": "victim", "kind": kind, "shmid": shmid, "seg_size": seg_size,
               "seed": random.randrange(1 << 30), **spec})
    p.expect("ready", 60)
    return p


def hostile(procs: Start, shmid: int, **spec: Any) -> H.Proc:
    p = procs({"role": "hostile", "shmid": shmid, "seed": random.randrange(1 << 30), **spec})
    p.expect("started", 60)
    return p


def stop_hostile(p: H.Proc) -> dict[str, Any]:
    p.send("stop")
    stopped = p.expect("stopped", 30)
    H.check_exit(p, 30)
    return stopped


def watch_alive(ps: list[H.Proc], seconds: float) -> None:
    """Sleep, failing at once if one of the processes dies meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for p in ps:
            if p.proc.poll() is not None:
                H.check_exit(p, 5)
                raise H.ChildFailure(p, "exited during the attack")
        time.sleep(0.05)


def finish(p: H.Proc, timeout: float = 90) -> dict[str, Any]:
    """Stop a victim and return its summary, after checking that it exited
    cleanly and kept every bound: no unexpected exception, no GIL hold, no
    endless call, bounded memory."""
    p.send("stop")
    summary = p.expect("summary", timeout)
    H.check_exit(p, 30)
    seg = summary["seg_size"]
    who = summary["who"]
    assert not summary["unexpected"], (
        f"{who}: calls failed in ways the contract does not allow:\n"
        + "\n".join(summary["unexpected"]) + f"\ncounts: {summary['counts']}")
    assert summary["max_gap"] < GAP_LIMIT, (
        f"{who}: its watchdog thread was starved for {summary['max_gap']:.1f} s: "
        f"the GIL was held (longest call: {summary['max_call_label']})")
    assert summary["max_call"] < CALL_LIMIT, (
        f"{who}: {summary['max_call_label']} took {summary['max_call']:.1f} s, beyond its bound")
    assert summary["traced_peak"] < 4 * seg + TRACED_MARGIN, (
        f"{who}: Python-level allocations peaked at {summary['traced_peak']} bytes for a "
        f"{seg}-byte segment")
    assert summary["rss_growth"] < 4 * seg + RSS_MARGIN, (
        f"{who}: anonymous RSS grew by {summary['rss_growth']} bytes for a {seg}-byte segment")
    return summary


def count(counts: dict[str, int], suffix: str) -> int:
    return sum(v for k, v in counts.items() if k.endswith(suffix))


class Rig:
    """A Channel (or Mailbox) made here, a raw attach for the test's own
    stores, and two victims in other processes: consumer and producer (reader
    and writer).  Each case: hostile writer, attack, stop, repair, recovery."""

    def __init__(self, procs: Start, objects: list[Any], kind: str) -> None:
        self.procs, self.kind = procs, kind
        if kind == "channel":
            self.obj: Any = Channel.create(None, CAP)
            roles = ("channel-consumer", "channel-producer")
        else:
            self.obj = Mailbox.create(None, CAP)
            roles = ("mailbox-reader", "mailbox-writer")
        objects.append(self.obj)
        self.raw = SharedMemory.from_id(self.obj.id)
        objects.append(self.raw)
        self.w = H.Words(self.raw.buf)
        objects.append(self.w)
        self.header = bytes(self.w.buf[0:64])
        self.stride = self.w.get64(H.CELL_STRIDE)
        self.locks = H.CH_LOCKS if kind == "channel" else H.MB_LOCKS
        self.epoch = 0
        self.victims = [victim(procs, role, self.obj.id, self.raw.size) for role in roles]

    def pointers(self) -> list[int]:
        """Addresses in the victims, as they map the segment now, that a
        hostile "next" pointer may aim at: the segment, each lock's word and
        node, and each victim's robust-list head."""
        out = []
        for v in self.victims:
            at = [o for o in v.seen if o.get("t") in ("ready", "reopened") and "addr" in o][-1]
            a = at["addr"]
            out += [a, at["robust_head"]]
            out += [a + lock + f for lock in self.locks
                    for f in (H.LOCK_WORD, H.LOCK_LINKS, H.LOCK_LINKS + 8)]
        return out

    # -- repairs: a consistent header, at positions no cached value is near --

    def repair(self) -> None:
        w = self.w
        w.buf[0:64] = self.header
        # The locks: free, no count, no node (no victim holds one: they are
        # all between calls).
        for lock in self.locks:
            w.buf[lock:lock + H.LOCK_SIZE] = bytes(H.LOCK_SIZE)
        if self.kind == "channel":
            self.epoch += 1
            # Positions only grow; a new epoch is far above anything cached.
            pos = (self.epoch << 44) | (1 << 40)
            w.set64(H.CH_HEAD, pos)
            w.set64(H.CH_TAIL, pos)
            for off in (H.CH_PUT_COUNT, H.CH_GET_COUNT):
                w.set64(off, 0)
            for off in (H.CH_CONSUMERS_WAITING, H.CH_PRODUCERS_WAITING):
                w.set32(off, 0)
        else:
            w.set32(H.MB_WAITING, 0)
            for cell in (H.MB_CELLS, H.MB_CELLS + self.stride):
                for f in (H.CELL_LOCK_SEQ, H.CELL_SEQ, H.CELL_LENGTH):
                    w.set64(cell + f, 0)
            w.set64(H.MB_STATE, 0)

    def current_cell(self) -> int:
        return H.MB_CELLS + (self.w.get64(H.MB_STATE) & 1) * self.stride

    def all(self, cmd: str, answer: str, victims: list[H.Proc] | None = None) -> list[dict[str, Any]]:
        vs = self.victims if victims is None else victims
        for v in vs:
            v.send(cmd)
        return [v.expect(answer, 90) for v in vs]

    def case(self, spec: dict[str, Any], *, reopen: bool, active: list[int] | None = None) -> dict[str, Any]:
        """Start the hostile writer, (re)open the victims while it writes if
        ``reopen`` (so that they start from what it holds), attack, stop,
        repair, recover.  Returns the phase counts of each victim."""
        bad = hostile(self.procs, self.raw.id, **spec)
        vs = [self.victims[i] for i in (active if active is not None else (0, 1))]
        if reopen:
            for r in self.all("reopen", "reopened", vs):
                assert r["ok"], r
        for v in vs:
            v.send("attack")
        watch_alive(self.victims + [bad], ATTACK_SECONDS)
        paused = self.all("pause", "paused", vs)
        stopped = stop_hostile(bad)
        self.repair()
        self.all("reopen", "reopened")
        recovered = self.all(f"recover {RECOVER_N}", "recovered")
        for r in recovered:
            assert r["n"] == RECOVER_N, (
                f"after the repair, {r['who']} recovered {r['n']} of {RECOVER_N}: "
                f"{self.victims[0].describe()}")
        hits = {int(k): v for k, v in stopped["hits"].items()}
        return {"phases": paused, "writes": stopped["writes"], "hits": hits}

    def finish(self) -> list[dict[str, Any]]:
        return [finish(v) for v in self.victims]


# ---------------------------------------------------------------------------
# Random scribbling while in use


def lock_targets(lock: int) -> list[list[int]]:
    """Every field of a lock: the word, the count, both pointers of the
    links (the holder's node: a peer writes them, nobody reads them) and
    the reserved bytes."""
    return ([[lock + H.LOCK_WORD, 4], [lock + H.LOCK_RECOVERIES, 8],
             [lock + H.LOCK_LINKS, 8], [lock + H.LOCK_LINKS + 8, 8]]
            + [[lock + off, width] for off, width in H.LOCK_RESERVED])


def lock_pointer_fields(locks: list[int]) -> list[int]:
    """The offsets of the lock words and of the 8-byte halves of the links."""
    return [lock + f for lock in locks for f in (H.LOCK_WORD, H.LOCK_LINKS, H.LOCK_LINKS + 8)]


def channel_targets() -> list[list[int]]:
    t = [[H.MAGIC, 8], [H.VERSION, 4], [H.HEADER_SIZE, 4], [H.CAPACITY, 8],
         [H.CELL_STRIDE, 8], [H.CREATOR_PID, 4]]
    for lock in H.CH_LOCKS:
        t += lock_targets(lock)
    t += [[H.CH_TAIL, 8], [H.CH_HEAD, 8], [H.CH_PUT_COUNT, 8], [H.CH_GET_COUNT, 8],
          [H.CH_DATA_EVENT, 4], [H.CH_SPACE_EVENT, 4], [H.CH_CONSUMERS_WAITING, 4],
          [H.CH_PRODUCERS_WAITING, 4]]
    # Record headers: length and kind words at record-aligned spots.
    for at in (0, 8, 16, 24, 64, 128, CAP // 2, CAP - 16, CAP - 8):
        t += [[H.CH_RING + at, 4], [H.CH_RING + at + 4, 4]]
    return t


def mailbox_targets(stride: int) -> list[list[int]]:
    t = [[H.MAGIC, 8], [H.VERSION, 4], [H.HEADER_SIZE, 4], [H.CAPACITY, 8],
         [H.CELL_STRIDE, 8], [H.CREATOR_PID, 4]]
    t += lock_targets(H.MB_WRITER_LOCK)
    t += [[H.MB_STATE, 8], [H.MB_EVENT, 4], [H.MB_WAITING, 4]]
    for cell in (H.MB_CELLS, H.MB_CELLS + stride):
        t += [[cell + H.CELL_LOCK_SEQ, 8], [cell + H.CELL_SEQ, 8], [cell + H.CELL_LENGTH, 8]]
    return t


def body_targets(kind: str, stride: int) -> tuple[list[list[int]], list[int]]:
    """Fields a peer may legitimately write while using the object -- record
    headers, lock words, counts and links, futex and waiting words
    (channel), cell counters and lengths (mailbox) -- and the span of
    payload bytes."""
    if kind == "channel":
        t = [x for lock in H.CH_LOCKS for x in lock_targets(lock)[:4]]
        t += [[H.CH_DATA_EVENT, 4], [H.CH_SPACE_EVENT, 4], [H.CH_CONSUMERS_WAITING, 4],
              [H.CH_PRODUCERS_WAITING, 4]]
        t += [x for x in channel_targets() if x[0] >= H.CH_RING]
        return t, [H.CH_RING, H.CH_RING + CAP]
    t = [x for x in mailbox_targets(stride) if x[0] >= H.MB_CELLS]
    t += lock_targets(H.MB_WRITER_LOCK)[:4] + [[H.MB_EVENT, 4], [H.MB_WAITING, 4]]
    return t, [H.MB_CELLS, H.MB_CELLS + 2 * stride]


@pytest.mark.parametrize("kind", ["channel", "mailbox"])
def test_random_scribbles_while_in_use(procs, objects, reliability, kind) -> None:
    """Random stores while a consumer and a producer (a reader and a writer)
    keep calling.  Round 1: palette values at every field of the protocol and
    random bytes anywhere in the segment, as fast as a process can.  Round 2:
    only what peers write in use (record headers, lock and waiting words,
    cells), so that the victims keep exchanging messages between the damage.
    Each round ends with a repair and an exact recovery.

    Both rounds write every lock's word and both pointers of its links (the
    holder's robust-list node), aiming the pointers at the victims' own
    nodes, words, segment and robust-list heads, while the victims lock and
    unlock: shmsem never reads a pointer from shared memory, so nothing it
    stores there can crash a victim or make it follow a list anywhere."""
    rig = Rig(procs, objects, kind)
    if kind == "channel":
        for i in range(5):
            rig.obj.put_bytes(H.make_message(9, i, 40))
        everything = channel_targets()
    else:
        rig.obj.publish(H.make_message(4, 1, 100))
        everything = mailbox_targets(rig.stride)
    body, span = body_targets(kind, rig.stride)
    rounds = [("everything", {"mode": "random", "targets": everything,
                              "span": [0, rig.raw.size], "seed": 1}),
              ("in-use fields", {"mode": "random", "targets": body, "span": span, "seed": 2,
                                 "pace": 0.0002})]
    for name, spec in rounds:
        spec.update(pointers=rig.pointers(), locks=rig.locks)
        r = rig.case(spec, reopen=False)
        unhit = [off for off in lock_pointer_fields(rig.locks) if not r["hits"].get(off)]
        assert not unhit, f"{name}: the hostile writer never wrote the lock fields at {unhit}"
        phases = r["phases"]
        reliability(kind=kind, round=name, inputs=sum(sum(ph["phase"].values()) for ph in phases),
                    corruptions=r["writes"],
                    values_read=sum(ph["got"].get("values", 0) for ph in phases),
                    intact=sum(ph["got"].get("intact", 0) for ph in phases),
                    format_errors=sum(count(ph["phase"], ":FormatError") for ph in phases),
                    bounded_stalls=sum(count(ph["phase"], ":stalled") for ph in phases),
                    recovered=RECOVER_N, crashes=0)
    rig.finish()


# ---------------------------------------------------------------------------
# Adversarial values held forever (rewritten continuously) while in use


def _ring(pos: int) -> int:
    return H.CH_RING + pos % CAP


# Each case holds head and tail too, so that the victims' own stores cannot
# move the corruption out of their way.  (h, t): head and tail before.
CHANNEL_HELD: dict[str, Callable[[int, int], list[list[int]]]] = {
    "tail-head=capacity+8": lambda h, t: [[H.CH_HEAD, 8, h], [H.CH_TAIL, 8, h + CAP + 8]],
    "head-ahead-of-tail": lambda h, t: [[H.CH_HEAD, 8, t + 8], [H.CH_TAIL, 8, t]],
    "head-unaligned": lambda h, t: [[H.CH_HEAD, 8, h + 4], [H.CH_TAIL, 8, t]],
    "tail-unaligned": lambda h, t: [[H.CH_HEAD, 8, h], [H.CH_TAIL, 8, t + 4]],
    "length-0xffffffff": lambda h, t: [[H.CH_HEAD, 8, h], [H.CH_TAIL, 8, t],
                                       [_ring(h), 4, H.U32]],
    "length-0x7ffffff8": lambda h, t: [[H.CH_HEAD, 8, h], [H.CH_TAIL, 8, t],
                                       [_ring(h), 4, 0x7FFFFFF8]],
    "padding-0xfffffff0": lambda h, t: [[H.CH_HEAD, 8, h], [H.CH_TAIL, 8, t],
                                        [_ring(h), 4, 0xFFFFFFF0], [_ring(h) + 4, 4, 0]],
    "length-one-past-tail": lambda h, t: [[H.CH_HEAD, 8, h], [H.CH_TAIL, 8, t],
                                          [_ring(h), 4, t - h - 7]],
    "kind-garbage": lambda h, t: [[H.CH_HEAD, 8, h], [H.CH_TAIL, 8, t],
                                  [_ring(h) + 4, 4, 0xFFFFFF07]],
    "head-near-2**64-tail-0": lambda h, t: [[H.CH_HEAD, 8, H.U64 - 7], [H.CH_TAIL, 8, 0]],
    "both-at-2**64-8": lambda h, t: [[H.CH_HEAD, 8, H.U64 - 7], [H.CH_TAIL, 8, H.U64 - 7]],
}
# Every get must fail: the consumer must look exactly where the damage is.
CHANNEL_ALWAYS_DETECTED = {"tail-head=capacity+8", "head-ahead-of-tail", "head-unaligned",
                           "length-0xffffffff", "length-0x7ffffff8", "padding-0xfffffff0"}


def test_channel_adversarial_values_held(procs, objects, reliability) -> None:
    rig = Rig(procs, objects, "channel")
    problems = []
    for case, make in CHANNEL_HELD.items():
        rig.repair()
        for i in range(3):
            rig.obj.put_bytes(H.make_message(9, i, 40))
        h0, t0 = rig.w.get64(H.CH_HEAD), rig.w.get64(H.CH_TAIL)
        r = rig.case({"mode": "hold", "writes": make(h0, t0)}, reopen=True)
        cons, prod = r["phases"]
        fe = count(cons["phase"], ":FormatError")
        values = cons["got"].get("values", 0)
        if case in CHANNEL_ALWAYS_DETECTED and (fe == 0 or values):
            problems.append(f"{case}: the consumer saw {fe} FormatErrors and took {values} "
                            f"messages ({cons['phase']})")
        reliability(case=case, inputs=sum(cons["phase"].values()) + sum(prod["phase"].values()),
                    corruptions=r["writes"], values_read=values,
                    format_errors=fe + count(prod["phase"], ":FormatError"), crashes=0)
    rig.finish()
    assert not problems, "\n".join(problems)


def test_mailbox_adversarial_values_held(procs, objects, reliability) -> None:
    rig = Rig(procs, objects, "mailbox")
    cases: dict[str, Callable[[], list[list[int]]]] = {
        # The cell readers must use is "being written" forever.
        "current-cell-odd": lambda: [[rig.current_cell() + H.CELL_LOCK_SEQ, 8,
                                      rig.w.get64(rig.current_cell()) | 1]],
        "length-2**64-1": lambda: [[rig.current_cell() + H.CELL_LENGTH, 8, H.U64]],
        "length-2**63": lambda: [[rig.current_cell() + H.CELL_LENGTH, 8, 1 << 63]],
        "length-capacity+1": lambda: [[rig.current_cell() + H.CELL_LENGTH, 8, CAP + 1]],
        "state-max": lambda: [[H.MB_STATE, 8, H.U64]],
        "state-flips-cells": lambda: [[H.MB_STATE, 8, (7 << 1) | 1], [H.MB_STATE, 8, 8 << 1]],
    }
    problems = []
    for case, make in cases.items():
        rig.repair()
        rig.obj.publish(H.make_message(4, 1, 100))
        rig.obj.publish(H.make_message(4, 2, 200))
        writes = make()
        if case == "state-flips-cells":
            spec = {"mode": "cycle", "frames": [[x] for x in writes]}
        else:
            spec = {"mode": "hold", "writes": writes}
        # The writer publishes only where the state is what is attacked: a
        # publish moves the current cell away from one held corrupt.
        active = [0, 1] if case.startswith("state") else [0]
        r = rig.case(spec, reopen=True, active=active)
        rd = r["phases"][0]
        fe = count(rd["phase"], ":FormatError")
        values = rd["got"].get("values", 0)
        if not case.startswith("state") and (fe == 0 or values):
            problems.append(f"{case}: the reader saw {fe} FormatErrors and got {values} "
                            f"values ({rd['phase']})")
        reliability(case=case, inputs=sum(rd["phase"].values()), corruptions=r["writes"],
                    values_read=values, format_errors=fe, crashes=0)
    rig.finish()
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# Fields an open handle must not depend on: exact delivery while scribbled

HARMLESS = ["waiting-flags-set-forever", "waiting-flags-cleared-events-bumped",
            "header-scribble", "lock-links-scribbled"]


def harmless_spec(rig: Rig, mode: str) -> dict[str, Any]:
    rng = random.Random(5)
    common = [[H.MAGIC, 8], [H.VERSION, 4], [H.HEADER_SIZE, 4], [H.CAPACITY, 8],
              [H.CELL_STRIDE, 8], [H.CREATOR_PID, 4], [36, 4], [40, 8], [48, 8], [56, 8]]
    if rig.kind == "channel":
        flags = [H.CH_CONSUMERS_WAITING, H.CH_PRODUCERS_WAITING]
        events = [H.CH_DATA_EVENT, H.CH_SPACE_EVENT]
        # The common header (magic and capacity included: an open handle keeps
        # private copies), the counters, the futex words and reserved bytes.
        reserved = [[off, 8] for off in range(H.CH_PRODUCERS_WAITING + 4, H.CH_RING, 8)]
        scribble = common + [[H.CH_PUT_COUNT, 8], [H.CH_GET_COUNT, 8]] + reserved
    else:
        flags = [H.MB_WAITING]
        events = [H.MB_EVENT]
        scribble = common[:]
        for cell in (H.MB_CELLS, H.MB_CELLS + rig.stride):
            scribble += [[cell + off, 8] for off in range(24, H.CELL_DATA, 8)]
    scribble += [[e, 4] for e in events]
    if mode == "waiting-flags-set-forever":
        return {"mode": "hold", "writes": [[f, 4, 1] for f in flags]}
    if mode == "waiting-flags-cleared-events-bumped":
        frames = [[[f, 4, 0] for f in flags] + [[e, 4, rng.getrandbits(32)] for e in events]
                  for _ in range(16)]
        return {"mode": "cycle", "frames": frames}
    if mode == "lock-links-scribbled":
        # Everything of the locks but their words: the holder's node (aimed
        # at the victims' own nodes, words and robust-list heads), the count
        # and the reserved bytes.
        targets = [x for lock in rig.locks for x in lock_targets(lock)
                   if x[0] - lock != H.LOCK_WORD]
        return {"mode": "random", "targets": targets, "pointers": rig.pointers(),
                "locks": rig.locks}
    return {"mode": "random", "targets": scribble}


@pytest.mark.parametrize("kind", ["channel", "mailbox"])
def test_exact_while_fields_it_must_not_depend_on_are_scribbled(procs, objects, reliability,
                                                                kind) -> None:
    """Waiting flags set forever cost only syscalls; cleared forever (and the
    futex words bumped), only the bounded sleep slices; the common header,
    counters and reserved bytes, nothing; the locks' links (the holder's
    robust-list node, which only the kernel reads, when a holder dies), their
    recovery counts and reserved bytes, nothing, while every put, get and
    publish locks and unlocks.  Every message is delivered exactly
    and in order (every value read is intact and newer), and processes that
    open the object meanwhile get FormatError or a handle whose capacity fits
    the segment."""
    rig = Rig(procs, objects, kind)
    n = 300
    for mode in HARMLESS:
        bad = hostile(procs, rig.raw.id, **harmless_spec(rig, mode))
        opener = None
        if mode == "header-scribble":
            opener = victim(procs, "shm-opener", rig.raw.id, rig.raw.size, target=kind,
                            capacity=rig.obj.capacity)
            opener.send("attack")
        base = rig.obj.seq if kind == "mailbox" else 0
        done = rig.all(f"go {n} {base}", "done")
        stopped = stop_hostile(bad)
        if mode == "lock-links-scribbled":
            unhit = [off for off in lock_pointer_fields(rig.locks)[1::3]
                     + lock_pointer_fields(rig.locks)[2::3] if not stopped["hits"].get(str(off))]
            assert not unhit, f"the hostile writer never wrote the links at {unhit}"
        opened: dict[str, int] = {}
        if opener is not None:
            opener.send("pause")
            opened = opener.expect("paused", 60)["got"]
            finish(opener)
            assert opened.get("ok", 0) + opened.get("FormatError", 0) > 0, opened
        if kind == "channel":
            got, sent = done[0]["received"], done[1]["sent"]
        else:
            got, sent = done[0]["last"], done[1]["published"]
        assert sent == n and got == n, f"{mode}: {done}"
        reliability(kind=kind, mode=mode, messages=n, corruptions=stopped["writes"],
                    values_read=done[0].get("seen", n), losses=0, torn=0,
                    reopen_attempts=sum(opened.values()), crashes=0)
    rig.finish()


# ---------------------------------------------------------------------------
# Seqlock counters churned by a peer: Mailbox.read() has no timeout, so it
# must give up by itself


def test_mailbox_read_gives_up_on_a_churned_current_cell(procs, objects, reliability) -> None:
    """The current cell's counter keeps changing while the state does not.
    No writer of the protocol does that (writers fill the cell that is not
    current, then change the state), so it is corruption or a hostile peer.
    read() has no timeout: it must return or raise FormatError within a
    bound while this goes on, as it does for a counter stuck odd (after 1 s)
    -- not spin for as long as the peer likes.  Here the peer goes on for
    20 s and read() gets 6 s (then SIGALRM stops it)."""
    big = 1 << 20  # a large value: a long copy, which a churn always overlaps
    mb = Mailbox.create(None, big)
    objects.append(mb)
    raw = SharedMemory.from_id(mb.id)
    objects.append(raw)
    w = H.Words(raw.buf)
    objects.append(w)
    stride = w.get64(H.CELL_STRIDE)
    mb.publish(H.make_message(4, 1, big))
    probe = victim(procs, "mailbox-lockprobe", mb.id, raw.size, timeout=0.5, read_bound=6.0)
    problems = []
    for parity in ("odd", "even"):
        cell = H.MB_CELLS + (w.get64(H.MB_STATE) & 1) * stride
        counter = w.get64(cell + H.CELL_LOCK_SEQ)
        start = (counter | 1) + 2 if parity == "odd" else (counter & ~1) + 2
        bad = hostile(procs, raw.id, mode="churn", off=cell + H.CELL_LOCK_SEQ, start=start,
                      step=2, seconds=20)
        probe.send("churn")
        _, outcome, elapsed, _ = probe.expect("probe", 60)["results"][0]
        stopped = stop_hostile(bad)
        w.set64(cell + H.CELL_LOCK_SEQ, counter)
        reliability(parity=parity, corruptions=stopped["writes"], inputs=1,
                    seconds=elapsed, crashes=0)
        if outcome not in ("ok", "FormatError"):
            problems.append(
                f"{parity} counter: Mailbox.read() was still spinning after {elapsed} s "
                f"(stopped by SIGALRM, {outcome}) while a peer churned the current cell's "
                f"counter; the state never changed")
    finish(probe)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# Lock words: live holders that never release, words the kernel marked, churn


LOCK_CASES = ["live-robust-holder", "live-id-unlinked", "victim-own-id", "live-ids-churned",
              "dead-ids-churned", "owner-died", "owner-died-waiters", "owner-died-churned"]
# A word with an id and no FUTEX_OWNER_DIED is held (docs/protocol.md section
# 2), whoever it names: every call must wait, as long as its timeout says.
HELD = {"live-robust-holder", "live-id-unlinked", "victim-own-id", "live-ids-churned",
        "dead-ids-churned"}
# The kernel's mark of a holder that died: taken over at once, and counted.
TAKEN = {"owner-died", "owner-died-waiters", "owner-died-churned"}


def lock_case_spec(case: str, words: list[int], victim_tid: int) -> dict[str, Any]:
    W, DIED = H.FUTEX_WAITERS, H.FUTEX_OWNER_DIED
    if case == "live-robust-holder":
        # The hostile writer takes the locks as a peer of the protocol does
        # (its id in the word, the node on its robust list) and never lets go.
        return {"mode": "once", "writes": "SELF-ROBUST", "watch": words}
    if case == "live-id-unlinked":
        # Its id in the word, but no node on its list: the kernel will not
        # know when it dies.
        return {"mode": "once", "writes": "SELF", "watch": words}
    if case == "victim-own-id":
        return {"mode": "once", "writes": [[o, 4, victim_tid] for o in words], "watch": words}
    if case == "owner-died":
        return {"mode": "once", "writes": [[o, 4, DIED] for o in words], "watch": words}
    if case == "owner-died-waiters":
        return {"mode": "once", "writes": [[o, 4, DIED | W] for o in words], "watch": words}
    if case == "owner-died-churned":
        return {"mode": "cycle", "frames": [[[o, 4, v] for o in words] for v in (DIED, DIED | W)]}
    if case == "live-ids-churned":
        live = [os.getpid(), os.getppid(), victim_tid]  # pytest, its parent, the victim
        return {"mode": "cycle",
                "frames": [[[o, 4, v | w] for o in words] for v in live for w in (0, W)]}
    dead = H.dead_pid()
    return {"mode": "cycle",
            "frames": [[[o, 4, (dead - k) | w] for o in words] for k in range(8) for w in (0, W)]}


@pytest.mark.parametrize("kind", ["channel", "mailbox"])
def test_lock_held_by_someone_else(procs, objects, reliability, kind) -> None:
    """Against a lock it must not take -- a live peer holding it as the
    protocol says, a live process's id it never linked, the victim's own id,
    ids churned through live processes or dead ones: none carries
    FUTEX_OWNER_DIED, so all are held -- every call honours its timeout,
    never holds the GIL while waiting, and never steals the lock; publish()
    has no timeout and keeps waiting (interrupted here by SIGALRM) while
    readers go on undisturbed.  When the peer that linked its node dies, the
    kernel marks the word FUTEX_OWNER_DIED and the next call takes it over,
    counting one recovery per lock; a process that never linked its node
    dies and its lock stays held (nobody guesses from pids) until a human
    clears it.  Words with FUTEX_OWNER_DIED (with or without waiters, or
    churned) are taken at once and counted."""
    if kind == "channel":
        obj: Any = Channel.create(None, CAP)
        words = [lock + H.LOCK_WORD for lock in H.CH_LOCKS]
    else:
        obj = Mailbox.create(None, CAP)
        words = [lock + H.LOCK_WORD for lock in H.MB_LOCKS]
    objects.append(obj)
    raw = SharedMemory.from_id(obj.id)
    objects.append(raw)
    w = H.Words(raw.buf)
    objects.append(w)
    t = 0.4
    probe = victim(procs, f"{kind}-lockprobe", obj.id, raw.size, timeout=t)
    vtid = next(o for o in probe.seen if o.get("t") == "ready")["tid"]
    first = "put_bytes" if kind == "channel" else "publish"
    problems: list[str] = []

    def recoveries() -> int:
        return obj.stats().recoveries

    def states() -> list[int]:
        return [H.word_state(w.get32(o)) for o in words]

    def check_held(results: list[Any], say: str) -> None:
        out = {label: (outcome, elapsed) for label, outcome, elapsed, _ in results}
        if kind == "channel":
            for label in ("put_bytes", "put_many_bytes", "put_bytes_nowait", "put(block=False)"):
                if out[label][0] != "Full":
                    problems.append(f"{label} did not give up with queue.Full: {say}")
            for label in ("get_bytes", "get_many_bytes", "recv_into", "get_bytes_nowait",
                          "get(block=False)"):
                if out[label][0] != "Empty":
                    problems.append(f"{label} did not give up with queue.Empty: {say}")
            for label in ("put_bytes", "get_bytes", "put_many_bytes", "get_many_bytes",
                          "recv_into"):
                if out[label][1] < t * 0.95:
                    problems.append(f"{label} gave up before its {t} s timeout: {say}")
        elif out["publish"][0] != "Stalled":
            problems.append(f"publish() did not wait for the holder: {say}")

    for case in LOCK_CASES:
        if kind == "channel":
            obj.put_bytes(b"first")
        else:
            obj.publish(b"first")
        before = recoveries()
        bad = hostile(procs, raw.id, **lock_case_spec(case, words, vtid))
        probe.send("held")
        held = probe.expect("probe", 60)
        out = {label: (outcome, elapsed) for label, outcome, elapsed, _ in held["results"]}
        say = f"{kind} {case}: {held}"
        if case in TAKEN:
            # recv_into may find the queue drained by the calls before it.
            if out[first][0] != "ok" or any(o not in ("ok", "Empty") for o, _ in out.values()):
                problems.append(f"a lock marked FUTEX_OWNER_DIED was not taken: {say}")
            if case == "owner-died-churned":
                if held["recoveries"] < len(words):
                    problems.append(f"takeovers were not counted: {say}")
            elif held["recoveries"] != len(words):
                problems.append(f"{len(words)} takeovers counted as {held['recoveries']}: {say}")
        else:
            check_held(held["results"], say)
            if held["recoveries"]:
                problems.append(f"a held lock was counted as recovered: {say}")
        if kind == "mailbox" and any(out[k][0] != "ok" for k in ("read", "wait(seq-1)",
                                                                  "wait(seq)")):
            problems.append(f"a reader was disturbed by the writer lock: {say}")
        hostile_pid = bad.pid
        again = {"recoveries": 0}
        stopped = stop_hostile(bad)  # the holder dies, or stops churning
        if case in HELD and stopped.get("changed"):
            problems.append(f"{case}: a held lock was taken: {stopped['changed']}")
        if case == "live-robust-holder":
            # The kernel, not shmsem, says that the holder died.
            if states() != [H.FUTEX_OWNER_DIED] * len(words):
                problems.append(f"{case}: the kernel did not mark the dead holder's locks: "
                                f"{[hex(x) for x in states()]}")
        elif case == "live-id-unlinked":
            # Dead, but the kernel was never told: the lock stays held.
            probe.send("held")
            again = probe.expect("probe", 60)
            check_held(again["results"], f"after its death: {kind} {case}: {again}")
            if again["recoveries"] or states() != [hostile_pid] * len(words):
                problems.append(f"{case}: the lock of a dead process that never linked its node "
                                f"was taken: {again}, words {[hex(x) for x in states()]}")
        if case != "live-robust-holder":
            for o in words:  # only a human can clear these (or what the churn left)
                w.set32(o, 0)
        probe.send("released")
        after = probe.expect("probe", 60)
        for label, outcome, _, text in after["results"]:
            if outcome != "ok":
                problems.append(f"{case}: after the holder went away, {label}: {outcome} {text}")
        want = len(words) if case == "live-robust-holder" else 0
        if after["recoveries"] != want:
            problems.append(f"{case}: {after['recoveries']} takeovers counted after the holder "
                            f"went away, not {want}: {after}")
        seen = held["recoveries"] + again["recoveries"] + after["recoveries"]
        if recoveries() != before + seen:
            problems.append(f"{case}: the segment counts {recoveries() - before} takeovers, "
                            f"the victim saw {seen}")
        for o in words:
            w.set32(o, 0)
        reliability(kind=kind, case=case, inputs=len(held["results"]) + len(after["results"]),
                    corruptions=stopped["writes"],
                    recoveries=seen, crashes=0)
    finish(probe)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# SharedMemory frames: a header racing between valid and huge lengths


def test_frame_header_races_between_valid_and_huge(procs, objects, unique_key,
                                                   reliability) -> None:
    """A reader must get a payload of one of the lengths the header held,
    with the bytes that were there, or FrameError: never more than the
    segment, never a length it did not see."""
    size = 4096
    key = unique_key()
    shm = SharedMemory.create(key, size)
    objects.append(shm)
    shm.write_at(4, b"Z" * (size - 4))
    valid = [0, 1, 7, 100, size - 5, size - 4]
    invalid = [size - 3, size, 2**31 - 1, -1, -(2**31), -4096, 65536]
    frames = [[[0, 4, v & H.U32]] for v in valid + invalid]
    random.Random(3).shuffle(frames)
    bad = hostile(procs, shm.id, mode="cycle", frames=frames)
    readers = [victim(procs, "shm-frames", shm.id, size, valid=valid, fill="Z", key=key)
               for _ in range(2)]
    for r in readers:
        r.send("attack")
    watch_alive(readers + [bad], ATTACK_SECONDS)
    for r in readers:
        r.send("pause")
    paused = [r.expect("paused", 60) for r in readers]
    sums = [finish(r) for r in readers]
    stopped = stop_hostile(bad)
    frames_read = sum(p["got"].get("values", 0) for p in paused)
    frame_errors = sum(count(p["phase"], ":FrameError") for p in paused)
    assert frames_read > 0 and frame_errors > 0, paused
    reliability(corruptions=stopped["writes"], values_read=frames_read,
                frame_errors=frame_errors, inputs=sum(s["calls"] for s in sums), crashes=0)
