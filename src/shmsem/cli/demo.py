"""`shmsem demo`: two processes exchange messages, and we say what happened.

Part 1 uses the .NET helper's conventions: a segment holding one length-
prefixed frame, and two 1-member semaphore sets ("request ready", "reply
ready").  Part 2 streams messages through a Channel, and the consumer reports
back through a Mailbox.  Everything is created
with IPC_PRIVATE and removed at the end, even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import time
from typing import Callable, TextIO

from ..channel import Channel
from ..mailbox import Mailbox
from ..sem import Semaphore
from ..shm import SharedMemory

ROUNDS = 2000
STREAM = 200_000


def _echo_frames(shmid: int, req_id: int, rep_id: int, rounds: int) -> None:
    shm = SharedMemory.from_id(shmid)
    req, rep = Semaphore.from_id(req_id), Semaphore.from_id(rep_id)
    try:
        for _ in range(rounds):
            if not req.acquire(timeout=10):
                raise SystemExit("demo peer: no request within 10 s")
            shm.write(shm.read_string().upper())
            rep.release()
    finally:
        shm.detach()


def _drain_channel(shmid: int, report_id: int, count: int) -> None:
    ch = Channel.from_id(shmid)
    report = Mailbox.from_id(report_id)
    try:
        total = 0
        for _ in range(count):
            total += len(ch.get_bytes(timeout=10))
        report.publish(pickle.dumps({"received": count, "bytes": total, "pid": os.getpid()}))
    finally:
        ch.close()
        report.close()


def run(out: TextIO, rounds: int = ROUNDS, stream: int = STREAM) -> int:
    say: Callable[[str], None] = lambda s: print(s, file=out, flush=True)
    ctx = multiprocessing.get_context("fork")
    say(f"shmsem demo: this process is pid {os.getpid()}\n")

    # -- part 1: frames guarded by semaphores, as the .NET helper does -------
    # Each object is registered for removal as soon as it exists, so that a
    # later creation failing (a kernel limit) leaves nothing behind.
    with contextlib.ExitStack() as cleanup:
        shm = SharedMemory.create(None, 4096)
        cleanup.callback(shm.close)
        req = Semaphore.create(None, 0)
        cleanup.callback(req.remove)
        rep = Semaphore.create(None, 0)
        cleanup.callback(rep.remove)
        say(f"1. A 4 KiB segment (id {shm.id}) and two semaphores (ids {req.id}, {rep.id}),")
        say("   exchanging .NET-format frames: int32 length, then UTF-8 text.")
        peer = ctx.Process(target=_echo_frames, args=(shm.id, req.id, rep.id, rounds))
        peer.start()
        say(f"   Started peer pid {peer.pid}; it upper-cases each frame and signals back.")
        shm.write("hello from python")
        req.release()
        if not rep.acquire(timeout=10):
            raise RuntimeError("the peer did not answer within 10 s")
        say(f"   sent 'hello from python', got back {shm.read_string()!r}")
        start = time.perf_counter()
        for i in range(rounds - 1):
            shm.write(f"message {i}")
            req.release()
            if not rep.acquire(timeout=10):
                raise RuntimeError("the peer stopped answering")
            if shm.read_string() != f"MESSAGE {i}":
                raise RuntimeError(f"unexpected reply {shm.read_string()!r}")
        elapsed = time.perf_counter() - start
        peer.join(10)
        say(f"   {rounds - 1} more round trips, every reply checked: "
            f"{elapsed / (rounds - 1) * 1e6:.1f} us per round trip.\n")

    # -- part 2: a Channel ---------------------------------------------------
    with contextlib.ExitStack() as cleanup:
        ch = Channel.create(None, 1 << 20)
        cleanup.callback(ch.close)
        box = Mailbox.create(None, 256)
        cleanup.callback(box.close)
        say(f"2. A Channel (segment id {ch.id}, 1 MiB ring): one producer, one consumer,")
        say(f"   which reports back through a Mailbox (segment id {box.id}).")
        consumer = ctx.Process(target=_drain_channel, args=(ch.id, box.id, stream))
        consumer.start()
        payload = b"x" * 64
        start = time.perf_counter()
        put = ch.put_bytes
        for _ in range(stream):
            put(payload)
        got = box.wait(0, timeout=30)
        elapsed = time.perf_counter() - start
        if got is None:
            raise RuntimeError("the consumer did not report within 30 s")
        report = pickle.loads(got[1])
        consumer.join(10)
        say(f"   Consumer pid {report['pid']} received {report['received']} messages "
            f"({report['bytes']} bytes) in {elapsed:.2f} s:")
        say(f"   {stream / elapsed / 1e6:.2f} million 64-byte messages per second.\n")

    say("Everything created was removed. See 'shmsem --help' for the other commands.")
    return 0
