"""What a blocking call uses after it gets the GIL back is still alive.

While a call waits with the GIL released, other threads run Python code, and
may rebind or drop what the waiting call started from.  Whatever the call
uses once it wakes (the key it names in an error, above all) must be a
reference of its own, not one borrowed from the handle.  Run in a child
process: with a borrowed reference, the error is built from freed memory.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shmsem import _core

WAIT = 20.0

OLD_KEY = 0x5E00_0001
NEW_KEY = 0x5E00_0002


def child_rebind_while_waiting() -> None:
    deleted: list[int] = []

    class Key(int):
        """A key whose end is observable."""

        def __del__(self) -> None:
            deleted.append(int(self))

    semid = _core.semget(None, 1, _core.IPC_CREAT | 0o600)  # value 0: acquire waits
    other = _core.semget(None, 1, _core.IPC_CREAT | 0o600)
    try:
        sem = _core.SemBase()
        sem._bind(semid, 0, Key(OLD_KEY))
        outcome: dict[str, object] = {}

        def waiter() -> None:
            try:
                outcome["result"] = sem.acquire(True, WAIT)
            except Exception as e:  # noqa: BLE001 - reported below
                outcome["error"] = type(e).__name__
                outcome["key"] = getattr(e, "key", None)

        t = threading.Thread(target=waiter)
        t.start()
        deadline = time.monotonic() + WAIT
        while _core.semctl(semid, 0, _core.GETNCNT) == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        # Another thread points the handle elsewhere while the acquire waits:
        # the handle's reference to the old key goes.
        sem._bind(other, 0, Key(NEW_KEY))
        gc.collect()
        alive = OLD_KEY not in deleted
        _core.semctl(semid, 0, _core.IPC_RMID)  # the waiter wakes with EIDRM
        t.join(WAIT)
        print(json.dumps({"key_alive_while_waiting": alive, "joined": not t.is_alive(),
                          **outcome}), flush=True)
    finally:
        for s in (semid, other):
            try:
                _core.semctl(s, 0, _core.IPC_RMID)
            except Exception:  # noqa: BLE001 - already removed
                pass


def test_acquire_keeps_its_key_while_waiting() -> None:
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_gil_release import child_rebind_while_waiting as _main\n"
        "_main()\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                              capture_output=True, text=True, timeout=3 * WAIT, cwd="/",
                              check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child did not finish in {3 * WAIT}s")
    assert proc.returncode == 0, f"the child died (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["joined"]
    assert out["key_alive_while_waiting"], out
    assert out["error"] == "RemovedError" and out["key"] == OLD_KEY, out
