#!/usr/bin/env python3
"""Benchmark shmsem's Channel and Mailbox against their peers.

    python benchmarks/peers.py [--quick] [--json FILE] [--plot FILE.png] [--markdown]

The same run as `shmsem bench`; the code lives in the package
(shmsem.cli.bench.peers) because that command is installed.  --markdown prints
the results part of docs/benchmarks.md, "Channels".
"""

import sys

from shmsem.cli.bench.peers import main

if __name__ == "__main__":
    sys.exit(main(prog="peers.py"))
