"""Sum the figures the attack and stress tests record, as Markdown tables.

The tests call the ``reliability(**figures)`` fixture (tests/conftest.py);
with SHMSEM_RELIABILITY_REPORT=FILE set, each call appends one JSON line to
FILE.  This script turns such a file into the tables of docs/reliability.md:
one table per test module, each numeric figure summed over its records.

    SHMSEM_RELIABILITY_REPORT=/tmp/rel.jsonl SHMSEM_SOAK_SECONDS=180 \\
        python -m pytest --run-stress tests/attack tests/stress
    python tests/reliability_report.py /tmp/rel.jsonl
"""

from __future__ import annotations

import collections
import json
import sys
from typing import Any


def summarize(lines: list[str]) -> dict[str, dict[str, float]]:
    """{module: {figure: total}}, with "records" counting the JSON lines."""
    totals: dict[str, dict[str, float]] = collections.defaultdict(collections.Counter)
    for line in lines:
        if not line.strip():
            continue
        rec: dict[str, Any] = json.loads(line)
        module = rec.pop("test").split("::")[0]
        totals[module]["records"] += 1
        for name, value in rec.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[module][name] += value
    return totals


def render(totals: dict[str, dict[str, float]]) -> str:
    out = []
    for module in sorted(totals):
        out.append(f"#### `{module}`\n\n| figure | total |\n|---|---:|")
        for name, value in sorted(totals[module].items()):
            shown = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
            out.append(f"| {name} | {shown} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        print(render(summarize(f.readlines())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
