"""An independent learner on the demo's data: logistic regression on hand features of the 64-px crops.

Measures whether the synthetic classes are visible at the classifier's input size (benchmarks/RESULTS.md,
"What limits learning on the synthetic data"): 34 features per crop (green intensity statistics in
the cell, nucleus and cytoplasm, Laplacian-of-Gaussian energy at three scales, gradient, structure-tensor
anisotropy, spot count, green's correlation with the other channels, edge ratio, size), squared
terms added, an L2 logistic regression per class (L-BFGS), trained on the truth cells of the train
split with their per-cell labels. Printed: the held-out cell mAP as the metric counts it (class c
ranked over the cells of the test images that have c) and the box/mask mAP of the model on the
classic segmenter's test cells through the default recipe.

    python benchmarks/bench_hand_features.py --out features_out
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np


def crop_features(crops: np.ndarray) -> np.ndarray:
    """(N, 34) hand features of uint8 crops (N, S, S, 4) in R, G, B, Y order."""
    from scipy import ndimage as ndi

    out = []
    for c in crops.astype(np.float32) / 255.0:
        r, g, b, y = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
        cell = (r + b + y + g) > 0.02
        if not cell.any():
            out.append(np.zeros(34))
            continue
        nuc = b > max(0.1, 0.5 * b[cell].max())
        f = []
        for region in (cell, nuc, cell & ~nuc):
            v = g[region] if region.any() else np.zeros(1)
            f += [v.mean(), v.std(), np.percentile(v, 50), np.percentile(v, 90), np.percentile(v, 99), (v > 0.2).mean()]
        gm = g * cell
        for s in (1.0, 2.0, 4.0):
            lap = ndi.gaussian_laplace(gm, s)
            f += [np.abs(lap[cell]).mean(), (-lap[cell]).max()]
        gy, gx = np.gradient(ndi.gaussian_filter(gm, 1.0))
        f.append(np.hypot(gx, gy)[cell].mean())
        jxx, jyy, jxy = (ndi.gaussian_filter(a, 2.0)[cell].mean() for a in (gx * gx, gy * gy, gx * gy))
        f.append(np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy + 1e-9))
        f.append(float(((gm == ndi.maximum_filter(gm, 3)) & (gm > 0.25) & cell).sum()) / cell.sum() * 100)
        for o in (r, b, y):
            ok = cell.sum() > 3 and g[cell].std() > 1e-6 and o[cell].std() > 1e-6
            f.append(np.corrcoef(g[cell], o[cell])[0, 1] if ok else 0.0)
        edge = cell & (ndi.distance_transform_edt(cell) <= 2)
        f.append(g[edge].mean() / (g[cell].mean() + 1e-3) if edge.any() else 0.0)
        f += [cell.mean(), nuc.sum() / cell.sum(), b[nuc].mean() if nuc.any() else 0.0]
        out.append(f)
    return np.nan_to_num(np.array(out, dtype=np.float64))


def fit_logistic(x: np.ndarray, t: np.ndarray, l2: float = 1e-3, max_iter: int = 400):
    """An L2 logistic regression per column of ``t`` on standardised features and their squares; returns predict(x)."""
    import torch

    mu, sd = x.mean(0), x.std(0) + 1e-6

    def design(a):
        z = torch.tensor((a - mu) / sd, dtype=torch.float64)
        return torch.cat([z, z ** 2], 1)

    xs, ts = design(x), torch.tensor(t, dtype=torch.float64)
    w = torch.zeros(xs.shape[1], ts.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(ts.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, ts) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda a: torch.sigmoid(design(a) @ w.detach() + b.detach()).numpy()


def within_image_map(targets: np.ndarray, scores: np.ndarray, images: np.ndarray) -> float:
    """Cell mAP as the metric counts it: class c ranked over the cells of the images that have c."""
    from hpa_kernel.training.metrics import classification_average_precision

    aps = []
    for c in range(scores.shape[1]):
        present = np.isin(images, np.unique(images[targets[:, c] >= 0.5]))
        if present.any():
            aps.append(classification_average_precision(targets[present, c] >= 0.5, scores[present, c]))
    return float(np.mean(aps))


def main(argv=None) -> int:
    from hpa_kernel.cells.builder import read_crop
    from hpa_kernel.demo import make_demo_competition, score_submission, truth_training_cells
    from hpa_kernel.demo_loop import cpu_seconds, segment_test, submit_cells
    from hpa_kernel.training.dataset import build_targets, read_cells_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("features_out"))
    parser.add_argument("--l2", type=float, default=1e-3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    comp = make_demo_competition(args.out / "data")
    data = {}
    for split in ("train", "test"):
        table = read_cells_table(truth_training_cells(comp, args.out / f"truth_{split}", split))
        crops = np.stack([read_crop(p) for p in table["crop_path"]])
        data[split] = (crop_features(crops), build_targets(table)[0][:, :18], table["image_id"].to_numpy())
    t = cpu_seconds()
    predict = fit_logistic(data["train"][0], data["train"][1], args.l2)
    x, targets, images = data["test"]
    print(f"held-out cell mAP (18 classes, {len(targets)} truth cells): {within_image_map(targets, predict(x), images):.3f}")

    class FeatureModel:  # what submit_cells needs of an ensemble
        def predict(self, crops, tta=False, batch_size=64):
            return predict(crop_features(crops))

    path = submit_cells(FeatureModel(), segment_test(comp), comp, args.out / "submission.csv")
    s = score_submission(path, comp)
    print(f"through the recipe on the segmenter's test cells: box {s['box'].map:.3f} mask {s['mask'].map:.3f}; "
          f"fit and scoring {cpu_seconds() - t:.0f} CPU s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
