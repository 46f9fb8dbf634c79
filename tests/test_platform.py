"""Anywhere but Linux, building and importing stop with a clear message."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_as(platform: str, code: str) -> subprocess.CompletedProcess[str]:
    prelude = f"import sys\nsys.platform = {platform!r}\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


@pytest.mark.parametrize("platform", ["darwin", "win32", "freebsd14"])
def test_build_refuses_other_platforms(platform: str) -> None:
    setup = ROOT / "setup.py"
    r = run_as(platform, f"""
        sys.argv = ["setup.py", "--name"]
        exec(compile(open({str(setup)!r}).read(), "setup.py", "exec"), {{"__name__": "__main__"}})
    """)
    assert r.returncode != 0
    assert "shmsem supports Linux only" in r.stderr
    assert repr(platform) in r.stderr


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_import_refuses_other_platforms(platform: str) -> None:
    r = run_as(platform, """
        try:
            import shmsem
        except ImportError as e:
            print("ImportError:", e)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ImportError: shmsem supports Linux only")
    assert "multiprocessing.shared_memory" in r.stdout
