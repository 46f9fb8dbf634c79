#!/usr/bin/env python3
"""The uncontended lock/unlock pair of the Channel and Mailbox lock.

    python benchmarks/lock.py [--trials N] [--pairs N]

Each trial times a million pairs (by default) in C with the GIL held, once
for shmsem's process lock and once for glibc's robust process-shared
pthread mutex, interleaved; it prints the medians and their ratio as
Markdown.  To compare two versions of the lock, run it at each commit (see
docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path

from shmsem import _core


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=21)
    ap.add_argument("--pairs", type=int, default=1_000_000)
    args = ap.parse_args()
    ours, glibc = [], []
    _core._lock_pair_ns(args.pairs // 10, 0)  # warm up both
    _core._lock_pair_ns(args.pairs // 10, 1)
    for _ in range(args.trials):
        ours.append(_core._lock_pair_ns(args.pairs, 0))
        glibc.append(_core._lock_pair_ns(args.pairs, 1))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = "?"
    m_ours, m_glibc = statistics.median(ours), statistics.median(glibc)
    print(f"lock protocol version {_core.LAYOUT_VERSION}, commit {rev}, "
          f"{args.trials} trials of {args.pairs:,} pairs\n")
    print("| lock | median ns/pair | min | max |")
    print("|---|---:|---:|---:|")
    print(f"| shmsem process lock | {m_ours:.1f} | {min(ours):.1f} | {max(ours):.1f} |")
    print(f"| glibc robust pshared mutex | {m_glibc:.1f} | {min(glibc):.1f} | {max(glibc):.1f} |")
    print(f"\nratio shmsem / glibc: {m_ours / m_glibc:.2f}")


if __name__ == "__main__":
    main()
