"""A full disk: one error that names the file and the space the step needed.

Every file the kit writes for keeps (``submission.csv``, the crops and ``cells.csv``, the cells
cache, checkpoints and the training resume state) goes through a temporary file that is renamed
into place (:func:`hpa_kernel.io.atomic_write`), so a write that fails leaves the previous file as
it was and no temporary file. When it fails because the disk (or the user's quota) is full, the
``OSError`` (``errno`` ``ENOSPC`` or ``EDQUOT``) becomes a :class:`DiskFullError`, which the command
line prints as one line, without a traceback.

``torch.save`` hides the ``OSError`` of its file behind a ``RuntimeError`` (``unexpected pos``);
:func:`torch_save` writes through a file object that keeps the original error and raises it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

__all__ = ["DiskFullError", "is_disk_full", "disk_full_error", "format_bytes", "torch_save"]

logger = logging.getLogger(__name__)

#: The errno values of a full disk: no space left, and the user's quota exceeded.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def format_bytes(n: int | float) -> str:
    """A byte count for people: bytes below 1 KiB, else one decimal and a binary unit.

    >>> format_bytes(512), format_bytes(180499), format_bytes(3 * 1024**3)
    ('512 bytes', '176.3 KiB', '3.0 GiB')
    """
    value = float(n)
    if value < 1024:
        return f"{int(value)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the disk of ``path`` (its nearest existing folder); None where unknown."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


class DiskFullError(OSError):
    """Writing ``path`` failed because its disk (or the quota) is full.

    Parameters
    ----------
    path : path
        The file the step was writing (its final name, not the temporary one).
    needed_bytes : int, optional
        What the step needed to write, where known.

    Attributes
    ----------
    path, needed_bytes, free_bytes
        ``free_bytes`` is read when the error is made (the failed temporary file already removed).
    """

    def __init__(self, path: str | os.PathLike, needed_bytes: int | None = None, free_bytes: int | None = None):
        self.path = Path(path)
        self.needed_bytes = None if needed_bytes is None else int(needed_bytes)
        self.free_bytes = _free_bytes(self.path) if free_bytes is None else int(free_bytes)
        super().__init__(errno.ENOSPC, self._message(), str(self.path))

    def _message(self) -> str:
        need = "" if self.needed_bytes is None else f"; this step needed {format_bytes(self.needed_bytes)}"
        free = "" if self.free_bytes is None else f", {format_bytes(self.free_bytes)} free"
        return f"the disk is full: could not write {self.path}{need}{free}. The previous file, if any, is unchanged"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.needed_bytes, self.free_bytes))


def is_disk_full(exc: BaseException) -> bool:
    """True for an ``OSError`` of a full disk or quota (:data:`DISK_FULL_ERRNOS`), a :class:`DiskFullError` included.

    >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device")), is_disk_full(OSError(errno.EACCES, "x"))
    (True, False)
    """
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_error(exc: OSError, path: str | os.PathLike, needed_bytes: int | None = None) -> DiskFullError:
    """``exc`` as a :class:`DiskFullError` about ``path`` (one already made is returned as it is)."""
    if isinstance(exc, DiskFullError):
        return exc
    return DiskFullError(path, needed_bytes)


class _KeepWriteError:
    """A file object for ``torch.save`` that remembers the ``OSError`` of a failed write."""

    def __init__(self, fh):
        self.fh = fh
        self.error: OSError | None = None
        self.written = 0

    def write(self, data) -> int:
        try:
            n = self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self.written += len(data) if n is None else n
        return len(data) if n is None else n

    def flush(self) -> None:
        self.fh.flush()


def torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a Python file object: a failed write raises its ``OSError``
    (``torch.save`` on a path, or on a file object, reports it as ``RuntimeError: ... unexpected pos``)."""
    import torch

    with open(path, "wb") as fh:
        sink = _KeepWriteError(fh)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise
        fh.flush()
        os.fsync(fh.fileno())
