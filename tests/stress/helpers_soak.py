"""Worker side of the Channel soak (tests/stress/test_soak.py).

Run as ``python helpers_soak.py producer|consumer SHMID INDEX HARD_DEADLINE``
(HARD_DEADLINE is a CLOCK_MONOTONIC time, which is system-wide, so parent and
children agree on it).  The parent imports this module too, for the message
format and for decoding the consumers' reports.

Messages.  A raw message is ``MAGIC, producer, body index, seq`` (8 bytes)
followed by ``BODIES[index]``; an object message is the dict
``{"p": producer, "s": seq, "i": index, "d": body}``, whose large bodies are
bytearrays and so travel out-of-band (pickle protocol 5).  Every process
builds the same BODIES from a fixed seed, so a consumer checks each payload
with one memcmp.

Accounting, kept to a few bytecodes per message so that the soak measures
the channel: a consumer remembers, per producer, the last seq it took and
appends the gap to the previous one as one byte; runs of gaps go to a report
file every REPORT_EVERY bytes, so its memory stays flat.  A gap of 0 or less
(the same seq twice, or producer order broken) is counted as an order
violation; a gap of 256 or more starts a new run.  The parent rebuilds every
seq from the runs and counts, per producer, each seq taken 0 times (lost), 2
or more times (duplicated), or never sent (phantom).

Fault injection, to see each check fail (off unless set; it costs nothing
when off): SHMSEM_SOAK_INJECT=drop (consumer 0 forgets one message), dup
(consumer 0 counts one twice), leak (consumer 0 keeps 200 bytes per message),
sleep (producers idle 2 ms a step in the second half: a lost-wake-up-like
slowdown), spin (producers burn 200 us a step in the second half: a CPU
slowdown).
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import queue
import random
import signal
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

MAGIC = 0xA5
HDR = struct.Struct("<BBHI")  # magic, producer, body index, seq
STOP_PRODUCER = 255  # a raw message from "producer 255" tells a consumer to stop
RUN = struct.Struct("<BqI")  # report record: producer, base seq, number of gaps
REPORT_EVERY = 1 << 16

# Bodies: many small ones (0..255 bytes) and a few large ones.
N_SMALL = 61
LARGE_SIZES = (16 << 10, 100 << 10, 256 << 10)
CAPACITY = 2 << 20  # ring bytes: room for several of the largest messages

_rng = random.Random(20240611)
BODIES: list[bytes] = [_rng.randbytes(_rng.randrange(256)) for _ in range(N_SMALL)]
BODIES += [_rng.randbytes(n) for n in LARGE_SIZES]
LARGE = list(range(N_SMALL, len(BODIES)))
BYTEARRAYS = [bytearray(b) for b in BODIES]

# One producer step per letter, cycled: mostly single raw puts, batches of raw
# puts, pickled dicts (small bodies in-band, large ones out-of-band), object
# batches, and a few large raw messages.
#   b put_bytes   B put_many_bytes(8)   o put(dict)   O put(dict, large OOB)
#   m put_many(4 dicts)   L put_bytes(large)
PRODUCER_PATTERN = "bBobobBbobmbbBobLbobBbobmbbBobOb"
BATCH = 8
OBJ_BATCH = 4

# One consumer step per letter, cycled.
#   g get   G get_many(32)   r get_bytes   R get_many_bytes(32)   i recv_into
CONSUMER_PATTERN = "gRrGiRgr"
GET_MANY = 32
POLL = 0.5  # longest single blocking call, so the hard deadline is checked


def raw(p: int, idx: int, seq: int) -> bytes:
    return HDR.pack(MAGIC, p, idx, seq) + BODIES[idx]


def stop_message() -> bytes:
    return HDR.pack(MAGIC, STOP_PRODUCER, 0, 0)


def die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(1)


class Timeout(Exception):
    pass


def producer(ch: Any, me: int, end: float, hard: float) -> dict[str, Any]:
    """Put messages with seqs 0, 1, 2, ... until ``end``; every call bounded."""
    seq = 0
    small = _rng_for(me)
    ops = {c: 0 for c in set(PRODUCER_PATTERN)}
    step = 0
    n_pattern = len(PRODUCER_PATTERN)
    monotonic = time.monotonic

    inject = os.environ.get("SHMSEM_SOAK_INJECT")
    half = end - (end - monotonic()) / 2

    def retry(fn: Any, *args: Any) -> None:
        if inject in ("sleep", "spin") and monotonic() > half:
            if inject == "sleep":
                time.sleep(0.002)
            else:
                until = monotonic() + 0.0002
                while monotonic() < until:
                    pass
        while True:
            try:
                fn(*args, True, POLL)
                return
            except queue.Full:
                if monotonic() > hard:
                    raise Timeout(f"producer {me}: channel still full at the hard deadline")

    while monotonic() < end:
        op = PRODUCER_PATTERN[step % n_pattern]
        step += 1
        ops[op] += 1
        if op == "b":
            retry(ch.put_bytes, raw(me, small(), seq))
            seq += 1
        elif op == "B":
            retry(ch.put_many_bytes, [raw(me, small(), seq + k) for k in range(BATCH)])
            seq += BATCH
        elif op == "o":
            idx = small()
            retry(ch.put, {"p": me, "s": seq, "i": idx, "d": BODIES[idx]})
            seq += 1
        elif op == "O":
            idx = LARGE[step % len(LARGE)]
            retry(ch.put, {"p": me, "s": seq, "i": idx, "d": BYTEARRAYS[idx]})
            seq += 1
        elif op == "m":
            objs = []
            for k in range(OBJ_BATCH):
                idx = small()
                objs.append({"p": me, "s": seq + k, "i": idx, "d": BODIES[idx]})
            retry(ch.put_many, objs)
            seq += OBJ_BATCH
        else:  # "L"
            retry(ch.put_bytes, raw(me, LARGE[step % len(LARGE)], seq))
            seq += 1
    return {"role": "producer", "index": me, "sent": seq, "ops": ops}


def _rng_for(me: int) -> Any:
    r = random.Random(me)
    return lambda: r.randrange(N_SMALL)


class Tally:
    """Per-producer gap runs, flushed to a report file (see the module docstring)."""

    def __init__(self, out: Any, producers: int) -> None:
        self.out = out
        self.last = [-1] * producers
        self.base = [-1] * producers
        self.gaps = [bytearray() for _ in range(producers)]
        self.pending = 0
        self.received = 0
        self.order_violations = 0
        self.corrupt = 0
        self.first_problems: list[str] = []

    def problem(self, text: str) -> None:
        if len(self.first_problems) < 10:
            self.first_problems.append(text)

    def take(self, p: int, seq: int) -> None:
        d = seq - self.last[p]
        if 0 < d < 256:
            self.gaps[p].append(d)
        else:
            if d <= 0:
                self.order_violations += 1
                self.problem(f"producer {p}: seq {seq} after {self.last[p]}")
            self.close_run(p)
            self.base[p] = seq - 1
            self.gaps[p].append(1)
        self.last[p] = seq
        self.received += 1
        self.pending += 1
        if self.pending >= REPORT_EVERY:
            self.flush()

    def close_run(self, p: int) -> None:
        g = self.gaps[p]
        if g:
            self.out.write(RUN.pack(p, self.base[p], len(g)))
            self.out.write(g)
            self.gaps[p] = bytearray()
        self.base[p] = self.last[p]

    def flush(self) -> None:
        for p in range(len(self.gaps)):
            self.close_run(p)
        self.pending = 0


def _injected(take: Any, what: str) -> Any:
    kept: list[bytes] = []

    def wrapped(p: int, seq: int) -> None:
        if what == "leak":
            kept.append(bytes(200))
        elif t_count[0] == 1000:
            if what == "drop":
                t_count[0] += 1
                return
            take(p, seq)
        t_count[0] += 1
        take(p, seq)

    t_count = [0]
    return wrapped


def consumer(ch: Any, me: int, hard: float, report: str, producers: int) -> dict[str, Any]:
    """Take messages until a stop message; check each payload; tally seqs."""
    from shmsem import _core
    from shmsem.channel import _decode

    ops = {c: 0 for c in set(CONSUMER_PATTERN)}
    buf = bytearray(ch.max_message_size)
    view = memoryview(buf)
    stops = 0
    step = 0
    n_pattern = len(CONSUMER_PATTERN)
    monotonic = time.monotonic
    hsize = HDR.size
    unpack = HDR.unpack_from
    with open(report, "wb") as out:
        t = Tally(out, producers)
        inject = os.environ.get("SHMSEM_SOAK_INJECT") if me == 0 else None
        if inject in ("drop", "dup", "leak"):
            t.take = _injected(t.take, inject)  # type: ignore[method-assign]

        def check_raw(m: Any) -> None:
            nonlocal stops
            magic, p, idx, seq = unpack(m)
            if p == STOP_PRODUCER:
                stops += 1
                return
            if magic != MAGIC or p >= producers or idx >= len(BODIES) or m[hsize:] != BODIES[idx]:
                t.corrupt += 1
                t.problem(f"corrupt raw message of {len(m)} bytes: {bytes(m[:16])!r}")
                return
            t.take(p, seq)

        def check_obj(o: Any) -> None:
            if isinstance(o, (bytes, bytearray)):
                check_raw(o)
                return
            try:
                p, seq, idx, body = o["p"], o["s"], o["i"], o["d"]
                ok = 0 <= p < producers and body == BODIES[idx]
            except (KeyError, TypeError, IndexError):
                ok = False
            if not ok:
                t.corrupt += 1
                t.problem(f"corrupt object message {str(o)[:80]}")
                return
            t.take(p, seq)

        def check_payload(m: bytes) -> None:
            # A raw get returns an object message's pickle as it is: tell the
            # kinds apart by the first byte (ours, PROTO 5, or an OOB prefix).
            if m[0] == MAGIC:
                check_raw(m)
            elif m[:2] == b"\x80\x05":
                check_obj(pickle.loads(m))
            else:
                check_obj(_decode(_core.KIND_PICKLE_OOB, m))

        while stops == 0:
            op = CONSUMER_PATTERN[step % n_pattern]
            step += 1
            try:
                if op == "g":
                    check_obj(ch.get(True, POLL))
                elif op == "G":
                    for o in ch.get_many(GET_MANY, True, POLL):
                        check_obj(o)
                elif op == "r":
                    check_payload(ch.get_bytes(True, POLL))
                elif op == "R":
                    for m in ch.get_many_bytes(GET_MANY, True, POLL):
                        check_payload(m)
                else:  # "i"
                    n = ch.recv_into(buf, True, POLL)
                    if buf[0] == MAGIC:
                        check_raw(view[:n])
                    else:
                        check_payload(bytes(view[:n]))
            except queue.Empty:
                if monotonic() > hard:
                    raise Timeout(f"consumer {me}: no stop message by the hard deadline") from None
                continue
            ops[op] += 1
        # A batch get may have taken other consumers' stop messages: give them back.
        for _ in range(stops - 1):
            ch.put_bytes(stop_message(), True, max(hard - monotonic(), 0.0))
        t.flush()
    view.release()
    return {
        "role": "consumer", "index": me, "received": t.received,
        "order_violations": t.order_violations, "corrupt": t.corrupt,
        "problems": t.first_problems, "ops": ops, "stops": stops,
    }


def read_runs(path: str) -> Iterator[tuple[int, int, bytes]]:
    """(producer, base, gaps) of every run in a consumer's report file."""
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at < len(data):
        p, base, n = RUN.unpack_from(data, at)
        at += RUN.size
        yield p, base, data[at : at + n]
        at += n


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    role, shmid, index, hard = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    die_with_parent()
    from shmsem import Channel

    # Nothing may outlive the hard deadline, even a call that ignores its timeout.
    signal.alarm(max(int(hard - time.monotonic()) + 5, 1))
    ch = Channel.from_id(shmid)
    try:
        print("ready", flush=True)
        line = sys.stdin.readline().split()  # "go END" (END: when producers stop)
        if not line or line[0] != "go":
            return 2
        if role == "producer":
            result = producer(ch, index, float(line[1]), hard)
        else:
            result = consumer(ch, index, hard, argv[4], int(argv[5]))
    except Timeout as e:
        print(json.dumps({"role": role, "index": index, "timeout": str(e)}), flush=True)
        return 3
    finally:
        ch.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
