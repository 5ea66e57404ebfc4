"""A kill -9 of ``hpa-kernel cells`` leaves no worker behind (issue 16, item 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpa_kernel.cells.workers import exit_with_parent

REPO = Path(__file__).resolve().parents[1]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _is_spawn_worker(pid: int) -> bool:
    """A multiprocessing spawn child (a pool worker), by its command line; not the resource tracker."""
    return b"spawn_main" in _cmdline(pid)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_cells_leaves_no_worker(tmp_path):
    from hpa_kernel.synthetic import make_competition

    comp = make_competition(tmp_path / "comp", n_train=24, n_test=0, size=512, seed=7)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "hpa_kernel", "cells", "--data", str(comp.root), "--out", str(tmp_path / "out"),
           "--workers", "2", "--crop-size", "64", "--segmenter", "classic"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    children: list[int] = []
    try:
        # wait for the 2 pool workers; whether a resource tracker is also a child depends on the
        # Python version and start method, so it is not counted (but it must go too if present)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            children = _children(proc.pid)
            if sum(_is_spawn_worker(c) for c in children) >= 2:
                break
            time.sleep(0.2)
        workers = [c for c in children if _is_spawn_worker(c)]
        assert proc.poll() is None and len(workers) >= 2, f"the run ended or never started its 2 workers: {children}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        # a worker notices at once (parent-death signal) or within 1 s (its watch thread); the
        # generous wait only matters on a loaded machine and ends as soon as they are gone
        end = time.monotonic() + 120
        while time.monotonic() < end and any(_alive(c) for c in children):
            time.sleep(0.2)
        left = [c for c in children if _alive(c)]
        assert not left, f"processes still alive 120 s after kill -9 of their parent: {left}"
    finally:  # also the orphans of a failed run (no longer children of proc), if still multiprocessing's
        orphans = [c for c in children if _alive(c) and b"multiprocessing" in _cmdline(c)]
        for pid in {proc.pid, *_children(proc.pid), *orphans}:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait(timeout=10)


def test_exit_with_parent_checks_its_argument():
    with pytest.raises(ValueError, match="interval_s"):
        exit_with_parent(0)
