"""The competition metric: mean average precision at IoU 0.6 over the 19 classes.

This is ``../shared/reference/metric/README.md`` section 3, in pure numpy:

1. Only images with at least one ground-truth (GT) cell are evaluated; other submission rows are ignored.
2. Each ``label confidence EncodedMask`` triple is a detection, decoded at the row's
   [ImageHeight, ImageWidth].
3. Detections with an empty mask are dropped.
4. Detections of a class that no GT cell of the image has are dropped (not false positives).
5. Per image and class, detections are taken by confidence, highest first. A detection is a true
   positive when the GT cell of highest IoU (over *all* cells of the class, matched or not; the first
   one on a tie) has IoU >= 0.6 and is not matched yet; otherwise it is a false positive.
6. Per class, AP is the VOC "all points" area under the precision/recall curve; classes without GT
   have no AP (``None``) and are left out of the mean.

Two IoU modes: ``iou="box"`` (the organisers' released evaluator: IoU of the tight bounding boxes
of the masks, the primary reference) and ``iou="mask"`` (IoU of the pixel masks).

Equal confidences within a class are ordered by their position (image order of the truth, then
submission order); the official evaluator's order on ties is implementation-defined.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hpa_kernel.classes import CLASS_NAMES, NUM_CLASSES, parse_labels
from hpa_kernel.submission import parse_confidence, parse_label, read_sample_submission, split_prediction_string
from hpa_kernel.submission.rle import decode_mask, decode_runs

if TYPE_CHECKING:
    import pandas as pd

    CsvSource = str | os.PathLike | pd.DataFrame

__all__ = [
    "IOU_MODES",
    "IOU_THRESHOLD",
    "MetricResult",
    "TruthImage",
    "detection_average_precision",
    "score_submission",
    "load_truth",
    "load_truth_annotations",
    "parse_prediction_string",
]

logger = logging.getLogger(__name__)

IOU_MODES = ("box", "mask")
IOU_THRESHOLD = 0.6


# --------------------------------------------------------------------------- results


@dataclass
class MetricResult:
    """Result of :func:`score_submission`.

    Attributes
    ----------
    map : float
        Mean of the per-class APs over the classes that have GT.
    per_class_ap : dict
        Class id -> AP, or None for a class without GT.
    num_gt, num_detections, num_tp : dict
        Per class: GT (cell, label) rows, detections left after dropping empty masks and classes
        absent from the image, and true positives.
    iou, threshold : str, float
        The IoU mode and threshold used.
    num_images : int
        Images evaluated (those with GT).
    """

    map: float
    per_class_ap: dict[int, float | None]
    num_gt: dict[int, int]
    num_detections: dict[int, int]
    num_tp: dict[int, int]
    iou: str = "box"
    threshold: float = IOU_THRESHOLD
    num_images: int = 0
    classes_in_mean: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict; class keys are strings ``"0"``..``"18"``, a class without GT has AP null."""
        return {
            "mAP": self.map,
            "iou": self.iou,
            "threshold": self.threshold,
            "num_images": self.num_images,
            "classes_in_mean": list(self.classes_in_mean),
            "per_class_AP": {str(c): self.per_class_ap[c] for c in range(NUM_CLASSES)},
            "num_gt_instances_per_class": {str(c): self.num_gt[c] for c in range(NUM_CLASSES)},
            "num_detections_counted_per_class": {str(c): self.num_detections[c] for c in range(NUM_CLASSES)},
            "num_true_positives_per_class": {str(c): self.num_tp[c] for c in range(NUM_CLASSES)},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A printable per-class table: id, name, AP (``-`` without GT), #GT, #detections, #TP."""
        width = max(len(n) for n in CLASS_NAMES)
        lines = [f"{'id':>2}  {'class':<{width}}  {'AP':>8}  {'#GT':>6}  {'#det':>7}  {'#TP':>6}"]
        for c in range(NUM_CLASSES):
            ap = self.per_class_ap[c]
            ap_text = "-" if ap is None else f"{ap:.6f}"
            lines.append(
                f"{c:>2}  {CLASS_NAMES[c]:<{width}}  {ap_text:>8}  {self.num_gt[c]:>6}  {self.num_detections[c]:>7}  {self.num_tp[c]:>6}"
            )
        lines.append(
            f"mAP ({self.iou} IoU >= {self.threshold:g}, {len(self.classes_in_mean)} classes, "
            f"{self.num_images} images): {self.map:.6f}"
        )
        return "\n".join(lines)


#: A submission row may claim at most this many times the pixels of its GT image (box mode).
MAX_SIZE_RATIO = 64


def detection_average_precision(tp: np.ndarray, num_gt: int) -> float | None:
    """VOC "all points" AP of detections already sorted by confidence (highest first).

    Parameters
    ----------
    tp : array of bool
        True positive flag of each detection, in confidence order.
    num_gt : int
        Number of GT instances of the class.

    Returns
    -------
    float or None
        None when ``num_gt == 0``; 0 when there is GT but no detection.

    Examples
    --------
    >>> detection_average_precision(np.array([True, False, True]), 2)
    0.8333333333333333
    >>> detection_average_precision(np.array([], dtype=bool), 0) is None
    True
    """
    if num_gt == 0:
        return None
    tp = np.asarray(tp, dtype=bool)
    if tp.size == 0:
        return 0.0
    cum_tp = np.cumsum(tp, dtype=np.float64)
    cum_fp = np.cumsum(~tp, dtype=np.float64)
    precision = np.concatenate(([0.0], cum_tp / (cum_tp + cum_fp), [0.0]))
    recall = np.concatenate(([0.0], cum_tp / num_gt, [1.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


# --------------------------------------------------------------------------- truth


@dataclass
class TruthImage:
    """The GT of one image: a label image and the classes of each annotated cell.

    ``cell_ids`` are ascending; ``cell_labels[k]`` holds the class ids of ``cell_ids[k]``.
    """

    label: np.ndarray
    cell_ids: np.ndarray
    cell_labels: list[tuple[int, ...]]

    @property
    def shape(self) -> tuple[int, int]:
        return self.label.shape


def _read_csv(source, name: str, dtypes: dict):
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{name} file {path} does not exist")
    try:
        return pd.read_csv(path, dtype=dtypes, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:  # empty, not UTF-8 (UnicodeDecodeError), malformed
        raise ValueError(f"{name} file {path} cannot be read as CSV: {type(exc).__name__}: {exc}") from None


def load_truth(truth_cells: CsvSource, truth_masks: str | os.PathLike | Mapping[str, np.ndarray]) -> dict[str, TruthImage]:
    """Load GT from a cells table and label images.

    Parameters
    ----------
    truth_cells : DataFrame or path
        ``ImageID,CellID,Labels`` with one row per annotated cell, ``Labels`` like ``4|11``.
    truth_masks : mapping or path to .npz
        ``truth_masks[ImageID]`` is an integer (H, W) label image, value k for ``CellID == k``.

    Returns
    -------
    dict
        ImageID -> :class:`TruthImage`, for the images that have at least one annotated cell.
    """
    cells = _read_csv(truth_cells, "truth_cells", {"ImageID": str, "Labels": str})
    missing = {"ImageID", "CellID", "Labels"} - set(cells.columns)
    if missing:
        raise ValueError(f"truth_cells needs columns ImageID,CellID,Labels; missing {sorted(missing)}")
    npz = None
    if not isinstance(truth_masks, Mapping):
        path = Path(truth_masks)
        if not path.is_file():
            raise FileNotFoundError(f"truth_masks file {path} does not exist")
        npz = np.load(path)
        truth_masks = npz
    try:
        truth: dict[str, TruthImage] = {}
        for image_id, group in cells.groupby("ImageID", sort=False):
            image_id = str(image_id)
            if image_id not in truth_masks:
                raise ValueError(f"truth_masks has no label image for ImageID {image_id} of truth_cells")
            label = np.asarray(truth_masks[image_id])
            if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
                raise ValueError(f"truth mask of {image_id} must be a 2-D integer label image, got {label.dtype} {label.shape}")
            if label.size and label.min() < 0:
                raise ValueError(f"truth mask of {image_id} has negative values; expected 0 = background and cell ids > 0")
            group = group.sort_values("CellID", kind="stable")
            ids = group["CellID"].to_numpy(dtype=np.int64)
            if len(set(ids.tolist())) != len(ids):
                raise ValueError(f"truth_cells lists a CellID twice for image {image_id}")
            labels = [parse_labels(text) for text in group["Labels"]]
            truth[image_id] = TruthImage(label, ids, labels)
    finally:
        if npz is not None:
            npz.close()
    return truth


def load_truth_annotations(path: CsvSource) -> dict[str, TruthImage]:
    """Load GT from the evaluator's ``gt_annotations.csv`` (one row per cell and label, with its Mask).

    Rows that share a Mask string within an image are one cell. Cells are numbered 1.. in order of
    appearance; the masks must not overlap.
    """
    table = _read_csv(path, "truth_annotations", {"ImageID": str, "Mask": str})
    need = {"ImageID", "ImageWidth", "ImageHeight", "LabelName", "Mask"}
    if need - set(table.columns):
        raise ValueError(f"truth_annotations needs columns {sorted(need)}; missing {sorted(need - set(table.columns))}")
    truth: dict[str, TruthImage] = {}
    for image_id, group in table.groupby("ImageID", sort=False):
        height, width = int(group["ImageHeight"].iloc[0]), int(group["ImageWidth"].iloc[0])
        label = np.zeros((height, width), dtype=np.int32)
        cells: dict[str, int] = {}
        labels: dict[int, set] = {}
        for mask_text, label_name in zip(group["Mask"], group["LabelName"]):
            if mask_text not in cells:
                cell = cells[mask_text] = len(cells) + 1
                pixels = decode_mask(mask_text, height, width)
                if np.any(label[pixels]):
                    raise ValueError(f"truth_annotations: cell masks overlap in image {image_id}")
                label[pixels] = cell
            labels.setdefault(cells[mask_text], set()).add(int(label_name))
        ids = np.arange(1, len(cells) + 1)
        truth[str(image_id)] = TruthImage(label, ids, [tuple(sorted(labels[i])) for i in ids])
    return truth


# --------------------------------------------------------------------------- submission


def parse_prediction_string(text: str) -> list[tuple[int, float, str]]:
    """Split a PredictionString into ``(label, confidence, EncodedMask)`` triples, or raise.

    Tokenised by :func:`hpa_kernel.submission.split_prediction_string` (the validator's tokeniser):
    tokens are separated by single spaces, as the evaluator's ``split(" ")``; an empty string has
    no triples. Labels and confidences are read by ``parse_label`` and ``parse_confidence``.

    >>> parse_prediction_string("3 0.5 eNoLCAgIMAEABJkBdQ== 18 1 eNoLCAgIMAEABJkBdQ==")
    [(3, 0.5, 'eNoLCAgIMAEABJkBdQ=='), (18, 1.0, 'eNoLCAgIMAEABJkBdQ==')]

    Raises
    ------
    ValueError
        The first format problem of the string, or ``triple k: ...`` for a bad label or confidence.
    """
    if text is None or text == "" or (isinstance(text, float) and np.isnan(text)):
        return []
    triples, problems = split_prediction_string(str(text))
    if problems:
        raise ValueError(problems[0])
    parsed = []
    for k, (label_text, conf_text, mask) in enumerate(triples):
        try:
            parsed.append((parse_label(label_text), parse_confidence(conf_text), mask))
        except ValueError as exc:
            raise ValueError(f"triple {k}: {exc}") from None
    return parsed


def _read_submission(submission) -> dict[str, tuple[int, int, str]]:
    """ID -> (ImageWidth, ImageHeight, PredictionString), read by the one reader of the format."""
    frame = read_sample_submission(submission, "submission", require_predictions=True)
    return {
        image_id: (width, height, text)
        for image_id, width, height, text in zip(
            frame["ID"], frame["ImageWidth"].tolist(), frame["ImageHeight"].tolist(), frame["PredictionString"]
        )
    }


# --------------------------------------------------------------------------- matching


@dataclass
class _Detections:
    labels: np.ndarray  # (n,)
    scores: np.ndarray  # (n,)
    boxes: np.ndarray  # (n, 4) normalised y0, x0, y1, x1
    areas: np.ndarray  # (n,)
    inter: np.ndarray | None  # (n, max_cell + 1) pixel intersections with the truth label image


def _runs_box(starts: np.ndarray, ends: np.ndarray, height: int) -> tuple[int, int, int, int]:
    """Tight box (row0, col0, row1, col1), ends exclusive, of non-empty column-major runs."""
    first_col = starts // height
    last_col = (ends - 1) // height
    within = first_col == last_col
    if within.all():
        row0 = int((starts % height).min())
        row1 = int(((ends - 1) % height).max()) + 1
    else:  # a run crossing a column boundary reaches both the last and the first row
        row0, row1 = 0, height
    return row0, int(first_col[0]), row1, int(last_col[-1]) + 1


def _run_pixels(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    lengths = ends - starts
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))


def _image_detections(image_id, triples, height, width, classes, gt: TruthImage, mode) -> _Detections:
    """Decode the relevant triples of one image (each distinct mask string once).

    In mask mode, ``inter[d, k]`` counts the pixels of detection d in truth cell k, looked up in the
    truth label image at the detection's own pixels only.
    """
    cache: dict[str, tuple] = {}
    labels, scores, boxes, areas, inters = [], [], [], [], []
    n_cells = int(gt.cell_ids.max()) + 1 if mode == "mask" else 0
    for k, (label, score, text) in enumerate(triples):
        if label not in classes:
            continue
        if text not in cache:
            try:
                starts, ends = decode_runs(text, height, width)
            except ValueError as exc:
                raise ValueError(f"submission image {image_id}, triple {k}: {exc}") from None
            area = int((ends - starts).sum())
            if area == 0:
                cache[text] = None
            else:
                r0, c0, r1, c1 = _runs_box(starts, ends, height)
                box = np.array([r0 / height, c0 / width, r1 / height, c1 / width])
                inter = None
                if mode == "mask":
                    cols, rows = np.divmod(_run_pixels(starts, ends), height)
                    inter = np.bincount(gt.label[rows, cols], minlength=n_cells)[:n_cells]
                cache[text] = (box, area, inter)
        entry = cache[text]
        if entry is None:
            continue
        labels.append(label)
        scores.append(score)
        boxes.append(entry[0])
        areas.append(entry[1])
        inters.append(entry[2])
    n = len(labels)
    return _Detections(
        labels=np.array(labels, dtype=np.int64),
        scores=np.array(scores, dtype=np.float64),
        boxes=np.array(boxes, dtype=np.float64).reshape(n, 4),
        areas=np.array(areas, dtype=np.int64),
        inter=np.array(inters, dtype=np.int64).reshape(n, n_cells) if mode == "mask" else None,
    )


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (y0, x0, y1, x1): (n, 4) x (m, 4) -> (n, m)."""
    height = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    width = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = height * width
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _match(iou: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy matching of detections (rows, by confidence) to GT (columns) with the argmax rule."""
    tp = np.zeros(iou.shape[0], dtype=bool)
    if iou.shape[1] == 0:
        return tp
    matched = np.zeros(iou.shape[1], dtype=bool)
    best = np.argmax(iou, axis=1)
    for i, j in enumerate(best):
        if iou[i, j] >= threshold and not matched[j]:
            tp[i] = True
            matched[j] = True
    return tp


# --------------------------------------------------------------------------- scoring


def score_submission(
    submission: CsvSource,
    truth_cells: CsvSource | None = None,
    truth_masks: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    *,
    truth: Mapping[str, TruthImage] | None = None,
    truth_annotations: CsvSource | None = None,
    iou: str = "box",
    threshold: float = IOU_THRESHOLD,
) -> MetricResult:
    """Score a submission against the GT with the competition's mAP.

    Parameters
    ----------
    submission : DataFrame or path
        ``ID,ImageWidth,ImageHeight,PredictionString``.
    truth_cells, truth_masks
        GT as a cells table (``ImageID,CellID,Labels``) and label images (mapping or ``.npz``);
        see :func:`load_truth`.
    truth : mapping, optional
        Already loaded GT (ImageID -> :class:`TruthImage`), instead of the two above.
    truth_annotations : DataFrame or path, optional
        GT as the evaluator's ``gt_annotations.csv``, instead of the two above.
    iou : {"box", "mask"}
        ``"box"``: IoU of tight bounding boxes (the official evaluator); ``"mask"``: IoU of pixels.
    threshold : float
        Minimum IoU of a true positive (inclusive).

    Returns
    -------
    MetricResult

    Raises
    ------
    ValueError
        For a bad mode or threshold, GT without any annotated cell, a malformed submission row of
        an evaluated image (the message names the image), or, in mask mode, a submission size that
        differs from the GT label image.

    Examples
    --------
    >>> import pandas as pd
    >>> from hpa_kernel.submission.rle import encode_mask
    >>> label = np.zeros((8, 8), dtype=np.int32); label[1:4, 1:4] = 1; label[5:8, 4:8] = 2
    >>> truth = {"a": TruthImage(label, np.array([1, 2]), [(0,), (0, 5)])}
    >>> row = f"0 0.9 {encode_mask(label == 1)} 5 0.8 {encode_mask(label == 1)}"
    >>> sub = pd.DataFrame({"ID": ["a"], "ImageWidth": [8], "ImageHeight": [8], "PredictionString": [row]})
    >>> result = score_submission(sub, truth=truth)
    >>> result.per_class_ap[0], result.per_class_ap[5], result.per_class_ap[1] is None
    (0.5, 0.0, True)
    """
    if iou not in IOU_MODES:
        raise ValueError(f"iou must be one of {IOU_MODES}, got {iou!r}")
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    truth = _resolve_truth(truth_cells, truth_masks, truth, truth_annotations)
    rows = _read_submission(submission)
    images = [_score_image(image_id, gt, rows.get(image_id), iou, threshold)
              for image_id, gt in truth.items() if gt.cell_ids.size]
    return _result(images, iou, float(threshold))


def _resolve_truth(truth_cells, truth_masks, truth, truth_annotations) -> Mapping[str, TruthImage]:
    """The GT from exactly one of its three forms (see :func:`score_submission`)."""
    sources = sum(x is not None for x in (truth, truth_annotations)) + (truth_cells is not None or truth_masks is not None)
    if sources != 1:
        raise ValueError("give the GT exactly one way: truth_cells and truth_masks, truth=, or truth_annotations=")
    if truth is not None:
        return truth
    if truth_annotations is not None:
        return load_truth_annotations(truth_annotations)
    if truth_cells is None or truth_masks is None:
        raise ValueError("truth_cells and truth_masks must be given together")
    return load_truth(truth_cells, truth_masks)


@dataclass
class _ImageScore:
    """One evaluated image: GT cells per class, and per class the detections' scores and TP flags."""

    num_gt: np.ndarray  # (NUM_CLASSES,) int
    detections: dict[int, tuple[np.ndarray, np.ndarray]]  # class -> (scores, tp flags), by confidence


def _check_row_size(image_id: str, width: int, height: int, gt: TruthImage, iou: str) -> None:
    """Refuse (mask IoU, or an outsized row) or warn about a row whose size differs from its GT."""
    gt_height, gt_width = gt.shape
    if (height, width) == (gt_height, gt_width):
        return
    if iou == "mask":
        raise ValueError(
            f"submission image {image_id} is {width}x{height} (WxH) but its GT mask is {gt_width}x{gt_height}; "
            "mask IoU needs equal sizes"
        )
    if width * height > MAX_SIZE_RATIO * gt_width * gt_height:
        # masks are decoded at the row's size: an outsized claim would let them inflate far
        raise ValueError(
            f"submission image {image_id} is {width}x{height} (WxH), more than {MAX_SIZE_RATIO} times the "
            f"pixels of its GT ({gt_width}x{gt_height}); not decoded"
        )
    logger.warning("submission image %s is %dx%d (WxH) but its GT is %dx%d; boxes are compared normalised",
                   image_id, width, height, gt_width, gt_height)


def _score_image(image_id: str, gt: TruthImage, row: tuple[int, int, str] | None, iou: str, threshold: float) -> _ImageScore:
    """Match one image's detections to its GT cells, class by class (steps 2-5 of the module docstring)."""
    cell_classes = np.zeros((gt.cell_ids.size, NUM_CLASSES), dtype=bool)
    for k, labels in enumerate(gt.cell_labels):
        cell_classes[k, list(labels)] = True
    score = _ImageScore(cell_classes.sum(axis=0).astype(np.int64), {})
    classes = set(np.flatnonzero(cell_classes.any(axis=0)).tolist())
    gt_boxes, gt_slices = _truth_boxes(image_id, gt)
    if row is None or row[2] == "":
        return score
    width, height, text = row
    _check_row_size(image_id, width, height, gt, iou)
    try:
        triples = parse_prediction_string(text)
    except ValueError as exc:
        raise ValueError(f"submission image {image_id}: {exc}") from None
    gt_areas = None
    if iou == "mask":
        gt_areas = np.array([np.count_nonzero(gt.label[sl] == cell) for sl, cell in zip(gt_slices, gt.cell_ids)])
    det = _image_detections(image_id, triples, height, width, classes, gt, iou)
    for c in sorted(classes):
        picked = np.flatnonzero(det.labels == c)
        if not picked.size:
            continue
        picked = picked[np.argsort(-det.scores[picked], kind="stable")]
        cells = np.flatnonzero(cell_classes[:, c])
        if iou == "box":
            overlap = _box_iou(det.boxes[picked], gt_boxes[cells])
        else:
            inter = det.inter[np.ix_(picked, gt.cell_ids[cells])].astype(np.float64)
            union = det.areas[picked][:, None] + gt_areas[cells][None, :] - inter
            overlap = inter / union
        score.detections[c] = (det.scores[picked], _match(overlap, threshold))
    return score


def _result(images: list[_ImageScore], iou: str, threshold: float) -> MetricResult:
    """Per-class AP over all images (step 6), and the mean over the classes with GT."""
    num_gt = np.zeros(NUM_CLASSES, dtype=np.int64)
    for image in images:
        num_gt += image.num_gt
    if num_gt.sum() == 0:
        raise ValueError("the GT has no annotated cell: nothing to evaluate")
    per_class_ap: dict[int, float | None] = {}
    num_det: dict[int, int] = {}
    num_tp: dict[int, int] = {}
    for c in range(NUM_CLASSES):
        found = [image.detections[c] for image in images if c in image.detections]
        s = np.concatenate([d[0] for d in found]) if found else np.zeros(0)
        f = np.concatenate([d[1] for d in found]) if found else np.zeros(0, dtype=bool)
        order = np.argsort(-s, kind="stable")
        per_class_ap[c] = detection_average_precision(f[order], int(num_gt[c]))
        num_det[c] = int(s.size)
        num_tp[c] = int(f.sum())
    in_mean = [c for c in range(NUM_CLASSES) if per_class_ap[c] is not None]
    return MetricResult(
        map=float(np.mean([per_class_ap[c] for c in in_mean])),
        per_class_ap=per_class_ap,
        num_gt={c: int(num_gt[c]) for c in range(NUM_CLASSES)},
        num_detections=num_det,
        num_tp=num_tp,
        iou=iou,
        threshold=threshold,
        num_images=len(images),
        classes_in_mean=in_mean,
    )


def _truth_boxes(image_id: str, gt: TruthImage) -> tuple[np.ndarray, list]:
    """Normalised tight boxes (y0, x0, y1, x1) and bounding slices of the GT cells, in ``gt.cell_ids`` order."""
    from scipy import ndimage

    height, width = gt.shape
    slices = ndimage.find_objects(gt.label)
    boxes = np.zeros((gt.cell_ids.size, 4))
    cell_slices = []
    for k, cell in enumerate(gt.cell_ids):
        if cell < 1 or cell > len(slices) or slices[cell - 1] is None:
            raise ValueError(f"GT cell {cell} of image {image_id} has no pixel in its label image")
        rows, cols = slices[cell - 1]
        boxes[k] = (rows.start / height, cols.start / width, rows.stop / height, cols.stop / width)
        cell_slices.append((rows, cols))
    return boxes, cell_slices
