"""`shmsem bench`, run as a real subprocess: --quick finishes with valid JSON
and PNG, a missing matplotlib is a clear error, Ctrl-C on a terminal removes
every object and every worker process.

The benchmark only ever makes IPC_PRIVATE objects; the autouse leak check in
conftest.py fails a test that leaves any behind.  Nothing here asserts a
speed ("never time inside a unit test"): only that the run completes and
reports.
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from shmsem.cli.bench.common import Progress

QUICK_TIMEOUT = 120  # --quick takes well under a minute; this bounds a hung run

GROUPS = {"throughput_64", "throughput_4k", "batch_64", "batch_4k", "throughput_1m", "objects",
          "pingpong_same", "idle", "mailbox"}
TARGETS = {"single_64", "single_4k", "batch_64", "batch_4k", "large_floor", "large_peer",
           "objects", "pingpong_same", "pingpong_separate", "idle", "mailbox_publish",
           "mailbox_read"}


def shmsem_exe() -> list[str]:
    """The venv's console script when installed, else python -m shmsem."""
    script = Path(sys.executable).with_name("shmsem")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "shmsem"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR", "the first PNG chunk is not IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_quick_run_writes_json_and_png(tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    out_png = tmp_path / "out.png"
    args = ["bench", "--quick", "--json", str(out_json), "--plot", str(out_png)]
    r = subprocess.run(shmsem_exe() + args, capture_output=True, timeout=QUICK_TIMEOUT, check=False,
                       cwd=tmp_path)
    err = r.stderr.decode(errors="replace")
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, f"exit {r.returncode}; stderr:\n{err}"
    assert "Traceback" not in err

    # Not on a terminal: plain progress lines, no in-place redraw.
    assert "[bench]" in err and "\r" not in err and "\x1b[" not in err
    assert "Targets" in out and "shmsem Channel put_bytes/get_bytes" in out

    res: dict[str, Any] = json.loads(out_json.read_text())
    groups = {g["id"]: g for g in res["groups"]}
    assert GROUPS <= set(groups)
    if len(os.sched_getaffinity(0)) > 1:
        assert "pingpong_separate" in groups
    for gid, g in groups.items():
        shm = [row for row in g["rows"] if row["lib"] == "shmsem"]
        assert shm, f"{gid}: no shmsem row"
        stats = shm[0]["stats"]
        assert stats is not None, f"{gid}: shmsem not measured: {shm[0]}"
        assert stats["median"] > 0 and len(stats["samples"]) == res["settings"]["trials"] or \
            gid == "idle"
        for row in g["rows"]:  # every row is measured, or says why not
            assert row["stats"] is not None or row["missing"] or row["error"], row
    for gid in ("throughput_64", "throughput_4k", "throughput_1m"):
        peers = [row["name"] for row in groups[gid]["rows"] if row["lib"] == "peer"]
        assert any(p.startswith("multiprocessing.Queue") for p in peers)
        assert any(p.startswith("os.pipe") for p in peers)
    targets = {t["id"]: t for t in res["targets"]}
    assert set(targets) == TARGETS
    for t in targets.values():
        assert t["met"] in (True, False, None)
        if t["met"] is not None:
            assert t["median"] == pytest.approx(t["value"]["median"])
    assert res["leaked"] == []
    assert isinstance(res["missing_peers"], list)
    for name in res["missing_peers"]:
        assert name in out or name in err

    width, height = png_size(out_png)
    assert width > 0 and height > 0
    import matplotlib.image  # in the test extras: the PNG is always checked

    img = matplotlib.image.imread(str(out_png))
    assert img.shape[0] == height and img.shape[1] == width


def test_plot_without_matplotlib_is_a_clear_error(tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "matplotlib"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim.parent),
                                                      env.get("PYTHONPATH")]))
    out_png = tmp_path / "out.png"
    started = time.monotonic()
    r = subprocess.run(shmsem_exe() + ["bench", "--quick", "--plot", str(out_png)],
                       capture_output=True, timeout=60, env=env, cwd=tmp_path, check=False)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1, err
    assert "matplotlib" in err and "pip install" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out_png.exists()
    assert time.monotonic() - started < 30, "it should refuse before measuring anything"


def test_help_and_usage_errors() -> None:
    r = subprocess.run(shmsem_exe() + ["bench", "--help"], capture_output=True, timeout=30, check=False)
    out = r.stdout.decode()
    assert r.returncode == 0
    for opt in ("--quick", "--json", "--plot", "example"):
        assert opt in out
    r = subprocess.run(shmsem_exe() + ["bench", "--trials", "0"], capture_output=True,
                       timeout=30, check=False)
    assert r.returncode == 2
    r = subprocess.run(shmsem_exe() + ["bench", "--cpus", "0,999"], capture_output=True,
                       timeout=30, check=False)
    assert r.returncode == 1 and b"--cpus" in r.stderr


def test_progress_bar_redraws_on_a_terminal_and_prints_lines_elsewhere() -> None:
    tty = io.StringIO()
    p = Progress(4, tty, tty=True)
    p.phase("phase one")
    p.step("a")
    p.note("a warning")
    p.step("b", 3)
    p.close()
    text = tty.getvalue()
    assert "\r" in text and "25%" in text and "100%" in text and "a warning\n" in text

    plain = io.StringIO()
    p = Progress(4, plain, tty=False)
    p.phase("phase one")
    p.step("a")
    p.phase("phase two")
    p.close()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 2 and "phase one" in lines[0] and "phase two" in lines[1]
    assert "\r" not in plain.getvalue()


# ---------------------------------------------------------------------------
# Ctrl-C on a terminal


def _stat(pid: int) -> Optional[tuple[int, str]]:
    """(ppid, start time) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), fields[19]


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every live descendant of ``root``."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                table[int(entry)] = st
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def _assert_gone(workers: dict[int, str]) -> None:
    """Every worker is gone within 5 s (not merely reparented: a pid with
    another start time is another process)."""
    deadline = time.monotonic() + 5
    left = workers
    while time.monotonic() < deadline:
        left = {pid: start for pid, start in workers.items()
                if (st := _stat(pid)) is not None and st[1] == start}
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"worker processes left running: {sorted(left)}"


def test_ctrl_c_on_a_terminal_removes_everything(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    wrapper = textwrap.dedent("""
        import fcntl, os, sys, termios
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        os.execv(sys.argv[1], sys.argv[1:])
    """)
    exe = shmsem_exe()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm"
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *exe, "bench", "--quick"],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env=env, cwd=tmp_path)
    os.close(slave)
    out = b""
    workers: dict[int, str] = {}
    try:
        # Wait until the ping-pong phase: several worker processes alive.
        deadline = time.monotonic() + QUICK_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
            workers.update(_descendants(proc.pid))
            if b"ping-pong" in out and len(workers) >= 2:
                break
        assert proc.poll() is None, f"bench ended before it could be interrupted: {out!r}"
        assert b"\r" in out and b"%" in out, "no progress bar on a terminal"
        workers.update(_descendants(proc.pid))
        assert workers, "no worker processes seen"
        os.write(master, b"\x03")  # Ctrl-C, as typed
        # Keep reading while it winds down: a full pty would block its writes.
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    out += os.read(master, 65536)
            except OSError:
                time.sleep(0.05)
        rc = proc.wait(1)
        try:
            while select.select([master], [], [], 0.2)[0]:
                chunk = os.read(master, 65536)
                if not chunk:
                    break
                out += chunk
        except OSError:  # EIO: the other side is closed
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    assert rc == 130, out.decode(errors="replace")
    assert b"Traceback" not in out
    assert b"interrupted" in out
    _assert_gone(workers)


def test_sigterm_also_cleans_up(tmp_path: Path) -> None:
    proc = subprocess.Popen(shmsem_exe() + ["bench", "--quick"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        assert proc.stderr is not None
        seen = b""
        deadline = time.monotonic() + QUICK_TIMEOUT
        workers: dict[int, str] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stderr], [], [], 0.2)
            if ready:
                seen += os.read(proc.stderr.fileno(), 65536)
            workers.update(_descendants(proc.pid))
            if b"4 KiB messages, one by one" in seen and workers:
                break
        assert proc.poll() is None, seen
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode != 0
    assert b"Traceback" not in err
    _assert_gone(workers)
