"""The `shmsem` command line (also `python -m shmsem`).

This module is the argparse front end: the parser, main(), and the one place
where errors become one line on stderr and an exit status (0 ok, 1 error,
2 usage).  The commands themselves live in commands.py and doctor.py;
docs/cli.md documents every command, option and JSON output.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Any, Callable, NoReturn, Optional, Sequence

from .. import __version__
from .bench.options import add_peers_options
from .util import CliError, one_line, positive_float, positive_int
from ..errors import ShmsemError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

KEY_HELP = (
    "0x-hex is a key; a plain decimal is tried as an id and as a key (when it matches "
    "several objects, narrow it with --type, --id, or the key in hex)"
)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line that says what to do."""

    def error(self, message: str) -> NoReturn:
        if "invalid choice" in message and "COMMAND" in message:
            bad = message.split("invalid choice: ", 1)[1].split(" (", 1)[0]
            message = f"unknown command {bad} (commands: {', '.join(_commands())})"
        elif "the following arguments are required: COMMAND" in message:
            message = f"a command is needed: {', '.join(_commands())}"
        self.exit(EXIT_USAGE, f"{self.prog}: {one_line(message)}; see '{self.prog} --help'\n")


_COMMANDS: list[str] = []


def _commands() -> list[str]:
    return _COMMANDS


# -- the commands: each imports its module only when it runs ----------------


def _cmd_demo(args: argparse.Namespace) -> int:
    run: Callable[[Any], int] = _import("demo").run
    return run(sys.stdout)


def _lazy(name: str, module: str = "commands") -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        func: Callable[[argparse.Namespace], int] = getattr(_import(module), name)
        return func(args)

    return run


def _import(module: str) -> Any:
    """Import shmsem.cli.<module>; an installation this user may not read is a
    CliError that says what could not be read."""
    import importlib

    name = f"{__package__}.{module}"
    try:
        return importlib.import_module(name)
    except (ImportError, PermissionError) as e:
        why = _unreadable(e, name)
        if why is None:
            raise
        raise CliError(why) from e


def _unreadable(e: BaseException, importing: Optional[str] = None) -> Optional[str]:
    """When a failed import comes from files this user may not read, say
    which; None when it does not.  A directory Python may not list makes a
    plain ModuleNotFoundError, so the directories are checked here."""
    who = f"uid {os.geteuid()}"
    fix = ("install shmsem (and Python) where this user can read them, "
           "or run shmsem as a user who can")
    if isinstance(e, PermissionError) and e.filename:
        return (f"cannot import {importing}: {who} may not read {e.filename} "
                f"(permission denied); {fix}")
    name = getattr(e, "name", None)
    if not isinstance(e, ImportError) or not name:
        return None
    parent = name.rpartition(".")[0]
    dirs = getattr(sys.modules.get(parent), "__path__", None) if parent else sys.path
    for where in dirs or ():
        blocked = _blocked_dir(str(where))
        if blocked is not None:
            holds = "" if blocked == where else f", which holds {where}"
            return (f"cannot import {name}: {who} may not read {blocked} "
                    f"(permission denied){holds}; {fix}")
    return None


def _blocked_dir(path: str) -> Optional[str]:
    """The first directory on the way to ``path`` (or ``path`` itself) that
    this process may not enter or list; None if there is none, or if the
    path is missing."""
    current = "/"
    for part in os.path.abspath(path).split(os.sep):
        if not part:
            continue
        step = os.path.join(current, part)
        try:
            os.stat(step)
        except PermissionError:
            return current
        except OSError:
            return None
        current = step
    try:
        os.listdir(current)
    except PermissionError:
        return current
    except OSError:
        return None
    return None


# -- the parser --------------------------------------------------------------


def _add(
    sub: Any, name: str, help: str, description: str, epilog: str,
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    # Raw formatting keeps the examples' lines; the prose is wrapped here instead.
    paragraphs = [textwrap.fill(" ".join(par.split()), 79)
                  for par in description.split("\n") if par.strip()]
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description="\n\n".join(paragraphs), epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func, _parser=p)
    _COMMANDS.append(name)
    return p


def _type_opt(p: argparse.ArgumentParser, what: str = "look only at this type") -> None:
    p.add_argument("--type", choices=("shm", "sem", "msg"),
                   help=f"{what}: shm (segments), sem (semaphore sets), msg (queues)")


def _id_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id", dest="by_id", action="store_true",
                   help="the values are ids, never keys (decimal or 0x-hex)")


def _trust_opt(p: argparse.ArgumentParser, doing: str) -> None:
    p.add_argument("--trust", action="store_true",
                   help=f"{doing} a segment another user owns (refused by default: it may "
                   "be a squatter on the key)")


def _json_opt(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true",
                   help=f"{what} as JSON (schema in docs/cli.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="shmsem",
        description="System V shared memory, semaphores and message queues, and shmsem "
        "channels: see, inspect, clean up, benchmark.",
        epilog="examples:\n  shmsem ls\n  shmsem show 0x5e001001\n  shmsem gc --dry-run\n\n"
        "KEY|ID: 0x-hex values are keys; plain decimals are ids or keys (see 'shmsem show "
        "--help').\nExit status: 0 ok, 1 error, 2 usage.  Colour only on a terminal, never "
        "with NO_COLOR set.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"shmsem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _COMMANDS.clear()

    p = _add(sub, "ls", "list segments, semaphore sets and queues",
             "One table of every System V object in this IPC namespace, from "
             "/proc/sysvipc: key and id, owner, mode, size (or semaphores, or messages), "
             "attach count, creator pid (alive or dead, and its command) and last pid.\n"
             "shmsem Channel and Mailbox segments are recognised by their header, and "
             "shown with how full they are; orphans (attached nowhere, creator dead) are "
             "marked.  Reading a header attaches the segment read-only for a moment, which "
             "the kernel records as its last pid; --no-peek avoids that.",
             "examples:\n  shmsem ls\n  shmsem ls --type shm --mine\n"
             "  shmsem ls --json | jq '.objects[] | select(.orphan)'",
             _lazy("cmd_ls"))
    _json_opt(p, "print the objects")
    _type_opt(p, "list only this type")
    p.add_argument("--mine", action="store_true",
                   help="only objects you own or created")
    p.add_argument("--no-peek", action="store_true",
                   help="do not attach segments to recognise Channels and Mailboxes")

    p = _add(sub, "show", "everything known about one object",
             "Everything known about an object: owner, creator, mode, times, attached "
             "processes, the creator's state; a segment's frame, or a Channel or Mailbox's "
             "capacity, used bytes, messages, waiters, locks and last sequence number; a "
             "semaphore set's values and waiters; a queue's limits.\n\n"
             "KEY|ID: 0x-hex (0x5e001001), a negative decimal, or a decimal of 2**31 or "
             "more, is a key.  Any other decimal is tried as an id of every type and as a "
             "key; show prints every object it matches.",
             "examples:\n  shmsem show 0x5e001001\n  shmsem show 32769 --type shm\n"
             "  shmsem show --id 5 --json",
             _lazy("cmd_show"))
    p.add_argument("target", metavar="KEY|ID", help=KEY_HELP)
    _type_opt(p)
    _id_opt(p)
    _json_opt(p, "print the object(s)")

    p = _add(sub, "rm", "remove objects (IPC_RMID)",
             "Remove segments, semaphore sets or queues.  Asks nothing: every value must "
             "name exactly one object, and if any value names none or several, nothing "
             "is removed.  A segment that is still attached disappears when its last "
             "process detaches.",
             "examples:\n  shmsem rm 0x5e001001\n  shmsem rm --type sem 0x5e001001\n"
             "  shmsem rm --type shm --id 32769 32770",
             _lazy("cmd_rm"))
    p.add_argument("targets", metavar="KEY|ID", nargs="+", help=KEY_HELP)
    _type_opt(p, "remove only objects of this type")
    _id_opt(p)

    p = _add(sub, "read", "print the frame in a segment (.NET helper format)",
             "Print the frame a segment holds in the .NET helper's format (int32 "
             "little-endian length, then the payload), as SharedMemory.read() returns "
             "it.  By default as UTF-8 text (a hex dump if it is not text).",
             "examples:\n  shmsem read 0x5e001001\n  shmsem read 0x5e001001 --raw > frame.bin\n"
             "  shmsem read 0x5e001001 --json | jq -r .text",
             _lazy("cmd_read"))
    p.add_argument("target", metavar="KEY|ID", help=KEY_HELP)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--raw", dest="format", action="store_const", const="raw",
                     help="the payload bytes, exactly")
    fmt.add_argument("--hex", dest="format", action="store_const", const="hex",
                     help="a hex dump")
    fmt.add_argument("--json", dest="format", action="store_const", const="json",
                     help="JSON with the text (or null) and base64 (docs/cli.md)")
    p.set_defaults(format="text")
    _trust_opt(p, "read")
    _id_opt(p)

    p = _add(sub, "write", "write a frame into a segment (.NET helper format)",
             "Write one frame in the .NET helper's format (int32 little-endian length, "
             "then the payload), as SharedMemory.write() does.  DATA is written as the "
             "bytes the shell passed (UTF-8 text); '-' reads the payload from stdin.  "
             "The segment must exist.  A shmsem Channel or Mailbox is refused (a frame "
             "would overwrite its header) unless --force.",
             "examples:\n  shmsem write 0x5e001001 'hello'\n"
             "  printf '\\x01\\x02' | shmsem write 0x5e001001 -",
             _lazy("cmd_write"))
    p.add_argument("target", metavar="KEY|ID", help=KEY_HELP)
    p.add_argument("data", metavar="DATA|-", help="the payload, or - for stdin")
    p.add_argument("--force", action="store_true",
                   help="write even over a Channel or Mailbox header")
    _trust_opt(p, "write to")
    _id_opt(p)

    p = _add(sub, "watch", "show an object's frame, values or counters as they change",
             "Refresh in place (on a terminal) with a segment's frame, a Channel's or "
             "Mailbox's counters, a semaphore set's values and waiters, or a queue's "
             "length.  Changed values are highlighted.  Not on a terminal, it prints one "
             "line per sample.  Ctrl-C ends it (exit status 0).",
             "examples:\n  shmsem watch 0x5e001001\n"
             "  shmsem watch 0x5e001001 --type sem --interval 0.2\n"
             "  shmsem watch 32769 --count 5 --json",
             _lazy("cmd_watch"))
    p.add_argument("target", metavar="KEY|ID", help=KEY_HELP)
    p.add_argument("--interval", type=positive_float, default=1.0, metavar="SECONDS",
                   help="time between samples (default 1)")
    p.add_argument("--count", type=positive_int, default=None, metavar="N",
                   help="stop after N samples (default: until Ctrl-C)")
    _type_opt(p)
    _id_opt(p)
    _json_opt(p, "print one JSON object per sample, one per line,")

    p = _add(sub, "gc", "remove your orphaned segments",
             "Remove orphaned segments: attached by no process (nattch 0), with a dead "
             "creator, and owned by you (your effective uid; root is no exception).  Lists "
             "what it removed, or with --dry-run what it would remove.  Semaphore sets and "
             "queues carry no attach count or creator pid, so gc never removes them.  With "
             "KEY|ID values it considers only those segments, and says why it keeps each.",
             "examples:\n  shmsem gc --dry-run\n  shmsem gc\n  shmsem gc 0x5e001001 --json",
             _lazy("cmd_gc"))
    p.add_argument("targets", metavar="KEY|ID", nargs="*",
                   help="only these segments (default: all of yours)")
    p.add_argument("--dry-run", action="store_true",
                   help="list what would be removed; remove nothing")
    _json_opt(p, "print what was removed and kept")
    _id_opt(p)

    p = _add(sub, "doctor", "kernel limits, usage, IPC namespace, warnings",
             "Compare the kernel's System V limits (kernel.shmmax, shmall, shmmni, sem, "
             "msgmnb, msgmax, msgmni) with what is in use; say whether this process is in "
             "the host's IPC namespace or a separate one (a container) and what that means; "
             "list warnings (near a limit, orphans present), each with the command that "
             "fixes it.",
             "examples:\n  shmsem doctor\n  shmsem doctor --json | jq .warnings",
             _lazy("cmd_doctor", "doctor"))
    _json_opt(p, "print the report")

    _add(sub, "demo", "two processes exchange messages; prints what happened",
         "Two processes exchange .NET-format frames through a segment guarded by "
         "semaphores, then stream messages through a Channel.  Everything is removed at the "
         "end.",
         "example: shmsem demo",
         _cmd_demo)

    p = _add(sub, "bench", "measure Channel and Mailbox against the peers installed",
             "Measure shmsem's Channel and Mailbox against multiprocessing.Queue and Pipe, "
             "os.pipe, and the peers that are installed (sysv_ipc, faster-fifo, pyzmq, "
             "iceoryx2: pip install 'shmsem[bench]'), next to C floors compiled at run "
             "time with gcc: throughput of 64 B, 4 KiB and 1 MiB messages and of small "
             "objects, one by one and in batches; ping-pong round trips on one CPU and on "
             "two; the CPU an idle blocked consumer burns; Mailbox publish and read.  "
             "Prints medians of interleaved trials, ratios and the targets; the full run "
             "takes several minutes, --quick under one.\n"
             "Everything it creates (System V objects, worker processes, files) is removed "
             "at the end, on Ctrl-C too.  Method and results: docs/benchmarks.md.",
             "examples:\n  shmsem bench --quick\n"
             "  shmsem bench --json results.json --plot results.png\n"
             "  shmsem bench --markdown > channels.md",
             _lazy("cmd_bench", "bench.peers"))
    add_peers_options(p)

    return parser


def _parse_targets(args: argparse.Namespace) -> None:
    """Turn KEY|ID strings into Targets; a bad one is a usage error (exit 2)."""
    target = _import("target")
    parse = target.parse_id if getattr(args, "by_id", False) else target.parse_target
    parser: argparse.ArgumentParser = args._parser
    try:
        if hasattr(args, "target"):
            args.target = parse(args.target)
        if hasattr(args, "targets"):
            args.targets = [parse(t) for t in args.targets]
    except ValueError as e:
        parser.error(str(e))


def _fail(command: str, message: str) -> int:
    print(f"shmsem {command}: {one_line(message)}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Reported by the command's own parser, so the hint names its --help.
        sub: argparse.ArgumentParser = getattr(args, "_parser", parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    command = str(args.command)
    try:
        _parse_targets(args)
        rc: int = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`shmsem ls | head`): not worth a message.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_ERROR
    except CliError as e:
        return _fail(command, str(e))
    except PermissionError as e:
        return _fail(command, f"{e}; run it as the object's owner or as root")
    except (ShmsemError, OSError, ValueError) as e:
        return _fail(command, str(e) or type(e).__name__)
    except Exception as e:  # noqa: BLE001 - the promise is: never a traceback
        # An import deeper down may fail because this user cannot read it:
        # not a bug to report.
        why = _unreadable(e) if isinstance(e, ImportError) else None
        if why is not None:
            return _fail(command, why)
        if os.environ.get("SHMSEM_DEBUG"):
            raise
        return _fail(command, f"internal error ({type(e).__name__}: {e}); please report it, "
                     "with the output of the same command run with SHMSEM_DEBUG=1")
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
