"""The public types as a type checker sees them: mypy --strict over
tests/typing_check.py, against the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import shmsem

pytest.importorskip("mypy")


def test_context_managers_keep_their_types(tmp_path: Path) -> None:
    check = Path(__file__).with_name("typing_check.py")
    env = dict(os.environ, MYPYPATH=str(Path(shmsem.__file__).parent.parent))
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")  # not the project's: only this file is checked
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-version", "3.10",
         "--no-incremental", "--cache-dir", os.devnull, "--config-file", str(config),
         str(check)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
