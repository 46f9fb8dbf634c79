"""Keys: the range rule (never truncate), IPC_PRIVATE, ftok and key_from_name.

key_from_name is checked against a reference written here from the .NET
helper's description (FNV-1a over UTF-16 code units, signed int32, abs),
against published FNV-1a vectors, and against values worked out with bc(1).
"""

from __future__ import annotations

import ctypes
import os
import pathlib
from typing import Callable, TypeVar

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import shmsem
from shmsem import _core
from shmsem.errors import format_key
from shmsem.keys import normalize_key

T = TypeVar("T")

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619

#: A name whose FNV-1a hash is exactly 0x80000000.  Found by inverting the
#: last two rounds (the prime is odd, so the multiply can be undone mod 2**32)
#: over 3-letter ASCII prefixes; see test_reference_hashes_the_overflow_name.
OVERFLOW_NAME = "gXB\u20a8"


def utf16_units(s: str) -> list[int]:
    """UTF-16 code units, computed by hand (no codec): a non-BMP character
    becomes a high and a low surrogate; a lone surrogate stays one unit."""
    units = []
    for ch in s:
        cp = ord(ch)
        if cp < 0x10000:
            units.append(cp)
        else:
            cp -= 0x10000
            units.append(0xD800 + (cp >> 10))
            units.append(0xDC00 + (cp & 0x3FF))
    return units


def fnv1a_utf16(s: str) -> int:
    """The unsigned 32-bit FNV-1a hash of the string's UTF-16 code units."""
    h = FNV_OFFSET
    for unit in utf16_units(s):
        h ^= unit
        h = (h * FNV_PRIME) % 2**32
    return h


def reference_key(s: str) -> int:
    """What .NET's GetDeterministicHashCode returns: Math.Abs((int)hash)."""
    if s == "":
        return 0
    signed = ctypes.c_int32(fnv1a_utf16(s)).value
    if signed == -(2**31):
        raise OverflowError("Math.Abs(int.MinValue)")
    return abs(signed)


def create_or_skip(key: int, make: Callable[[], T]) -> T:
    """``make()``, which creates an object with a key this test cannot choose
    (a boundary value, an ftok or key_from_name result); skip when that key
    is taken.  Another program, or another run of this suite, may hold it:
    no fault of shmsem's."""
    try:
        return make()
    except shmsem.ExistsError:
        pytest.skip(f"key {format_key(normalize_key(key))} is in use on this host "
                    "(another program, or an overlapping run of this suite)")


# ---------------------------------------------------------------------------
# key_from_name


# Published FNV-1a 32-bit test vectors (ASCII, so one UTF-16 unit per byte).
@pytest.mark.parametrize(
    "name, hash32",
    [("a", 0xE40C292C), ("b", 0xE70C2DE5), ("c", 0xE60C2C52), ("foobar", 0xBF9CF968)],
)
def test_key_from_name_published_vectors(name: str, hash32: int) -> None:
    # All four have the top bit set: the key is the absolute value of the int32.
    assert shmsem.key_from_name(name) == 2**32 - hash32


# Worked out independently with bc(1) from the algorithm's description.
@pytest.mark.parametrize(
    "name, hash32",
    [
        ("hello", 1335831723),  # top bit clear: the key is the hash itself
        ("0", 890022063),
        ("z", 4278997933),
        ("\u20ac", 2839424075),  # one BMP unit above 0xff
        ("\U0001f600", 3409036472),  # a surrogate pair: D83D DE00
        ("A\u00e9\u20ac\U0001f600", 2851575668),
    ],
)
def test_key_from_name_hand_computed(name: str, hash32: int) -> None:
    expected = hash32 if hash32 < 2**31 else 2**32 - hash32
    assert shmsem.key_from_name(name) == expected
    assert reference_key(name) == expected


def test_key_from_name_empty_is_zero() -> None:
    assert shmsem.key_from_name("") == 0


NAMES = [
    "a", "A", "ab", "ba", " ", "\x00", "\x00\x00", "shmsem", "Global\\sensor-7",
    "/dev/shm/thing", "caf\u00e9", "\u00ff\u0100", "\u65e5\u672c\u8a9e",
    "\U0001f600", "\U0001f600\U0001f601", "a\U00010000b", "\U0010ffff",
    "\ud800", "\udfff", "x\ud83dy",  # lone surrogates: legal in .NET strings too
    "\uffff", "long" * 500, "\U0001d11e clef",
]


@pytest.mark.parametrize("name", NAMES)
def test_key_from_name_matches_reference(name: str) -> None:
    assert shmsem.key_from_name(name) == reference_key(name)


def test_key_from_name_non_bmp_is_two_units() -> None:
    # Hashing the code point as one unit would give a different key.
    s = "\U0001f600"
    one_unit = ctypes.c_int32(((FNV_OFFSET ^ 0x1F600) * FNV_PRIME) % 2**32).value
    assert shmsem.key_from_name(s) != abs(one_unit)
    assert shmsem.key_from_name(s) == reference_key(s)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_key_from_name_matches_reference_fuzzed(name: str) -> None:
    assume(fnv1a_utf16(name) != 0x80000000)
    key = shmsem.key_from_name(name)
    assert key == reference_key(name)
    assert 0 <= key < 2**31


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), max_size=20))
def test_key_from_name_any_code_units(units: list[int]) -> None:
    # Any sequence of 16-bit units, lone surrogates included.
    name = "".join(map(chr, units))
    assume(fnv1a_utf16(name) != 0x80000000)
    assert shmsem.key_from_name(name) == reference_key(name)


def test_reference_hashes_the_overflow_name() -> None:
    assert fnv1a_utf16(OVERFLOW_NAME) == 0x80000000
    with pytest.raises(OverflowError):
        reference_key(OVERFLOW_NAME)


def test_key_from_name_overflow_raises_valueerror() -> None:
    # .NET throws OverflowException for Math.Abs(int.MinValue); shmsem must
    # not invent a key (0x80000000 would be a key .NET can never produce).
    with pytest.raises(ValueError, match="0x80000000"):
        shmsem.key_from_name(OVERFLOW_NAME)


@pytest.mark.parametrize("bad", [b"abc", None, 1, ["a"]])
def test_key_from_name_rejects_non_str(bad: object) -> None:
    with pytest.raises(TypeError):
        shmsem.key_from_name(bad)  # type: ignore[arg-type]


def test_key_from_name_key_is_usable(unique_key) -> None:
    name = f"shmsem-test-{os.getpid()}-{unique_key()}"
    key = shmsem.key_from_name(name)
    q = create_or_skip(key, lambda: shmsem.MessageQueue.create(key))
    try:
        assert q.key == key
        assert q.stat().key == key
    finally:
        q.remove()


# ---------------------------------------------------------------------------
# The range rule


@pytest.mark.parametrize("key", [2**32, -(2**31) - 1, 2**40, -(2**40), 2**64, 2**200])
def test_out_of_range_keys_refused(key: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        normalize_key(key)
    # Python wrappers...
    with pytest.raises(ValueError):
        shmsem.SharedMemory.open(key)
    with pytest.raises(ValueError):
        shmsem.SharedMemory.create(key, 64)
    with pytest.raises(ValueError):
        shmsem.SharedMemory(key, 64)
    with pytest.raises(ValueError):
        shmsem.Semaphore(key)
    with pytest.raises(ValueError):
        shmsem.SemaphoreSet.create(key, 2)
    with pytest.raises(ValueError):
        shmsem.Lock.open(key)
    with pytest.raises(ValueError):
        shmsem.MessageQueue(key)
    with pytest.raises(ValueError):
        shmsem.PosixIpcHelper(key, 64)
    with pytest.raises(ValueError):
        shmsem.PosixIpcHelper.create_semaphore(key)
    # ...and the C core, which parses keys on its own.
    with pytest.raises(ValueError):
        _core.shmget(key, 64, 0)
    with pytest.raises(ValueError):
        _core.semget(key, 1, 0)
    with pytest.raises(ValueError):
        _core.msgget(key, 0)


@pytest.mark.parametrize("key", [True, False, 1.0, 0.0, "1", b"1", 1 + 0j, [1]])
def test_non_int_keys_refused(key: object) -> None:
    with pytest.raises(TypeError):
        normalize_key(key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        shmsem.SharedMemory.open(key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        shmsem.SharedMemory(key, 64)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        shmsem.Semaphore(key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        shmsem.MessageQueue.create(key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _core.msgget(key, 0)


@pytest.mark.parametrize(
    "key, signed",
    [
        (0, 0),
        (1, 1),
        (2**31 - 1, 2**31 - 1),
        (2**31, -(2**31)),
        (2**32 - 1, -1),
        (-1, -1),
        (-(2**31), -(2**31)),
        (0xDEADBEEF, 0xDEADBEEF - 2**32),
    ],
)
def test_normalize_key_signed_form(key: int, signed: int) -> None:
    assert normalize_key(key) == signed


def test_none_is_ipc_private() -> None:
    assert shmsem.IPC_PRIVATE == 0
    assert normalize_key(None) == 0
    assert normalize_key(shmsem.IPC_PRIVATE) == 0


@pytest.mark.parametrize("unsigned, signed", [(2**32 - 1, -1), (2**31, -(2**31))])
def test_boundary_keys_reach_the_same_kernel_key(unsigned: int, signed: int) -> None:
    """The unsigned and signed spellings name one kernel object."""
    q = create_or_skip(unsigned, lambda: shmsem.MessageQueue.create(unsigned))
    try:
        assert q.key == signed
        assert q.stat().key == signed
        assert shmsem.MessageQueue.open(signed).id == q.id
        assert shmsem.MessageQueue.open(unsigned).id == q.id
        with pytest.raises(shmsem.ExistsError):
            shmsem.MessageQueue.create(signed)
    finally:
        q.remove()
    sem = create_or_skip(signed, lambda: shmsem.Semaphore.create(signed, 0))
    try:
        assert sem.key == signed
        assert shmsem.Semaphore.open(unsigned).id == sem.id
    finally:
        sem.remove()


def test_high_bit_key_from_unique_key(unique_key) -> None:
    key = unique_key() | 0x80000000
    signed = key - 2**32
    with create_or_skip(key, lambda: shmsem.SharedMemory.create(key, 64)) as a:
        assert a.key == signed
        assert a.stat().key == signed
        with shmsem.SharedMemory.open(signed) as b:
            assert b.id == a.id
        with shmsem.SharedMemory.open(key) as c:
            assert c.id == a.id


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**31), max_value=2**32 - 1))
def test_in_range_keys_fuzzed(key: int) -> None:
    signed = normalize_key(key)
    assert -(2**31) <= signed < 2**31
    assert (signed - key) % 2**32 == 0
    # The C parser accepts it too: flags 0 only looks the key up; key 0 would
    # create a private queue, so it is left out.
    assume(signed != 0)
    try:
        qid = _core.msgget(key, 0)
    except shmsem.NotFoundError:
        return
    except shmsem.PermissionDeniedError:
        return
    # Someone else's queue: we only looked it up.
    assert isinstance(qid, int)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.integers(min_value=2**32),
        st.integers(max_value=-(2**31) - 1),
    )
)
def test_out_of_range_keys_fuzzed(key: int) -> None:
    with pytest.raises(ValueError):
        normalize_key(key)
    with pytest.raises(ValueError):
        _core.msgget(key, _core.IPC_CREAT | 0o600)
    with pytest.raises(ValueError):
        _core.shmget(key, 64, _core.IPC_CREAT | 0o600)


# ---------------------------------------------------------------------------
# ftok


def libc_ftok(path: str, proj_id: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ftok.restype = ctypes.c_int
    libc.ftok.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc.ftok(os.fsencode(path), proj_id)


def test_ftok_on_a_real_file(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "anchor"
    f.write_bytes(b"")
    st_ = os.stat(f)
    for proj_id in (1, 0x41, 255):
        key = shmsem.ftok(f, proj_id)
        # glibc's formula, written out: proj in the top byte, then the low
        # byte of the device, then the low 16 bits of the inode.
        raw = ((proj_id & 0xFF) << 24) | ((st_.st_dev & 0xFF) << 16) | (st_.st_ino & 0xFFFF)
        assert key == normalize_key(raw)
        assert key == libc_ftok(str(f), proj_id)
        assert -(2**31) <= key < 2**31
    assert shmsem.ftok(str(f), 7) == shmsem.ftok(os.fsencode(str(f)), 7) == shmsem.ftok(f, 7)
    assert shmsem.ftok(f, 1) != shmsem.ftok(f, 2)


def test_ftok_key_opens_objects(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "anchor"
    f.write_bytes(b"")
    key = shmsem.ftok(f, 0x5E)
    with create_or_skip(key, lambda: shmsem.SharedMemory.create(key, 64)) as a:
        a.write(b"via ftok")
        with shmsem.SharedMemory.open(shmsem.ftok(str(f), 0x5E)) as b:
            assert b.read() == b"via ftok"


@pytest.mark.parametrize("proj_id", [0, 256, -1, 2**31, 2**40])
def test_ftok_proj_id_range(tmp_path: pathlib.Path, proj_id: int) -> None:
    with pytest.raises(ValueError):
        shmsem.ftok(tmp_path, proj_id)


@pytest.mark.parametrize("proj_id", [True, 1.0, "1", None])
def test_ftok_proj_id_type(tmp_path: pathlib.Path, proj_id: object) -> None:
    with pytest.raises(TypeError):
        shmsem.ftok(tmp_path, proj_id)  # type: ignore[arg-type]


def test_ftok_missing_path(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(shmsem.NotFoundError) as info:
        shmsem.ftok(missing, 1)
    assert isinstance(info.value, FileNotFoundError)
    assert "ftok" in str(info.value)
    assert "does-not-exist" in str(info.value)
