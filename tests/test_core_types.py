"""Every type of shmsem._core survives whatever Python code does with it.

The promise is that nothing a user does from Python crashes the interpreter.
For each type the C module defines (found by introspection, so that a new
type is covered without touching this file), a child process tries to build
it with no arguments and with odd ones, to build it behind its constructor's
back (``object.__new__``, ``T.__new__``, a subclass), to copy, deepcopy and
pickle it, and to call each of its methods with no arguments and with a
wrong one.  Each attempt must either work or raise an ordinary exception;
each object is dropped, and garbage collected, before the next is made, so
that the dealloc of a half-built object runs too.  The child runs each type alone and prints the attempt it
is starting, so a segfault fails the test naming the type and the attempt
instead of killing pytest.
"""

from __future__ import annotations

import copy
import gc
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import shmsem
from shmsem import _core

TIMEOUT = 60.0

#: The types the module is known to define today: discovery must find at
#: least these (it may find more).
KNOWN = {"Segment", "SegmentPin", "SemBase", "ChannelBase", "MailboxBase"}


def core_types() -> dict[str, type]:
    """Every type defined by shmsem._core: those exported as module
    attributes, and those only reachable through objects (the buffer pin),
    which a scan of the garbage collector's objects finds."""
    found = {name: obj for name, obj in vars(_core).items() if isinstance(obj, type)}
    # Make sure every internal type has been used at least once.
    seg = shmsem.SharedMemory(None, 64)
    try:
        view = memoryview(seg.buf)
        found[type(view.obj).__name__] = type(view.obj)
        view.release()
    finally:
        seg.close()
    for obj in gc.get_objects():
        if isinstance(obj, type) and obj.__module__ == "shmsem._core":
            found.setdefault(obj.__name__, obj)
    return found


# ---------------------------------------------------------------------------
# The child


def samples(name: str, cls: type) -> Iterator[tuple[str, Callable[[], Any]]]:
    """Ways to make an object of cls, including ones that ought to fail."""
    odd_args: list[tuple[Any, ...]] = [(), (None,), (0,), (-1,), (2**70,), ("x",), (b"x",),
                                       (1.5,), (object(),), (1, 2, 3, 4, 5, 6, 7)]
    for args in odd_args:
        yield f"{name}{args!r}", lambda args=args: cls(*args)
    yield f"{name}(bogus=1)", lambda: cls(bogus=1)
    yield f"object.__new__({name})", lambda: object.__new__(cls)
    yield f"{name}.__new__({name})", lambda: cls.__new__(cls)
    try:
        class Sub(cls):  # type: ignore[misc, valid-type]
            pass

        class BadInit(cls):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise RuntimeError("__init__ refuses")
    except TypeError:
        pass  # not a base type
    else:
        yield f"subclass of {name}()", lambda: Sub()
        yield f"subclass of {name} whose __init__ raises", lambda: BadInit()
        yield f"{name}.__new__(subclass)", lambda: cls.__new__(Sub)
    # Real objects, made the way the library makes them.
    if name in ("Segment", "SegmentPin"):
        def real_segment() -> Any:
            shmid = _core.shmget(None, 64, _core.IPC_CREAT | 0o600)
            try:
                return _core.Segment(shmid)
            finally:
                _core.shm_rmid(shmid)  # gone with the last detach: nothing is left
        if name == "Segment":
            yield "a real Segment", real_segment
        else:
            yield "a real SegmentPin", lambda: memoryview(real_segment()).obj


def probes(obj: Any, label: str) -> Iterator[tuple[str, Callable[[], Any]]]:
    """Things to do with an object that must never crash."""
    yield f"repr({label})", lambda: repr(obj)
    yield f"copy.copy({label})", lambda: copy.copy(obj)
    yield f"copy.deepcopy({label})", lambda: copy.deepcopy(obj)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        yield f"pickle.dumps({label}, {proto})", lambda p=proto: pickle.loads(pickle.dumps(obj, p))
    yield f"memoryview({label})", lambda: memoryview(obj).release()
    for attr in sorted(dir(obj)):
        if attr in ("__class__", "__init_subclass__", "__subclasshook__", "__new__", "__del__"):
            continue
        yield f"{label}.{attr}", lambda a=attr: getattr(obj, a)
        try:
            value = getattr(obj, attr)
        except Exception:  # noqa: BLE001 - reported by the attempt above
            continue
        if callable(value) and not isinstance(value, type):
            yield f"{label}.{attr}()", lambda v=value: v()
            yield f"{label}.{attr}(None)", lambda v=value: v(None)
            yield f"{label}.{attr}(-1, -1)", lambda v=value: v(-1, -1)


def attempt(label: str, fn: Callable[[], Any]) -> Any:
    # Before the call, so that a crash names what was being tried.
    print(json.dumps({"start": label}), flush=True)
    try:
        result = fn()
        outcome = None
    except Exception as e:  # noqa: BLE001 - any clean exception is fine
        result = None
        outcome = type(e).__name__
    print(json.dumps({"done": label, "raised": outcome}), flush=True)
    return result


def child_main(name: str) -> None:
    cls = core_types()[name]
    for label, make in samples(name, cls):
        obj = attempt(label, make)
        if obj is not None:
            for plabel, probe in probes(obj, label):
                attempt(plabel, probe)
        attempt(f"del ({label})", lambda: None)
        del obj
        gc.collect()
    print(json.dumps({"finished": name}), flush=True)


def child_internal_types() -> None:
    """Objects of SegmentPin are made only by the C core: Python gets a
    TypeError, never a half-built object, whichever way it asks."""
    cls = core_types()["SegmentPin"]
    ways: list[tuple[str, Callable[[], Any]]] = [
        ("SegmentPin()", lambda: cls()),
        ("object.__new__(SegmentPin)", lambda: object.__new__(cls)),
        ("SegmentPin.__new__(SegmentPin)", lambda: cls.__new__(cls)),
    ]
    shmid = _core.shmget(None, 64, _core.IPC_CREAT | 0o600)
    try:
        seg = _core.Segment(shmid)
    finally:
        _core.shm_rmid(shmid)
    view = memoryview(seg)
    pin = view.obj
    ways += [("copy.copy(pin)", lambda: copy.copy(pin)),
             ("copy.deepcopy(pin)", lambda: copy.deepcopy(pin)),
             ("pickle.dumps(pin)", lambda: pickle.dumps(pin))]
    for label, make in ways:
        print(json.dumps({"start": label}), flush=True)
        try:
            make()
        except TypeError:
            raised = "TypeError"
        except Exception as e:  # noqa: BLE001 - reported
            raised = type(e).__name__
        else:
            raised = None
        gc.collect()
        print(json.dumps({"done": label, "raised": raised}), flush=True)
    del pin
    view.release()
    seg.detach()
    print(json.dumps({"finished": "SegmentPin"}), flush=True)


# ---------------------------------------------------------------------------
# The tests


def run_child(name: str, function: str = "child_main") -> list[dict[str, Any]]:
    """Run function(name) of this file in a child; its JSON lines.  Fails,
    naming the type and the attempt, if the child crashes or hangs."""
    args = [name] if function == "child_main" else []
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        f"from test_core_types import {function} as _main\n"
        f"_main(*{args!r})\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                              capture_output=True, text=True, timeout=TIMEOUT, cwd="/",
                              check=False)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        last = out.strip().splitlines()[-1:] or ["nothing"]
        pytest.fail(f"_core.{name}: the child hung for {TIMEOUT}s; last line: {last[0]}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines or "finished" not in lines[-1]:
        started = [x["start"] for x in lines if "start" in x]
        where = started[-1] if started else "(before the first attempt)"
        pytest.fail(f"_core.{name} crashed the interpreter (rc={proc.returncode}) during: "
                    f"{where}\n{proc.stderr[-3000:]}")
    return lines


def test_discovery_finds_every_type() -> None:
    assert KNOWN <= set(core_types())


@pytest.mark.parametrize("name", sorted(core_types()))
def test_type_survives_abuse(name: str) -> None:
    lines = run_child(name)
    assert any("done" in x for x in lines)


def test_pin_cannot_be_built_copied_or_pickled() -> None:
    lines = run_child("SegmentPin", "child_internal_types")
    outcomes = {x["done"]: x["raised"] for x in lines if "done" in x}
    assert len(outcomes) == 6
    assert outcomes == dict.fromkeys(outcomes, "TypeError")
