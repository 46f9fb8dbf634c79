"""Helpers shared by the benchmark scripts in this directory.

Timing, interleaved trials with medians, CPU pinning, the C floor programs
(compiled at run time from benchmarks/c/*.c), leak checks against
/proc/sysvipc, machine description, and Markdown/JSON output.  Nothing here
imports shmsem, so a script can report a broken install instead of crashing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Optional, Sequence

HERE = Path(__file__).resolve().parent
C_DIR = HERE / "c"

#: What a missing optional peer is reported as.
NOT_INSTALLED = "not installed (pip install 'shmsem[bench]')"

#: Full and --quick settings: trials per candidate, seconds per trial.
FULL_TRIALS, FULL_TRIAL_TIME = 11, 0.3
QUICK_TRIALS, QUICK_TRIAL_TIME = 3, 0.05


# ---------------------------------------------------------------------------
# Command line


def make_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_TRIALS} short trials instead of {FULL_TRIALS}")
    p.add_argument("--json", metavar="FILE", help="also write every sample to FILE as JSON")
    p.add_argument("--trials", type=int, help="trials per candidate (overrides --quick)")
    p.add_argument("--trial-time", type=float, metavar="SECONDS",
                   help="target duration of one trial (overrides --quick)")
    return p


def trial_settings(args: argparse.Namespace) -> tuple[int, float]:
    trials = args.trials or (QUICK_TRIALS if args.quick else FULL_TRIALS)
    trial_time = args.trial_time or (QUICK_TRIAL_TIME if args.quick else FULL_TRIAL_TIME)
    if trials < 1 or trial_time <= 0:
        raise SystemExit("--trials must be >= 1 and --trial-time > 0")
    return trials, trial_time


def optional_import(name: str) -> Optional[ModuleType]:
    """The module, or None when it is not installed."""
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
) -> dict[str, Stats]:
    """Time every candidate ``trials`` times, interleaved round by round
    (A B C D, B C D A, ...) so machine noise hits all of them alike.  Returns
    nanoseconds per operation for each."""
    for c in candidates:
        calibrate(c, trial_time)
    samples: dict[str, list[float]] = {c.name: [] for c in candidates}
    k = len(candidates)
    for r in range(trials):
        if progress:
            progress(f"round {r + 1}/{trials}")
        for j in range(k):
            c = candidates[(r + j) % k]
            samples[c.name].append(c.run(c.n) / c.n)
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
    """Compile benchmarks/c/<name>.c with gcc and return the executable.
    Builds are cached by a hash of the source, the flags and the compiler."""
    src = C_DIR / f"{name}.c"
    gcc = shutil.which(os.environ.get("CC", "gcc"))
    if gcc is None:
        raise CFloorUnavailable("gcc not found")
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
    r = subprocess.run(cmd, capture_output=True, text=True)
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
        except Exception as e:  # each library has its own "no such object" error
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
    return {
        "cpu": cpu,
        "cpus_online": os.cpu_count(),
        "cpus_allowed": allowed_cpus(),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "argv": sys.argv,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
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
        raise TypeError(f"cannot serialise {type(o).__name__}")

    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=default)
        f.write("\n")
