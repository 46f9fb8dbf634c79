"""Security: key squatting, default modes, and the kernel's permission checks
as shmsem reports them.

* Squatting: another user (nobody, 65534) pre-creates a well-known key,
  permissively (0666) and with valid contents -- a real Channel header, a
  planted frame, a planted message -- or creates it 0600 and then gives it
  away (IPC_SET uid=0; only the creator uid still tells).  Every opener and
  every create-or-open of every type must refuse it with ForeignObjectError
  before it attaches or changes anything, unless trust=True; so must the CLI.
* Every object type created with default arguments has mode 0600.
* A 0600 object is closed to another uid, by key and by id alike
  (PermissionDeniedError).
* A 0640 object whose group is 4242: a member of that group (uid 65534 with
  4242 as a supplementary group) may read -- attach read-only, GETVAL,
  wait-for-zero, receive -- and nothing else (PermissionDeniedError); a
  non-member gets nothing.

Children run as other users through helpers_hostile.run_as (root drops to
the uid/gid and supplementary groups, keeping only the right to read files;
see proc_helpers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers_hostile as H
import pytest
from ipc_helpers import remove_key, remove_object
from proc_helpers import cannot_run_as

import shmsem
from shmsem import _core

NOBODY = 65534
GROUP = 4242


@pytest.fixture(autouse=True)
def root_only() -> None:
    reason = cannot_run_as(NOBODY)
    if reason:
        pytest.skip(reason)


@pytest.fixture
def cleanup_keys() -> Iterator[list[int]]:
    """Every object under these keys is removed at teardown, whoever owns it."""
    keys: list[int] = []
    yield keys
    for key in keys:
        remove_key(key)


def sysvipc_row(kind: str, ident: int) -> dict[str, int]:
    """The kernel's own view of an object, from /proc/sysvipc."""
    lines = Path("/proc/sysvipc", kind).read_text().splitlines()
    names = lines[0].split()
    for line in lines[1:]:
        f = line.split()
        if int(f[1]) == ident:
            return {n: int(v, 8) if n == "perms" else int(v) for n, v in zip(names, f)}
    raise AssertionError(f"{kind} id {ident} is not in /proc/sysvipc/{kind}")


PROBE_PRELUDE = r"""
import json, shmsem, sys
from shmsem.compat import PosixIpcHelper
results = {}
def probe(label, fn):
    try:
        got = fn()
    except BaseException as e:
        results[label] = [type(e).__name__, str(e)[:200]]
    else:
        results[label] = ["ok", repr(got)[:200]]
"""
PROBE_END = "\nprint(json.dumps(results), flush=True)\n"


def run_probes(code: str, uid: int = NOBODY, gid: int = NOBODY,
               groups: list[int] | None = None) -> dict[str, list[str]]:
    rc, out, err = H.run_as(PROBE_PRELUDE + code + PROBE_END, uid, gid, groups or [])
    assert rc == 0 and H.sanitizer_report(err) is None, f"rc={rc}\n{out}\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Default modes


def made_with_defaults(k: Any) -> list[tuple[str, Any, str, int]]:
    """One object of every type, each made with default arguments and key
    k(): (label, object, kind, id)."""
    c = shmsem
    made: list[tuple[str, Any, str, int]] = []
    for label, kind, ctor in [
        ("SharedMemory()", "shm", lambda: c.SharedMemory(k(), 64)),
        ("SharedMemory.create", "shm", lambda: c.SharedMemory.create(k(), 64)),
        ("SemaphoreSet()", "sem", lambda: c.SemaphoreSet(k(), 2)),
        ("SemaphoreSet.create", "sem", lambda: c.SemaphoreSet.create(k(), 2)),
        ("Semaphore()", "sem", lambda: c.Semaphore(k())),
        ("Semaphore.create", "sem", lambda: c.Semaphore.create(k())),
        ("Lock()", "sem", lambda: c.Lock(k())),
        ("Lock.create", "sem", lambda: c.Lock.create(k())),
        ("MessageQueue()", "msg", lambda: c.MessageQueue(k())),
        ("MessageQueue.create", "msg", lambda: c.MessageQueue.create(k())),
        ("Channel()", "shm", lambda: c.Channel(k(), 256)),
        ("Channel.create", "shm", lambda: c.Channel.create(k(), 256)),
        ("Mailbox()", "shm", lambda: c.Mailbox(k(), 64)),
        ("Mailbox.create", "shm", lambda: c.Mailbox.create(k(), 64)),
        ("PosixIpcHelper()", "shm", lambda: c.PosixIpcHelper(k(), 64)),
        ("PosixIpcHelper.create_semaphore", "sem", lambda: c.PosixIpcHelper.create_semaphore(k())),
    ]:
        obj = ctor()
        if isinstance(obj, int):
            ident = obj
        elif isinstance(obj, c.PosixIpcHelper):
            ident = obj.shared_memory.id
        else:
            ident = obj.id
        made.append((label, obj, kind, ident))
    return made


def test_every_object_type_defaults_to_mode_0600(unique_key, reliability) -> None:
    made: list[tuple[str, Any, str, int]] = []
    try:
        made += made_with_defaults(unique_key)
        made += [(f"{label} (private)", o, kind, i)
                 for label, o, kind, i in made_with_defaults(lambda: None)]
        wrong = {label: oct(sysvipc_row(kind, ident)["perms"])
                 for label, _, kind, ident in made
                 if sysvipc_row(kind, ident)["perms"] & 0o777 != 0o600}
        reliability(inputs=len(made), crashes=0)
        assert not wrong, f"objects created with defaults whose mode is not 0600: {wrong}"
    finally:
        for _, obj, kind, ident in made:
            if kind == "shm":
                close_quietly(obj)  # each is its segment's owner: this removes it
            else:
                remove_object(kind, ident)


# ---------------------------------------------------------------------------
# Squatting


SQUATTER = r"""
import json, os, shmsem, helpers_hostile as H
K = {keys}
give_away = {give_away}
mode = 0o600 if give_away else 0o666
ch = shmsem.Channel.create(K["channel"], 256, mode=mode)
ch.put_bytes(b"planted message")
mb = shmsem.Mailbox.create(K["mailbox"], 64, mode=mode)
mb.publish(b"planted value")
shm = shmsem.SharedMemory.create(K["shm"], 4096, mode=mode)
shm.write(b"planted frame")
sem = shmsem.Semaphore.create(K["sem"], 1, mode=mode)
sset = shmsem.SemaphoreSet.create(K["set"], 2, values=[1, 1], mode=mode)
q = shmsem.MessageQueue.create(K["msg"], mode=mode)
q.send(b"planted mail")
ids = {{"channel": ch.id, "mailbox": mb.id, "shm": shm.id, "sem": sem.id, "set": sset.id,
        "msg": q.id}}
if give_away:
    # Give every object to root: uid 0, mode 0600, exactly what a root
    # program would have made.  Only the creator uid (cuid) still tells.
    for name in ("channel", "mailbox", "shm"):
        H.set_ipc_owner("shm", ids[name], uid=0, gid=0)
    for name in ("sem", "set"):
        H.set_ipc_owner("sem", ids[name], uid=0, gid=0)
    H.set_ipc_owner("msg", ids["msg"], uid=0, gid=0)
for o in (ch, mb, shm):
    o.owner = False   # leave them behind on exit, as a squatter would
    o.close()
print(json.dumps(ids), flush=True)
"""


def openers(K: dict[str, int], trust: bool = False, mode: int | None = None
            ) -> dict[str, Any]:
    """Every way to open each key, by type."""
    kw: dict[str, Any] = {"trust": True} if trust else {}
    if mode is not None:
        kw["mode"] = mode
    c = shmsem
    return {
        "Channel.open": lambda: c.Channel.open(K["channel"], **kw),
        "Channel()": lambda: c.Channel(K["channel"], 256, **kw),
        "Mailbox.open": lambda: c.Mailbox.open(K["mailbox"], **kw),
        "Mailbox()": lambda: c.Mailbox(K["mailbox"], 64, **kw),
        "SharedMemory.open": lambda: c.SharedMemory.open(K["shm"], **kw),
        "SharedMemory.open(readonly)": lambda: c.SharedMemory.open(K["shm"], readonly=True, **kw),
        "SharedMemory()": lambda: c.SharedMemory(K["shm"], 64, **kw),
        "PosixIpcHelper()": lambda: c.PosixIpcHelper(K["shm"], 64,
                                                     **{k: v for k, v in kw.items() if k == "trust"}),
        "PosixIpcHelper.attach_existing": lambda: c.PosixIpcHelper.attach_existing(
            K["shm"], **{k: v for k, v in kw.items() if k == "trust"}),
        "Semaphore.open": lambda: c.Semaphore.open(K["sem"], **kw),
        "Semaphore()": lambda: c.Semaphore(K["sem"], 1, **kw),
        "Lock.open": lambda: c.Lock.open(K["sem"], **kw),
        "Lock()": lambda: c.Lock(K["sem"], **kw),
        "SemaphoreSet.open": lambda: c.SemaphoreSet.open(K["set"], **kw),
        "SemaphoreSet()": lambda: c.SemaphoreSet(K["set"], 2, **kw),
        "PosixIpcHelper.create_semaphore": lambda: c.PosixIpcHelper.create_semaphore(
            K["sem"], **{k: v for k, v in kw.items() if k == "trust"}),
        "MessageQueue.open": lambda: c.MessageQueue.open(K["msg"], **kw),
        "MessageQueue()": lambda: c.MessageQueue(K["msg"], **kw),
    }


def close_quietly(obj: Any) -> None:
    for name in ("close", "dispose"):
        if hasattr(obj, name):
            getattr(obj, name)()
            return


def squat(unique_key, cleanup_keys: list[int], give_away: bool) -> tuple[dict[str, int],
                                                                      dict[str, int]]:
    K = {name: unique_key() for name in ("channel", "mailbox", "shm", "sem", "set", "msg")}
    cleanup_keys.extend(K.values())
    rc, out, err = H.run_as(SQUATTER.format(keys=json.dumps(K), give_away=give_away),
                            NOBODY, NOBODY, [])
    assert rc == 0, f"the squatter failed: {out}\n{err[-3000:]}"
    return K, json.loads(out.strip().splitlines()[-1])


def snapshot(ids: dict[str, int]) -> dict[str, Any]:
    """What a refused open must not have changed (nor attached)."""
    return {
        "shm": {n: (sysvipc_row("shm", ids[n])["nattch"], sysvipc_row("shm", ids[n])["lpid"])
                for n in ("channel", "mailbox", "shm")},
        "sem": [_core.semctl(ids["sem"], 0, _core.GETVAL), _core.sem_getall(ids["set"])],
        "msg": sysvipc_row("msg", ids["msg"])["qnum"],
    }


@pytest.mark.parametrize("give_away", [False, True], ids=["permissive-0666", "given-to-root"])
def test_squatted_keys_are_refused_by_every_opener(unique_key, cleanup_keys, reliability,
                                                   give_away) -> None:
    K, ids = squat(unique_key, cleanup_keys, give_away)
    for name, kind in (("channel", "shm"), ("shm", "shm"), ("sem", "sem"), ("msg", "msg")):
        row = sysvipc_row(kind, ids[name])
        assert row["cuid"] == NOBODY and row["uid"] == (0 if give_away else NOBODY), row
    before = snapshot(ids)
    problems = []
    tried = 0
    for mode in (None, 0o666, 0o600):
        for label, fn in openers(K, mode=mode).items():
            tried += 1
            try:
                obj = fn()
            except shmsem.ForeignObjectError as e:
                msg = str(e)
                if f"0x{K[_key_of(label)]:08x}" not in msg or str(NOBODY) not in msg:
                    problems.append(f"{label} mode={mode}: the message names neither the key "
                                    f"nor the squatter: {msg}")
            except BaseException as e:  # noqa: BLE001 - judged here
                problems.append(f"{label} mode={mode}: {type(e).__name__}: {e}")
            else:
                problems.append(f"{label} mode={mode}: OPENED the squatter's object: {obj!r}")
                close_quietly(obj)
    after = snapshot(ids)
    if after != before:
        problems.append(f"refused opens changed or attached the objects: {before} -> {after}")
    reliability(give_away=give_away, inputs=tried, refused=tried - len(problems), crashes=0)
    assert not problems, "\n".join(problems)


def _key_of(label: str) -> str:
    if label.startswith("Channel"):
        return "channel"
    if label.startswith("Mailbox"):
        return "mailbox"
    if label.startswith(("SharedMemory", "PosixIpcHelper()", "PosixIpcHelper.attach")):
        return "shm"
    if label.startswith(("Semaphore.", "Semaphore(", "Lock", "PosixIpcHelper.create")):
        return "sem"
    if label.startswith("SemaphoreSet"):
        return "set"
    return "msg"


def test_trust_opens_the_squatters_objects_and_never_removes_them(unique_key, cleanup_keys,
                                                                   reliability) -> None:
    """trust=True is the way to share on purpose: it opens, it shows what the
    squatter planted (which is what the check protects against), and
    closing a trusted handle never removes the other user's object."""
    K, ids = squat(unique_key, cleanup_keys, give_away=False)
    ch = shmsem.Channel.open(K["channel"], trust=True)
    assert (ch.id, ch.owner, ch.get_bytes(timeout=5)) == (ids["channel"], False,
                                                         b"planted message")
    ch.close()
    mb = shmsem.Mailbox(K["mailbox"], 64, trust=True)
    assert (mb.created, mb.read()) == (False, (1, b"planted value"))
    mb.close()
    shm = shmsem.SharedMemory(K["shm"], 64, trust=True)
    assert (shm.created, shm.owner, shm.read()) == (False, False, b"planted frame")
    shm.close()
    helper = shmsem.PosixIpcHelper(K["shm"], 64, trust=True)
    assert helper.read() == b"planted frame"
    helper.dispose()
    assert shmsem.Semaphore(K["sem"], 5, trust=True).value == 1  # not reset to 5
    assert shmsem.PosixIpcHelper.create_semaphore(K["sem"], trust=True) == ids["sem"]
    assert list(shmsem.SemaphoreSet(K["set"], 2, trust=True).values) == [1, 1]
    assert shmsem.MessageQueue(K["msg"], trust=True).receive(block=False) == (b"planted mail", 1)
    for name, kind in (("channel", "shm"), ("mailbox", "shm"), ("shm", "shm"), ("sem", "sem"),
                       ("set", "sem"), ("msg", "msg")):
        assert sysvipc_row(kind, ids[name])["uid"] == NOBODY  # still there, still theirs
    reliability(inputs=9, crashes=0)


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shmsem", *args], input=stdin and stdin.decode(),
                          capture_output=True, text=True, timeout=60, env=H.child_env(),
                          cwd="/", check=False)


def test_cli_show_names_the_squatter(unique_key, cleanup_keys) -> None:
    K, ids = squat(unique_key, cleanup_keys, give_away=False)
    r = cli("show", f"0x{K['shm']:08x}", "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)["objects"][0]
    assert rec["uid"] == NOBODY and rec["id"] == ids["shm"], rec


def test_cli_read_refuses_a_squatted_key(unique_key, cleanup_keys, reliability) -> None:
    """`shmsem read KEY` prints what sits under a well-known key.  When another
    user owns it (here 0666, planted), that is the squatter's injected data:
    as SharedMemory.open does, the CLI must refuse it (exit 1, naming the
    owner) unless told to trust it.  The CLI has no such option."""
    K, _ = squat(unique_key, cleanup_keys, give_away=False)
    r = cli("read", f"0x{K['shm']:08x}")
    reliability(inputs=1, crashes=0)
    assert r.returncode == 1 and "planted" not in r.stdout, (
        f"shmsem read of a key squatted by uid {NOBODY} exited {r.returncode} and printed "
        f"{r.stdout!r} (stderr {r.stderr!r})")


def test_cli_read_and_write_with_trust_use_a_squatted_key(unique_key, cleanup_keys) -> None:
    """--trust is the CLI's trust=True: the user says the other owner is expected."""
    K, ids = squat(unique_key, cleanup_keys, give_away=False)
    r = cli("read", "--trust", f"0x{K['shm']:08x}")
    assert (r.returncode, r.stdout) == (0, "planted frame\n"), r.stderr
    r = cli("write", "--trust", f"0x{K['shm']:08x}", "expected reply")
    assert r.returncode == 0, r.stderr
    with shmsem.SharedMemory.from_id(ids["shm"], readonly=True) as shm:
        assert shm.read() == b"expected reply"


def test_cli_write_refuses_a_squatted_key(unique_key, cleanup_keys, reliability) -> None:
    """`shmsem write KEY DATA` into another user's segment hands DATA to that
    user: the CLI must refuse (exit 1) and leave the segment alone."""
    K, ids = squat(unique_key, cleanup_keys, give_away=False)
    r = cli("write", f"0x{K['shm']:08x}", "secret for the real server")
    with shmsem.SharedMemory.from_id(ids["shm"], readonly=True) as shm:
        frame = shm.read()
    reliability(inputs=1, crashes=0)
    assert r.returncode == 1 and frame == b"planted frame", (
        f"shmsem write to a key squatted by uid {NOBODY} exited {r.returncode} "
        f"({r.stdout.strip()!r}); the squatter's segment now holds {frame!r}")


# ---------------------------------------------------------------------------
# A 0600 object is closed to another uid, by key and by id


def test_0600_objects_are_closed_to_another_uid_by_key_and_by_id(unique_key, reliability) -> None:
    objs = {
        "shm": shmsem.SharedMemory.create(unique_key(), 4096),
        "channel": shmsem.Channel.create(unique_key(), 256),
        "mailbox": shmsem.Mailbox.create(unique_key(), 64),
        "sem": shmsem.Semaphore.create(unique_key(), 1),
        "msg": shmsem.MessageQueue.create(unique_key()),
    }
    try:
        objs["shm"].write(b"root's frame")
        objs["msg"].send(b"root's mail")
        keys = {n: o.key for n, o in objs.items()}
        ids = {n: o.id for n, o in objs.items()}
        code = f"K = {keys!r}\nI = {ids!r}\n" + r"""
c = shmsem
for label, fn in [
    ("SharedMemory.open", lambda: c.SharedMemory.open(K["shm"], trust=True)),
    ("SharedMemory.open(readonly)", lambda: c.SharedMemory.open(K["shm"], readonly=True, trust=True)),
    ("SharedMemory.from_id", lambda: c.SharedMemory.from_id(I["shm"])),
    ("SharedMemory.from_id(readonly)", lambda: c.SharedMemory.from_id(I["shm"], readonly=True)),
    ("PosixIpcHelper.attach_existing", lambda: PosixIpcHelper.attach_existing(K["shm"], trust=True)),
    ("Channel.open", lambda: c.Channel.open(K["channel"], trust=True)),
    ("Channel.from_id", lambda: c.Channel.from_id(I["channel"])),
    ("Mailbox.open", lambda: c.Mailbox.open(K["mailbox"], trust=True)),
    ("Mailbox.from_id", lambda: c.Mailbox.from_id(I["mailbox"])),
    ("Semaphore.open", lambda: c.Semaphore.open(K["sem"], trust=True)),
    ("Semaphore.from_id", lambda: c.Semaphore.from_id(I["sem"])),
    ("Lock.from_id", lambda: c.Lock.from_id(I["sem"])),
    ("SemaphoreSet.from_id", lambda: c.SemaphoreSet.from_id(I["sem"])),
    ("semaphore_wait", lambda: PosixIpcHelper.semaphore_wait(I["sem"], 0)),
    ("semaphore_signal", lambda: PosixIpcHelper.semaphore_signal(I["sem"])),
    ("destroy_semaphore", lambda: PosixIpcHelper.destroy_semaphore(I["sem"])),
    ("MessageQueue.open", lambda: c.MessageQueue.open(K["msg"], trust=True)),
    ("MessageQueue.from_id", lambda: c.MessageQueue.from_id(I["msg"])),
]:
    probe(label, fn)
"""
        got = run_probes(code)
        not_denied = {k: v for k, v in got.items() if v[0] != "PermissionDeniedError"}
        unchanged = (objs["shm"].read() == b"root's frame" and objs["sem"].value == 1
                     and objs["msg"].stat().current_messages == 1
                     and all(sysvipc_row(k, i)["uid"] == 0 for k, i in
                             (("shm", ids["shm"]), ("sem", ids["sem"]), ("msg", ids["msg"]))))
        reliability(inputs=len(got), refused=len(got) - len(not_denied), crashes=0)
        assert len(got) == 18 and not not_denied, (
            f"uid {NOBODY} was not refused (PermissionDeniedError) a 0600 object of root's: "
            f"{not_denied}")
        assert unchanged, "a refused call changed root's objects"
    finally:
        for name, o in objs.items():
            if name in ("sem", "msg"):
                o.remove()
            else:
                o.close()


# ---------------------------------------------------------------------------
# 0640 with group 4242: a member reads, and only reads


GROUP_CODE = r"""
c = shmsem
def ro_shm():
    s = c.SharedMemory.open(K["shm"], readonly=True, mode=0o640, trust=True)
    out = [s.read(), s.readonly, s.buf.readonly]
    for what, fn in (("write", lambda: s.write(b"x")), ("write_at", lambda: s.write_at(0, b"x"))):
        try:
            fn()
        except c.PermissionDeniedError:
            out.append(what + " denied")
    s.close()
    return out
probe("SharedMemory.open(readonly)", ro_shm)
probe("SharedMemory.open without trust", lambda: c.SharedMemory.open(K["shm"], readonly=True, mode=0o640))
probe("SharedMemory.open(writable)", lambda: c.SharedMemory.open(K["shm"], mode=0o640, trust=True))
probe("SharedMemory.from_id(readonly)", lambda: c.SharedMemory.from_id(I["shm"], readonly=True).read())
probe("SharedMemory.from_id(writable)", lambda: c.SharedMemory.from_id(I["shm"]))
probe("PosixIpcHelper.attach_existing", lambda: PosixIpcHelper.attach_existing(K["shm"], trust=True))
probe("Channel.open", lambda: c.Channel.open(K["channel"], mode=0o640, trust=True))
probe("Mailbox.open", lambda: c.Mailbox.open(K["mailbox"], mode=0o640, trust=True))
sem = None
def open_sem():
    global sem
    sem = c.Semaphore.open(K["sem"], mode=0o640, trust=True)
    return sem.id
probe("Semaphore.open", open_sem)
if sem is not None:
    probe("Semaphore.value", lambda: sem.value)
    probe("Semaphore counts", lambda: (sem.ncnt, sem.zcnt, sem.last_pid > 0))
    probe("Semaphore.wait_zero", lambda: sem.wait_zero(timeout=0))
    probe("Semaphore.acquire", lambda: sem.acquire(timeout=0))
    probe("Semaphore.release", lambda: sem.release())
    probe("Semaphore.value=", lambda: setattr(sem, "value", 3))
    probe("Semaphore.remove", lambda: sem.remove())
def set_calls():
    s = c.SemaphoreSet.open(K["sem"], mode=0o640, trust=True)
    out = [list(s.values), s.op([(0, 0)], nowait=True)]
    for what, fn in (("op+1", lambda: s.op([(0, 1)])), ("values=", lambda: setattr(s, "values", [2]))):
        try:
            fn()
        except c.PermissionDeniedError:
            out.append(what + " denied")
    return out
probe("SemaphoreSet", set_calls)
def lock_calls():
    lk = c.Lock.open(K["lock"], mode=0o640, trust=True)
    out = [lk.locked()]
    try:
        lk.acquire(timeout=0)
    except c.PermissionDeniedError:
        out.append("acquire denied")
    return out
probe("Lock", lock_calls)
q = None
def open_q():
    global q
    q = c.MessageQueue.open(K["msg"], mode=0o640, trust=True)
    return q.stat().current_messages
probe("MessageQueue.open", open_q)
if q is not None:
    probe("MessageQueue.receive", lambda: q.receive(block=False))
    probe("MessageQueue.send", lambda: q.send(b"from the group", block=False))
    probe("MessageQueue.max_bytes=", lambda: setattr(q, "max_bytes", 100))
    probe("MessageQueue.remove", lambda: q.remove())
"""

MEMBER_WANT = {
    "SharedMemory.open(readonly)": ["ok", ("[b'frame for the group', True, True, "
                                           "'write denied', 'write_at denied']")],
    "SharedMemory.open without trust": ["ForeignObjectError"],
    "SharedMemory.open(writable)": ["PermissionDeniedError"],
    "SharedMemory.from_id(readonly)": ["ok", "b'frame for the group'"],
    "SharedMemory.from_id(writable)": ["PermissionDeniedError"],
    "PosixIpcHelper.attach_existing": ["PermissionDeniedError"],
    "Channel.open": ["PermissionDeniedError"],
    "Mailbox.open": ["PermissionDeniedError"],
    "Semaphore.open": ["ok"],
    "Semaphore.value": ["ok", "1"],
    "Semaphore counts": ["ok", "(0, 0, True)"],
    "Semaphore.wait_zero": ["ok", "False"],
    "Semaphore.acquire": ["PermissionDeniedError"],
    "Semaphore.release": ["PermissionDeniedError"],
    "Semaphore.value=": ["PermissionDeniedError"],
    "Semaphore.remove": ["PermissionDeniedError"],
    "SemaphoreSet": ["ok", "[[1], False, 'op+1 denied', 'values= denied']"],
    "Lock": ["ok", "[False, 'acquire denied']"],
    "MessageQueue.open": ["ok", "2"],
    "MessageQueue.receive": ["ok", "(b'mail for the group', 7)"],
    "MessageQueue.send": ["PermissionDeniedError"],
    "MessageQueue.max_bytes=": ["PermissionDeniedError"],
    "MessageQueue.remove": ["PermissionDeniedError"],
}


def test_group_member_of_a_0640_object_reads_and_only_reads(unique_key, reliability) -> None:
    """Root's objects, mode 0640, group 4242.  A member of 4242 (uid 65534)
    may attach read-only, read the frame, GETVAL, wait for zero and receive;
    every write (writable attach, semop that alters, SETVAL, send, IPC_SET,
    IPC_RMID) is PermissionDeniedError -- and so are a Channel and a Mailbox,
    which need a writable attach.  By key, the squatting check also needs
    trust=True: the objects belong to root.  A non-member gets nothing."""
    objs = {
        "shm": shmsem.SharedMemory.create(unique_key(), 4096, mode=0o640),
        "channel": shmsem.Channel.create(unique_key(), 256, mode=0o640),
        "mailbox": shmsem.Mailbox.create(unique_key(), 64, mode=0o640),
        "sem": shmsem.Semaphore.create(unique_key(), 1, mode=0o640),
        "lock": shmsem.Lock.create(unique_key(), mode=0o640),
        "msg": shmsem.MessageQueue.create(unique_key(), mode=0o640),
    }
    try:
        objs["shm"].write(b"frame for the group")
        objs["msg"].send(b"mail for the group", 7)
        objs["msg"].send(b"second", 7)
        for name, o in objs.items():
            kind = {"sem": "sem", "lock": "sem", "msg": "msg"}.get(name, "shm")
            H.set_ipc_owner(kind, o.id, gid=GROUP)
            row = sysvipc_row(kind, o.id)
            assert (row["gid"], row["perms"] & 0o777) == (GROUP, 0o640), row
        keys = {n: o.key for n, o in objs.items()}
        ids = {n: o.id for n, o in objs.items()}
        code = f"K = {keys!r}\nI = {ids!r}\n" + GROUP_CODE
        member = run_probes(code, NOBODY, NOBODY, [GROUP])
        wrong = {}
        for label, want in MEMBER_WANT.items():
            got = member.get(label)
            if got is None or got[0] != want[0] or (len(want) > 1 and got[1] != want[1]):
                wrong[label] = {"got": got, "want": want}
        outsider = run_probes(code, NOBODY, NOBODY, [])
        opened = {k: v for k, v in outsider.items() if v[0] not in ("PermissionDeniedError",
                                                                     "ForeignObjectError")}
        unchanged = (objs["shm"].read() == b"frame for the group" and objs["sem"].value == 1
                     and not objs["lock"].locked()
                     and objs["msg"].stat().current_messages == 1)
        reliability(inputs=len(member) + len(outsider), crashes=0,
                    member_results=len(MEMBER_WANT) - len(wrong))
        assert not wrong, f"group member (uid {NOBODY}, groups [{GROUP}]): {wrong}"
        assert not opened, f"a non-member (uid {NOBODY}, no groups) got in: {opened}"
        assert unchanged, "the group member changed something it may only read"
    finally:
        for name, o in objs.items():
            if name in ("sem", "lock", "msg"):
                o.remove()
            else:
                o.close()
