"""Helpers shared by the benchmarks (``shmsem bench`` and benchmarks/*.py).

Timing, interleaved trials with medians, CPU pinning, worker processes, the C
floor programs (compiled at run time from the ``c/`` directory next to this
file), leak checks against /proc/sysvipc, machine description, a progress
line, and Markdown/JSON output.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import json
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Callable, Iterator, Optional, Sequence

from .options import (
    FULL_TRIAL_TIME,
    FULL_TRIALS,
    QUICK_TRIAL_TIME,
    QUICK_TRIALS,
    add_trial_options,
)

__all__ = [
    "C_DIR",
    "FULL_TRIALS",
    "FULL_TRIAL_TIME",
    "NOT_INSTALLED",
    "QUICK_TRIALS",
    "QUICK_TRIAL_TIME",
    "SHM_DEST",
    "CFloorUnavailable",
    "Candidate",
    "CandidateFailed",
    "Progress",
    "Role",
    "Stats",
    "Worker",
    "allowed_cpus",
    "calibrate",
    "cleanup",
    "compile_c",
    "describe_machine",
    "fmt_num",
    "fmt_stats",
    "interleaved",
    "machine_info",
    "make_parser",
    "markdown_table",
    "new_private_objects",
    "optional_import",
    "paired_ratios",
    "pinned",
    "process_cpu_ns",
    "run_c",
    "sysv_objects",
    "timed_loop",
    "trial_settings",
    "verdict",
    "write_json",
]

C_DIR = Path(__file__).resolve().parent / "c"

#: What a missing optional peer is reported as.
NOT_INSTALLED = "not installed (pip install 'shmsem[bench]')"



# ---------------------------------------------------------------------------
# Command line


def make_parser(description: str, prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The options every benchmark script takes."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    add_trial_options(p)
    return p


def trial_settings(args: argparse.Namespace) -> tuple[int, float]:
    trials = args.trials or (QUICK_TRIALS if args.quick else FULL_TRIALS)
    trial_time = args.trial_time or (QUICK_TRIAL_TIME if args.quick else FULL_TRIAL_TIME)
    if trials < 1 or trial_time <= 0:
        raise SystemExit("--trials must be >= 1 and --trial-time > 0")
    return trials, trial_time


def optional_import(name: str) -> Optional[ModuleType]:
    """The module, or None when it is not installed (or fails to import)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# ---------------------------------------------------------------------------
# Statistics


@dataclasses.dataclass(frozen=True)
class Stats:
    """Per-operation samples of one candidate, one per trial."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 means 5 %)."""
        if len(self.samples) < 4:
            return (self.max - self.min) / self.median if self.median else 0.0
        q1, _, q3 = statistics.quantiles(self.samples, n=4)
        return (q3 - q1) / self.median if self.median else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max,
                "iqr_rel": self.spread, "samples": list(self.samples)}


def paired_ratios(a: Stats, b: Stats) -> Stats:
    """a/b trial by trial.  Trials are interleaved, so trial i of a and of b
    ran within the same fraction of a second and saw the same machine load."""
    return Stats(tuple(x / y for x, y in zip(a.samples, b.samples)))


# ---------------------------------------------------------------------------
# Interleaved trials


class CandidateFailed(RuntimeError):
    """A candidate could not complete a run (a worker died, hung, or raised)."""


@dataclasses.dataclass
class Candidate:
    """Something to time.  ``run(n)`` performs n operations and returns the
    nanoseconds they took, measured as tightly around them as it can (a C
    program reports its own loop time, so process start-up is excluded)."""

    name: str
    run: Callable[[int], int]
    n: int = 0  # operations per trial, set by calibrate()


def calibrate(c: Candidate, trial_time: float, *, max_n: int = 1 << 28) -> int:
    """Pick the operation count that makes one trial last about trial_time."""
    target_ns = trial_time * 1e9
    n = 16
    while True:
        ns = max(c.run(n), 1)
        if ns >= target_ns / 8 or n >= max_n:
            break
        n = min(max_n, n * 8 if ns < target_ns / 100 else int(n * target_ns / 4 / ns) + 1)
    c.n = max(1, min(max_n, int(n * target_ns / ns)))
    return c.n


def interleaved(
    candidates: Sequence[Candidate],
    trials: int,
    trial_time: float,
    *,
    progress: Optional[Callable[[str], None]] = None,
    step: Optional[Callable[[str], None]] = None,
    failures: Optional[dict[str, str]] = None,
) -> dict[str, Stats]:
    """Time every candidate ``trials`` times, interleaved round by round
    (A B C D, B C D A, ...) so machine noise hits all of them alike.  Returns
    nanoseconds per operation for each.

    ``progress`` is called once per round, ``step`` before every run (one
    calibration, then one per trial).  With ``failures``, a candidate whose run
    raises CandidateFailed is dropped and the reason recorded there; without
    it the exception propagates."""
    alive: list[Candidate] = []
    for c in candidates:
        if step:
            step(f"{c.name}: calibrating")
        try:
            calibrate(c, trial_time)
        except CandidateFailed as e:
            if failures is None:
                raise
            failures[c.name] = str(e)
            continue
        alive.append(c)
    samples: dict[str, list[float]] = {c.name: [] for c in alive}
    k = len(alive)
    for r in range(trials):
        if progress:
            progress(f"round {r + 1}/{trials}")
        for j in range(k):
            c = alive[(r + j) % k]
            if c.name not in samples:
                continue
            if step:
                step(f"{c.name}: trial {r + 1}/{trials}")
            try:
                samples[c.name].append(c.run(c.n) / c.n)
            except CandidateFailed as e:
                if failures is None:
                    raise
                failures[c.name] = str(e)
                del samples[c.name]
    return {name: Stats(tuple(s)) for name, s in samples.items()}


def timed_loop(body: Callable[[], object]) -> Callable[[int], int]:
    """run(n) for a zero-argument callable (one call per operation).  For the
    fastest operations write the loop out instead: this adds one Python call."""
    from itertools import repeat
    from time import perf_counter_ns

    def run(n: int) -> int:
        it = repeat(None, n)
        t0 = perf_counter_ns()
        for _ in it:
            body()
        return perf_counter_ns() - t0

    return run


# ---------------------------------------------------------------------------
# CPUs


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


@contextlib.contextmanager
def pinned(cpus: Sequence[int]) -> Iterator[None]:
    """Run the block with this process pinned to ``cpus``; restore after."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def process_cpu_ns(pid: int) -> int:
    """CPU time used so far by every thread of process ``pid``, in ns.

    From /proc/PID/task/*/schedstat (nanoseconds) where the kernel has it,
    else utime+stime from /proc/PID/stat (clock ticks, usually 10 ms)."""
    total = 0
    found = False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tasks = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
                found = True
        except (OSError, ValueError, IndexError):
            continue
    if found:
        return total
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# Worker processes

#: A worker's role, built inside the child: (run, close).  run(arg) does one
#: unit of work and returns a picklable result; close() releases what the
#: role opened (it runs when the worker is told to stop).
Role = tuple[Callable[[Any], Any], Callable[[], None]]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies, so that a
    benchmark killed with SIGKILL leaves no worker behind."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _worker_main(conn: Any, build: Callable[[], Role], cpu: Optional[int],
                 parent: int) -> None:
    # Born with SIGINT and SIGTERM blocked (see Worker): set our own
    # dispositions before a pending one can reach the parent's handlers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _die_with_parent()
    if os.getppid() != parent:
        return
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        run, close = build()
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"setup failed: {type(e).__name__}: {e}"))
        return
    try:
        conn.send(("ready", None))
        while True:
            try:
                arg = conn.recv()
            except (EOFError, OSError):
                return
            if arg is None:
                return
            try:
                conn.send(("ok", run(arg)))
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                conn.send(("error", f"{type(e).__name__}: {e}"))
                return
    finally:
        close()


class Worker:
    """A forked child process that builds a role (``build()``, called in the
    child, after pinning it to ``cpu``) and then runs it on each argument the
    parent sends.  Ctrl-C is left to the parent; the child dies with its
    parent.  ``stop()`` asks it to close its role and exit, and kills it if it
    does not within a second."""

    def __init__(self, name: str, build: Callable[[], Role], cpu: Optional[int] = None) -> None:
        self.name = name
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.proc = ctx.Process(target=_worker_main, args=(child, build, cpu, os.getpid()),
                                name=f"shmsem-bench {name}", daemon=True)
        # A Ctrl-C typed while the child is being forked would otherwise run
        # the parent's Python handler in the child, mid-bootstrap.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self.proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            child.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def _answer(self, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            self.kill()
            raise CandidateFailed(f"{self.name}: no answer within {timeout:g} s")
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            code = self.proc.exitcode
            self.kill()
            raise CandidateFailed(f"{self.name}: worker died (exit code {code})") from None
        if kind == "error":
            self.kill()
            raise CandidateFailed(f"{self.name}: {value}")
        return value

    def wait_ready(self, timeout: float = 30.0) -> None:
        self._answer(timeout)

    def send(self, arg: Any) -> None:
        try:
            self._conn.send(arg)
        except (OSError, ValueError) as e:
            self.kill()
            raise CandidateFailed(f"{self.name}: worker is gone ({e})") from None

    def result(self, timeout: float) -> Any:
        return self._answer(timeout)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5.0)
        self._conn.close()

    def stop(self) -> None:
        if self.proc.is_alive() and not self._conn.closed:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(None)
            self.proc.join(1.0)
        if not self._conn.closed:
            self.kill()


# ---------------------------------------------------------------------------
# C floor programs


class CFloorUnavailable(RuntimeError):
    """The C floor could not be built (no gcc, or a compile error)."""


def _cache_root() -> Path:
    """A per-user cache directory in the temp dir, refusing one that another
    user could have planted binaries in."""
    root = Path(tempfile.gettempdir()) / f"shmsem-bench-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        st = root.lstat()
        import stat as _stat
        if (_stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
                and not st.st_mode & 0o022):
            return root
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="shmsem-bench-"))


def compile_c(name: str, cflags: Sequence[str] = ("-O2",)) -> Path:
    """Compile c/<name>.c (next to this module) with gcc and return the
    executable.  Builds are cached by a hash of the source, the flags and the
    compiler."""
    src = C_DIR / f"{name}.c"
    gcc = shutil.which(os.environ.get("CC", "gcc"))
    if gcc is None:
        raise CFloorUnavailable("gcc not found")
    if not src.exists():
        raise CFloorUnavailable(f"{src} is missing from this installation")
    try:
        version = subprocess.run([gcc, "--version"], capture_output=True, text=True,
                                 check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError) as e:
        raise CFloorUnavailable(f"{gcc} --version failed: {e}") from e
    h = hashlib.sha256()
    for part in (src.read_bytes(), " ".join(cflags).encode(), version.encode()):
        h.update(part)
        h.update(b"\0")
    out_dir = _cache_root() / h.hexdigest()[:16]
    exe = out_dir / name
    if exe.exists():
        return exe
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.{os.getpid()}"
    cmd = [gcc, *cflags, "-Wall", "-Wextra", "-o", str(tmp), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise CFloorUnavailable(f"{' '.join(cmd)} failed:\n{r.stderr}")
    os.replace(tmp, exe)
    return exe


def run_c(exe: Path, *args: object, timeout: float = 120.0) -> str:
    """Run a C floor program and return its stdout.  On Ctrl-C or a timeout
    the program is killed before the exception propagates."""
    cmd = [str(exe), *map(str, args)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except BaseException:
            p.kill()
            p.wait()
            raise
    if p.returncode != 0:
        hint = ""
        if "Invalid argument" in err or "Identifier removed" in err:
            hint = " (was the object removed by another process during the run?)"
        raise RuntimeError(f"{' '.join(cmd)} exited with {p.returncode}: {err.strip()}{hint}")
    return out.strip()


# ---------------------------------------------------------------------------
# System V objects: cleanup and leak check


def cleanup(stack: contextlib.ExitStack, remove: Callable[[], object], what: str) -> None:
    """Register remove() to run when the stack unwinds.  An object that is
    already gone is reported, not raised: one failed removal must not stop
    the others, and must not hide the error that unwound the stack."""

    def run() -> None:
        try:
            remove()
        except Exception as e:  # noqa: BLE001 - each library has its own "no such object" error
            print(f"[cleanup] {what}: {type(e).__name__}: {e} (removed by another "
                  "process during the run?)", file=sys.stderr, flush=True)

    stack.callback(run)


SHM_DEST = 0o1000  # in a segment's mode: removed, gone once the last process detaches


def sysv_objects() -> set[tuple[str, int, int, int, int]]:
    """(kind, key, id, mode, creator pid) of every System V object in this IPC
    namespace, other processes' included.  Only segments record their
    creator; the pid is 0 for semaphore sets and message queues."""
    found = set()
    for kind in ("shm", "sem", "msg"):
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 4:
                cpid = int(fields[4]) if kind == "shm" else 0
                found.add((kind, int(fields[0]), int(fields[1]), int(fields[2], 8), cpid))
    return found


def new_private_objects(before: set[tuple[str, int, int, int, int]]) -> list[tuple[str, int]]:
    """IPC_PRIVATE objects made since ``before`` that are still there.  On a
    shared machine other processes make them too, so this leaves out segments
    already removed (a removed segment shows key 0 while still attached) and
    segments whose creator is another process that is still running."""
    me = os.getpid()
    left = []
    for kind, key, ident, mode, cpid in sorted(sysv_objects() - before):
        if key != 0:
            continue
        if kind == "shm" and (mode & SHM_DEST or
                              (cpid != me and Path(f"/proc/{cpid}").exists())):
            continue
        left.append((kind, ident))
    return left


# ---------------------------------------------------------------------------
# Machine and output


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = []
    return {
        "cpu": cpu,
        "cpus_online": os.cpu_count(),
        "cpus_allowed": allowed_cpus(),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "argv": sys.argv,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "loadavg": load,
    }


def describe_machine(info: dict[str, Any]) -> str:
    return (f"{info['cpu']}, {info['cpus_online']} CPUs online "
            f"(allowed: {','.join(map(str, info['cpus_allowed']))}), "
            f"Linux {info['kernel']}, {info['python']}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                   align: Optional[str] = None) -> str:
    """A GitHub Markdown table.  align holds one of l/r per column (default:
    first column left, the rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        return "| " + " | ".join(
            c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)
        ) + " |"

    sep = "|" + "|".join(
        ("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1))
        for w, a in zip(widths, align)
    ) + "|"
    return "\n".join([fmt(cells[0]), sep] + [fmt(r) for r in cells[1:]])


def fmt_num(x: float, digits: int = 3) -> str:
    """A number with about ``digits`` significant digits, no exponent."""
    if x == 0:
        return "0"
    for d in range(digits):
        if abs(x) >= 10 ** (digits - 1 - d):
            return f"{x:,.{d}f}"
    return f"{x:.{digits}g}"


def fmt_stats(s: Stats, scale: float = 1.0) -> tuple[str, str]:
    """(median, "min–max") scaled, for a table."""
    return fmt_num(s.median * scale), f"{fmt_num(s.min * scale)}–{fmt_num(s.max * scale)}"


def verdict(value: float, target: float) -> str:
    """'met' or 'MISSED' for an at-most target."""
    return "met" if value <= target else "MISSED"


def write_json(path: str, data: Any) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, Stats):
            return o.as_dict()
        if isinstance(o, Path):
            return str(o)
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        raise TypeError(f"cannot serialise {type(o).__name__}")

    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=default)
        f.write("\n")


# ---------------------------------------------------------------------------
# Progress


class Progress:
    """A progress bar redrawn in place on a terminal; elsewhere (a pipe, a
    file, TERM=dumb) one plain line per phase, and nothing per step."""

    def __init__(self, total: int, stream: IO[str] = sys.stderr, prefix: str = "bench",
                 tty: Optional[bool] = None) -> None:
        self.total = max(1, total)
        self.done = 0
        self.stream = stream
        self.prefix = prefix
        if tty is None:
            try:
                tty = stream.isatty() and os.environ.get("TERM") != "dumb"
            except (AttributeError, ValueError):
                tty = False
        self.tty = tty
        self.phase_name = ""
        self.started = time.monotonic()
        self._drawn = False

    def phase(self, text: str) -> None:
        """A new stage of the run (a plain line when not on a terminal)."""
        self.phase_name = text
        if self.tty:
            self._draw(text)
        else:
            elapsed = time.monotonic() - self.started
            print(f"[{self.prefix}] {elapsed:5.1f}s {text}", file=self.stream, flush=True)

    def step(self, text: str = "", weight: int = 1) -> None:
        self.done = min(self.total, self.done + weight)
        if self.tty:
            self._draw(f"{self.phase_name}: {text}" if text else self.phase_name)

    def note(self, text: str) -> None:
        """A line that stays (a warning), above the bar."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
        print(f"[{self.prefix}] {text}", file=self.stream, flush=True)
        if self.tty:
            self._draw(self.phase_name)

    def _draw(self, text: str) -> None:
        width = 28
        frac = self.done / self.total
        fill = int(width * frac)
        bar = "#" * fill + "-" * (width - fill)
        cols = shutil.get_terminal_size((80, 24)).columns
        line = f"[{bar}] {frac * 100:3.0f}% {text}"
        self.stream.write("\r\x1b[K" + line[: max(10, cols - 1)])
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
