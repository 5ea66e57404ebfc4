"""A resumable on-disk cache of the cells stage: label images and per-cell tables, one file per image.

An entry is keyed by the image's content (SHA-256 of the four channel files' bytes), the
segmenter's settings, the settings of :class:`~hpa_kernel.cells.config.CellConfig` that change
the table, and the outlier reference. Each entry is one ``.npz`` file written atomically: to a
uniquely named temporary file in the same folder, flushed to disk, then ``os.replace``-d onto
its final name. A run killed at any point therefore leaves either a complete entry or none (plus
at most a stray ``.tmp-*`` file, which is never read and may be deleted at any time). Crops are
not cached: they are recomputed from the image and the cached labels, which is cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np

__all__ = ["CACHE_VERSION", "CacheError", "CellCache", "image_digest", "cache_key"]

logger = logging.getLogger(__name__)

#: Bumped whenever the cached content or its meaning changes; part of every key.
CACHE_VERSION = 2  # 2: the table gained the milimed2021 cleaners' columns

_CHUNK = 1 << 20


class CacheError(ValueError):
    """A cache file exists but cannot be read as an entry."""


def image_digest(folder: str | Path, image_id: str) -> str:
    """SHA-256 (hex) of the bytes of the image's four channel files, in the order R, G, B, Y.

    Raises
    ------
    FileNotFoundError
        Naming the missing channel file(s).
    """
    from hpa_kernel.io import CHANNELS, channel_path

    found = {c: channel_path(folder, image_id, c) for c in CHANNELS}
    missing = [c for c, p in found.items() if p is None]
    if missing:
        names = ", ".join(f"{image_id}_{c}.png" for c in missing)
        raise FileNotFoundError(f"image {image_id}: missing channel file(s) {names} in {folder}")
    digest = hashlib.sha256()
    for channel in CHANNELS:
        path = found[channel]
        digest.update(f"{channel}:{path.suffix.lower()}:".encode())
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def cache_key(digest: str, segmenter_settings: dict, table_settings: dict, reference: dict | None = None) -> str:
    """The key of one image's entry: a SHA-256 over everything that changes its content.

    >>> len(cache_key("ab", {"name": "classic"}, {"max_train_cut": 0.1}))
    64
    """
    payload = {
        "version": CACHE_VERSION,
        "image": digest,
        "segmenter": segmenter_settings,
        "cells": table_settings,
        "reference": reference,
    }
    text = json.dumps(payload, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


class CellCache:
    """A folder of entries ``{key}.npz`` holding ``nuclei``, ``cell`` and the table's columns.

    Parameters
    ----------
    root : path
        The cache folder; created if missing. Several processes (shards) may share it.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"cache_dir {self.root} exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(self, key: str, nuclei_label: np.ndarray, cell_label: np.ndarray, table) -> Path:
        """Write one entry atomically; returns its path.

        Raises
        ------
        hpa_kernel.diskspace.DiskFullError
            When the disk is full; no entry and no temporary file is left.
        """
        from hpa_kernel.diskspace import disk_full_error, is_disk_full

        arrays = {"nuclei": np.asarray(nuclei_label), "cell": np.asarray(cell_label)}
        columns = list(table.columns)
        arrays["columns"] = np.array(columns, dtype=np.str_)
        for k, name in enumerate(columns):
            arrays[f"col{k}"] = table[name].to_numpy()
        final = self.path(key)
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        try:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            tmp.unlink(missing_ok=True)
            raise disk_full_error(exc, final) from exc
        finally:
            if tmp.exists():
                tmp.unlink()
        return final

    def load(self, key: str):
        """Read one entry: ``(nuclei_label, cell_label, table)``.

        Raises
        ------
        FileNotFoundError
            If there is no entry for ``key``.
        CacheError
            If the file cannot be read as an entry.
        """
        import zipfile

        import pandas as pd

        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no cache entry {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                columns = [str(c) for c in data["columns"]]
                table = pd.DataFrame({name: data[f"col{k}"] for k, name in enumerate(columns)}, columns=columns)
                return data["nuclei"], data["cell"], table
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise CacheError(f"cache entry {path} is unreadable ({type(exc).__name__}: {exc})") from exc
