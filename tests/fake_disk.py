"""Test scaffolding: a disk that fills up at a chosen byte, under the real write path.

:func:`install` replaces ``open`` (``builtins.open`` and ``io.open``, which ``pathlib``, pandas and
``os.fdopen`` use) for files opened for writing under one folder: they get a real ``FileIO`` whose
``write`` stops at the disk's free bytes as the kernel does (a short write, then
``OSError(ENOSPC)``), under the usual buffered and text layers. Everything else, reads included,
goes to the real ``open``. The disk also records each file written (path, bytes) in order.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FakeDisk", "install"]

_REAL_OPEN = io.open


@dataclass
class FakeDisk:
    """``free`` bytes left (None: unlimited); ``writes``: [path, bytes written] per opened file, in order."""

    free: int | None = None
    writes: list = field(default_factory=list)

    def take(self, wanted: int) -> int:
        """How many of ``wanted`` bytes fit; raises ENOSPC when none does."""
        if self.free is None:
            return wanted
        if self.free <= 0 and wanted > 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(wanted, self.free)
        self.free -= n
        return n


class _FillingFileIO(io.FileIO):
    def __init__(self, file, mode, disk: FakeDisk, record: list, closefd: bool = True):
        super().__init__(file, mode, closefd=closefd)
        self._disk, self._record = disk, record

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = self._disk.take(len(view))
        written = super().write(view[:n])
        self._record[1] += written
        return written


def _path_of(file) -> Path | None:
    if isinstance(file, int):
        try:
            return Path(os.readlink(f"/proc/self/fd/{file}"))
        except OSError:
            return None
    try:
        return Path(os.path.abspath(os.fspath(file)))
    except TypeError:
        return None


def install(monkeypatch, root: Path, disk: FakeDisk) -> FakeDisk:
    """Send the writes under ``root`` to ``disk`` for the rest of the test."""
    root = Path(os.path.abspath(root))

    def fake_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
        path = _path_of(file)
        writing = any(c in mode for c in "wax+")
        if not writing or opener is not None or path is None or not path.is_relative_to(root):
            return _REAL_OPEN(file, mode, buffering, encoding, errors, newline, closefd, opener)
        record = [path, 0]
        disk.writes.append(record)
        raw = _FillingFileIO(file, mode.replace("b", "").replace("t", ""), disk, record, closefd=closefd)
        if "b" in mode and buffering == 0:
            return raw
        buffered = io.BufferedRandom(raw) if "+" in mode else io.BufferedWriter(raw)
        if "b" in mode:
            return buffered
        return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", errors=errors, newline=newline)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    return disk
