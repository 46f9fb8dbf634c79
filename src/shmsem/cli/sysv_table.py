"""What /proc/sysvipc says about every System V object, plus what /proc and
the password database say about the processes and users behind them.

Used by the command line.  Everything here only reads: /proc/sysvipc/{shm,sem,msg},
/proc/<pid>/{stat,comm}, /proc/stat, and pwd/grp.  The rows are parsed by the
column names of each file's header line, so a kernel that adds or drops a
column (rss and swap are recent) is read correctly.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import functools
import grp
import os
import pwd
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..keys import IPC_PRIVATE, normalize_key

__all__ = [
    "KINDS",
    "IpcObject",
    "ProcessInfo",
    "Liveness",
    "read_objects",
    "process_info",
    "user_name",
    "group_name",
    "mode_string",
]

PROC_SYSVIPC = Path("/proc/sysvipc")

#: The three object types, in the order `ls` lists them.
KINDS: tuple[str, ...] = ("shm", "sem", "msg")

#: Long names, for messages.
KIND_NAMES = {"shm": "shared memory segment", "sem": "semaphore set", "msg": "message queue"}

# Bits of shm's perms column above the permission bits (linux/shm.h).
_SHM_DEST = 0o1000
_SHM_LOCKED = 0o2000

# A creator whose process started more than this many seconds after the
# segment's ctime cannot have created it: its pid was reused.
_START_SLACK = 2.0


class Liveness(str, enum.Enum):
    """What can be said about a pid."""

    ALIVE = "alive"
    #: no such process, or a zombie (it exited and will not attach again)
    DEAD = "dead"
    #: a process has this pid, but it started after the object was created
    REUSED = "reused"
    #: pid 0: the process is in a PID namespace this one cannot see
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    pid: int
    liveness: Liveness
    #: /proc/<pid>/comm, or None when unreadable or the process is gone
    command: Optional[str]
    #: Unix time the process started, or None
    start_time: Optional[float]


@dataclasses.dataclass(frozen=True)
class IpcObject:
    """One row of /proc/sysvipc/{shm,sem,msg}.

    Fields that do not apply to a type are None (``size`` for a queue...).
    Times are Unix seconds, 0 for never.
    """

    type: str
    #: the kernel's signed 32-bit key (0 is IPC_PRIVATE)
    key: int
    id: int
    #: permission bits (0..0o777)
    mode: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    ctime: int
    # shm
    size: Optional[int] = None
    nattch: Optional[int] = None
    cpid: Optional[int] = None
    lpid: Optional[int] = None
    atime: Optional[int] = None
    dtime: Optional[int] = None
    rss: Optional[int] = None
    swap: Optional[int] = None
    #: shm: IPC_RMID was called; it lives on until the last process detaches
    removed: bool = False
    #: shm: SHM_LOCK'ed in memory
    locked: bool = False
    # sem
    nsems: Optional[int] = None
    otime: Optional[int] = None
    # msg
    messages: Optional[int] = None
    bytes: Optional[int] = None
    lspid: Optional[int] = None
    lrpid: Optional[int] = None
    stime: Optional[int] = None
    rtime: Optional[int] = None

    @property
    def private(self) -> bool:
        return self.key == IPC_PRIVATE

    def describe(self) -> str:
        """'shm key=0x5e001001 id=32769', for messages."""
        from ..errors import format_key

        return f"{self.type} key={format_key(self.key)} id={self.id}"


def _parse_file(kind: str, text: str) -> list[IpcObject]:
    lines = text.splitlines()
    if not lines:
        return []
    names = lines[0].split()
    out = []
    for line in lines[1:]:
        cols = line.split()
        if len(cols) < len(names):
            continue
        row = dict(zip(names, cols))
        try:
            out.append(_make(kind, row))
        except (KeyError, ValueError):
            continue  # a row this version cannot read: skip it rather than fail the table
    return out


def _make(kind: str, row: dict[str, str]) -> IpcObject:
    def num(name: str) -> int:
        return int(row[name])

    def opt(name: str) -> Optional[int]:
        return int(row[name]) if name in row else None

    perms = int(row["perms"], 8)
    # /proc prints the signed key_t; normalise anyway, in case a kernel prints it unsigned.
    key, mode, ctime = normalize_key(num("key")), perms & 0o777, num("ctime")
    uid, gid, cuid, cgid = num("uid"), num("gid"), num("cuid"), num("cgid")
    if kind == "shm":
        return IpcObject(
            type=kind, key=key, id=num("shmid"), mode=mode, uid=uid, gid=gid, cuid=cuid,
            cgid=cgid, ctime=ctime, size=num("size"), nattch=num("nattch"), cpid=num("cpid"),
            lpid=num("lpid"), atime=num("atime"), dtime=num("dtime"), rss=opt("rss"),
            swap=opt("swap"), removed=bool(perms & _SHM_DEST), locked=bool(perms & _SHM_LOCKED),
        )
    if kind == "sem":
        return IpcObject(
            type=kind, key=key, id=num("semid"), mode=mode, uid=uid, gid=gid, cuid=cuid,
            cgid=cgid, ctime=ctime, nsems=num("nsems"), otime=num("otime"),
        )
    return IpcObject(
        type=kind, key=key, id=num("msqid"), mode=mode, uid=uid, gid=gid, cuid=cuid,
        cgid=cgid, ctime=ctime, messages=num("qnum"), bytes=num("cbytes"),
        lspid=num("lspid"), lrpid=num("lrpid"), stime=num("stime"), rtime=num("rtime"),
    )


def read_objects(kinds: Iterable[str] = KINDS, root: Path = PROC_SYSVIPC) -> list[IpcObject]:
    """Every object of the given types in this IPC namespace, by type then id.

    Raises OSError if /proc/sysvipc cannot be read (no /proc, or a kernel
    without System V IPC)."""
    out: list[IpcObject] = []
    for kind in kinds:
        text = (root / kind).read_text()
        out.extend(sorted(_parse_file(kind, text), key=lambda o: o.id))
    return out


# ---------------------------------------------------------------------------
# Processes


@functools.lru_cache(maxsize=1)
def _boot_time() -> Optional[float]:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _stat_fields(pid: int) -> Optional[list[str]]:
    """/proc/<pid>/stat from field 3 (state) on, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command (field 2) is in parentheses and may itself contain ') '.
    end = data.rfind(")")
    return data[end + 2:].split() if end >= 0 else None


def _read_comm(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode("utf-8", "replace").rstrip("\n") or None
    except OSError:
        return None


def process_info(pid: int, created_after: Optional[float] = None) -> ProcessInfo:
    """Is ``pid`` alive, and what is its command name?

    ``created_after``: the Unix time the object was created.  A process that
    started clearly later cannot be its creator: the pid was reused, and the
    answer is REUSED.  pid 0 (a process in a PID namespace this one cannot see)
    is UNKNOWN.
    """
    if pid <= 0:
        return ProcessInfo(pid, Liveness.UNKNOWN, None, None)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return ProcessInfo(pid, Liveness.DEAD, None, None)
    except PermissionError:
        pass  # it exists; it is just not ours to signal
    except OSError as e:  # pragma: no cover - kill(pid, 0) fails only as above
        if e.errno != errno.EPERM:
            return ProcessInfo(pid, Liveness.UNKNOWN, None, None)
    fields = _stat_fields(pid)
    command = _read_comm(pid)
    if fields is None:
        # Gone between kill() and open(), or /proc hides it: trust kill().
        return ProcessInfo(pid, Liveness.ALIVE, command, None)
    if fields[0] in ("Z", "X"):
        return ProcessInfo(pid, Liveness.DEAD, command, None)
    start: Optional[float] = None
    boot = _boot_time()
    try:
        if boot is not None:
            start = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError, OSError):
        start = None
    if start is not None and created_after and start > created_after + _START_SLACK:
        return ProcessInfo(pid, Liveness.REUSED, command, start)
    return ProcessInfo(pid, Liveness.ALIVE, command, start)


def shm_attachers(shmid: int, proc: Path = Path("/proc")) -> list[int]:
    """Pids whose /proc/<pid>/maps show segment ``shmid`` attached (only the
    processes whose maps this process may read)."""
    pids = []
    inode = str(shmid)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            with open(entry / "maps", "rb") as f:
                maps = f.read().decode("ascii", "replace")
        except OSError:
            continue
        for line in maps.splitlines():
            # "addr perms offset dev inode /SYSV5e001001 (deleted)"; the inode is the shmid.
            if "/SYSV" in line:
                parts = line.split()
                if len(parts) >= 6 and parts[5].startswith("/SYSV") and parts[4] == inode:
                    pids.append(int(entry.name))
                    break
    return sorted(pids)


# ---------------------------------------------------------------------------
# Users and modes


@functools.lru_cache(maxsize=None)
def user_name(uid: int) -> Optional[str]:
    """The user name of ``uid``, or None if the password database has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


@functools.lru_cache(maxsize=None)
def group_name(gid: int) -> Optional[str]:
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return None


def who(uid: int) -> str:
    """'alice (uid 1000)', or 'uid 1234' when the uid has no name."""
    name = user_name(uid)
    return f"{name} (uid {uid})" if name else f"uid {uid}"


def mode_string(mode: int) -> str:
    """0o640 -> 'rw-r-----' (semaphores and queues have no x bit in use)."""
    out = []
    for shift in (6, 3, 0):
        bits = (mode >> shift) & 7
        out.append(
            ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")
        )
    return "".join(out)


def filter_objects(
    objects: Sequence[IpcObject], *, kind: Optional[str] = None, mine: bool = False
) -> list[IpcObject]:
    euid = os.geteuid()
    return [
        o for o in objects
        if (kind is None or o.type == kind) and (not mine or euid in (o.uid, o.cuid))
    ]
