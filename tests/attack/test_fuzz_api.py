"""Bad input to every public entry point, fuzzed with Hypothesis.

The contract: bad input gets a clear exception, never a crash and never a
silent truncation.  For each entry point the set of exceptions it may raise
is fixed here, precisely (the class itself, not any subclass of it), and an
input it accepts must come back exactly: keys, sizes, capacities, modes and
values read back from the kernel or the object, frames and raw bytes
compared with a model of the segment, semaphore values and queue contents
compared with a model, timeouts that mean "forever" (None, inf, anything
beyond 1e9 s) never turned into "now".

Documented exceptions used below: TypeError and ValueError for bad
arguments; the ShmsemError classes the kernel's answers map to (NotFoundError,
LimitError, PermissionDeniedError, FrameError, FormatError, ClosedError);
queue.Empty / queue.Full for "would block" (from MessageQueue, as their
subclasses QueueEmptyError / QueueFullError); BufferError
for a non-contiguous buffer; IndexError for set[i] (a sequence); RuntimeError
for releasing a Lock not held (as threading.Lock); UnicodeEncodeError /
UnicodeDecodeError for str payloads.  OverflowError is documented nowhere, so
it is never allowed -- except from NumPy's own constructor in ndarray().

Each group runs in a child process (``python -c``, this environment, a
sanitizer preload included), so that a crash shows as a failure with its
signal and the last input tried (each input is logged before its call), not
as a dead pytest.  A group records every contract violation it sees and goes
on, so that one finding does not hide the others; the test fails listing
them, one example each.
"""

from __future__ import annotations

import array
import json
import math
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import tempfile
from collections import Counter, deque
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import helpers_hostile as H
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

FORK_TIMEOUT = 300  # a whole group, in its child process

# ---------------------------------------------------------------------------
# Inputs

EDGE_INTS = [-1, 0, 1, 2, 7, 8, 255, 256, 0o777, 0o1000, 32767, 32768, 65535, 65536,
             2**31 - 1, 2**31, 2**32 - 1, 2**32, -(2**31), -(2**31) - 1, 2**63 - 1, 2**63,
             2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, -(10**30)]
EDGE_FLOATS = [0.0, -0.0, 0.5, 1e-9, -1e-9, -1.0, 1e300, -1e300, 5e-324,
               float("nan"), float("inf"), -float("inf")]


class Opaque:
    def __repr__(self) -> str:
        return "Opaque()"


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(EDGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(EDGE_FLOATS),
    st.text(max_size=4), st.binary(max_size=4),
    st.sampled_from([[], (), {}, Opaque(), Decimal("1.5"), Fraction(1, 3), 1j,
                     bytearray(b"ab"), "\x00", "0", "1"]),
)
TIMEOUTS = st.one_of(
    st.none(), st.floats(0, 0.005), st.integers(0, 0),
    st.sampled_from([0, 0.0, -0.0, 1e-9, -1e-9, -1, -0.5, float("nan"), float("inf"),
                     -float("inf"), 1e300, -1e300, 2**64, -(2**64), 10**400, -(10**400),
                     1e9 + 1, 1e10, True, False, "1", b"1", 1j, [], Opaque(),
                     Decimal("0.001"), Decimal("nan"), Decimal(-1), Fraction(1, 1000)]),
)
DATA = st.one_of(
    st.binary(max_size=64), st.text(max_size=16), st.binary(max_size=600),
    st.sampled_from(["", "\ud800", "\u00e9\u4e2d", b"", bytearray(b"xyz"),
                     memoryview(b"abcdef")[::2], memoryview(b"abcdef")[1:4],
                     array.array("i", [1, 2, 3]), None, 5, 1.5, [1, 2], Opaque()]),
)

FOREVER = "forever"


def timeout_meaning(t: Any) -> Any:
    """What a timeout argument must mean: a number of seconds, FOREVER, or the
    exception class it must be refused with.  A huge int beyond float range
    may mean forever or be refused with ValueError (returned as a tuple)."""
    if t is None:
        return FOREVER
    if isinstance(t, (bool, str, bytes, list, complex, Opaque)):
        return TypeError
    try:
        f = float(t)
    except OverflowError:
        return (FOREVER, ValueError) if t > 0 else ValueError
    except ValueError:
        return ValueError  # Decimal("snan")
    if math.isnan(f) or f < 0:
        return ValueError
    if math.isinf(f) or f > 1e9:
        return FOREVER
    return f


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def as_bytes(data: Any) -> bytes | None:
    """The bytes a bytes-like argument carries, or None if it is not one that
    shmsem must take (contiguous buffers only)."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, memoryview):
        return data.tobytes() if data.c_contiguous else None
    if isinstance(data, array.array):
        return data.tobytes()
    return None


def bad_buffer_error(data: Any) -> type:
    """The exception a non-bytes-like argument must raise."""
    if isinstance(data, memoryview) and not data.c_contiguous:
        return BufferError
    return TypeError


# ---------------------------------------------------------------------------
# The tally of one group (in the child process)


class Tally:
    def __init__(self, group: str, log_path: str) -> None:
        self.group = group
        self.fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.tried: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.verified = 0
        self.examples = 0
        self.violations: dict[str, str] = {}

    def log(self, ep: str, desc: str) -> None:
        os.write(self.fd, f"{ep}: {desc}\n".encode("utf-8", "backslashreplace")[:2000])

    def violation(self, ep: str, kind: str, desc: str, what: str) -> None:
        key = f"{ep}: {kind}"
        text = f"{desc} -> {what}"
        if key not in self.violations or len(text) < len(self.violations[key]):
            self.violations[key] = text

    def check(self, ep: str, desc: str, ok: bool, what: str, kind: str = "wrong result") -> None:
        self.verified += 1
        if not ok:
            self.violation(ep, kind, desc, what)

    def call(self, ep: str, desc: str, fn: Callable[[], Any], allowed: Any = (),
             expect: Any = None) -> tuple[bool, Any]:
        """Call fn.  ``allowed``: exception classes it may raise (exact
        classes).  ``expect``: an exception class (or tuple) it must raise,
        or None if it must succeed, or "any" (success or an allowed class).
        Returns (ok, result or exception)."""
        self.tried[ep] += 1
        self.log(ep, desc)
        if isinstance(allowed, type):
            allowed = (allowed,)
        if isinstance(expect, type):
            expect = (expect,)
        try:
            result = fn()
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            name = type(e).__name__
            self.rejected[f"{ep}:{name}"] += 1
            ok_types = tuple(allowed) + (tuple(expect) if isinstance(expect, tuple) else ())
            if type(e) not in ok_types:
                self.violation(ep, f"raised {name}", desc, f"{name}: {e}")
            elif expect is None:
                self.violation(ep, f"refused valid input with {name}", desc, f"{name}: {e}")
            elif isinstance(expect, tuple) and type(e) not in expect and type(e) not in allowed:
                self.violation(ep, f"raised {name}", desc, f"{name}: {e}")
            elif not isinstance(e, (queue.Empty, queue.Full)) and not str(e):
                self.violation(ep, f"{name} without a message", desc, repr(e))
            return False, e
        self.accepted[ep] += 1
        if isinstance(expect, tuple):
            self.violation(ep, "accepted", desc,
                           f"returned {result!r:.100} instead of raising "
                           f"{'/'.join(c.__name__ for c in expect)}")
        return True, result

    def summary(self) -> dict[str, Any]:
        return {"group": self.group, "examples": self.examples,
                "tried": sum(self.tried.values()), "accepted": sum(self.accepted.values()),
                "rejected": sum(self.rejected.values()), "verified": self.verified,
                "entry_points": len(self.tried), "violations": self.violations,
                "rejected_by": dict(self.rejected)}


def run_examples(tally: Tally, n: int, strategy: Any, body: Callable[[Any], None]) -> None:
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(x: Any) -> None:
        tally.examples += 1
        body(x)

    run()


# ---------------------------------------------------------------------------
# Keys


class Keys:
    """Keys unique to this child (0xA7, 12 bits of its pid, a counter): never
    a bare random key.  Half are given in their signed form."""

    def __init__(self) -> None:
        self.n = 0
        self.base = (0xA7 << 24) | ((os.getpid() & 0xFFF) << 12)

    def fresh(self) -> int:
        in_use = set()
        for kind in ("shm", "sem", "msg"):
            for line in Path("/proc/sysvipc", kind).read_text().splitlines()[1:]:
                in_use.add(int(line.split()[0]) & 0xFFFFFFFF)
        while True:
            self.n += 1
            key = self.base | (self.n & 0xFFF)
            if key not in in_use:
                return key


KEYS = Keys()
KEY_CHOICES = st.one_of(st.sampled_from(["FRESH", "FRESH-SIGNED", None, 0]), JUNK)


def pick_key(choice: Any) -> Any:
    if choice == "FRESH":
        return KEYS.fresh()
    if choice == "FRESH-SIGNED":
        return KEYS.fresh() - 2**32
    return choice


def key_meaning(key: Any) -> Any:
    """The kernel key a key argument must become, or the exception class."""
    if key is None:
        return 0
    if not is_int(key):
        return TypeError
    if not -(2**31) <= key < 2**32:
        return ValueError
    key &= 0xFFFFFFFF
    return key - 2**32 if key >= 2**31 else key


#: What a mode must grant the owner for each kind to create (see _policy).
OWNER_NEEDS = {"SharedMemory": 0o600, "SemaphoreSet": 0o600, "Semaphore": 0o600, "Lock": 0o600,
               "Channel": 0o600, "Mailbox": 0o600, "MessageQueue": 0o400}


def mode_meaning(mode: Any) -> Any:
    if not is_int(mode):
        return TypeError
    if mode & ~0o777:
        return ValueError
    return mode


def fnv_key(name: str) -> int | None:
    h = 2166136261
    units = name.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(units), 2):
        h ^= units[i] | (units[i + 1] << 8)
        h = (h * 16777619) & 0xFFFFFFFF
    signed = h - 2**32 if h >= 2**31 else h
    if not name:
        return 0
    return None if signed == -(2**31) else abs(signed)


def fuzz_keys(t: Tally, n: int) -> None:
    import shmsem
    from shmsem.compat import PosixIpcHelper

    tmp = tempfile.NamedTemporaryFile(prefix="fuzzkey")  # noqa: SIM115 - kept for the group
    paths = [tmp.name, "/", "/nonexistent/shmsem-fuzz", tmp.name.encode(), Path(tmp.name),
             "/tmp\x00x", 3, None, b"", ""]
    openers = {
        "SharedMemory.open": shmsem.SharedMemory.open, "Semaphore.open": shmsem.Semaphore.open,
        "SemaphoreSet.open": shmsem.SemaphoreSet.open, "Lock.open": shmsem.Lock.open,
        "MessageQueue.open": shmsem.MessageQueue.open, "Channel.open": shmsem.Channel.open,
        "Mailbox.open": shmsem.Mailbox.open,
        "PosixIpcHelper.attach_existing": PosixIpcHelper.attach_existing,
    }

    strategy = st.tuples(st.one_of(st.text(max_size=12), JUNK), st.sampled_from(range(len(paths))),
                         st.one_of(st.integers(-2, 258), JUNK), KEY_CHOICES,
                         st.sampled_from(sorted(openers)), st.one_of(st.sampled_from([0o600]), JUNK))

    def body(x: Any) -> None:
        name, pi, proj, kchoice, opener, mode = x
        desc = f"key_from_name({name!r})"
        if isinstance(name, str):
            want = fnv_key(name)
            ok, got = t.call("key_from_name", desc, lambda: shmsem.key_from_name(name),
                             expect=ValueError if want is None else None)
            if ok:
                t.check("key_from_name", desc, got == want, f"{got} != {want}")
        else:
            t.call("key_from_name", desc, lambda: shmsem.key_from_name(name), expect=TypeError)

        path = paths[pi]
        desc = f"ftok({path!r}, {proj!r})"
        ok, got = t.call("ftok", desc, lambda: shmsem.ftok(path, proj), expect="any",
                         allowed=(TypeError, ValueError, shmsem.NotFoundError))
        if ok:
            t.check("ftok", desc, is_int(got) and -(2**31) <= got < 2**31
                    and got == shmsem.ftok(path, proj) and is_int(proj) and 1 <= proj <= 255,
                    f"{got!r}")

        key = pick_key(kchoice)
        meaning = key_meaning(key)
        desc = f"{opener}({key!r}, mode={mode!r})"
        fn = openers[opener]
        if opener.startswith("PosixIpcHelper"):
            call = lambda: fn(key)
            mode_m: Any = 0o600
        else:
            call = lambda: fn(key, mode=mode)
            mode_m = mode_meaning(mode)
        if isinstance(meaning, type):
            expect: Any = meaning
        elif meaning == 0:
            expect = ValueError  # IPC_PRIVATE cannot be opened by key
        elif isinstance(mode_m, type):
            expect = mode_m
        else:
            expect = shmsem.NotFoundError  # a fresh key names nothing
        # The key is checked first, then the mode, in either order: both
        # refusals are fine when both are bad.
        allowed = (TypeError, ValueError) if isinstance(meaning, type) or meaning == 0 else ()
        t.call(opener, desc, call, expect=expect, allowed=allowed)

    run_examples(t, n, strategy, body)
    tmp.close()


# ---------------------------------------------------------------------------
# Creation: keys, sizes, counts, values and modes, read back exactly


def fuzz_create(t: Tally, n: int) -> None:
    import shmsem
    from shmsem import _core
    from shmsem.compat import PosixIpcHelper

    SIZES = st.one_of(st.integers(-3, 5000), st.sampled_from(
        [2**31, 2**32 + 8, 2**40, 2**48, 2**48 + 1, 2**63 - 1, 2**63, 2**64]), JUNK)
    MODES = st.one_of(st.sampled_from([0o600, 0o640, 0o666, 0o700, 0o777, 0o644]),
                      st.integers(0o600, 0o777), JUNK)
    kinds = ["SharedMemory", "SharedMemory.create", "SemaphoreSet", "SemaphoreSet.create",
             "Semaphore", "Semaphore.create", "Lock", "Lock.create", "MessageQueue",
             "MessageQueue.create", "Channel", "Channel.create", "Mailbox", "Mailbox.create",
             "PosixIpcHelper", "PosixIpcHelper.create_semaphore"]
    good_key = st.sampled_from(["FRESH", "FRESH-SIGNED", None, 0])
    good_size = st.integers(1, 5000)
    good_mode = st.sampled_from([0o600, 0o640, 0o606, 0o644, 0o660, 0o700, 0o777])
    # All good, or one argument bad, or all bad: each refusal has one cause.
    args = st.one_of(st.tuples(good_key, good_size, good_mode),
                     st.tuples(KEY_CHOICES, good_size, good_mode),
                     st.tuples(good_key, SIZES, good_mode),
                     st.tuples(good_key, good_size, MODES),
                     st.tuples(KEY_CHOICES, SIZES, MODES))
    values = st.one_of(st.none(), st.none(), st.lists(st.integers(-1, 32768), max_size=5), JUNK)
    strategy = st.tuples(st.sampled_from(kinds), args, values).map(
        lambda x: (x[0], *x[1], x[2]))

    def body(x: Any) -> None:
        kind, kchoice, size, mode, values = x
        key = pick_key(kchoice)
        km = key_meaning(key)
        mm = mode_meaning(mode)
        base = kind.split(".")[0]
        cls = getattr(shmsem, base, None) or PosixIpcHelper
        ctor = getattr(cls, kind.split(".")[1]) if "." in kind else cls
        desc = f"{kind}({key!r}, {size!r}, mode={mode!r}, values={values!r})"
        errors: list[type] = []
        if isinstance(km, type):
            errors.append(km)
        if kind in ("PosixIpcHelper", "PosixIpcHelper.create_semaphore"):
            pass  # no mode argument
        elif isinstance(mm, type):
            errors.append(mm)
        elif mm & OWNER_NEEDS[base] != OWNER_NEEDS[base]:
            errors.append(ValueError)  # a mode its owner could not use
        extra: tuple[type, ...] = (shmsem.LimitError,)
        want_size: Any = None
        if base in ("SharedMemory", "PosixIpcHelper") and kind != "PosixIpcHelper.create_semaphore":
            call = (lambda: ctor(key, size)) if base == "PosixIpcHelper" else (
                lambda: ctor(key, size, mode=mode))
            if not is_int(size):
                errors.append(TypeError)
            elif size < 1 or size >= 2**63:
                errors.append(ValueError)
            else:
                want_size = size
        elif base == "SemaphoreSet":
            if is_int(size) and size > 70000:
                size = 70000  # beyond SEMMSL; larger counts: test_semaphore_set_count_*
            call = lambda: ctor(key, size, values=values, mode=mode)
            if not is_int(size):
                errors.append(TypeError)
            elif size < 1:
                errors.append(ValueError)
            elif values is not None:
                try:
                    vals = list(values)
                except TypeError:
                    errors.append(TypeError)
                else:
                    if len(vals) != size:
                        errors.append(ValueError)
                    elif any(not is_int(v) for v in vals):
                        errors.append(TypeError)
                    elif any(not 0 <= v <= 32767 for v in vals):
                        errors.append(ValueError)
            want_size = size
        elif base == "Semaphore":
            call = lambda: ctor(key, size, mode=mode)
            if not is_int(size):
                errors.append(TypeError)
            elif not 0 <= size <= 32767:
                errors.append(ValueError)
            want_size = size
        elif base == "Lock" or base == "MessageQueue":
            call = lambda: ctor(key, mode=mode)
        elif kind == "PosixIpcHelper.create_semaphore":
            call = lambda: ctor(key)
        else:  # Channel, Mailbox
            call = lambda: ctor(key, size, mode=mode)
            limit = 2**48 if base == "Channel" else 2**40
            low = 64 if base == "Channel" else 1
            if not is_int(size):
                errors.append(TypeError)
            elif size < low or size > limit:
                errors.append(ValueError)
            else:
                want_size = (size + 7) & ~7 if base == "Channel" else size
        expect: Any = tuple(errors) if errors else "any"
        ok, obj = t.call(kind, desc, call, expect=expect,
                         allowed=extra + ((TypeError, ValueError) if errors else ()))
        if not ok:
            return
        try:
            verify_created(t, kind, desc, obj, km, mm if base not in ("PosixIpcHelper",) else 0o600,
                           want_size, values)
        finally:
            cleanup(kind, obj)

    run_examples(t, n, strategy, body)
    del _core


def verify_created(t: Tally, kind: str, desc: str, obj: Any, key: int, mode: int,
                   size: Any, values: Any) -> None:
    import shmsem
    from shmsem import _core

    if kind == "PosixIpcHelper.create_semaphore":
        st_ = shmsem.SemaphoreSet.from_id(obj).stat()
        t.check(kind, desc, st_.key == key and st_.mode == 0o600 and st_.nsems == 1
                and _core.semctl(obj, 0, _core.GETVAL) == 0, f"{st_}")
        return
    if kind == "PosixIpcHelper":
        obj = obj.shared_memory
    if kind.startswith("Lock"):
        st_ = shmsem.SemaphoreSet.from_id(obj.id).stat()
    elif kind.startswith(("Channel", "Mailbox")):
        with shmsem.SharedMemory.from_id(obj.id) as raw:
            st_ = raw.stat()
    else:
        st_ = obj.stat()
    t.check(kind, desc, st_.key == key and (key == 0 or obj.key == key),
            f"key {st_.key} / {obj.key}, wanted {key}")
    t.check(kind, desc, st_.mode == mode, f"mode {st_.mode:#o}, wanted {mode:#o}")
    if kind.startswith(("SharedMemory", "PosixIpcHelper")):
        t.check(kind, desc, obj.size == size == st_.size, f"size {obj.size}/{st_.size} != {size}")
    elif kind.startswith("SemaphoreSet"):
        want = list(values) if values is not None else [0] * size
        t.check(kind, desc, len(obj) == size and list(obj.values) == want,
                f"{len(obj)} members {obj.values}, wanted {want}")
    elif kind.startswith("Semaphore"):
        t.check(kind, desc, obj.value == size, f"value {obj.value} != {size}")
    elif kind.startswith("Lock"):
        t.check(kind, desc, not obj.locked(), "a new lock is locked")
    elif kind.startswith(("Channel", "Mailbox")):
        t.check(kind, desc, obj.capacity == size, f"capacity {obj.capacity} != {size}")


def cleanup(kind: str, obj: Any) -> None:
    import shmsem
    from shmsem import _core

    if kind == "PosixIpcHelper.create_semaphore":
        _core.semctl(obj, 0, _core.IPC_RMID)
    elif kind.startswith(("SemaphoreSet", "Semaphore", "Lock", "MessageQueue")):
        obj.remove()
    elif kind == "PosixIpcHelper":
        obj.dispose()
    else:
        obj.owner = True
        obj.close()
    del shmsem


# ---------------------------------------------------------------------------
# SharedMemory I/O against a model of the segment

SHM_OPS = st.lists(st.tuples(
    st.sampled_from(["read_at", "write_at", "write", "read", "read_string", "ndarray", "buf"]),
    st.one_of(st.integers(-5, 310), JUNK), st.one_of(st.integers(-5, 310), JUNK), DATA,
    st.sampled_from(["u1", "<i4", "<f8", "V3", "<U2", "O", "[('a','O')]", "[('a','<i4')]",
                     "S5", "c"]),
    st.one_of(st.integers(0, 8), st.tuples(st.integers(0, 4), st.integers(0, 4)),
              st.integers(-2, 40), st.tuples(st.integers(-2, 20), st.integers(-2, 20)), JUNK),
    st.one_of(st.integers(0, 16), st.integers(0, 16), JUNK),
    st.integers(0, 3),
), max_size=12)


def fuzz_shm_io(t: Tally, n: int) -> None:
    import numpy as np

    import shmsem

    def body(x: Any) -> None:
        size, ops = x
        shm = shmsem.SharedMemory(None, size)
        try:
            model = bytearray(size)
            for op, a, b, data, dt, shape, offset, sane in ops:
                if sane:  # mostly arguments that fit, so that arrays do get made
                    shape, offset = (sane,), 8 * (sane - 1)
                shm_op(t, shm, model, op, a, b, data, dt, shape, offset, np)
                t.check("model", f"after {op}", shm.read_at(0, size) == bytes(model),
                        "the segment differs from the model", "wrote what it refused, or more")
            shm.detach()
            for name, fn in [("read", shm.read), ("read_at", lambda: shm.read_at(0, 1)),
                             ("write", lambda: shm.write(b"x")),
                             ("write_at", lambda: shm.write_at(0, b"x")),
                             ("buf", lambda: shm.buf), ("read_string", shm.read_string)]:
                t.call(f"{name} after detach", name, fn, expect=shmsem.ClosedError)
        finally:
            shm.owner = True
            shm.close()

    run_examples(t, n, st.tuples(st.integers(1, 300), SHM_OPS), body)


def shm_op(t: Tally, shm: Any, model: bytearray, op: str, a: Any, b: Any, data: Any, dt: str,
           shape: Any, offset: Any, np: Any) -> None:
    import shmsem

    size = len(model)
    index_ok = lambda v: isinstance(v, int)
    if op == "read_at":
        desc = f"read_at({a!r}, {b!r}) of {size}"
        if not (index_ok(a) and index_ok(b)):
            t.call(op, desc, lambda: shm.read_at(a, b), expect=TypeError)
        elif a < 0 or b < 0 or a + b > size:
            t.call(op, desc, lambda: shm.read_at(a, b), expect=ValueError)
        else:
            ok, got = t.call(op, desc, lambda: shm.read_at(a, b))
            if ok:
                t.check(op, desc, got == bytes(model[a:a + b]), f"{got!r:.60}")
    elif op == "write_at":
        raw = as_bytes(data)
        desc = f"write_at({a!r}, {data!r:.40}) of {size}"
        if not index_ok(a):
            t.call(op, desc, lambda: shm.write_at(a, data), expect=TypeError,
                   allowed=(BufferError,))
        elif raw is None:
            t.call(op, desc, lambda: shm.write_at(a, data), expect=bad_buffer_error(data))
        elif a < 0 or a + len(raw) > size:
            t.call(op, desc, lambda: shm.write_at(a, data), expect=ValueError)
        else:
            ok, got = t.call(op, desc, lambda: shm.write_at(a, data))
            if ok:
                model[a:a + len(raw)] = raw
                t.check(op, desc, got == len(raw), f"returned {got}")
    elif op == "write":
        desc = f"write({data!r:.40}) of {size}"
        if isinstance(data, str):
            try:
                raw = data.encode("utf-8")
            except UnicodeEncodeError:
                t.call(op, desc, lambda: shm.write(data), expect=UnicodeEncodeError)
                return
        else:
            raw = as_bytes(data)
        if raw is None:
            t.call(op, desc, lambda: shm.write(data), expect=bad_buffer_error(data))
        elif len(raw) > size - 4:
            t.call(op, desc, lambda: shm.write(data), expect=ValueError)  # never truncated
        else:
            ok, got = t.call(op, desc, lambda: shm.write(data))
            if ok:
                model[0:4] = struct.pack("<i", len(raw))
                model[4:4 + len(raw)] = raw
                t.check(op, desc, got == len(raw), f"returned {got}")
    elif op in ("read", "read_string"):
        n = struct.unpack("<i", model[0:4])[0] if size >= 4 else -1
        fn = shm.read if op == "read" else shm.read_string
        desc = f"{op}() with header {n} of {size}"
        if not 0 <= n <= size - 4:
            t.call(op, desc, fn, expect=shmsem.FrameError)
            return
        payload = bytes(model[4:4 + n])
        if op == "read_string":
            try:
                want: Any = payload.decode("utf-8")
            except UnicodeDecodeError:
                t.call(op, desc, fn, expect=UnicodeDecodeError)
                return
        else:
            want = payload
        ok, got = t.call(op, desc, fn)
        if ok:
            t.check(op, desc, got == want, f"{got!r:.60} != {want!r:.60}")
    elif op == "ndarray":
        dtype: Any = eval(dt) if dt.startswith("[") else dt
        desc = f"ndarray({shape!r}, {dt}, offset={offset!r}) of {size}"
        ok, arr = t.call(op, desc, lambda: shm.ndarray(shape, dtype, offset), expect="any",
                         allowed=(TypeError, ValueError, OverflowError))
        if ok:
            addr = shm._seg.address
            start = arr.__array_interface__["data"][0]
            hasobj = arr.dtype.hasobject
            t.check(op, desc, not hasobj, f"an array of {arr.dtype} over shared memory: its "
                    "items are PyObject pointers read from the segment (touching one crashes)",
                    "accepted an object dtype")
            t.check(op, desc, addr <= start and start + arr.nbytes <= addr + size,
                    f"array [{start - addr}, +{arr.nbytes}) outside the {size}-byte segment",
                    "view outside the segment")
            del arr  # never touch the items of an object array
    else:
        ok, view = t.call("buf", "buf", lambda: shm.buf)
        if ok:
            t.check("buf", "buf", len(view) == size and not view.readonly, f"{len(view)}")
            view.release()
    del np


# ---------------------------------------------------------------------------
# Semaphores against a model

SEMVMX = 32767
IPC_NOWAIT, SEM_UNDO = 0o4000, 0o10000
OP_FLAGS = st.sampled_from([0, IPC_NOWAIT, SEM_UNDO, IPC_NOWAIT | SEM_UNDO, 0x8000, -1, 1,
                            2**20, 0o4001, True])
SEM_OPS = st.lists(st.tuples(
    st.sampled_from(["acquire", "release", "value=", "wait_zero", "counts", "op", "values=",
                     "getitem", "lock"]),
    st.one_of(st.sampled_from([True, False, 0, 1, None, "", "x"]), JUNK),
    TIMEOUTS,
    st.one_of(st.integers(-2, 5), st.sampled_from([SEMVMX, SEMVMX + 1, 2**31, 2**64, -(2**70)]),
              JUNK),
    st.lists(st.tuples(st.one_of(st.integers(-3, 4), JUNK),
                       st.one_of(st.integers(-3, 3),
                                 st.sampled_from([SEMVMX, -SEMVMX, SEMVMX + 1, -SEMVMX - 1,
                                                  2**40])),
                       OP_FLAGS).map(lambda o: o if o[2] != 0 else o[:2]),
             min_size=0, max_size=4),
    st.booleans(), st.booleans(),
), max_size=10)


def call_blocking(t: Tally, ep: str, desc: str, fn: Callable[[], Any], tmo: Any,
                  would_block: bool, success: Any, blocked: Any, extra_errors: tuple[type, ...] = ()) -> tuple[bool, Any]:
    """A call with a timeout: refused if the timeout is bad; when it would
    block, only made if the timeout is short (else skipped); the result must
    be ``success`` (it went through) or ``blocked`` (it gave up)."""
    meaning = timeout_meaning(tmo)
    if isinstance(meaning, type):
        return t.call(ep, desc, fn, expect=meaning)
    if isinstance(meaning, tuple):  # a huge int: forever, or ValueError
        if would_block:
            return False, None
        ok, got = t.call(ep, desc, fn, expect="any", allowed=(ValueError,))
        if ok:
            t.check(ep, desc, got == success, f"{got!r}")
        return ok, got
    if would_block and (meaning == FOREVER or meaning > 0.01):
        return False, None
    ok, got = t.call(ep, desc, fn, allowed=extra_errors)
    if ok:
        want = blocked if would_block else success
        t.check(ep, desc, got == want, f"{got!r}, wanted {want!r}")
    return ok, got


def simulate_semop(values: list[int], adj: list[int], ops: list[tuple[int, ...]], undo: bool
                   ) -> tuple[str, list[int], list[int]]:
    """The kernel's semop, in order: "block" (with the blocking op's flags),
    "range" (ERANGE) or "ok" with the new values and undo adjustments."""
    vals, adjs = list(values), list(adj)
    for o in ops:
        i, d = o[0], o[1]
        flg = (o[2] if len(o) > 2 else 0) | (SEM_UNDO if undo else 0)
        if d == 0:
            if vals[i] != 0:
                return ("nowait" if flg & IPC_NOWAIT else "block"), values, adj
            continue
        r = vals[i] + d
        if r < 0:
            return ("nowait" if flg & IPC_NOWAIT else "block"), values, adj
        if r > SEMVMX:
            return "range", values, adj
        if flg & SEM_UNDO:
            a = adjs[i] - d
            if not -SEMVMX - 1 <= a <= SEMVMX:
                return "range", values, adj
            adjs[i] = a
        vals[i] = r
    return "ok", vals, adjs


def fuzz_sem(t: Tally, n: int) -> None:
    import shmsem

    def body(x: Any) -> None:
        start, count, ops = x
        sem = shmsem.Semaphore(None, start)
        sset = shmsem.SemaphoreSet(None, count, values=[start] * count)
        lock = shmsem.Lock(None)
        model = [start]
        smodel = [start] * count
        sadj = [0] * count
        held = [False]
        try:
            for op in ops:
                sem_op(t, sem, sset, lock, model, smodel, sadj, held, op)
                t.check("model", f"after {op[0]}", sem.value == model[0] and
                        list(sset.values) == smodel, f"{sem.value} {sset.values} != model "
                        f"{model} {smodel}", "values differ from the model")
        finally:
            if held[0]:
                lock.release()
            for s in (sem, sset, lock):
                s.remove()

    run_examples(t, n, st.tuples(st.integers(0, 2), st.integers(1, 3), SEM_OPS), body)


def sem_op(t: Tally, sem: Any, sset: Any, lock: Any, model: list[int], smodel: list[int],
           sadj: list[int], held: list[bool], op: tuple[Any, ...]) -> None:

    name, blocking, tmo, num, ops, nowait, undo = op
    if name == "acquire":
        desc = f"acquire({blocking!r}, {tmo!r}) at value {model[0]}"
        if not blocking and tmo is not None:
            t.call(name, desc, lambda: sem.acquire(blocking, tmo), expect=ValueError)
            return
        if not blocking:
            ok, got = t.call(name, desc, lambda: sem.acquire(blocking, tmo))
            if ok:
                t.check(name, desc, got is (model[0] > 0), f"{got!r}")
                model[0] -= got is True
            return
        ok, got = call_blocking(t, name, desc, lambda: sem.acquire(blocking, tmo), tmo,
                                model[0] == 0, True, False)
        if ok and got is True:
            model[0] -= 1
    elif name == "release":
        desc = f"release({num!r}) at value {model[0]}"
        if not isinstance(num, int):  # bool is an int here, as in threading
            t.call(name, desc, lambda: sem.release(num), expect=TypeError)
        elif num < 1 or model[0] + num > SEMVMX:
            t.call(name, desc, lambda: sem.release(num), expect=ValueError)
        else:
            ok, _ = t.call(name, desc, lambda: sem.release(num))
            if ok:
                model[0] += num
    elif name == "value=":
        desc = f"value = {num!r}"
        if not is_int(num):
            t.call(name, desc, lambda: setattr(sem, "value", num), expect=TypeError)
        elif not 0 <= num <= SEMVMX:
            t.call(name, desc, lambda: setattr(sem, "value", num), expect=ValueError)
        else:
            ok, _ = t.call(name, desc, lambda: setattr(sem, "value", num))
            if ok:
                model[0] = num
    elif name == "wait_zero":
        desc = f"wait_zero({tmo!r}) at value {model[0]}"
        call_blocking(t, name, desc, lambda: sem.wait_zero(tmo), tmo, model[0] != 0, True, False)
    elif name == "counts":
        for attr in ("ncnt", "zcnt", "last_pid"):
            ok, got = t.call(attr, attr, lambda a=attr: getattr(sem, a))
            if ok:
                t.check(attr, attr, is_int(got) and got >= 0, f"{got!r}")
    elif name == "getitem":
        desc = f"set[{num!r}] of {len(smodel)}"
        if not is_int(num):
            t.call(name, desc, lambda: sset[num], expect=TypeError)
        elif not -len(smodel) <= num < len(smodel):
            t.call(name, desc, lambda: sset[num], expect=IndexError)
        else:
            ok, s = t.call(name, desc, lambda: sset[num])
            if ok:
                t.check(name, desc, s.value == smodel[num], f"{s.value} != {smodel[num]}")
    elif name == "values=":
        vals = [num] * len(smodel)
        desc = f"values = {vals!r}"
        if not is_int(num):
            t.call(name, desc, lambda: setattr(sset, "values", vals), expect=TypeError)
        elif not 0 <= num <= SEMVMX:
            t.call(name, desc, lambda: setattr(sset, "values", vals), expect=ValueError)
        else:
            ok, _ = t.call(name, desc, lambda: setattr(sset, "values", vals))
            if ok:
                smodel[:] = vals
                sadj[:] = [0] * len(sadj)  # SETALL clears every adjustment
    elif name == "lock":
        desc = f"Lock.acquire({blocking!r}, {tmo!r}) held={held[0]}"
        if held[0]:
            ok, _ = t.call("Lock.release", "release", lock.release)
            held[0] = not ok
            return
        if not blocking and tmo is not None:
            t.call("Lock.acquire", desc, lambda: lock.acquire(blocking, tmo), expect=ValueError)
            return
        if not blocking:
            ok, got = t.call("Lock.acquire", desc, lambda: lock.acquire(blocking))
        else:
            ok, got = call_blocking(t, "Lock.acquire", desc, lambda: lock.acquire(blocking, tmo),
                                    tmo, False, True, False)
        if ok and got:
            held[0] = True
            t.call("Lock.release twice", "release", lock.release)
            t.call("Lock.release twice", "release again", lock.release, expect=RuntimeError)
            held[0] = False
    else:  # op
        sop_op(t, sset, smodel, sadj, tmo, ops, nowait, undo)


def sop_op(t: Tally, sset: Any, smodel: list[int], sadj: list[int], tmo: Any, ops: list[Any],
           nowait: bool, undo: bool) -> None:
    desc = f"op({ops!r}, timeout={tmo!r}, undo={undo}, nowait={nowait}) at {smodel} adj {sadj}"
    call = lambda: sset.op(ops, timeout=tmo, undo=undo, nowait=nowait)
    nmem = len(smodel)
    for o in ops:
        i = o[0]
        if not is_int(i) or not is_int(o[1]) or (len(o) > 2 and not is_int(o[2])):
            t.call("op", desc, call, expect=(TypeError, ValueError), allowed=(IndexError,))
            return
    if nowait and tmo is not None:
        t.call("op", desc, call, expect=ValueError)
        return
    for o in ops:
        if not -nmem <= o[0] < nmem:
            t.call("op", desc, call, expect=IndexError)
            return
    norm = [(o[0] % nmem,) + tuple(o[1:]) for o in ops]
    meaning = timeout_meaning(tmo)
    if not ops:
        t.call("op", desc, call, expect=ValueError)
        return
    if any(abs(o[1]) > SEMVMX or (len(o) > 2 and o[2] & ~(IPC_NOWAIT | SEM_UNDO)) for o in norm):
        # The C core parses the timeout before the operations.
        t.call("op", desc, call, expect=ValueError,
               allowed=(meaning,) if isinstance(meaning, type) else ())
        return
    if isinstance(meaning, type):
        t.call("op", desc, call, expect=meaning)
        return
    outcome, vals, adjs = simulate_semop(smodel, sadj, norm, undo)
    if outcome == "range":
        ok, _ = t.call("op", desc, call, expect=ValueError)
        return
    would_block = outcome == "block" and not nowait
    if outcome in ("block", "nowait"):
        if outcome == "block" and not nowait and (isinstance(meaning, tuple) or meaning == FOREVER
                                                  or meaning > 0.01):
            return
        ok, got = t.call("op", desc, call, allowed=(ValueError,) if isinstance(meaning, tuple)
                         else ())
        if ok:
            t.check("op", desc, got is False, f"{got!r}, but it would block")
        return
    del would_block
    ok, got = t.call("op", desc, call, expect="any" if isinstance(meaning, tuple) else None,
                     allowed=(ValueError,) if isinstance(meaning, tuple) else ())
    if ok:
        t.check("op", desc, got is True, f"{got!r}")
        smodel[:] = vals
        sadj[:] = adjs


# ---------------------------------------------------------------------------
# MessageQueue against a model

MSG_OPS = st.lists(st.tuples(
    st.sampled_from(["send", "send", "receive", "receive", "max_bytes=", "max_bytes"]),
    DATA, st.one_of(st.integers(-3, 4), st.sampled_from([2**63 - 1, 2**63, -(2**63),
                                                        -(2**63) - 1]), JUNK),
    st.one_of(st.booleans(), JUNK), TIMEOUTS,
    st.one_of(st.integers(0, 20000), st.integers(2**32, 2**32 + 20000),
              st.sampled_from([2**31 - 1, 2**32, 2**32 + 5, 2**40, 2**63, 2**64, -1]), JUNK),
), max_size=10)


def fuzz_msgq(t: Tally, n: int) -> None:
    import shmsem

    msgmax = int(Path("/proc/sys/kernel/msgmax").read_text())

    def body(ops: list[Any]) -> None:
        q = shmsem.MessageQueue(None)
        model: list[tuple[int, bytes]] = []
        qbytes = [q.max_bytes]
        try:
            for op in ops:
                msgq_op(t, q, model, qbytes, msgmax, op)
                st_ = q.stat()
                t.check("model", f"after {op[0]}", st_.current_messages == len(model)
                        and st_.current_bytes == sum(len(m) for _, m in model)
                        and st_.max_bytes == qbytes[0],
                        f"{st_} != {len(model)} messages, max_bytes {qbytes[0]}",
                        "queue differs from the model")
        finally:
            q.remove()

    run_examples(t, n, MSG_OPS, body)


REFUSED = object()


def refused_type_or_timeout(t: Tally, name: str, desc: str, call: Callable[[], Any],
                            mtype: Any, block: Any, tmo: Any) -> Any:
    """The checks send() and receive() share: a message type that is not an
    int64, a timeout with block=False, a bad timeout.  Checks the call against
    the first that applies and returns REFUSED; otherwise returns what the
    timeout means (timeout_meaning, 0 for a non-blocking call)."""
    if not is_int(mtype):
        t.call(name, desc, call, expect=TypeError)
        return REFUSED
    if not -(2**63) <= mtype < 2**63:
        t.call(name, desc, call, expect=ValueError)
        return REFUSED
    if not block and tmo is not None:
        t.call(name, desc, call, expect=ValueError)
        return REFUSED
    meaning = timeout_meaning(tmo) if block else 0
    if isinstance(meaning, type):
        t.call(name, desc, call, expect=meaning)
        return REFUSED
    return meaning


def msgq_op(t: Tally, q: Any, model: list[tuple[int, bytes]], qbytes: list[int], msgmax: int,
            op: tuple[Any, ...]) -> None:
    import shmsem

    name, data, mtype, block, tmo, num = op
    if name == "send":
        desc = f"send({data!r:.40}, {mtype!r}, block={block!r}, timeout={tmo!r}) " \
               f"with {len(model)} queued"
        call = lambda: q.send(data, mtype, block=block, timeout=tmo)
        raw: Any
        if isinstance(data, str):
            try:
                raw = data.encode()
            except UnicodeEncodeError:
                t.call(name, desc, call, expect=UnicodeEncodeError)
                return
        else:
            raw = as_bytes(data)
        if raw is None:
            t.call(name, desc, call, expect=bad_buffer_error(data), allowed=(TypeError, ValueError))
            return
        meaning = refused_type_or_timeout(t, name, desc, call, mtype, block, tmo)
        if meaning is REFUSED:
            return
        if mtype <= 0:
            t.call(name, desc, call, expect=ValueError)
            return
        if len(raw) > msgmax:
            t.call(name, desc, call, expect=shmsem.LimitError)
            return
        cb = sum(len(m) for _, m in model)
        fits = cb + len(raw) <= qbytes[0] and len(model) + 1 <= qbytes[0]
        if not fits:
            if len(raw) > qbytes[0] or qbytes[0] == 0:
                t.call(name, desc, call, expect=ValueError)  # can never fit: at once
                return
            if block and (isinstance(meaning, tuple) or meaning == FOREVER or meaning > 0.01):
                return
            t.call(name, desc, call, expect=shmsem.QueueFullError,
                   allowed=(ValueError,) if isinstance(meaning, tuple) else ())
            return
        ok, _ = t.call(name, desc, call, expect="any" if isinstance(meaning, tuple) else None,
                       allowed=(ValueError,) if isinstance(meaning, tuple) else ())
        if ok:
            model.append((mtype, raw))
    elif name == "receive":
        desc = f"receive({mtype!r}, block={block!r}, timeout={tmo!r}) of {model!r:.80}"
        call = lambda: q.receive(mtype, block=block, timeout=tmo)
        meaning = refused_type_or_timeout(t, name, desc, call, mtype, block, tmo)
        if meaning is REFUSED:
            return
        if mtype == 0:
            idx = 0 if model else None
        elif mtype > 0:
            idx = next((i for i, (ty, _) in enumerate(model) if ty == mtype), None)
        else:
            cands = [(ty, i) for i, (ty, _) in enumerate(model) if ty <= -mtype]
            idx = min(cands)[1] if cands else None
        if idx is None:
            if block and (isinstance(meaning, tuple) or meaning == FOREVER or meaning > 0.01):
                return
            t.call(name, desc, call, expect=shmsem.QueueEmptyError,
                   allowed=(ValueError,) if isinstance(meaning, tuple) else ())
            return
        ok, got = t.call(name, desc, call, expect="any" if isinstance(meaning, tuple) else None,
                         allowed=(ValueError,) if isinstance(meaning, tuple) else ())
        if ok:
            want = model.pop(idx)
            t.check(name, desc, got == (want[1], want[0]), f"{got!r:.60} != {want!r:.60}")
    elif name == "max_bytes=":
        desc = f"max_bytes = {num!r}"
        call = lambda: setattr(q, "max_bytes", num)
        if not is_int(num):
            t.call(name, desc, call, expect=TypeError)
            return
        if num < 0:
            t.call(name, desc, call, expect=ValueError)
            return
        ok, _ = t.call(name, desc, call, expect="any",
                       allowed=(ValueError, shmsem.PermissionDeniedError))
        if ok:
            got = q.max_bytes
            t.check(name, desc, got == num, f"max_bytes reads back {got}", "silently truncated")
            qbytes[0] = got
    else:
        ok, got = t.call("max_bytes", "max_bytes", lambda: q.max_bytes)
        if ok:
            t.check("max_bytes", "max_bytes", got == qbytes[0], f"{got}")


# ---------------------------------------------------------------------------
# Channel against a model

CH_OPS = st.lists(st.tuples(
    st.sampled_from(["put_bytes", "put_bytes", "put_bytes_nowait", "put", "put_many_bytes",
                     "put_many", "get_bytes", "get_bytes", "get", "get_bytes_nowait",
                     "get_nowait", "recv_into", "get_many_bytes", "get_many", "state"]),
    DATA, st.one_of(st.booleans(), st.sampled_from([0, 1, None, "", "x"])), TIMEOUTS,
    st.one_of(st.integers(-1, 5), st.sampled_from([2**31, 2**63, 2**64, -(2**64), True]), JUNK),
    st.sampled_from(["small", "exact", "big", "bytes", "readonly", "str", "array",
                     "noncontig"]),
), max_size=14)


def record_size(n: int) -> int:
    return 8 + (n + 7) // 8 * 8


def fuzz_channel(t: Tally, n: int) -> None:
    import shmsem

    def body(x: Any) -> None:
        cap, ops = x
        ch = shmsem.Channel.create(None, cap)
        model: deque[tuple[str, bytes, Any]] = deque()
        try:
            t.check("Channel.create", f"capacity {cap}", ch.capacity == (cap + 7) & ~7
                    and ch.max_message_size == ch.capacity - 8, f"{ch.capacity}")
            for op in ops:
                channel_op(t, ch, model, op)
                used = sum(record_size(len(p)) for _, p, _ in model)
                st_ = ch.stats()
                t.check("model", f"after {op[0]}", st_.used == used and
                        ch.qsize() == len(model) and ch.empty() == (not model),
                        f"{st_} != {len(model)} messages in {used} bytes",
                        "channel differs from the model")
        finally:
            ch.close()
        for name, fn in [("put_bytes", lambda: ch.put_bytes(b"x")), ("get_bytes", ch.get_bytes),
                         ("qsize", ch.qsize), ("stats", ch.stats),
                         ("recv_into", lambda: ch.recv_into(bytearray(8)))]:
            t.call(f"{name} after close", name, fn, expect=shmsem.ClosedError)

    run_examples(t, n, st.tuples(st.sampled_from([64, 65, 72, 100, 256, 1000]), CH_OPS), body)


def channel_op(t: Tally, ch: Any, model: deque[tuple[str, bytes, Any]], op: tuple[Any, ...]
               ) -> None:
    """One call against the model.  The C methods check block/timeout first
    (a bad timeout is refused even with block=False), then the data."""
    from shmsem.channel import _encode

    name, data, block, tmo, num, bufkind = op
    cap, maxp = ch.capacity, ch.max_message_size
    used = sum(record_size(len(p)) for _, p, _ in model)
    room = cap - used
    nowait = name.endswith("_nowait")
    blocking = bool(block) and not nowait
    tm = 0 if nowait else timeout_meaning(tmo)
    huge = isinstance(tm, tuple)
    loose = (ValueError,) if huge else ()  # a huge int timeout may also be refused
    long_wait = huge or tm == FOREVER or (isinstance(tm, float) and tm > 0.01)
    desc = f"{name}({data!r:.40}, block={block!r}, timeout={tmo!r}, n={num!r}, buf={bufkind})" \
           f" with {len(model)} queued, {room} free"
    if name == "state":
        for nm in ("qsize", "empty"):
            t.call(nm, nm, getattr(ch, nm))
        ok, full = t.call("full", "full", ch.full)
        if ok:
            t.check("full", "full", full == (room < 8), f"full() is {full} with {room} free")
        return
    if name.startswith("put"):
        items: list[tuple[str, bytes, Any]] | None
        bad: Any = TypeError
        if name in ("put_bytes", "put_bytes_nowait"):
            raw = as_bytes(data)
            items = [("bytes", raw, raw)] if raw is not None else None
            bad = bad_buffer_error(data)
            call = ((lambda: ch.put_bytes(data, block, tmo)) if name == "put_bytes"
                    else (lambda: ch.put_bytes_nowait(data)))
        elif name == "put":
            obj = data if not isinstance(data, (memoryview, Opaque)) else bytes(8)
            _, parts = _encode(obj)
            items = [("obj", b"".join(bytes(p) for p in parts), obj)]
            call = lambda: ch.put(obj, block, tmo)
        elif name == "put_many_bytes":
            seq: Any = [data] * max(0, min(num, 6)) if is_int(num) else data
            try:
                raws = [as_bytes(d) for d in seq]
            except TypeError:
                raws = [None]
            items = None if any(r is None for r in raws) else [("bytes", r, r) for r in raws]
            bad = (TypeError, BufferError)
            call = lambda: ch.put_many_bytes(seq, block, tmo)
        else:  # put_many: objects, pickled in-band
            objs = [data if not isinstance(data, (memoryview, Opaque)) else b"o"] * \
                (max(0, min(num, 6)) if is_int(num) else 2)
            items = [("obj", pickle.dumps(o, protocol=5), o) for o in objs]
            call = lambda: ch.put_many(objs, block, tmo)
        if isinstance(tm, type):
            t.call(name, desc, call, expect=tm)
            return
        if items is None:
            t.call(name, desc, call, expect=bad, allowed=loose)
            return
        need = sum(record_size(len(p)) for _, p, _ in items)
        if any(len(p) > maxp for _, p, _ in items) or need > cap:
            t.call(name, desc, call, expect=ValueError)  # never fits: at once, never blocks
            return
        if need > room:
            if blocking and long_wait:
                return
            t.call(name, desc, call, expect=queue.Full, allowed=loose)
            return
        ok, _ = t.call(name, desc, call, expect="any" if huge else None, allowed=loose)
        if ok:
            model.extend(items)
        return
    buf: Any = None
    if name == "recv_into":
        head = len(model[0][1]) if model else 0
        buf = {"small": bytearray(max(0, head - 1)), "exact": bytearray(head),
               "big": bytearray(maxp + 5), "bytes": bytes(head),
               "readonly": memoryview(bytes(head)), "str": "x" * head,
               "array": array.array("B", bytes(head + 3)),
               "noncontig": memoryview(bytearray(2 * head + 4))[::2]}[bufkind]
        call = lambda: ch.recv_into(buf, block, tmo)
    elif name in ("get_many_bytes", "get_many"):
        call = ((lambda: ch.get_many_bytes(num, block, tmo)) if name == "get_many_bytes"
                else (lambda: ch.get_many(num, block, tmo)))
    else:
        call = {"get_bytes": lambda: ch.get_bytes(block, tmo), "get": lambda: ch.get(block, tmo),
                "get_bytes_nowait": ch.get_bytes_nowait, "get_nowait": ch.get_nowait}[name]
    if isinstance(tm, type):
        t.call(name, desc, call, expect=tm)
        return
    if name == "recv_into" and bufkind in ("bytes", "readonly", "str", "noncontig"):
        t.call(name, desc, call, expect=TypeError, allowed=loose)
        return
    if name in ("get_many_bytes", "get_many") and num is not None:
        if not isinstance(num, int):
            t.call(name, desc, call, expect=TypeError, allowed=loose)
            return
        if num < 1:
            t.call(name, desc, call, expect=ValueError)
            return
    if not model:
        if blocking and long_wait:
            return
        t.call(name, desc, call, expect=queue.Empty, allowed=loose)
        return
    if name == "recv_into" and len(buf) < len(model[0][1]):
        t.call(name, desc, call, expect=ValueError)  # and the message stays
        return
    ok, got = t.call(name, desc, call, expect="any" if huge else None, allowed=loose)
    if not ok:
        return
    if name in ("get_many_bytes", "get_many"):
        k = len(model) if num is None else min(num, len(model))
        want = [model.popleft() for _ in range(k)]
        if name == "get_many_bytes":
            t.check(name, desc, got == [p for _, p, _ in want], f"{got!r:.80}")
        else:
            t.check(name, desc, got == [o if kind == "obj" else p for kind, p, o in want],
                    f"{got!r:.80}")
        return
    kind, payload, obj = model.popleft()
    if name == "recv_into":
        t.check(name, desc, got == len(payload) and bytes(buf[:got]) == payload, f"{got!r}")
    elif name in ("get_bytes", "get_bytes_nowait") or kind == "bytes":
        t.check(name, desc, got == payload, f"{got!r:.60} != {payload!r:.60}")
    else:
        t.check(name, desc, got == obj and type(got) is type(obj), f"{got!r:.60} != {obj!r:.60}")


# ---------------------------------------------------------------------------
# Mailbox against a model

MB_OPS = st.lists(st.tuples(
    st.sampled_from(["publish", "publish", "read", "wait", "state"]), DATA,
    st.one_of(st.integers(-2, 8), st.sampled_from([2**63, 2**64 - 1, 2**64, -(2**64), True]),
              JUNK),
    TIMEOUTS,
), max_size=12)


def fuzz_mailbox(t: Tally, n: int) -> None:
    import shmsem

    def body(x: Any) -> None:
        cap, ops = x
        mb = shmsem.Mailbox.create(None, cap)
        model = [0, b""]
        try:
            t.check("Mailbox.create", f"capacity {cap}", mb.capacity == cap, f"{mb.capacity}")
            for name, data, after, tmo in ops:
                mailbox_op(t, mb, model, name, data, after, tmo)
                t.check("model", f"after {name}", mb.seq == model[0], f"seq {mb.seq}",
                        "mailbox differs from the model")
        finally:
            mb.close()
        for name, fn in [("publish", lambda: mb.publish(b"x")), ("read", mb.read),
                         ("wait", lambda: mb.wait(0, 0)), ("seq", lambda: mb.seq)]:
            t.call(f"{name} after close", name, fn, expect=shmsem.ClosedError)

    run_examples(t, n, st.tuples(st.sampled_from([1, 7, 64, 100, 600]), MB_OPS), body)


def mailbox_op(t: Tally, mb: Any, model: list[Any], name: str, data: Any, after: Any,
               tmo: Any) -> None:
    if name == "publish":
        desc = f"publish({data!r:.40}) capacity {mb.capacity}"
        raw = as_bytes(data)
        if raw is None:
            t.call(name, desc, lambda: mb.publish(data), expect=bad_buffer_error(data))
        elif len(raw) > mb.capacity:
            t.call(name, desc, lambda: mb.publish(data), expect=ValueError)
        else:
            ok, seq = t.call(name, desc, lambda: mb.publish(data))
            if ok:
                t.check(name, desc, seq == model[0] + 1, f"seq {seq}")
                model[:] = [seq, raw]
    elif name == "read":
        ok, got = t.call(name, "read()", mb.read)
        if ok:
            t.check(name, "read()", got == (model[0], model[1]), f"{got!r:.60}")
    elif name == "state":
        ok, s = t.call("stats", "stats()", mb.stats)
        if ok:
            t.check("stats", "stats()", s.seq == model[0] and s.capacity == mb.capacity,
                    f"{s}")
    else:
        desc = f"wait({after!r}, {tmo!r}) at seq {model[0]}"
        call = lambda: mb.wait(after, tmo)
        if not isinstance(after, int):
            t.call(name, desc, call, expect=TypeError)
            return
        if not 0 <= after < 2**64:
            t.call(name, desc, call, expect=ValueError, allowed=(TypeError,))
            return
        call_blocking(t, name, desc, call, tmo, after >= model[0], (model[0], model[1]), None)


# ---------------------------------------------------------------------------
# PosixIpcHelper and from_id


def fuzz_compat(t: Tally, n: int) -> None:
    """PosixIpcHelper's static semaphore calls and frames, and every
    from_id, with ids that are ours, gone, of another type, or junk."""
    import shmsem
    from shmsem import _core
    from shmsem.compat import PosixIpcHelper

    gone_sem = shmsem.Semaphore(None, 0)
    gone_sem.remove()
    gone_shm = shmsem.SharedMemory(None, 64)
    gone_shm_id = gone_shm.id
    gone_shm.close()
    gone_q = shmsem.MessageQueue(None)
    gone_q.remove()
    plain = shmsem.SharedMemory(None, 512)  # zeros: not a Channel, not a Mailbox
    ids = st.one_of(st.sampled_from(["OURS", "OURS", "GONE-SEM", "GONE-SHM", "GONE-MSG",
                                     "PLAIN-SHM"]), JUNK)
    action = st.tuples(st.sampled_from(["wait", "signal", "destroy", "hash", "frames",
                                        "from_id", "from_id"]), ids, TIMEOUTS, DATA,
                       st.sampled_from(["SharedMemory", "SemaphoreSet", "Semaphore", "Lock",
                                        "MessageQueue", "Channel", "Mailbox"]))
    strategy = st.tuples(st.integers(0, 2), st.lists(action, min_size=1, max_size=6))

    def body(x: Any) -> None:
        start, actions = x
        semid = PosixIpcHelper.create_semaphore(None)
        for _ in range(start):
            PosixIpcHelper.semaphore_signal(semid)
        state = {"value": start, "alive": True}
        try:
            for what, ident, tmo, data, cls in actions:
                pick = {"OURS": semid, "GONE-SEM": gone_sem.id, "GONE-SHM": gone_shm_id,
                        "GONE-MSG": gone_q.id, "PLAIN-SHM": plain.id}
                i = pick.get(ident, ident) if isinstance(ident, str) else ident
                compat_action(t, what, i, tmo, data, cls, semid, state, plain.id, gone_sem.id)
        finally:
            try:
                _core.semctl(semid, 0, _core.IPC_RMID)
            except (shmsem.ShmsemError, OSError):
                pass

    run_examples(t, n, strategy, body)
    plain.close()


def compat_action(t: Tally, what: str, i: Any, tmo: Any, data: Any, cls: str, semid: int,
                  state: dict[str, Any], plain_id: int, gone_sem_id: int) -> None:
    import shmsem
    from shmsem.compat import PosixIpcHelper

    ours = i == semid and state["alive"] and is_int(i)
    bad_id = TypeError if not is_int(i) else ValueError if not 0 <= i < 2**31 else None
    # Semaphore calls go only to ids known here: a valid id picked at random
    # could name another program's set (when the IPC namespace is shared).
    known = ours or i in (gone_sem_id, semid)
    if what in ("wait", "signal", "destroy") and not bad_id and not known:
        return
    if what == "wait":
        desc = f"semaphore_wait({i!r}, {tmo!r}) at {state['value']}"
        call = lambda: PosixIpcHelper.semaphore_wait(i, tmo)
        m = timeout_meaning(tmo)
        if bad_id:
            t.call(what, desc, call, expect=bad_id, allowed=(TypeError, ValueError))
        elif not ours:  # gone: at once, whatever the timeout
            t.call(what, desc, call, expect=m if isinstance(m, type) else shmsem.RemovedError,
                   allowed=(ValueError,) if isinstance(m, tuple) else ())
        else:
            ok, got = call_blocking(t, what, desc, call, tmo, state["value"] == 0, True, False)
            if ok and got:
                state["value"] -= 1
    elif what == "signal":
        desc = f"semaphore_signal({i!r})"
        call = lambda: PosixIpcHelper.semaphore_signal(i)
        if bad_id:
            t.call(what, desc, call, expect=bad_id)
        elif ours:
            ok, _ = t.call(what, desc, call)
            state["value"] += ok
        else:
            t.call(what, desc, call, expect=shmsem.RemovedError)
    elif what == "destroy":
        desc = f"destroy_semaphore({i!r})"
        call = lambda: PosixIpcHelper.destroy_semaphore(i)
        if bad_id:
            t.call(what, desc, call, expect=bad_id)
        elif ours:
            t.call(what, desc, call)
            state["alive"] = False
            t.call(what, "again", call)  # an id already gone is not an error
            t.call("signal", "signal a destroyed set",
                   lambda: PosixIpcHelper.semaphore_signal(i), expect=shmsem.RemovedError)
        else:
            t.call(what, desc, call)
    elif what == "hash":
        desc = f"get_deterministic_hash_code({data!r:.30})"
        call = lambda: PosixIpcHelper.get_deterministic_hash_code(data)
        if isinstance(data, str):
            want = fnv_key(data)
            ok, got = t.call(what, desc, call, expect=ValueError if want is None else None)
            if ok:
                t.check(what, desc, got == want, f"{got} != {want}")
        else:
            t.call(what, desc, call, expect=TypeError)
    elif what == "frames":
        key = KEYS.fresh()
        h = PosixIpcHelper(key, 64)
        try:
            if isinstance(data, str):
                try:
                    raw: bytes | None = data.encode()
                except UnicodeEncodeError:
                    raw = None
            else:
                raw = as_bytes(data)
            desc = f"PosixIpcHelper.write({data!r:.40})"
            if raw is None:
                t.call(what, desc, lambda: h.write(data),
                       expect=(TypeError, BufferError, UnicodeEncodeError))
            elif len(raw) > 60:
                t.call(what, desc, lambda: h.write(data), expect=ValueError)
            else:
                t.call(what, desc, lambda: h.write(data))
                other = PosixIpcHelper.attach_existing(key)
                ok, got = t.call(what, "read", other.read)
                if ok:
                    t.check(what, desc, got == raw, f"{got!r}")
                ok, text = t.call(what, "read_string", other.read_string,
                                  expect="any", allowed=(UnicodeDecodeError,))
                if ok:
                    t.check(what, desc, text == raw.decode(), f"{text!r}")
                other.dispose()
                t.check(what, "a non-creator's dispose removes nothing",
                        shmsem.SharedMemory.open(key).id == h.shared_memory.id, "removed")
        finally:
            h.dispose()
        t.call("dispose twice", "dispose", h.dispose)
        t.call("read after dispose", "read", h.read, expect=shmsem.ClosedError)
        t.call("attach_existing after dispose", "attach", lambda: PosixIpcHelper.attach_existing(
            key), expect=shmsem.NotFoundError)
    else:
        opener = getattr(shmsem, cls).from_id
        desc = f"{cls}.from_id({i!r})"
        if bad_id:
            t.call("from_id", desc, lambda: opener(i), expect=bad_id,
                   allowed=(TypeError, ValueError))
            return
        if i == plain_id and cls in ("Channel", "Mailbox"):
            t.call("from_id", desc, lambda: opener(i), expect=shmsem.FormatError)
            return
        ok, obj = t.call("from_id", desc, lambda: opener(i), expect="any",
                         allowed=(shmsem.NotFoundError, shmsem.FormatError,
                                  shmsem.PermissionDeniedError))
        if ok:
            sem_kind = cls in ("SemaphoreSet", "Semaphore", "Lock")
            t.check("from_id", desc, (sem_kind and ours) or (cls == "SharedMemory" and
                                                              i == plain_id) or i not in (
                gone_sem_id, semid, plain_id), f"{obj!r}", "opened an object it was not given")
            if hasattr(obj, "close"):
                obj.close()


# ---------------------------------------------------------------------------
# The groups, each in its own process

GROUPS: dict[str, tuple[Callable[[Tally, int], None], int]] = {
    "keys": (fuzz_keys, 300),
    "create": (fuzz_create, 400),
    "shm_io": (fuzz_shm_io, 150),
    "sem": (fuzz_sem, 200),
    "msgq": (fuzz_msgq, 250),
    "channel": (fuzz_channel, 200),
    "mailbox": (fuzz_mailbox, 150),
    "compat": (fuzz_compat, 250),
}


def child_main(group: str, log_path: str) -> None:
    fn, n = GROUPS[group]
    tally = Tally(group, log_path)
    fn(tally, n)
    print(json.dumps(tally.summary()), flush=True)


def run_group(group: str, tmp_path: Path) -> dict[str, Any]:
    log = tmp_path / f"{group}.log"
    code = f"import test_fuzz_api as m; m.child_main({group!r}, {str(log)!r})"
    try:
        proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                              capture_output=True, text=True, timeout=FORK_TIMEOUT,
                              env=H.child_env(), cwd=str(tmp_path), check=False)
    except subprocess.TimeoutExpired as e:
        last = log.read_text(errors="replace").splitlines()[-3:] if log.exists() else []
        pytest.fail(f"fuzz group {group} did not finish within {FORK_TIMEOUT} s (a call "
                    f"that hangs?); last inputs: {last}; stderr: {e.stderr!r:.2000}")
    last = log.read_text(errors="replace").splitlines()[-3:] if log.exists() else []
    if proc.returncode < 0:
        pytest.fail(f"fuzz group {group} CRASHED with signal {-proc.returncode} "
                    f"({signal.Signals(-proc.returncode).name}); last inputs tried:\n"
                    + "\n".join(last) + f"\nstderr:\n{proc.stderr[-3000:]}")
    report = H.sanitizer_report(proc.stderr)
    assert report is None, f"sanitizer report in fuzz group {group}; last inputs {last}:\n{report}"
    assert proc.returncode == 0, (
        f"fuzz group {group} failed (rc={proc.returncode}); last inputs {last}:\n"
        f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("group", list(GROUPS))
def test_fuzz_entry_points(group: str, tmp_path: Path, reliability: Any) -> None:
    s = run_group(group, tmp_path)
    reliability(group=group, examples=s["examples"], inputs=s["tried"], accepted=s["accepted"],
                rejected=s["rejected"], values_verified=s["verified"],
                entry_points=s["entry_points"], violations=len(s["violations"]), crashes=0)
    assert s["tried"] >= s["examples"] > 0 and s["verified"] > 0, s
    assert not s["violations"], (
        f"{len(s['violations'])} contract violations in group {group} "
        f"({s['tried']} inputs tried):\n"
        + "\n".join(f"- {k}\n    e.g. {v}" for k, v in sorted(s["violations"].items())))


# ---------------------------------------------------------------------------
# Timeouts that mean "forever" are never turned into "now"


FOREVER_CHILD = r"""
import queue, signal, sys, time, shmsem
from shmsem.compat import PosixIpcHelper
T = eval(sys.argv[1])
def arm(action):
    def handler(signum, frame):
        action()
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.15)
def check(label, call, action):
    arm(action)
    t0 = time.monotonic()
    try:
        got = call()
    except BaseException as e:
        got = f"{type(e).__name__}: {e}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    print(label, repr(got), round(time.monotonic() - t0, 3), flush=True)
sem = shmsem.Semaphore(None, 0)
check("Semaphore.acquire", lambda: sem.acquire(timeout=T), lambda: sem.release())
sem.value = 1
check("Semaphore.wait_zero", lambda: sem.wait_zero(timeout=T), lambda: setattr(sem, "value", 0))
sset = shmsem.SemaphoreSet(None, 2)
check("SemaphoreSet.op", lambda: sset.op([(0, -1), (1, 0)], timeout=T),
      lambda: setattr(sset, "values", [1, 0]))
semid = PosixIpcHelper.create_semaphore(None)
check("PosixIpcHelper.semaphore_wait", lambda: PosixIpcHelper.semaphore_wait(semid, T),
      lambda: PosixIpcHelper.semaphore_signal(semid))
q = shmsem.MessageQueue(None)
check("MessageQueue.receive", lambda: q.receive(timeout=T), lambda: q.send(b"late"))
q.max_bytes = 4
q.send(b"full")
check("MessageQueue.send", lambda: q.send(b"more", timeout=T), lambda: q.receive())
ch = shmsem.Channel(None, 64)
check("Channel.get", lambda: ch.get(timeout=T), lambda: ch.put_bytes(b"late"))
check("Channel.get_bytes", lambda: ch.get_bytes(timeout=T), lambda: ch.put_bytes(b"late"))
check("Channel.get_many_bytes", lambda: ch.get_many_bytes(timeout=T), lambda: ch.put_bytes(b"late"))
check("Channel.recv_into", lambda: ch.recv_into(bytearray(64), timeout=T),
      lambda: ch.put_bytes(b"late"))
ch.put_bytes(b"x" * 56)
check("Channel.put_bytes", lambda: ch.put_bytes(b"y" * 56, timeout=T), lambda: ch.get_bytes())
check("Channel.put_many_bytes", lambda: ch.put_many_bytes([b"z" * 56], timeout=T),
      lambda: ch.get_bytes())
mb = shmsem.Mailbox(None, 16)
check("Mailbox.wait", lambda: mb.wait(0, timeout=T), lambda: mb.publish(b"late"))
for o in (sem, sset, q):
    o.remove()
PosixIpcHelper.destroy_semaphore(semid)
ch.close()
mb.close()
"""

FOREVER_WANT = {
    "Semaphore.acquire": "True", "Semaphore.wait_zero": "True", "SemaphoreSet.op": "True",
    "PosixIpcHelper.semaphore_wait": "True", "MessageQueue.receive": "(b'late', 1)",
    "MessageQueue.send": "None", "Channel.get": "b'late'", "Channel.get_bytes": "b'late'",
    "Channel.get_many_bytes": "[b'late']", "Channel.recv_into": "4",
    "Channel.put_bytes": "None", "Channel.put_many_bytes": "None",
    "Mailbox.wait": "(1, b'late')",
}


@pytest.mark.parametrize("timeout", ["None", "float('inf')", "1e300", "2**64", "1e9 + 1",
                                     "Decimal('1e400')"])
def test_forever_timeouts_wait_until_the_event(timeout: str, reliability: Any) -> None:
    """Each blocking call gets a timeout meaning "forever" and nothing to do;
    0.15 s later a SIGALRM handler provides what it waits for.  The call must
    have waited for it and returned it: a huge timeout that overflowed into
    a negative or tiny one would return at once with False / Empty / Full."""
    code = "from decimal import Decimal\n" + FOREVER_CHILD.replace(
        "T = eval(sys.argv[1])", "T = eval(sys.argv[1], {'Decimal': Decimal})")
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code, timeout],
                          capture_output=True, text=True, timeout=120, env=H.child_env(),
                          cwd="/", check=False)
    assert proc.returncode == 0 and H.sanitizer_report(proc.stderr) is None, (
        f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}")
    seen = {}
    for line in proc.stdout.splitlines():
        label, rest = line.split(" ", 1)
        got, _, elapsed = rest.rpartition(" ")
        seen[label] = (got, float(elapsed))
    wrong = {k: v for k, v in seen.items() if v[0] != FOREVER_WANT[k] or v[1] < 0.12}
    reliability(timeout=timeout, inputs=len(seen), values_verified=len(seen) - len(wrong),
                crashes=0)
    assert set(seen) == set(FOREVER_WANT), seen
    assert not wrong, f"timeout={timeout}: calls that did not wait for the event: {wrong}"


# ---------------------------------------------------------------------------
# A semaphore set's count is checked before anything is built from it

COUNT_CHILD = r"""
import json, resource, sys, tracemalloc, shmsem
counts = json.loads(sys.argv[1])
if sys.argv[2] == "limit":
    # A 16 GiB list must fail fast here, not thrash the machine.
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
out = {}
for count in counts:
    tracemalloc.start()
    try:
        s = shmsem.SemaphoreSet(None, count)
    except BaseException as e:
        got = type(e).__name__
    else:
        s.remove()
        got = "created"
    out[str(count)] = [got, tracemalloc.get_traced_memory()[1]]
    tracemalloc.stop()
print(json.dumps(out))
"""


def test_semaphore_set_count_is_checked_before_anything_is_allocated(reliability: Any) -> None:
    """The kernel takes at most SEMMSL (32000 by default) members per set.  A
    larger count must be refused (ValueError, or LimitError naming
    kernel.sem) without first building a Python list of that many values:
    2**24 members is 128 MiB of list, 2**31 is 16 GiB, and 10**30 cannot be
    a list length at all (OverflowError is not a documented answer)."""
    counts = [40000, 2**24, 10**30]
    if not H.under_asan():  # RLIMIT_AS cannot be set under ASan's shadow map
        counts.append(2**31)
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", COUNT_CHILD,
                           json.dumps(counts), "asan" if H.under_asan() else "limit"],
                          capture_output=True, text=True, timeout=120, env=H.child_env(),
                          cwd="/", check=False)
    assert proc.returncode == 0, f"rc={proc.returncode}: {proc.stderr[-2000:]}"
    out = json.loads(proc.stdout)
    reliability(inputs=len(counts), crashes=0,
                peak_bytes=max(peak for _, peak in out.values()))
    bad = {c: v for c, v in out.items() if v[0] not in ("ValueError", "LimitError")
           or v[1] > 16 << 20}
    assert not bad, (
        "SemaphoreSet(None, count): {count: [outcome, tracemalloc peak bytes]} that were not "
        f"refused cleanly and cheaply: {bad}")


# ---------------------------------------------------------------------------
# ndarray over shared memory with an object dtype


@pytest.mark.parametrize("dtype", ["object", "[('a', '<i8'), ('b', 'O')]"])
def test_ndarray_refuses_object_dtypes(dtype: str, reliability: Any) -> None:
    """An object array over a segment reads PyObject pointers from shared
    memory: any bytes there (a peer's, or stale ones) are dereferenced when
    an item is touched.  ndarray() must refuse such dtypes (TypeError or
    ValueError), not hand out an array whose first use crashes."""
    code = f"""
import shmsem
shm = shmsem.SharedMemory(None, 64)
shm.remove()   # gone with this process, even if it crashes
shm.write_at(0, b"\\x41" * 64)   # what a peer may have written
try:
    arr = shm.ndarray((2,), {dtype})
except (TypeError, ValueError) as e:
    print("refused", type(e).__name__, e, flush=True)
else:
    print("accepted", arr.dtype, flush=True)
    print("item", repr(arr[0]), flush=True)
    del arr
shm.close()
"""
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                          capture_output=True, text=True, timeout=60, env=H.child_env(),
                          cwd="/", check=False)
    report = H.sanitizer_report(proc.stderr)
    crashed = proc.returncode < 0 or report is not None
    reliability(dtype=dtype, inputs=1, crashes=int(crashed))
    assert not crashed, (
        f"SharedMemory.ndarray((2,), {dtype}) over a segment holding 0x41 bytes: the process "
        f"CRASHED (rc={proc.returncode}) when it touched an item\n{proc.stdout}"
        f"{(report or proc.stderr)[-1500:]}")
    assert proc.stdout.startswith("refused"), (
        f"ndarray accepted dtype {dtype}: {proc.stdout}{proc.stderr[-1500:]}")
