"""Helpers for the attack tests: hostile writers, victims, and processes as
another user.

Everything here runs either in pytest (the parent side: ``Proc``,
``start_role``, ``set_ipc_owner``...) or in child processes started with
``python -c "import helpers_hostile as H; H.main()" SPEC`` (the roles:
``hostile``, ``victim``).  Children get ``child_env()``: a copy of this
process's environment (so ``LD_PRELOAD`` of a sanitizer runtime, ``PYTHONPATH``
and ``ASAN_OPTIONS`` carry over) with this directory put first on
``PYTHONPATH``.

A hostile writer attaches a segment like any peer and stores whatever it likes
into it.  It uses aligned 8- and 4-byte stores through ``memoryview.cast``
(one machine store each, as C11 atomics would be): ``struct.pack_into`` must
not be used for that, because it zero-fills its target before writing the
bytes, so a value it "holds" keeps flickering through 0.

A victim runs Channel or Mailbox calls in its main thread and watches itself:
a watchdog thread ticks every 10 ms (a call that held the GIL shows as a long
gap between ticks), samples the anonymous resident memory, and prints a status
line now and then (so a victim that stopped answering is seen by the parent);
tracemalloc measures the peak of Python-level allocations, where every buffer
the C core allocates is counted.  Each call is timed and its outcome counted;
an exception outside the allowed set is recorded as unexpected.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import queue
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ATTACK_DIR = Path(__file__).resolve().parent
# tests/, for proc_helpers (children get it on PYTHONPATH from child_env).
sys.path.insert(0, str(ATTACK_DIR.parent))
from proc_helpers import FUTEX_OWNER_DIED, FUTEX_TID_MASK, FUTEX_WAITERS  # noqa: E402
from proc_helpers import drop_to_user_prelude  # noqa: E402

from shmsem._core import CHANNEL_OFFSETS, LOCK_OFFSETS, MAILBOX_OFFSETS  # noqa: E402

# ---------------------------------------------------------------------------
# docs/protocol.md offsets (section 1 by hand; the lock, Channel and Mailbox
# fields from the C structs, which tests/protocol checks against the document)

MAGIC, VERSION, HEADER_SIZE, CAPACITY, CELL_STRIDE, CREATOR_PID = 0, 8, 12, 16, 24, 32
CHANNEL_MAGIC = 0x48434D45534D4853
MAILBOX_MAGIC = 0x424D4D45534D4853
# The lock (section 2): u32 futex word, u64 recoveries, the holder's
# robust-list node in the 16 bytes of links (two u64: glibc's "prev" and the
# node's "next"); the rest is reserved.
LOCK_WORD = LOCK_OFFSETS["word"]
LOCK_RECOVERIES = LOCK_OFFSETS["recoveries"]
LOCK_LINKS = LOCK_OFFSETS["links"]
LOCK_SIZE = LOCK_OFFSETS["size"]
LOCK_LINKS_SIZE = 16
LOCK_RESERVED = [[LOCK_WORD + 4, 4], [LOCK_RECOVERIES + 8, 8],
                 [LOCK_LINKS + LOCK_LINKS_SIZE, LOCK_SIZE - LOCK_LINKS - LOCK_LINKS_SIZE]]
CH_PROD_LOCK, CH_TAIL, CH_PUT_COUNT = (CHANNEL_OFFSETS[k] for k in ("producer_lock", "tail",
                                                                     "put_count"))
CH_CONS_LOCK, CH_HEAD, CH_GET_COUNT = (CHANNEL_OFFSETS[k] for k in ("consumer_lock", "head",
                                                                     "get_count"))
CH_DATA_EVENT, CH_SPACE_EVENT = CHANNEL_OFFSETS["data_event"], CHANNEL_OFFSETS["space_event"]
CH_CONSUMERS_WAITING = CHANNEL_OFFSETS["consumers_waiting"]
CH_PRODUCERS_WAITING = CHANNEL_OFFSETS["producers_waiting"]
CH_RING = 256  # header_size
CH_LOCKS = [CH_PROD_LOCK, CH_CONS_LOCK]
MB_WRITER_LOCK, MB_STATE, MB_EVENT, MB_WAITING = (MAILBOX_OFFSETS[k] for k in (
    "writer_lock", "state", "event", "waiting"))
MB_CELLS = 128  # header_size
MB_LOCKS = [MB_WRITER_LOCK]
CELL_LOCK_SEQ, CELL_SEQ, CELL_LENGTH, CELL_DATA = 0, 8, 16, 64

U64 = 2**64 - 1
U32 = 2**32 - 1

# A palette of adversarial numbers for 8-byte and 4-byte fields.
PALETTE64 = [0, 1, 7, 8, 9, 16, 0x7F, 0xFF, 0xFFFF, U32, U32 + 1, 2**31 - 1, 2**31,
             2**48, 2**63 - 1, 2**63, U64, U64 - 7, U64 - 8]
PALETTE32 = [0, 1, 2, 3, 4, 7, 8, 0xFF, 0x100, 0xFFFF, 2**31 - 1, 2**31, U32 - 7, U32,
             # lock words: free with waiters, the kernel's "holder died" marks, an id
             FUTEX_WAITERS, FUTEX_OWNER_DIED, FUTEX_OWNER_DIED | FUTEX_WAITERS,
             FUTEX_OWNER_DIED | 1, FUTEX_TID_MASK]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment (sanitizer preloads included) with this
    directory first on PYTHONPATH."""
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(ATTACK_DIR), str(ATTACK_DIR.parent)]
                                        + ([old] if old else []))
    env.setdefault("PYTHONFAULTHANDLER", "1")
    if extra:
        env.update(extra)
    return env


def under_asan() -> bool:
    return "asan" in os.environ.get("LD_PRELOAD", "")


SANITIZER_MARKS = ("AddressSanitizer", "UndefinedBehaviorSanitizer", "runtime error:",
                   "LeakSanitizer", "Fatal Python error")


def sanitizer_report(stderr: str) -> str | None:
    """The part of stderr that reports a sanitizer finding or a fatal error."""
    for mark in SANITIZER_MARKS:
        at = stderr.find(mark)
        if at >= 0:
            return stderr[max(0, at - 200):at + 3000]
    return None


# ---------------------------------------------------------------------------
# Lock words (docs/protocol.md section 2): the holder's thread id, or 0, with
# FUTEX_WAITERS and FUTEX_OWNER_DIED


def word_state(word: int) -> int:
    """A lock word without FUTEX_WAITERS, which any waiter may set: the id
    and FUTEX_OWNER_DIED, what says who holds the lock."""
    return word & ~FUTEX_WAITERS & U32


_SYSCALLS = {"x86_64": {"get_robust_list": 274, "set_robust_list": 273},
             "aarch64": {"get_robust_list": 100, "set_robust_list": 99}}


def mapping_address(buf: memoryview) -> int:
    """The address of the first byte of a (writable) memoryview."""
    c = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(c)
    finally:
        del c


class RobustHolder:
    """Hold locks as a foreign peer of docs/protocol.md section 2 does: store
    this thread's id in the word and put the lock's node on this thread's
    robust list (the C library's), so that the kernel marks the lock
    FUTEX_OWNER_DIED when this thread exits.  Only for a thread that holds
    nothing else: the nodes go at the head of the list, and they are never
    unlinked (the holder holds until it dies)."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        nr = _SYSCALLS[os.uname().machine]
        head, size = ctypes.c_void_p(), ctypes.c_size_t()
        if self.libc.syscall(nr["get_robust_list"], 0, ctypes.byref(head), ctypes.byref(size)):
            raise OSError(ctypes.get_errno(), "get_robust_list")
        if not head.value:
            # No list registered by the C library: register one of our own.
            self._own = (ctypes.c_long * 3)()
            addr = ctypes.addressof(self._own)
            self._own[0], self._own[1], self._own[2] = addr, -(LOCK_LINKS + 8), 0
            if self.libc.syscall(nr["set_robust_list"], ctypes.c_void_p(addr), 24):
                raise OSError(ctypes.get_errno(), "set_robust_list")
            head.value = addr
        self.head = head.value
        self.futex_offset = ctypes.c_long.from_address(self.head + 8).value
        self.tid = threading.get_native_id()

    def hold(self, words: "Words", base: int, off: int) -> None:
        """Take the lock whose word is at ``off`` in the segment this process
        maps at ``base`` (free: nobody else may be taking it), for good."""
        node = base + off - self.futex_offset
        first = ctypes.c_void_p.from_address(self.head)
        ctypes.c_void_p.from_address(self.head + 16).value = node  # list_op_pending
        words.set32(off, self.tid)
        ctypes.c_void_p.from_address(node).value = first.value
        first.value = node
        ctypes.c_void_p.from_address(self.head + 16).value = None


def dead_pid() -> int:
    """A pid that no process has right now."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


# ---------------------------------------------------------------------------
# Aligned stores into a segment


class Words:
    """Aligned u64/u32 loads and stores (single machine accesses) over a
    memoryview of a whole segment, plus plain byte writes."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.q = buf.cast("Q") if len(buf) % 8 == 0 else None
        self.w = buf.cast("I") if len(buf) % 4 == 0 else None

    def get64(self, off: int) -> int:
        assert self.q is not None and off % 8 == 0
        return int(self.q[off // 8])

    def set64(self, off: int, value: int) -> None:
        assert self.q is not None and off % 8 == 0
        self.q[off // 8] = value & U64

    def get32(self, off: int) -> int:
        assert self.w is not None and off % 4 == 0
        return int(self.w[off // 4])

    def set32(self, off: int, value: int) -> None:
        assert self.w is not None and off % 4 == 0
        self.w[off // 4] = value & U32

    def store(self, off: int, width: int, value: int) -> None:
        if width == 8:
            self.set64(off, value)
        elif width == 4:
            self.set32(off, value)
        else:
            self.buf[off:off + width] = (value & (2 ** (8 * width) - 1)).to_bytes(width, "little")

    def release(self) -> None:
        for v in (self.q, self.w):
            if v is not None:
                v.release()
        self.q = self.w = None
        self.buf.release()


# ---------------------------------------------------------------------------
# Parent side: child processes


class Proc:
    """A child Python process speaking JSON lines on stdout.  A reader thread
    collects every line, so the pipe never fills and nothing is lost."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env if env is not None else child_env(), cwd="/",
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._err: list[bytes] = []
        self._t_out = threading.Thread(target=self._read_out, daemon=True)
        self._t_err = threading.Thread(target=self._read_err, daemon=True)
        self._t_out.start()
        self._t_err.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            self.raw.append(line)
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"t": "text", "text": line}
            if not isinstance(obj, dict):
                obj = {"t": "text", "text": line}
            self.seen.append(obj)
            self.lines.put(obj)
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._err.append(raw)

    def stderr(self) -> str:
        return b"".join(self._err).decode(errors="replace")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def expect(self, tag: str, timeout: float) -> dict[str, Any]:
        """The next line whose "t" is ``tag`` (other lines are kept in
        ``seen``); a clear failure if it does not come in time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                obj = self.lines.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise ChildFailure(self, f"said no {tag!r} within {timeout} s") from None
            if obj is None:
                self.proc.wait(10)
                raise ChildFailure(self, f"exited (rc={self.proc.returncode}) before {tag!r}")
            if obj.get("t") == tag:
                return obj

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ChildFailure(self, f"did not exit within {timeout} s") from None
        self._t_out.join(5)
        self._t_err.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        self.kill()
        for s in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass

    def last_status(self) -> dict[str, Any] | None:
        for obj in reversed(self.seen):
            if obj.get("t") == "status":
                return obj
        return None

    def describe(self) -> str:
        role = self.argv[-1][:80] if self.argv else "?"
        return (f"child pid {self.pid} ({role}); last status {self.last_status()}; "
                f"stderr:\n{self.stderr()[-4000:]}")


class ChildFailure(AssertionError):
    def __init__(self, proc: Proc, what: str) -> None:
        super().__init__(f"{what}: {proc.describe()}")


def start_role(spec: dict[str, Any], env: dict[str, str] | None = None) -> Proc:
    """Start a child running role ``spec["role"]`` (hostile or victim)."""
    argv = [sys.executable, "-X", "faulthandler", "-c",
            "import helpers_hostile as H; H.main()", json.dumps(spec)]
    return Proc(argv, env=env if env is not None else child_env())


def check_exit(p: Proc, timeout: float) -> None:
    """The child must exit 0 by itself: a negative code is a crash (signal),
    and a sanitizer report on stderr is a memory error even with exit 0."""
    rc = p.wait(timeout)
    report = sanitizer_report(p.stderr())
    if rc < 0:
        raise ChildFailure(p, f"CRASHED with signal {-rc} ({signal.Signals(-rc).name})")
    if report is not None:
        raise ChildFailure(p, f"sanitizer or fatal error report (rc={rc}):\n{report}")
    if rc != 0:
        raise ChildFailure(p, f"exited with status {rc}")


# ---------------------------------------------------------------------------
# Another user, with supplementary groups


def run_as(code: str, uid: int, gid: int, groups: list[int], timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``code`` as uid/gid with these supplementary groups (the caller must
    be root).  As in conftest's child(user=...), the child keeps only the
    right to read files, so that it can import from an interpreter or a
    checkout that user cannot read (see proc_helpers); every IPC call runs as
    that user.  Returns (rc, stdout, stderr)."""
    import textwrap

    argv = [sys.executable, "-c",
            drop_to_user_prelude(uid, gid, groups, preimport=["helpers_hostile"]),
            textwrap.dedent(code)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=child_env(), cwd="/", check=False)
    return proc.returncode, proc.stdout, proc.stderr


# ---------------------------------------------------------------------------
# IPC_SET through libc: shmsem sets only modes, so owners and groups are set
# here (root may set any; an owner or creator may give the object away).

_IPC_SET, _IPC_STAT = 1, 2
_PERM_UID, _PERM_GID, _PERM_CUID = 4, 8, 12


def set_ipc_owner(kind: str, ident: int, uid: int | None = None,
                  gid: int | None = None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(512)
    if kind == "shm":
        def call(cmd: int) -> int:
            return int(libc.shmctl(ident, cmd, buf))
    elif kind == "sem":
        def call(cmd: int) -> int:
            return int(libc.semctl(ident, 0, cmd, ctypes.c_void_p(ctypes.addressof(buf))))
    elif kind == "msg":
        def call(cmd: int) -> int:
            return int(libc.msgctl(ident, cmd, buf))
    else:
        raise ValueError(kind)
    if call(_IPC_STAT) != 0:
        raise OSError(ctypes.get_errno(), f"{kind}ctl(IPC_STAT) of id {ident}")
    if uid is not None:
        struct.pack_into("<I", buf, _PERM_UID, uid)
    if gid is not None:
        struct.pack_into("<I", buf, _PERM_GID, gid)
    if call(_IPC_SET) != 0:
        raise OSError(ctypes.get_errno(), f"{kind}ctl(IPC_SET) of id {ident}")


# ---------------------------------------------------------------------------
# Child side


_EMIT_LOCK = threading.Lock()


def emit(**obj: Any) -> None:
    line = json.dumps(obj, default=repr) + "\n"
    with _EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


def rss_anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


class Commands:
    """Lines from stdin, read by a daemon thread."""

    def __init__(self) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        self.front: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            self.q.put(line.strip())
        self.q.put("eof")

    def poll(self) -> str | None:
        if self.front:
            return self.front.pop()
        try:
            return self.q.get_nowait()
        except queue.Empty:
            return None

    def push_front(self, cmd: str) -> None:
        self.front.append(cmd)

    def get(self, timeout: float) -> str:
        if self.front:
            return self.front.pop()
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return "timeout"


def main() -> None:
    spec = json.loads(sys.argv[1])
    role = spec["role"]
    if role == "hostile":
        hostile_main(spec)
    elif role == "victim":
        victim_main(spec)
    else:
        raise SystemExit(f"unknown role {role}")


# ---- the hostile writer ---------------------------------------------------


def hostile_main(spec: dict[str, Any]) -> None:
    """Attach segment spec["shmid"] and scribble until told "stop" on stdin
    (or for spec["seconds"]).

    Modes:
      hold     rewrite spec["writes"] ([[offset, width, value], ...]) forever;
      cycle    rewrite spec["frames"][0], then [1], ... round and round;
      churn    spec["off"] u64 := start + k * step, k = 0, 1, 2, ...;
      random   stores of palette or random values at random targets
               (spec["targets"]: [[offset, width], ...]) and random bytes at
               random offsets in [lo, hi) (spec["span"]); with spec["pace"],
               about that many seconds between stores;
      once     write spec["writes"] once, then watch the lock words at
               spec["watch"] and report any change of who holds them
               (word_state; nothing else writes).  writes "SELF" stores
               this process's id into the watched words without linking
               them (a holder the kernel does not know of); "SELF-ROBUST"
               takes them as a real holder (RobustHolder), and leaves the
               segment attached at exit, so that the kernel marks them.

    In random mode, every target is written once before the random stores,
    and "stopped" reports how many stores each target got ("hits").  With
    spec["pointers"], 8-byte targets inside a lock's links take those
    values, addresses in this process's mapping of the same lock fields and
    the plain palette (a node's "next" pointing at itself, at another node,
    at a word, at a victim's robust-list head...).
    """
    import shmsem

    shm = shmsem.SharedMemory.from_id(spec["shmid"])
    buf = shm.buf
    words = Words(buf)
    cmds = Commands()
    rng = random.Random(spec.get("seed", 0))
    mode = spec["mode"]
    deadline = time.monotonic() + spec.get("seconds", 600)
    n = 0
    changed: list[list[int]] = []
    started = False

    def stop() -> bool:
        if time.monotonic() > deadline:
            return True
        c = cmds.poll()
        return c in ("stop", "eof")

    keep_attached = False
    hits: dict[int, int] = collections.Counter()
    if mode == "once":
        writes = spec["writes"]
        if writes == "SELF":
            writes = [[off, 4, threading.get_native_id()] for off in spec["watch"]]
        elif writes == "SELF-ROBUST":
            holder = RobustHolder()
            base = mapping_address(buf)
            for off in spec["watch"]:
                holder.hold(words, base, off)
            writes = []
            keep_attached = True
        for off, width, value in writes:
            words.store(off, width, value)
            n += 1
        watch = {off: word_state(words.get32(off)) for off in spec.get("watch", [])}
        emit(t="started", pid=os.getpid(), words={off: words.get32(off) for off in watch})
        while not stop():
            for off, old in watch.items():
                now = word_state(words.get32(off))
                if now != old:
                    changed.append([off, old, now])
                    watch[off] = now
            time.sleep(0.002)
    else:
        targets = spec.get("targets", [])
        lo, hi = spec.get("span", [0, 0])
        pointers: dict[int, list[int]] = {}
        if "pointers" in spec:
            base = mapping_address(buf)
            mine = [base + lock + f for lock in spec.get("locks", [])
                    for f in (LOCK_WORD, LOCK_LINKS, LOCK_LINKS + 8)]
            values = list(spec["pointers"]) + mine + PALETTE64
            values += [v | 1 for v in values]  # bit 0: the kernel's PI flag
            for lock in spec.get("locks", []):
                for f in range(LOCK_LINKS, LOCK_LINKS + LOCK_LINKS_SIZE, 8):
                    pointers[lock + f] = values
        if mode == "random":
            for off, width in targets:  # every target at least once
                words.store(off, width, rng.choice(pointers.get(off) or
                                                   (PALETTE64 if width == 8 else PALETTE32)))
                hits[off] += 1
                n += 1
        k = 0
        while True:
            for _ in range(256):
                if mode == "hold":
                    for off, width, value in spec["writes"]:
                        words.store(off, width, value)
                        n += 1
                elif mode == "cycle":
                    frame = spec["frames"][k % len(spec["frames"])]
                    for off, width, value in frame:
                        words.store(off, width, value)
                        n += 1
                    k += 1
                elif mode == "churn":
                    words.set64(spec["off"], spec["start"] + k * spec["step"])
                    k += 1
                    n += 1
                elif mode == "random":
                    r = rng.random()
                    if targets and r < 0.7:
                        off, width = rng.choice(targets)
                        palette = pointers.get(off) or (PALETTE64 if width == 8 else PALETTE32)
                        hits[off] += 1
                        if rng.random() < 0.6 or off in pointers:
                            value = rng.choice(palette)
                        else:
                            value = rng.getrandbits(8 * width)
                        words.store(off, width, value)
                    elif hi > lo:
                        at = rng.randrange(lo, hi)
                        size = min(rng.choice((1, 2, 4, 8, 16, 64)), hi - at)
                        buf[at:at + size] = rng.randbytes(size)
                    n += 1
                else:
                    raise SystemExit(f"unknown mode {mode}")
            if not started:
                emit(t="started", pid=os.getpid())
                started = True
            if spec.get("pace"):
                time.sleep(spec["pace"] * 256)
            if stop():
                break
    emit(t="stopped", writes=n, changed=changed, hits=hits)
    if keep_attached:
        # The kernel reads the nodes at exit, before it unmaps the segment:
        # detaching (even in a finalizer) would hide them from it.
        sys.stdout.flush()
        os._exit(0)
    words.release()
    del buf
    shm.detach()


# ---- victims --------------------------------------------------------------


class Stalled(Exception):
    """Raised by our SIGALRM handler to bound a call that has no timeout."""


class Harness:
    """Counts, times and watches the calls of a victim."""

    def __init__(self, name: str, seg_size: int) -> None:
        import tracemalloc

        self.name = name
        self.seg_size = seg_size
        self.counts: collections.Counter[str] = collections.Counter()
        self.phase: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []
        self.calls = 0
        self.max_call = 0.0
        self.max_call_label = ""
        self.busy_label: str | None = None
        self.busy_since = 0.0
        self.max_gap = 0.0
        self.rss_base = rss_anon_bytes()
        self.rss_max = self.rss_base
        self.guard = False
        self.stop_watch = False
        self.cmds = Commands()
        signal.signal(signal.SIGALRM, self._alarm)
        self._watch = threading.Thread(target=self._watchdog, daemon=True)
        self._watch.start()
        tracemalloc.start()
        self.tracemalloc = tracemalloc

    def _alarm(self, signum: int, frame: Any) -> None:
        if self.guard:
            self.guard = False
            raise Stalled

    def _watchdog(self) -> None:
        last = time.monotonic()
        i = 0
        while not self.stop_watch:
            time.sleep(0.01)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            i += 1
            if i % 5 == 0:
                self.rss_max = max(self.rss_max, rss_anon_bytes())
            if i % 50 == 0:
                busy = None
                if self.busy_label is not None:
                    busy = [self.busy_label, round(now - self.busy_since, 3)]
                emit(t="status", who=self.name, calls=self.calls, busy=busy,
                     gap=round(self.max_gap, 3))

    def call(self, label: str, fn: Callable[[], Any], allowed: tuple[type, ...] = (),
             bound: float | None = None) -> tuple[bool, Any]:
        """Run fn(); return (True, result) or (False, exception).  With
        ``bound``, SIGALRM interrupts it after that many seconds (Stalled)."""
        self.busy_label = label
        t0 = self.busy_since = time.monotonic()
        try:
            if bound is not None:
                self.guard = True
                signal.setitimer(signal.ITIMER_REAL, bound)
            try:
                result = fn()
            finally:
                if bound is not None:
                    self.guard = False
                    signal.setitimer(signal.ITIMER_REAL, 0)
            self._count(f"{label}:ok")
            return True, result
        except Stalled as e:
            self._count(f"{label}:stalled")
            return False, e
        except allowed as e:
            self._count(f"{label}:{type(e).__name__}")
            return False, e
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            self._count(f"{label}:UNEXPECTED:{type(e).__name__}")
            if len(self.unexpected) < 5:
                self.unexpected.append(f"{label}: {type(e).__name__}: {e}\n"
                                       + "".join(traceback.format_exc(limit=4)))
            return False, e
        finally:
            dt = time.monotonic() - t0
            self.busy_label = None
            self.calls += 1
            if dt > self.max_call:
                self.max_call, self.max_call_label = dt, label

    def _count(self, key: str) -> None:
        self.counts[key] += 1
        self.phase[key] += 1

    def bad(self, what: str) -> None:
        self._count("violations")
        if len(self.unexpected) < 5:
            self.unexpected.append(what)

    def summary(self, **extra: Any) -> None:
        _, peak = self.tracemalloc.get_traced_memory()
        self.stop_watch = True
        self.rss_max = max(self.rss_max, rss_anon_bytes())
        emit(t="summary", who=self.name, counts=dict(self.counts), unexpected=self.unexpected,
             calls=self.calls, max_call=self.max_call, max_call_label=self.max_call_label,
             max_gap=self.max_gap, traced_peak=peak, rss_growth=self.rss_max - self.rss_base,
             seg_size=self.seg_size, **extra)


MSG_MAGIC = 0xC0FFEE01
_FILL = bytes((i * 7 + 3) & 0xFF for i in range(1 << 17)) * 2


def make_message(tag: int, seq: int, length: int) -> bytes:
    """A self-checking payload: magic, tag, seq, then a pattern from seq."""
    head = struct.pack("<III", MSG_MAGIC, tag, seq)
    if length <= len(head):
        return head[:length]
    start = seq % 251
    return head + _FILL[start:start + length - len(head)]


def check_message(data: bytes) -> tuple[int, int] | None:
    """(tag, seq) of an intact payload made by make_message, else None."""
    if len(data) < 12:
        return None
    magic, tag, seq = struct.unpack_from("<III", data)
    if magic != MSG_MAGIC:
        return None
    return (tag, seq) if data == make_message(tag, seq, len(data)) else None


def victim_main(spec: dict[str, Any]) -> None:
    """Open the object by id, then obey commands on stdin until "stop":

      reopen      close the handle and open it again (fresh private copies);
      attack      run the role's attack steps until the next command;
      pause       answer "paused" with the outcome counts since "attack";
      recover N   the role's recovery protocol for N items, answered with
                  "recovered";
      go N        (strict roles) exchange N items exactly, answered "done";
      held, released, churn   (lock probes) see run_*_lockprobe.

    A "summary" line ends it."""
    import shmsem

    kind = spec["kind"]
    opener = {"channel": shmsem.Channel.from_id, "mailbox": shmsem.Mailbox.from_id,
              "shm": shmsem.SharedMemory.from_id}[kind.split("-")[0]]
    h = Harness(kind, spec["seg_size"])
    rng = random.Random(spec.get("seed", 1))
    role = globals()["Role_" + kind.replace("-", "_")](h, spec, rng)
    role.obj = opener(spec["shmid"])
    emit(t="ready", pid=os.getpid(), tid=threading.get_native_id(), **where(role.obj))
    extra: dict[str, Any] = {}
    try:
        while True:
            cmd = h.cmds.get(300)
            word, _, arg = cmd.partition(" ")
            if word == "reopen":
                role.obj.close()
                ok, obj = h.call("reopen", lambda: opener(spec["shmid"]))
                if ok:
                    role.obj = obj
                emit(t="reopened", ok=ok, **where(role.obj))
            elif word == "attack":
                h.phase.clear()
                while True:
                    role.step()
                    nxt = h.cmds.poll()
                    if nxt is not None:
                        h.cmds.push_front(nxt)
                        break
            elif word == "pause":
                emit(t="paused", who=h.name, phase=dict(h.phase), got=dict(role.got))
                role.got.clear()
            elif word == "recover":
                done = role.recover(int(arg))
                emit(t="recovered", who=h.name, n=done)
            elif word == "go":
                n, _, base = arg.partition(" ")
                emit(t="done", who=h.name, **role.strict(int(n), int(base or 0)))
            elif word in ("held", "released", "churn"):
                emit(t="probe", phase=word, **role.probe(word))
            else:
                break
    finally:
        h.summary(**extra)
        role.obj.close()


def where(obj: Any) -> dict[str, int]:
    """Addresses in this process a hostile peer may aim pointers at: the
    mapping of obj's segment, and this thread's robust-list head."""
    head, size = ctypes.c_void_p(), ctypes.c_size_t()
    nr = _SYSCALLS[os.uname().machine]["get_robust_list"]
    ctypes.CDLL(None).syscall(nr, 0, ctypes.byref(head), ctypes.byref(size))
    shm = getattr(obj, "_shm", obj)  # a Channel's or Mailbox's SharedMemory, or one
    if shm is None or shm.closed:
        return {}  # a reopen that failed
    return {"addr": shm._attached().address, "robust_head": head.value or 0}


class Role:
    """A victim's behaviour; ``obj`` is the open Channel, Mailbox or segment."""

    obj: Any

    def __init__(self, h: Harness, spec: dict[str, Any], rng: random.Random) -> None:
        self.h = h
        self.spec = spec
        self.rng = rng
        self.got: collections.Counter[str] = collections.Counter()

    def step(self) -> None:
        raise NotImplementedError

    def recover(self, n: int) -> int:
        raise NotImplementedError

    def strict(self, n: int, base: int) -> dict[str, Any]:
        raise NotImplementedError

    def probe(self, phase: str) -> dict[str, Any]:
        raise NotImplementedError


def recovery_message(i: int, maxlen: int) -> bytes:
    return make_message(2, i, (i * 37) % (maxlen // 2 + 1))


class Role_channel_producer(Role):
    def step(self) -> None:
        import queue as q

        import shmsem

        ch, h, rng = self.obj, self.h, self.rng
        allowed = (q.Full, shmsem.FormatError)
        tmo = self.spec.get("timeout", 0.05)
        maxlen = ch.max_message_size
        seq = self.got["seq"] = self.got["seq"] + 1
        n = rng.randrange(0, maxlen + 1) if rng.random() < 0.1 else rng.randrange(0, min(maxlen, 600) + 1)
        msg = make_message(1, seq, n)
        r = rng.random()
        if r < 0.5:
            h.call("put_bytes", lambda: ch.put_bytes(msg, timeout=tmo), allowed)
        elif r < 0.65:
            h.call("put_bytes_nowait", lambda: ch.put_bytes_nowait(msg), allowed)
        elif r < 0.8:
            items = [make_message(1, seq, rng.randrange(0, 200)) for _ in range(3)]
            h.call("put_many_bytes", lambda: ch.put_many_bytes(items, timeout=tmo), allowed)
        elif r < 0.9:
            h.call("put_bytes(block=False)", lambda: ch.put_bytes(msg, False), allowed)
        else:
            for name in ("qsize", "empty", "full", "stats"):
                h.call(name, getattr(ch, name))

    def recover(self, n: int) -> int:
        ch = self.obj
        for i in range(n):
            msg = recovery_message(i, ch.max_message_size)
            ok, _ = self.h.call("recover.put_bytes",
                                lambda m=msg: ch.put_bytes(m, timeout=20))
            if not ok:
                self.h.bad(f"recovery put {i} failed")
                return i
        return n

    def strict(self, n: int, base: int) -> dict[str, Any]:
        ch, rng = self.obj, self.rng
        maxlen = ch.max_message_size
        for i in range(n):
            size = rng.choice((0, 1, 12, 13, 100, 1000, maxlen // 3))
            msg = make_message(3, i, size)
            ok, _ = self.h.call("put_bytes", lambda m=msg: ch.put_bytes(m, timeout=30))
            if not ok:
                return {"sent": i}
        return {"sent": n}


class Role_channel_consumer(Role):
    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.buf: bytearray | None = None

    def _seen(self, data: Any, where: str) -> None:
        maxlen = self.obj.max_message_size
        if not isinstance(data, bytes) or len(data) > maxlen:
            self.h.bad(f"{where} returned {type(data).__name__} of {len(data)} bytes "
                       f"(max {maxlen})")
            return
        self.got["values"] += 1
        self.got["intact" if check_message(data) else "garbage"] += 1

    def step(self) -> None:
        import queue as q

        import shmsem

        ch, h, rng = self.obj, self.h, self.rng
        allowed = (q.Empty, shmsem.FormatError)
        tmo = self.spec.get("timeout", 0.05)
        if self.buf is None or len(self.buf) != ch.max_message_size:
            self.buf = bytearray(ch.max_message_size)
        buf = self.buf
        r = rng.random()
        if r < 0.35:
            ok, v = h.call("get_bytes", lambda: ch.get_bytes(timeout=tmo), allowed)
            if ok:
                self._seen(v, "get_bytes")
        elif r < 0.55:
            ok, n = h.call("recv_into", lambda: ch.recv_into(buf, timeout=tmo), allowed)
            if ok:
                if not isinstance(n, int) or not 0 <= n <= len(buf):
                    h.bad(f"recv_into returned {n!r} for a {len(buf)}-byte buffer")
                else:
                    self._seen(bytes(buf[:n]), "recv_into")
        elif r < 0.75:
            ok, vs = h.call("get_many_bytes", lambda: ch.get_many_bytes(8, timeout=tmo), allowed)
            if ok:
                if not 1 <= len(vs) <= 8 or sum(len(v) for v in vs) > ch.capacity:
                    h.bad(f"get_many_bytes(8) returned {len(vs)} messages, "
                          f"{sum(len(v) for v in vs)} bytes (capacity {ch.capacity})")
                for v in vs:
                    self._seen(v, "get_many_bytes")
        elif r < 0.9:
            ok, v = h.call("get_bytes_nowait", ch.get_bytes_nowait, allowed)
            if ok:
                self._seen(v, "get_bytes_nowait")
        else:
            for name in ("qsize", "empty", "full", "stats"):
                h.call(name, getattr(ch, name))

    def recover(self, n: int) -> int:
        ch = self.obj
        for i in range(n):
            ok, v = self.h.call("recover.get_bytes", lambda: ch.get_bytes(timeout=20))
            want = recovery_message(i, ch.max_message_size)
            if not ok or v != want:
                self.h.bad(f"recovery message {i}: got {v!r:.80}, wanted {len(want)} bytes")
                return i
        return n

    def strict(self, n: int, base: int) -> dict[str, Any]:
        ch, rng = self.obj, self.rng
        expected = 0
        buf = bytearray(ch.max_message_size)
        while expected < n:
            r = rng.random()
            if r < 0.3:
                ok, k = self.h.call("recv_into", lambda: ch.recv_into(buf, timeout=30))
                vals = [bytes(buf[:k])] if ok else []
            elif r < 0.6:
                ok, got = self.h.call("get_many_bytes", lambda: ch.get_many_bytes(5, timeout=30))
                vals = got if ok else []
            else:
                ok, v = self.h.call("get_bytes", lambda: ch.get_bytes(timeout=30))
                vals = [v] if ok else []
            if not ok:
                break
            for v in vals:
                if v != make_message(3, expected, len(v)):
                    self.h.bad(f"message {expected}: got {v[:24]!r}... ({len(v)} bytes)")
                    return {"received": expected}
                expected += 1
        return {"received": expected}


def mailbox_value(seq: int, capacity: int, rng: random.Random) -> bytes:
    n = rng.choice((12, 13, 64, 500, capacity))
    return make_message(4, seq, min(max(n, 12), capacity))


class Role_mailbox_writer(Role):
    def step(self) -> None:
        mb, h, rng = self.obj, self.h, self.rng
        if rng.random() < 0.9:
            seq = self.got["k"] = self.got["k"] + 1
            value = make_message(4, seq, rng.randrange(12, mb.capacity + 1))
            h.call("publish", lambda: mb.publish(value), (), bound=self.spec.get("bound", 1.0))
        else:
            h.call("stats", mb.stats)
            h.call("seq", lambda: mb.seq)

    def recover(self, n: int) -> int:
        mb = self.obj
        for i in range(1, n + 1):
            value = mailbox_value(i, mb.capacity, self.rng)
            ok, seq = self.h.call("recover.publish", lambda v=value: mb.publish(v), (), bound=20)
            if not ok or seq != i:
                self.h.bad(f"recovery publish {i} returned {seq!r}")
                return i - 1
        return n

    def strict(self, n: int, base: int) -> dict[str, Any]:
        mb = self.obj
        for i in range(base + 1, base + n + 1):
            value = mailbox_value(i, mb.capacity, self.rng)
            ok, seq = self.h.call("publish", lambda v=value: mb.publish(v), (), bound=30)
            if not ok or seq != i:
                self.h.bad(f"publish {i} returned {seq!r}")
                return {"published": i - 1 - base}
            if self.spec.get("pace"):
                time.sleep(self.spec["pace"])
        return {"published": n}


class Role_mailbox_reader(Role):
    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.last = 0

    def _seen(self, r: Any, where: str) -> None:
        if r is None:
            return
        seq, data = r
        if not isinstance(data, bytes) or len(data) > self.obj.capacity:
            self.h.bad(f"{where} returned {len(data)} bytes (capacity {self.obj.capacity})")
            return
        self.got["values"] += 1
        self.got["intact" if check_message(data) is not None else "garbage"] += 1
        self.last = max(self.last, seq)

    def step(self) -> None:
        import shmsem

        mb, h, rng = self.obj, self.h, self.rng
        allowed = (shmsem.FormatError,)
        bound = self.spec.get("bound", 2.0)
        r = rng.random()
        if r < 0.6:
            ok, v = h.call("read", mb.read, allowed, bound=bound)
            if ok:
                self._seen(v, "read")
        elif r < 0.9:
            after = min(rng.choice((0, self.last, self.last + 1, U64 >> 1)), U64)
            ok, v = h.call("wait", lambda: mb.wait(after, timeout=0.05), allowed, bound=bound)
            if ok:
                self._seen(v, "wait")
        else:
            h.call("stats", mb.stats)
            h.call("seq", lambda: mb.seq)

    def recover(self, n: int) -> int:
        mb = self.obj
        last = 0
        while last < n:
            ok, r = self.h.call("recover.wait", lambda a=last: mb.wait(a, timeout=20), (),
                                bound=30)
            if not ok or r is None:
                self.h.bad(f"recovery wait after {last} gave {r!r}")
                break
            seq, data = r
            ident = check_message(data)
            if seq <= last or ident is None or ident[1] != seq:
                self.h.bad(f"recovery: seq {seq} after {last} with {data[:16]!r}")
                break
            last = seq
        return last

    def strict(self, n: int, base: int) -> dict[str, Any]:
        mb, rng = self.obj, self.rng
        last = base
        seen = 0
        while last < base + n:
            if rng.random() < 0.5:
                ok, r = self.h.call("wait", lambda a=last: mb.wait(a, timeout=30), (), bound=40)
            else:
                ok, r = self.h.call("read", mb.read, (), bound=40)
            if not ok or r is None:
                self.h.bad(f"after seq {last}: {r!r}")
                break
            seq, data = r
            if seq == last:
                continue
            ident = check_message(data)
            if ident is None or ident[1] != seq or seq < last:
                self.h.bad(f"after seq {last}: got seq {seq} with {data[:16]!r}... "
                           f"({len(data)} bytes)")
                break
            last = seq
            seen += 1
        return {"last": last - base, "seen": seen}


class Role_shm_frames(Role):
    """Read frames while a hostile writer races the header: each result must
    have one of the valid lengths and the constant filler, or FrameError."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.helper: Any = None

    def _check(self, data: Any, where: str) -> None:
        if isinstance(data, str):
            data = data.encode()
        fill = self.spec["fill"].encode()
        if len(data) not in self.spec["valid"] or data != fill * len(data):
            self.h.bad(f"{where} returned {len(data)} bytes {data[:16]!r}...; valid lengths "
                       f"{sorted(self.spec['valid'])}")
        else:
            self.got[f"len{len(data)}"] += 1
            self.got["values"] += 1

    def step(self) -> None:
        import shmsem

        shm, h = self.obj, self.h
        if self.helper is None and self.spec.get("key") is not None:
            self.helper = shmsem.PosixIpcHelper.attach_existing(self.spec["key"])
        r = self.rng.random()
        if r < 0.45:
            ok, v = h.call("read", shm.read, (shmsem.FrameError,))
            if ok:
                self._check(v, "read")
        elif r < 0.7:
            ok, v = h.call("read_string", shm.read_string, (shmsem.FrameError,))
            if ok:
                self._check(v, "read_string")
        elif r < 0.85 and self.helper is not None:
            ok, v = h.call("helper.read", self.helper.read, (shmsem.FrameError,))
            if ok:
                self._check(v, "PosixIpcHelper.read")
        else:
            ok, v = h.call("read_at", lambda: shm.read_at(0, shm.size))
            if ok and len(v) != shm.size:
                h.bad(f"read_at(0, {shm.size}) returned {len(v)} bytes")


class Role_shm_opener(Role):
    """Open the Channel or Mailbox again and again while its header is
    scribbled: FormatError, or a handle whose capacity fits the segment."""

    def step(self) -> None:
        import shmsem

        shm = self.obj
        cls = {"channel": shmsem.Channel, "mailbox": shmsem.Mailbox}[self.spec["target"]]
        ok, obj = self.h.call("from_id", lambda: cls.from_id(shm.id), (shmsem.FormatError,))
        if not ok:
            self.got[type(obj).__name__] += 1
            return
        self.got["ok"] += 1
        if obj.capacity != self.spec["capacity"]:
            self.got["other-capacity"] += 1
            limit = shm.size - (CH_RING if self.spec["target"] == "channel" else MB_CELLS)
            if obj.capacity > limit:
                self.h.bad(f"opened with capacity {obj.capacity} in a {shm.size}-byte segment")
        obj.close()


def _timed(h: Harness, label: str, fn: Callable[[], Any], allowed: tuple[type, ...] = (),
           bound: float | None = None) -> list[Any]:
    t0 = time.monotonic()
    ok, v = h.call(label, fn, allowed, bound)
    outcome = "ok" if ok else type(v).__name__
    return [label, outcome, round(time.monotonic() - t0, 4), repr(v)[:60]]


class Role_channel_lockprobe(Role):
    """"held": every call against locks held by someone else must give up as
    its timeout says (queue.Full / queue.Empty).  "released": calls with long
    timeouts must succeed (the lock freed or taken over)."""

    def probe(self, phase: str) -> dict[str, Any]:
        import queue as q

        ch, h = self.obj, self.h
        allowed = (q.Full, q.Empty)
        t = self.spec["timeout"]
        buf = bytearray(ch.max_message_size)
        before = ch.stats().recoveries
        if phase == "held":
            results = [
                _timed(h, "put_bytes", lambda: ch.put_bytes(b"held", timeout=t), allowed),
                _timed(h, "get_bytes", lambda: ch.get_bytes(timeout=t), allowed),
                _timed(h, "put_bytes_nowait", lambda: ch.put_bytes_nowait(b"held"), allowed),
                _timed(h, "get_bytes_nowait", ch.get_bytes_nowait, allowed),
                _timed(h, "put_many_bytes", lambda: ch.put_many_bytes([b"a", b"b"], timeout=t),
                       allowed),
                _timed(h, "get_many_bytes", lambda: ch.get_many_bytes(4, timeout=t), allowed),
                _timed(h, "recv_into", lambda: ch.recv_into(buf, timeout=t), allowed),
                _timed(h, "put(block=False)", lambda: ch.put(1, False), allowed),
                _timed(h, "get(block=False)", lambda: ch.get(False), allowed),
                _timed(h, "qsize", ch.qsize),
                _timed(h, "stats", ch.stats),
            ]
        else:
            results = [
                _timed(h, "put_bytes", lambda: ch.put_bytes(b"after", timeout=20)),
                _timed(h, "get_bytes", lambda: ch.get_bytes(timeout=20)),
            ]
        # Leave it empty for the next case.
        while True:
            try:
                ch.get_bytes(timeout=0.2)
            except q.Empty:
                break
        return {"results": results, "recoveries": ch.stats().recoveries - before}


class Role_mailbox_lockprobe(Role):
    """As Role_channel_lockprobe for the Mailbox writer lock.  publish() takes
    no timeout, so it runs under a SIGALRM bound: it must neither return nor
    hold the GIL while the lock is held, and readers must not be affected.
    "churn": one read() under spec["read_bound"]."""

    def probe(self, phase: str) -> dict[str, Any]:
        import shmsem

        mb, h = self.obj, self.h
        bound = self.spec["timeout"]
        before = mb.stats().recoveries
        if phase == "churn":
            results = [_timed(h, "read", mb.read, (shmsem.FormatError,),
                              bound=self.spec["read_bound"])]
        elif phase == "held":
            seq = mb.seq
            results = [
                _timed(h, "publish", lambda: mb.publish(b"held"), (), bound=bound),
                _timed(h, "read", mb.read, (), bound=10),
                _timed(h, "wait(seq-1)", lambda: mb.wait(seq - 1, timeout=10), (), bound=20),
                _timed(h, "wait(seq)", lambda: mb.wait(seq, timeout=bound), (), bound=20),
                _timed(h, "stats", mb.stats),
            ]
        else:
            results = [
                _timed(h, "publish", lambda: mb.publish(b"after"), (), bound=20),
                _timed(h, "read", mb.read, (), bound=20),
            ]
        return {"results": results, "recoveries": mb.stats().recoveries - before}


if __name__ == "__main__":
    main()
