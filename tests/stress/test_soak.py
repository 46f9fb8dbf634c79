"""Soak: 4 producer and 4 consumer processes on one Channel for minutes.

Opt-in (``stress`` marker).  The duration comes from SHMSEM_SOAK_SECONDS
(default 180).  The long form and CI's short form are the same test::

    python -m pytest --run-stress tests/stress -k soak                          # 180 s
    SHMSEM_SOAK_SECONDS=20 python -m pytest --run-stress tests/stress -k soak   # CI, ~30 s

What it checks, and why the bounds are what they are:

* Nothing lost, duplicated or invented, and each producer's order kept: every
  seq a producer sent is taken exactly once, and each consumer sees each
  producer's seqs increasing (FIFO: of two messages one consumer takes, the
  older comes first).  Every payload is compared with what was sent.  These
  are exact: no tolerance.
* Throughput stays flat.  The parent reads the channel's own get counter at
  the end of each of WINDOWS windows (free for the workers), with the CPU
  time the eight workers used (/proc/<pid>/stat) and the time our CPUs sat
  idle (/proc/stat).  The last third's median must be at least FLAT_FACTOR
  (0.35) of the first third's, for messages per *available* CPU-second:
  workers' CPU plus idle CPU.  This is a check against leaks and slowdowns (a
  ring, lock or counter that degrades with use), not a speed target.  Why
  this measure: this 2-CPU machine is shared with other heavy test runs,
  which can take half of our CPU at any moment without anything being wrong
  with us; the CPU they take is neither ours nor idle, so it drops out (seen:
  worker CPU between 1.0 and 2.0 from window to window, this measure within
  +-15 %).  A slowdown of ours still shows, whether it burns CPU (more CPU
  per message) or sleeps (a lost wake-up: the CPU goes idle and still
  counts).  Why 0.35 rather than 0.5: on this machine a run settles in one
  of two steady states, about 140k and about 330k messages per available
  CPU-second (the slow one with the ring nearly full and a third of the CPU
  in the kernel); a run that moved from one to the other would measure 0.42
  without anything degrading.  A real degradation lands far lower: the
  injected ones (SHMSEM_SOAK_INJECT=sleep, spin; see below) measure 0.02-0.06.
  Medians of three windows ignore one disturbed window.  Messages per
  wall-clock second and the ring's fill are recorded, not checked.
* Memory stays flat.  VmRSS of every worker is sampled at every window
  boundary; from the end of the first window to the end it may grow by at
  most RSS_GROWTH (8 MiB).  The first window is excluded because it holds
  the warm-up: pymalloc arenas filling, the first large messages moving
  glibc's mmap threshold so later ones come from the heap, lazily imported
  modules.  8 MiB is generous against that noise (under 0.5 MiB is seen
  after the first window) and still catches a leak of 8 MiB / messages per
  process: each worker handles ~9M messages in the 180 s form and 1-3M in
  the 20 s one, so about 1 and 3-7 bytes a message, i.e. any object leaked
  per message, or per few dozen on a rarer path (the exhaustive C-level hunt
  is tests/test_core_leaks.py).
* Clean shutdown: every worker exits 0 after its stop message, and the
  segment is gone afterwards.
* No takeover: nobody dies, so the segment's count of locks taken over from
  a dead holder (``recoveries``, shared by all processes since protocol
  version 2) stays 0, and both lock words end free.

Each check can fail: SHMSEM_SOAK_INJECT=drop, dup, leak, sleep or spin
(helpers_soak.py) plants a lost message, a duplicate, a leak of 200 bytes a
message, or a slowdown, and the matching assertion fails.

Every wait is bounded: a global HARD deadline (duration + 60 s + 50 %) after
which everything is killed; workers also check it on every blocking call
(0.5 s at most each), and die with the test process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import faulthandler
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import helpers_soak as hs
import numpy as np
import pytest

import shmsem
from shmsem import Channel

pytestmark = pytest.mark.stress

PRODUCERS = 4
CONSUMERS = 4
WINDOWS = 10
FLAT_FACTOR = 0.35
RSS_GROWTH = 8 << 20
HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def soak_seconds() -> float:
    return float(os.environ.get("SHMSEM_SOAK_SECONDS", "180"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def idle_seconds() -> float:
    """Idle (and iowait) time of the CPUs we may run on, summed."""
    mine = {f"cpu{n}" for n in os.sched_getaffinity(0)}
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields[0] in mine:
                total += int(fields[4]) + int(fields[5])
    return total / CLK_TCK


def third_medians(values: list[float]) -> tuple[float, float]:
    k = len(values) // 3
    return statistics.median(values[:k]), statistics.median(values[-k:])


def count_seqs(reports: list[str], sent: list[int]) -> dict[str, Any]:
    """Rebuild every seq the consumers took; count lost, duplicated, phantom."""
    counts = [np.zeros(n, dtype=np.int64) for n in sent]
    phantom = 0
    for path in reports:
        by_producer: dict[int, list[np.ndarray]] = {}
        for p, base, gaps in hs.read_runs(path):
            seqs = base + np.cumsum(np.frombuffer(gaps, dtype=np.uint8), dtype=np.int64)
            by_producer.setdefault(p, []).append(seqs)
        for p, parts in by_producer.items():
            seqs = np.concatenate(parts)
            if p >= len(sent):
                phantom += len(seqs)
                continue
            inside = (seqs >= 0) & (seqs < sent[p])
            phantom += int((~inside).sum())
            counts[p] += np.bincount(seqs[inside], minlength=sent[p])
    lost = sum(int((c == 0).sum()) for c in counts)
    duplicates = sum(int((c[c > 1] - 1).sum()) for c in counts)
    return {"lost": lost, "duplicates": duplicates, "phantom": phantom,
            "taken": sum(int(c.sum()) for c in counts)}


def test_soak_channel_4x4(
    child: Callable[..., Any], tmp_path: Path, reliability: Callable[..., None]
) -> None:
    duration = soak_seconds()
    assert duration >= 3, "SHMSEM_SOAK_SECONDS must be at least 3"
    began = time.monotonic()
    hard = began + duration * 1.5 + 60
    window = duration / WINDOWS
    # pytest's faulthandler_timeout (120 s) would dump stacks in the middle of
    # a healthy long run: move the dump to just after the hard deadline.
    faulthandler.dump_traceback_later(hard - began + 10, file=sys.__stderr__)

    def left() -> float:
        return max(hard - time.monotonic(), 0.1)

    ch = Channel.create(None, hs.CAPACITY)
    workers: list[tuple[str, Any]] = []
    try:
        for role, n in (("producer", PRODUCERS), ("consumer", CONSUMERS)):
            for i in range(n):
                args = [role, str(ch.id), str(i), repr(hard)]
                if role == "consumer":
                    args += [str(tmp_path / f"consumer{i}.runs"), str(PRODUCERS)]
                code = (
                    f"import sys; sys.path.insert(0, {str(HERE)!r}); import helpers_soak; "
                    f"sys.exit(helpers_soak.main({args!r}))"
                )
                workers.append((f"{role[0]}{i}", child(code)))
        for _, w in workers:
            w.expect("ready", timeout=min(60.0, left()))

        # Go.  Producers stop putting at ``end``; the parent samples windows.
        t0 = time.monotonic()
        end = t0 + duration + 2.0  # after the last sample: every worker is still alive then
        for _, w in workers:
            w.send(f"go {end!r}")
        pids = {name: w.pid for name, w in workers}
        rss = {name: [rss_bytes(pid)] for name, pid in pids.items()}
        cpu = [sum(cpu_seconds(pid) for pid in pids.values())]
        idle = [idle_seconds()]
        taken = [ch.stats().get_count]
        stamps = [t0]
        fill: list[float] = []  # the ring's use at each sample: which side waits
        for k in range(1, WINDOWS + 1):
            time.sleep(max(t0 + k * window - time.monotonic(), 0))
            stamps.append(time.monotonic())
            for name, w in workers:
                if w.proc.poll() is not None:
                    rc, out, err = w.finish(timeout=5)
                    pytest.fail(f"{name} exited early (rc={rc}): {out[-500:]} {err[-2000:]}")
            st = ch.stats()
            taken.append(st.get_count)
            fill.append(round(st.used / st.capacity, 2))
            cpu.append(sum(cpu_seconds(pid) for pid in pids.values()))
            idle.append(idle_seconds())
            for name, pid in pids.items():
                rss[name].append(rss_bytes(pid))

        # Producers stop on their own; then one stop message per consumer.
        results: dict[str, dict[str, Any]] = {}
        for name, w in workers[:PRODUCERS]:
            rc, out, err = w.finish(timeout=left())
            results[name] = json.loads(out.splitlines()[-1]) if out.strip() else {}
            assert rc == 0, f"{name} exited {rc}: {results[name]} {err[-2000:]}"
        for _ in range(CONSUMERS):
            ch.put_bytes(hs.stop_message(), timeout=left())
        for name, w in workers[PRODUCERS:]:
            rc, out, err = w.finish(timeout=left())
            results[name] = json.loads(out.splitlines()[-1]) if out.strip() else {}
            assert rc == 0, f"{name} exited {rc}: {results[name]} {err[-2000:]}"
        elapsed = time.monotonic() - began
        final = ch.stats()
    finally:
        for _, w in workers:
            w.kill()
        shmid = ch.id
        ch.close()
    with pytest.raises((shmsem.NotFoundError, shmsem.RemovedError)):
        shmsem.SharedMemory.from_id(shmid)

    # -- figures --------------------------------------------------------------
    sent = [results[f"p{i}"]["sent"] for i in range(PRODUCERS)]
    consumers = [results[f"c{i}"] for i in range(CONSUMERS)]
    tally = count_seqs([str(tmp_path / f"consumer{i}.runs") for i in range(CONSUMERS)], sent)
    per_window = [taken[k + 1] - taken[k] for k in range(WINDOWS)]
    secs = [stamps[k + 1] - stamps[k] for k in range(WINDOWS)]
    cpus = [cpu[k + 1] - cpu[k] for k in range(WINDOWS)]
    rate = [n / s for n, s in zip(per_window, secs)]
    idles = [idle[k + 1] - idle[k] for k in range(WINDOWS)]
    per_cpu = [n / max(c + i, 0.01) for n, c, i in zip(per_window, cpus, idles)]
    growth = {name: r[-1] - r[1] for name, r in rss.items()}
    order = sum(c["order_violations"] for c in consumers)
    corrupt = sum(c["corrupt"] for c in consumers)
    reliability(
        messages=sum(sent), producers=PRODUCERS, consumers=CONSUMERS,
        seconds=round(duration, 1), elapsed=round(elapsed, 1),
        throughput_per_window=[round(r) for r in rate],
        messages_per_available_cpu_second=[round(r) for r in per_cpu],
        worker_cpu_share=[round(c / s, 2) for c, s in zip(cpus, secs)],
        idle_cpu_share=[round(i / s, 2) for i, s in zip(idles, secs)],
        ring_fill=fill,
        rss_start_end={name: [r[1], r[-1]] for name, r in rss.items()},
        rss_first_sample={name: r[0] for name, r in rss.items()},
        lost=tally["lost"], duplicates=tally["duplicates"], phantom=tally["phantom"],
        order_violations=order, corrupt=corrupt, recoveries=final.recoveries,
        producer_ops=[results[f"p{i}"]["ops"] for i in range(PRODUCERS)],
        consumer_ops=[c["ops"] for c in consumers],
    )
    print(
        f"\nsoak: {sum(sent)} messages in {duration:.0f} s ({elapsed:.0f} s in all); "
        f"msgs/s per window {[round(r) for r in rate]}; msgs per available CPU-s "
        f"{[round(r) for r in per_cpu]}; worker CPUs {[round(c / s, 2) for c, s in zip(cpus, secs)]}"
        f"; idle CPUs {[round(i / s, 2) for i, s in zip(idles, secs)]}; ring fill {fill}; RSS MiB (2nd sample -> end) "
        + ", ".join(f"{n}: {r[1] / 2**20:.1f}->{r[-1] / 2**20:.1f}" for n, r in rss.items()),
        file=sys.stderr,
    )

    # -- verdicts -------------------------------------------------------------
    problems = [p for c in consumers for p in c["problems"]]
    assert corrupt == 0, f"{corrupt} corrupt messages: {problems}"
    assert order == 0, f"{order} producer-order violations: {problems}"
    assert tally["lost"] == 0 and tally["duplicates"] == 0 and tally["phantom"] == 0, tally
    assert tally["taken"] == sum(sent) == sum(c["received"] for c in consumers), (tally, sent)
    assert final.messages == 0 and final.put_count == final.get_count, final
    assert final.recoveries == 0, f"nobody died, yet {final.recoveries} locks were taken over"
    assert (final.producer_lock_pid, final.consumer_lock_pid) == (0, 0), final
    # Each stop message is taken once, plus again for each one given back.
    stops = CONSUMERS + sum(c["stops"] - 1 for c in consumers)
    assert final.get_count == sum(sent) + stops, (final, sum(sent), stops)
    assert all(s > 0 for s in sent) and all(c["received"] > 0 for c in consumers), (sent, consumers)

    first, last = third_medians(per_cpu)
    assert last >= FLAT_FACTOR * first, (
        f"throughput per available CPU-second fell from a median of {first:.0f} in the first "
        f"third to {last:.0f} in the last: {[round(r) for r in per_cpu]}"
    )
    grown = {n: g for n, g in growth.items() if g > RSS_GROWTH}
    assert not grown, (
        f"RSS grew by more than {RSS_GROWTH >> 20} MiB after the first window: "
        + ", ".join(f"{n}: +{g / 2**20:.1f} MiB {[round(r / 2**20, 1) for r in rss[n]]}"
                    for n, g in grown.items())
    )
