"""KEY|ID arguments: how a number typed on the command line names an object.

The rule (docs/cli.md, "Naming objects"):

* ``0x…`` (hex) is always a key.  So is a negative decimal (the signed form
  /proc/sysvipc prints) and a decimal of 2**31 or more (the unsigned form):
  ids are never negative and always below 2**31.
* Any other decimal is tried both as an id (of every type) and as a key.
* ``--type`` limits the search to one type; ``--id`` makes every value an id.
* If more than one object matches, nothing is done: the command refuses and
  lists the matches (``show`` is the exception: it shows them all).
* Key 0 is IPC_PRIVATE, which no object can be found by: ``0`` is an id, and
  ``0x0`` is refused.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Sequence

from .util import CliError
from .sysv_table import KIND_NAMES, IpcObject
from ..errors import format_key
from ..keys import IPC_PRIVATE, normalize_key

__all__ = ["Target", "parse_target", "parse_id", "find", "find_one"]

_HEX = re.compile(r"[0-9a-fA-F]+")
_DEC = re.compile(r"[0-9]+")

ID_LIMIT = 2**31


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed KEY|ID argument."""

    text: str
    #: the value as a key (kernel's signed form), or None if it cannot be a key
    key: Optional[int]
    #: the value as an id, or None if it cannot be an id
    id: Optional[int]
    #: set for an explicit key that is IPC_PRIVATE (0x0): nothing can be found by it
    private: bool = False


def parse_target(text: str) -> Target:
    """Parse a KEY|ID argument.  Raises ValueError with a message for argparse."""
    s = text.strip()
    neg = s.startswith("-")
    body = s[1:] if neg else s
    if body[:2].lower() == "0x":
        digits = body[2:]
        if not _HEX.fullmatch(digits):
            raise ValueError(f"{text!r} is not a hex key (0x followed by hex digits)")
        value = -int(digits, 16) if neg else int(digits, 16)
        return _key_only(text, value)
    if not _DEC.fullmatch(body):
        raise ValueError(
            f"{text!r} is not a key or an id: give a decimal id, a 0x-hex key or a decimal key"
        )
    value = int(body)
    if neg:
        return _key_only(text, -value)
    if value >= ID_LIMIT:
        return _key_only(text, value)
    if value == IPC_PRIVATE:
        return Target(text, None, 0)
    return Target(text, normalize_key(value), value)


def _key_only(text: str, value: int) -> Target:
    try:
        key = normalize_key(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is out of range: keys are 32-bit, from -0x80000000 to 0xffffffff"
        ) from None
    if key == IPC_PRIVATE:
        return Target(text, None, None, private=True)
    return Target(text, key, None)


def parse_id(text: str) -> Target:
    """Parse an argument given with ``--id``: decimal or 0x-hex, always an id."""
    s = text.strip()
    try:
        value = int(s, 16) if s[:2].lower() == "0x" else int(s, 10)
    except ValueError:
        raise ValueError(f"{text!r} is not an id (a number such as 32769)") from None
    if not 0 <= value < ID_LIMIT:
        raise ValueError(f"{text!r} is not an id: ids are from 0 to {ID_LIMIT - 1}")
    return Target(text, None, value)


def find(target: Target, objects: Sequence[IpcObject]) -> list[IpcObject]:
    """Every object ``target`` names (by id or by key), in ``objects`` order."""
    return [
        o for o in objects
        if (target.id is not None and o.id == target.id)
        or (target.key is not None and o.key == target.key)
    ]


def _what(types: Sequence[str]) -> str:
    if len(types) == 1:
        return KIND_NAMES[types[0]]
    return "System V object"


def _named(target: Target) -> str:
    if target.id is not None and target.key is not None:
        return f"id {target.id} or key {format_key(target.key)}"
    if target.id is not None:
        return f"id {target.id}"
    return f"key {format_key(target.key)}"


def _how(o: IpcObject, target: Target) -> str:
    by = "id" if target.id is not None and o.id == target.id else "key"
    return f"{o.type} id {o.id} key {format_key(o.key)} (by {by})"


def not_found_message(target: Target, types: Sequence[str]) -> str:
    what = _what(types)
    if target.private:
        return (
            f"{target.text} is key 0x00000000, IPC_PRIVATE: private objects have no key; "
            "name them by id (see 'shmsem ls')"
        )
    listing = "shmsem ls" if len(types) != 1 else f"shmsem ls --type {types[0]}"
    return f"no {what} has {_named(target)}; see what exists with '{listing}'"


def ambiguity_message(target: Target, matches: Sequence[IpcObject], types: Sequence[str]) -> str:
    shown = "; ".join(_how(o, target) for o in matches)
    hints = []
    kinds = sorted({o.type for o in matches})
    if len(kinds) > 1 and len(types) > 1:
        hints.append("--type " + "|".join(kinds))
    by_id = any(target.id is not None and o.id == target.id for o in matches)
    by_key = any(target.key is not None and o.key == target.key for o in matches)
    if by_id and by_key:
        hints.append(f"--id {target.id} for the id")
        hints.append(f"{format_key(target.key)} for the key")
    elif by_id and len(kinds) == 1 and len(types) > 1:
        hints.append(f"--type {kinds[0]}")
    advice = " or ".join(hints) if hints else "--type"
    return f"{target.text} matches {len(matches)} objects: {shown}; name one with {advice}"


def find_one(target: Target, objects: Sequence[IpcObject], types: Sequence[str]) -> IpcObject:
    """The one object ``target`` names among ``objects`` of ``types``.

    Raises CliError when none matches or when several do."""
    matches = find(target, [o for o in objects if o.type in types])
    if not matches:
        raise CliError(not_found_message(target, types))
    if len(matches) > 1:
        raise CliError(ambiguity_message(target, matches, types))
    return matches[0]
