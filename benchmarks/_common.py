"""Helpers shared by the benchmark scripts in this directory.

They live in the package, in shmsem.cli.bench.common, because `shmsem bench`
(an installed command) uses them too; this module re-exports them so the
scripts can keep writing ``import _common as C``.  The C floor programs are
in src/shmsem/cli/bench/c/.
"""

from __future__ import annotations

from pathlib import Path

from shmsem.cli.bench.common import *

HERE = Path(__file__).resolve().parent
