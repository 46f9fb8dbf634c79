"""Command-line options of the benchmarks, in one place for
benchmarks/primitives.py, benchmarks/peers.py and `shmsem bench`.

Imports nothing heavy: cli.py builds every subcommand's parser, this one
included, on each run of `shmsem`.
"""

from __future__ import annotations

import argparse

from ..util import positive_float, positive_int

#: Full and --quick settings: trials per candidate, seconds per trial.
FULL_TRIALS, FULL_TRIAL_TIME = 11, 0.3
QUICK_TRIALS, QUICK_TRIAL_TIME = 3, 0.05


def add_trial_options(p: argparse.ArgumentParser) -> None:
    """--quick, --json, --trials and --trial-time: what every benchmark takes."""
    p.add_argument("--quick", action="store_true",
                   help=f"a short run: {QUICK_TRIALS} trials of {QUICK_TRIAL_TIME:g} s "
                        f"instead of {FULL_TRIALS} of {FULL_TRIAL_TIME:g} s")
    p.add_argument("--json", metavar="FILE", help="also write every sample to FILE as JSON")
    p.add_argument("--trials", type=positive_int, metavar="N",
                   help="trials per candidate (overrides --quick)")
    p.add_argument("--trial-time", type=positive_float, metavar="SECONDS",
                   help="target duration of one trial (overrides --quick)")


def add_peers_options(p: argparse.ArgumentParser) -> None:
    """The options of benchmarks/peers.py and `shmsem bench`."""
    add_trial_options(p)
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw a PNG chart (needs matplotlib)")
    p.add_argument("--markdown", action="store_true",
                   help="print the tables as Markdown (as in docs/benchmarks.md)")
    p.add_argument("--cpus", metavar="A,B",
                   help="CPUs for the ping-pong (side A on A, side B on B) and for --pin "
                        "(default: the first two this process may run on)")
    p.add_argument("--pin", action="store_true",
                   help="pin throughput producers to CPU A and consumers to CPU B "
                        "(default: unpinned)")
