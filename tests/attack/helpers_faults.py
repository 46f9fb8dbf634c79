"""Helpers shared by the fault-injection attack tests (tests/attack/test_kill_storm.py,
test_removal_under_load.py, test_signal_storm.py, test_fork.py, test_kernel_limits.py).

The child processes of those tests import this module too: ``child_code(module,
function, *args)`` builds the source of a child that puts this directory on
sys.path, imports ``module`` (a test file or this one) and calls
``function(*args)``.  So the code a child runs is ordinary, readable Python in
the test file, not a string.  Nothing here imports pytest.
"""

from __future__ import annotations

import json
import subprocess
import os
import signal
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import pytest

HERE = Path(__file__).resolve().parent
# tests/, for proc_helpers: children that import this module have only HERE.
sys.path.insert(0, str(HERE.parent))
from proc_helpers import die_with_parent as die_with_parent  # noqa: E402  (re-exported)
from proc_helpers import proc_state as proc_state  # noqa: E402

#: The longest any single wait in these tests may take: a bound, never an expectation.
WAIT = 20.0


def child_code(module: str, function: str, *args: Any) -> str:
    """Source for a child process that runs ``module.function(*args)``
    (args go through JSON)."""
    return (
        "import json, sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        f"from {module} import {function} as _main\n"
        f"_main(*json.loads({json.dumps(list(args))!r}))\n"
    )


# ---------------------------------------------------------------------------
# Messages whose damage is detectable: who, seq, length, then a crc32 over
# the header and the body.

HDR = struct.Struct("<IIII")  # who, seq, body length, crc32


def encode(who: int, seq: int, body: bytes | memoryview) -> bytes:
    head = struct.pack("<III", who, seq, len(body))
    return head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + bytes(body)


def decode(m: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(who, seq) of an intact message; ValueError if it is torn."""
    view = memoryview(m)
    if len(view) < HDR.size:
        raise ValueError(f"short message of {len(view)} bytes")
    who, seq, n, crc = HDR.unpack_from(view)
    body = view[HDR.size:]
    if len(body) != n or zlib.crc32(body, zlib.crc32(view[: HDR.size - 4])) != crc:
        raise ValueError(f"torn message who={who} seq={seq} len={len(view)}")
    return who, seq


# ---------------------------------------------------------------------------
# Processes


def wait_stopped(pid: int, timeout: float = 5.0) -> bool:
    """Wait until pid is stopped (or dead): True if it got there in time."""
    deadline = time.monotonic() + timeout
    while proc_state(pid) not in "TtZX":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0002)
    return True


def stop(pid: int) -> None:
    """SIGSTOP pid and wait until it is stopped: what it holds then is what
    it dies with.  A pid that does not stop within WAIT is an error (whether
    it holds a lock would be a guess)."""
    os.kill(pid, signal.SIGSTOP)
    if not wait_stopped(pid, WAIT):
        raise RuntimeError(f"pid {pid} did not stop within {WAIT}s of SIGSTOP")


def stop_and_kill(pid: int, holder: Callable[[], int],
                  on_stopped: Callable[[], None] | None = None) -> bool:
    """SIGSTOP pid, look whether it holds the lock that ``holder()`` names (a
    thread id: the pid of a single-threaded process) and call
    ``on_stopped()``, then SIGKILL it.  Returns whether it died holding the
    lock."""
    stop(pid)
    held = holder() == pid
    if on_stopped is not None:
        on_stopped()
    os.kill(pid, signal.SIGKILL)
    return held


def kill_in_lock(pid: int, holder: Callable[[], int], budget: float,
                 on_stopped: Callable[[], None] | None = None) -> bool:
    """Try for ``budget`` seconds to SIGKILL pid while it holds a lock: stop it
    when seen holding, and kill it if it still holds once stopped.  When the
    budget runs out, stop_and_kill it wherever it is.  Returns whether it died
    holding the lock."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if holder() != pid:
            continue
        stop(pid)
        if holder() == pid:
            if on_stopped is not None:
                on_stopped()
            os.kill(pid, signal.SIGKILL)
            return True
        os.kill(pid, signal.SIGCONT)
    return stop_and_kill(pid, holder, on_stopped)


def stopped_in_futex_wait(pid: int) -> bool:
    """Whether a stopped pid sits in futex(FUTEX_WAIT) or sched_yield, i.e.
    waiting (/proc/<pid>/syscall: number, then the arguments)."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    if not fields or fields[0] in ("running", "-1"):
        return False
    nr = int(fields[0])
    if nr == 24:  # sched_yield (x86-64): spinning while waiting
        return True
    return nr == 202 and len(fields) > 2 and int(fields[2], 16) & 0x7F == 0  # FUTEX_WAIT


def waitpid_bounded(pid: int, timeout: float) -> int | None:
    """os.waitpid with a bound: the wait status, or None if pid is still
    running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return status
        if time.monotonic() > deadline:
            return None
        time.sleep(0.002)


def exit_code(status: int) -> int:
    """A wait status as subprocess shows it: the exit code, or -signal."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# ---------------------------------------------------------------------------
# System V objects as /proc/sysvipc shows them


def shm_row(shmid: int) -> dict[str, int] | None:
    """The /proc/sysvipc/shm row of a segment: key, nattch, perms (None if gone)."""
    for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1]) == shmid:
            return {"key": int(f[0]), "perms": int(f[2], 8), "size": int(f[3]), "nattch": int(f[6])}
    return None


def sysv_maps() -> list[str]:
    """Lines of /proc/self/maps that are System V shared memory attachments."""
    return [line for line in Path("/proc/self/maps").read_text().splitlines() if "SYSV" in line]


def emit(obj: Any) -> None:
    """One JSON line on stdout, written at once (children report this way)."""
    os.write(1, (json.dumps(obj) + "\n").encode())


def run_json_child(argv: list[str], env: dict[str, str] | None = None) -> tuple[str, dict[str, dict[str, Any]]]:
    """Run a child (made with child_code) that prints one JSON object per
    step: {"start": label} before it, {"label": ...} after it, {"finished":
    true} at the end.  Fail, naming the step it died in, unless it finished;
    return its stderr and the steps by label."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=4 * WAIT, cwd="/",
                              env=env, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the namespaced child did not finish in {4 * WAIT}s")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = [x["start"] for x in lines if "start" in x]
    assert proc.returncode == 0 and lines and "finished" in lines[-1], (
        f"the child died (rc={proc.returncode}) during: {started[-1] if started else '?'}\n"
        f"{proc.stderr[-3000:]}")
    return proc.stderr, {x["label"]: x for x in lines if "label" in x}
