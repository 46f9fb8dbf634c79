#!/usr/bin/env python3
"""Benchmark shmsem's primitives against their peers and a C floor.

    python benchmarks/primitives.py [--quick] [--json FILE]

Three measurements, each the median of interleaved trials:

1. the uncontended acquire()+release() pair, in ns: shmsem.Semaphore,
   sysv_ipc.Semaphore, posix_ipc.Semaphore, multiprocessing.Lock, and a C loop
   doing the same two semop calls;
2. a two-process semaphore ping-pong, in µs per round trip: shmsem, sysv_ipc
   and two C processes, on separate CPUs and on one CPU;
3. SharedMemory.write() and .read() of a 4 KiB frame in an 8 KiB segment, in
   ns per call, with the syscalls per call counted under strace.

It prints Markdown.  Every System V object it makes is removed on the way
out, Ctrl-C included, and it checks /proc/sysvipc afterwards.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from functools import partial
from itertools import repeat
from time import perf_counter_ns
from typing import Any, Callable, Optional

import _common as C

import shmsem

sysv_ipc = C.optional_import("sysv_ipc")
posix_ipc = C.optional_import("posix_ipc")

# Targets: at most this much.
TARGET_VS_SYSV_IPC = 1.0
TARGET_VS_C_FLOOR = 1.5
TARGET_FRAME_NS = 1500.0
TARGET_FRAME_SYSCALLS = 0.0

FRAME_SIZE = 4096
SEGMENT_SIZE = 8192


def log(msg: str) -> None:
    print(f"[primitives] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# 1. Uncontended acquire + release


def pair_loop(sem: Any) -> Callable[[int], int]:
    """run(n): n acquire()/release() pairs, written as users write them.  Every
    Python candidate goes through this same code."""

    def run(n: int) -> int:
        it = repeat(None, n)
        t0 = perf_counter_ns()
        for _ in it:
            sem.acquire()
            sem.release()
        return perf_counter_ns() - t0

    return run


def c_pair_loop(exe: Any, semid: int, mode: str) -> Callable[[int], int]:
    def run(n: int) -> int:
        return int(C.run_c(exe, semid, n, mode))

    return run


def bench_pair(stack: contextlib.ExitStack, trials: int, trial_time: float,
               cpu: int) -> dict[str, Any]:
    cands: list[C.Candidate] = []
    missing: dict[str, str] = {}

    sem = shmsem.Semaphore(None, 1)
    C.cleanup(stack, sem.remove, "shmsem.Semaphore (pair)")
    cands.append(C.Candidate("shmsem.Semaphore", pair_loop(sem)))

    if sysv_ipc is not None:
        vs = sysv_ipc.Semaphore(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, 0o600, 1)
        C.cleanup(stack, vs.remove, "sysv_ipc.Semaphore (pair)")
        cands.append(C.Candidate("sysv_ipc.Semaphore", pair_loop(vs)))
    else:
        missing["sysv_ipc.Semaphore"] = C.NOT_INSTALLED

    if posix_ipc is not None:
        ps = posix_ipc.Semaphore(f"/shmsem-bench-{os.getpid()}", posix_ipc.O_CREX, 0o600, 1)
        C.cleanup(stack, ps.close, "posix_ipc.Semaphore close")
        C.cleanup(stack, ps.unlink, "posix_ipc.Semaphore unlink")
        cands.append(C.Candidate("posix_ipc.Semaphore", pair_loop(ps)))
    else:
        missing["posix_ipc.Semaphore"] = C.NOT_INSTALLED

    cands.append(C.Candidate("multiprocessing.Lock", pair_loop(multiprocessing.Lock())))

    try:
        exe = C.compile_c("sem_pair")
    except C.CFloorUnavailable as e:
        missing["C floor"] = f"unavailable: {e}"
    else:
        floor_set = shmsem.SemaphoreSet(None, 1, values=[1])
        C.cleanup(stack, floor_set.remove, "C floor set (pair)")
        cands.append(C.Candidate("C floor, IPC_NOWAIT acquire",
                                 c_pair_loop(exe, floor_set.id, "nowait")))
        cands.append(C.Candidate("C floor, plain acquire",
                                 c_pair_loop(exe, floor_set.id, "plain")))

    log(f"1/3 acquire+release pair: {len(cands)} candidates x {trials} trials on CPU {cpu}")
    with C.pinned([cpu]):
        stats = C.interleaved(cands, trials, trial_time, progress=log)
    return {"cpu": cpu, "stats": stats, "missing": missing,
            "n": {c.name: c.n for c in cands}}


# ---------------------------------------------------------------------------
# 2. Two-process ping-pong


def _echo(conn: Any, ping: Any, pong: Any, cpu: Optional[int]) -> None:
    """The far side of a Python ping-pong: for each n it receives, answer n
    pings.  The parent removes the semaphores; a removal while waiting, or the
    parent going away, ends this process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        while True:
            n = conn.recv()
            if not n:
                return
            for _ in repeat(None, n):
                ping.acquire()
                pong.release()
            conn.send(n)
    except (EOFError, OSError, Exception):
        return


def py_pingpong(stack: contextlib.ExitStack, ping: Any, pong: Any, cpu_parent: int,
                cpu_child: int) -> Callable[[int], int]:
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_echo, args=(there, ping, pong, cpu_child), daemon=True)
    proc.start()
    there.close()

    def stop() -> None:
        with contextlib.suppress(OSError, ValueError):
            here.send(0)
        proc.join(1.0)
        if proc.is_alive():
            proc.terminate()
            proc.join()
        here.close()

    stack.callback(stop)
    warm = 100

    def run(n: int) -> int:
        with C.pinned([cpu_parent]):
            here.send(warm + n)
            for _ in repeat(None, warm):
                ping.release()
                pong.acquire()
            t0 = perf_counter_ns()
            for _ in repeat(None, n):
                ping.release()
                pong.acquire()
            t = perf_counter_ns() - t0
            if here.recv() != warm + n:
                raise RuntimeError("ping-pong child lost count")
        return t

    return run


def c_pingpong(exe: Any, semid: int, cpu_parent: int, cpu_child: int) -> Callable[[int], int]:
    def run(n: int) -> int:
        return int(C.run_c(exe, semid, n, cpu_parent, cpu_child))

    return run


def bench_pingpong(stack: contextlib.ExitStack, trials: int, trial_time: float,
                   cpus: list[int]) -> dict[str, Any]:
    layouts = []
    if len(cpus) >= 2:
        layouts.append(("separate CPUs", cpus[0], cpus[1]))
    layouts.append(("same CPU", cpus[0], cpus[0]))

    try:
        exe: Any = C.compile_c("sem_pingpong")
        floor_error = None
    except C.CFloorUnavailable as e:
        exe, floor_error = None, f"unavailable: {e}"

    cands: list[C.Candidate] = []
    rows: list[dict[str, Any]] = []
    for label, a, b in layouts:
        s_ping, s_pong = shmsem.Semaphore(None, 0), shmsem.Semaphore(None, 0)
        C.cleanup(stack, s_ping.remove, "shmsem ping")
        C.cleanup(stack, s_pong.remove, "shmsem pong")
        name = f"shmsem.Semaphore, {label}"
        cands.append(C.Candidate(name, py_pingpong(stack, s_ping, s_pong, a, b)))
        rows.append({"name": name, "lib": "shmsem", "layout": label, "cpus": (a, b)})

        name = f"sysv_ipc.Semaphore, {label}"
        if sysv_ipc is not None:
            v_ping = sysv_ipc.Semaphore(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, 0o600, 0)
            C.cleanup(stack, v_ping.remove, "sysv_ipc ping")
            v_pong = sysv_ipc.Semaphore(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, 0o600, 0)
            C.cleanup(stack, v_pong.remove, "sysv_ipc pong")
            cands.append(C.Candidate(name, py_pingpong(stack, v_ping, v_pong, a, b)))
            rows.append({"name": name, "lib": "sysv_ipc", "layout": label, "cpus": (a, b)})
        else:
            rows.append({"name": name, "lib": "sysv_ipc", "layout": label, "cpus": (a, b),
                         "missing": C.NOT_INSTALLED})

        name = f"C floor, {label}"
        if exe is not None:
            pair = shmsem.SemaphoreSet(None, 2)
            C.cleanup(stack, pair.remove, "C floor set (ping-pong)")
            cands.append(C.Candidate(name, c_pingpong(exe, pair.id, a, b)))
            rows.append({"name": name, "lib": "C", "layout": label, "cpus": (a, b)})
        else:
            rows.append({"name": name, "lib": "C", "layout": label, "cpus": (a, b),
                         "missing": floor_error})

    log(f"2/3 ping-pong: {len(cands)} candidates x {trials} trials")
    stats = C.interleaved(cands, trials, trial_time, progress=log)
    return {"rows": rows, "layouts": layouts, "stats": stats,
            "n": {c.name: c.n for c in cands}}


# ---------------------------------------------------------------------------
# 3. 4 KiB frame write/read


def bench_frame(stack: contextlib.ExitStack, trials: int, trial_time: float,
                cpu: int) -> dict[str, Any]:
    shm = shmsem.SharedMemory(None, SEGMENT_SIZE)
    C.cleanup(stack, shm.close, "SharedMemory")  # the creator owns it: close() removes
    payload = os.urandom(FRAME_SIZE)
    shm.write(payload)
    if shm.read() != payload:
        raise RuntimeError("SharedMemory.read() did not return what write() wrote")

    def write_run(n: int) -> int:
        it = repeat(None, n)
        t0 = perf_counter_ns()
        for _ in it:
            shm.write(payload)
        return perf_counter_ns() - t0

    def read_run(n: int) -> int:
        it = repeat(None, n)
        t0 = perf_counter_ns()
        for _ in it:
            shm.read()
        return perf_counter_ns() - t0

    cands = [C.Candidate("SharedMemory.write(4 KiB)", write_run),
             C.Candidate("SharedMemory.read() -> 4 KiB", read_run)]
    log(f"3/3 frame write/read: {len(cands)} candidates x {trials} trials on CPU {cpu}")
    with C.pinned([cpu]):
        stats = C.interleaved(cands, trials, trial_time, progress=log)
    return {"cpu": cpu, "stats": stats, "n": {c.name: c.n for c in cands}}


# ---------------------------------------------------------------------------
# Syscalls per call, under strace

# Run in a fresh interpreter twice, with n=0 and with n=N; the difference in
# syscalls divided by N is what one call costs.  Setup and teardown are the
# same in both runs, so they cancel.
_STRACE_SCRIPT = r"""
import sys, shmsem
from itertools import repeat
mode, n = sys.argv[1], int(sys.argv[2])
shm = shmsem.SharedMemory(None, %(seg)d)
sem = shmsem.Semaphore(None, 1)
try:
    payload = bytes(%(frame)d)
    shm.write(payload); shm.read(); sem.acquire(); sem.release()
    if mode == "write":
        for _ in repeat(None, n):
            shm.write(payload)
    elif mode == "read":
        for _ in repeat(None, n):
            shm.read()
    elif mode == "pair":
        for _ in repeat(None, n):
            sem.acquire()
            sem.release()
finally:
    sem.remove()
    shm.close()
""" % {"seg": SEGMENT_SIZE, "frame": FRAME_SIZE}

_STRACE_LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def _strace_counts(mode: str, n: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="shmsem-strace-") as d:
        out = os.path.join(d, "summary")
        cmd = ["strace", "-f", "-c", "-o", out, sys.executable, "-c", _STRACE_SCRIPT,
               mode, str(n)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"strace exited with {r.returncode}: {_last_line(r.stderr)}")
        counts = {}
        with open(out) as f:
            for line in f:
                m = _STRACE_LINE.match(line)
                if m and m.group(2) != "total":
                    counts[m.group(2)] = int(m.group(1))
        return counts


def count_syscalls(quick: bool) -> dict[str, Any]:
    if shutil.which("strace") is None:
        return {"error": "strace not found (apt-get install strace)"}
    n = 2_000 if quick else 20_000
    log(f"syscalls per call: strace -f -c, {n} calls per mode")
    try:
        base = _retry("strace", partial(_strace_counts, "none", n))
        result: dict[str, Any] = {"n": n, "modes": {}}
        for mode in ("write", "read", "pair"):
            counts = _retry("strace", partial(_strace_counts, mode, n))
            diff = {k: counts.get(k, 0) - base.get(k, 0) for k in set(counts) | set(base)}
            diff = {k: v for k, v in diff.items() if v}
            result["modes"][mode] = {"per_call": sum(diff.values()) / n,
                                     "by_syscall": {k: v / n for k, v in sorted(diff.items())}}
        return result
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}


# Syscalls per ping-pong round trip, under perf stat.  strace would change the
# scheduling, and so how often acquire()'s IPC_NOWAIT first try succeeds;
# perf stat counting the raw_syscalls tracepoint does not.
_PINGPONG_SCRIPT = r"""
import os, sys
from itertools import repeat
lib, n, cpu_a, cpu_b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if lib == "shmsem":
    import shmsem
    ping, pong = shmsem.Semaphore(None, 0), shmsem.Semaphore(None, 0)
else:
    import sysv_ipc
    ping = sysv_ipc.Semaphore(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, 0o600, 0)
    pong = sysv_ipc.Semaphore(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, 0o600, 0)
try:
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setaffinity(0, {cpu_b})
            for _ in repeat(None, n):
                ping.acquire()
                pong.release()
        finally:
            os._exit(0)
    os.sched_setaffinity(0, {cpu_a})
    for _ in repeat(None, n):
        ping.release()
        pong.acquire()
    os.waitpid(pid, 0)
finally:
    ping.remove()
    pong.remove()
"""


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _retry(what: str, fn: Callable[[], Any], attempts: int = 3) -> Any:
    """fn(), tried again on failure: these diagnostic runs make their own
    objects, and another process may remove them mid-run."""
    for i in range(attempts):
        try:
            return fn()
        except RuntimeError as e:
            if i == attempts - 1:
                raise
            log(f"{what} failed ({e}); retrying")


def _perf_syscalls(args: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="shmsem-perf-") as d:
        out = os.path.join(d, "stat")
        cmd = ["perf", "stat", "-x", ",", "-o", out, "-e", "raw_syscalls:sys_enter", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"perf stat exited with {r.returncode}: {_last_line(r.stderr)}")
        with open(out) as f:
            for line in f:
                fields = line.strip().split(",")
                if len(fields) > 2 and fields[2] == "raw_syscalls:sys_enter":
                    return int(fields[0])
    raise RuntimeError("perf stat printed no raw_syscalls:sys_enter count")


def pingpong_syscalls(quick: bool, layouts: list[tuple[str, int, int]]) -> dict[str, Any]:
    if shutil.which("perf") is None:
        return {"error": "perf not found"}
    n = 2_000 if quick else 20_000
    libs = ["shmsem"] + (["sysv_ipc"] if sysv_ipc is not None else [])
    log(f"syscalls per round trip: perf stat, {n} round trips per run")
    result: dict[str, Any] = {"n": n, "per_round_trip": {}}
    try:
        for label, a, b in layouts:
            for lib in libs:
                cmd = [sys.executable, "-c", _PINGPONG_SCRIPT, lib]
                base = _retry("perf stat", partial(_perf_syscalls, cmd + ["0", str(a), str(b)]))
                full = _retry("perf stat", partial(_perf_syscalls, cmd + [str(n), str(a), str(b)]))
                result["per_round_trip"][f"{lib}, {label}"] = (full - base) / n
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}
    return result


# ---------------------------------------------------------------------------
# Report


def _ratio_row(label: str, r: C.Stats, target: Optional[float]) -> list[str]:
    tgt = f"≤ {target:g}" if target is not None else "—"
    ver = C.verdict(r.median, target) if target is not None else "(reference)"
    return [label, f"{r.median:.3f}", f"{r.min:.3f}–{r.max:.3f}", tgt, ver]


def report(pair: dict[str, Any], pp: dict[str, Any], frame: dict[str, Any],
           sysc: dict[str, Any], pp_sysc: dict[str, Any], info: dict[str, Any], trials: int,
           trial_time: float) -> tuple[str, dict[str, Any]]:
    out: list[str] = []
    verdicts: dict[str, Any] = {}
    out.append(f"Machine: {C.describe_machine(info)}")
    out.append(f"shmsem {shmsem.__version__}; sysv_ipc "
               f"{getattr(sysv_ipc, 'VERSION', C.NOT_INSTALLED)}; posix_ipc "
               f"{getattr(posix_ipc, 'VERSION', C.NOT_INSTALLED)}")
    out.append(f"{trials} interleaved trials of ~{trial_time:g} s per candidate; "
               "median, with the range over trials.\n")

    # 1
    st: dict[str, C.Stats] = pair["stats"]
    sh = st["shmsem.Semaphore"]
    rows = []
    for name, s in st.items():
        med, rng = C.fmt_stats(s)
        rel = "1.000" if s is sh else f"{C.paired_ratios(sh, s).median:.3f}"
        rows.append([name, med, rng, f"{s.spread * 100:.1f} %", rel])
    out.append(f"### Uncontended acquire() + release(), ns per pair (CPU {pair['cpu']})\n")
    out.append(C.markdown_table(
        ["candidate", "median ns", "min–max", "IQR", "shmsem / this"], rows))
    out.append("")
    out.extend(f"Not measured: {name}: {why}." for name, why in pair["missing"].items())
    if pair["missing"]:
        out.append("")

    ratios = []
    if "sysv_ipc.Semaphore" in st:
        r = C.paired_ratios(sh, st["sysv_ipc.Semaphore"])
        ratios.append(_ratio_row("shmsem / sysv_ipc", r, TARGET_VS_SYSV_IPC))
        verdicts["pair_vs_sysv_ipc"] = {"ratio": r, "target": TARGET_VS_SYSV_IPC}
    floor = "C floor, IPC_NOWAIT acquire"
    if floor in st:
        r = C.paired_ratios(sh, st[floor])
        ratios.append(_ratio_row("shmsem / C floor (IPC_NOWAIT, same syscalls)", r,
                                 TARGET_VS_C_FLOOR))
        verdicts["pair_vs_c_floor"] = {"ratio": r, "target": TARGET_VS_C_FLOOR}
        r = C.paired_ratios(sh, st["C floor, plain acquire"])
        ratios.append(_ratio_row("shmsem / C floor (plain acquire)", r, None))
        over = C.Stats(tuple(a - b for a, b in zip(sh.samples, st[floor].samples)))
        verdicts["pair_python_overhead_ns"] = over
        out.append(f"shmsem's cost above the C floor (IPC_NOWAIT): {C.fmt_num(over.median)} ns "
                   f"per pair (range {C.fmt_num(over.min)} to {C.fmt_num(over.max)}).\n")

    # 2
    st = pp["stats"]
    per_rt = pp_sysc.get("per_round_trip", {})
    rows = []
    pp_missing = {}
    for row in pp["rows"]:
        a, b = row["cpus"]
        cpus = f"{a}+{b}"
        if "missing" in row:
            pp_missing[row["name"].split(",")[0]] = row["missing"]
            continue
        med, rng = C.fmt_stats(st[row["name"]], 1e-3)
        key = f"{row['lib']}, {row['layout']}"
        sc = f"{per_rt[key]:.2f}" if key in per_rt else ("4 (by design)" if row["lib"] == "C"
                                                         else "n/a")
        rows.append([row["name"], cpus, med, rng, f"{st[row['name']].spread * 100:.1f} %", sc])
    out.append("### Two-process semaphore ping-pong, µs per round trip\n")
    out.append(C.markdown_table(
        ["candidate", "CPUs", "median µs", "min–max", "IQR", "syscalls/round trip"], rows))
    out.append("")
    out.extend(f"Not measured: {name}: {why}." for name, why in pp_missing.items())
    if pp_missing:
        out.append("")
    if "error" in pp_sysc:
        out.append(f"Syscalls per round trip: {pp_sysc['error']}\n")
    else:
        out.append(f"Syscalls per round trip counted with `perf stat -e raw_syscalls:sys_enter` "
                   f"over {pp_sysc['n']:,} round trips (both processes), minus a run with none; "
                   "4 is one semop per release and per wait.\n")
    for row in pp["rows"]:
        if row["lib"] != "shmsem":
            continue
        layout = row["layout"]
        sv = f"sysv_ipc.Semaphore, {layout}"
        cf = f"C floor, {layout}"
        if sv in st:
            r = C.paired_ratios(st[row["name"]], st[sv])
            ratios.append(_ratio_row(f"ping-pong ({layout}): shmsem / sysv_ipc", r,
                                     TARGET_VS_SYSV_IPC))
            verdicts[f"pingpong_vs_sysv_ipc_{layout}"] = {"ratio": r,
                                                          "target": TARGET_VS_SYSV_IPC}
        if cf in st:
            r = C.paired_ratios(st[row["name"]], st[cf])
            ratios.append(_ratio_row(f"ping-pong ({layout}): shmsem / C floor", r, None))

    # 3
    st = frame["stats"]
    rows = []
    modes = sysc.get("modes", {})
    for name, mode in (("SharedMemory.write(4 KiB)", "write"),
                       ("SharedMemory.read() -> 4 KiB", "read")):
        s = st[name]
        med, rng = C.fmt_stats(s)
        sc = f"{modes[mode]['per_call']:.4f}" if mode in modes else "n/a"
        ok_t = C.verdict(s.median, TARGET_FRAME_NS)
        ok_s = (C.verdict(modes[mode]["per_call"], TARGET_FRAME_SYSCALLS)
                if mode in modes else "n/a")
        rows.append([name, med, rng, f"{s.spread * 100:.1f} %", sc,
                     f"{ok_t} (time), {ok_s} (syscalls)"])
        verdicts[f"frame_{mode}"] = {"ns": s, "target_ns": TARGET_FRAME_NS,
                                     "syscalls_per_call": modes.get(mode, {}).get("per_call")}
    out.append(f"### 4 KiB frame in an 8 KiB SharedMemory, ns per call (CPU {frame['cpu']})\n")
    out.append(C.markdown_table(["operation", "median ns", "min–max", "IQR", "syscalls/call",
                                 "target < 1500 ns, 0 syscalls"], rows))
    out.append("")
    if "error" in sysc:
        out.append(f"Syscall count: {sysc['error']}\n")
    else:
        pair_sc = modes["pair"]
        detail = ", ".join(f"{k} {v:.2f}" for k, v in pair_sc["by_syscall"].items()) or "none"
        out.append(f"Syscalls counted with `strace -f -c` over {sysc['n']:,} calls, minus an "
                   f"otherwise identical run with none. For comparison, one shmsem "
                   f"acquire()+release() pair makes {pair_sc['per_call']:.2f} syscalls "
                   f"({detail}).\n")

    out.append("### Ratios against targets\n")
    out.append("Ratios are the median of per-trial ratios (trials are interleaved, so each "
               "pair of samples saw the same load).\n")
    out.append(C.markdown_table(["ratio", "median", "min–max", "target", "verdict"], ratios))
    return "\n".join(out), verdicts


def main() -> int:
    p = C.make_parser(__doc__.split("\n\n")[0])
    p.add_argument("--cpus", metavar="A,B",
                   help="CPUs to use: A for single-process runs, A and B for ping-pong "
                        "(default: the first two this process may run on)")
    args = p.parse_args()
    trials, trial_time = C.trial_settings(args)
    cpus = C.allowed_cpus()
    if args.cpus:
        cpus = [int(x) for x in args.cpus.split(",")]
    info = C.machine_info()
    before = C.sysv_objects()
    # SIGTERM unwinds like Ctrl-C, so the cleanup below still runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    try:
        with contextlib.ExitStack() as stack:
            pair = bench_pair(stack, trials, trial_time, cpus[0])
            pp = bench_pingpong(stack, trials, trial_time, cpus)
            frame = bench_frame(stack, trials, trial_time, cpus[0])
    except KeyboardInterrupt:
        log("interrupted; every System V object made so far has been removed")
        return 130
    except SystemExit:
        log("terminated; every System V object made so far has been removed")
        raise
    sysc = count_syscalls(args.quick)
    pp_sysc = pingpong_syscalls(args.quick, pp["layouts"])

    text, verdicts = report(pair, pp, frame, sysc, pp_sysc, info, trials, trial_time)
    print(text)

    # Everything this script makes is IPC_PRIVATE (key 0); keyed objects that
    # came and went meanwhile belong to someone else.
    leaked = C.new_private_objects(before)
    if args.json:
        C.write_json(args.json, {
            "machine": info, "trials": trials, "trial_time": trial_time,
            "pair": pair, "pingpong": pp, "frame": frame, "syscalls": sysc,
            "pingpong_syscalls": pp_sysc,
            "verdicts": verdicts, "leaked": leaked,
        })
    if leaked:
        log("LEAK? IPC_PRIVATE objects that appeared during the run and are still there "
            f"(another process may have made them): {leaked}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
