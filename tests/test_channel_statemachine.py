"""A Hypothesis state machine: Channel against collections.deque.

The model also keeps the byte budget of the ring: a message takes
record_size(len) = 8 + round_up(len, 8) bytes (docs/protocol.md 3.2), so the
machine knows exactly when a put must raise queue.Full (no room now) or
ValueError (never fits).  Steps go through several handles of the same
segment, which must all see one queue.
"""

from __future__ import annotations

import pickle
import queue
from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shmsem import Channel


def record_size(n: int) -> int:
    return 8 + (n + 7) // 8 * 8


sizes = st.integers(min_value=0, max_value=280)
objects = st.one_of(
    st.none(), st.integers(), st.text(max_size=40), st.binary(max_size=60),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=12),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=4),
)


class ChannelMachine(RuleBasedStateMachine):
    """Model entries are (payload bytes, object or None): get_bytes returns
    the payload of any record; get returns the object (or the raw bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.handles: list[Channel] = []
        self.model: deque[tuple[bytes, Any, bool]] = deque()
        self.used = 0
        self.serial = 0

    @initialize(capacity=st.sampled_from([64, 72, 128, 200, 256]))
    def create(self, capacity: int) -> None:
        self.ch = Channel.create(None, capacity)
        self.handles.append(self.ch)
        self.cap = capacity

    def teardown(self) -> None:
        for h in reversed(self.handles):  # the owner (first) last
            h.close()

    # -- helpers -----------------------------------------------------------

    def data(self, n: int) -> bytes:
        self.serial += 1
        stamp = self.serial.to_bytes(4, "little")
        return (stamp * (n // 4 + 1))[:n]

    def free(self) -> int:
        return self.cap - self.used

    def push(self, payload: bytes, obj: Any = None, is_obj: bool = False) -> None:
        self.model.append((payload, obj, is_obj))
        self.used += record_size(len(payload))

    def pop(self) -> tuple[bytes, Any, bool]:
        entry = self.model.popleft()
        self.used -= record_size(len(entry[0]))
        return entry

    # -- rules -------------------------------------------------------------

    @rule(n=sizes, how=st.sampled_from(["nowait", "block_false", "timeout0"]))
    def put_bytes(self, n: int, how: str) -> None:
        data = self.data(n)
        call = {
            "nowait": lambda: self.ch.put_bytes_nowait(data),
            "block_false": lambda: self.ch.put_bytes(data, block=False),
            "timeout0": lambda: self.ch.put_bytes(data, timeout=0),
        }[how]
        if n > self.cap - 8:
            with pytest.raises(ValueError):
                call()
        elif record_size(n) > self.free():
            with pytest.raises(queue.Full):
                call()
        else:
            call()
            self.push(data)

    @rule(obj=objects)
    def put_object(self, obj: Any) -> None:
        payload = pickle.dumps(obj, protocol=5)
        if len(payload) > self.cap - 8:
            with pytest.raises(ValueError):
                self.ch.put_nowait(obj)
        elif record_size(len(payload)) > self.free():
            with pytest.raises(queue.Full):
                self.ch.put_nowait(obj)
        else:
            self.ch.put_nowait(obj)
            self.push(payload, obj, True)

    @rule(ns=st.lists(sizes, min_size=1, max_size=6))
    def put_many_bytes(self, ns: list[int]) -> None:
        items = [self.data(n) for n in ns]
        need = sum(record_size(n) for n in ns)
        if max(ns) > self.cap - 8 or need > self.cap:
            with pytest.raises(ValueError):
                self.ch.put_many_bytes(items, block=False)
        elif need > self.free():
            with pytest.raises(queue.Full):
                self.ch.put_many_bytes(items, block=False)
        else:
            self.ch.put_many_bytes(items, block=False)
            for d in items:
                self.push(d)

    @rule()
    def get_bytes_nowait(self) -> None:
        if not self.model:
            with pytest.raises(queue.Empty):
                self.ch.get_bytes_nowait()
        else:
            assert self.ch.get_bytes_nowait() == self.pop()[0]

    @rule()
    def get_object(self) -> None:
        if not self.model:
            with pytest.raises(queue.Empty):
                self.ch.get(timeout=0)
            return
        payload, obj, is_obj = self.pop()
        got = self.ch.get(timeout=0)
        if is_obj:
            assert got == obj
        else:
            assert got == payload and type(got) is bytes

    @rule(max_messages=st.one_of(st.none(), st.integers(min_value=1, max_value=8)))
    def get_many_bytes(self, max_messages: int | None) -> None:
        if not self.model:
            with pytest.raises(queue.Empty):
                self.ch.get_many_bytes(max_messages, block=False)
            return
        got = self.ch.get_many_bytes(max_messages, block=False)
        limit = len(self.model) if max_messages is None else min(max_messages, len(self.model))
        # At least one and at most the limit: a consumer may stop at the tail
        # it last saw (protocol.md 3.4), never skip or reorder.
        assert 1 <= len(got) <= limit
        assert got == [self.pop()[0] for _ in got]

    @rule(size=st.integers(min_value=0, max_value=300))
    def recv_into(self, size: int) -> None:
        buf = bytearray(b"\xee" * size)
        if not self.model:
            with pytest.raises(queue.Empty):
                self.ch.recv_into(buf, block=False)
            return
        front = self.model[0][0]
        if len(front) > size:
            with pytest.raises(ValueError):
                self.ch.recv_into(buf, block=False)
            assert buf == b"\xee" * size  # untouched, and the message stays
        else:
            assert self.ch.recv_into(buf, block=False) == len(front)
            assert buf[: len(front)] == front
            assert buf[len(front):] == b"\xee" * (size - len(front))
            self.pop()

    @precondition(lambda self: len(self.handles) < 4)
    @rule()
    def open_another_handle(self) -> None:
        h = Channel.from_id(self.ch.id)
        assert h.capacity == self.cap and not h.owner
        self.handles.append(h)
        self.ch = h

    @precondition(lambda self: len(self.handles) > 1)
    @rule(i=st.integers(min_value=0, max_value=3))
    def switch_handle(self, i: int) -> None:
        self.ch = self.handles[i % len(self.handles)]

    # -- invariants --------------------------------------------------------

    @invariant()
    def counters_match(self) -> None:
        if not self.handles:
            return
        assert self.ch.qsize() == len(self.model)
        assert self.ch.empty() == (not self.model)
        assert self.ch.full() == (self.free() < 8)
        s = self.ch.stats()
        assert s.used == self.used
        assert s.messages == len(self.model)
        assert s.capacity == self.cap
        assert (s.producer_lock_pid, s.consumer_lock_pid) == (0, 0)


ChannelMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestChannelMachine = ChannelMachine.TestCase
