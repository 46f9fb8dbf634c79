"""Shared fixtures.

* ``ipc_leak_check`` (autouse) compares /proc/sysvipc before and after every
  test, removes what the test (this process or its children) left behind,
  and fails the test for it.  It never touches another program's objects;
  see ``ours``.
* ``unique_key`` hands out keys unique to this run (never a bare random key).
* ``child`` runs Python code in a real child process, always bounded in time.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest
from ipc_helpers import remove_object
from proc_helpers import cannot_run_as, drop_to_user_prelude

import shmsem
from shmsem import _core

PROC = Path("/proc/sysvipc")


def _enter_private_ipc_namespace() -> bool:
    """Run the suite in an IPC namespace of its own when we may (root).

    Then nothing the tests do can touch another program's System V objects,
    another concurrent test run cannot disturb the leak check, and every
    object still left at exit disappears with the namespace.  Children inherit
    it.  SHMSEM_TEST_SHARED_IPC=1 keeps the machine's namespace.
    """
    if os.geteuid() != 0 or os.environ.get("SHMSEM_TEST_SHARED_IPC") == "1":
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWIPC = 0x08000000
    return bool(libc.unshare(CLONE_NEWIPC) == 0)


PRIVATE_IPC = False


def pytest_configure(config: pytest.Config) -> None:
    global PRIVATE_IPC
    PRIVATE_IPC = _enter_private_ipc_namespace()


def pytest_report_header(config: pytest.Config) -> str:
    where = "a private namespace (unshare)" if PRIVATE_IPC else "the machine's namespace"
    return f"System V IPC objects live in {where}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-stress", action="store_true", default=False,
        help="run the long load tests marked 'stress'",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-stress"):
        return
    skip = pytest.mark.skip(reason="stress test: run with --run-stress")
    for item in items:
        if "stress" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------------------
# /proc/sysvipc snapshots and the leak check


def ipc_objects() -> set[tuple[str, int, int]]:
    """(kind, key, id) of every System V object visible in this IPC namespace."""
    found = set()
    for kind in ("shm", "sem", "msg"):
        lines = (PROC / kind).read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            found.add((kind, int(fields[0]), int(fields[1])))
    return found


# Which new objects are ours.  In a private IPC namespace (root: see above)
# every object is: only this run's processes live there.  In the machine's
# namespace, other programs of the same user may create objects while a test
# runs, and removing those would be sabotage; so an object counts as ours
# only when the kernel names one of our processes as its creator or user:
#
# * shm: the creator pid (cpid in /proc/sysvipc/shm);
# * sem: the pid of the last operation on any member (semctl GETPID), since
#   the kernel keeps no creator pid for sets; shmsem's own creation always
#   operates on the set (the "ready" mark), and so does setting values;
# * msg: the last sender's or receiver's pid (lspid, lrpid), likewise.
#
# "Our processes" are this process, every child it started during the test
# (os.fork and subprocess.Popen record their pids: a child that made an
# object and exited still counts, and pids recorded during one test cannot
# have been reused by then), and any live process whose chain of parents
# leads here (grandchildren).  A set or queue that nobody ever operated on,
# or one made by a grandchild that has exited, carries no such mark: it is
# left alone here and caught only by the root run, in its own namespace.
# The creator's uid must be ours in any case.

_started: set[int] = set()


def _record_fork() -> None:
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            _started.add(pid)
        return pid

    os.fork = fork

    class Popen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            _started.add(self.pid)

    subprocess.Popen = Popen  # type: ignore[misc]


_record_fork()


def _descends_from_us(pid: int) -> bool:
    me = os.getpid()
    for _ in range(64):
        if pid == me:
            return True
        if pid <= 1:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
    return False


def _pids_of(kind: str, ident: int, row: list[str], header: list[str]) -> set[int]:
    """The pids the kernel records for this object (see above)."""
    field = dict(zip(header, row))
    if kind == "shm":
        return {int(field["cpid"])}
    if kind == "msg":
        return {int(field["lspid"]), int(field["lrpid"])} - {0}
    pids = set()
    for i in range(int(field["nsems"])):
        try:
            pids.add(_core.semctl(ident, i, _core.GETPID))
        except (shmsem.ShmsemError, OSError):
            return set()
    return pids - {0}


def ours(new: set[tuple[str, int, int]]) -> set[tuple[str, int, int]]:
    """The objects of ``new`` that this test's processes made (see above)."""
    return new if PRIVATE_IPC else marked_as_ours(new)


def marked_as_ours(new: set[tuple[str, int, int]]) -> set[tuple[str, int, int]]:
    """The objects of ``new`` whose creator uid is ours and whose recorded
    pids (see above) include one of this test's processes."""
    mine: set[tuple[str, int, int]] = set()
    for kind in ("shm", "sem", "msg"):
        lines = (PROC / kind).read_text().splitlines()
        header = lines[0].split()
        for line in lines[1:]:
            row = line.split()
            obj = (kind, int(row[0]), int(row[1]))
            if obj not in new or int(dict(zip(header, row))["cuid"]) != os.geteuid():
                continue
            pids = _pids_of(kind, obj[2], row, header)
            if pids & (_started | {os.getpid()}) or any(_descends_from_us(p) for p in pids):
                mine.add(obj)
    return mine


@pytest.fixture(autouse=True)
def ipc_leak_check() -> Iterator[None]:
    before = ipc_objects()
    _started.clear()
    yield
    # A segment marked for removal but still attached by a dying child shows
    # with key 0 for a moment; give children a little time to finish exiting.
    deadline = time.monotonic() + 2.0
    while True:
        leaked = ours(ipc_objects() - before)
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for kind, _key, ident in leaked:
        remove_object(kind, ident)
    if leaked:
        shown = ", ".join(f"{k} key={shmsem.errors.format_key(key)} id={i}" for k, key, i in sorted(leaked))
        pytest.fail(f"test leaked System V objects (now removed): {shown}")


# ---------------------------------------------------------------------------
# Keys

_counter = itertools.count(1)


@pytest.fixture
def unique_key() -> "KeyFactory":
    return KeyFactory()


class KeyFactory:
    """Keys unique to this test run: 0x5e, then 12 bits of our pid, then a
    counter; a key already in use is skipped."""

    def __call__(self) -> int:
        in_use = {key for _, key, _ in ipc_objects()}
        while True:
            key = (0x5E << 24) | ((os.getpid() & 0xFFF) << 12) | (next(_counter) & 0xFFF)
            signed = key - 2**32 if key >= 2**31 else key
            if signed not in in_use:
                return key


# ---------------------------------------------------------------------------
# Child processes

SRC_ENV = dict(os.environ)


class Child:
    """A Python child process running ``code``; stdout/stderr captured.

    With ``user``, the code runs as that uid/gid (the test must run as root).
    """

    def __init__(self, code: str, *, user: Optional[int] = None, env: Optional[dict[str, str]] = None) -> None:
        self.code = textwrap.dedent(code)
        argv = [sys.executable, "-c", self.code]
        if user is not None:
            argv = [sys.executable, "-c", drop_to_user_prelude(user), self.code]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env or SRC_ENV, cwd="/",
        )
        self._pending = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float = 10.0) -> str:
        """One line of the child's stdout, or fail after ``timeout``.

        Reads the pipe unbuffered, keeping what follows the line for the next
        call, so lines printed together are never lost."""
        import select

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                self.kill()
                pytest.fail(f"child printed nothing within {timeout}s; stderr: {self.stderr_text()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                if self._pending:
                    break
                pytest.fail(f"child exited early (rc={self.proc.wait(5)}): {self.stderr_text()}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode().strip()

    def expect(self, text: str, timeout: float = 10.0) -> None:
        line = self.readline(timeout)
        assert line == text, f"child said {line!r}, expected {text!r}; stderr: {self.stderr_text()}"

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"child did not exit within {timeout}s; stderr: {self.stderr_text()}")

    def finish(self, timeout: float = 10.0) -> tuple[int, str, str]:
        """Wait for exit; return (returncode, stdout, stderr)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"child did not exit within {timeout}s")
        return self.proc.returncode, (self._pending + out).decode(), err.decode()

    def stderr_text(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")


@pytest.fixture
def child() -> Iterator[type]:
    """Factory: ``child(code, user=None)`` starts a child; all are killed at teardown."""
    started: list[Child] = []

    def start(code: str, **kw: object) -> Child:
        c = Child(code, **kw)  # type: ignore[arg-type]
        started.append(c)
        return c

    yield start  # type: ignore[misc]
    for c in started:
        c.kill()
        for stream in (c.proc.stdin, c.proc.stdout, c.proc.stderr):
            if stream is not None:
                stream.close()


NOBODY = 65534


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root; running as uid {os.geteuid()}")


@pytest.fixture
def nobody(child: Callable[..., Child]) -> Callable[[str], Child]:
    """Factory: ``nobody(code)`` runs code in a child as uid/gid 65534.
    Skips unless this run can (root; see proc_helpers.cannot_run_as)."""
    reason = cannot_run_as(NOBODY)
    if reason:
        pytest.skip(reason)

    def start(code: str) -> Child:
        return child(code, user=NOBODY)

    return start


# ---------------------------------------------------------------------------
# Figures for docs/reliability.md


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``reliability(**figures)`` records what an attack test did and saw
    (kills, inputs, messages, losses, ...).  With SHMSEM_RELIABILITY_REPORT set
    to a path, each call appends one JSON line there: docs/reliability.md is
    written from such a run.  Without it, nothing is written."""
    import json

    path = os.environ.get("SHMSEM_RELIABILITY_REPORT")

    def record(**figures: object) -> None:
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"test": request.node.nodeid, **figures}) + "\n")

    return record
