"""Small pieces shared by the command line: the error type, colour, tables,
and how sizes and times are shown."""

from __future__ import annotations

import argparse
import os
import time
from typing import IO, Optional, Sequence, Tuple, Union

__all__ = ["CliError", "Style", "Cell", "render_table", "human_size", "format_time", "plural"]


class CliError(Exception):
    """An error the command line reports as one line on stderr, exit status 1.

    The message says what went wrong and what to do about it."""


_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}


class Style:
    """ANSI colour, or nothing.  On only when the stream is a terminal and
    NO_COLOR is absent from the environment (https://no-color.org: we treat
    it as set even when empty), and TERM is not 'dumb'."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: IO[str]) -> "Style":
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        enabled = (
            tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        )
        return cls(enabled)

    def __call__(self, text: str, style: Optional[str]) -> str:
        if not self.enabled or not style or not text:
            return text
        codes = ";".join(_CODES[s] for s in style.split("+"))
        return f"\x1b[{codes}m{text}\x1b[0m"


#: A table cell: its text, and optionally a style name for Style ("red", "bold+green").
Cell = Union[str, Tuple[str, Optional[str]]]


def _cell(c: Cell) -> Tuple[str, Optional[str]]:
    return (c, None) if isinstance(c, str) else c


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[Cell]], style: Style,
    right: Sequence[int] = (),
) -> str:
    """Columns padded to their widest cell; ``right`` lists the columns to
    right-align (numbers).  The last column is not padded."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, (text, _) in enumerate(row):
            widths[i] = max(widths[i], len(text))
    last = len(headers) - 1

    def line(row: Sequence[Tuple[str, Optional[str]]]) -> str:
        parts = []
        for i, (text, st) in enumerate(row):
            pad = " " * (widths[i] - len(text))
            if i in right:
                parts.append(pad + style(text, st))
            elif i == last:
                parts.append(style(text, st))
            else:
                parts.append(style(text, st) + pad)
        return "  ".join(parts).rstrip()

    out = [line([(h, "bold") for h in headers])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def human_size(n: int) -> str:
    """1023 -> '1023 B', 4096 -> '4.0 KiB', 1 << 20 -> '1.0 MiB'."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    return f"{n} B"  # pragma: no cover - unreachable


def format_time(t: Optional[int]) -> str:
    """Unix seconds as local 'YYYY-mm-dd HH:MM:SS'; 0 is 'never'."""
    if t is None:
        return "-"
    if t == 0:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def plural(n: int, word: str, words: Optional[str] = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def one_line(text: str) -> str:
    """Messages go to stderr as exactly one line."""
    return " ".join(text.split())


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value > 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
    return value
