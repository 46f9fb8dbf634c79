"""The PNG chart of `shmsem bench --plot` (matplotlib, imported only here)."""

from __future__ import annotations

import importlib
from typing import Any, Optional

from .common import Stats

COLOURS = {"shmsem": "#d62728", "floor": "#7f7f7f", "peer": "#1f77b4"}


def _series(g: dict[str, Any], value: str) -> list[tuple[str, str, float, float, float]]:
    """(label, lib, median, low, high) of every measured row, in the unit of
    ``value``: msgs/s, GB/s, µs, % or ns."""
    out = []
    for row in g["rows"]:
        s: Optional[Stats] = row["stats"]
        if s is None:
            continue
        if value == "msgs":
            med, lo, hi = 1e9 / s.median, 1e9 / s.max, 1e9 / s.min
        elif value == "gbs":
            k = g["size"]
            med, lo, hi = k / s.median, k / s.max, k / s.min
        elif value == "us":
            med, lo, hi = s.median / 1e3, s.min / 1e3, s.max / 1e3
        else:
            med, lo, hi = s.median, s.min, s.max
        out.append((row["name"], row["lib"], med, lo, hi))
    return out


def _label(x: float) -> str:
    for div, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _panel(ax: Any, title: str, series: list[tuple[str, str, float, float, float]],
           xlabel: str, log: bool, better: str, target: Optional[float] = None) -> None:
    ax.set_title(title, fontsize=10, loc="left")
    if not series:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    series = list(reversed(series))  # first row on top
    ys = range(len(series))
    meds = [s[2] for s in series]
    err = [[max(0.0, s[2] - s[3]) for s in series], [max(0.0, s[4] - s[2]) for s in series]]
    ax.barh(list(ys), meds, xerr=err, color=[COLOURS.get(s[1], "#1f77b4") for s in series],
            error_kw={"elinewidth": 0.8, "capsize": 2}, height=0.7)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([s[0] for s in series], fontsize=7)
    if log and min(meds) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(f"{xlabel} ({better} is better)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3, which="both")
    if target is not None:
        ax.axvline(target, color="#d62728", linestyle="--", linewidth=1)
    for y, m in zip(ys, meds):
        ax.text(m, y, f" {_label(m)}", va="center", fontsize=7)


def plot(res: dict[str, Any], path: str) -> None:
    """Write the chart of a run's results (as returned by peers.run_all)."""
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    groups = {g["id"]: g for g in res["groups"]}
    panels: list[tuple[str, str, str, bool, str]] = [
        ("throughput_64", "msgs", "messages/s", True, "more"),
        ("throughput_4k", "msgs", "messages/s", True, "more"),
        ("batch_64", "msgs", "messages/s", True, "more"),
        ("batch_4k", "msgs", "messages/s", True, "more"),
        ("throughput_1m", "gbs", "GB/s", False, "more"),
        ("objects", "msgs", "objects/s", True, "more"),
        ("pingpong_same", "us", "µs per round trip", True, "less"),
        ("pingpong_separate", "us", "µs per round trip", True, "less"),
        ("idle", "pct", "% of a CPU", False, "less"),
        ("mailbox", "ns", "ns per call", False, "less"),
    ]
    targets = {"idle": 1.0, "mailbox": 1000.0}
    fig, axes = plt.subplots(5, 2, figsize=(14, 22))
    for ax, (gid, value, xlabel, log, better) in zip(axes.flat, panels):
        g = groups.get(gid)
        if g is None:
            ax.set_title(gid, fontsize=10, loc="left")
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        title = g["title"][0].upper() + g["title"][1:]
        _panel(ax, title, _series(g, value), xlabel, log, better, targets.get(gid))
    s = res["settings"]
    fig.suptitle(
        f"shmsem {res['versions'].get('shmsem')} against its peers: medians of "
        f"{s['trials']} interleaved trials, bars show the range "
        f"({'quick run, ' if s['quick'] else ''}{res['machine']['cpu']}, "
        f"{res['machine']['cpus_online']} CPUs, {res['machine']['date']})",
        fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)
