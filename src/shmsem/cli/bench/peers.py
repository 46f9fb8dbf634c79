"""shmsem's Channel and Mailbox against their peers (`shmsem bench`).

    shmsem bench [--quick] [--json FILE] [--plot FILE.png]
    python benchmarks/peers.py [--quick] [--json FILE] [--plot FILE.png] [--markdown]

What it measures, each as the median of interleaved trials (docs/benchmarks.md,
"Channels", says how and why):

* throughput, one producer process to one consumer process: 64 B and 4 KiB
  messages one by one, the same in batches of 64, 1 MiB messages (against a
  C memcpy floor too), and small Python objects;
* the round trip of a 64 B ping-pong between two processes, on one CPU and
  on two, against a C semop ping-pong;
* the CPU a consumer blocked with nothing to receive burns;
* Mailbox publish and read of 64 B, in one process.

Peers that are not installed are listed, not fatal.  Every System V object,
file and process it makes is removed on the way out, on Ctrl-C and SIGTERM
too; it checks /proc/sysvipc afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
from functools import partial
from importlib import metadata
from itertools import repeat
from time import perf_counter_ns
from typing import IO, Any, Callable, Optional, Sequence

import shmsem

from . import common as C
from .options import add_peers_options
from .links import (
    BYTES,
    OBJECTS,
    PEER_MODULES,
    PEERS,
    FasterFifoLink,
    Link,
    ShmsemLink,
    Unavailable,
    cleanup_iceoryx,
)

# ---------------------------------------------------------------------------
# Settings

SMALL_CAPACITY = 1 << 20  #: ring bytes (and peers' buffers) for 64 B and 4 KiB messages
LARGE_CAPACITY = 8 << 20  #: for 1 MiB messages
BATCH = 64  #: messages per put_many / get_many
WARM_ROUND_TRIPS = 20  #: untimed round trips before each timed ping-pong run
PINGPONG_SIZE = 64
#: The small object: a dict of a few fields, as a sensor or job record.
OBJECT = {"id": 123456, "name": "sensor-7", "value": 3.14159, "ok": True, "tags": ["a", "b"]}
IDLE_WINDOW = 2.0  #: seconds per idle-CPU window
IDLE_WINDOWS_FULL, IDLE_WINDOWS_QUICK = 3, 1
IDLE_SETTLE = 0.3  #: seconds for a consumer to go to sleep before measuring

SHMSEM = "shmsem"
SINGLE = "shmsem Channel put_bytes/get_bytes"


@dataclasses.dataclass(frozen=True)
class Target:
    id: str
    group: str
    what: str
    op: str  # ">=", "<=" or "<"
    value: float
    unit: str = "x"

    @property
    def text(self) -> str:
        sym = {">=": "≥", "<=": "≤", "<": "<"}[self.op]
        unit = "" if self.unit == "x" else f" {self.unit}"
        return f"{sym} {C.fmt_num(self.value)}{unit}" if self.unit != "x" else \
            f"{sym} {self.value:g}×"

    def met(self, x: float) -> bool:
        if self.op == ">=":
            return x >= self.value
        if self.op == "<=":
            return x <= self.value
        return x < self.value


TARGETS = [
    Target("single_64", "throughput_64", "64 B one by one: shmsem ÷ best peer", ">=", 3.0),
    Target("single_4k", "throughput_4k", "4 KiB one by one: shmsem ÷ best peer", ">=", 3.0),
    Target("batch_64", "batch_64", "64 B batches: shmsem put_many/get_many ÷ faster-fifo's",
           ">=", 3.0),
    Target("batch_4k", "batch_4k", "4 KiB batches: shmsem put_many/get_many ÷ faster-fifo's",
           ">=", 3.0),
    Target("large_floor", "throughput_1m", "1 MiB: shmsem ÷ memcpy floor", ">=", 0.8),
    Target("large_peer", "throughput_1m", "1 MiB: shmsem ÷ best peer", ">=", 1.0),
    Target("objects", "objects", "small objects: shmsem ÷ multiprocessing.Queue", ">=", 3.0),
    Target("pingpong_same", "pingpong_same", "ping-pong, same CPU: shmsem ÷ C semop floor",
           "<=", 1.0),
    Target("pingpong_separate", "pingpong_separate",
           "ping-pong, separate CPUs: shmsem ÷ C semop floor", "<=", 0.1),
    Target("idle", "idle", "idle blocked consumer: CPU", "<", 1.0, "%"),
    Target("mailbox_publish", "mailbox", "Mailbox publish (64 B)", "<", 1000.0, "ns"),
    Target("mailbox_read", "mailbox", "Mailbox read (64 B)", "<", 1000.0, "ns"),
]


# ---------------------------------------------------------------------------
# What a group is made of


@dataclasses.dataclass
class RowSpec:
    """One candidate: ``start(stack)`` makes its objects and processes
    (registered on the stack) and returns the Candidate to time."""

    name: str
    lib: str  # "shmsem", "peer" or "floor"
    start: Optional[Callable[[contextlib.ExitStack], C.Candidate]]
    unavailable: Optional[str] = None
    api: str = ""


@dataclasses.dataclass
class GroupSpec:
    id: str
    title: str
    kind: str  # "throughput", "pingpong", "mailbox"
    size: int
    rows: list[RowSpec]
    layout: str = ""
    mode: str = BYTES
    batch: int = 0


class Interrupts:
    """While installed, SIGINT raises KeyboardInterrupt and SIGTERM raises
    SystemExit(143) in the main thread, once; later signals are ignored, so
    that a second Ctrl-C cannot cut the cleanup short.

    A signal handler's exception is lost ("Exception ignored in ...") when
    the handler happens to run inside a __del__ method, so ``check()``
    raises it again at every step of the run."""

    def __init__(self) -> None:
        self.pending: Optional[int] = None
        self._previous: dict[int, Any] = {}

    @staticmethod
    def _exception(signum: int) -> BaseException:
        return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(143)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.pending is not None:
            return
        self.pending = signum
        # Raised inside a finalizer it would only be printed and dropped:
        # leave it to the next check() instead.
        f = frame
        while f is not None:
            if f.f_code.co_name == "__del__":
                return
            f = f.f_back
        raise self._exception(signum)

    def check(self) -> None:
        if self.pending is not None:
            raise self._exception(self.pending)

    def __enter__(self) -> "Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Runner:
    """Settings shared by every group of one run."""

    def __init__(self, trials: int, trial_time: float, cpus: Sequence[int], quick: bool,
                 progress: C.Progress, pin_throughput: bool = False,
                 interrupts: Optional[Interrupts] = None) -> None:
        self.interrupts = interrupts or Interrupts()
        self.trials = trials
        self.trial_time = trial_time
        self.cpus = list(cpus)
        self.quick = quick
        self.progress = progress
        self.pin_throughput = pin_throughput
        # A worker that has not answered by then is taken for hung.
        self.timeout = 20.0 + 40.0 * trial_time

    def step(self, text: str = "", weight: int = 1) -> None:
        """Progress, and the point where a pending Ctrl-C or SIGTERM is raised."""
        self.interrupts.check()
        self.progress.step(text, weight)

    @property
    def producer_cpu(self) -> Optional[int]:
        """Throughput producers' CPU: None (the scheduler's choice) unless pinned."""
        return self.cpus[0] if self.pin_throughput else None

    @property
    def consumer_cpu(self) -> Optional[int]:
        if not self.pin_throughput:
            return None
        return self.cpus[1] if len(self.cpus) > 1 else self.cpus[0]

    @property
    def throughput_layout(self) -> str:
        if not self.pin_throughput:
            return "unpinned: the scheduler places both processes"
        return f"producer on CPU {self.producer_cpu}, consumer on CPU {self.consumer_cpu}"


def _stop_on_exit(stack: contextlib.ExitStack, w: C.Worker) -> None:
    """Stop the worker politely when the stack unwinds normally, and kill it
    at once when it unwinds on an error or Ctrl-C."""

    def exit_(exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            w.stop()
        else:
            w.kill()

    stack.push(exit_)


def _payload(mode: str, size: int) -> Any:
    if mode == OBJECTS:
        return dict(OBJECT)
    return os.urandom(size)


def _expected_len(mode: str, size: int) -> int:
    return len(OBJECT) if mode == OBJECTS else size


# ---------------------------------------------------------------------------
# Candidates


def throughput_start(r: Runner, factory: Callable[[], Link], batch: int,
                     name: str) -> Callable[[contextlib.ExitStack], C.Candidate]:
    """One producer worker sends n messages as fast as it can; one consumer
    worker receives them.  The time is from just before the producer's first
    send (CLOCK_MONOTONIC, in the producer) to just after the consumer's
    last receive (in the consumer)."""

    def start(stack: contextlib.ExitStack) -> C.Candidate:
        link = factory()
        link.check()
        link.setup(stack)
        msg = _payload(link.mode, link.size)
        want = _expected_len(link.mode, link.size)

        def consumer() -> C.Role:
            rx = link.open_receiver()

            def run(n: int) -> tuple[int, int]:
                last = rx.consume_many(n, batch) if batch else rx.consume(n)
                return time.monotonic_ns(), last

            return run, rx.close

        def producer() -> C.Role:
            tx = link.open_sender()
            many = [msg] * batch

            def run(n: int) -> int:
                t0 = time.monotonic_ns()
                if batch:
                    tx.produce_many(many, n // batch)
                else:
                    tx.produce(msg, n)
                return t0

            return run, tx.close

        cons = C.Worker(f"{name} consumer", consumer, r.consumer_cpu)
        _stop_on_exit(stack, cons)
        cons.wait_ready(r.timeout)
        prod = C.Worker(f"{name} producer", producer, r.producer_cpu)
        _stop_on_exit(stack, prod)
        prod.wait_ready(r.timeout)

        def run(n: int) -> int:
            m = -(-n // batch) * batch if batch else n
            cons.send(m)
            prod.send(m)
            t0 = int(prod.result(r.timeout))
            t1, last = cons.result(r.timeout)
            if last != want:
                raise C.CandidateFailed(f"{name}: received a message of length {last}, "
                                        f"expected {want}")
            return max(1, int(t1 - t0) * n // m)

        return C.Candidate(name, run)

    return start


def pingpong_start(r: Runner, factory: Callable[[], Link], cpu_a: int, cpu_b: int,
                   name: str) -> Callable[[contextlib.ExitStack], C.Candidate]:
    """Worker A sends a 64 B message on one link and waits for the answer on
    another; worker B sends back each message it receives.  A times n round
    trips, after WARM_ROUND_TRIPS untimed ones."""

    def start(stack: contextlib.ExitStack) -> C.Candidate:
        ab, ba = factory(), factory()
        ab.check()
        ab.setup(stack)
        ba.setup(stack)
        msg = os.urandom(ab.size)

        def echo() -> C.Role:
            rx, tx = ab.open_receiver(), ba.open_sender()
            recv, send = rx.recv, tx.send

            def run(n: int) -> int:
                for _ in repeat(None, n):
                    send(recv())
                return n

            def close() -> None:
                tx.close()
                rx.close()

            return run, close

        def initiator() -> C.Role:
            rx, tx = ba.open_receiver(), ab.open_sender()
            recv, send = rx.recv, tx.send

            def run(n: int) -> tuple[int, int]:
                m: Any = b""
                for _ in repeat(None, WARM_ROUND_TRIPS):
                    send(msg)
                    recv()
                t0 = perf_counter_ns()
                for _ in repeat(None, n):
                    send(msg)
                    m = recv()
                return perf_counter_ns() - t0, len(m)

            def close() -> None:
                tx.close()
                rx.close()

            return run, close

        b = C.Worker(f"{name} B", echo, cpu_b)
        _stop_on_exit(stack, b)
        b.wait_ready(r.timeout)
        a = C.Worker(f"{name} A", initiator, cpu_a)
        _stop_on_exit(stack, a)
        a.wait_ready(r.timeout)

        def run(n: int) -> int:
            b.send(n + WARM_ROUND_TRIPS)
            a.send(n)
            ns, last = a.result(r.timeout)
            b.result(r.timeout)
            if last != len(msg):
                raise C.CandidateFailed(f"{name}: answer of length {last}, expected {len(msg)}")
            return int(ns)

        return C.Candidate(name, run)

    return start


def semop_floor_start(r: Runner, cpu_a: int, cpu_b: int,
                      name: str) -> Callable[[contextlib.ExitStack], C.Candidate]:
    def start(stack: contextlib.ExitStack) -> C.Candidate:
        exe = C.compile_c("sem_pingpong")
        pair = shmsem.SemaphoreSet(None, 2)
        C.cleanup(stack, pair.remove, "C floor semaphore set")

        def run(n: int) -> int:
            try:
                return int(C.run_c(exe, pair.id, n, cpu_a, cpu_b, timeout=r.timeout))
            except RuntimeError as e:
                raise C.CandidateFailed(str(e)) from None

        return C.Candidate(name, run)

    return start


def memcpy_floor_start(r: Runner, size: int, capacity: int, name: str,
                       program: str = "memcpy_floor"
                       ) -> Callable[[contextlib.ExitStack], C.Candidate]:
    """memcpy_floor.c (one process), or ring_floor.c (two processes)."""

    def start(stack: contextlib.ExitStack) -> C.Candidate:
        exe = C.compile_c(program)

        def run(n: int) -> int:
            cpu = r.producer_cpu if program == "memcpy_floor" else None  # ring_floor: never
            try:
                with C.pinned([cpu]) if cpu is not None else contextlib.nullcontext():
                    return int(C.run_c(exe, size, capacity, n, timeout=r.timeout))
            except RuntimeError as e:
                raise C.CandidateFailed(str(e)) from None

        return C.Candidate(name, run)

    return start


def _row(name: str, lib: str, link: Link, start: Callable[[contextlib.ExitStack], C.Candidate]
         ) -> RowSpec:
    try:
        link.check()
    except Unavailable as e:
        return RowSpec(name, lib, None, str(e), link.api)
    return RowSpec(name, lib, start, None, link.api)


def _peer_rows(r: Runner, mode: str, size: int, capacity: int, batch: int = 0,
               only: Optional[set[str]] = None) -> list[RowSpec]:
    rows = []
    for key, make in PEERS:
        if only is not None and key not in only:
            continue
        factory: Callable[[], Link] = partial(make, mode, size, capacity)
        link = factory()
        if batch and link.__class__ is FasterFifoLink:
            name = "faster-fifo put_many/get_many"
        elif key.startswith("iceoryx2"):
            name = key
        else:
            name = f"{key} {link.api}"
        rows.append(_row(name, "peer", link, throughput_start(r, factory, batch, name)))
    return rows


def _shmsem_throughput(r: Runner, mode: str, size: int, capacity: int, batch: int = 0,
                       into: bool = False) -> RowSpec:
    factory = partial(ShmsemLink, mode, size, capacity, into=into)
    link = factory()
    if batch:
        name = ("shmsem Channel put_many/get_many" if mode == OBJECTS
                else "shmsem Channel put_many_bytes/get_many_bytes")
    else:
        name = f"shmsem {link.api}"
    return _row(name, SHMSEM, link, throughput_start(r, factory, batch, name))


def build_groups(r: Runner) -> list[GroupSpec]:
    layout = r.throughput_layout
    groups = []
    for gid, size, title in (("throughput_64", 64, "64 B messages, one by one"),
                             ("throughput_4k", 4096, "4 KiB messages, one by one")):
        rows = [_shmsem_throughput(r, BYTES, size, SMALL_CAPACITY)]
        rows += _peer_rows(r, BYTES, size, SMALL_CAPACITY)
        groups.append(GroupSpec(gid, title, "throughput", size, rows, layout))
    for gid, size, title in (("batch_64", 64, f"64 B messages in batches of {BATCH}"),
                             ("batch_4k", 4096, f"4 KiB messages in batches of {BATCH}")):
        rows = [_shmsem_throughput(r, BYTES, size, SMALL_CAPACITY, BATCH)]
        rows += _peer_rows(r, BYTES, size, SMALL_CAPACITY, BATCH, only={"faster-fifo"})
        groups.append(GroupSpec(gid, title, "throughput", size, rows, layout, batch=BATCH))

    size = 1 << 20
    rows = [_shmsem_throughput(r, BYTES, size, LARGE_CAPACITY),
            _shmsem_throughput(r, BYTES, size, LARGE_CAPACITY, into=True)]
    floor = "C memcpy floor (into a ring, out to a new buffer)"
    rows.append(RowSpec(floor, "floor", memcpy_floor_start(r, size, LARGE_CAPACITY, floor)))
    floor = "C two-process ring (lock-free, spinning; reference)"
    rows.append(RowSpec(floor, "floor", memcpy_floor_start(r, size, LARGE_CAPACITY, floor,
                                                           "ring_floor")))
    rows += _peer_rows(r, BYTES, size, LARGE_CAPACITY)
    groups.append(GroupSpec("throughput_1m", "1 MiB messages", "throughput", size, rows, layout))

    rows = [_shmsem_throughput(r, OBJECTS, 0, SMALL_CAPACITY)]
    rows += [row for row in _peer_rows(r, OBJECTS, 0, SMALL_CAPACITY)
             if row.unavailable is None or row.unavailable == C.NOT_INSTALLED]
    groups.append(GroupSpec("objects", f"small Python objects (a dict of {len(OBJECT)} fields)",
                            "throughput", 0, rows, layout, mode=OBJECTS))

    layouts = [("pingpong_same", "same CPU", r.cpus[0], r.cpus[0])]
    if len(r.cpus) > 1:
        layouts.insert(0, ("pingpong_separate", "separate CPUs", r.cpus[0], r.cpus[1]))
    for gid, label, a, b in layouts:
        size = PINGPONG_SIZE
        rows = []
        factory = partial(ShmsemLink, BYTES, size, SMALL_CAPACITY)
        name = SINGLE
        rows.append(_row(name, SHMSEM, factory(), pingpong_start(r, factory, a, b, name)))
        name = "C semop ping-pong floor"
        rows.append(RowSpec(name, "floor", semop_floor_start(r, a, b, name)))
        for key, make in PEERS:
            pfactory: Callable[[], Link] = partial(make, BYTES, size, SMALL_CAPACITY)
            link = pfactory()
            name = key if key.startswith("iceoryx2") else f"{key} {link.api}"
            rows.append(_row(name, "peer", link, pingpong_start(r, pfactory, a, b, name)))
        groups.append(GroupSpec(gid, f"ping-pong of {size} B, {label}", "pingpong", size, rows,
                                f"CPUs {a} and {b}"))
    return groups


# ---------------------------------------------------------------------------
# Running


def run_group(r: Runner, g: GroupSpec) -> dict[str, Any]:
    r.progress.phase(g.title)
    planned = sum(1 + r.trials for row in g.rows if row.start is not None)
    before = r.progress.done
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        cands = []
        for row in g.rows:
            out: dict[str, Any] = {"name": row.name, "lib": row.lib, "api": row.api,
                                   "stats": None, "missing": row.unavailable, "error": None}
            rows.append(out)
            if row.start is None:
                continue
            try:
                cands.append(row.start(stack))
            except (Unavailable, C.CFloorUnavailable) as e:
                out["missing"] = str(e)
            except (C.CandidateFailed, OSError, RuntimeError, ValueError) as e:
                out["error"] = f"{type(e).__name__}: {e}"
                r.progress.note(f"{row.name}: could not start: {out['error']}")
        stats = C.interleaved(cands, r.trials, r.trial_time, step=r.step,
                              failures=failures)
        ns = {c.name: c.n for c in cands}
    for out in rows:
        if out["name"] in failures:
            out["error"] = failures[out["name"]]
            r.progress.note(f"{out['name']}: {out['error']}")
        s = stats.get(out["name"])
        out["stats"] = s
        out["n"] = ns.get(out["name"])
    r.step("", max(0, before + planned - r.progress.done))
    return {"id": g.id, "title": g.title, "kind": g.kind, "size": g.size, "mode": g.mode,
            "batch": g.batch, "layout": g.layout, "rows": rows}


def _idle_links() -> list[tuple[str, Link]]:
    out: list[tuple[str, Link]] = [(SHMSEM + " Channel get_bytes()",
                                    ShmsemLink(BYTES, 64, SMALL_CAPACITY))]
    for key, make in PEERS:
        link = make(BYTES, 64, SMALL_CAPACITY)
        out.append((key if key.startswith("iceoryx2") else f"{key} {link.api.split('/')[-1]}",
                    link))
    return out


def run_idle(r: Runner) -> dict[str, Any]:
    """Consumers blocked in their receive call, nothing sent: the CPU each
    uses over IDLE_WINDOW seconds, all at once."""
    windows = IDLE_WINDOWS_QUICK if r.quick else IDLE_WINDOWS_FULL
    r.progress.phase(f"idle consumers: {windows} window(s) of {IDLE_WINDOW:g} s")
    rows: list[dict[str, Any]] = []
    workers: list[tuple[dict[str, Any], C.Worker]] = []
    with contextlib.ExitStack() as stack:
        for name, link in _idle_links():
            out: dict[str, Any] = {"name": name, "lib": SHMSEM if name.startswith(SHMSEM)
                                   else "peer", "api": link.api, "stats": None,
                                   "missing": None, "error": None}
            rows.append(out)
            try:
                link.check()
                link.setup(stack)
            except Unavailable as e:
                out["missing"] = str(e)
                continue

            def build(link: Link = link) -> C.Role:
                rx = link.open_receiver()
                recv = rx.recv
                if isinstance(link, FasterFifoLink):  # its default timeout is 10 s
                    recv = partial(link.q.get, timeout=3600.0)
                return (lambda arg: recv()), rx.close

            try:
                w = C.Worker(f"{name} idle", build)
                stack.callback(w.kill)  # blocked in a receive: stop() would only wait
                w.wait_ready(r.timeout)
                w.send("go")
            except C.CandidateFailed as e:
                out["error"] = str(e)
                continue
            workers.append((out, w))
        time.sleep(IDLE_SETTLE)
        samples: dict[str, list[float]] = {out["name"]: [] for out, _ in workers}
        for i in range(windows):
            t0 = time.monotonic_ns()
            cpu0 = {out["name"]: C.process_cpu_ns(w.pid) for out, w in workers}
            time.sleep(IDLE_WINDOW)
            t1 = time.monotonic_ns()
            for out, w in workers:
                samples[out["name"]].append(
                    100.0 * (C.process_cpu_ns(w.pid) - cpu0[out["name"]]) / (t1 - t0))
            r.step(f"window {i + 1}/{windows}")
        for out, w in workers:
            if not w.proc.is_alive() or w._conn.poll(0):
                out["error"] = "the consumer stopped waiting (it returned or failed)"
            elif samples[out["name"]]:
                out["stats"] = C.Stats(tuple(samples[out["name"]]))
    cleanup_iceoryx()
    return {"id": "idle", "title": f"idle consumer, blocked with nothing to receive "
            f"({windows} × {IDLE_WINDOW:g} s)", "kind": "idle", "size": 0, "mode": BYTES,
            "batch": 0, "layout": "unpinned", "rows": rows}


def run_mailbox(r: Runner) -> dict[str, Any]:
    r.progress.phase("Mailbox publish and read")
    size = 64
    with contextlib.ExitStack() as stack:
        mb = shmsem.Mailbox(None, size)
        C.cleanup(stack, mb.close, "shmsem Mailbox")  # the creator owns it
        value = os.urandom(size)
        mb.publish(value)
        if mb.read()[1] != value:
            raise RuntimeError("Mailbox.read() did not return what publish() wrote")

        def publish_run(n: int) -> int:
            publish = mb.publish
            it = repeat(None, n)
            t0 = perf_counter_ns()
            for _ in it:
                publish(value)
            return perf_counter_ns() - t0

        def read_run(n: int) -> int:
            read = mb.read
            it = repeat(None, n)
            t0 = perf_counter_ns()
            for _ in it:
                read()
            return perf_counter_ns() - t0

        cands = [C.Candidate("Mailbox.publish(64 B)", publish_run),
                 C.Candidate("Mailbox.read() -> 64 B", read_run)]
        with C.pinned([r.cpus[0]]):
            stats = C.interleaved(cands, r.trials, r.trial_time, step=r.step)
    rows = [{"name": c.name, "lib": SHMSEM, "api": "", "stats": stats[c.name], "n": c.n,
             "missing": None, "error": None} for c in cands]
    return {"id": "mailbox", "title": f"Mailbox, {size} B values, one process",
            "kind": "mailbox", "size": size, "mode": BYTES, "batch": 0,
            "layout": f"CPU {r.cpus[0]}", "rows": rows}


# ---------------------------------------------------------------------------
# Ratios and targets


def _measured(g: dict[str, Any], lib: Optional[str] = None) -> list[dict[str, Any]]:
    return [row for row in g["rows"] if row["stats"] is not None
            and (lib is None or row["lib"] == lib)]


def add_ratios(g: dict[str, Any]) -> None:
    """Per row: throughput, and the paired ratio against the group's first
    shmsem row ("shmsem ÷ this": how many times faster shmsem is; for
    ping-pong, "this ÷ C floor")."""
    kind = g["kind"]
    ref = next(iter(_measured(g, SHMSEM)), None)
    floor = next(iter(_measured(g, "floor")), None)
    for row in g["rows"]:
        s: Optional[C.Stats] = row["stats"]
        if s is None:
            continue
        if kind == "throughput":
            row["msgs_per_s"] = 1e9 / s.median
            row["gb_per_s"] = g["size"] * 1e9 / s.median / 1e9 if g["size"] else None
            if ref is not None:
                row["shmsem_speedup"] = C.paired_ratios(s, ref["stats"])
        elif kind == "pingpong" and floor is not None:
            row["vs_floor"] = C.paired_ratios(s, floor["stats"])
    peers = _measured(g, "peer")
    if peers and kind in ("throughput", "pingpong"):
        best = min(peers, key=lambda row: row["stats"].median)
        g["best_peer"] = best["name"]


def evaluate(groups: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        res: dict[str, Any] = {"id": t.id, "what": t.what, "target": t.text, "op": t.op,
                               "threshold": t.value, "unit": t.unit, "value": None,
                               "median": None, "met": None, "against": None, "note": ""}
        out.append(res)
        g = groups.get(t.group)
        if g is None:
            res["note"] = "not measured (needs two CPUs)" if "separate" in t.id else \
                "not measured"
            continue
        sh = next(iter(_measured(g, SHMSEM)), None)
        value: Optional[C.Stats] = None
        if sh is None:
            res["note"] = "shmsem was not measured"
            continue
        if t.id in ("single_64", "single_4k", "large_peer"):
            best = g.get("best_peer")
            if best is None:
                res["note"] = "no peer measured"
            else:
                res["against"] = best
                value = C.paired_ratios(_row_named(g, best)["stats"], sh["stats"])
        elif t.id in ("batch_64", "batch_4k"):
            ff = next((row for row in _measured(g, "peer") if "faster-fifo" in row["name"]),
                      None)
            if ff is None:
                res["note"] = "faster-fifo not measured"
            else:
                res["against"] = ff["name"]
                value = C.paired_ratios(ff["stats"], sh["stats"])
        elif t.id == "large_floor" or t.id.startswith("pingpong"):
            fl = next(iter(_measured(g, "floor")), None)
            if fl is None:
                res["note"] = "C floor not measured"
            else:
                res["against"] = fl["name"]
                value = (C.paired_ratios(fl["stats"], sh["stats"]) if t.id == "large_floor"
                         else C.paired_ratios(sh["stats"], fl["stats"]))
        elif t.id == "objects":
            q = next((row for row in _measured(g, "peer")
                      if row["name"].startswith("multiprocessing.Queue")), None)
            if q is None:
                res["note"] = "multiprocessing.Queue not measured"
            else:
                res["against"] = q["name"]
                value = C.paired_ratios(q["stats"], sh["stats"])
        elif t.id == "idle":
            value = sh["stats"]
            res["against"] = sh["name"]
        elif t.id.startswith("mailbox"):
            rows = _measured(g)
            row = rows[0] if t.id == "mailbox_publish" else rows[1]
            res["against"] = row["name"]
            value = row["stats"]
        if value is not None:
            res["value"] = value
            res["median"] = value.median
            res["met"] = t.met(value.median)
    return out


def _row_named(g: dict[str, Any], name: str) -> dict[str, Any]:
    return next(row for row in g["rows"] if row["name"] == name)


# ---------------------------------------------------------------------------
# Output


def fmt_rate(x: float) -> str:
    for div, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _fmt_ratio(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def _fmt_pct(s: C.Stats) -> str:
    return f"{s.spread * 100:.0f} %"


def _reason(row: dict[str, Any]) -> str:
    if row.get("missing"):
        return f"not measured: {row['missing']}"
    return f"failed: {row.get('error')}"


def group_table(g: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    kind = g["kind"]
    rows = []
    if kind == "throughput":
        headers = ["candidate", "msgs/s", "GB/s", "range msgs/s", "IQR", "shmsem ÷ this"]
        for row in g["rows"]:
            s = row["stats"]
            if s is None:
                rows.append([row["name"], "—", "—", _reason(row), "", ""])
                continue
            gb = f"{row['gb_per_s']:.3g}" if row.get("gb_per_s") is not None else "—"
            sp = row.get("shmsem_speedup")
            rows.append([row["name"], fmt_rate(1e9 / s.median), gb,
                         f"{fmt_rate(1e9 / s.max)}–{fmt_rate(1e9 / s.min)}", _fmt_pct(s),
                         f"{sp.median:.2f}" if sp is not None else "—"])
    elif kind == "pingpong":
        headers = ["candidate", "µs/round trip", "range", "IQR", "this ÷ C floor"]
        for row in g["rows"]:
            s = row["stats"]
            if s is None:
                rows.append([row["name"], "—", _reason(row), "", ""])
                continue
            vf = row.get("vs_floor")
            med, rng = C.fmt_stats(s, 1e-3)
            rows.append([row["name"], med, rng, _fmt_pct(s),
                         _fmt_ratio(vf.median) if vf is not None else "—"])
    elif kind == "idle":
        headers = ["receiver", "CPU %", "range"]
        for row in g["rows"]:
            s = row["stats"]
            if s is None:
                rows.append([row["name"], "—", _reason(row)])
                continue
            rows.append([row["name"], f"{s.median:.3g}", f"{s.min:.3g}–{s.max:.3g}"])
    else:
        headers = ["operation", "ns/call", "range", "IQR"]
        for row in g["rows"]:
            s = row["stats"]
            med, rng = C.fmt_stats(s)
            rows.append([row["name"], med, rng, _fmt_pct(s)])
    return headers, rows


def targets_table(targets: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = ["target", "wanted", "reached", "range", "against", "verdict"]
    rows = []
    for t in targets:
        v: Optional[C.Stats] = t["value"]
        if v is None:
            rows.append([t["what"], t["target"], "—", "", t["note"], "not measured"])
            continue
        unit = {"x": "×", "%": " %", "ns": " ns"}[t["unit"]]
        if t["unit"] == "x":
            med, rng = f"{v.median:.3g}{unit}", f"{v.min:.3g}–{v.max:.3g}"
        else:
            med, rng = f"{C.fmt_num(v.median)}{unit}", f"{C.fmt_num(v.min)}–{C.fmt_num(v.max)}"
        rows.append([t["what"], t["target"], med, rng, t["against"] or "",
                     "met" if t["met"] else "MISSED"])
    return headers, rows


def _missing_peers() -> list[str]:
    return [name for name, (_mod, m) in PEER_MODULES.items() if m is None]


def _versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"shmsem": shmsem.__version__}
    for dist in ("sysv_ipc", "faster-fifo", "pyzmq", "iceoryx2", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def render_text(res: dict[str, Any], stream: IO[str]) -> str:
    from ..util import Style, render_table

    style = Style.for_stream(stream)
    out = [style("shmsem bench: Channel and Mailbox against their peers", "bold"),
           _settings_line(res), f"Machine: {C.describe_machine(res['machine'])}"]
    if res["missing_peers"]:
        out.append(style(f"Not installed: {', '.join(res['missing_peers'])}; "
                         "install them with: pip install 'shmsem[bench]'", "yellow"))
    for g in res["groups"]:
        headers, rows = group_table(g)
        out += ["", style(f"{g['title']} ({g['layout']})", "bold")]
        out.append(render_table(headers, rows, style, right=range(1, len(headers) - 1)))
    headers, rows = targets_table(res["targets"])
    cells: list[list[Any]] = [r[:-1] + [(r[-1], "green" if r[-1] == "met" else "red")]
                              for r in rows]
    out += ["", style("Targets (paired ratios: median over trials)", "bold"),
            render_table(headers, cells, style, right=(2, 3))]
    if res["leaked"]:
        out.append(style(f"LEAK? IPC_PRIVATE objects left behind: {res['leaked']}", "red"))
    return "\n".join(out)


def _settings_line(res: dict[str, Any]) -> str:
    s = res["settings"]
    return (f"{'quick run: ' if s['quick'] else ''}{s['trials']} interleaved trials of "
            f"~{s['trial_time']:g} s per candidate; medians, with the range over trials; "
            f"took {res['elapsed_s']:.0f} s")


def render_markdown(res: dict[str, Any]) -> str:
    """The results part of docs/benchmarks.md, "Channels"."""
    v = res["versions"]
    load = " ".join(res["machine"].get("loadavg", []))
    machine = C.describe_machine(res["machine"])
    out = [f"- **Machine:** {machine}; load average at the start {load}.",
           "- **Versions:** " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
           f"- **Run:** {_settings_line(res)}; {res['machine']['date']}.",
           ""]
    if res["missing_peers"]:
        out += [f"Not installed: {', '.join(res['missing_peers'])}.", ""]
    for g in res["groups"]:
        headers, rows = group_table(g)
        out += [f"#### {g['title'][0].upper()}{g['title'][1:]} ({g['layout']})", "",
                C.markdown_table(headers, rows), ""]
    headers, rows = targets_table(res["targets"])
    out += ["#### Targets", "", C.markdown_table(headers, rows, "llrrll"), ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Entry points


def _planned_steps(groups: list[GroupSpec], trials: int, quick: bool) -> int:
    n = sum(1 + trials for g in groups for row in g.rows if row.start is not None)
    return n + (IDLE_WINDOWS_QUICK if quick else IDLE_WINDOWS_FULL) + 2 * (1 + trials)


def run_all(args: argparse.Namespace, progress_stream: IO[str] = sys.stderr,
            interrupts: Optional[Interrupts] = None) -> dict[str, Any]:
    """Run everything; returns the results (as written by --json)."""
    trials, trial_time = C.trial_settings(args)
    cpus = C.allowed_cpus()
    if getattr(args, "cpus", None):
        cpus = [int(x) for x in args.cpus.split(",")]
    info = C.machine_info()
    progress = C.Progress(1, progress_stream)
    r = Runner(trials, trial_time, cpus, args.quick, progress,
               pin_throughput=bool(getattr(args, "pin", False)), interrupts=interrupts)
    specs = build_groups(r)
    progress.total = _planned_steps(specs, trials, args.quick)
    before = C.sysv_objects()
    started = time.monotonic()
    groups: list[dict[str, Any]] = []
    try:
        for spec in specs:
            groups.append(run_group(r, spec))
        groups.append(run_idle(r))
        groups.append(run_mailbox(r))
    finally:
        progress.close()
        cleanup_iceoryx()
    for g in groups:
        add_ratios(g)
    by_id = {g["id"]: g for g in groups}
    return {
        "machine": info,
        "settings": {"trials": trials, "trial_time": trial_time, "quick": bool(args.quick),
                     "cpus": cpus, "small_capacity": SMALL_CAPACITY,
                     "large_capacity": LARGE_CAPACITY, "batch": BATCH,
                     "idle_window_s": IDLE_WINDOW, "pin_throughput": r.pin_throughput,
                     "throughput_layout": r.throughput_layout},
        "versions": _versions(),
        "missing_peers": _missing_peers(),
        "elapsed_s": time.monotonic() - started,
        "groups": groups,
        "targets": evaluate(by_id),
        "leaked": C.new_private_objects(before),
    }


class BenchError(Exception):
    """A problem with the options or the environment, found before running."""


def load_results(path: str) -> dict[str, Any]:
    """Results written by --json, with Stats, ratios and verdicts rebuilt
    (so that --from-json re-renders a saved run exactly)."""
    import json

    with open(path) as f:
        res: dict[str, Any] = json.load(f)
    for g in res["groups"]:
        for row in g["rows"]:
            st = row.get("stats")
            row["stats"] = C.Stats(tuple(st["samples"])) if st else None
        add_ratios(g)
    res["targets"] = evaluate({g["id"]: g for g in res["groups"]})
    return res


def check_plot_available() -> Optional[str]:
    """None, or why --plot cannot work here."""
    if C.optional_import("matplotlib") is None:
        return ("--plot needs matplotlib, which is not installed: "
                "pip install 'shmsem[bench]' (or pip install matplotlib)")
    return None


def bench(args: argparse.Namespace, stdout: IO[str] = sys.stdout,
          stderr: IO[str] = sys.stderr) -> int:
    """The whole command: run, print, write --json and --plot.  Returns the
    exit status; raises BenchError for a bad option (before running)."""
    if args.plot:
        why = check_plot_available()
        if why:
            raise BenchError(why)
    if getattr(args, "cpus", None):
        try:
            cpus = [int(x) for x in args.cpus.split(",")]
        except ValueError:
            raise BenchError(f"--cpus {args.cpus!r}: give CPU numbers, as 0,1") from None
        if not cpus or not set(cpus) <= set(C.allowed_cpus()):
            raise BenchError(f"--cpus {args.cpus}: this process may run only on CPUs "
                             f"{','.join(map(str, C.allowed_cpus()))}")
    if (args.trials is not None and args.trials < 1) or (
            args.trial_time is not None and args.trial_time <= 0):
        raise BenchError("--trials must be 1 or more and --trial-time above 0")
    if getattr(args, "from_json", None):
        try:
            res = load_results(args.from_json)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BenchError(f"--from-json {args.from_json}: not a results file ({e})") from None
        args.json = None  # it is already written
    else:
        with Interrupts() as interrupts:
            res = run_all(args, stderr, interrupts)
    if getattr(args, "markdown", False):
        print(render_markdown(res), file=stdout)
    else:
        print(render_text(res, stdout), file=stdout)
    if args.json:
        C.write_json(args.json, res)
    if args.plot:
        from .plot import plot

        plot(res, args.plot)
        print(f"wrote {args.plot}", file=stderr)
    if res["leaked"]:
        print(f"LEAK? IPC_PRIVATE objects that appeared during the run and are still there "
              f"(another process may have made them): {res['leaked']}", file=stderr)
        return 1
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """`shmsem bench` (cli.py)."""
    from ..util import CliError

    try:
        return bench(args)
    except BenchError as e:
        raise CliError(str(e)) from None


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """benchmarks/peers.py."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_peers_options(p)
    p.add_argument("--from-json", metavar="FILE",
                   help="measure nothing: print (and --plot) the results saved in FILE by "
                        "--json")
    args = p.parse_args(argv)
    try:
        return bench(args)
    except BenchError as e:
        print(f"{p.prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every object and process made so far has been removed",
              file=sys.stderr)
        return 130
