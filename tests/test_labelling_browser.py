"""End to end in a real headless browser: open the labelling page, press keys, check the database.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands
in on fd 3, replies out on fd 4, each a JSON message ending in a NUL byte), so no websocket
library is needed. ``.ci/run`` installs Debian's chromium. Without it the test is skipped locally,
and fails in CI (``CI=true``), so that a failed install cannot leave CI green.
"""

from __future__ import annotations

import csv
import json
import os
import select
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).is_file()), None)
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not IN_CI, reason="chromium not installed (apt-get install chromium; .ci/run does it)"
)


@pytest.fixture(autouse=True)
def _chromium_in_ci():
    """In CI the browser test must run: a missing chromium is a failure there, not a skip."""
    if CHROMIUM is None:
        pytest.fail("CI=true but chromium is not installed: .ci/run could not install it (apt-get install chromium)")

KEYS = {  # key -> (code, windows virtual key code)
    "3": ("Digit3", 51),
    "5": ("Digit5", 53),
    "s": ("KeyS", 83),
    "u": ("KeyU", 85),
}


#: DevTools errors of an evaluation that raced a navigation: the old page is gone, the new one not there yet.
NAVIGATING = ("Inspected target navigated or closed", "Cannot find context with specified id", "Execution context was destroyed")


class DevTools:
    """A minimal DevTools-protocol client for a chromium started with --remote-debugging-pipe."""

    def __init__(self, user_data_dir: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        args = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe", "about:blank",
        ]
        # A small launcher puts our pipe ends on fds 3 and 4, where chromium expects them, then execs it.
        # (Both are first moved above fd 9 so that neither can be overwritten by the other's dup2.)
        launcher = (
            "import fcntl, os, sys; "
            f"r, w = fcntl.fcntl({to_chrome_r}, fcntl.F_DUPFD, 10), fcntl.fcntl({from_chrome_w}, fcntl.F_DUPFD, 10); "
            "os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w); os.execv(sys.argv[1], sys.argv[1:])"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", launcher, *args], pass_fds=(to_chrome_r, from_chrome_w),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.session = None

    def call(self, method: str, params: dict | None = None, timeout: float = 20.0, session: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session is not None:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._messages(deadline):
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

    def _messages(self, deadline: float):
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit code {self.proc.poll()})")
            self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\0")
        return [json.loads(m) for m in complete]

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": url}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        """Poll ``expression`` until it is truthy; a page in the middle of a navigation (a reload) counts as
        not yet. ``timeout`` only guards against a hang: a loaded machine makes the test slower, not red."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError as exc:
                if not any(s in str(exc) for s in NAVIGATING):
                    raise
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"page never satisfied {expression}")

    def press(self, key: str) -> None:
        code, vk = KEYS[key]
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": key, "code": code, "text": key, "windowsVirtualKeyCode": vk})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk})

    def close(self) -> None:
        try:
            self.call("Browser.close", session=False, timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def _write_cells(root: Path) -> Path:
    import cv2

    rng = np.random.default_rng(3)
    (root / "crops").mkdir(parents=True)
    rows = []
    for image_id, labels, cells in (("img_a", "11", (1, 2, 3)), ("img_b", "0|15", (1,))):
        for cell_id in cells:
            crop = rng.integers(0, 256, (48, 48, 4), dtype=np.uint8)
            rel = f"crops/{image_id}_{cell_id}.png"
            assert cv2.imwrite(str(root / rel), crop)
            rows.append({"image_id": image_id, "cell_id": cell_id, "crop": rel, "y0": 0, "x0": 0, "y1": 48, "x1": 48,
                         "area": 900, "nucleus_cut": 0.0, "outlier_score": 0.0, "valid": True, "labels": labels})
    with open(root / "cells.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "cells.csv"


def _standing(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT image_id, cell_id, class_id, score, labeller FROM events WHERE undone_at IS NULL ORDER BY id"
        ).fetchall()


def test_keys_in_a_real_browser_reach_the_database(tmp_path):
    from hpa_kernel.labelling import CellTable, LabelApp, LabelStore, make_server

    db = tmp_path / "labels.sqlite"
    store = LabelStore(db)
    server = make_server(LabelApp(CellTable(_write_cells(tmp_path / "ds")), store, ["Mitotic spindle", "Aggresome"], "tester"), port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    browser = DevTools(tmp_path / "profile")
    idle = "window.hpaLabel && hpaLabel.state !== null && hpaLabel.pending === 0"
    try:
        browser.open(f"http://127.0.0.1:{server.server_address[1]}/?class=11")
        browser.wait_for(idle)
        assert browser.evaluate("document.getElementById('class-name').textContent") == "Mitotic spindle"
        assert browser.evaluate("document.body.dataset.cell") == "img_a/1"
        # Both views are real PNGs at display size.
        assert browser.wait_for("document.getElementById('composite').naturalWidth") == 448
        assert browser.wait_for("document.getElementById('green').naturalWidth") == 448

        browser.press("3")
        browser.wait_for(idle + " && hpaLabel.state.progress.done === 1")
        assert _standing(db) == [("img_a", 1, 11, 3, "tester")]
        assert browser.evaluate("document.body.dataset.cell") == "img_a/2"

        browser.press("5")
        browser.press("s")  # queued behind the 5: both must arrive, in order
        browser.wait_for(idle + " && hpaLabel.state.progress.done === 3")
        assert _standing(db) == [("img_a", 1, 11, 3, "tester"), ("img_a", 2, 11, 5, "tester"), ("img_a", 3, 11, None, "tester")]
        assert "remaining 0" in browser.evaluate("document.getElementById('counts').textContent")

        browser.press("u")  # withdraws the skip and shows that cell again
        browser.wait_for(idle + " && hpaLabel.state.progress.done === 2")
        assert browser.evaluate("document.body.dataset.cell") == "img_a/3"
        assert _standing(db) == [("img_a", 1, 11, 3, "tester"), ("img_a", 2, 11, 5, "tester")]
        assert browser.evaluate("hpaLabel.errors") == 0

        # Reloading resumes at the first cell without an answer.
        browser.evaluate("window.beforeReload = true; location.reload()")
        browser.wait_for("!window.beforeReload && " + idle)
        assert browser.evaluate("document.body.dataset.cell") == "img_a/3"
        assert "done 2 of 3" in browser.evaluate("document.getElementById('counts').textContent")

        # The next class, picked in the class menu.
        browser.evaluate("const menu = document.getElementById('class-select'); menu.value = '15'; "
                         "menu.dispatchEvent(new Event('change'))")
        browser.wait_for(idle + " && hpaLabel.state.class.id === 15")
        assert browser.evaluate("document.body.dataset.cell") == "img_b/1"
        assert "class=15" in browser.evaluate("location.search")
        browser.press("5")
        browser.wait_for(idle + " && hpaLabel.state.progress.done === 1")
        assert _standing(db)[-1] == ("img_b", 1, 15, 5, "tester")
        assert "All 1 cells of Aggresome are done" in browser.evaluate("document.getElementById('done').textContent")
    finally:
        browser.close()
        server.shutdown()
        server.server_close()
        store.close()
    with sqlite3.connect(db) as conn:
        undone = conn.execute("SELECT cell_id, score FROM events WHERE undone_at IS NOT NULL").fetchall()
    assert undone == [(3, None)]
