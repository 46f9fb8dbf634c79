"""The `shmsem` command line (also `python -m shmsem`)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import __version__


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run

    return run(sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmsem",
        description="System V shared memory, semaphores and message queues, and shmsem "
        "channels: see, inspect, clean up, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"shmsem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser(
        "demo",
        help="two processes exchange messages; prints what happened",
        description="Two processes exchange .NET-format frames through a segment guarded "
        "by semaphores, then stream messages through a Channel. Everything is removed "
        "at the end.",
        epilog="example: shmsem demo",
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
