"""The commands behind `shmsem ls|show|rm|read|write|watch|gc` (cli.py parses
the arguments; `doctor` lives in doctor.py).

Each command takes the parsed arguments and returns the exit status.  Errors
the user can act on are raised as CliError (one line on stderr, status 1).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Iterator, Optional, Sequence

from .. import _core
from .util import CliError, Cell, Style, format_time, human_size, plural, render_table
from .inspect import FrameInfo, Peek, ShmsemHeader, peek, read_segment
from .sysv_table import (
    KIND_NAMES,
    KINDS,
    IpcObject,
    Liveness,
    ProcessInfo,
    filter_objects,
    group_name,
    mode_string,
    process_info,
    read_objects,
    shm_attachers,
    user_name,
    who,
)
from .target import Target, find, find_one, not_found_message
from ..channel import ChannelStats
from ..errors import FrameError, NotFoundError, RemovedError, ShmsemError, format_key
from ..msgq import MessageQueue
from ..sem import SemaphoreSet
from ..shm import SharedMemory

__all__ = [
    "Entry", "gather", "record", "load_objects", "permission_hint",
    "cmd_ls", "cmd_show", "cmd_rm", "cmd_read", "cmd_write", "cmd_watch", "cmd_gc",
]

JsonDict = dict[str, Any]


# ---------------------------------------------------------------------------
# Objects, with what we can learn about them


@dataclasses.dataclass(frozen=True)
class Entry:
    """An object from /proc/sysvipc, its creator process, and what reading
    its header showed (shm only)."""

    obj: IpcObject
    creator: Optional[ProcessInfo] = None
    peek: Optional[Peek] = None

    @property
    def orphan(self) -> bool:
        """A segment nobody has attached whose creator is dead: nothing will
        ever detach it, and only IPC_RMID frees it."""
        o = self.obj
        return (
            o.type == "shm" and not o.removed and o.nattch == 0
            and self.creator is not None and self.creator.liveness is Liveness.DEAD
        )

    @property
    def header(self) -> Optional[ShmsemHeader]:
        return self.peek.header if self.peek is not None else None


def load_objects(kinds: Sequence[str] = KINDS) -> list[IpcObject]:
    try:
        return read_objects(kinds)
    except OSError as e:
        raise CliError(
            f"cannot read /proc/sysvipc ({e.strerror or e}): is /proc mounted, and was the "
            "kernel built with System V IPC (CONFIG_SYSVIPC)?"
        ) from None


def _creator(o: IpcObject) -> Optional[ProcessInfo]:
    if o.type != "shm" or o.cpid is None:
        return None
    return process_info(o.cpid, created_after=o.ctime)


def gather(
    objects: Sequence[IpcObject], *, inspect: bool = True, frame: bool = False
) -> list[Entry]:
    """Entries for ``objects``; ``inspect`` reads each segment's header
    (attaching it read-only for a moment)."""
    out = []
    for o in objects:
        pk = None
        if inspect and o.type == "shm" and o.size is not None:
            pk = peek(o.id, o.size, frame=frame)
        out.append(Entry(o, _creator(o), pk))
    return out


def _header_record(h: Optional[ShmsemHeader]) -> Optional[JsonDict]:
    if h is None:
        return None
    fill = h.fill
    return {
        "kind": h.kind,
        "version": h.version,
        "capacity": h.capacity,
        "used": h.used,
        "fill": None if fill is None else round(fill, 4),
        "messages": h.messages,
        "last_seq": h.last_seq,
        "put_count": h.counter("put_count"),
        "get_count": h.counter("get_count"),
        "consumers_waiting": h.counter("consumers_waiting"),
        "producers_waiting": h.counter("producers_waiting"),
        "producer_lock_pid": h.counter("producer_lock_pid"),
        "consumer_lock_pid": h.counter("consumer_lock_pid"),
        "cell_stride": h.cell_stride,
        "current_cell": h.counter("current_cell"),
        "readers_waiting": h.counter("readers_waiting"),
        "writer_lock_pid": h.counter("writer_lock_pid"),
        "recoveries": h.counter("recoveries"),
        "creator_pid": h.creator_pid,
        "problem": h.problem,
    }


def record(e: Entry) -> JsonDict:
    """The JSON record of one object (docs/cli.md, "Object record")."""
    o, c = e.obj, e.creator
    return {
        "type": o.type,
        "key": o.key,
        "key_hex": format_key(o.key),
        "id": o.id,
        "owner": user_name(o.uid),
        "uid": o.uid,
        "group": group_name(o.gid),
        "gid": o.gid,
        "creator_user": user_name(o.cuid),
        "cuid": o.cuid,
        "cgid": o.cgid,
        "mode": o.mode,
        "mode_str": mode_string(o.mode),
        "size": o.size,
        "nsems": o.nsems,
        "messages": o.messages,
        "bytes": o.bytes,
        "nattch": o.nattch,
        "cpid": o.cpid,
        "creator_state": c.liveness.value if c is not None else None,
        "creator_alive": None if c is None or c.liveness is Liveness.UNKNOWN
        else c.liveness is Liveness.ALIVE,
        "creator_command": c.command if c is not None else None,
        "lpid": o.lpid,
        "lspid": o.lspid,
        "lrpid": o.lrpid,
        "atime": o.atime,
        "dtime": o.dtime,
        "ctime": o.ctime,
        "otime": o.otime,
        "stime": o.stime,
        "rtime": o.rtime,
        "rss": o.rss,
        "swap": o.swap,
        "removed": o.removed,
        "locked": o.locked,
        "orphan": e.orphan,
        "shmsem": _header_record(e.header),
        "inspect_error": e.peek.error if e.peek is not None else None,
    }


def _dump(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def permission_hint(o: IpcObject, action: str) -> str:
    """'permission denied ...: it belongs to nobody (uid 65534) ...; run as ...'."""
    owner = who(o.uid)
    made = f", created by {who(o.cuid)}" if o.cuid != o.uid else ""
    return (
        f"cannot {action} {o.describe()}: permission denied; it belongs to {owner}{made}, "
        f"mode {mode_string(o.mode)}; run this as that user or as root"
    )


# ---------------------------------------------------------------------------
# Cells for the human tables


def _owner_cell(o: IpcObject) -> str:
    return user_name(o.uid) or str(o.uid)


def _size_cell(o: IpcObject) -> str:
    if o.type == "shm":
        return human_size(o.size or 0)
    if o.type == "sem":
        return plural(o.nsems or 0, "sem")
    return plural(o.messages or 0, "msg")


def _creator_cell(e: Entry) -> Cell:
    c = e.creator
    if c is None:
        return "-"
    if c.liveness is Liveness.UNKNOWN:
        return ("? (other pid ns)", "dim")
    name = f" {c.command}" if c.command and c.liveness is Liveness.ALIVE else ""
    colour = {"alive": "green", "dead": "red", "reused": "yellow"}[c.liveness.value]
    label = "pid reused" if c.liveness is Liveness.REUSED else c.liveness.value
    return (f"{c.pid}{name} ({label})", colour)


def _last_pid_cell(o: IpcObject) -> str:
    if o.type == "shm":
        return str(o.lpid)
    if o.type == "msg":
        return f"{o.lspid}/{o.lrpid}"
    return "-"


def header_summary(h: ShmsemHeader) -> str:
    if h.problem is not None:
        return f"{h.title}? ({h.problem})"
    fill = h.fill
    pct = f"{fill * 100:.0f}%" if fill is not None else "?"
    if h.kind == "channel":
        return f"{h.title} {pct} full, {plural(h.messages or 0, 'msg')}"
    return f"{h.title} seq {h.last_seq}, {pct} full"


def _note_cell(e: Entry) -> Cell:
    notes = []
    colour: Optional[str] = None
    h = e.header
    if h is not None:
        notes.append(header_summary(h))
        colour = "cyan"
    if e.orphan:
        notes.append("orphan")
        colour = "yellow"
    if e.obj.removed:
        notes.append("removed, still attached")
        colour = colour or "dim"
    if e.obj.locked:
        notes.append("locked in RAM")
    if e.peek is not None and e.peek.error:
        notes.append(f"not readable: {e.peek.error}")
    return (", ".join(notes), colour) if notes else ""


# ---------------------------------------------------------------------------
# ls


def cmd_ls(args: argparse.Namespace) -> int:
    kinds = [args.type] if args.type else list(KINDS)
    objects = filter_objects(load_objects(kinds), mine=bool(args.mine))
    entries = gather(objects, inspect=not args.no_peek)
    if args.json:
        _dump({"objects": [record(e) for e in entries]})
        return 0
    style = Style.for_stream(sys.stdout)
    if not entries:
        scope = " of yours" if args.mine else ""
        what = {"shm": "shared memory segments", "sem": "semaphore sets",
                "msg": "message queues"}.get(args.type or "", "System V objects")
        print(f"no {what}{scope} in this IPC namespace")
        return 0
    rows: list[list[Cell]] = []
    for e in entries:
        o = e.obj
        rows.append([
            o.type, (format_key(o.key), "dim" if o.private else None), str(o.id),
            _owner_cell(o), mode_string(o.mode), _size_cell(o),
            str(o.nattch) if o.nattch is not None else "-",
            _creator_cell(e), _last_pid_cell(o), _note_cell(e),
        ])
    headers = ["TYPE", "KEY", "ID", "OWNER", "MODE", "SIZE", "NATTCH", "CREATOR", "LAST PID",
               "NOTE"]
    print(render_table(headers, rows, style, right=(2, 5, 6)))
    counts = [plural(sum(1 for e in entries if e.obj.type == k), KIND_NAMES[k]) for k in kinds]
    orphans = [e for e in entries if e.orphan]
    tail = ""
    if orphans:
        mine = sum(1 for e in orphans if e.obj.uid == os.geteuid())
        hint = "; 'shmsem gc --dry-run' shows what gc would remove" if mine else ""
        tail = style(f"; {plural(len(orphans), 'orphan')} (attached nowhere, creator dead)"
                     f"{hint}", "yellow")
    print(", ".join(counts) + tail)
    return 0


# ---------------------------------------------------------------------------
# show


def _sem_members(o: IpcObject) -> tuple[Optional[list[JsonDict]], Optional[str]]:
    try:
        s = SemaphoreSet.from_id(o.id)
        values = s.values
        members = []
        for i, v in enumerate(values):
            m = s[i]
            members.append({"index": i, "value": v, "ncnt": m.ncnt, "zcnt": m.zcnt,
                            "pid": m.last_pid})
        return members, None
    except PermissionError:
        return None, "permission denied"
    except (ShmsemError, OSError) as e:
        return None, str(e)


def _msg_max_bytes(o: IpcObject) -> tuple[Optional[int], Optional[str]]:
    try:
        return MessageQueue.from_id(o.id).stat().max_bytes, None
    except PermissionError:
        return None, "permission denied"
    except (ShmsemError, OSError) as e:
        return None, str(e)


def _frame_record(f: Optional[FrameInfo]) -> Optional[JsonDict]:
    if f is None:
        return None
    text: Optional[str]
    try:
        text = f.preview.decode("utf-8") if f.valid else None
    except UnicodeDecodeError:
        text = None
    return {
        "length": f.length,
        "valid": f.valid,
        "preview_text": text,
        "preview_base64": base64.b64encode(f.preview).decode("ascii"),
        "preview_truncated": f.valid and len(f.preview) < f.length,
    }


def _frame_summary(f: FrameInfo) -> str:
    if not f.valid:
        return f"none (the first 4 bytes say {f.length}, which does not fit)"
    try:
        text = repr(f.preview.decode("utf-8"))
    except UnicodeDecodeError:
        text = f.preview[:32].hex(" ") + (" ..." if len(f.preview) > 32 else "")
    more = " ..." if len(f.preview) < f.length else ""
    return f"{plural(f.length, 'byte')}: {text}{more}"


def _process(pid: int) -> JsonDict:
    info = process_info(pid)
    return {"pid": pid, "command": info.command}


def _details(e: Entry) -> JsonDict:
    rec = record(e)
    o = e.obj
    rec.update({"attached_pids": None, "frame": None, "semaphores": None, "max_bytes": None,
                "detail_error": None})
    if o.type == "shm":
        rec["attached_pids"] = [_process(p) for p in shm_attachers(o.id)] if o.nattch else []
        if e.peek is not None and e.header is None:
            rec["frame"] = _frame_record(e.peek.frame)
    elif o.type == "sem":
        rec["semaphores"], rec["detail_error"] = _sem_members(o)
    else:
        rec["max_bytes"], rec["detail_error"] = _msg_max_bytes(o)
    return rec


def _yes(b: Optional[bool]) -> str:
    return "?" if b is None else ("yes" if b else "no")


def _lock(tid: Optional[int]) -> str:
    # The lock word holds a thread id as the holder's own PID namespace
    # numbers it: for a single-threaded holder in our namespace, its pid.
    return "free" if not tid else f"held by thread {tid}"


def _pid_state(pid: int) -> str:
    """'1234 python (alive)', '1234 (dead)'."""
    if pid <= 0:
        return str(pid)
    info = process_info(pid)
    name = f" {info.command}" if info.command and info.liveness is Liveness.ALIVE else ""
    return f"{pid}{name} ({info.liveness.value})"


def _show_human(rec: JsonDict, e: Entry, style: Style) -> list[str]:
    o = e.obj
    lines = [style(f"{KIND_NAMES[o.type]}  key {format_key(o.key)}  id {o.id}", "bold")]

    def add(label: str, value: str) -> None:
        lines.append(f"  {label:<14}{value}")

    add("owner", f"{who(o.uid)}, group {group_name(o.gid) or o.gid}")
    add("creator", f"{who(o.cuid)}, group {group_name(o.cgid) or o.cgid}")
    add("mode", f"{mode_string(o.mode)} ({o.mode:04o})")
    if o.type == "shm":
        add("size", f"{o.size} bytes ({human_size(o.size or 0)})")
        if o.rss is not None:
            add("resident", f"{human_size(o.rss)} in RAM, {human_size(o.swap or 0)} in swap")
        attached = rec["attached_pids"] or []
        names = ", ".join(f"{p['pid']} {p['command'] or '?'}" for p in attached)
        seen = f": {names}" if names else ""
        add("attached", f"{plural(o.nattch or 0, 'process', 'processes')}{seen}")
        c = e.creator
        if c is not None:
            status = _creator_cell(e)
            add("creator pid", status if isinstance(status, str) else style(*status))
        add("last pid", f"{_pid_state(o.lpid or 0)} (the last shmat or shmdt)")
        add("attached at", format_time(o.atime))
        add("detached at", format_time(o.dtime))
        add("changed at", format_time(o.ctime))
        state = []
        if o.removed:
            state.append("removed (IPC_RMID): it goes away when the last process detaches")
        if o.locked:
            state.append("locked in RAM (SHM_LOCK)")
        if e.orphan:
            state.append("orphan: attached nowhere and its creator is dead"
                         + (" (remove it with 'shmsem gc')" if o.uid == os.geteuid() else ""))
        for s in state:
            add("state", s)
        if e.peek is not None and e.peek.error:
            add("contents", f"not readable: {e.peek.error}")
        h = e.header
        if h is not None:
            lines.extend(_header_lines(h, style))
        elif e.peek is not None and e.peek.frame is not None:
            add("frame", _frame_summary(e.peek.frame))
    elif o.type == "sem":
        add("semaphores", str(o.nsems))
        members = rec["semaphores"]
        if members is None:
            add("values", f"not readable: {rec['detail_error']}")
        else:
            for m in members:
                add(f"  [{m['index']}]", f"value {m['value']}, {m['ncnt']} waiting for more, "
                    f"{m['zcnt']} waiting for zero, last pid {m['pid']}")
        add("last semop", format_time(o.otime))
        add("changed at", format_time(o.ctime))
    else:
        add("messages", str(o.messages))
        limit = rec["max_bytes"]
        add("bytes", f"{o.bytes}" + (f" of at most {limit}" if limit is not None else ""))
        add("last send", f"pid {_pid_state(o.lspid or 0)} at {format_time(o.stime)}")
        add("last receive", f"pid {_pid_state(o.lrpid or 0)} at {format_time(o.rtime)}")
        add("changed at", format_time(o.ctime))
    return lines


def header_fields(h: ShmsemHeader) -> list[tuple[str, str]]:
    """(label, value) lines describing a Channel or Mailbox header."""
    s = h.stats
    if h.problem is not None or s is None:
        return [("problem", h.problem or "no counters")]
    fill = h.fill or 0.0
    if isinstance(s, ChannelStats):
        return [
            ("capacity", f"{h.capacity} bytes ({human_size(h.capacity)})"),
            ("used", f"{s.used} bytes ({fill * 100:.1f}%)"),
            ("messages", f"{s.messages} queued ({s.put_count} put, {s.get_count} taken)"),
            ("last seq", str(h.last_seq)),
            ("waiters", f"consumers {_yes(s.consumers_waiting)}, "
                        f"producers {_yes(s.producers_waiting)}"),
            ("locks", f"producer {_lock(s.producer_lock_pid)}, "
                      f"consumer {_lock(s.consumer_lock_pid)}; "
                      f"{s.recoveries} taken over from dead holders"),
        ]
    used = "?" if h.used is None else f"{h.used} bytes ({fill * 100:.1f}%)"
    return [
        ("capacity", f"{h.capacity} bytes per value"),
        ("used", f"{used}, in cell {s.current_cell}"),
        ("messages", f"{s.seq} published"),
        ("last seq", str(s.seq)),
        ("waiters", f"readers {_yes(s.readers_waiting)}"),
        ("locks", f"writer {_lock(s.writer_lock_pid)}; "
                  f"{s.recoveries} taken over from dead holders"),
    ]


def _header_lines(h: ShmsemHeader, style: Style) -> list[str]:
    out = [f"  {'shmsem':<14}{style(h.title, 'cyan')} (protocol version {h.version}), "
           f"created by pid {h.creator_pid}"]
    out.extend(f"  {label:<14}{value}" for label, value in header_fields(h))
    return out


def cmd_show(args: argparse.Namespace) -> int:
    types = [args.type] if args.type else list(KINDS)
    objects = load_objects(types)
    target: Target = args.target
    matches = find(target, objects)
    if not matches:
        raise CliError(not_found_message(target, types))
    entries = gather(matches, inspect=True, frame=True)
    recs = [_details(e) for e in entries]
    if args.json:
        _dump({"objects": recs})
        return 0
    style = Style.for_stream(sys.stdout)
    blocks = ["\n".join(_show_human(r, e, style)) for r, e in zip(recs, entries)]
    if len(entries) > 1:
        print(f"{target.text} matches {len(entries)} objects:\n")
    print("\n\n".join(blocks))
    return 0


# ---------------------------------------------------------------------------
# rm


def _remove(o: IpcObject) -> None:
    """IPC_RMID, after checking that the id still names the object we listed
    (ids are reused once freed)."""
    if o.type == "shm":
        st = _core.shm_stat(o.id)
        if st[0] != o.key or st[3] != o.cuid:
            raise NotFoundError(f"{o.describe()} was removed meanwhile", id=o.id)
        _core.shm_rmid(o.id)
    elif o.type == "sem":
        s = SemaphoreSet.from_id(o.id)
        if s.stat().key != o.key:
            raise NotFoundError(f"{o.describe()} was removed meanwhile", id=o.id)
        s.remove()
    else:
        q = MessageQueue.from_id(o.id)
        if q.stat().key != o.key:
            raise NotFoundError(f"{o.describe()} was removed meanwhile", id=o.id)
        q.remove()


def cmd_rm(args: argparse.Namespace) -> int:
    types = [args.type] if args.type else list(KINDS)
    objects = load_objects(types)
    chosen: list[IpcObject] = []
    problems = []
    for target in args.targets:
        try:
            o = find_one(target, objects, types)
        except CliError as e:
            problems.append(str(e))
            continue
        if o not in chosen:
            chosen.append(o)
    if problems:
        for p in problems[:-1]:
            print(f"shmsem rm: {p}", file=sys.stderr)
        raise CliError(problems[-1] + ("; nothing was removed" if len(args.targets) > 1 else ""))
    failed = 0
    for o in chosen:
        try:
            _remove(o)
        except PermissionError:
            print(f"shmsem rm: {permission_hint(o, 'remove')}", file=sys.stderr)
            failed += 1
            continue
        except (NotFoundError, RemovedError):
            print(f"shmsem rm: {o.describe()} is already gone", file=sys.stderr)
            failed += 1
            continue
        extra = ""
        if o.type == "shm" and o.nattch:
            extra = (f" (still attached {plural(o.nattch, 'time', 'times')}: "
                     "its memory is freed at the last detach)")
        print(f"removed {o.describe()}{extra}")
    return 1 if failed else 0


# ---------------------------------------------------------------------------
# read and write


def _segment(args: argparse.Namespace) -> IpcObject:
    return find_one(args.target, load_objects(["shm"]), ["shm"])


def _check_owner(o: IpcObject, trust: bool) -> None:
    """As SharedMemory.open does: a segment someone else owns may be a squatter
    waiting to hand us its data or to receive ours.  Called once attached, so
    that a segment we may not access at all says "permission denied"."""
    euid = os.geteuid()
    if trust or (o.uid == o.cuid == euid):
        return
    raise CliError(
        f"{o.describe()} belongs to {user_name(o.uid)} (created by {user_name(o.cuid)}), "
        f"not to you ({user_name(euid)}): someone may have pre-created this key; "
        "pass --trust if you expect that"
    )


def _attach(o: IpcObject, readonly: bool) -> SharedMemory:
    try:
        return SharedMemory.from_id(o.id, readonly=readonly)
    except PermissionError:
        raise CliError(permission_hint(o, "read" if readonly else "write to")) from None
    except (NotFoundError, RemovedError):
        raise CliError(f"{o.describe()} was removed") from None


def _refuse_shmsem(o: IpcObject, shm: SharedMemory, doing: str) -> None:
    header, _ = read_segment(shm)
    if header is not None:
        raise CliError(
            f"{o.describe()} is a shmsem {header.title}, not a .NET-format frame; {doing} "
            f"(see it with 'shmsem show {o.id}')"
        )


def hexdump(data: bytes) -> str:
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        hexpart = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{i:08x}  {hexpart:<47}  |{text}|")
    return "\n".join(lines)


def cmd_read(args: argparse.Namespace) -> int:
    o = _segment(args)
    shm = _attach(o, readonly=True)
    try:
        _check_owner(o, args.trust)
        _refuse_shmsem(o, shm, "read it with the Channel or Mailbox API")
        try:
            payload = shm.read()
        except FrameError:
            n = int.from_bytes(shm.read_at(0, 4), "little", signed=True) if shm.size >= 4 else 0
            raise CliError(
                f"{o.describe()} holds no valid frame: its first 4 bytes say {n}, but a "
                f"frame payload must be 0 to {max(shm.size - 4, 0)} bytes; it is not in the "
                "int32-length-then-payload format (see 'shmsem show' for what it holds)"
            ) from None
    finally:
        shm.detach()
    mode = args.format
    if mode == "raw":
        sys.stdout.flush()
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()
        return 0
    if mode == "json":
        try:
            text: Optional[str] = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        _dump({"key": o.key, "key_hex": format_key(o.key), "id": o.id, "size": o.size,
               "length": len(payload), "text": text,
               "base64": base64.b64encode(payload).decode("ascii")})
        return 0
    if mode == "hex":
        if payload:
            print(hexdump(payload))
        return 0
    try:
        print(payload.decode("utf-8"))
    except UnicodeDecodeError:
        # Not text: show it as hex rather than as mojibake; --raw gives the bytes.
        print(hexdump(payload))
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    o = _segment(args)
    if args.data == "-":
        data = sys.stdin.buffer.read()
    else:
        data = os.fsencode(args.data)  # the argument's bytes, as the shell passed them
    size = o.size or 0
    if len(data) > size - 4:
        raise CliError(
            f"{plural(len(data), 'byte')} do not fit {o.describe()}: its {size} bytes hold a "
            f"4-byte length and at most {max(size - 4, 0)} bytes of payload"
        )
    shm = _attach(o, readonly=False)
    try:
        _check_owner(o, args.trust)  # attaching is harmless; reading or writing is not
        if not args.force:
            _refuse_shmsem(o, shm, "writing a frame would destroy its header (--force does "
                           "it anyway)")
        shm.write(data)
    finally:
        shm.detach()
    print(f"wrote {plural(len(data), 'byte')} to {o.describe()}")
    return 0


# ---------------------------------------------------------------------------
# watch


class _Gone(Exception):
    pass


Sample = tuple[list[tuple[str, str]], JsonDict]


def _shm_sampler(o: IpcObject) -> tuple[Callable[[], Sample], Callable[[], None]]:
    shm = _attach(o, readonly=True)

    def sample() -> Sample:
        try:
            st = shm.stat()
        except (RemovedError, NotFoundError):
            raise _Gone from None
        if st.removed:
            raise _Gone
        header, frame = read_segment(shm, frame=True)
        fields = [("nattch", f"{st.nattch} (this watch is 1)"), ("last pid", str(st.lpid))]
        if header is not None:
            fields.append(("shmsem", header_summary(header)))
            fields.extend(header_fields(header))
        elif frame is not None:
            fields.append(("frame", _frame_summary(frame)))
        data = {"nattch": st.nattch, "lpid": st.lpid, "frame": _frame_record(frame)
                if header is None else None, "shmsem": _header_record(header)}
        return fields, data

    return sample, shm.detach


def _sem_sampler(o: IpcObject) -> tuple[Callable[[], Sample], Callable[[], None]]:
    def sample() -> Sample:
        members, err = _sem_members(o)
        if members is None:
            if err and "permission" in err:
                raise CliError(permission_hint(o, "read"))
            raise _Gone
        fields = [(f"[{m['index']}]", f"value {m['value']}  ncnt {m['ncnt']}  "
                   f"zcnt {m['zcnt']}  pid {m['pid']}") for m in members]
        return fields, {"semaphores": members}

    return sample, lambda: None


def _msg_sampler(o: IpcObject) -> tuple[Callable[[], Sample], Callable[[], None]]:
    def sample() -> Sample:
        try:
            st = MessageQueue.from_id(o.id).stat()
        except PermissionError:
            raise CliError(permission_hint(o, "read")) from None
        except (NotFoundError, RemovedError):
            raise _Gone from None
        fields = [("messages", str(st.current_messages)),
                  ("bytes", f"{st.current_bytes} of at most {st.max_bytes}"),
                  ("last send", f"pid {st.last_send_pid}"),
                  ("last receive", f"pid {st.last_receive_pid}")]
        return fields, {"messages": st.current_messages, "bytes": st.current_bytes,
                        "max_bytes": st.max_bytes, "lspid": st.last_send_pid,
                        "lrpid": st.last_receive_pid}

    return sample, lambda: None


def _ticks(count: Optional[int]) -> Iterator[int]:
    i = 0
    while count is None or i < count:
        yield i
        i += 1


def cmd_watch(args: argparse.Namespace) -> int:
    types = [args.type] if args.type else list(KINDS)
    o = find_one(args.target, load_objects(types), types)
    make = {"shm": _shm_sampler, "sem": _sem_sampler, "msg": _msg_sampler}[o.type]
    sample, close = make(o)
    # Redrawing in place needs cursor movement, which a dumb terminal lacks.
    tty = sys.stdout.isatty() and not args.json and os.environ.get("TERM") != "dumb"
    style = Style.for_stream(sys.stdout)
    title = f"{KIND_NAMES[o.type]} key {format_key(o.key)} id {o.id}"
    previous: dict[str, str] = {}
    try:
        for i in _ticks(args.count):
            if i:
                time.sleep(args.interval)
            try:
                fields, data = sample()
            except _Gone:
                if tty:
                    sys.stdout.write("\n")
                raise CliError(f"{o.describe()} was removed; nothing left to watch") from None
            now = time.time()
            if args.json:
                line = {"time": round(now, 3), "type": o.type, "key": o.key,
                        "key_hex": format_key(o.key), "id": o.id, **data}
                print(json.dumps(line), flush=True)
            elif tty:
                out = [style(title, "bold") + f"   every {args.interval:g}s, Ctrl-C stops   "
                       + time.strftime("%H:%M:%S", time.localtime(now)), ""]
                for label, value in fields:
                    changed = previous.get(label) not in (None, value)
                    out.append(f"  {label:<14}{style(value, 'bold+yellow' if changed else None)}")
                sys.stdout.write("\x1b[H\x1b[J" + "\n".join(out) + "\n")
                sys.stdout.flush()
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(now))
                print(f"{stamp}  " + "  ".join(f"{k}: {v}" for k, v in fields), flush=True)
            previous = dict(fields)
    except KeyboardInterrupt:
        # Ctrl-C is how watch normally ends.
        if tty:
            sys.stdout.write("\n")
            sys.stdout.flush()
        return 0
    finally:
        close()
    return 0


# ---------------------------------------------------------------------------
# gc


def _why_kept(e: Entry, euid: int) -> str:
    o, c = e.obj, e.creator
    if o.removed:
        return "already removed, still attached"
    if o.nattch:
        return f"attached by {plural(o.nattch, 'process', 'processes')}"
    if c is None or c.liveness is Liveness.UNKNOWN:
        return "its creator is in another PID namespace: cannot tell whether it is alive"
    if c.liveness is Liveness.ALIVE:
        return f"its creator, pid {c.pid} {c.command or ''}, is alive".replace("  ", " ")
    if c.liveness is Liveness.REUSED:
        return (f"its creator's pid {c.pid} now belongs to a newer process; check with "
                f"'shmsem show {o.id}' and remove it with 'shmsem rm --type shm --id {o.id}'")
    if o.uid != euid:
        return f"it belongs to {who(o.uid)}, not to you"
    return "?"


def _still_orphan(o: IpcObject, euid: int) -> bool:
    """Re-check just before IPC_RMID: same object, still unattached, still ours."""
    try:
        key, uid, _gid, cuid, _cgid, _mode, _size, _at, _dt, _ct, cpid, _lpid, nattch = (
            _core.shm_stat(o.id))
    except (ShmsemError, OSError):
        return False
    return key == o.key and cuid == o.cuid and cpid == o.cpid and uid == euid and nattch == 0


def _gc_line(e: Entry) -> str:
    o, c = e.obj, e.creator
    pid = f"pid {c.pid}" if c is not None else "?"
    return (f"{o.describe()}  {human_size(o.size or 0)}, created by {pid} (dead) "
            f"at {format_time(o.ctime)}")


_CHANGED = "it changed since it was listed (attached, removed or replaced)"


def cmd_gc(args: argparse.Namespace) -> int:
    euid = os.geteuid()
    objects = load_objects(["shm"])
    named = bool(args.targets)
    if named:
        scope: list[IpcObject] = []
        for target in args.targets:
            o = find_one(target, objects, ["shm"])
            if o not in scope:
                scope.append(o)
    else:
        scope = objects
    entries = gather(scope, inspect=False)
    collect = [e for e in entries if e.orphan and e.obj.uid == euid]
    if named:
        kept = [e for e in entries if e not in collect]
    else:
        kept = [e for e in entries if e.orphan and e.obj.uid != euid]
    removed: list[Entry] = []
    changed: list[Entry] = []
    failed: list[tuple[Entry, str]] = []
    for e in collect:
        if args.dry_run:
            removed.append(e)
            continue
        if not _still_orphan(e.obj, euid):
            changed.append(e)  # attached, removed or replaced since it was listed
            continue
        try:
            _core.shm_rmid(e.obj.id)
        except PermissionError:
            failed.append((e, permission_hint(e.obj, "remove")))
        except (ShmsemError, OSError) as err:
            failed.append((e, str(err)))
        else:
            removed.append(e)
    if args.json:
        _dump({
            "dry_run": bool(args.dry_run),
            "removed": [record(e) for e in removed],
            "kept": [{"id": e.obj.id, "key": e.obj.key, "key_hex": format_key(e.obj.key),
                      "reason": _why_kept(e, euid)} for e in kept]
            + [{"id": e.obj.id, "key": e.obj.key, "key_hex": format_key(e.obj.key),
                "reason": _CHANGED} for e in changed],
            "failed": [{"id": e.obj.id, "key": e.obj.key, "key_hex": format_key(e.obj.key),
                        "error": msg} for e, msg in failed],
        })
    else:
        verb = "would remove" if args.dry_run else "removed"
        for e in removed:
            print(f"{verb} {_gc_line(e)}")
        for e in changed:
            print(f"kept {e.obj.describe()}: {_CHANGED}")
        if not removed and not failed:
            print("nothing to collect: no segment of yours is both unattached and left by "
                  "a dead creator")
        elif removed:
            total = sum(e.obj.size or 0 for e in removed)
            again = "; run 'shmsem gc' to remove them" if args.dry_run else ""
            print(f"{verb} {plural(len(removed), 'segment')}, {human_size(total)}{again}")
        if named:
            for e in kept:
                print(f"kept {e.obj.describe()}: {_why_kept(e, euid)}")
        elif kept:
            owners = sorted({who(e.obj.uid) for e in kept})
            print(f"left alone {plural(len(kept), 'orphaned segment')} of other users "
                  f"({', '.join(owners)}): gc removes only your own; as that user run "
                  "'shmsem gc'")
    for e, msg in failed:
        print(f"shmsem gc: {e.obj.describe()}: {msg}", file=sys.stderr)
    return 1 if failed else 0
