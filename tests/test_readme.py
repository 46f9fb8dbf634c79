"""The README's Python examples run as written (with this run's unique keys)."""

from __future__ import annotations

import io
import re
import contextlib
from pathlib import Path
from typing import Callable

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_the_two_commands_first() -> None:
    first = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert first is not None
    lines = [line.strip() for line in first.group(1).strip().splitlines()]
    assert lines == ["pip install . && shmsem demo", "pip install -e '.[test]' && python -m pytest"]


def test_readme_examples_run(unique_key: Callable[[], int]) -> None:
    # Every example except the .NET one, which needs a peer program.
    blocks = [b for b in _blocks() if "PosixIpcHelper" not in b]
    assert len(blocks) >= 4
    keys: dict[str, str] = {}

    def fresh(match: re.Match[str]) -> str:
        return keys.setdefault(match.group(0), hex(unique_key()))

    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(re.sub(r"0x5e5e[0-9a-f]{4}", fresh, block), "README.md", "exec"), namespace)
    text = out.getvalue()
    # Spot-check what the examples say they print.
    assert "hello" in text
    assert "nobody released it" in text
    assert "(b'job 1', 2)" in text
    assert "(1, b'pose 1.0 2.0')" in text


def test_dotnet_example_is_valid_python() -> None:
    (block,) = [b for b in _blocks() if "PosixIpcHelper" in b]
    compile(block, "README.md", "exec")


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
