"""Golden end-to-end submission: every (mask, class, confidence) triple of ``submission.csv`` checked.

A small competition is built pixel by pixel: square cells of known masks, each with its own constant
green level, nuclei shaped so that each of the team's cleaners catches a known cell. The segmenter
returns those masks. The classifier checkpoints are real weight files (timm ``test_resnet``) that
the kit loads through ``weights_manifest.json``; their weights are set so that, on a crop of one
constant colour (a square cell fills its own crop), the logits are ``w * G + b`` with ``G`` the
cell's green level in [0, 1] and ``w``, ``b`` chosen here per checkpoint.

The expected confidences are computed in this file with numpy, straight from the team's rules
(``../shared/reference/recipe/README.md``, inference table; ``HPAsubmission.ipynb`` In[11],
In[21]-In[25]) for ``milimed2021``, and from the kit's documented rules (README "Recipes",
``hpa_kernel/recipe.py``) for ``kit2025``. No kit function computes an expectation; the masks are
decoded with pycocotools directly.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
coco_mask = pytest.importorskip("pycocotools.mask")

from hpa_kernel.segmentation.base import BaseSegmenter, SegmentationMaps  # noqa: E402
from hpa_kernel.submission import SubmitConfig, run_submission  # noqa: E402

# ----------------------------------------------------------------------------- what a blank image gets
# The row of an image without cells. milimed2021: the team kept the sample row (In[25]); on Kaggle
# that is "0 1 eNoLCAgIMAEABJkBdQ==", class 0 at confidence 1 on an empty 2048 x 2048 mask, which does
# not decode at other sizes, so the kit writes the same placeholder at the image's own size. kit2025:
# an empty PredictionString.
TEAM_SAMPLE_ROW = "0 1 eNoLCAgIMAEABJkBdQ=="


def empty_mask_row(height: int, width: int) -> str:
    """``0 1 <empty H x W mask>``, encoded here with pycocotools + zlib (level 9) + base64."""
    counts = coco_mask.encode(np.asfortranarray(np.zeros((height, width), np.uint8)))["counts"]
    return "0 1 " + base64.b64encode(zlib.compress(counts, 9)).decode()


def no_cells_row(recipe: str, height: int, width: int) -> str:
    if recipe == "kit2025":
        return ""
    return TEAM_SAMPLE_ROW if (height, width) == (2048, 2048) else empty_mask_row(height, width)


# ----------------------------------------------------------------------------- the team's numbers
GROUP_WEIGHTS = (0.2, 0.4, 0.4)  # groups "old", "resize + pad", "resize" (In[21]-In[24])
CHECKPOINT_WEIGHTS = ((1.0,), (0.5, 0.5), (0.2, 0.3, 0.3, 0.2))
BLEND_CELL, BLEND_IMAGE = 0.7, 0.3
NOT_BLENDED = (11, 18)
GREEN = 1  # channel index of green in R, G, B, Y
ARCH, INPUT_SIZE = "test_resnet", 32

# Stains (uint8) of an ordinary cell; the nucleus carries blue, the rest of the cell none.
RED, YELLOW, BLUE = 150, 120, 200


# ----------------------------------------------------------------------------- the scene


@dataclass(frozen=True)
class Cell:
    """One square cell: its box, green level, nucleus shape and stains."""

    name: str
    y0: int
    x0: int
    side: int = 32
    green: int = 100
    nucleus: str = "disc"  # disc | flat | sliver | small
    red: int = RED
    yellow: int = YELLOW
    blue: int = BLUE


# golden_a: 9 cells. A1-A3 clean; B a nucleus with a flat top edge (team: 0 < ratio < 0.3);
# C a one-row nucleus on the image's top edge (team: x0.001 twice; kit: cut ~0.98 -> 0.05);
# D a nucleus without blue (team: x0.01); E no yellow (team: blue x yellow outlier; kit: robust z);
# F a tiny cell (team: its blue x yellow *sum* is tiny, its means are not); G faint red (team: red outlier).
SCENES = {
    "golden_a": ((96, 208), (
        Cell("A1", 8, 8, green=40), Cell("A2", 8, 48, green=65), Cell("A3", 8, 88, green=90),
        Cell("C", 0, 128, green=115, nucleus="sliver"), Cell("B", 8, 168, green=140, nucleus="flat"),
        Cell("D", 56, 8, green=165, blue=0), Cell("E", 56, 48, green=190, yellow=0),
        Cell("F", 56, 88, side=8, green=215, nucleus="small"), Cell("G", 56, 128, green=240, red=5),
    )),
    # no cell with v == 1: the team's code does not blend
    "golden_b": ((64, 96), (Cell("B2", 16, 8, green=30, nucleus="flat"), Cell("D2", 16, 56, green=200, blue=0))),
    "golden_blank": ((48, 48), ()),
}


def _nucleus(cell: Cell) -> np.ndarray:
    """The nucleus mask inside the cell's square."""
    side = cell.side
    yy, xx = np.mgrid[0:side, 0:side]
    if cell.nucleus == "sliver":  # one row, 9 pixels, on the cell's (and image's) top row
        mask = np.zeros((side, side), bool)
        mask[0, 12:21] = True
        return mask
    r = 2 if cell.nucleus == "small" else 8
    c = side // 2 if cell.nucleus != "small" else 4
    mask = (yy - c) ** 2 + (xx - c) ** 2 <= r * r
    if cell.nucleus == "flat":  # cut at 4 rows above the centre: its top row is a 13-pixel chord of 17 columns
        mask &= yy >= c - 4
    return mask


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (H, W, 4) uint8
    nuclei: np.ndarray
    cells: np.ndarray
    names: tuple[str, ...]
    greens: np.ndarray  # per cell (label order), in [0, 1]


def build_scene(shape, cells) -> Scene:
    image = np.zeros((*shape, 4), np.uint8)
    nuclei = np.zeros(shape, np.int32)
    labels = np.zeros(shape, np.int32)
    for k, cell in enumerate(cells, start=1):
        sl = np.s_[cell.y0 : cell.y0 + cell.side, cell.x0 : cell.x0 + cell.side]
        nucleus = _nucleus(cell)
        labels[sl] = k
        nuclei[sl][nucleus] = k
        image[sl + (0,)] = cell.red
        image[sl + (GREEN,)] = cell.green
        image[sl + (3,)] = cell.yellow
        image[sl + (2,)] = np.where(nucleus, cell.blue, 0)
    return Scene(image, nuclei, labels, tuple(c.name for c in cells), np.array([c.green / 255.0 for c in cells]))


class KnownMasks(BaseSegmenter):
    """Returns the scene's own masks for each image (recognised by its pixels)."""

    name = "known-masks"

    def __init__(self, scenes: dict[str, Scene]):
        self.masks = {s.image.tobytes(): (s.nuclei, s.cells) for s in scenes.values()}

    def predict(self, images):
        return [SegmentationMaps(*self.masks[np.ascontiguousarray(im).tobytes()]) for im in images]

    @staticmethod
    def postprocess_fn(maps):
        return maps.nuclei.astype(np.int32), maps.cell.astype(np.int32)


def write_competition(root: Path, scenes: dict[str, Scene]) -> Path:
    from hpa_kernel._cv2 import cv2

    test = root / "test"
    test.mkdir(parents=True)
    rows = []
    for image_id, s in scenes.items():
        for k, channel in enumerate(("red", "green", "blue", "yellow")):
            assert cv2.imwrite(str(test / f"{image_id}_{channel}.png"), s.image[..., k])
        rows.append({"ID": image_id, "ImageWidth": s.image.shape[1], "ImageHeight": s.image.shape[0], "PredictionString": "0 1 eNoLCAgIMAEABJkBdQ=="})
    pd.DataFrame(rows).to_csv(root / "sample_submission.csv", index=False)
    return root


# ----------------------------------------------------------------------------- networks with known outputs


def known_network(w: np.ndarray, b: np.ndarray):
    """A timm ``test_resnet`` whose logits on a constant crop are ``w * green + b``.

    Every convolution keeps only its centre tap from channel 0 to channel 0 (the stem's first from
    green), so that no zero padding reaches the result; every BatchNorm is the identity; the last
    BatchNorm of each residual branch is 0, so each block passes its shortcut on. The pooled
    feature 0 is then the crop's green level and the others are 0; the head reads feature 0.
    """
    from timm.models.resnet import BasicBlock, Bottleneck

    model = timm.create_model(ARCH, pretrained=False, in_chans=4, num_classes=len(w))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                m.weight[0, GREEN if m.in_channels == 4 else 0, m.kernel_size[0] // 2, m.kernel_size[1] // 2] = 1.0
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
        for m in model.modules():
            if isinstance(m, BasicBlock):
                m.bn2.weight.zero_()
            elif isinstance(m, Bottleneck):
                m.bn3.weight.zero_()
        model.fc.weight.zero_()
        model.fc.weight[:, 0] = torch.as_tensor(w, dtype=torch.float32)
        model.fc.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    return model.eval()


def head_parameters(num_outputs: int, seed: int):
    """Per checkpoint (group by group), the head's ``(w, b)``: different for every checkpoint."""
    rng = np.random.default_rng(seed)
    out = []
    for sizes in CHECKPOINT_WEIGHTS:
        group = []
        for _ in sizes:
            w = rng.uniform(-6.0, 6.0, num_outputs).astype(np.float32)
            b = rng.uniform(-3.0, 2.0, num_outputs).astype(np.float32)
            group.append((w, b))
        out.append(group)
    return out


def write_weights(folder: Path, recipe: str, heads) -> Path:
    """Checkpoints (``.pth`` + ``.json``) and a pinned ``weights_manifest.json`` in the team's layout."""
    import hashlib

    folder.mkdir(parents=True)
    groups = []
    for gi, (group_weight, ck_weights, group) in enumerate(zip(GROUP_WEIGHTS, CHECKPOINT_WEIGHTS, heads, strict=True), start=1):
        entries = []
        for k, (ck_weight, (w, b)) in enumerate(zip(ck_weights, group, strict=True)):
            name = f"g{gi}_m{k}.pth"
            state = {n: t.detach().clone() for n, t in known_network(w, b).state_dict().items()}
            torch.save(state, folder / name)
            config = {"arch": ARCH, "in_chans": 4, "num_classes": len(w), "input_size": INPUT_SIZE,
                      "channels": ["red", "green", "blue", "yellow"], "mean": [0.0] * 4, "std": [1.0] * 4,
                      "group": gi, "recipe": recipe}
            (folder / name).with_suffix(".json").write_text(json.dumps(config))
            entry = {"file": name, "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
            if len(ck_weights) > 1:
                entry["weight"] = ck_weight
            entries.append(entry)
        groups.append({"name": f"g{gi}", "weight": group_weight, "checkpoints": entries})
    manifest = {
        "format": 1,
        "segmentation": {"nuclei": {"file": "dpn_unet_nuclei_v1.pth", "sha256": None},
                         "cell": {"file": "dpn_unet_cell_3ch_v1.pth", "sha256": None}},
        "ensemble": {"groups": groups},
    }
    (folder / "weights_manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


# ----------------------------------------------------------------------------- the expectation (numpy only)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ensemble_probs(greens: np.ndarray, heads) -> np.ndarray:
    """Weighted means of sigmoid probabilities: within groups, then across (In[21]-In[24])."""
    total = 0.0
    for group_weight, ck_weights, group in zip(GROUP_WEIGHTS, CHECKPOINT_WEIGHTS, heads, strict=True):
        group_p = sum(cw * sigmoid(greens[:, None] * w.astype(np.float64)[None, :] + b.astype(np.float64)[None, :])
                      for cw, (w, b) in zip(ck_weights, group, strict=True))
        total = total + group_weight * group_p
    return total


def team_multiplier(ratio: float) -> float:
    if ratio > 0.3:
        return 1.0
    if ratio > 0.01:
        return (ratio * 3.33) ** 0.1
    return 0.001


def team_cell_values(s: Scene) -> np.ndarray:
    """``no_nuclei_and_border_cleaner`` then ``no_blue_yellow_red_cleaner`` (In[11]) on the scene's pixels."""
    red, blue, yellow = (s.image[..., c].astype(np.float64) / 255.0 for c in (0, 2, 3))
    n = int(s.cells.max())
    values = np.ones(n)
    for i in range(n):
        nucleus = s.nuclei == i + 1
        if blue[nucleus].sum() == 0:
            values[i] *= 0.01
            continue
        rows, cols = np.nonzero(nucleus)
        box = nucleus[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        lr, ud = box.shape
        up, down, left, right = box[0].sum(), box[-1].sum(), box[:, 0].sum(), box[:, -1].sum()
        values[i] *= team_multiplier((ud - max(up, down)) / ud) * team_multiplier((lr - max(left, right)) / lr)
    candidates = values > 0.01
    red_sums = np.array([red[s.cells == i + 1].sum() for i in range(n)])
    products = np.array([blue[s.cells == i + 1].sum() * yellow[s.cells == i + 1].sum() for i in range(n)])
    outlier = candidates & (
        (red_sums < 0.077 * red_sums[candidates].mean()) | (products < 0.05 * products[candidates].mean())
    )
    return np.where(outlier, values * 0.001, values)


def expected_milimed(s: Scene, heads) -> np.ndarray:
    """(N, 19): Negative = 1 - max; every class x v; 0.7 (v p) + 0.3 mean(p over v == 1), not 11, 18 (In[25])."""
    p = ensemble_probs(s.greens, heads)
    q = np.concatenate([p, 1.0 - p.max(axis=1, keepdims=True)], axis=1)
    v = team_cell_values(s)
    penalised = q * v[:, None]
    clean = v == 1.0
    out = penalised.copy()
    if clean.any():
        image_term = penalised[clean].mean(axis=0)
        blended = [c for c in range(19) if c not in NOT_BLENDED]
        out[:, blended] = BLEND_CELL * penalised[:, blended] + BLEND_IMAGE * image_term[blended]
    return out


def kit_cut(s: Scene, i: int) -> float:
    """The kit's nucleus cut for this scene's nuclei: 0 off the border; the one-row nucleus on the
    top edge gets the circle of its chord (9) and depth (1), the free outline being empty."""
    rows, cols = np.nonzero(s.nuclei == i + 1)
    h, w = s.cells.shape
    if rows.min() > 0 and cols.min() > 0 and rows.max() < h - 1 and cols.max() < w - 1:
        return 0.0
    assert rows.max() == 0, "only the one-row nucleus on the top edge touches the border"
    chord, depth = float(cols.size), 1.0
    r = ((chord / 2) ** 2 + depth**2) / (2 * depth)
    d = depth - r
    return (r * r * math.acos(d / r) - d * math.sqrt(r * r - d * d)) / (math.pi * r * r)


def kit_outliers(s: Scene) -> np.ndarray:
    """README "Recipes" / heuristics doc: leave-one-out robust z (median, 1.4826 MAD floored at 0.1)
    of log(red mean), log(blue x yellow mean), log(yellow mean) (+1e-4) and log(area + 1), with at
    least 5 other cells; outlier when the 2nd largest |z| > 6."""
    n = int(s.cells.max())
    img = s.image.astype(np.float64) / 255.0
    feats = np.zeros((n, 4))
    for i in range(n):
        px = img[s.cells == i + 1]
        feats[i] = (np.log(px[:, 0].mean() + 1e-4), np.log((px[:, 2] * px[:, 3]).mean() + 1e-4),
                    np.log(px[:, 3].mean() + 1e-4), np.log(px.shape[0] + 1.0))
    z = np.zeros((n, 4))
    if n - 1 >= 5:
        for i in range(n):
            others = np.delete(feats, i, axis=0)
            med = np.median(others, axis=0)
            mad = np.maximum(1.4826 * np.median(np.abs(others - med), axis=0), 0.1)
            z[i] = np.abs(feats[i] - med) / mad
    return np.sort(z, axis=1)[:, -2] > 6.0


def expected_kit2025(s: Scene, heads) -> np.ndarray:
    """(N, 19): learned Negative; v = clip(1 - cut, 0.05, 1) x (0.2 if outlier);
    (0.7 p + 0.3 mean(p over the other valid cells, own p if none)) x v, every class."""
    p = ensemble_probs(s.greens, heads)
    n = p.shape[0]
    cut = np.array([kit_cut(s, i) for i in range(n)])
    outlier = kit_outliers(s)
    v = np.clip(1.0 - cut, 0.05, 1.0) * np.where(outlier, 0.2, 1.0)
    valid = ~((cut > 0.1) | outlier)
    out = np.empty_like(p)
    for i in range(n):
        others = valid.copy()
        others[i] = False
        image_term = p[others].mean(axis=0) if others.any() else p[i]
        out[i] = (BLEND_CELL * p[i] + BLEND_IMAGE * image_term) * v[i]
    return out


# ----------------------------------------------------------------------------- reading the submission


def decode(encoded: str, height: int, width: int) -> np.ndarray:
    counts = zlib.decompress(base64.b64decode(encoded))
    return coco_mask.decode({"size": [height, width], "counts": counts}).astype(bool)


def read_triples(path: Path, scenes: dict[str, Scene]) -> dict[str, dict[tuple[int, int], float]]:
    """``{ID: {(cell index, class): confidence}}``; every mask must be exactly one of the scene's cells."""
    frame = pd.read_csv(path, dtype={"ID": str, "PredictionString": str}, keep_default_na=False)
    out = {}
    for image_id, text in zip(frame["ID"], frame["PredictionString"], strict=True):
        s = scenes[image_id]
        if not s.names:  # a blank image: its row is compared as text (no_cells_row)
            out[image_id] = ({}, text)
            continue
        tokens = text.split(" ") if text else []
        assert len(tokens) % 3 == 0, f"{image_id}: {len(tokens)} tokens"
        masks = {}
        got = {}
        for k in range(0, len(tokens), 3):
            label, confidence, encoded = int(tokens[k]), float(tokens[k + 1]), tokens[k + 2]
            if encoded not in masks:
                mask = decode(encoded, *s.cells.shape)
                hits = [i for i in range(len(s.names)) if np.array_equal(mask, s.cells == i + 1)]
                assert len(hits) == 1, f"{image_id}: a mask that is none of the cells ({int(mask.sum())} pixels)"
                masks[encoded] = hits[0]
            key = (masks[encoded], label)
            assert key not in got, f"{image_id}: cell {s.names[key[0]]} class {label} twice"
            got[key] = confidence
        out[image_id] = (got, text)
    return out


# ----------------------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def scenes():
    return {image_id: build_scene(shape, cells) for image_id, (shape, cells) in SCENES.items()}


@pytest.fixture(scope="module")
def competition(scenes, tmp_path_factory):
    return write_competition(tmp_path_factory.mktemp("golden_competition"), scenes)


def _run(recipe, num_outputs, seed, scenes, competition, tmp_path):
    torch.manual_seed(0)
    heads = head_parameters(num_outputs, seed)
    weights = write_weights(tmp_path / "weights", recipe, heads)
    config = SubmitConfig(
        out=tmp_path / "submission.csv", data=competition, weights=weights, budget_s=3600.0, device="cpu",
        workers=0, progress=False, torch_threads=1, recipe=recipe,
    )
    # a clock that never advances: the planner always has the whole budget (every checkpoint, the
    # recipe's TTA) and no deadline timer runs
    report = run_submission(config, clock=lambda: 0.0, segmenter=KnownMasks(scenes))
    assert report.problems == [], report.problems
    assert report.n_predicted == len(scenes) and report.n_fallback == 0
    return heads, read_triples(report.path, scenes)


def _compare(image_id, scene, expected, got):
    names = scene.names
    assert set(got) == {(i, c) for i in range(len(names)) for c in range(19)}, f"{image_id}: not every cell x class"
    bad = []
    for (i, c), value in sorted(got.items()):
        want = expected[i, c]
        if not math.isclose(value, want, rel_tol=1e-5, abs_tol=1e-6):
            bad.append(f"cell {names[i]} class {c}: submitted {value!r}, expected {want:.9f}")
    assert not bad, f"{image_id}: {len(bad)} of {len(got)} confidences differ:\n" + "\n".join(bad[:25])


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("recipe", ["milimed2021", "kit2025"])
def test_golden_submission(recipe, scenes, competition, tmp_path):
    num_outputs, expect = {"milimed2021": (18, expected_milimed), "kit2025": (19, expected_kit2025)}[recipe]
    heads, rows = _run(recipe, num_outputs, 2021 if recipe == "milimed2021" else 2025, scenes, competition, tmp_path)
    for image_id, s in scenes.items():
        got, text = rows[image_id]
        if not s.names:
            assert text == no_cells_row(recipe, *s.cells.shape), f"{image_id} (no cells): {text!r}"
            continue
        _compare(image_id, s, expect(s, heads), got)


# ----------------------------------------------------------------------------- the design holds


def test_known_network_outputs_w_green_plus_b():
    """The fake network's promise, checked in torch alone: constant crops give ``w * G + b``."""
    rng = np.random.default_rng(0)
    w, b = rng.uniform(-6, 6, 18).astype(np.float32), rng.uniform(-3, 2, 18).astype(np.float32)
    model = known_network(w, b)
    x = torch.rand(3, 4, INPUT_SIZE, INPUT_SIZE)
    x[:, GREEN] = torch.tensor([0.1, 0.5, 0.9])[:, None, None]
    with torch.no_grad():
        logits = model(x).numpy()
    np.testing.assert_allclose(logits, np.array([0.1, 0.5, 0.9])[:, None] * w + b, rtol=0, atol=1e-5)


def test_scene_exercises_every_rule(scenes):
    """Each cleaner, the blend exceptions and the no-blend image matter in the expectation."""
    a, b = scenes["golden_a"], scenes["golden_b"]
    v = dict(zip(a.names, team_cell_values(a), strict=True))
    assert v["A1"] == v["A2"] == v["A3"] == 1.0
    assert 0.9 < v["B"] < 1.0  # flat edge: (3.33 * 4/17) ** 0.1
    assert v["C"] == pytest.approx(1e-6)  # a one-row nucleus: 0.001 twice
    assert v["D"] == pytest.approx(0.01)  # no blue in the nucleus
    assert v["E"] == v["F"] == v["G"] == pytest.approx(0.001)  # outliers: blue x yellow, its sum, red
    # F is an outlier by its sums only: by per-pixel means it would pass (the bug issue 21 names)
    f = a.names.index("F") + 1
    means = [a.image[a.cells == f][:, c].mean() for c in (0, 2, 3)]
    others = [a.image[a.cells == 1][:, c].mean() for c in (0, 2, 3)]
    assert means[0] == others[0] and means[1] * means[2] > 0.05 * others[1] * others[2]
    assert (team_cell_values(b) < 1.0).all()  # golden_b has no clean cell: no blend
    outliers = dict(zip(a.names, kit_outliers(a), strict=True))
    assert [n for n, o in outliers.items() if o] == ["E"]
    assert kit_cut(a, a.names.index("C")) > 0.95  # the kit's clipped border penalty 0.05
    # the repository's manifest has the team's weights that this test expects
    repo = json.loads((Path(__file__).resolve().parents[1] / "weights_manifest.json").read_text())
    groups = repo["ensemble"]["groups"]
    assert tuple(g["weight"] for g in groups) == GROUP_WEIGHTS
    assert tuple(tuple(c.get("weight", 1.0) for c in g["checkpoints"]) for g in groups) == CHECKPOINT_WEIGHTS


def test_the_team_sample_row_is_an_empty_2048_mask():
    """The independent encoder above gives the team's constant at 2048 x 2048 (so no_cells_row is their rule)."""
    assert empty_mask_row(2048, 2048) == TEAM_SAMPLE_ROW
    assert empty_mask_row(48, 48) != TEAM_SAMPLE_ROW
