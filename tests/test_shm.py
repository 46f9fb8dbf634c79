"""SharedMemory: construction, ownership, frames, raw access, views, the
read-only attach, detach safety, pickling, stat() and garbage collection."""

from __future__ import annotations

import dataclasses
import gc
import os
import pathlib
import pickle
import struct
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shmsem
from shmsem import SharedMemory, _core


def shm_ids() -> set[int]:
    lines = pathlib.Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {int(line.split()[1]) for line in lines}


def my_shm_ids() -> set[int]:
    """Segments this process created (cpid is the 5th column)."""
    lines = pathlib.Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {int(f[1]) for f in (line.split() for line in lines) if int(f[4]) == os.getpid()}


def exists(shmid: int) -> bool:
    return shmid in shm_ids()


def rmid_quietly(shmid: int) -> None:
    try:
        _core.shm_rmid(shmid)
    except (shmsem.ShmsemError, OSError):
        pass


@pytest.fixture
def seg() -> Iterator[SharedMemory]:
    """A private 4096-byte segment, owned and removed at teardown."""
    s = SharedMemory.create(None, 4096)
    try:
        yield s
    finally:
        s.owner = True
        try:
            s.close()
        except BufferError:
            gc.collect()
            s.close()
        rmid_quietly(s.id)


# ---------------------------------------------------------------------------
# Construction


def test_create_private(seg: SharedMemory) -> None:
    assert seg.created and seg.owner
    assert seg.key == shmsem.IPC_PRIVATE == 0
    assert seg.id >= 0 and exists(seg.id)
    assert seg.size == 4096
    assert not seg.readonly and not seg.closed
    assert len(seg.buf) == 4096


def test_create_is_exclusive(unique_key) -> None:
    key = unique_key()
    with SharedMemory.create(key, 64) as a:
        assert (a.key, a.created, a.owner) == (key, True, True)
        with pytest.raises(shmsem.ExistsError):
            SharedMemory.create(key, 64)
        with pytest.raises(FileExistsError):
            SharedMemory.create(key, 128)
    assert not exists(a.id)


def test_create_mode(unique_key) -> None:
    with SharedMemory.create(unique_key(), 64, mode=0o640) as a:
        assert a.stat().mode == 0o640


@pytest.mark.parametrize("mode", [0o1000, -1, 0o7777])
def test_bad_mode(mode: int) -> None:
    with pytest.raises(ValueError):
        SharedMemory.create(None, 64, mode=mode)


def test_open_missing(unique_key) -> None:
    with pytest.raises(shmsem.NotFoundError) as info:
        SharedMemory.open(unique_key())
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("key", [None, 0])
def test_open_private_refused(key: Any) -> None:
    with pytest.raises(ValueError):
        SharedMemory.open(key)


def test_open_reads_size_from_ipc_stat(unique_key) -> None:
    key = unique_key()
    with SharedMemory.create(key, 1001) as a, SharedMemory.open(key) as b:
        assert b.size == 1001
        assert (b.created, b.owner, b.key, b.id) == (False, False, key, a.id)
        a.write(b"from a")
        assert b.read() == b"from a"
        b.write_at(100, b"from b")
        assert a.read_at(100, 6) == b"from b"


def test_create_or_open(unique_key) -> None:
    key = unique_key()
    a = SharedMemory(key, 128)
    try:
        assert (a.created, a.owner, a.size) == (True, True, 128)
        b = SharedMemory(key, 128)
        assert (b.created, b.owner, b.id) == (False, False, a.id)
        c = SharedMemory(key, 16)  # smaller request: opens the whole segment
        assert (c.created, c.size, c.id) == (False, 128, a.id)
        with pytest.raises(shmsem.ExistsError):
            SharedMemory(key, 129)  # an existing segment that is too small
        b.close()
        c.close()
        assert exists(a.id)
    finally:
        a.close()
    assert not exists(a.id)


def test_create_or_open_private_always_creates() -> None:
    with SharedMemory(None, 64) as a, SharedMemory(None, 64) as b:
        assert a.created and b.created and a.id != b.id


def test_from_id(seg: SharedMemory) -> None:
    b = SharedMemory.from_id(seg.id)
    assert (b.id, b.key, b.size, b.owner, b.created, b.readonly) == (
        seg.id, seg.key, seg.size, False, False, False)
    seg.write(b"x")
    assert b.read() == b"x"
    b.close()
    assert exists(seg.id)
    r = SharedMemory.from_id(seg.id, readonly=True)
    assert r.readonly
    r.close()


def test_from_id_missing() -> None:
    a = SharedMemory.create(None, 64)
    a.close()
    with pytest.raises(shmsem.NotFoundError):
        SharedMemory.from_id(a.id)
    with pytest.raises(TypeError):
        SharedMemory.from_id("1")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Ownership and lifetime


def test_close_of_non_owner_does_not_remove(unique_key) -> None:
    key = unique_key()
    with SharedMemory.create(key, 64) as a:
        b = SharedMemory.open(key)
        b.close()
        assert b.closed and not a.closed
        assert exists(a.id)
        a.write(b"still here")
        assert SharedMemory.open(key).read() == b"still here"
    assert not exists(a.id)


def test_owner_is_settable(unique_key) -> None:
    key = unique_key()
    a = SharedMemory.create(key, 64)
    try:
        a.owner = False
        b = SharedMemory.open(key)
        b.owner = True
        b.close()
        # Removed (key released), though a is still attached.
        with pytest.raises(shmsem.NotFoundError):
            SharedMemory.open(key)
        assert a.stat().removed
        a.close()  # not the owner any more: detaches only
        assert not exists(a.id)
    finally:
        rmid_quietly(a.id)


def test_close_is_idempotent_and_tolerates_removal(seg: SharedMemory) -> None:
    seg.remove()
    seg.close()
    seg.close()
    assert seg.closed
    assert not exists(seg.id)


def test_remove_keeps_the_segment_usable_until_detach(unique_key) -> None:
    key = unique_key()
    a = SharedMemory.create(key, 64)
    try:
        b = SharedMemory.from_id(a.id)
        a.remove()
        st = a.stat()
        assert st.removed and st.nattch == 2
        # The key is free at once...
        with pytest.raises(shmsem.NotFoundError):
            SharedMemory.open(key)
        # ...but both mappings still work.
        a.write(b"after remove")
        assert b.read() == b"after remove"
        b.close()
        assert a.read() == b"after remove"
        assert exists(a.id)
        a.close()
        assert not exists(a.id)
    finally:
        rmid_quietly(a.id)


def test_with_closes_and_removes_owner() -> None:
    with SharedMemory.create(None, 64) as a:
        assert not a.closed
        sid = a.id
    assert a.closed and not exists(sid)


def test_with_on_non_owner_does_not_remove(seg: SharedMemory) -> None:
    with SharedMemory.from_id(seg.id) as b:
        b.write(b"hi")
    assert b.closed and exists(seg.id)
    assert seg.read() == b"hi"


def test_with_removes_even_on_exception() -> None:
    with pytest.raises(RuntimeError), SharedMemory.create(None, 64) as a:
        sid = a.id
        raise RuntimeError("boom")
    assert not exists(sid)


def test_repr(seg: SharedMemory) -> None:
    r = repr(seg)
    assert "SharedMemory" in r and f"id={seg.id}" in r and "0x00000000" in r


# ---------------------------------------------------------------------------
# stat()


def test_stat_fields(unique_key) -> None:
    key = unique_key()
    with SharedMemory.create(key, 3000, mode=0o640) as a:
        st = a.stat()
        assert isinstance(st, shmsem.SegmentStat)
        assert (st.key, st.id, st.size, st.mode) == (key, a.id, 3000, 0o640)
        assert st.nattch == 1
        assert st.cpid == os.getpid() and st.lpid == os.getpid()
        assert st.uid == st.cuid == os.geteuid()
        assert st.gid == st.cgid == os.getegid()
        assert st.atime > 0 and st.ctime > 0
        assert st.removed is False
        with pytest.raises(dataclasses.FrozenInstanceError):
            st.size = 1  # type: ignore[misc]
        b = SharedMemory.open(key, mode=0o640)  # as broad as it is: no squatting refusal
        assert a.stat().nattch == 2
        b.detach()
        st2 = a.stat()
        assert st2.nattch == 1 and st2.dtime > 0


def test_stat_after_removal_and_detach() -> None:
    a = SharedMemory.create(None, 64)
    a.close()
    with pytest.raises(shmsem.RemovedError):
        a.stat()


# ---------------------------------------------------------------------------
# Frames (the .NET helper's format)


def test_frame_round_trip(seg: SharedMemory) -> None:
    assert seg.write(b"hello") == 5
    assert seg.read_at(0, 9) == struct.pack("<i", 5) + b"hello"
    assert seg.read() == b"hello"
    assert seg.write(b"") == 0
    assert seg.read() == b""
    assert seg.write(bytearray(b"ba")) == 2
    assert seg.read() == b"ba"
    assert seg.write(memoryview(b"xmvx")[1:3]) == 2
    assert seg.read() == b"mv"


def test_str_frames_are_utf8(seg: SharedMemory) -> None:
    text = "h\u00e9llo \u20ac \U0001d11e"
    encoded = text.encode("utf-8")
    assert seg.write(text) == len(encoded)
    assert seg.read_at(0, 4) == struct.pack("<i", len(encoded))
    assert seg.read() == encoded
    assert seg.read_string() == text


def test_read_string_of_invalid_utf8(seg: SharedMemory) -> None:
    seg.write(b"\xff\xfe")
    with pytest.raises(UnicodeDecodeError):
        seg.read_string()


def test_frame_written_by_hand_is_read(seg: SharedMemory) -> None:
    # What the .NET helper writes: int32 LE length, then the payload.
    seg.write_at(0, struct.pack("<i", 3) + b"abcdef")
    assert seg.read() == b"abc"


def test_frame_that_exactly_fits() -> None:
    with SharedMemory.create(None, 20) as s:
        assert s.write(b"x" * 16) == 16
        assert s.read() == b"x" * 16


def test_frame_that_does_not_fit_is_refused_not_truncated() -> None:
    with SharedMemory.create(None, 20) as s:
        s.write(b"old")
        with pytest.raises(ValueError):
            s.write(b"y" * 17)
        assert s.read() == b"old"
        with pytest.raises(ValueError):
            s.write("\u20ac" * 6)  # 18 bytes of UTF-8, though only 6 characters
        assert s.read() == b"old"


@pytest.mark.parametrize("header", [-1, -(2**31), 4093, 4097, 2**31 - 1])
def test_corrupt_header_raises_frame_error(seg: SharedMemory, header: int) -> None:
    seg.write_at(0, struct.pack("<i", header))
    with pytest.raises(shmsem.FrameError) as info:
        seg.read()
    assert isinstance(info.value, ValueError)
    with pytest.raises(shmsem.FrameError):
        seg.read_string()


def test_largest_valid_header(seg: SharedMemory) -> None:
    seg.write_at(0, struct.pack("<i", 4092))
    seg.write_at(4, b"z" * 4092)
    assert seg.read() == b"z" * 4092


@pytest.mark.parametrize("size", [1, 2, 3])
def test_segment_smaller_than_a_header(size: int) -> None:
    with SharedMemory.create(None, size) as s:
        assert s.size == size
        with pytest.raises(shmsem.FrameError):
            s.read()
        with pytest.raises(ValueError):
            s.write(b"")
        with pytest.raises(ValueError):
            s.write(b"a")
        # Raw access still works within bounds.
        s.write_at(0, b"\x01" * size)
        assert s.read_at(0, size) == b"\x01" * size


@pytest.mark.parametrize("bad", [123, None, ["a"], 1.5])
def test_write_rejects_non_bytes(seg: SharedMemory, bad: Any) -> None:
    with pytest.raises(TypeError):
        seg.write(bad)


# ---------------------------------------------------------------------------
# Raw access


def test_read_at_write_at(seg: SharedMemory) -> None:
    assert seg.write_at(10, b"abc") == 3
    assert seg.read_at(10, 3) == b"abc"
    assert seg.read_at(0, 0) == b""
    assert seg.read_at(4096, 0) == b""
    assert seg.write_at(4093, b"end") == 3
    assert seg.read_at(4093, 3) == b"end"
    assert seg.read_at(0, 4096)[4093:] == b"end"
    assert seg.write_at(0, bytearray(b"ba")) == 2
    assert seg.write_at(2, memoryview(b"mv")) == 2
    assert seg.read_at(0, 4) == b"bamv"


@pytest.mark.parametrize(
    "offset, n",
    [(-1, 1), (0, -1), (4096, 1), (4095, 2), (0, 4097), (1, 4096), (-4096, 4096),
     (sys.maxsize, 1), (1, sys.maxsize), (sys.maxsize, sys.maxsize)],
)
def test_read_at_bounds(seg: SharedMemory, offset: int, n: int) -> None:
    with pytest.raises(ValueError):
        seg.read_at(offset, n)


@pytest.mark.parametrize("offset", [-1, 4096, 4094, sys.maxsize, -sys.maxsize - 1])
def test_write_at_bounds_writes_nothing(seg: SharedMemory, offset: int) -> None:
    seg.write_at(4093, b"ABC")
    with pytest.raises(ValueError):
        seg.write_at(offset, b"xyz")
    assert seg.read_at(4093, 3) == b"ABC"


@pytest.mark.parametrize("huge", [2**63, 2**64, 2**70, -(2**63) - 1, -(2**100)])
def test_raw_access_with_huge_ints_is_a_range_error(seg: SharedMemory, huge: int) -> None:
    # The docstrings promise ValueError outside the segment; an offset that
    # does not even fit a C ssize_t is outside it too.
    with pytest.raises(ValueError):
        seg.read_at(huge, 1)
    with pytest.raises(ValueError):
        seg.read_at(0, huge)
    with pytest.raises(ValueError):
        seg.write_at(huge, b"x")


@pytest.mark.parametrize("bad", [1.0, "1", None])
def test_raw_access_types(seg: SharedMemory, bad: Any) -> None:
    with pytest.raises(TypeError):
        seg.read_at(bad, 1)
    with pytest.raises(TypeError):
        seg.read_at(0, bad)
    with pytest.raises(TypeError):
        seg.write_at(bad, b"x")
    with pytest.raises(TypeError):
        seg.write_at(0, 12)


# ---------------------------------------------------------------------------
# buf and ndarray


def test_buf_is_zero_copy(seg: SharedMemory) -> None:
    buf = seg.buf
    try:
        assert isinstance(buf, memoryview)
        assert not buf.readonly and buf.nbytes == 4096 and buf.format == "B"
        buf[0:3] = b"abc"
        assert seg.read_at(0, 3) == b"abc"
        seg.write_at(100, b"Z")
        assert buf[100] == ord("Z")
    finally:
        buf.release()


def test_buf_is_shared_between_attachments(seg: SharedMemory) -> None:
    other = SharedMemory.from_id(seg.id)
    try:
        seg.buf[7] = 42
        assert other.buf[7] == 42
    finally:
        other.close()


def test_ndarray_shares_memory_with_buf(seg: SharedMemory) -> None:
    numpy = pytest.importorskip("numpy")
    arr = seg.ndarray((16,), numpy.uint8)
    assert arr.shape == (16,) and arr.flags.writeable
    arr[:] = 7
    assert seg.read_at(0, 16) == b"\x07" * 16
    seg.buf[1] = 9
    assert arr[1] == 9
    ints = seg.ndarray((4,), numpy.dtype("<i4"), offset=64)
    ints[:] = [1, -2, 3, -4]
    assert seg.read_at(64, 16) == struct.pack("<4i", 1, -2, 3, -4)
    assert numpy.shares_memory(arr, numpy.asarray(seg.buf))
    two_d = seg.ndarray((8, 8), numpy.uint8, offset=128)
    two_d[3, 4] = 0xAB
    assert seg.read_at(128 + 3 * 8 + 4, 1) == b"\xab"
    del arr, ints, two_d


def test_ndarray_bounds(seg: SharedMemory) -> None:
    numpy = pytest.importorskip("numpy")
    with pytest.raises(ValueError):
        seg.ndarray((16,), numpy.uint8, offset=-1)
    with pytest.raises((ValueError, TypeError)):
        seg.ndarray((4097,), numpy.uint8)
    with pytest.raises((ValueError, TypeError)):
        seg.ndarray((2,), numpy.uint8, offset=4095)
    gc.collect()
    seg.detach()  # nothing leaked an export


# ---------------------------------------------------------------------------
# Read-only attach


@pytest.fixture
def ro(seg: SharedMemory) -> Iterator[SharedMemory]:
    seg.write(b"data")
    r = SharedMemory.from_id(seg.id, readonly=True)
    try:
        yield r
    finally:
        gc.collect()
        r.close()


def test_readonly_reads(ro: SharedMemory) -> None:
    assert ro.readonly
    assert ro.read() == b"data"
    assert ro.read_at(4, 4) == b"data"
    assert bytes(ro.buf[4:8]) == b"data"


def test_readonly_open_by_key(unique_key) -> None:
    key = unique_key()
    with SharedMemory.create(key, 64) as a:
        a.write(b"k")
        with SharedMemory.open(key, readonly=True) as r:
            assert r.readonly and r.read() == b"k"
            with pytest.raises(shmsem.PermissionDeniedError):
                r.write(b"no")


def test_readonly_write_raises(ro: SharedMemory) -> None:
    with pytest.raises(shmsem.PermissionDeniedError) as info:
        ro.write(b"x")
    assert isinstance(info.value, PermissionError)
    with pytest.raises(shmsem.PermissionDeniedError):
        ro.write("x")
    with pytest.raises(shmsem.PermissionDeniedError):
        ro.write_at(0, b"x")
    with pytest.raises(shmsem.PermissionDeniedError):
        ro.write_at(0, b"")
    assert ro.read() == b"data"


def test_readonly_buf(ro: SharedMemory) -> None:
    buf = ro.buf
    try:
        assert buf.readonly
        with pytest.raises(TypeError):
            buf[0] = 1
        with pytest.raises(TypeError):
            buf[0:2] = b"xx"
    finally:
        buf.release()
    assert ro.read() == b"data"


def test_readonly_ndarray(ro: SharedMemory) -> None:
    numpy = pytest.importorskip("numpy")
    arr = ro.ndarray((8,), numpy.uint8)
    try:
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 1
        with pytest.raises(ValueError):
            arr.setflags(write=True)
        assert bytes(arr[4:8]) == b"data"
    finally:
        del arr
    assert ro.read() == b"data"


# ---------------------------------------------------------------------------
# Detach and use after detach


def test_use_after_detach_raises_closed_error(seg: SharedMemory) -> None:
    seg.detach()
    assert seg.closed
    seg.detach()  # idempotent
    for call in (
        lambda: seg.read(),
        lambda: seg.read_string(),
        lambda: seg.write(b"x"),
        lambda: seg.write("x"),
        lambda: seg.read_at(0, 1),
        lambda: seg.write_at(0, b"x"),
        lambda: seg.buf,
        lambda: seg.ndarray((1,), "u1"),
        lambda: pickle.dumps(seg),
    ):
        with pytest.raises(shmsem.ClosedError) as info:
            call()
        assert isinstance(info.value, ValueError)
    assert exists(seg.id)  # detaching never removes
    assert "detached" in repr(seg)


USE_AFTER_DETACH = r"""
import shmsem, gc
s = shmsem.SharedMemory.create(None, 4096)
s.write(b"before")
mv = s.buf
try:
    s.detach()
except BufferError:
    print("detach refused while a view is alive", flush=True)
mv[0:1] = b"!"   # the view must still be backed by the mapping
mv.release()
s.detach()
names = []
for label, call in [
    ("read", lambda: s.read()),
    ("read_string", lambda: s.read_string()),
    ("write", lambda: s.write(b"x" * 100)),
    ("read_at", lambda: s.read_at(0, 4096)),
    ("write_at", lambda: s.write_at(0, b"x")),
    ("buf", lambda: s.buf),
    ("released view", lambda: mv[0]),
]:
    try:
        call()
        names.append(label + ":no error")
    except shmsem.ClosedError:
        names.append(label + ":ClosedError")
    except ValueError as e:
        names.append(label + ":" + type(e).__name__)
print(" ".join(names), flush=True)
s.remove()
print("done", flush=True)
"""


def test_use_after_detach_in_a_subprocess_never_crashes(child) -> None:
    c = child(USE_AFTER_DETACH)
    rc, out, err = c.finish(timeout=30)
    assert rc == 0, f"rc={rc} (negative means killed by a signal)\n{err}"
    assert out.splitlines() == [
        "detach refused while a view is alive",
        ("read:ClosedError read_string:ClosedError write:ClosedError read_at:ClosedError "
         "write_at:ClosedError buf:ClosedError released view:ValueError"),
        "done",
    ], out + err


def test_detach_refused_while_memoryview_alive(seg: SharedMemory) -> None:
    buf = seg.buf
    with pytest.raises(BufferError):
        seg.detach()
    assert not seg.closed
    buf[0] = 65
    assert seg.read_at(0, 1) == b"A"
    # close() of an owner must not remove when it cannot detach.
    with pytest.raises(BufferError):
        seg.close()
    assert exists(seg.id) and seg.owner and not seg.closed
    del buf
    seg.detach()
    assert seg.closed


def test_detach_refused_while_slice_alive(seg: SharedMemory) -> None:
    part = seg.buf[10:20]  # the parent view is gone; the slice still exports
    with pytest.raises(BufferError):
        seg.detach()
    part.release()
    seg.detach()


def test_detach_after_explicit_release(seg: SharedMemory) -> None:
    views = [seg.buf for _ in range(3)]
    for v in views[:2]:
        v.release()
    with pytest.raises(BufferError):
        seg.detach()
    views[2].release()
    seg.detach()
    assert seg.closed


def test_detach_refused_while_ndarray_alive(seg: SharedMemory) -> None:
    numpy = pytest.importorskip("numpy")
    arr = seg.ndarray((10,), numpy.uint8)
    view = arr[2:5]
    del arr
    with pytest.raises(BufferError):
        seg.detach()
    view[0] = 3
    assert seg.read_at(2, 1) == b"\x03"
    del view
    seg.detach()
    assert seg.closed


NDARRAY_THEN_DETACH = r"""
import shmsem, numpy
s = shmsem.SharedMemory.from_id({id})
arr = s.ndarray((4096,), numpy.uint8)
try:
    s.detach()
except BufferError:
    print("refused", flush=True)
else:
    print("detached under a live ndarray", flush=True)
arr[0] = 1          # with the mapping gone this would fault
print(int(arr[0]), flush=True)
del arr
s.close()
"""


def test_ndarray_never_touches_unmapped_memory(seg: SharedMemory, child) -> None:
    c = child(NDARRAY_THEN_DETACH.format(id=seg.id))
    rc, out, err = c.finish(timeout=30)
    assert out.splitlines() == ["refused", "1"], f"rc={rc} out={out!r}\n{err}"
    assert rc == 0, f"rc={rc} (negative: killed by a signal)\n{err}"
    assert seg.read_at(0, 1) == b"\x01"


def test_dealloc_detaches(seg: SharedMemory) -> None:
    other = SharedMemory.from_id(seg.id)
    assert seg.stat().nattch == 2
    del other
    gc.collect()
    assert seg.stat().nattch == 1


def test_dealloc_waits_for_views(seg: SharedMemory) -> None:
    other = SharedMemory.from_id(seg.id)
    buf = other.buf
    del other
    gc.collect()
    # The view keeps the mapping alive; it must still be readable.
    assert seg.stat().nattch == 2
    seg.write(b"late")
    assert bytes(buf[4:8]) == b"late"
    del buf
    gc.collect()
    assert seg.stat().nattch == 1


def test_gc_of_unclosed_owner_warns_and_does_not_remove() -> None:
    a = SharedMemory.create(None, 64)
    sid = a.id
    try:
        with pytest.warns(ResourceWarning, match="unclosed owner"):
            del a
            gc.collect()
        # Garbage collection only detached it.
        assert exists(sid)
        st = SharedMemory.from_id(sid)
        try:
            assert st.stat().nattch == 1  # only the handle just made
        finally:
            st.close()
    finally:
        rmid_quietly(sid)


def test_gc_of_closed_owner_or_non_owner_is_silent(seg: SharedMemory) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = SharedMemory.create(None, 64)
        a.close()
        del a
        b = SharedMemory.from_id(seg.id)
        del b
        c = SharedMemory.create(None, 64)
        cid = c.id
        c.owner = False
        del c
        gc.collect()
    rmid_quietly(cid)
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


# ---------------------------------------------------------------------------
# Pickling


def test_pickle(seg: SharedMemory) -> None:
    seg.write(b"pickled")
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        b = pickle.loads(pickle.dumps(seg, protocol=proto))
        try:
            assert (b.id, b.size, b.readonly, b.owner, b.created) == (
                seg.id, seg.size, False, False, False)
            assert b.read() == b"pickled"
        finally:
            b.close()
    assert exists(seg.id)


def test_pickle_keeps_readonly(ro: SharedMemory) -> None:
    b = pickle.loads(pickle.dumps(ro))
    try:
        assert b.readonly and not b.owner
        with pytest.raises(shmsem.PermissionDeniedError):
            b.write(b"x")
    finally:
        b.close()


def test_pickle_to_another_process(seg: SharedMemory, child) -> None:
    seg.write(b"to the child")
    data = pickle.dumps(seg).hex()
    c = child(f"""
        import pickle
        s = pickle.loads(bytes.fromhex({data!r}))
        print(s.read().decode(), s.owner, s.id, flush=True)
        s.write(b"from the child")
        s.close()
    """)
    rc, out, err = c.finish(timeout=30)
    assert rc == 0, err
    assert out.strip() == f"to the child False {seg.id}"
    assert seg.read() == b"from the child"
    assert exists(seg.id)  # the child's close() did not remove it


# ---------------------------------------------------------------------------
# Sizes


@pytest.mark.parametrize("size", [0, -1, -(2**63), 2**63, 2**64, 2**100])
def test_bad_sizes_value_error(size: int) -> None:
    with pytest.raises(ValueError):
        SharedMemory.create(None, size)
    with pytest.raises(ValueError):
        SharedMemory(None, size)


@pytest.mark.parametrize("size", [1.0, "64", None, True, b"1"])
def test_bad_sizes_type_error(size: Any) -> None:
    with pytest.raises(TypeError):
        SharedMemory.create(None, size)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=2**46, max_value=2**63 - 1),
        st.integers(min_value=2**63, max_value=2**130),
        st.floats(allow_nan=True),
        st.booleans(),
        st.text(max_size=3),
        st.none(),
    )
)
def test_sizes_fuzzed(size: Any) -> None:
    """Bad or absurd sizes fail with a clean exception, never a crash; and a
    failed creation leaves nothing behind."""
    before = my_shm_ids()
    try:
        s = SharedMemory.create(None, size)
    except (ValueError, TypeError, shmsem.LimitError):
        pass
    else:  # pragma: no cover - only if the host can map that much
        s.close()
        pytest.fail(f"a segment of {size!r} bytes was created")
    assert my_shm_ids() == before


# ---------------------------------------------------------------------------
# Frames, fuzzed


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=300),
    header=st.one_of(
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
        st.integers(min_value=-8, max_value=310),
    ),
    filler=st.binary(min_size=0, max_size=300),
)
def test_random_headers_fuzzed(size: int, header: int, filler: bytes) -> None:
    with SharedMemory.create(None, size) as s:
        if size > 4:
            unit = filler or b"\x00"
            s.write_at(4, (unit * size)[: size - 4])
        raw = struct.pack("<i", header)[: min(4, size)]
        s.write_at(0, raw)
        if size < 4:
            with pytest.raises(shmsem.FrameError):
                s.read()
            return
        if 0 <= header <= size - 4:
            assert s.read() == s.read_at(4, header)
            assert len(s.read()) == header
        else:
            with pytest.raises(shmsem.FrameError):
                s.read()


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=200),
    delta=st.integers(min_value=-6, max_value=6),
    byte=st.binary(min_size=1, max_size=1),
)
def test_payloads_around_the_boundary_fuzzed(size: int, delta: int, byte: bytes) -> None:
    n = max(size - 4 + delta, 0)
    payload = byte * n
    with SharedMemory.create(None, size) as s:
        if size >= 4:
            s.write(b"")
        if n <= size - 4:
            assert s.write(payload) == n
            assert s.read() == payload
        else:
            before = s.read_at(0, size)
            with pytest.raises(ValueError):
                s.write(payload)
            assert s.read_at(0, size) == before
