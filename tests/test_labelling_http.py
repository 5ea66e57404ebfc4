"""The labelling server's HTTP layer, in process: routes, resume, undo, crop serving and safety."""

from __future__ import annotations

import csv
import http.client
import json
import queue
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hpa_kernel.labelling import CellTable, LabelApp, LabelStore, make_server


def write_cells(root: Path) -> Path:
    """A cells.csv + crops/ fixture in the format of `hpa-kernel cells`."""
    import cv2

    rng = np.random.default_rng(1)
    (root / "crops").mkdir(parents=True)
    rows = []
    for image_id, labels, cells in (("img_b", "11|0", (2, 1)), ("img_a", "11", (1, 2)), ("img_c", "15", (1, 4))):
        for cell_id in cells:
            rel = f"crops/{image_id}_{cell_id}.png"
            assert cv2.imwrite(str(root / rel), rng.integers(0, 256, (40, 40, 4), dtype=np.uint8))
            rows.append({"image_id": image_id, "cell_id": cell_id, "crop": rel, "y0": 0, "x0": 0, "y1": 40, "x1": 40,
                         "area": 800, "nucleus_cut": 0.0, "outlier_score": 0.0, "valid": True, "labels": labels})
    with open(root / "cells.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "crops" / "stray.png").write_bytes((root / "crops" / "img_a_1.png").read_bytes())  # on disk, not listed
    return root / "cells.csv"


class Client:
    """HTTP client of the test server; every socket has a timeout (a hung server fails the test)."""

    def __init__(self, port: int, timeout: float = 60.0):
        self.port = port
        self.timeout = timeout

    def request(self, method: str, path: str, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            headers = dict(headers or {})
            if body is not None and not isinstance(body, (bytes, str)):
                body = json.dumps(body)
                headers.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.getheader("Content-Type", "").startswith("application/json"):
            data = json.loads(data)
        return response.status, data

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body, headers=None):
        return self.request("POST", path, body, headers)

    def raw(self, data: bytes) -> int:
        """Send raw bytes; return the status code of the reply. ``Host: x`` becomes this server's address."""
        data = data.replace(b"Host: x\r\n", f"Host: 127.0.0.1:{self.port}\r\n".encode())
        with socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout) as sock:
            sock.sendall(data)
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return int(reply.split(b" ", 2)[1])


@pytest.fixture
def served(tmp_path):
    """A running server for classes 11 and 15 as labeller 'ann'; yields (client, store, app)."""
    store = LabelStore(tmp_path / "labels.sqlite")
    app = LabelApp(CellTable(write_cells(tmp_path / "ds")), store, ["Mitotic spindle", "15"], "ann", display_size=128)
    server = make_server(app, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Client(server.server_address[1]), store, app
    finally:
        server.shutdown()
        server.server_close()
        store.close()


def _cell(state):
    return (state["cell"]["image_id"], state["cell"]["cell_id"]) if state["cell"] else None


def _score(client, cell, score, class_id=11):
    return client.post("/api/score", {"class_id": class_id, "image_id": cell[0], "cell_id": cell[1], "score": score})


def test_page_and_initial_state(served):
    client, _, _ = served
    status, page = client.get("/")
    assert status == 200 and b"hpaLabel" in page and b"<script>" in page
    status, state = client.get("/api/state?class=11")
    assert status == 200
    assert state["class"]["name"] == "Mitotic spindle" and "spindle" in state["class"]["description"]
    assert state["labeller"] == "ann"
    assert _cell(state) == ("img_a", 1)  # ordered by (image_id, cell_id)
    assert state["progress"] == {"total": 4, "scored": 0, "skipped": 0, "done": 0, "remaining": 4}
    assert [c["id"] for c in state["classes"]] == [11, 15]
    assert len(state["preload"]) == 3
    assert client.get("/api/state")[1]["class"]["id"] == 11  # the first class by default
    assert client.get("/api/state?class=Aggresome")[1]["class"]["id"] == 15


def test_scoring_walks_the_cells_and_resumes(served, tmp_path):
    client, store, app = served
    order = []
    for score in (4, 1, 5):
        status, state = client.get("/api/state?class=11")
        order.append(_cell(state))
        status, state = _score(client, order[-1], score)
        assert status == 200
    assert order == [("img_a", 1), ("img_a", 2), ("img_b", 1)]
    assert state["progress"]["done"] == 3 and state["progress"]["remaining"] == 1
    assert store.answered(11, "ann") == {("img_a", 1): 4, ("img_a", 2): 1, ("img_b", 1): 5}
    # A restart (a new app on the same database) resumes at the first cell without an answer.
    again = LabelApp(CellTable(tmp_path / "ds" / "cells.csv"), store, [11], "ann")
    assert _cell(again.state(11)) == ("img_b", 2)
    # Another labeller starts from the beginning.
    assert _cell(LabelApp(app.table, store, [11], "bob").state(11)) == ("img_a", 1)
    # Scoring the last cell finishes the class.
    status, state = _score(client, ("img_b", 2), 3)
    assert state["cell"] is None and state["progress"]["remaining"] == 0 and state["preload"] == []
    assert state["classes"][0]["done"] == 4 and state["classes"][1]["done"] == 0


def test_skip_and_undo(served):
    client, store, _ = served
    status, state = client.post("/api/skip", {"class_id": 11, "image_id": "img_a", "cell_id": 1})
    assert status == 200 and _cell(state) == ("img_a", 2)
    assert state["progress"]["skipped"] == 1 and state["progress"]["scored"] == 0
    _score(client, ("img_a", 2), 2)
    _score(client, ("img_a", 2), 5)  # re-scored
    status, state = client.post("/api/undo", {"class_id": 11})
    assert status == 200
    assert _cell(state) == ("img_a", 2) and state["cell"]["answer"] == 2  # the earlier score stands again
    client.post("/api/undo", {"class_id": 11})
    status, state = client.post("/api/undo", {"class_id": 11})
    assert _cell(state) == ("img_a", 1) and state["cell"]["answer"] is None
    assert store.answered(11, "ann") == {}
    status, state = client.post("/api/undo", {"class_id": 11})
    assert status == 200 and state["message"] == "nothing to undo"
    assert client.post("/api/undo", {"class_id": 15})[1]["message"] == "nothing to undo"


def test_crops_render_at_display_size(served):
    import cv2

    client, _, _ = served
    _, state = client.get("/api/state?class=11")
    status, png = client.get(state["cell"]["urls"]["composite"])
    assert status == 200
    composite = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert composite.shape == (128, 128, 3)
    status, png = client.get(state["cell"]["urls"]["green"] + "&gain=2")
    green = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert status == 200 and green.shape == (128, 128)
    assert client.get("/crop/img_a_1.png?view=red")[0] == 400
    assert client.get("/crop/img_a_1.png?gain=3")[0] == 400
    assert client.get("/crop/img_a_1.png?gain=nan")[0] == 400


TRAVERSALS = [
    "/crop/../../etc/passwd",
    "/crop/../cells.csv",
    "/crop/%2e%2e/cells.csv",
    "/crop/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/crop/..%2f..%2f..%2fetc%2fpasswd",
    "/crop/%252e%252e%252fcells.csv",
    "/crop//etc/passwd",
    "/crop/%2Fetc%2Fpasswd",
    "/crop/..%5ccells.csv",
    "/crop/img_a_1.png%00.txt",
    "/crop/./img_a_1.png",
    "/crop/stray.png",
    "/crop/",
    "/crop/crops/img_a_1.png",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_file_outside_the_listed_crops_is_served(served, path):
    client, _, _ = served
    status, body = client.get(path)
    assert status == 404, (path, body)
    assert b"root:" not in json.dumps(body).encode()
    assert client.get("/crop/img_a_1.png")[0] == 200  # still serving


def test_traversal_in_raw_request_lines(served):
    client, _, _ = served
    for target in (b"/crop/../../../../etc/passwd", b"/crop/..\\..\\cells.csv", b"//etc/passwd", b"/../cells.csv"):
        assert client.raw(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == 404
    assert client.raw(b"GET /a b HTTP/1.1\r\n\r\n") == 400  # malformed request line
    assert client.get("/")[0] == 200


BAD_POSTS = [
    ("/api/score", b"not json", {"Content-Type": "application/json"}, 400),
    ("/api/score", b"\xff\xfe", {"Content-Type": "application/json"}, 400),
    ("/api/score", b"[1, 2]", {"Content-Type": "application/json"}, 400),
    ("/api/score", {"class_id": 11, "image_id": "img_a", "cell_id": 1, "score": 7}, None, 400),
    ("/api/score", {"class_id": 11, "image_id": "img_a", "cell_id": 1, "score": 0}, None, 400),
    ("/api/score", {"class_id": 11, "image_id": "img_a", "cell_id": 1, "score": "3"}, None, 400),
    ("/api/score", {"class_id": 11, "image_id": "img_a", "cell_id": 1, "score": True}, None, 400),
    ("/api/score", {"class_id": 11, "image_id": "img_a", "cell_id": 1, "score": 3.5}, None, 400),
    ("/api/score", {"class_id": 11, "image_id": "img_a", "cell_id": 1}, None, 400),
    ("/api/score", {"class_id": 11, "image_id": "img_z", "cell_id": 1, "score": 3}, None, 404),
    ("/api/score", {"class_id": 11, "image_id": "img_c", "cell_id": 1, "score": 3}, None, 404),  # not of class 11
    ("/api/score", {"class_id": 11, "image_id": "img_a", "cell_id": "1", "score": 3}, None, 400),
    ("/api/score", {"class_id": 9, "image_id": "img_a", "cell_id": 1, "score": 3}, None, 400),  # not labelled here
    ("/api/score", {"class_id": 99, "image_id": "img_a", "cell_id": 1, "score": 3}, None, 400),
    ("/api/score", {"class_id": [11], "image_id": "img_a", "cell_id": 1, "score": 3}, None, 400),
    ("/api/skip", {"class_id": 11, "image_id": None, "cell_id": 1}, None, 400),
    ("/api/undo", {"class_id": "Spindle"}, None, 400),
    ("/api/score", b'{"class_id": 11, "image_id": "img_a", "cell_id": 1, "score": 3}', {"Content-Type": "text/plain"}, 415),
    ("/api/score", b"x" * 10000, {"Content-Type": "application/json"}, 413),
    ("/api/nothing", {"class_id": 11}, None, 404),
]


@pytest.mark.parametrize("path, body, headers, expected", BAD_POSTS)
def test_bad_posts_get_a_4xx_and_change_nothing(served, path, body, headers, expected):
    client, store, _ = served
    status, reply = client.post(path, body, headers)
    assert status == expected, reply
    assert "error" in reply
    assert store.history() == []
    assert client.get("/api/state?class=11")[0] == 200  # still serving


def test_other_bad_requests(served):
    client, store, _ = served
    assert client.get("/api/nothing")[0] == 404
    assert client.get("/etc/passwd")[0] == 404
    assert client.get("/api/state?class=9")[0] == 400
    assert client.get("/api/state?class=banana")[0] == 400
    assert client.get("/api/state?" + "&".join(f"k{i}=1" for i in range(40)))[0] == 400
    assert client.raw(b"GET http://[bad/x HTTP/1.1\r\nHost: x\r\n\r\n") == 400
    assert client.raw(b"POST http://[bad/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}") == 400
    assert client.request("PUT", "/api/score", b"{}")[0] == 405
    assert client.request("DELETE", "/")[0] == 405
    body = b'{"class_id": 11, "image_id": "img_a", "cell_id": 1, "score": 3}'
    assert client.raw(b"POST /api/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n" + body) == 411
    assert client.raw(b"POST /api/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: -5\r\n\r\n") == 411
    assert store.history() == []
    assert client.get("/")[0] == 200


def test_unreadable_crop_is_a_4xx(served, tmp_path):
    client, _, _ = served
    (tmp_path / "ds" / "crops" / "img_c_4.png").write_bytes(b"corrupt")
    status, reply = client.get("/crop/img_c_4.png?view=green")
    assert status == 422 and "cannot be read" in reply["error"]
    assert client.get("/crop/img_c_1.png")[0] == 200


def test_concurrent_scores_are_all_stored(served):
    client, store, _ = served
    cells = [("img_a", 1), ("img_a", 2), ("img_b", 1), ("img_b", 2)] * 3
    results = []

    def post(cell):
        results.append(_score(client, cell, 3)[0])

    threads = [threading.Thread(target=post, args=(cell,)) for cell in cells]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * len(cells)
    assert len(store.history()) == len(cells)
    assert len(store.answered(11, "ann")) == 4


def test_app_checks_its_settings(tmp_path):
    table = CellTable(write_cells(tmp_path / "ds"))
    with LabelStore(tmp_path / "labels.sqlite") as store:
        with pytest.raises(ValueError, match="Actin filaments"):
            LabelApp(table, store, ["Actin filaments"], "ann")
        with pytest.raises(ValueError, match="classes is empty"):
            LabelApp(table, store, [], "ann")
        with pytest.raises(ValueError, match="labeller"):
            LabelApp(table, store, [11], "")
        with pytest.raises(ValueError, match="unknown class"):
            LabelApp(table, store, ["Spindle"], "ann")


def test_cli_serves_until_interrupted(tmp_path):
    import re
    import signal
    import subprocess
    import sys

    cells = write_cells(tmp_path / "ds")
    db = tmp_path / "labels.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpa_kernel", "label", "--cells", str(cells), "--class", "Mitotic spindle",
         "--db", str(db), "--port", "0", "--user", "cli-user"],
        stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue = queue.Queue()

    def pump():  # stderr lines into the queue, then None at its end; the test reads them with a deadline
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        seen, found, deadline = [], None, time.monotonic() + 120  # a server that never says where it listens fails
        while found is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            found = re.search(r"open http://127\.0\.0\.1:(\d+)/", line)
        assert found, "".join(seen)
        client = Client(int(found.group(1)))
        status, state = client.get("/api/state")
        assert status == 200 and state["labeller"] == "cli-user" and state["progress"]["total"] == 4
        assert _score(client, _cell(state), 5)[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with LabelStore(db) as store:
        assert store.answered(11, "cli-user") == {("img_a", 1): 5}
