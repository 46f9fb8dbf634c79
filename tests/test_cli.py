"""The `shmsem` command line, run as real subprocesses against real objects.

Every object a test creates is removed in a finally (the autouse leak check
in conftest.py fails the test otherwise).  `gc` is run either scoped to the
test's own segments (gc KEY|ID...) or, unscoped, inside a private IPC
namespace (unshare --ipc), so that the suite never collects orphans that
belong to anyone else on the machine.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import pytest
from ipc_helpers import remove_object

import shmsem
from shmsem.cli.sysv_table import IpcObject
from shmsem.cli.target import Target, find, find_one, parse_id, parse_target
from shmsem.cli.util import CliError
from shmsem.errors import format_key

NOBODY = 65534
PROC = Path("/proc/sysvipc")
TIMEOUT = 30

# The object record of `ls --json` / `show --json` (docs/cli.md, "Object record").
RECORD_FIELDS = {
    "type", "key", "key_hex", "id", "owner", "uid", "group", "gid", "creator_user", "cuid",
    "cgid", "mode", "mode_str", "size", "nsems", "messages", "bytes", "nattch", "cpid",
    "creator_state", "creator_alive", "creator_command", "lpid", "lspid", "lrpid", "atime",
    "dtime", "ctime", "otime", "stime", "rtime", "rss", "swap", "removed", "locked", "orphan",
    "shmsem", "inspect_error",
}
SHOW_EXTRA = {"attached_pids", "frame", "semaphores", "max_bytes", "detail_error"}
SHMSEM_FIELDS = {
    "kind", "version", "capacity", "used", "fill", "messages", "last_seq", "put_count",
    "get_count", "consumers_waiting", "producers_waiting", "producer_lock_pid",
    "consumer_lock_pid", "cell_stride", "current_cell", "readers_waiting", "writer_lock_pid", "recoveries",
    "creator_pid", "problem",
}


# ---------------------------------------------------------------------------
# Helpers


def shmsem_cmd(*args: str, env: Optional[dict[str, str]] = None, input: Optional[bytes] = None,
               timeout: float = TIMEOUT, exe: Optional[Sequence[str]] = None
               ) -> subprocess.CompletedProcess[bytes]:
    cmd = list(exe or [sys.executable, "-m", "shmsem"]) + list(args)
    return subprocess.run(cmd, capture_output=True, env=env, input=input, timeout=timeout,
                          cwd="/")


def ok(*args: str, **kw: Any) -> str:
    r = shmsem_cmd(*args, **kw)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, f"shmsem {' '.join(args)} -> {r.returncode}: {err}"
    assert "Traceback" not in err
    return r.stdout.decode()


def as_json(*args: str, **kw: Any) -> Any:
    return json.loads(ok(*args, **kw))


def fails(rc: int, *args: str, **kw: Any) -> str:
    """Run, expect exit status ``rc`` with exactly one line on stderr."""
    r = shmsem_cmd(*args, **kw)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == rc, f"expected {rc}, got {r.returncode}: {err!r}"
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith("shmsem"), err
    return err.strip()


def ids(kind: str) -> set[int]:
    return {int(line.split()[1]) for line in (PROC / kind).read_text().splitlines()[1:]}


@pytest.fixture
def cleanup() -> Iterator[Callable[[str, int], int]]:
    """``cleanup(kind, id)`` registers an object to remove at teardown."""
    todo: list[tuple[str, int]] = []

    def add(kind: str, ident: int) -> int:
        todo.append((kind, ident))
        return ident

    yield add
    for kind, ident in todo:
        remove_object(kind, ident)


def orphan_segment(child: Any, size: int = 4096, **kw: Any) -> int:
    """A segment created by a child process that exits without removing it."""
    c = child("""
        import shmsem
        shm = shmsem.SharedMemory.create(None, %d)
        print(shm.id, flush=True)
        shm.detach()
    """ % size, **kw)
    shmid = int(c.readline())
    assert c.wait() == 0
    return shmid


def run_in_pty(args: Sequence[str], env: dict[str, str], until: bytes,
               timeout: float = 10.0) -> tuple[subprocess.Popen[bytes], int, bytes]:
    """Start `python -m shmsem ARGS` with a pty as its controlling terminal;
    return (process, master fd, output so far) once ``until`` appeared."""
    master, slave = pty.openpty()
    # The child makes the pty its controlling terminal, so that Ctrl-C typed
    # into it (a \x03 byte) becomes SIGINT, as in a real terminal.
    wrapper = textwrap.dedent("""
        import fcntl, os, sys, termios
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        os.execv(sys.executable, [sys.executable, "-m", "shmsem"] + sys.argv[1:])
    """)
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *args], stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True, env=env, cwd="/")
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while until not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            proc.wait(10)
            os.close(master)
            pytest.fail(f"no {until!r} within {timeout}s; output: {out!r}")
        ready, _, _ = select.select([master], [], [], left)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            out += chunk
    return proc, master, out


def drain(master: int, timeout: float = 5.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        out += chunk
    return out


def tty_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm"
    env.update(extra)
    return env


# ---------------------------------------------------------------------------
# KEY|ID parsing and resolution (in-process: the rule itself)


def obj(kind: str, ident: int, key: int) -> IpcObject:
    return IpcObject(type=kind, key=key, id=ident, mode=0o600, uid=0, gid=0, cuid=0, cgid=0,
                     ctime=0)


class TestTargets:
    def test_hex_is_a_key(self) -> None:
        t = parse_target("0x5e001001")
        assert (t.key, t.id) == (0x5E001001, None)
        assert parse_target("0XFFFFFFFF").key == -1

    def test_decimal_is_id_and_key(self) -> None:
        t = parse_target("32769")
        assert (t.key, t.id) == (32769, 32769)

    def test_negative_and_large_decimals_are_keys(self) -> None:
        assert parse_target("-5") == Target("-5", -5, None)
        big = parse_target(str(2**32 - 1))
        assert (big.key, big.id) == (-1, None)

    def test_zero(self) -> None:
        assert parse_target("0") == Target("0", None, 0)
        assert parse_target("0x0").private

    @pytest.mark.parametrize("bad", ["", "abc", "0x", "0xg1", "1.5", str(2**32), "-0x80000001"])
    def test_rejects(self, bad: str) -> None:
        with pytest.raises(ValueError):
            parse_target(bad)

    def test_id_flag(self) -> None:
        assert parse_id("0x10") == Target("0x10", None, 16)
        with pytest.raises(ValueError):
            parse_id(str(2**31))

    def test_ambiguity_id_in_two_types(self) -> None:
        objects = [obj("shm", 5, 100), obj("sem", 5, 200)]
        with pytest.raises(CliError, match=r"matches 2 objects.*--type sem\|shm"):
            find_one(parse_target("5"), objects, ["shm", "sem", "msg"])
        assert find_one(parse_target("5"), objects, ["sem"]).key == 200

    def test_ambiguity_key_and_id(self) -> None:
        objects = [obj("shm", 7, 1), obj("shm", 1, 99)]
        with pytest.raises(CliError, match=r"--id 7 for the id or 0x00000007 for the key"):
            find_one(parse_target("7"), [obj("shm", 7, 1), obj("sem", 3, 7)], ["shm", "sem"])
        assert find(parse_id("1"), objects) == [objects[1]]

    def test_not_found(self) -> None:
        with pytest.raises(CliError, match="no semaphore set has key 0x00000063"):
            find_one(parse_target("0x63"), [obj("shm", 1, 99)], ["sem"])


# ---------------------------------------------------------------------------
# Usage, help, errors


COMMANDS = ["ls", "show", "rm", "read", "write", "watch", "gc", "doctor", "demo", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(command: str) -> None:
    out = ok(command, "--help")
    assert f"usage: shmsem {command}" in out
    assert "example" in out


def test_top_level_help_lists_commands() -> None:
    out = ok("--help")
    for command in COMMANDS:
        assert command in out
    assert re.search(r"^\s+bench\s", out, re.M)  # its runs are in tests/test_bench.py


def test_console_script_and_version() -> None:
    script = str(Path(sys.executable).with_name("shmsem"))
    if not os.path.exists(script):
        script = shutil.which("shmsem") or script
    if not os.path.exists(script):
        pytest.skip("the shmsem console script is not installed")
    assert ok("--version", exe=[script]).strip() == f"shmsem {shmsem.__version__}"
    data = as_json("ls", "--json", exe=[script])
    assert isinstance(data["objects"], list)


@pytest.mark.parametrize("args, words", [
    (["frobnicate"], "unknown command 'frobnicate'"),
    ([], "a command is needed"),
    (["show"], "KEY|ID"),
    (["show", "zz"], "not a key or an id"),
    (["rm", "--type", "pipe", "1"], "invalid choice"),
    (["watch", "1", "--count", "0"], "give 1 or more"),
    (["read", "1", "--raw", "--hex"], "not allowed with"),
    (["ls", "--bogus"], "unrecognized arguments: --bogus; see 'shmsem ls --help'"),
])
def test_usage_errors_exit_2_in_one_line(args: list[str], words: str) -> None:
    err = fails(2, *args)
    assert words in err
    assert "--help" in err


def test_unknown_key_is_one_line_that_says_what_to_do(unique_key: Any) -> None:
    key = unique_key()
    err = fails(1, "show", hex(key))
    assert f"no System V object has key {format_key(key)}" in err
    assert "shmsem ls" in err
    assert "no shared memory segment" in fails(1, "read", hex(key))


def test_permission_denied_names_the_owner(nobody: Any) -> None:
    with shmsem.SharedMemory.create(None, 4096) as shm:
        shm.write("secret")
        for args in (["read", str(shm.id)], ["write", str(shm.id), "x"],
                     ["rm", "--type", "shm", str(shm.id)]):
            c = nobody(f"""
                import sys
                from shmsem.cli import main
                sys.argv[0] = "shmsem"
                sys.exit(main({args!r}))
            """)
            rc, out, err = c.finish()
            assert rc == 1, err
            assert "Traceback" not in err and err.count("\n") == 1, err
            assert "permission denied" in err and "root (uid 0)" in err, err
            assert "as that user or as root" in err
        assert shm.read() == b"secret"  # nothing was changed or removed
        assert shm.id in ids("shm")


# An installation the user may not read: the lazily imported command module
# cannot be found (a directory Python may not list) or opened (a file).  The
# command says what could not be read; it is no "internal error".

UNREADABLE_CHILD = r"""
import importlib, os, sys
sys.path.insert(0, {site!r})
import shmsem, shmsem.cli, shmsem.cli.util, shmsem.cli.target
assert shmsem.__file__.startswith({site!r}), shmsem.__file__
# What main() needs up to the command's own module (the stdlib may be
# unreadable too, once root becomes another user).
import shutil
shmsem.cli.build_parser().parse_known_args(["read", "0x5e000001"])
if os.geteuid() == 0:  # root reads everything: become a user who cannot
    os.setgroups([])
    os.setresgid({nobody}, {nobody}, {nobody})
    os.setresuid({nobody}, {nobody}, {nobody})
else:  # our own files: take the right away from ourselves
    os.chmod({target!r}, {mode})
sys.argv[0] = "shmsem"
sys.exit(shmsem.cli.main(["read", "0x5e000001"]))
"""


@pytest.mark.parametrize("what", ["directory", "file"])
def test_unreadable_installation_is_named_not_an_internal_error(what: str) -> None:
    import tempfile

    private = Path(tempfile.mkdtemp(prefix="shmsem-private-"))  # 0700, ours
    site = private / "site"
    pkg = site / "shmsem"
    try:
        shutil.copytree(Path(shmsem.__file__).parent, pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
        if what == "directory":
            target, mode, unreadable = private, 0o000, private
        else:
            target, mode, unreadable = pkg / "cli" / "commands.py", 0o000, pkg / "cli" / "commands.py"
            private.chmod(0o755)
            if os.geteuid() == 0:
                target.chmod(0o600)  # root's, closed to the uid the child becomes
        code = UNREADABLE_CHILD.format(site=str(site), target=str(target), mode=mode, nobody=NOBODY)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=TIMEOUT, cwd="/")
        err = r.stderr
        assert r.returncode == 1, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "internal error" not in err and "please report" not in err, err
        uid = NOBODY if os.geteuid() == 0 else os.geteuid()
        assert f"uid {uid} may not read {unreadable} (permission denied)" in err, err
        assert "shmsem read: cannot import shmsem.cli.commands: " in err, err
        if what == "directory":
            assert f"which holds {pkg / 'cli'}" in err, err
    finally:
        private.chmod(0o700)
        if (pkg / "cli" / "commands.py").exists():
            (pkg / "cli" / "commands.py").chmod(0o600)
        shutil.rmtree(private)


def test_a_missing_module_is_still_an_internal_error() -> None:
    import shmsem.cli

    # Nothing unreadable: a module that is not there is a broken installation.
    with pytest.raises(ModuleNotFoundError):
        shmsem.cli._import("_no_such_module")


# ---------------------------------------------------------------------------
# ls


def test_ls_shows_every_type(unique_key: Any, cleanup: Any) -> None:
    key = unique_key()
    shm = shmsem.SharedMemory.create(key, 8192)
    sem = shmsem.SemaphoreSet.create(None, 3, values=[1, 2, 3])
    q = shmsem.MessageQueue.create(None, mode=0o640)
    ch = shmsem.Channel.create(None, 1024)
    cleanup("sem", sem.id)
    cleanup("msg", q.id)
    try:
        # block=False: a blocking send() enqueues twice (a bug in _core.msgsnd, reported).
        q.send(b"one", block=False)
        q.send(b"two", block=False)
        ch.put_bytes(b"x" * 120)  # a 128-byte record: 1/8 of the ring
        table = ok("ls")
        # Keyed by (type, id): each type numbers its ids separately.
        lines = {(line.split()[0], line.split()[2]): line for line in table.splitlines()[1:]
                 if line.strip() and line.split()[0] in ("shm", "sem", "msg")}
        assert table.splitlines()[0].split()[:4] == ["TYPE", "KEY", "ID", "OWNER"]
        row = lines["shm", str(shm.id)]
        assert format_key(key) in row and "rw-------" in row and "8.0 KiB" in row
        assert f"{os.getpid()} " in row and "(alive)" in row
        assert "3 sems" in lines["sem", str(sem.id)]
        assert "2 msgs" in lines["msg", str(q.id)] and "rw-r-----" in lines["msg", str(q.id)]
        assert "Channel 12% full, 1 msg" in lines["shm", str(ch.id)]
        assert "\x1b[" not in table  # not a terminal: no colour

        data = as_json("ls", "--json")
        by = {(o["type"], o["id"]): o for o in data["objects"]}
        for o in data["objects"]:
            assert set(o) == RECORD_FIELDS
        s = by[("shm", shm.id)]
        assert s["key"] == key and s["key_hex"] == format_key(key) and s["size"] == 8192
        assert s["owner"] == pwd.getpwuid(os.geteuid()).pw_name
        assert s["mode"] == 0o600 and s["mode_str"] == "rw-------"
        assert s["nattch"] == 1 and s["cpid"] == os.getpid()
        assert s["creator_alive"] is True and s["creator_state"] == "alive"
        assert s["orphan"] is False and s["removed"] is False and s["shmsem"] is None
        assert by[("sem", sem.id)]["nsems"] == 3 and by[("sem", sem.id)]["size"] is None
        m = by[("msg", q.id)]
        assert m["messages"] == 2 and m["bytes"] == 6 and m["lspid"] == os.getpid()
        c = by[("shm", ch.id)]["shmsem"]
        assert set(c) == SHMSEM_FIELDS
        assert (c["kind"], c["capacity"], c["used"], c["messages"]) == ("channel", 1024, 128, 1)
        assert c["fill"] == 0.125

        only_sem = as_json("ls", "--json", "--type", "sem")["objects"]
        assert {o["type"] for o in only_sem} == {"sem"}
        assert sem.id in {o["id"] for o in only_sem}
        mine = as_json("ls", "--json", "--mine")["objects"]
        assert all(os.geteuid() in (o["uid"], o["cuid"]) for o in mine)
        no_peek = as_json("ls", "--json", "--no-peek", "--type", "shm")["objects"]
        assert all(o["shmsem"] is None for o in no_peek)
    finally:
        shm.close()
        ch.close()


def test_ls_marks_dead_creator_and_orphan(child: Any, cleanup: Any) -> None:
    shmid = cleanup("shm", orphan_segment(child))
    rec = next(o for o in as_json("ls", "--json", "--type", "shm")["objects"]
               if o["id"] == shmid)
    assert rec["creator_state"] == "dead" and rec["creator_alive"] is False
    assert rec["nattch"] == 0 and rec["orphan"] is True
    row = next(line for line in ok("ls", "--type", "shm").splitlines()
               if line.split()[2:3] == [str(shmid)])
    assert "(dead)" in row and "orphan" in row


# ---------------------------------------------------------------------------
# show


def test_show_channel_counters(unique_key: Any) -> None:
    key = unique_key()
    with shmsem.Channel.create(key, 4096) as ch:
        for i in range(5):
            ch.put_bytes(bytes(24))
        ch.get_bytes()
        ch.get_bytes()
        text = ok("show", hex(key))
        assert f"key {format_key(key)}  id {ch.id}" in text
        assert "Channel (protocol version 2)" in text
        assert "capacity      4096 bytes" in text
        assert "used          96 bytes (2.3%)" in text
        assert "messages      3 queued (5 put, 2 taken)" in text
        assert "last seq      5" in text
        assert "waiters       consumers no, producers no" in text
        assert f"attached      1 process: {os.getpid()}" in text

        (rec,) = as_json("show", "--json", str(ch.id), "--type", "shm")["objects"]
        assert set(rec) == RECORD_FIELDS | SHOW_EXTRA
        h = rec["shmsem"]
        assert (h["kind"], h["capacity"], h["used"], h["messages"]) == ("channel", 4096, 96, 3)
        assert (h["put_count"], h["get_count"], h["last_seq"]) == (5, 2, 5)
        assert h["consumers_waiting"] is False and h["producers_waiting"] is False
        assert h["problem"] is None and rec["frame"] is None
        assert [p["pid"] for p in rec["attached_pids"]] == [os.getpid()]


def test_the_inspector_reads_the_objects_own_stats(unique_key: Any) -> None:
    """show and ls print the ChannelStats / MailboxStats that stats() returns
    (STYLE.md, "One vocabulary"), read from the header without attaching one."""
    from shmsem.cli.inspect import read_segment

    with shmsem.Channel.create(unique_key(), 4096) as ch, \
            shmsem.Mailbox.create(unique_key(), 100) as mb:
        for i in range(3):
            ch.put_bytes(bytes(i + 1))
        ch.get_bytes()
        mb.publish(b"one")
        mb.publish(b"two!")
        for o in (ch, mb):
            shm = shmsem.SharedMemory.from_id(o.id, readonly=True)
            try:
                header, _ = read_segment(shm)
            finally:
                shm.detach()
            assert header is not None and header.problem is None
            assert header.stats == o.stats()
        assert header.used == 4 and header.last_seq == header.messages == 2


def test_show_mailbox_and_frame_and_semaphores(unique_key: Any, cleanup: Any) -> None:
    key = unique_key()
    box = shmsem.Mailbox.create(None, 100)
    shm = shmsem.SharedMemory.create(key, 64)
    sem = shmsem.SemaphoreSet.create(key, 2, values=[4, 0])  # same key as the segment
    cleanup("sem", sem.id)
    try:
        for v in (b"a", b"bb", b"hello"):
            box.publish(v)
        (rec,) = as_json("show", "--json", "--type", "shm", str(box.id))["objects"]
        h = rec["shmsem"]
        assert (h["kind"], h["last_seq"], h["used"], h["capacity"]) == ("mailbox", 3, 5, 100)
        assert h["readers_waiting"] is False and h["writer_lock_pid"] == 0
        text = ok("show", str(box.id), "--type", "shm")
        assert "Mailbox" in text and "last seq      3" in text and "3 published" in text

        shm.write("héllo")
        recs = as_json("show", "--json", hex(key))["objects"]  # one key, two objects: both shown
        assert {r["type"] for r in recs} == {"shm", "sem"}
        seg = next(r for r in recs if r["type"] == "shm")
        assert seg["frame"]["length"] == 6 and seg["frame"]["valid"] is True
        assert seg["frame"]["preview_text"] == "héllo"
        sets = next(r for r in recs if r["type"] == "sem")
        assert [m["value"] for m in sets["semaphores"]] == [4, 0]
        text = ok("show", hex(key))
        assert "matches 2 objects" in text and "frame         6 bytes: 'héllo'" in text
        assert "[0]         value 4" in text
    finally:
        box.close()
        shm.close()


# ---------------------------------------------------------------------------
# rm


def test_rm_removes_each_type(unique_key: Any, cleanup: Any) -> None:
    key = unique_key()
    shm = shmsem.SharedMemory.create(key, 4096)
    shm.detach()
    cleanup("shm", shm.id)
    sem = shmsem.Semaphore.create(None, 0)
    cleanup("sem", sem.id)
    q = shmsem.MessageQueue.create(None)
    cleanup("msg", q.id)
    out = ok("rm", hex(key))
    assert out.strip() == f"removed shm key={format_key(key)} id={shm.id}"
    assert shm.id not in ids("shm")
    out = ok("rm", "--type", "sem", str(sem.id))
    assert f"removed sem key=0x00000000 id={sem.id}" in out and sem.id not in ids("sem")
    ok("rm", "--id", "--type", "msg", str(q.id))
    assert q.id not in ids("msg")


def test_rm_attached_segment_says_so() -> None:
    shm = shmsem.SharedMemory.create(None, 4096)
    try:
        out = ok("rm", "--type", "shm", str(shm.id))
        assert "still attached 1 time" in out
        assert shm.stat().removed
    finally:
        shm.close()


def test_rm_refuses_a_key_shared_by_two_types(unique_key: Any, cleanup: Any) -> None:
    key = unique_key()
    shm = shmsem.SharedMemory.create(key, 4096)
    sem = shmsem.Semaphore.create(key, 0)
    cleanup("sem", sem.id)
    try:
        err = fails(1, "rm", hex(key))
        assert "matches 2 objects" in err and f"shm id {shm.id}" in err
        assert f"sem id {sem.id}" in err and "--type sem|shm" in err
        assert shm.id in ids("shm") and sem.id in ids("sem")
        ok("rm", "--type", "sem", hex(key))
        assert sem.id not in ids("sem") and shm.id in ids("shm")
    finally:
        shm.close()


def test_rm_refuses_a_value_that_is_both_a_key_and_an_id(cleanup: Any) -> None:
    shm = shmsem.SharedMemory.create(None, 4096)
    spare = None
    if shm.id == 0:  # key 0 is IPC_PRIVATE: we need an id that can also be a key
        spare, shm = shm, shmsem.SharedMemory.create(None, 4096)
    try:
        try:
            sem = shmsem.Semaphore.create(shm.id, 0)  # its key is the segment's id
        except shmsem.ExistsError:
            pytest.skip("a key equal to the segment's id is already in use")
        cleanup("sem", sem.id)
        err = fails(1, "rm", str(shm.id))
        assert "matches" in err and "(by id)" in err and "(by key)" in err
        assert f"--id {shm.id}" in err
        assert shm.id in ids("shm") and sem.id in ids("sem")
        # Naming several things, one of them ambiguous, removes none of them.
        other = shmsem.Semaphore.create(None, 0)
        cleanup("sem", other.id)
        r = shmsem_cmd("rm", str(other.id), str(shm.id))
        assert r.returncode == 1 and other.id in ids("sem") and b"nothing was removed" in r.stderr
        ok("rm", "--type", "sem", format_key(shm.id))  # the key, in hex
        assert sem.id not in ids("sem") and shm.id in ids("shm")
    finally:
        shm.close()
        if spare is not None:
            spare.close()


def test_rm_of_a_missing_object_removes_nothing(unique_key: Any, cleanup: Any) -> None:
    sem = shmsem.Semaphore.create(None, 0)
    cleanup("sem", sem.id)
    missing = unique_key()
    err = fails(1, "rm", hex(missing))
    assert f"no System V object has key {format_key(missing)}" in err
    r = shmsem_cmd("rm", "--type", "sem", "--", str(sem.id), hex(missing))
    assert r.returncode == 1 and b"nothing was removed" in r.stderr
    assert sem.id in ids("sem")


# ---------------------------------------------------------------------------
# read and write


def test_write_then_read_round_trip(unique_key: Any) -> None:
    key = unique_key()
    with shmsem.SharedMemory.create(key, 256) as shm:
        out = ok("write", hex(key), "hello from the shell")
        assert out.strip() == f"wrote 20 bytes to shm key={format_key(key)} id={shm.id}"
        assert shm.read_string() == "hello from the shell"

        shm.write("ünïcode ✓")
        assert ok("read", hex(key)) == "ünïcode ✓\n"
        payload = bytes(range(256))[:200]
        shm.write(payload)
        r = shmsem_cmd("read", hex(key), "--raw")
        assert r.returncode == 0 and r.stdout == payload
        hexed = ok("read", str(shm.id), "--hex")
        assert hexed.splitlines()[0].startswith("00000000  00 01 02 03")
        data = as_json("read", hex(key), "--json")
        assert data == {"key": key, "key_hex": format_key(key), "id": shm.id, "size": 256,
                        "length": 200, "text": None,
                        "base64": base64.b64encode(payload).decode()}
        # Not text, no option: a hex dump, not mojibake.
        assert ok("read", hex(key)).startswith("00000000  00 01")

        binary = b"\x00\xffbinary\n\x01"
        ok("write", hex(key), "-", input=binary)
        assert shm.read() == binary
        ok("write", hex(key), "", input=None)
        assert shm.read() == b""
        assert ok("read", hex(key), "--json").count('"length": 0') == 1

        err = fails(1, "write", hex(key), "x" * 253)
        assert "253 bytes do not fit" in err and "at most 252" in err
        assert shm.read() == b""


def test_read_rejects_a_corrupt_frame(unique_key: Any) -> None:
    key = unique_key()
    with shmsem.SharedMemory.create(key, 64) as shm:
        shm.write_at(0, (1000).to_bytes(4, "little"))
        err = fails(1, "read", hex(key))
        assert "holds no valid frame" in err and "1000" in err and "0 to 60 bytes" in err


def test_read_and_write_refuse_a_channel(unique_key: Any) -> None:
    key = unique_key()
    with shmsem.Channel.create(key, 1024) as ch:
        ch.put_bytes(b"keep me")
        assert "is a shmsem Channel" in fails(1, "read", hex(key))
        assert "would destroy its header" in fails(1, "write", hex(key), "boom")
        assert ch.get_bytes_nowait() == b"keep me"


# ---------------------------------------------------------------------------
# watch


def test_watch_count_prints_samples(unique_key: Any, cleanup: Any) -> None:
    key = unique_key()
    with shmsem.SharedMemory.create(key, 128) as shm:
        shm.write("tick")
        out = ok("watch", "--type", "shm", hex(key), "--count", "3", "--interval", "0.05")
        lines = out.splitlines()
        assert len(lines) == 3 and all("frame: 4 bytes: 'tick'" in line for line in lines)
        samples = [json.loads(line) for line in ok(
            "watch", hex(key), "--type", "shm", "--count", "2", "--interval", "0.01", "--json"
        ).splitlines()]
        assert len(samples) == 2
        assert samples[0]["id"] == shm.id and samples[0]["nattch"] == 2  # us and the watch
        assert samples[0]["frame"]["preview_text"] == "tick"
        sem = shmsem.SemaphoreSet.create(None, 2, values=[3, 1])
        cleanup("sem", sem.id)
        (s,) = [json.loads(line) for line in ok(
            "watch", "--type", "sem", str(sem.id), "--count", "1", "--json").splitlines()]
        assert [m["value"] for m in s["semaphores"]] == [3, 1]
    with shmsem.Channel.create(None, 1024) as ch:
        ch.put_bytes(b"abc")
        (s,) = [json.loads(line) for line in ok(
            "watch", str(ch.id), "--type", "shm", "--count", "1", "--json").splitlines()]
        assert s["shmsem"]["messages"] == 1 and s["frame"] is None


def test_watch_ends_when_the_object_is_removed(cleanup: Any) -> None:
    q = shmsem.MessageQueue.create(None)
    cleanup("msg", q.id)
    proc = subprocess.Popen([sys.executable, "-m", "shmsem", "watch", "--type", "msg",
                             str(q.id), "--interval", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "watch printed nothing"
        proc.stdout.readline()
        q.remove()
        _out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 1
    text = err.decode()
    assert text.count("\n") == 1 and "was removed" in text and "Traceback" not in text


def test_watch_in_a_terminal_stops_cleanly_on_ctrl_c(unique_key: Any) -> None:
    key = unique_key()
    with shmsem.Channel.create(key, 1024) as ch:
        ch.put_bytes(b"one")
        proc, master, out = run_in_pty(["watch", hex(key), "--interval", "0.05"], tty_env(),
                                       until=b"Ctrl-C stops")
        try:
            ch.put_bytes(b"two")  # the next redraw shows it
            deadline = time.monotonic() + 10
            while b"2 queued" not in out and time.monotonic() < deadline:
                out += drain(master, 0.3)
            assert b"2 queued" in out
            os.write(master, b"\x03")  # Ctrl-C, typed into the terminal
            try:
                rc = proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                pytest.fail("watch did not end on Ctrl-C")
            out += drain(master)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            os.close(master)
    assert rc in (0, 130)
    assert b"Traceback" not in out and b"KeyboardInterrupt" not in out
    assert b"\x1b[H" in out  # redrawn in place


# ---------------------------------------------------------------------------
# colour


def test_colour_only_on_a_terminal_and_never_with_no_color(unique_key: Any) -> None:
    with shmsem.SharedMemory.create(unique_key(), 64):
        proc, master, out = run_in_pty(["ls", "--type", "shm"], tty_env(), until=b"segment")
        out += drain(master)
        os.close(master)
        assert proc.wait(10) == 0
        assert b"\x1b[1m" in out  # bold headers in a terminal

        for value in ("1", ""):
            proc, master, out = run_in_pty(["ls", "--type", "shm"], tty_env(NO_COLOR=value),
                                           until=b"segment")
            out += drain(master)
            os.close(master)
            assert proc.wait(10) == 0
            assert b"\x1b[" not in out, f"colour with NO_COLOR={value!r}"


# ---------------------------------------------------------------------------
# gc


def test_gc_removes_only_our_unattached_orphans(child: Any, nobody: Any, cleanup: Any) -> None:
    ours = cleanup("shm", orphan_segment(child))
    c = nobody("""
        import shmsem
        shm = shmsem.SharedMemory.create(None, 4096)
        print(shm.id, flush=True)
        shm.detach()
    """)
    theirs = cleanup("shm", int(c.readline()))
    assert c.wait() == 0
    attached_id = cleanup("shm", orphan_segment(child))
    attached = shmsem.SharedMemory.from_id(attached_id)  # a live attach, the creator dead
    try:
        # The dry run lists our orphan, and neither of the others (unscoped: it only reads).
        plan = as_json("gc", "--dry-run", "--json")
        planned = {o["id"] for o in plan["removed"]}
        assert plan["dry_run"] is True and ours in planned
        assert theirs not in planned and attached_id not in planned
        assert ours in ids("shm")
        text = ok("gc", "--dry-run", "--id", str(ours))
        assert f"would remove shm key=0x00000000 id={ours}" in text and "(dead)" in text

        # The real run, scoped to this test's segments so it cannot touch anyone else's.
        done = as_json("gc", "--json", "--id", str(ours), str(theirs), str(attached_id))
        assert [o["id"] for o in done["removed"]] == [ours] and done["failed"] == []
        assert done["removed"][0]["orphan"] is True
        kept = {k["id"]: k["reason"] for k in done["kept"]}
        assert "belongs to nobody (uid 65534)" in kept[theirs]
        assert "attached by 1 process" in kept[attached_id]
        assert ours not in ids("shm")
        assert theirs in ids("shm") and attached_id in ids("shm")
        assert "nothing to collect" in ok("gc", "--id", str(theirs), str(attached_id))
        assert theirs in ids("shm") and attached_id in ids("shm")
    finally:
        attached.detach()


GC_IN_NAMESPACE = r"""
import json, os, subprocess, sys
import shmsem

def in_child(uid=None):
    # Create a segment in a child that then exits without removing it.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if uid is not None:
                os.setgid(uid); os.setgroups([]); os.setuid(uid)
            shm = shmsem.SharedMemory.create(None, 4096)
            os.write(w, str(shm.id).encode())
        finally:
            os._exit(0)
    os.close(w)
    shmid = int(os.read(r, 64))
    os.waitpid(pid, 0)
    return shmid

orphan = in_child()
theirs = in_child(65534)
attached_id = in_child()
attached = shmsem.SharedMemory.from_id(attached_id)
shmsem_cmd = [sys.executable, "-m", "shmsem"]
dry = subprocess.run(shmsem_cmd + ["gc", "--dry-run"], capture_output=True, text=True)
run = subprocess.run(shmsem_cmd + ["gc", "--json"], capture_output=True, text=True)
left = [int(line.split()[1]) for line in open("/proc/sysvipc/shm").read().splitlines()[1:]]
attached.detach()
print(json.dumps({"orphan": orphan, "theirs": theirs, "attached": attached_id,
                  "dry": [dry.returncode, dry.stdout, dry.stderr],
                  "run": [run.returncode, run.stdout, run.stderr], "left": left}))
"""


def test_gc_unscoped_in_a_private_ipc_namespace() -> None:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a private IPC namespace")
    probe = subprocess.run([unshare, "--ipc", "true"], capture_output=True, timeout=TIMEOUT)
    if probe.returncode != 0:
        pytest.skip(f"unshare --ipc is not allowed here: {probe.stderr.decode().strip()}")
    r = subprocess.run([unshare, "--ipc", sys.executable, "-c", GC_IN_NAMESPACE],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    rc, out, err = res["dry"]
    assert rc == 0 and "Traceback" not in err
    assert f"would remove shm key=0x00000000 id={res['orphan']}" in out
    assert f"id={res['theirs']} " not in out and f"id={res['attached']} " not in out
    assert "left alone 1 orphaned segment of other users (nobody (uid 65534))" in out
    rc, out, err = res["run"]
    assert rc == 0, err
    data = json.loads(out)
    assert [o["id"] for o in data["removed"]] == [res["orphan"]]
    assert [k["id"] for k in data["kept"]] == [res["theirs"]]
    assert res["orphan"] not in res["left"]
    assert res["theirs"] in res["left"] and res["attached"] in res["left"]


# ---------------------------------------------------------------------------
# doctor


def test_doctor_reports_limits_namespace_and_orphans(child: Any, cleanup: Any) -> None:
    text = ok("doctor")
    assert "Limits and usage" in text and "kernel.shmmni" in text and "IPC namespace" in text
    shmid = cleanup("shm", orphan_segment(child))
    data = as_json("doctor", "--json")
    assert set(data) == {"limits", "page_size", "usage", "orphans", "namespace", "warnings"}
    assert set(data["limits"]) == {"shmmax", "shmall", "shmmni", "semmsl", "semmns", "semopm",
                                   "semmni", "msgmnb", "msgmax", "msgmni"}
    with open("/proc/sys/kernel/shmmni") as f:
        assert data["limits"]["shmmni"] == int(f.read())
    usage = {u["name"]: u for u in data["usage"]}
    assert usage["shm_segments"]["used"] >= 1 and usage["shm_segments"]["sysctl"] == "kernel.shmmni"
    for u in data["usage"]:
        assert set(u) == {"name", "description", "used", "limit", "percent", "sysctl"}
    ns = data["namespace"]
    assert set(ns) == {"ipc", "ipc_inode", "initial", "pid1_ipc", "pid1_error", "same_as_pid1",
                       "initial_pid_namespace", "initial_user_namespace", "container_hints",
                       "summary"}
    assert ns["ipc"] == os.readlink("/proc/self/ns/ipc")
    assert ns["initial"] == (os.stat("/proc/self/ns/ipc").st_ino == 0xEFFFFFFF)
    assert data["orphans"]["mine"] >= 1
    orphan_warning = [w for w in data["warnings"] if "orphaned segment" in w["message"]
                      and "of yours" in w["message"]]
    assert orphan_warning and orphan_warning[0]["fix"].startswith("shmsem gc")
    for w in data["warnings"]:
        assert set(w) == {"message", "fix"} and w["fix"]
    assert "fix: shmsem gc" in ok("doctor")
    assert shmid in ids("shm")  # doctor changes nothing


def test_doctor_in_a_private_ipc_namespace_says_so() -> None:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1)")
    r = subprocess.run([unshare, "--ipc", sys.executable, "-m", "shmsem", "doctor", "--json"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    if r.returncode != 0 and "unshare" in r.stderr:
        pytest.skip(f"unshare --ipc is not allowed here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    ns = json.loads(r.stdout)["namespace"]
    assert ns["initial"] is False
    assert "separate IPC namespace" in ns["summary"][0]
