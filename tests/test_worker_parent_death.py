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
    try:
        deadline = time.monotonic() + 120
        children: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            children = _children(proc.pid)
            if len(children) >= 3:  # 2 workers and the resource tracker
                break
            time.sleep(0.2)
        assert proc.poll() is None and len(children) >= 3, f"the run ended or never started its workers: {children}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        end = time.monotonic() + 20
        while time.monotonic() < end and any(_alive(c) for c in children):
            time.sleep(0.2)
        left = [c for c in children if _alive(c)]
        assert not left, f"processes still alive 20 s after kill -9 of their parent: {left}"
    finally:
        for pid in [proc.pid, *_children(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait(timeout=10)


def test_exit_with_parent_checks_its_argument():
    with pytest.raises(ValueError, match="interval_s"):
        exit_with_parent(0)
