"""Process helpers shared by the tests and the child processes they start.

Children started with ``python -c`` import this module after putting
``IMPORT_LINE``'s directory on sys.path (see ``IMPORT_LINE``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

#: Source that makes these helpers available in a ``python -c`` child.
IMPORT_LINE = (
    f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
    "from proc_helpers import die_with_parent, kill_in_lock, proc_state\n"
)


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (PR_SET_PDEATHSIG), so that
    nothing a test starts can outlive it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(1)


def proc_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat ('X' when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return "X"
    return text[text.rindex(")") + 2]


def kill_in_lock(pid: int, holder: Callable[[], int], budget: float = 1.0) -> bool:
    """SIGKILL pid at a moment it holds a lock (holder() is the lock's pid):
    stop it when seen holding, and kill it if it still holds once stopped.
    Returns whether it died holding the lock."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if holder() != pid:
            continue
        os.kill(pid, signal.SIGSTOP)
        while proc_state(pid) not in "TtZX" and time.monotonic() < deadline:
            pass
        if holder() == pid:
            os.kill(pid, signal.SIGKILL)
            return True
        os.kill(pid, signal.SIGCONT)
    os.kill(pid, signal.SIGKILL)
    return False


# Run as another uid.  Every id (real, effective, saved, filesystem; gid and
# groups too) becomes that user's, so every IPC call is checked exactly as
# for that user.  What stays is one capability, CAP_DAC_READ_SEARCH (or
# CAP_DAC_OVERRIDE where a container withholds it): reading any file.  The
# interpreter, its stdlib and this checkout may live where that uid cannot
# read (a pyenv under /root, a clone in a 0700 home directory), and Python
# imports lazily: ``importlib.import_module`` and C-level imports included,
# which no import hook sees.  The kernel's System V permission checks look at
# the euid and CAP_IPC_OWNER only, never at these file capabilities.  A
# process the child execs gets no capabilities at all.
_DROP_PRELUDE = """\
import ctypes as _ct, os as _os, sys as _sys
import {preimport}
_uid, _gid, _groups = {uid}, {gid}, {groups!r}
_libc = _ct.CDLL(None, use_errno=True)
def _check(rc, what):
    if rc != 0:
        _e = _ct.get_errno()
        raise OSError(_e, what + ": " + _os.strerror(_e))
_check(_libc.prctl(8, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
_os.setgroups(_groups)
_os.setresgid(_gid, _gid, _gid)
_os.setresuid(_uid, _uid, _uid)
_check(_libc.prctl(8, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
# capget/capset, _LINUX_CAPABILITY_VERSION_3: {{effective, permitted,
# inheritable}} for capabilities 0-31, then for 32-63.
_hdr = (_ct.c_uint32 * 2)(0x20080522, 0)
_caps = (_ct.c_uint32 * 6)()
_check(_libc.capget(_hdr, _caps), "capget")
_keep = next((1 << c for c in (2, 1) if _caps[1] >> c & 1), 0)  # DAC_READ_SEARCH, DAC_OVERRIDE
_caps[:] = [_keep, _keep, 0, 0, 0, 0]
_check(_libc.capset(_hdr, _caps), "capset")
assert _os.getresuid() == (_uid,) * 3 and _os.getresgid() == (_gid,) * 3
del _ct, _libc, _check, _hdr, _caps, _keep
_os.chdir("/")
exec(compile(_sys.argv[1], "<child>", "exec"), {{"__name__": "__main__"}})
"""


def drop_to_user_prelude(uid: int, gid: int | None = None, groups: Sequence[int] = (),
                         preimport: Sequence[str] = ()) -> str:
    """``python -c PRELUDE CODE`` runs CODE as uid (gid defaults to uid, with
    these supplementary groups), able to read any file but otherwise that
    user; the caller must be root.  The modules in ``preimport`` (and
    shmsem) are imported before the switch."""
    modules = ", ".join(["shmsem", *preimport])
    return _DROP_PRELUDE.format(preimport=modules, uid=uid,
                                gid=uid if gid is None else gid, groups=list(groups))


#: Imported lazily by the command line: a child that can import it can
#: import whatever else shmsem needs.
_PROBE = """\
import importlib, os
importlib.import_module("shmsem.cli.commands")
import json, decimal
print(os.geteuid(), flush=True)
"""


@functools.lru_cache(maxsize=None)
def cannot_run_as(uid: int) -> str | None:
    """Why this run cannot start children as ``uid`` (None when it can):
    that needs root, and a child switched to uid that can still import
    what shmsem imports lazily.  Tests skip with this reason."""
    import subprocess
    import sys

    if os.geteuid() != 0:
        return (f"needs root, to run children as another user (uid {uid}); "
                f"running as uid {os.geteuid()}")
    argv = [sys.executable, "-c", drop_to_user_prelude(uid), _PROBE]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/", check=False)
    except subprocess.TimeoutExpired:
        return f"a child switched to uid {uid} did not answer within 60 s"
    if r.returncode != 0 or r.stdout.strip() != str(uid):
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        return (f"a child switched to uid {uid} cannot run shmsem here "
                f"(rc={r.returncode}: {last})")
    return None


@functools.lru_cache(maxsize=None)
def cannot_unshare_ipc() -> str | None:
    """Why this run cannot start a child in an IPC namespace of its own, with
    limits it may lower (None when it can): that takes root and unshare(1).
    Tests skip with this reason."""
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    if unshare is None:
        return "needs unshare(1) (util-linux), for an IPC namespace of its own"
    if os.geteuid() != 0:
        return (f"needs root, for an IPC namespace of its own whose limits it may lower "
                f"(unshare --ipc); running as uid {os.geteuid()}")
    r = subprocess.run([unshare, "--ipc", "true"], capture_output=True, text=True,
                       timeout=60, check=False)
    if r.returncode != 0:
        return f"unshare --ipc is not allowed here: {r.stderr.strip()}"
    return None


def sigint_rounds(c: Any, rounds: int, seed: int = 475) -> None:
    """Drive a child (conftest's Child) that, ``rounds`` times, answers "go"
    with "ready", blocks in a call with a 3 s timeout and prints
    "interrupted" when SIGINT interrupts it: send SIGINT at varied moments
    and check that every one interrupts the call at once."""
    import random

    rng = random.Random(seed)
    for i in range(rounds):
        c.send("go")
        c.expect("ready")
        time.sleep(rng.uniform(0.01, 0.05))
        t0 = time.monotonic()
        c.signal(signal.SIGINT)
        line = c.readline(timeout=10)
        late = time.monotonic() - t0 >= 1.5  # the call's timeout is 3 s
        assert line == "interrupted" and not late, (
            f"round {i + 1} of {rounds}: {line!r} after {time.monotonic() - t0:.2f}s")
    assert c.wait() == 0


# ---------------------------------------------------------------------------
# Lock words (docs/protocol.md section 2): robust futexes.  0 is free;
# otherwise the holder's thread id (as its own PID namespace numbers it),
# with these two bits.

FUTEX_WAITERS = 0x80000000
FUTEX_OWNER_DIED = 0x40000000
FUTEX_TID_MASK = 0x3FFFFFFF
