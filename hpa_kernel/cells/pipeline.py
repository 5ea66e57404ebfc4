"""From images to cells in parallel: segmentation, heuristics, crops and mask encoding.

:class:`CellPipeline` reads each image, runs ``segmenter.predict`` on batches of images in the main
process (where a GPU, if any, lives), and hands each image with its segmentation maps to a pool of
worker processes. A worker runs ``segmenter.postprocess_fn`` (label_cell), the heuristics of
:mod:`hpa_kernel.cells.heuristics`, the crops of :mod:`hpa_kernel.cells.crops` and the mask
encoding, and writes the cache entry. Results come back one per image, in input order.

Design points:

* Workers are started with the ``spawn`` method (configurable), so that they never inherit a CUDA
  context; they never import torch (``postprocess_fn`` must not either).
* Memory stays bounded: at most ``max_pending`` images (default ``batch_size + 2 * workers``) are
  read, in flight or waiting to be consumed at any time.
* Failures are per image: an unreadable image, a ``predict`` or worker error becomes an
  :class:`ImageFailure` with the image ID and the reason, and the run goes on. When a worker
  process dies (killed, segfault), the pool is recreated and every image that was in flight is
  retried alone in the new pool, so that only the image that kills its worker again is recorded as
  failed.
* Large arrays do not travel through the pool's pipe: the image and its maps go to the worker, and
  the crops (and label images) come back, through named shared-memory blocks
  (:class:`_SharedArray`); only the small rest is pickled. The main process copies a result out
  of its block and unlinks it, so that it spends its time reading images and running ``predict``,
  not unpickling some 30 MB of crops per 2048x2048 image.
* Ctrl-C (or closing the generator) terminates the workers at once and re-raises.
* With ``cache_dir``, cached images skip segmentation and heuristics; see :mod:`hpa_kernel.cells.cache`.
* ``workers=0`` runs everything in the calling process (the sequential baseline, and debugging).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hpa_kernel.cells.config import CellConfig
from hpa_kernel.cells.heuristics import OutlierReference

__all__ = ["ImageCells", "ImageFailure", "CellPipeline", "PipelineOptions", "default_workers", "process_image"]

logger = logging.getLogger(__name__)


def default_workers() -> int:
    """The number of CPU cores this process may use (``os.sched_getaffinity``; 2 on Kaggle)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class PipelineOptions:
    """How a :class:`CellPipeline` run (or one :func:`process_image` call) works and what it returns.

    Attributes
    ----------
    batch_size : int
        Images per ``segmenter.predict`` call.
    encode_masks : bool
        Encode each cell's mask (EncodedMask, :func:`hpa_kernel.submission.rle.encode_label_image`).
    reference : OutlierReference, optional
        Dataset-level outlier statistics; None compares each cell with its own image's cells.
    keep_labels : bool
        Return the label images in :class:`ImageCells` (more memory and IPC).
    max_pending : int, optional
        Most images held at once (read, in flight or awaiting consumption);
        default ``batch_size + 2 * max(workers, 1)``.
    mp_context : {"spawn", "forkserver"}
        How worker processes start; both are safe with CUDA in the main process.

    Examples
    --------
    >>> PipelineOptions(batch_size=4, encode_masks=False).keep_labels
    False
    """

    batch_size: int = 1
    encode_masks: bool = True
    reference: OutlierReference | None = None
    keep_labels: bool = False
    max_pending: int | None = None
    mp_context: str = "spawn"


#: What :func:`process_image` does without options: no encoding, no label images, per-image outliers.
_IMAGE_DEFAULTS = PipelineOptions(encode_masks=False)


@dataclass
class ImageCells:
    """The cells of one image.

    Attributes
    ----------
    image_id : str
    height, width : int
    table : pandas.DataFrame
        One row per cell, ascending ``cell_id``; columns
        :data:`hpa_kernel.cells.heuristics.TABLE_COLUMNS`.
    crops : ndarray, shape (N, S, S, 4), uint8 or uint16
        Row k is the crop of ``table.iloc[k]``, in the config's crop mode (uint16 for
        ``"milimed2021"``, uint8 for ``"kit2025"``); zero away from the cell.
    encoded : list of str or None
        The EncodedMask of each cell in table order (None when encoding is off).
    from_cache : bool
        Whether the labels and table came from the cache.
    nuclei_label, cell_label : ndarray or None
        The label images, only when the pipeline was asked to keep them.
    """

    image_id: str
    height: int
    width: int
    table: Any
    crops: np.ndarray
    encoded: list[str] | None = None
    from_cache: bool = False
    nuclei_label: np.ndarray | None = field(default=None, repr=False)
    cell_label: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return True


@dataclass(frozen=True)
class ImageFailure:
    """An image that could not be processed, with the reason."""

    image_id: str
    reason: str

    @property
    def ok(self) -> bool:
        return False


@dataclass
class _Task:
    """What a worker needs for one image (pickled to the worker)."""

    image_id: str
    config: CellConfig
    reference: OutlierReference | None
    encode: bool
    keep_labels: bool
    cache_root: str | None
    key: str | None
    # fresh images: the image and its maps; cached images: the folder to re-read the image from
    image: np.ndarray | None = None
    maps: Any = None
    postprocess_fn: Any = None
    folder: str | None = None


class _CacheUnreadable(RuntimeError):
    """Raised by a worker when a cache entry it was sent to cannot be read."""


# ----------------------------------------------------------------------------------------------
# arrays through shared memory

#: Arrays smaller than this are pickled as usual.
_SHARE_MIN_BYTES = 1 << 16


@dataclass(frozen=True)
class _SharedArray:
    """A handle to an ndarray parked in a named shared-memory block; it is pickled instead of the bytes."""

    name: str
    shape: tuple
    dtype: str


def _park(array: np.ndarray) -> tuple[_SharedArray, Any]:
    """Copy ``array`` into a new shared-memory block; returns its handle and the block (to close/unlink)."""
    from multiprocessing.shared_memory import SharedMemory

    block = SharedMemory(create=True, size=max(array.nbytes, 1))
    np.ndarray(array.shape, dtype=array.dtype, buffer=block.buf)[...] = array
    return _SharedArray(block.name, tuple(array.shape), array.dtype.str), block


def _unpark(handle: _SharedArray, unlink: bool) -> np.ndarray:
    """A private copy of a parked array; the block is closed, and unlinked when ``unlink``."""
    from multiprocessing.shared_memory import SharedMemory

    block = SharedMemory(name=handle.name)
    try:
        view = np.ndarray(handle.shape, dtype=np.dtype(handle.dtype), buffer=block.buf)
        array = view.copy()
        del view
    finally:
        block.close()
        if unlink:
            block.unlink()
    return array


def _park_tree(value: Any, blocks: list) -> Any:
    """``value`` with every large ndarray parked; the blocks go to ``blocks``.

    Arrays are looked for in tuples, lists and dataclass fields (e.g. ``SegmentationMaps``).
    """
    if isinstance(value, np.ndarray) and value.nbytes >= _SHARE_MIN_BYTES and value.dtype != object:
        handle, block = _park(value)
        blocks.append(block)
        return handle
    if isinstance(value, (tuple, list)):
        return type(value)(_park_tree(v, blocks) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _park_tree(getattr(value, f.name), blocks) for f in _init_fields(value)})
    return value


def _unpark_tree(value: Any, unlink: bool) -> Any:
    """The inverse of :func:`_park_tree`."""
    if isinstance(value, _SharedArray):
        return _unpark(value, unlink)
    if isinstance(value, (tuple, list)):
        return type(value)(_unpark_tree(v, unlink) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and not isinstance(value, _SharedArray):
        return dataclasses.replace(value, **{f.name: _unpark_tree(getattr(value, f.name), unlink) for f in _init_fields(value)})
    return value


def _init_fields(value) -> list:
    return [f for f in dataclasses.fields(value) if f.init]


def _release(blocks: list) -> None:
    """Close and unlink the blocks this process created for a task."""
    for block in blocks:
        block.close()
        try:
            block.unlink()
        except FileNotFoundError:
            logger.debug("shared-memory block %s was already unlinked", block.name)
    blocks.clear()


def _run_parked_task(task: _Task) -> ImageCells:
    """The pool's entry point: :func:`_run_task` with the large arrays in and out through shared memory.

    The input blocks belong to the main process (it unlinks them once the image is done, so that a
    retry after a worker death can still read them); the result's blocks are unlinked by the main
    process when it takes the result (:func:`_take_result`).
    """
    task = replace(task, image=_unpark_tree(task.image, unlink=False), maps=_unpark_tree(task.maps, unlink=False))
    result = _run_task(task)
    blocks: list = []
    try:
        result.crops = _park_tree(result.crops, blocks)
        result.nuclei_label = _park_tree(result.nuclei_label, blocks)
        result.cell_label = _park_tree(result.cell_label, blocks)
    except BaseException:
        _release(blocks)
        raise
    for block in blocks:
        block.close()  # the main process unlinks them
    return result


def _take_result(result: ImageCells) -> ImageCells:
    """The main-process side of :func:`_run_parked_task`: copy the parked arrays out and unlink them."""
    result.crops = _unpark_tree(result.crops, unlink=True)
    result.nuclei_label = _unpark_tree(result.nuclei_label, unlink=True)
    result.cell_label = _unpark_tree(result.cell_label, unlink=True)
    return result


# ----------------------------------------------------------------------------------------------
# the worker side


def _worker_init() -> None:
    # Ctrl-C is the main process's business: it terminates the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from hpa_kernel.cells.workers import exit_with_parent

    exit_with_parent()  # a kill -9 of the main process must not leave orphaned workers
    # One OpenCV thread per worker: the parallelism is the pool's; N workers x all-core OpenCV
    # thread pools would oversubscribe the CPU.
    from hpa_kernel._cv2 import cv2

    cv2.setNumThreads(1)


def _save_to_cache(cache, task: _Task, nuclei_label, cell_label, table) -> None:
    """Write the cache entry; a full disk only loses the entry (the cache is an optimisation), with a warning."""
    from hpa_kernel.diskspace import DiskFullError

    try:
        cache.save(task.key, nuclei_label, cell_label, table)
    except DiskFullError as exc:
        logger.warning("image %s: not cached (%s); it will be segmented again on a rerun", task.image_id, exc)


def _run_task(task: _Task) -> ImageCells:
    """The worker side: labels (post-processing or cache), table, crops, encoding, cache write."""
    from hpa_kernel.cells.cache import CacheError, CellCache
    from hpa_kernel.cells.heuristics import score_cells

    cache = CellCache(task.cache_root) if task.cache_root else None
    if task.image is None:  # cached entry
        from hpa_kernel.io import read_image

        try:
            nuclei_label, cell_label, table = cache.load(task.key)
        except (CacheError, FileNotFoundError) as exc:
            raise _CacheUnreadable(str(exc)) from exc
        image = read_image(task.folder, task.image_id)
        if cell_label.shape != image.shape[:2]:
            raise _CacheUnreadable(f"cache entry {task.key} has labels of shape {cell_label.shape}, image is {image.shape[:2]}")
        from_cache = True
    else:
        image = task.image
        nuclei_label, cell_label = task.postprocess_fn(task.maps)
        nuclei_label, cell_label = np.asarray(nuclei_label), np.asarray(cell_label)
        if cell_label.shape != image.shape[:2] or nuclei_label.shape != image.shape[:2]:
            raise ValueError(
                f"postprocess_fn returned labels of shapes {nuclei_label.shape} and {cell_label.shape}, "
                f"expected {image.shape[:2]}"
            )
        table = score_cells(image, nuclei_label, cell_label, task.config, task.reference)
        if cache is not None:
            _save_to_cache(cache, task, nuclei_label, cell_label, table)
        from_cache = False
    result = process_image(
        task.image_id, image, nuclei_label, cell_label, task.config, table=table,
        options=PipelineOptions(encode_masks=task.encode, keep_labels=task.keep_labels),
    )
    result.from_cache = from_cache
    return result


def process_image(
    image_id: str,
    image: np.ndarray,
    nuclei_label: np.ndarray,
    cell_label: np.ndarray,
    config: CellConfig | None = None,
    *,
    table=None,
    options: PipelineOptions | None = None,
) -> ImageCells:
    """Cells of one already segmented image: the table (unless given), crops and encodings.

    This is what a worker does after post-processing; it is public for callers that already have
    label images (e.g. the truth masks of synthetic data).

    Parameters
    ----------
    image_id : str
    image : ndarray, shape (H, W, 4)
        R, G, B, Y; uint8 or uint16.
    nuclei_label, cell_label : ndarray, shape (H, W)
        Integer label images; the same id means the same cell.
    config : CellConfig, optional
    table : pandas.DataFrame, optional
        A table from :func:`~hpa_kernel.cells.heuristics.score_cells` (e.g. from the cache);
        computed when absent.
    options : PipelineOptions, optional
        Only ``encode_masks`` (encode each cell's mask), ``keep_labels`` (keep the label images in
        the result) and ``reference`` (used only when the table is computed here) matter; the
        default encodes nothing, keeps no labels and has no reference. ``from_cache`` of the result
        is False.

    Returns
    -------
    ImageCells
    """
    from hpa_kernel.cells.crops import crop_cells
    from hpa_kernel.cells.heuristics import score_cells

    config = CellConfig() if config is None else config
    options = _IMAGE_DEFAULTS if options is None else options
    if table is None:
        table = score_cells(image, nuclei_label, cell_label, config, options.reference)
    ids = table["cell_id"].to_numpy()
    # the table's boxes are the cells' bounding boxes
    boxes = {int(r[0]): tuple(int(v) for v in r[1:]) for r in table[["cell_id", "y0", "x0", "y1", "x1"]].to_numpy()}
    crops = crop_cells(image, cell_label, ids, size=config.crop_size, margin=config.margin, boxes=boxes, mode=config.crop)
    encoded = None
    if options.encode_masks:
        from hpa_kernel.submission.rle import encode_label_image

        masks = encode_label_image(cell_label, [int(i) for i in ids]) if len(ids) else {}
        encoded = [masks[int(i)] for i in ids]
    height, width = cell_label.shape
    return ImageCells(
        image_id=image_id, height=int(height), width=int(width), table=table, crops=crops, encoded=encoded,
        nuclei_label=nuclei_label if options.keep_labels else None,
        cell_label=cell_label if options.keep_labels else None,
    )


@dataclass
class _Entry:
    """One image on its way through the pipeline (main process side)."""

    image_id: str
    key: str | None = None
    task: _Task | None = None
    future: Any = None
    result: ImageCells | ImageFailure | None = None
    needs_predict: bool = False
    blocks: list = field(default_factory=list)  # shared-memory blocks of the task in flight


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CellPipeline:
    """Segment images and turn them into cell tables, crops and encoded masks, in parallel.

    Parameters
    ----------
    segmenter : BaseSegmenter
        ``predict(images)`` runs here; its picklable ``postprocess_fn(maps)`` runs in the workers.
    config : CellConfig, optional
    workers : int, optional
        Worker processes; default :func:`default_workers`. 0 runs everything in this process.
    cache_dir : path, optional
        Folder of the resumable cache (:mod:`hpa_kernel.cells.cache`); None disables it.
    options : PipelineOptions, optional
        Batch size, mask encoding (on by default), outlier reference, label images, memory bound
        and worker start method; default ``PipelineOptions()``.

    Examples
    --------
    >>> from hpa_kernel.segmentation import create_segmenter
    >>> pipeline = CellPipeline(create_segmenter("classic"), CellConfig(crop_size=128))  # doctest: +SKIP
    >>> n_cells = {r.image_id: len(r.table) for r in pipeline.run("train", ids) if r.ok}  # doctest: +SKIP
    """

    def __init__(
        self,
        segmenter,
        config: CellConfig | None = None,
        workers: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        *,
        options: PipelineOptions | None = None,
    ):
        from hpa_kernel.cells.cache import CellCache

        if not callable(getattr(segmenter, "predict", None)) or not callable(getattr(segmenter, "postprocess_fn", None)):
            raise ValueError(
                f"segmenter must have predict(images) and a postprocess_fn, got {type(segmenter).__name__}"
            )
        self.segmenter = segmenter
        self.config = CellConfig() if config is None else config
        if not isinstance(self.config, CellConfig):
            raise ValueError(f"config must be a CellConfig, got {type(self.config).__name__}")
        self.workers = default_workers() if workers is None else workers
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        self.options = PipelineOptions() if options is None else options
        if not isinstance(self.options, PipelineOptions):
            raise ValueError(f"options must be a PipelineOptions, got {type(self.options).__name__}")
        batch_size, max_pending, mp_context = self.options.batch_size, self.options.max_pending, self.options.mp_context
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        default_pending = batch_size + 2 * max(self.workers, 1)
        self.max_pending = default_pending if max_pending is None else max_pending
        if not isinstance(self.max_pending, int) or self.max_pending < batch_size:
            raise ValueError(f"max_pending must be an int >= batch_size ({batch_size}), got {max_pending!r}")
        if mp_context not in ("spawn", "forkserver"):
            raise ValueError(f"mp_context must be 'spawn' or 'forkserver', got {mp_context!r}")
        self.mp_context = mp_context
        self.encode_masks = self.options.encode_masks
        self.reference = self.options.reference
        self.keep_labels = self.options.keep_labels
        self.cache = CellCache(cache_dir) if cache_dir is not None else None
        self._executor = None

    # ------------------------------------------------------------------ pool management
    def _new_pool(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context(self.mp_context), initializer=_worker_init
        )

    def _replace_pool(self) -> None:
        old, self._executor = self._executor, self._new_pool()
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)

    def _terminate_pool(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()
        for p in processes:
            p.join(timeout=10)

    # ------------------------------------------------------------------ per-image steps
    def _task(self, image_id: str, key: str | None, **kwargs) -> _Task:
        return _Task(
            image_id=image_id, config=self.config, reference=self.reference, encode=self.encode_masks,
            keep_labels=self.keep_labels, cache_root=str(self.cache.root) if self.cache else None, key=key, **kwargs,
        )

    def _key_settings(self) -> tuple[dict, dict, dict | None]:
        """The parts of the cache key that are the same for every image of a run."""
        return (
            self.segmenter.settings(),
            self.config.table_settings(),
            self.reference.to_dict() if self.reference else None,
        )

    def _prepare(self, folder: Path, image_id: str, key_settings: tuple | None) -> _Entry:
        """Look the image up in the cache, or read it for prediction; failures become results.

        ``key_settings`` is :meth:`_key_settings` (computed once per run), None without a cache.
        """
        from hpa_kernel.cells.cache import cache_key, image_digest
        from hpa_kernel.io import read_image

        entry = _Entry(image_id)
        try:
            if self.cache is not None:
                entry.key = cache_key(image_digest(folder, image_id), *key_settings)
                if entry.key in self.cache:
                    entry.task = self._task(image_id, entry.key, folder=str(folder))
                    return entry
            image = read_image(folder, image_id)
        except (OSError, ValueError) as exc:
            entry.result = self._failure(image_id, exc, "reading")
            return entry
        entry.task = self._task(image_id, entry.key, image=image)
        entry.needs_predict = True
        return entry

    def _failure(self, image_id: str, exc: BaseException, stage: str) -> ImageFailure:
        reason = f"{stage}: {_reason(exc)}"
        logger.warning("image %s failed: %s", image_id, reason)
        return ImageFailure(image_id, reason)

    def _predict(self, batch: list[_Entry]) -> None:
        """Run ``segmenter.predict`` on a batch; a failing batch is retried image by image."""
        batch = [e for e in batch if e.needs_predict and e.result is None]
        if not batch:
            return
        try:
            maps = self.segmenter.predict([e.task.image for e in batch])
            if len(maps) != len(batch):
                raise ValueError(f"segmenter.predict returned {len(maps)} maps for {len(batch)} images")
        except Exception as exc:  # noqa: BLE001 - any model error: isolate the image that causes it
            if len(batch) == 1:
                batch[0].result = self._failure(batch[0].image_id, exc, "segmentation")
                batch[0].task = None
                batch[0].needs_predict = False
                return
            logger.warning("segmenter.predict failed on a batch of %d (%s); retrying image by image", len(batch), _reason(exc))
            for e in batch:
                self._predict([e])
            return
        for e, m in zip(batch, maps):
            e.task.maps = m
            e.task.postprocess_fn = self.segmenter.postprocess_fn
            e.needs_predict = False

    def _submit(self, entry: _Entry) -> None:
        if self._executor is None:  # sequential
            try:
                entry.result = _run_task(entry.task)
            except _CacheUnreadable:
                raise  # the caller re-runs the image from scratch
            except Exception as exc:  # noqa: BLE001 - recorded per image
                entry.result = self._failure(entry.image_id, exc, "cells")
            return
        entry.future = self._submit_parked(entry)

    def _submit_parked(self, entry: _Entry):
        """Send ``entry.task`` to the pool with its image and maps in shared memory; returns the future."""
        _release(entry.blocks)
        task = replace(
            entry.task, image=_park_tree(entry.task.image, entry.blocks), maps=_park_tree(entry.task.maps, entry.blocks)
        )
        return self._executor.submit(_run_parked_task, task)

    def _flush(self, batch: list[_Entry]) -> None:
        """Predict the waiting batch and send its images to the workers."""
        todo = list(batch)
        batch.clear()
        self._predict(todo)
        for e in todo:
            if e.result is None:
                self._submit(e)

    def _rerun_fresh(self, entry: _Entry, folder: Path, why: str) -> None:
        """A cache entry turned out unreadable: delete it and process the image from scratch."""
        logger.warning("image %s: %s; segmenting it again", entry.image_id, why)
        path = self.cache.path(entry.key)
        if path.exists():
            path.unlink()
        from hpa_kernel.io import read_image

        try:
            image = read_image(folder, entry.image_id)
        except (OSError, ValueError) as exc:
            entry.result = self._failure(entry.image_id, exc, "reading")
            return
        entry.task = self._task(entry.image_id, entry.key, image=image)
        entry.needs_predict = True
        entry.future = None
        self._flush([entry])

    def _collect(self, entry: _Entry, future, folder: Path) -> bool:
        """Take ``future``'s outcome into ``entry``; False if the pool broke before it finished.

        A result or an error (logged) becomes ``entry.result``; an unreadable cache entry sends the
        image through segmentation again (:meth:`_rerun_fresh`).
        """
        from concurrent.futures.process import BrokenProcessPool

        try:
            result = future.result()
        except BrokenProcessPool:
            _release(entry.blocks)
            return False
        except _CacheUnreadable as exc:
            _release(entry.blocks)
            self._rerun_fresh(entry, folder, str(exc))
        except Exception as exc:  # noqa: BLE001 - recorded per image
            _release(entry.blocks)
            entry.result = self._failure(entry.image_id, exc, "cells")
        else:
            _release(entry.blocks)
            entry.result = _take_result(result)
        return True

    def _wait(self, entry: _Entry, pending: deque, folder: Path) -> ImageCells | ImageFailure:
        """The result of ``entry``, recovering from a broken pool and from unreadable cache entries."""
        for _ in range(3):
            if entry.result is not None:
                return entry.result
            if entry.future is None:
                self._submit_or_rerun(entry, folder)  # sequential mode: result set now
            elif not self._collect(entry, entry.future, folder):
                self._recover(pending, folder)
        if entry.result is None:
            entry.result = self._failure(entry.image_id, RuntimeError("gave up after repeated errors"), "cells")
        return entry.result

    def _recover(self, pending: deque, folder: Path) -> None:
        """A worker died: new pool, then retry every image that was in flight, one at a time."""
        logger.warning("a worker process died; restarting the pool and retrying the images in flight one by one")
        self._replace_pool()
        for e in pending:
            if e.future is None or e.result is not None:
                continue
            old, e.future = e.future, None
            if self._collect(e, old, folder):  # it may have finished before the break
                continue
            if not self._collect(e, self._submit_parked(e), folder):
                e.result = self._failure(
                    e.image_id, RuntimeError("a worker process died while processing this image, twice"), "cells"
                )
                self._replace_pool()

    # ------------------------------------------------------------------ the run
    def run(self, folder: str | os.PathLike, image_ids: Iterable[str], progress: bool = True) -> Iterator[ImageCells | ImageFailure]:
        """Process ``image_ids`` from ``folder``; yields one result per image, in input order.

        Parameters
        ----------
        folder : path
            Folder with the ``{ID}_{red,green,blue,yellow}`` channel files.
        image_ids : iterable of str
        progress : bool
            Show a tqdm bar (rate and ETA) on stderr.

        Yields
        ------
        ImageCells or ImageFailure
            ``result.ok`` tells which.
        """
        from tqdm.auto import tqdm

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"folder {folder} does not exist")
        ids = [str(i) for i in image_ids]
        key_settings = self._key_settings() if self.cache is not None else None
        pending: deque[_Entry] = deque()
        batch: list[_Entry] = []
        bar = tqdm(total=len(ids), desc="cells", unit="img", disable=not progress, dynamic_ncols=True)
        n_failed = 0
        finished = False
        if self.workers > 0:
            self._executor = self._new_pool()

        def pop():
            nonlocal n_failed
            head = pending[0]
            if head.needs_predict:
                self._flush(batch)
            result = self._wait(head, pending, folder)
            pending.popleft()
            head.task = head.future = None
            n_failed += not result.ok
            bar.update(1)
            if n_failed:
                bar.set_postfix(failed=n_failed, refresh=False)
            return result

        try:
            for image_id in ids:
                while len(pending) >= self.max_pending:
                    yield pop()
                entry = self._prepare(folder, image_id, key_settings)
                pending.append(entry)
                if entry.needs_predict:
                    batch.append(entry)
                    if len(batch) >= self.batch_size:
                        self._flush(batch)
                elif entry.result is None:
                    self._submit_or_rerun(entry, folder)
            self._flush(batch)
            while pending:
                yield pop()
            finished = True
        finally:
            bar.close()
            if finished:
                if self._executor is not None:
                    self._executor.shutdown(wait=True)
                    self._executor = None
            else:  # Ctrl-C, an error, or the consumer stopped early: do not wait for the workers
                self._terminate_pool()
                for e in pending:
                    _release(e.blocks)
        if n_failed:
            logger.warning("%d of %d images failed", n_failed, len(ids))

    def _submit_or_rerun(self, entry: _Entry, folder: Path) -> None:
        try:
            self._submit(entry)
        except _CacheUnreadable as exc:
            self._rerun_fresh(entry, folder, str(exc))
