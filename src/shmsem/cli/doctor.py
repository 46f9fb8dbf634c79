"""`shmsem doctor`: kernel limits against current usage, the IPC namespace
this process is in, and warnings that each come with the command that fixes
them.  Everything is read at run time from /proc (sysv_ipc #48: limits are
sysctls and change)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from .commands import Entry, gather, load_objects
from .util import Cell, Style, human_size, plural, render_table
from .sysv_table import Liveness, who
from ..errors import ShmsemError, format_key
from ..msgq import MessageQueue

__all__ = ["cmd_doctor", "read_limits", "namespace_report"]

PROC_KERNEL = Path("/proc/sys/kernel")

# Inode numbers the kernel gives its *initial* namespaces (include/linux/proc_ns.h).
# A process whose /proc/self/ns/ipc has another inode is in an IPC namespace
# created later: a container, a sandbox, or `unshare --ipc`.
PROC_IPC_INIT_INO = 0xEFFFFFFF
PROC_USER_INIT_INO = 0xEFFFFFFD
PROC_PID_INIT_INO = 0xEFFFFFFC

#: Usage at or above this fraction of a limit is a warning.
NEAR = 0.8
#: Limits at or above this are shown as "unlimited" (the kernel default for
#: shmmax and shmall is ULONG_MAX - 2**24).
UNLIMITED = 2**60


def read_limits(root: Path = PROC_KERNEL) -> dict[str, Optional[int]]:
    """The SysV IPC sysctls; None for one that cannot be read."""
    out: dict[str, Optional[int]] = {}

    def read(name: str) -> Optional[list[int]]:
        try:
            return [int(x) for x in (root / name).read_text().split()]
        except (OSError, ValueError):
            return None

    for name in ("shmmax", "shmall", "shmmni", "msgmnb", "msgmax", "msgmni"):
        v = read(name)
        out[name] = v[0] if v else None
    sem = read("sem")
    for i, name in enumerate(("semmsl", "semmns", "semopm", "semmni")):
        out[name] = sem[i] if sem and len(sem) == 4 else None
    return out


@dataclasses.dataclass(frozen=True)
class Usage:
    name: str
    description: str
    used: int
    limit: Optional[int]
    sysctl: str
    #: how `used` is shown ("pages" are shown with their size in bytes too)
    unit: str = ""

    @property
    def fraction(self) -> Optional[float]:
        if self.limit is None or self.limit <= 0 or self.limit >= UNLIMITED:
            return None
        return self.used / self.limit


@dataclasses.dataclass(frozen=True)
class Warning_:
    message: str
    fix: str


def _ns_inode(path: str) -> tuple[Optional[str], Optional[int], Optional[str]]:
    """(link text, inode, error) for a /proc/<pid>/ns/<x> link."""
    try:
        link = os.readlink(path)
    except OSError as e:
        return None, None, e.strerror or str(e)
    try:
        return link, int(link[link.index("[") + 1:link.index("]")]), None
    except ValueError:
        return link, None, None


def _container_hints() -> list[str]:
    hints = []
    if os.path.exists("/.dockerenv"):
        hints.append("/.dockerenv exists (Docker)")
    if os.path.exists("/run/.containerenv"):
        hints.append("/run/.containerenv exists (Podman)")
    if os.environ.get("container"):
        hints.append(f"$container is {os.environ['container']!r}")
    try:
        cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        cgroup = ""
    for word in ("docker", "kubepods", "containerd", "libpod", "lxc"):
        if word in cgroup:
            hints.append(f"/proc/self/cgroup mentions {word}")
            break
    return hints


def namespace_report() -> dict[str, Any]:
    ipc, ino, err = _ns_inode("/proc/self/ns/ipc")
    pid1, pid1_ino, pid1_err = _ns_inode("/proc/1/ns/ipc")
    _, pid_ino, _ = _ns_inode("/proc/self/ns/pid")
    _, user_ino, _ = _ns_inode("/proc/self/ns/user")
    initial = None if ino is None else ino == PROC_IPC_INIT_INO
    same = None if ino is None or pid1_ino is None else ino == pid1_ino
    summary = []
    if initial is None:
        summary.append(f"cannot read /proc/self/ns/ipc ({err}): cannot tell which IPC "
                       "namespace this process is in")
    elif initial:
        summary.append(f"this process is in the initial IPC namespace ({ipc}), the host's: "
                       "what 'shmsem ls' shows is shared with every process on this machine "
                       "(or VM) that is not in an IPC namespace of its own, as containers "
                       "usually are")
    else:
        summary.append(
            f"this process is in a separate IPC namespace ({ipc}), not the host's initial "
            "one: as in a container, the objects here are invisible from the host and from "
            "other containers, and theirs are invisible here. To share System V objects "
            "between containers, give them one IPC namespace (docker run --ipc=host or "
            "--ipc=container:NAME; Kubernetes: containers of one pod share it, or hostIPC: "
            "true)")
    if same is True:
        summary.append("pid 1 of this PID namespace is in the same IPC namespace")
    elif same is False:
        summary.append(f"pid 1 is in another IPC namespace ({pid1}): this process, or one of "
                       "its parents, entered a new one (unshare --ipc, a sandbox, a container "
                       "started inside this one)")
    else:
        summary.append(f"cannot read /proc/1/ns/ipc ({pid1_err or 'unknown error'}), so this "
                       "cannot be compared with pid 1; the namespace's inode number above "
                       "still tells the initial namespace from a later one")
    if pid_ino is not None and pid_ino != PROC_PID_INIT_INO:
        summary.append("this process is in a separate PID namespace: creators in other PID "
                       "namespaces show as pid 0, and whether they are alive cannot be told "
                       "(gc leaves their segments alone)")
    hints = _container_hints()
    if hints:
        also = (" (a container sharing the host's IPC namespace, as with docker --ipc=host)"
                if initial else "")
        summary.append("signs of a container: " + "; ".join(hints) + also)
    return {
        "ipc": ipc,
        "ipc_inode": ino,
        "initial": initial,
        "pid1_ipc": pid1,
        "pid1_error": pid1_err,
        "same_as_pid1": same,
        "initial_pid_namespace": None if pid_ino is None else pid_ino == PROC_PID_INIT_INO,
        "initial_user_namespace": None if user_ino is None else user_ino == PROC_USER_INIT_INO,
        "container_hints": hints,
        "summary": summary,
    }


def _suggest(limit: int, used: int) -> int:
    return max(limit * 2, used * 2, 1)


def _usage(entries: list[Entry], limits: dict[str, Optional[int]], page: int) -> list[Usage]:
    shm = [e.obj for e in entries if e.obj.type == "shm"]
    sem = [e.obj for e in entries if e.obj.type == "sem"]
    msg = [e.obj for e in entries if e.obj.type == "msg"]
    pages = sum(-(-(o.size or 0) // page) for o in shm)
    return [
        Usage("shm_segments", "shared memory segments", len(shm), limits["shmmni"],
              "kernel.shmmni"),
        Usage("shm_pages", "shared memory, in pages", pages, limits["shmall"], "kernel.shmall",
              "pages"),
        Usage("shm_largest", "largest segment, bytes", max((o.size or 0 for o in shm), default=0),
              limits["shmmax"], "kernel.shmmax", "bytes"),
        Usage("sem_sets", "semaphore sets", len(sem), limits["semmni"],
              "kernel.sem (4th field, SEMMNI)"),
        Usage("semaphores", "semaphores, all sets", sum(o.nsems or 0 for o in sem),
              limits["semmns"], "kernel.sem (2nd field, SEMMNS)"),
        Usage("sem_largest", "largest set", max((o.nsems or 0 for o in sem), default=0),
              limits["semmsl"], "kernel.sem (1st field, SEMMSL)"),
        Usage("msg_queues", "message queues", len(msg), limits["msgmni"], "kernel.msgmni"),
        Usage("msg_largest", "fullest queue, bytes", max((o.bytes or 0 for o in msg), default=0),
              limits["msgmnb"], "kernel.msgmnb", "bytes"),
    ]


def _sem_fix(limits: dict[str, Optional[int]], field: int, value: int) -> str:
    fields = [limits[n] for n in ("semmsl", "semmns", "semopm", "semmni")]
    if any(f is None for f in fields):
        return f"sudo sysctl -w kernel.sem='...' (raise field {field + 1} to {value})"
    vals = [str(f) for f in fields]
    vals[field] = str(value)
    return f"sudo sysctl -w kernel.sem='{' '.join(vals)}'"


def _warnings(usage: list[Usage], entries: list[Entry],
              limits: dict[str, Optional[int]]) -> list[Warning_]:
    out = []
    sem_field = {"sem_sets": 3, "semaphores": 1, "sem_largest": 0}
    for u in usage:
        f = u.fraction
        if f is None or f < NEAR or u.limit is None:
            continue
        new = _suggest(u.limit, u.used)
        if u.name in sem_field:
            fix = _sem_fix(limits, sem_field[u.name], new)
        else:
            fix = f"sudo sysctl -w {u.sysctl}={new}"
        if u.name in ("shm_segments", "shm_pages"):
            fix += " (or free some: shmsem gc)"
        out.append(Warning_(
            f"{u.description}: {u.used} of {u.limit} ({f * 100:.0f}%) in use, near the "
            f"{u.sysctl} limit", fix))
    euid = os.geteuid()
    orphans = [e for e in entries if e.orphan]
    mine = [e for e in orphans if e.obj.uid == euid]
    others = [e for e in orphans if e.obj.uid != euid]
    if mine:
        size = human_size(sum(e.obj.size or 0 for e in mine))
        out.append(Warning_(
            f"{plural(len(mine), 'orphaned segment')} of yours ({size}): attached nowhere, "
            "creator dead", "shmsem gc   (preview with: shmsem gc --dry-run)"))
    if others:
        size = human_size(sum(e.obj.size or 0 for e in others))
        owners = ", ".join(sorted({who(e.obj.uid) for e in others}))
        ids = " ".join(str(e.obj.id) for e in others)
        out.append(Warning_(
            f"{plural(len(others), 'orphaned segment')} of other users ({owners}; {size}): "
            "attached nowhere, creator dead",
            f"sudo shmsem rm --type shm --id {ids}   (or 'shmsem gc' run as their owner)"))
    for e in entries:
        o = e.obj
        if o.type != "msg" or not o.bytes:
            continue
        try:
            limit = MessageQueue.from_id(o.id).stat().max_bytes
        except (ShmsemError, OSError):
            continue
        if limit and o.bytes >= NEAR * limit:
            out.append(Warning_(
                f"msg key={format_key(o.key)} id={o.id} is {o.bytes * 100 // limit}% full "
                f"({o.bytes} of {limit} bytes): senders will block; its readers are behind",
                f"receive from it, or raise its limit: MessageQueue.from_id({o.id}).max_bytes "
                f"= {limit * 2}"))
    reused = [e for e in entries if e.creator is not None
              and e.creator.liveness is Liveness.REUSED and e.obj.nattch == 0]
    if reused:
        ids = " ".join(str(e.obj.id) for e in reused)
        out.append(Warning_(
            f"{plural(len(reused), 'unattached segment')} whose creator's pid now belongs to "
            "a newer process: probably orphans, which gc does not judge",
            f"shmsem show --id {ids.split()[0]}, then shmsem rm --type shm --id {ids}"))
    return out


def _fmt(n: Optional[int], unit: str, page: int) -> str:
    if n is None:
        return "?"
    if n >= UNLIMITED:
        return "unlimited"
    if unit == "pages":
        return f"{n} ({human_size(n * page)})"
    if unit == "bytes":
        return human_size(n) if n >= 1024 else str(n)
    return str(n)


def cmd_doctor(args: argparse.Namespace) -> int:
    limits = read_limits()
    page = os.sysconf("SC_PAGE_SIZE")
    entries = gather(load_objects(), inspect=False)
    usage = _usage(entries, limits, page)
    ns = namespace_report()
    warnings = _warnings(usage, entries, limits)
    orphans = [e for e in entries if e.orphan]
    if args.json:
        json.dump({
            "limits": limits,
            "page_size": page,
            "usage": [{"name": u.name, "description": u.description, "used": u.used,
                       "limit": u.limit, "percent": None if u.fraction is None
                       else round(u.fraction * 100, 2), "sysctl": u.sysctl} for u in usage],
            "orphans": {
                "mine": sum(1 for e in orphans if e.obj.uid == os.geteuid()),
                "others": sum(1 for e in orphans if e.obj.uid != os.geteuid()),
                "bytes": sum(e.obj.size or 0 for e in orphans),
            },
            "namespace": ns,
            "warnings": [{"message": w.message, "fix": w.fix} for w in warnings],
        }, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    style = Style.for_stream(sys.stdout)
    print(style("Limits and usage", "bold") + " (this IPC namespace; limits from "
          "/proc/sys/kernel)")
    rows: list[list[Cell]] = []
    for u in usage:
        f = u.fraction
        pct = "" if f is None else f"{f * 100:.0f}%"
        colour = None if f is None else ("red" if f >= NEAR else None)
        rows.append([u.description, _fmt(u.used, u.unit, page), _fmt(u.limit, u.unit, page),
                     (pct, colour), u.sysctl])
    table = render_table(["WHAT", "USED", "LIMIT", "USE", "SYSCTL"], rows, style, right=(3,))
    print("\n".join("  " + line for line in table.splitlines()))
    print(f"  largest message: kernel.msgmax = {_fmt(limits['msgmax'], '', page)} bytes; "
          f"semaphore ops per call: SEMOPM = {_fmt(limits['semopm'], '', page)}")
    print()
    print(style("IPC namespace", "bold"))
    for line in ns["summary"]:
        print(f"  - {line}")
    print()
    if not warnings:
        print(style("No warnings.", "green"))
        return 0
    print(style(f"{plural(len(warnings), 'warning')}", "bold+yellow"))
    for w in warnings:
        print(f"  ! {w.message}")
        print(f"    fix: {style(w.fix, 'cyan')}")
    return 0
