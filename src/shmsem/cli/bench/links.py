"""One-way links between two processes: shmsem's Channel and each peer.

A Link is made in the parent before the workers fork (``setup``: the shared
objects, each registered for removal), then each worker opens its end
(``open_sender`` / ``open_receiver``: sockets, nodes and handles are made in
the child, after the fork).  Every receiver copies each message out into a
Python object of its own (bytes, or the unpickled object); a receiver whose
library hands out a view copies it with bytes().

Each peer is used through its natural API, with its defaults, except where a
default would make the comparison meaningless (these are listed in
docs/benchmarks.md, "Channels"):

* buffers are sized alike where the peer lets us: about ``capacity`` bytes;
* faster-fifo carries raw bytes with ``dumps=bytes`` (no copy for a bytes
  object) and ``loads=bytes`` (a copy of the view it hands out);
* iceoryx2 never drops: no safe overflow, RetryUntilDelivered.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import shutil
import struct
import tempfile
from functools import partial
from itertools import repeat
from typing import Any, Callable, Optional

import shmsem

from .common import NOT_INSTALLED, cleanup, optional_import

sysv_ipc = optional_import("sysv_ipc")
faster_fifo = optional_import("faster_fifo")
zmq = optional_import("zmq")
iceoryx2 = optional_import("iceoryx2")

BYTES, OBJECTS = "bytes", "objects"

#: Install hints for the peers that are not in the standard library.
PEER_MODULES = {
    "sysv_ipc": ("sysv_ipc", sysv_ipc),
    "faster-fifo": ("faster_fifo", faster_fifo),
    "pyzmq": ("zmq", zmq),
    "iceoryx2": ("iceoryx2", iceoryx2),
}


class Unavailable(Exception):
    """This link cannot carry this kind of message (the reason is the text)."""


# ---------------------------------------------------------------------------
# Ends


class Sender:
    """The producing end.  ``send(msg)`` sends one message; ``send_many`` a
    list, where the library has a batch call."""

    send: Callable[[Any], Any]
    send_many: Optional[Callable[[list[Any]], Any]] = None

    def __init__(self, send: Callable[[Any], Any],
                 send_many: Optional[Callable[[list[Any]], Any]] = None,
                 close: Optional[Callable[[], None]] = None) -> None:
        self.send = send
        self.send_many = send_many
        self._close = close

    def produce(self, msg: Any, n: int) -> None:
        send = self.send
        for _ in repeat(None, n):
            send(msg)

    def produce_many(self, batch: list[Any], rounds: int) -> None:
        send_many = self.send_many
        assert send_many is not None
        for _ in repeat(None, rounds):
            send_many(batch)

    def close(self) -> None:
        if self._close is not None:
            self._close()


class Receiver:
    """The consuming end.  ``recv()`` returns one message, copied out;
    ``recv_many(k)`` up to k of them, where the library has a batch call."""

    def __init__(self, recv: Callable[[], Any],
                 recv_many: Optional[Callable[[int], list[Any]]] = None,
                 close: Optional[Callable[[], None]] = None) -> None:
        self.recv = recv
        self.recv_many = recv_many
        self._close = close

    def consume(self, n: int) -> int:
        """Receive n messages; return the length of the last one."""
        recv = self.recv
        m: Any = b""
        for _ in repeat(None, n):
            m = recv()
        return len(m)

    def consume_many(self, n: int, batch: int) -> int:
        """Receive n messages in batches of at most ``batch``; return the
        length of the last one."""
        recv_many = self.recv_many
        assert recv_many is not None
        got = 0
        last: list[Any] = [b""]
        while got < n:
            last = recv_many(batch)
            got += len(last)
        if got != n:
            raise RuntimeError(f"received {got} messages, expected {n}")
        return len(last[-1])

    def close(self) -> None:
        if self._close is not None:
            self._close()


class IntoReceiver(Receiver):
    """shmsem's recv_into: each message is copied into one preallocated
    bytearray (the copy a consumer that reuses its buffer makes)."""

    def __init__(self, ch: Any, size: int, close: Callable[[], None]) -> None:
        self._buf = bytearray(size)
        super().__init__(self._recv, None, close)
        self._recv_into = ch.recv_into

    def _recv(self) -> Any:
        return self._buf[: self._recv_into(self._buf)]

    def consume(self, n: int) -> int:
        recv_into, buf = self._recv_into, self._buf
        k = 0
        for _ in repeat(None, n):
            k = recv_into(buf)
        return int(k)


# ---------------------------------------------------------------------------
# Links


class Link:
    """A one-way link.  ``peer`` names the library (for the "missing" list),
    ``api`` the calls used."""

    peer = ""
    api = ""

    def __init__(self, mode: str, size: int, capacity: int) -> None:
        self.mode = mode
        self.size = size
        self.capacity = capacity

    def check(self) -> None:
        """Raise Unavailable if this link cannot run here."""

    def setup(self, stack: contextlib.ExitStack) -> None:
        """In the parent, before the fork."""

    def open_sender(self) -> Sender:
        raise NotImplementedError

    def open_receiver(self) -> Receiver:
        raise NotImplementedError

    def depth(self) -> int:
        """Messages a peer's queue should hold: about ``capacity`` bytes."""
        return max(8, min(1024, self.capacity // max(self.size, 1)))


class ShmsemLink(Link):
    peer = "shmsem"

    def __init__(self, mode: str, size: int, capacity: int, *, into: bool = False) -> None:
        super().__init__(mode, size, capacity)
        self.into = into
        self.channel_id = -1
        if mode == OBJECTS:
            self.api = "Channel put/get"
        elif into:
            self.api = "Channel put_bytes/recv_into"
        else:
            self.api = "Channel put_bytes/get_bytes"

    def setup(self, stack: contextlib.ExitStack) -> None:
        ch = shmsem.Channel(None, self.capacity)
        cleanup(stack, ch.close, "shmsem Channel")  # the creator owns it: close() removes
        self.channel_id = ch.id

    def _open(self) -> Any:
        # A handle of the worker's own: the inherited one owns the segment.
        return shmsem.Channel.from_id(self.channel_id)

    def open_sender(self) -> Sender:
        ch = self._open()
        if self.mode == OBJECTS:
            return Sender(ch.put, ch.put_many, ch.close)
        return Sender(ch.put_bytes, ch.put_many_bytes, ch.close)

    def open_receiver(self) -> Receiver:
        ch = self._open()
        if self.mode == OBJECTS:
            return Receiver(ch.get, ch.get_many, ch.close)
        if self.into:
            return IntoReceiver(ch, self.size, ch.close)
        return Receiver(ch.get_bytes, ch.get_many_bytes, ch.close)


class MpQueueLink(Link):
    peer = "multiprocessing.Queue"
    api = "put/get"

    def setup(self, stack: contextlib.ExitStack) -> None:
        self.q = multiprocessing.get_context("fork").Queue()

    def open_sender(self) -> Sender:
        q = self.q

        def close() -> None:
            q.cancel_join_thread()  # never hang on exit over unread messages
            q.close()

        return Sender(q.put, None, close)

    def open_receiver(self) -> Receiver:
        return Receiver(self.q.get)


class MpPipeLink(Link):
    peer = "multiprocessing.Pipe"

    def __init__(self, mode: str, size: int, capacity: int) -> None:
        super().__init__(mode, size, capacity)
        self.api = "send/recv" if mode == OBJECTS else "send_bytes/recv_bytes"

    def setup(self, stack: contextlib.ExitStack) -> None:
        self.r, self.w = multiprocessing.get_context("fork").Pipe(duplex=False)
        stack.callback(self.r.close)
        stack.callback(self.w.close)

    def open_sender(self) -> Sender:
        w = self.w
        return Sender(w.send if self.mode == OBJECTS else w.send_bytes)

    def open_receiver(self) -> Receiver:
        r = self.r
        return Receiver(r.recv if self.mode == OBJECTS else r.recv_bytes)


_LEN = struct.Struct("<I")


class OsPipeLink(Link):
    """os.pipe with a 4-byte length before each message: one writev per
    message, and a buffered reader on the other end."""

    peer = "os.pipe"
    api = "writev/buffered read"

    def check(self) -> None:
        if self.mode == OBJECTS:
            raise Unavailable("carries bytes only")

    def setup(self, stack: contextlib.ExitStack) -> None:
        self.r, self.w = os.pipe()
        stack.callback(os.close, self.r)
        stack.callback(os.close, self.w)

    def open_sender(self) -> Sender:
        fd, pack, writev = self.w, _LEN.pack, os.writev

        def send(m: bytes) -> None:
            n = len(m)
            done = writev(fd, (pack(n), m))
            if done != n + 4:  # a signal cut a large write short: finish it
                rest = memoryview(pack(n) + m)[done:]
                while rest:
                    rest = rest[os.write(fd, rest):]

        return Sender(send)

    def open_receiver(self) -> Receiver:
        f = open(self.r, "rb", buffering=65536, closefd=False)  # noqa: SIM115 - closed by close()
        read, unpack = f.read, _LEN.unpack

        def recv() -> bytes:
            (n,) = unpack(read(4))
            return read(n)

        return Receiver(recv, None, f.close)


class FasterFifoLink(Link):
    peer = "faster-fifo"

    def __init__(self, mode: str, size: int, capacity: int) -> None:
        super().__init__(mode, size, capacity)
        self.api = "put/get"

    def check(self) -> None:
        if faster_fifo is None:
            raise Unavailable(NOT_INSTALLED)

    def setup(self, stack: contextlib.ExitStack) -> None:
        assert faster_fifo is not None
        kw: dict[str, Any] = {}
        if self.mode == BYTES:
            # Raw bytes through: dumps=bytes returns a bytes object itself,
            # loads=bytes copies the memoryview faster-fifo hands out.
            kw = {"dumps": bytes, "loads": bytes}
        self.q = faster_fifo.Queue(max_size_bytes=self.capacity, **kw)

    def open_sender(self) -> Sender:
        q = self.q
        return Sender(q.put, q.put_many)

    def open_receiver(self) -> Receiver:
        q = self.q

        def get_many(k: int) -> list[Any]:
            return q.get_many(max_messages_to_get=k)  # type: ignore[no-any-return]

        return Receiver(q.get, get_many)


class ZmqLink(Link):
    """pyzmq PUSH/PULL over ipc://, high-water marks of ``depth()`` messages."""

    peer = "pyzmq"

    def __init__(self, mode: str, size: int, capacity: int) -> None:
        super().__init__(mode, size, capacity)
        self.api = "PUSH/PULL ipc:// " + ("send_pyobj/recv_pyobj" if mode == OBJECTS
                                          else "send/recv")

    def check(self) -> None:
        if zmq is None:
            raise Unavailable(NOT_INSTALLED)

    def setup(self, stack: contextlib.ExitStack) -> None:
        d = tempfile.mkdtemp(prefix="shmsem-bench-zmq-")
        stack.callback(shutil.rmtree, d, True)
        self.addr = f"ipc://{d}/link"

    def _socket(self, kind: str) -> tuple[Any, Any]:
        assert zmq is not None
        ctx = zmq.Context()
        s = ctx.socket(getattr(zmq, kind))
        hwm = self.depth()
        s.setsockopt(zmq.SNDHWM if kind == "PUSH" else zmq.RCVHWM, hwm)
        return ctx, s

    def _closer(self, ctx: Any, s: Any) -> Callable[[], None]:
        def close() -> None:
            s.close(linger=0)
            ctx.term()

        return close

    def open_sender(self) -> Sender:
        ctx, s = self._socket("PUSH")
        s.connect(self.addr)
        return Sender(s.send_pyobj if self.mode == OBJECTS else s.send, None,
                      self._closer(ctx, s))

    def open_receiver(self) -> Receiver:
        ctx, s = self._socket("PULL")
        s.bind(self.addr)
        return Receiver(s.recv_pyobj if self.mode == OBJECTS else s.recv, None,
                        self._closer(ctx, s))


def _kernel_limit(name: str) -> Optional[int]:
    try:
        with open(f"/proc/sys/kernel/{name}") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class SysvMqLink(Link):
    """sysv_ipc.MessageQueue, type 1.  Its byte limit is raised to
    ``capacity`` when the kernel lets us (it needs CAP_SYS_RESOURCE above
    kernel.msgmnb)."""

    peer = "sysv_ipc"
    api = "MessageQueue send/receive"

    def check(self) -> None:
        if sysv_ipc is None:
            raise Unavailable(NOT_INSTALLED)
        if self.mode == OBJECTS:
            raise Unavailable("carries bytes only")
        msgmax = _kernel_limit("msgmax")
        if msgmax is not None and self.size > msgmax:
            raise Unavailable(f"a {self.size}-byte message exceeds kernel.msgmax ({msgmax})")

    def setup(self, stack: contextlib.ExitStack) -> None:
        assert sysv_ipc is not None
        mq = sysv_ipc.MessageQueue(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, 0o600,
                                   max(self.size, 16))
        cleanup(stack, mq.remove, "sysv_ipc.MessageQueue")
        try:
            mq.max_size = max(mq.max_size, self.capacity)
        except (sysv_ipc.Error, OSError, ValueError):
            pass  # kept at kernel.msgmnb
        self.max_bytes = int(mq.max_size)
        self.mq = mq

    def open_sender(self) -> Sender:
        return Sender(self.mq.send)

    def open_receiver(self) -> Receiver:
        receive = self.mq.receive

        def recv() -> bytes:
            return receive()[0]  # type: ignore[no-any-return]

        return Receiver(recv)


class IceoryxLink(Link):
    """iceoryx2 publish-subscribe of a byte slice (Slice[c_uint8]).  The
    sender loans a sample, copies the message in and sends it; the receiver
    copies each sample out with ctypes.string_at and releases it.  The
    polling receiver spins on receive(); the event receiver waits on an
    iceoryx2 event Listener, which the sender notifies after every send."""

    peer = "iceoryx2"
    _count = 0

    def __init__(self, mode: str, size: int, capacity: int, *, event: bool) -> None:
        super().__init__(mode, size, capacity)
        self.event = event
        self.api = "publish-subscribe, " + ("event-waiting receiver" if event
                                             else "polling receiver")

    def check(self) -> None:
        if iceoryx2 is None:
            raise Unavailable(NOT_INSTALLED)
        if self.mode == OBJECTS:
            raise Unavailable("carries bytes (slices) only")

    def setup(self, stack: contextlib.ExitStack) -> None:
        IceoryxLink._count += 1
        self.name = f"shmsem-bench/{os.getpid()}/{IceoryxLink._count}"

    def _node(self) -> tuple[Any, Any, Any]:
        iox = iceoryx2
        assert iox is not None
        iox.set_log_level(iox.LogLevel.Fatal)
        node = (iox.NodeBuilder.new().signal_handling_mode(iox.SignalHandlingMode.Disabled)
                .create(iox.ServiceType.Ipc))
        svc = (node.service_builder(iox.ServiceName.new(self.name))
               .publish_subscribe(iox.Slice[ctypes.c_uint8])
               .enable_safe_overflow(False)
               .subscriber_max_buffer_size(self.depth())
               .history_size(0)
               .open_or_create())
        ev = None
        if self.event:
            ev = (node.service_builder(iox.ServiceName.new(self.name + "/event"))
                  .event().open_or_create())
        return node, svc, ev

    @staticmethod
    def _closer(held: list[Any]) -> Callable[[], None]:
        def close() -> None:
            for port in reversed(held):
                if hasattr(port, "delete"):
                    with contextlib.suppress(Exception):
                        port.delete()
            held.clear()
            gc.collect()

        return close

    def open_sender(self) -> Sender:
        iox = iceoryx2
        assert iox is not None
        node, svc, ev = self._node()
        pub = (svc.publisher_builder().initial_max_slice_len(self.size)
               .backpressure_strategy(iox.BackpressureStrategy.RetryUntilDelivered).create())
        loan, memmove = pub.loan_slice_uninit, ctypes.memmove
        held = [node, svc, ev, pub]
        if ev is not None:
            notify = ev.notifier_builder().create()
            held.append(notify)
            notify_call = notify.notify

            def send(m: bytes) -> None:
                n = len(m)
                s = loan(n)
                memmove(s.payload_ptr, m, n)
                s.assume_init().send()
                notify_call()
        else:

            def send(m: bytes) -> None:
                n = len(m)
                s = loan(n)
                memmove(s.payload_ptr, m, n)
                s.assume_init().send()

        return Sender(send, None, self._closer(held))

    def open_receiver(self) -> Receiver:
        node, svc, ev = self._node()
        sub = svc.subscriber_builder().buffer_size(self.depth()).create()
        receive, string_at = sub.receive, ctypes.string_at
        held = [node, svc, ev, sub]
        if ev is not None:
            listener = ev.listener_builder().create()
            held.append(listener)
            wait = listener.blocking_wait

            def recv() -> bytes:
                while True:
                    s = receive()
                    if s is not None:
                        break
                    wait()
                b = string_at(s.payload_ptr, s.header.number_of_elements)
                s.delete()
                return b
        else:

            def recv() -> bytes:
                while True:
                    s = receive()
                    if s is not None:
                        break
                b = string_at(s.payload_ptr, s.header.number_of_elements)
                s.delete()
                return b

        return Receiver(recv, None, self._closer(held))


def cleanup_iceoryx() -> None:
    """Remove what killed iceoryx2 workers left in /dev/shm and /tmp/iceoryx2."""
    iox = iceoryx2
    if iox is None:
        return
    with contextlib.suppress(Exception):
        iox.set_log_level(iox.LogLevel.Fatal)
        node = (iox.NodeBuilder.new().signal_handling_mode(iox.SignalHandlingMode.Disabled)
                .create(iox.ServiceType.Ipc))
        node.try_cleanup_dead_nodes()
        del node
        gc.collect()


# ---------------------------------------------------------------------------
# The catalogue: (key, factory).  Keys name rows in the tables and the JSON.

LinkFactory = Callable[[str, int, int], Link]

PEERS: list[tuple[str, LinkFactory]] = [
    ("multiprocessing.Queue", MpQueueLink),
    ("multiprocessing.Pipe", MpPipeLink),
    ("os.pipe", OsPipeLink),
    ("faster-fifo", FasterFifoLink),
    ("pyzmq", ZmqLink),
    ("sysv_ipc", SysvMqLink),
    ("iceoryx2 polling", partial(IceoryxLink, event=False)),
    ("iceoryx2 event", partial(IceoryxLink, event=True)),
]
