"""Process helpers shared by the tests and the child processes they start.

Children started with ``python -c`` import this module after putting
``IMPORT_LINE``'s directory on sys.path (see ``IMPORT_LINE``).
"""

from __future__ import annotations

import ctypes
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


# Run as another uid.  The interpreter and its stdlib may live where that uid
# cannot read (e.g. under /root), and modules are imported lazily, so the
# child keeps 0 as its *saved* uid and regains root only while importing.
# Everything else, and every IPC call in particular, runs with real and
# effective uid/gid set to that user and no effective capabilities.
_DROP_PRELUDE = """\
import builtins as _b, os as _os, sys as _sys
import {preimport}
_uid, _gid, _groups = {uid}, {gid}, {groups!r}
_real_import = _b.__import__
_depth = [0]
def _import(*args, **kwargs):
    if _depth[0] == 0:
        _os.seteuid(0)
    _depth[0] += 1
    try:
        return _real_import(*args, **kwargs)
    finally:
        _depth[0] -= 1
        if _depth[0] == 0:
            _os.seteuid(_uid)
_os.setgroups(_groups)
_os.setresgid(_gid, _gid, 0)
_os.setresuid(_uid, _uid, 0)
_b.__import__ = _import
_os.chdir("/")
exec(compile(_sys.argv[1], "<child>", "exec"), {{"__name__": "__main__"}})
"""


def drop_to_user_prelude(uid: int, gid: int | None = None, groups: Sequence[int] = (),
                         preimport: Sequence[str] = ()) -> str:
    """``python -c PRELUDE CODE`` runs CODE as uid (gid defaults to uid, with
    these supplementary groups); the caller must be root.  shmsem and the
    modules in ``preimport`` are imported before the switch."""
    modules = ", ".join(["shmsem", "shmsem.cli", "shmsem.compat", *preimport])
    return _DROP_PRELUDE.format(preimport=modules, uid=uid,
                                gid=uid if gid is None else gid, groups=list(groups))


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
