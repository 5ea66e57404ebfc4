"""The labelling web server: the standard library's threading HTTP server, bound to 127.0.0.1.

Routes
------
``GET /`` (and ``/index.html``)
    The page (:data:`hpa_kernel.labelling.page.PAGE_HTML`). ``?class=ID`` picks the class.
``GET /api/state?class=ID``
    JSON: the labeller, the classes with their progress, the class description, the next cell to
    score (the first in ``(image_id, cell_id)`` order without an answer from this labeller) with
    its image URLs, and the URLs of the few cells after it (for preloading).
``POST /api/score`` ``{"class_id", "image_id", "cell_id", "score": 1..5}``
``POST /api/skip`` ``{"class_id", "image_id", "cell_id"}``
``POST /api/undo`` ``{"class_id"}``
    Each writes one event to the database before it answers with the new state. After an undo the
    state shows the cell whose answer was withdrawn.
``GET /crop/<path>?view=composite|green&gain=G``
    A crop of the table rendered as PNG; ``<path>`` is relative to the crops folder and must be a
    crop listed in ``cells.csv`` (anything else, ``..`` or absolute paths included, is a 404).

A bad request is answered with a 4xx and a JSON ``{"error": ...}``; POST bodies must be JSON sent
as ``application/json`` (which also keeps other web sites from posting scores through the
labeller's browser), at most 4 KiB and nested at most :data:`MAX_JSON_DEPTH` levels.

Hardening (the standard library's server, kept rather than replaced by a server library: the page
has five routes and no other dependency, and these checks are few):

* every request's ``Host`` must name the bound address and port (``localhost`` too on a loopback
  address, any IP literal on a wildcard one): a page of another site that rebinds its DNS name to
  127.0.0.1 gets a 421 and neither reads the state nor writes scores;
* a POST with an ``Origin`` other than the page's own (``http://`` + its ``Host``), or with
  ``Sec-Fetch-Site: cross-site``, gets a 403;
* a listen backlog of :data:`LISTEN_BACKLOG` (bursts of parallel requests are queued, not reset)
  and a socket timeout (a stalled request or an idle keep-alive connection is closed);
  ``Connection: close`` is honoured after a POST too.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

from hpa_kernel.classes import CLASS_NAMES, class_id
from hpa_kernel.labelling.crops import VIEWS, CellTable, LabelCell, read_crop, render_crop
from hpa_kernel.labelling.descriptions import CLASS_DESCRIPTIONS
from hpa_kernel.labelling.store import SCORES, LabelStore

__all__ = ["LabelApp", "RequestError", "make_server", "serve"]

logger = logging.getLogger(__name__)

MAX_BODY = 4096
#: Deepest nesting of arrays/objects accepted in a POST body (the payloads are flat objects).
MAX_JSON_DEPTH = 8
#: Queued connections before the kernel refuses more.
LISTEN_BACKLOG = 128
#: Seconds a connection may stall (while sending a request, or idle between keep-alive requests).
SOCKET_TIMEOUT_S = 30.0
PRELOAD = 3
GAINS = (1.0, 2.0, 4.0, 8.0)
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class RequestError(Exception):
    """A request the server refuses: carries the HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)
        self.message = message


@dataclass
class LabelApp:
    """What the server serves: the cells, the score database, the classes to label and who labels.

    Parameters
    ----------
    table : CellTable
        The cells and their crops.
    store : LabelStore
        The score database.
    classes : list of class names or ids
        The classes to label, in the order offered; each must be carried by some cell.
    labeller : str
        Recorded with every score.
    display_size : int
        Longer side of the rendered crops, in pixels.
    """

    table: CellTable
    store: LabelStore
    classes: list
    labeller: str
    display_size: int = 448

    def __post_init__(self):
        if not self.classes:
            raise ValueError("classes is empty: give at least one class to label")
        ids = []
        for name in self.classes:
            cid = class_id(name)
            if cid not in ids:
                ids.append(cid)
        self.classes = ids
        if not isinstance(self.labeller, str) or not self.labeller.strip():
            raise ValueError(f"labeller must be a non-empty name, got {self.labeller!r}")
        self.labeller = self.labeller.strip()
        if not 64 <= self.display_size <= 2048:
            raise ValueError(f"display_size must be in 64..2048, got {self.display_size}")
        self._cells = {cid: self.table.for_class(cid) for cid in self.classes}
        empty = [CLASS_NAMES[c] for c, cells in self._cells.items() if not cells]
        if empty:
            present = ", ".join(CLASS_NAMES[c] for c in self.table.classes_present()) or "none"
            raise ValueError(
                f"no valid cell of {self.table.cells_csv} carries the class(es) {', '.join(empty)}; "
                f"classes present: {present}"
            )
        self._index = {cid: {c.key: i for i, c in enumerate(cells)} for cid, cells in self._cells.items()}

    # -- requests ---------------------------------------------------------------------------------

    def _class(self, value) -> int:
        if value is None:
            return self.classes[0]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"class_id must be a class id or name, got {value!r}")
        try:
            cid = class_id(value)
        except ValueError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        if cid not in self._cells:
            offered = ", ".join(f"{c} ({CLASS_NAMES[c]})" for c in self.classes)
            raise RequestError(HTTPStatus.BAD_REQUEST, f"class {cid} is not being labelled here; classes: {offered}")
        return cid

    def _cell(self, cid: int, payload: dict) -> LabelCell:
        image_id, cell_id = payload.get("image_id"), payload.get("cell_id")
        if not isinstance(image_id, str) or isinstance(cell_id, bool) or not isinstance(cell_id, int):
            raise RequestError(HTTPStatus.BAD_REQUEST, "image_id must be a string and cell_id an integer")
        index = self._index[cid].get((image_id, cell_id))
        if index is None:
            raise RequestError(HTTPStatus.NOT_FOUND, f"cell {image_id} {cell_id} is not among the cells of class {cid}")
        return self._cells[cid][index]

    def _urls(self, cell: LabelCell) -> dict:
        path = "/crop/" + quote(cell.crop)
        return {view: f"{path}?view={view}" for view in VIEWS}

    def state(self, class_value=None, show: tuple[str, int] | None = None, message: str = "") -> dict:
        """The page's state for a class; ``show`` forces the cell shown (after an undo)."""
        cid = self._class(class_value)
        cells = self._cells[cid]
        answered = self.store.answered(cid, self.labeller)
        todo = [i for i, c in enumerate(cells) if c.key not in answered]
        index = self._index[cid][show] if show is not None else (todo[0] if todo else None)
        scored = sum(1 for s in answered.values() if s is not None)
        skipped = sum(1 for s in answered.values() if s is None)
        classes = []
        for other in self.classes:
            done = len(self.store.answered(other, self.labeller)) if other != cid else len(answered)
            classes.append({"id": other, "name": CLASS_NAMES[other], "total": len(self._cells[other]), "done": done})
        cell = None
        if index is not None:
            c = cells[index]
            cell = {
                "image_id": c.image_id,
                "cell_id": c.cell_id,
                "position": index + 1,
                # The labeller's standing answer, shown when an undo brings back a re-scored cell.
                "answer": None if c.key not in answered else ("skip" if answered[c.key] is None else answered[c.key]),
                "urls": self._urls(c),
            }
        after = [i for i in todo if index is None or i != index][:PRELOAD]
        return {
            "labeller": self.labeller,
            "classes": classes,
            "class": {"id": cid, "name": CLASS_NAMES[cid], "description": CLASS_DESCRIPTIONS[cid]},
            "progress": {
                "total": len(cells),
                "scored": scored,
                "skipped": skipped,
                "done": len(answered),
                "remaining": len(cells) - len(answered),
            },
            "cell": cell,
            "preload": [self._urls(cells[i]) for i in after],
            "message": message,
        }

    def score(self, payload: dict) -> dict:
        cid = self._class(payload.get("class_id"))
        cell = self._cell(cid, payload)
        score = payload.get("score")
        if isinstance(score, bool) or score not in SCORES:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"score must be an integer 1..5, got {score!r}")
        self.store.record(cell.image_id, cell.cell_id, cid, int(score), self.labeller)
        return self.state(cid, message=f"{cell.image_id} cell {cell.cell_id}: {score}")

    def skip(self, payload: dict) -> dict:
        cid = self._class(payload.get("class_id"))
        cell = self._cell(cid, payload)
        self.store.record(cell.image_id, cell.cell_id, cid, None, self.labeller)
        return self.state(cid, message=f"{cell.image_id} cell {cell.cell_id}: skipped")

    def undo(self, payload: dict) -> dict:
        cid = self._class(payload.get("class_id"))
        event = self.store.undo(cid, self.labeller)
        if event is None:
            return self.state(cid, message="nothing to undo")
        key = (event.image_id, event.cell_id)
        answer = "skip" if event.score is None else event.score
        message = f"undid {event.image_id} cell {event.cell_id}: {answer}"
        if key not in self._index[cid]:
            # Scored against another cells.csv: withdrawn all the same, but not shown.
            return self.state(cid, message=message + " (not in this cells.csv)")
        return self.state(cid, show=key, message=message)

    def crop(self, relative: str, query: dict) -> bytes:
        path = self.table.resolve(relative)
        if path is None:
            raise RequestError(HTTPStatus.NOT_FOUND, "no such crop")
        view = query.get("view", ["composite"])[-1]
        if view not in VIEWS:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        try:
            gain = float(query.get("gain", ["1"])[-1])
        except ValueError:
            gain = -1.0
        if gain not in GAINS:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"gain must be one of {', '.join(f'{g:g}' for g in GAINS)}")
        try:
            crop = read_crop(path)
        except ValueError as exc:
            logger.error("crop %s: %s", path, exc)
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"crop {relative} cannot be read: {exc}") from None
        return render_crop(crop, view, self.display_size, gain)


class _Handler(BaseHTTPRequestHandler):
    server_version = "hpa-kernel-label"
    protocol_version = "HTTP/1.1"

    @property
    def app(self) -> LabelApp:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: dict) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _dispatch(self, route) -> None:
        try:
            self._check_host()
            route()
        except RequestError as exc:
            self._json(exc.status, {"error": exc.message})
        except (ConnectionError, TimeoutError) as exc:
            logger.debug("client went away: %s", exc)
            self.close_connection = True
        except Exception as exc:
            logger.exception("internal error on %s %s", self.command, self.path)
            self.close_connection = True
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(exc).__name__}"})

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _check_host(self) -> None:
        host = self.headers.get("Host", "").strip().lower()
        if not self.server.host_allowed(host):  # type: ignore[attr-defined]
            self.close_connection = True
            raise RequestError(HTTPStatus.MISDIRECTED_REQUEST, f"Host {host[:100]!r} is not this server's address")

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and origin.strip().lower() != "http://" + self.headers.get("Host", "").strip().lower():
            raise RequestError(HTTPStatus.FORBIDDEN, f"Origin {origin[:100]!r} is not this page's origin; write requests come from the page only")
        site = self.headers.get("Sec-Fetch-Site", "same-origin").strip().lower()
        if site not in ("same-origin", "none"):
            raise RequestError(HTTPStatus.FORBIDDEN, f"Sec-Fetch-Site {site!r}: write requests come from the page only")

    def _refuse(self) -> None:
        self.close_connection = True
        self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"method {self.command} not allowed"})

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse

    def _get(self) -> None:
        from hpa_kernel.labelling.page import PAGE_HTML

        url, query = self._url()
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE_HTML.encode(), "text/html; charset=utf-8")
        elif url.path == "/api/state":
            self._json(HTTPStatus.OK, self.app.state(query.get("class", [None])[-1]))
        elif url.path.startswith("/crop/"):
            png = self.app.crop(unquote(url.path[len("/crop/"):]), query)
            self._send(HTTPStatus.OK, png, "image/png", cache=True)
        else:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no route {url.path}")

    def _url(self):
        try:
            url = urlsplit(self.path)
            return url, parse_qs(url.query, max_num_fields=16)
        except ValueError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"bad URL: {exc}") from None

    def _body(self) -> dict:
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        length = self.headers.get("Content-Length")
        if content_type != "application/json":
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the body as application/json")
        if length is None or not length.isdigit():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        if int(length) > MAX_BODY:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
        raw = self.rfile.read(int(length))
        if len(raw) != int(length):
            raise RequestError(HTTPStatus.BAD_REQUEST, "body shorter than its Content-Length")
        self.close_connection = self._client_closes
        try:
            _check_json_depth(raw.decode("utf-8"))
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RequestError(HTTPStatus.BAD_REQUEST, "body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return payload

    def _post(self) -> None:
        routes = {"/api/score": self.app.score, "/api/skip": self.app.skip, "/api/undo": self.app.undo}
        self._client_closes = self.close_connection  # the client's Connection: close
        self.close_connection = True  # until the body is read
        self._check_origin()
        url, _ = self._url()
        route = routes.get(url.path)
        if route is None:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no route {url.path}")
        self._json(HTTPStatus.OK, route(self._body()))


def _check_json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` before parsing it (deep nesting makes json recurse)."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"body is nested deeper than {limit} levels")
        elif ch in "]}":
            depth -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    app: LabelApp
    allowed_hosts: frozenset = frozenset()
    any_ip_host: bool = False

    def host_allowed(self, host: str) -> bool:
        """Whether a request's ``Host`` header (lower case) names this server."""
        if host in self.allowed_hosts:
            return True
        if not self.any_ip_host:
            return False
        name, _, port = host.rpartition(":")
        if port != str(self.server_address[1]):
            return False
        try:
            ipaddress.ip_address(name[1:-1] if name.startswith("[") and name.endswith("]") else name)
        except ValueError:
            return False  # a DNS name: what a rebinding attack sends
        return True


def _allowed_hosts(host: str, port: int) -> tuple[frozenset, bool]:
    names = {host.lower()}
    if host in _LOOPBACK:
        names |= _LOOPBACK
    wildcard = host in ("", "0.0.0.0", "::")
    if wildcard:
        names |= _LOOPBACK
    values = {f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in names if n}
    if port == 80:
        values |= {f"[{n}]" if ":" in n else n for n in names if n}
    return frozenset(values), wildcard


def make_server(
    app: LabelApp, host: str = "127.0.0.1", port: int = 8765, timeout_s: float = SOCKET_TIMEOUT_S
) -> ThreadingHTTPServer:
    """A server for ``app`` bound to ``host:port`` (port 0 picks a free one); not yet serving.

    ``timeout_s`` is the socket timeout of each connection, in seconds (> 0).
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if host not in _LOOPBACK:
        logger.warning("serving on %s: anyone who can reach this address can read the crops and write scores", host)
    handler = type("_TimedHandler", (_Handler,), {"timeout": float(timeout_s)})
    server = _Server((host, port), handler)
    server.app = app
    server.allowed_hosts, server.any_ip_host = _allowed_hosts(host, server.server_address[1])
    return server


def serve(
    app: LabelApp,
    host: str = "127.0.0.1",
    port: int = 8765,
    ready: threading.Event | None = None,
) -> None:
    """Serve ``app`` until interrupted (Ctrl-C); logs the address to open."""
    server = make_server(app, host, port)
    address = f"http://{host}:{server.server_address[1]}/?class={app.classes[0]}"
    logger.info("labelling %s as %s: open %s (Ctrl-C to stop)", ", ".join(CLASS_NAMES[c] for c in app.classes), app.labeller, address)
    if ready is not None:
        ready.set()
    try:
        server.serve_forever()
    finally:
        server.server_close()

