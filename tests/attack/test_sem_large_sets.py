"""Semaphore sets of more than 65536 members, in a throwaway IPC namespace.

The 16-bit sem_num of struct sembuf limits which members a semop can reach,
not how many a set has: a set may have up to SEMMSL members, and SEMMSL (the
first field of kernel.sem) can be raised far beyond 65536.  GETALL and
SETALL move every member, so their buffers must be sized from the set itself.

Each scenario runs in a child started with `unshare --ipc` (we are root): it
raises SEMMSL in its own, new namespace, builds sets around and past 65536
members, and reports each step as one JSON line.  The namespace, and the
sets in it, vanish with the child.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
from typing import Any, Callable

import pytest
from helpers_faults import WAIT, child_code, run_json_child

from shmsem import SemaphoreSet, _core

SIZES = [65535, 65536, 65537, 70000]


# ---------------------------------------------------------------------------
# Inside the namespace


def step(label: str, fn: Callable[[], Any]) -> None:
    print(json.dumps({"start": label}), flush=True)
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - reported to the test
        print(json.dumps({"label": label, "cls": type(e).__name__, "msg": str(e)}), flush=True)
    else:
        print(json.dumps({"label": label, "cls": None, "result": result}), flush=True)


def ns_large_sets(which: str) -> None:
    """GETALL alone, or SETALL alone (checked member by member with GETVAL),
    so that a crash in one does not hide the other."""
    sem = pathlib.Path("/proc/sys/kernel/sem")
    semmsl, semmns, semopm, semmni = sem.read_text().split()
    sem.write_text(f"{max(SIZES)} {max(int(semmns), 4 * max(SIZES))} {semopm} {semmni}")
    for n in SIZES:
        s = SemaphoreSet(None, n)
        pattern = [(7 * i + 1) % 32768 for i in range(n)]
        members = sorted({0, 65534, 65535, 65536, n - 1} & set(range(n)))

        def getvals() -> list[int]:
            return [_core.semctl(s.id, i, _core.GETVAL) for i in members]

        if which == "getall":
            step(f"{n}: GETALL of a new set", lambda: s.values == (0,) * n)
            for i in members:
                _core.semctl(s.id, i, _core.SETVAL, pattern[i])
            step(f"{n}: GETALL after SETVAL",
                 lambda: [s.values[i] for i in members] == [pattern[i] for i in members])
        else:
            step(f"{n}: SETALL [7] * n", lambda: setattr(s, "values", [7] * n))
            step(f"{n}: GETVAL after [7] * n", lambda: getvals() == [7] * len(members))
            step(f"{n}: SETALL of a pattern", lambda: setattr(s, "values", pattern))
            step(f"{n}: GETVAL of the pattern", lambda: getvals() == [pattern[i] for i in members])
            step(f"{n}: SETALL of one value too many",
                 lambda: _core.sem_setall(s.id, pattern + [1]))
            step(f"{n}: GETVAL unchanged", lambda: getvals() == [pattern[i] for i in members])
        s.remove()
    print(json.dumps({"finished": True}), flush=True)


def ns_round_trip() -> None:
    """SETALL then GETALL: what one writes, the other reads back."""
    sem = pathlib.Path("/proc/sys/kernel/sem")
    semmsl, semmns, semopm, semmni = sem.read_text().split()
    sem.write_text(f"{max(SIZES)} {max(int(semmns), 4 * max(SIZES))} {semopm} {semmni}")
    for n in SIZES:
        s = SemaphoreSet(None, n)
        pattern = [(7 * i + 1) % 32768 for i in range(n)]
        step(f"{n}: SETALL then GETALL", lambda: (setattr(s, "values", pattern),
                                                   list(s.values) == pattern)[1])
        s.remove()
    print(json.dumps({"finished": True}), flush=True)


# ---------------------------------------------------------------------------
# The test


def run_in_namespace(function: str, *args: Any) -> dict[str, dict[str, Any]]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) (util-linux) is not installed")
    if os.geteuid() != 0:
        pytest.skip("sets past 65536 members need root: unshare --ipc and kernel.sem")
    code = child_code("test_sem_large_sets", function, *args)
    _, steps = run_json_child([unshare, "--ipc", sys.executable, "-X", "faulthandler", "-c", code])
    return steps


def failures(res: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Steps that did not do what they should: one value too many is a
    ValueError, everything else works (and its check is true)."""
    bad = {}
    for label, r in res.items():
        if "one value too many" in label:
            if r["cls"] != "ValueError":
                bad[label] = r
        elif r["cls"] is not None or r["result"] not in (True, None):
            bad[label] = r
    return bad


@pytest.mark.parametrize("which", ["getall", "setall"])
def test_getall_and_setall_past_65536_members(which: str) -> None:
    res = run_in_namespace("ns_large_sets", which)
    assert failures(res) == {}
    assert len(res) == (2 if which == "getall" else 6) * len(SIZES)


def test_values_round_trip_past_65536_members() -> None:
    res = run_in_namespace("ns_round_trip")
    assert failures(res) == {}
    assert len(res) == len(SIZES)
