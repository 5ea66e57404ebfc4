"""SQLite storage of manual cell scores, one committed row per key press.

Schema (``labels.sqlite``)
--------------------------
``events``: an append-only log; nothing is ever deleted.

============ ======= ==========================================================================
column       type    meaning
============ ======= ==========================================================================
id           INTEGER increasing event number
image_id     TEXT    the image
cell_id      INTEGER the cell of the image (as in ``cells.csv``)
class_id     INTEGER the class scored, 0..18
score        INTEGER 1..5 (how sure the labeller is that the cell shows the class); NULL = skipped
labeller     TEXT    who pressed the key
created_at   TEXT    UTC time, ISO 8601 with microseconds (``2026-01-31T12:00:00.000000+00:00``)
undone_at    TEXT    UTC time of the undo that withdrew this event; NULL while it stands
============ ======= ==========================================================================

``meta``: ``schema_version``.

The *current* answer of a labeller for a (cell, class) is their latest event that is not undone.
A cell is *done* for a labeller once it has a current answer (a score or a skip). Undo withdraws
the labeller's latest standing event for the class, which restores their previous answer for that
cell, if any. Each write is its own transaction, committed before the call returns, and the
database runs in WAL mode, so a crash loses at most the key press in flight.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hpa_kernel.classes import NUM_CLASSES

__all__ = ["LabelStore", "ScoreEvent", "SCORES", "SCHEMA_VERSION"]

logger = logging.getLogger(__name__)

SCORES: tuple[int, ...] = (1, 2, 3, 4, 5)
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id TEXT NOT NULL,
    cell_id INTEGER NOT NULL,
    class_id INTEGER NOT NULL CHECK (class_id BETWEEN 0 AND 18),
    score INTEGER CHECK (score BETWEEN 1 AND 5),
    labeller TEXT NOT NULL,
    created_at TEXT NOT NULL,
    undone_at TEXT
);
CREATE INDEX IF NOT EXISTS events_by_class ON events (class_id, labeller, undone_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# The current answer per (image, cell, class, labeller): the latest standing event.
_CURRENT = """
SELECT id, image_id, cell_id, class_id, score, labeller, created_at FROM (
    SELECT *, ROW_NUMBER() OVER (
        PARTITION BY image_id, cell_id, class_id, labeller ORDER BY id DESC) AS rank
    FROM events WHERE undone_at IS NULL
) WHERE rank = 1
"""


@dataclass(frozen=True)
class ScoreEvent:
    """One stored answer: ``score`` is 1..5, or None for a skip."""

    id: int
    image_id: str
    cell_id: int
    class_id: int
    score: int | None
    labeller: str
    created_at: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _check_class(class_id: int) -> int:
    if isinstance(class_id, bool) or not isinstance(class_id, int) or not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f"class_id must be an int in 0..{NUM_CLASSES - 1}, got {class_id!r}")
    return class_id


def _check_labeller(labeller: str) -> str:
    if not isinstance(labeller, str) or not labeller.strip():
        raise ValueError(f"labeller must be a non-empty name, got {labeller!r}")
    return labeller.strip()


class LabelStore:
    """The score database; safe to share between the threads of the web server.

    Parameters
    ----------
    path : path
        The SQLite file; created with its folder if missing.

    Examples
    --------
    >>> import tempfile, os
    >>> with LabelStore(os.path.join(tempfile.mkdtemp(), "labels.sqlite")) as store:
    ...     _ = store.record("img", 3, 11, 5, "ann")
    ...     [(e.cell_id, e.score) for e in store.current(class_id=11)]
    [(3, 5)]
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"database path {self.path} is a folder: expected a file such as labels.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise ValueError(f"{self.path}: schema version {row[0]}, expected {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise ValueError(f"{self.path} is not a label database: {exc}") from exc
        except ValueError:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, sql: str, params: tuple) -> sqlite3.Cursor:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._conn.execute(sql, params)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return cur

    def record(self, image_id: str, cell_id: int, class_id: int, score: int | None, labeller: str) -> int:
        """Store an answer (``score`` 1..5, or None to skip) and commit it; returns the event id."""
        if score is not None and (isinstance(score, bool) or score not in SCORES):
            raise ValueError(f"score must be one of 1..5 or None (skip), got {score!r}")
        if not isinstance(image_id, str) or not image_id:
            raise ValueError(f"image_id must be a non-empty string, got {image_id!r}")
        if isinstance(cell_id, bool) or not isinstance(cell_id, int):
            raise ValueError(f"cell_id must be an int, got {cell_id!r}")
        cur = self._write(
            "INSERT INTO events (image_id, cell_id, class_id, score, labeller, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (image_id, cell_id, _check_class(class_id), score, _check_labeller(labeller), _now()),
        )
        logger.debug("event %d: %s %d class %d score %s by %s", cur.lastrowid, image_id, cell_id, class_id, score, labeller)
        return int(cur.lastrowid)

    def undo(self, class_id: int, labeller: str) -> ScoreEvent | None:
        """Withdraw the labeller's latest standing event for the class; returns it, or None if none."""
        class_id, labeller = _check_class(class_id), _check_labeller(labeller)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(
                    "SELECT id, image_id, cell_id, class_id, score, labeller, created_at FROM events "
                    "WHERE class_id = ? AND labeller = ? AND undone_at IS NULL ORDER BY id DESC LIMIT 1",
                    (class_id, labeller),
                ).fetchone()
                if row is not None:
                    self._conn.execute("UPDATE events SET undone_at = ? WHERE id = ?", (_now(), row[0]))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return ScoreEvent(*row) if row is not None else None

    def current(self, class_id: int | None = None, labeller: str | None = None) -> list[ScoreEvent]:
        """Current answers (skips included), optionally for one class and/or labeller, by event id."""
        sql, params = f"SELECT * FROM ({_CURRENT}) WHERE 1", []
        if class_id is not None:
            sql += " AND class_id = ?"
            params.append(_check_class(class_id))
        if labeller is not None:
            sql += " AND labeller = ?"
            params.append(_check_labeller(labeller))
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY id", params).fetchall()
        return [ScoreEvent(*r) for r in rows]

    def answered(self, class_id: int, labeller: str) -> dict[tuple[str, int], int | None]:
        """``{(image_id, cell_id): score or None}`` of the labeller's current answers for the class."""
        return {(e.image_id, e.cell_id): e.score for e in self.current(class_id, labeller)}

    def history(self) -> list[tuple]:
        """Every event, undone ones included, as rows of the ``events`` table in id order."""
        with self._lock:
            return self._conn.execute("SELECT * FROM events ORDER BY id").fetchall()
