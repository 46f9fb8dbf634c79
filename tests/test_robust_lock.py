"""The Channel and Mailbox locks across PID namespaces (docs/protocol.md,
section 2).

Containers of one Kubernetes pod share the IPC namespace but not the PID
namespace.  A lock holder there has a thread id that means nothing here (the
first process of every namespace is 1), so nobody here may judge it from its
id: the kernel marks its lock when it dies, and only then may a waiter take
it.  Each test runs the holder in a fresh PID namespace (``unshare --pid
--fork``) that shares our IPC namespace, catches it inside the lock, stops
it there (SIGSTOP), checks that nobody takes the lock, then SIGKILLs it and
checks that the next locker takes it over.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from proc_helpers import FUTEX_OWNER_DIED, FUTEX_TID_MASK, proc_state

from shmsem import Channel, Mailbox, SharedMemory
from shmsem._core import CHANNEL_OFFSETS, MAILBOX_OFFSETS

WAIT = 20.0  # an upper bound on waits, never an expectation
NAMESPACES = 50  # the issue asks for at least 50, so that a collision would show
BIG = 4 << 20  # copies this large hold the lock with the GIL released for a while

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to make PID namespaces",
)


def _word(shm: SharedMemory, offset: int) -> int:
    return int(struct.unpack("<I", shm.read_at(offset, 4))[0])


class NamespacedHolder:
    """A Python process that is pid 1 of a new PID namespace and, in our IPC
    namespace, takes one lock over and over (``body`` loops forever)."""

    def __init__(self, shmid: int, body: str) -> None:
        code = textwrap.dedent(f"""
            import os, sys
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from proc_helpers import die_with_parent
            die_with_parent()
            import shmsem
            print(os.getpid(), flush=True)
        """) + textwrap.dedent(body).replace("SHMID", str(shmid))
        self.outer = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", code],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert self.outer.stdout is not None
        line = self.outer.stdout.readline().decode().strip()  # bounded: the child dies with us
        assert line == "1", f"holder said {line!r}: {self.outer.stderr.read().decode() if line == '' else ''}"
        self.pid = self._inner_pid()

    def _inner_pid(self) -> int:
        """The holder's pid in our namespace: unshare's only child."""
        deadline = time.monotonic() + WAIT
        path = Path(f"/proc/{self.outer.pid}/task/{self.outer.pid}/children")
        while time.monotonic() < deadline:
            kids = path.read_text().split()
            if kids:
                return int(kids[0])
            time.sleep(0.001)
        raise AssertionError("unshare never started the holder")

    def stop_in_lock(self, word: Callable[[], int], budget: float = WAIT) -> bool:
        """Stop the holder while the lock word names it (id 1); leave it
        stopped and return True, or False if it was never caught."""
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            if word() & FUTEX_TID_MASK != 1:
                continue
            os.kill(self.pid, signal.SIGSTOP)
            while proc_state(self.pid) not in "TtZX":
                if time.monotonic() > deadline:
                    return False
            if word() & FUTEX_TID_MASK == 1:
                return True
            os.kill(self.pid, signal.SIGCONT)
        return False

    def kill(self) -> None:
        for sig in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                break
        self.outer.wait(WAIT)
        for stream in (self.outer.stdout, self.outer.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def holders() -> Iterator[Callable[[int, str], NamespacedHolder]]:
    made: list[NamespacedHolder] = []

    def start(shmid: int, body: str) -> NamespacedHolder:
        h = NamespacedHolder(shmid, body)
        made.append(h)
        return h

    yield start
    for h in made:
        h.kill()


PRODUCER = """
    ch = shmsem.Channel.from_id(SHMID)
    block = bytes([7]) * ch.max_message_size
    while True:
        ch.put_bytes(block)
        ch.get_bytes()
"""


def test_a_stopped_holder_in_another_pid_namespace_keeps_the_lock(holders, reliability) -> None:
    """In each of 50 fresh PID namespaces, a producer stopped inside the
    producer lock keeps it: our put times out and counts no recovery, and
    the word still names it.  Once it is SIGKILLed, our put takes the lock
    over at once, and every message left is whole."""
    ch = Channel.create(None, BIG + 64)
    lock = CHANNEL_OFFSETS["producer_lock"]
    takeover_ms: list[float] = []
    try:
        with SharedMemory.from_id(ch.id) as shm:
            for n in range(NAMESPACES):
                h = holders(ch.id, PRODUCER)
                assert h.stop_in_lock(lambda: _word(shm, lock)), "never caught the holder in the lock"
                before = ch.stats().recoveries
                with pytest.raises(queue.Full):
                    ch.put_bytes(b"after", timeout=0.3)
                assert ch.stats().recoveries == before
                assert _word(shm, lock) & (FUTEX_TID_MASK | FUTEX_OWNER_DIED) == 1
                os.kill(h.pid, signal.SIGKILL)
                t0 = time.monotonic()
                # The holder took its last message out before it put again,
                # so the ring has room: only the lock can make this fail.
                ch.put_bytes(b"after", timeout=WAIT)
                takeover_ms.append((time.monotonic() - t0) * 1000)
                h.kill()
                assert ch.stats().recoveries == before + 1
                assert _word(shm, lock) == 0
                for m in _drain(ch):
                    assert m in (b"after", bytes([7]) * ch.max_message_size), f"torn: {len(m)} bytes"
    finally:
        ch.close()
    takeover_ms.sort()
    reliability(namespaces=NAMESPACES, takeover_ms_median=round(takeover_ms[len(takeover_ms) // 2], 2),
                takeover_ms_max=round(takeover_ms[-1], 2), wrongly_taken=0)


def test_a_stopped_mailbox_writer_in_another_pid_namespace_keeps_the_lock(holders) -> None:
    mb = Mailbox.create(None, BIG)
    lock = MAILBOX_OFFSETS["writer_lock"]
    try:
        with SharedMemory.from_id(mb.id) as shm:
            for n in range(5):
                h = holders(mb.id, """
                    mb = shmsem.Mailbox.from_id(SHMID)
                    value = bytes([9]) * mb.capacity
                    while True:
                        mb.publish(value)
                """)
                assert h.stop_in_lock(lambda: _word(shm, lock)), "never caught the writer in the lock"
                before = mb.stats().recoveries
                published: list[int] = []
                t = threading.Thread(target=lambda: published.append(mb.publish(b"after")))
                t.start()  # publish() has no timeout: it waits for the stopped writer
                t.join(0.3)
                assert t.is_alive() and not published
                assert mb.stats().recoveries == before
                os.kill(h.pid, signal.SIGKILL)
                t.join(WAIT)
                assert not t.is_alive(), "the dead writer's lock was never taken over"
                h.kill()
                assert mb.stats().recoveries == before + 1
                seq, value = mb.read()
                assert seq == published[0] and value == b"after"
    finally:
        mb.close()


def _drain(ch: Channel) -> Iterator[bytes]:
    while True:
        try:
            yield ch.get_bytes_nowait()
        except queue.Empty:
            return

