"""The HPA segmenter inside the cells pipeline and the submission driver, with fake networks.

The two DPN-UNets are replaced by fakes that return known maps (as the reference data's fake
networks do): round cells and nuclei drawn at network resolution into the padded frame. The real
segmenter code runs around them (padding, downscale, restore, ``label_cell`` in two worker
processes), so the tests see cells found where they were drawn, with the masks ``label_cell``
gives for those maps, for square, non-square and not-a-multiple-of-32 sizes. Torch stays out of
the workers. This module imports torch lazily: worker processes never import it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_cells_pipeline import NoTorch

from hpa_kernel.cells import CellConfig, CellPipeline, PipelineOptions
from hpa_kernel.segmentation import preprocess
from hpa_kernel.segmentation.hpa import CELL_WEIGHTS, NUCLEI_WEIGHTS, postprocess_maps

CELL_RADIUS, NUCLEUS_RADIUS = 72, 44  # full resolution; label_cell drops cells < 5500 px, nuclei < 2500 px
#: image id -> ((H, W), cell centres). 432 / 4 = 108 is not a multiple of 32; 384 x 640 is not square.
LAYOUT = {
    "sq512": ((512, 512), [(128, 128), (128, 384), (384, 128), (384, 384)]),
    "sq432": ((432, 432), [(110, 110), (110, 322), (322, 216)]),
    "wide": ((384, 640), [(120, 120), (120, 360), (264, 520)]),
}


def _class_map(shape, centres, radius):
    """(h, w) classes at network resolution: 0 background, 1 border ring, 2 interior."""
    h, w = preprocess.scaled_shape(shape, 0.25)
    yy, xx = np.mgrid[0:h, 0:w]
    classes = np.zeros((h, w), np.int64)
    for cy, cx in centres:
        d = np.hypot(yy - cy / 4, xx - cx / 4)
        classes[d < radius / 4 + 0.5] = 1
        classes[d < radius / 4 - 1.5] = 2
    return classes


def known_logits(shape, centres, what, padding=True):
    """(3, h, w) float32 logits of the fake network for an image of ``shape`` (padded frame when ``padding``)."""
    classes = _class_map(shape, centres, NUCLEUS_RADIUS if what == "nuclei" else CELL_RADIUS)
    if padding:
        h, w = preprocess.network_shape(shape, 0.25, True)
        frame = np.zeros((h, w), np.int64)
        frame[preprocess.PAD : preprocess.PAD + classes.shape[0], preprocess.PAD : preprocess.PAD + classes.shape[1]] = classes
        classes = frame
    return (10.0 * np.eye(3, dtype=np.float32)[classes]).transpose(2, 0, 1).copy()


def make_fake_net(what, layout=LAYOUT, fixed=None):
    """A torch module returning the known logits of the image whose network-input shape it sees."""
    import torch

    class FakeNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.what = what
            self.seen: list[np.ndarray] = []
            self.by_shape = {}
            for shape, centres in layout.values():
                self.by_shape[preprocess.network_shape(shape, 0.25, True)] = known_logits(shape, centres, what)

        def batchnorm_stats(self):
            return {}

        def forward(self, x):
            self.seen.append(x.detach().cpu().numpy().copy())
            if fixed is not None:
                return torch.from_numpy(np.repeat(fixed[None], x.shape[0], axis=0))
            logits = self.by_shape[tuple(x.shape[2:])]
            return torch.from_numpy(np.repeat(logits[None], x.shape[0], axis=0))

    return FakeNet()


@pytest.fixture
def fake_hpa(tmp_path, monkeypatch):
    """``fake_hpa(**kwargs)``: an HPASegmenter built by its own constructor, with the fake networks loaded."""
    from hpa_kernel.segmentation import create_segmenter, weights

    for name in (NUCLEI_WEIGHTS, CELL_WEIGHTS):
        (tmp_path / name).write_bytes(b"stands for the official weight file")

    def build(fixed=None, **kwargs):
        def fake_load(path, sha256, device, batchnorm):
            what = "nuclei" if Path(path).name == NUCLEI_WEIGHTS else "cell"
            return make_fake_net(what, fixed=fixed), SimpleNamespace(sha256=f"fake-{what}", was_dataparallel=False)

        monkeypatch.setattr(weights, "load_dpn_unet", fake_load)
        return create_segmenter("hpa", nuclei=tmp_path, cell=tmp_path, device="cpu", **kwargs)

    return build


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from hpa_kernel.io import write_image

    rng = np.random.default_rng(7)
    out = tmp_path_factory.mktemp("hpa_pipeline") / "test"
    for image_id, (shape, _) in LAYOUT.items():
        write_image(out, image_id, rng.integers(0, 256, (*shape, 4), dtype=np.uint8))
    return out


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(yy - centre[0], xx - centre[1]) < radius


def assert_cells_where_drawn(cell_label):
    """One label per drawn cell, covering its disk (IoU > 0.85), and nothing else."""
    shape = cell_label.shape
    (_, centres), = [v for v in LAYOUT.values() if v[0] == shape]
    labels = set(np.unique(cell_label)) - {0}
    assert len(labels) == len(centres), f"{len(labels)} cells found, {len(centres)} drawn"
    for centre in centres:
        label = cell_label[centre]
        assert label != 0, f"no cell at {centre}"
        truth, found = _disk(shape, centre, CELL_RADIUS), cell_label == label
        assert (truth & found).sum() / (truth | found).sum() > 0.85


def test_default_is_padding_and_inputs_equal_the_reference_pad1_tensors(fake_hpa, reference):
    """Through HPASegmenter.predict: the padded network inputs equal hpacellseg's, and restore undoes the padding."""
    with np.load(reference / "segmentation" / "pred_refs.npz") as data:
        refs = {k: data[k] for k in data.files}
    prob = np.pad(refs["fake_softmax"], ((0, 0), (32, 32), (32, 32)), mode="reflect")
    seg = fake_hpa(fixed=np.log(prob), resize_mode="skimage")
    assert seg.padding is True and seg.settings()["padding"] is True
    image = np.dstack([refs["red"], refs["green"], refs["blue"], refs["yellow"]])
    (maps,) = seg.predict([image])
    for name, net in (("nuclei", seg.nuclei_net), ("cell", seg.cell_net)):
        (x,) = net.seen
        assert x.shape == (1, 3, 576, 576)
        np.testing.assert_array_equal(x[0, :, :48, :48], refs[f"{name}_input_pad1_topleft"][0])
        np.testing.assert_array_equal(x[0, :, -48:, -48:], refs[f"{name}_input_pad1_bottomright"][0])
        np.testing.assert_array_equal(x[0, :, 32:544, 32:544], refs[f"{name}_input_pad0"][0])
    # softmax(log p) is p up to float32 rounding, so a rint tie may flip: at most 1, on very few pixels
    for got, want in ((maps.nuclei, refs["nuclei_restored"]), (maps.cell, refs["cell_restored"])):
        diff = np.abs(got.astype(int) - want.astype(int))
        assert got.shape == want.shape and diff.max() <= 1 and (diff > 0).mean() < 1e-4


@pytest.mark.parametrize("shape", [(1728, 1728), (200, 328), (3072 // 4, 2048 // 4), (301, 173)])
def test_any_size_restores_to_its_own_shape(fake_hpa, shape):
    seg = fake_hpa(fixed=None)
    layout = {"x": (shape, [(shape[0] // 2, shape[1] // 2)])}
    seg.nuclei_net, seg.cell_net = make_fake_net("nuclei", layout), make_fake_net("cell", layout)
    (maps,) = seg.predict([np.zeros((*shape, 4), np.uint8)])
    assert maps.nuclei.shape == maps.cell.shape == (*shape, 3)
    h, w = preprocess.scaled_shape(shape, 0.25)
    assert seg.cell_net.seen[0].shape[2:] == (h + 32 + 32 - h % 32, w + 32 + 32 - w % 32)
    # the known map comes back at full size: interior at the centre, background in the corners
    assert maps.cell[shape[0] // 2, shape[1] // 2, 2] == 255 and maps.cell[0, 0, 2] == 0


def test_cell_pipeline_two_workers_finds_the_drawn_cells(fake_hpa, folder):
    seg = fake_hpa()
    seg.postprocess_fn = NoTorch(postprocess_maps)  # fails in the worker if torch was imported there
    pipeline = CellPipeline(seg, CellConfig(crop_size=64), workers=2, options=PipelineOptions(keep_labels=True, encode_masks=True))
    results = list(pipeline.run(folder, list(LAYOUT), progress=False))
    assert [r.image_id for r in results] == list(LAYOUT) and all(r.ok for r in results)
    for result in results:
        shape, centres = LAYOUT[result.image_id]
        assert result.cell_label.shape == shape and len(result.table) == len(centres)
        assert_cells_where_drawn(result.cell_label)
        # the workers' masks are label_cell's for the known maps, computed here in process
        maps = SegmentationMapsFor(result.image_id)
        nuclei_label, cell_label = postprocess_maps(maps)
        np.testing.assert_array_equal(result.cell_label, cell_label)
        np.testing.assert_array_equal(result.nuclei_label, nuclei_label)
        assert result.crops.shape == (len(centres), 64, 64, 4) and len(result.encoded) == len(centres)


def SegmentationMapsFor(image_id):
    """The restored maps of the known logits of ``image_id``, as the segmenter computes them."""
    from hpa_kernel.segmentation.base import SegmentationMaps

    def softmax(logits):
        e = np.exp(logits - logits.max(0, keepdims=True))
        return (e / e.sum(0, keepdims=True)).astype(np.float32)

    shape, centres = LAYOUT[image_id]
    return SegmentationMaps(
        nuclei=preprocess.restore_nuclei(softmax(known_logits(shape, centres, "nuclei")), shape, padding=True),
        cell=preprocess.restore_cell(softmax(known_logits(shape, centres, "cell")), shape, padding=True),
    )


def test_run_submission_with_the_hpa_segmenter_predicts_every_image(fake_hpa, folder, tmp_path):
    import pandas as pd

    from hpa_kernel.demo import random_ensemble
    from hpa_kernel.submission.rle import decode_mask
    from hpa_kernel.submission import check_submission
    from hpa_kernel.submission import SubmitConfig, run_submission

    comp = folder.parent
    sample = pd.DataFrame({"ID": list(LAYOUT), "ImageWidth": [s[1] for s, _ in LAYOUT.values()],
                           "ImageHeight": [s[0] for s, _ in LAYOUT.values()], "PredictionString": ""})
    sample.to_csv(comp / "sample_submission.csv", index=False)
    weights = tmp_path / "weights"
    random_ensemble(weights, sizes=(1,), weights=(1.0,), arch="resnet18", input_size=32)
    seg = fake_hpa()
    seg.postprocess_fn = NoTorch(postprocess_maps)
    config = SubmitConfig(out=tmp_path / "submission.csv", data=comp, weights=weights, device="cpu", workers=2,
                          tta=False, progress=False, torch_threads=1)
    report = run_submission(config, segmenter=seg)
    assert report.n_fallback == 0 and report.n_predicted == len(LAYOUT) and report.problems == []
    assert check_submission(config.out, comp / "sample_submission.csv").ok
    rows = pd.read_csv(config.out, dtype=str, keep_default_na=False).set_index("ID")
    for image_id, (shape, centres) in LAYOUT.items():
        tokens = rows.loc[image_id, "PredictionString"].split(" ")
        masks = {tokens[i + 2] for i in range(0, len(tokens), 3)}
        assert len(masks) == len(centres)  # every drawn cell, each with its 19 classes
        label = np.zeros(shape, np.int32)
        for k, encoded in enumerate(sorted(masks), start=1):
            label[decode_mask(encoded, *shape).astype(bool)] = k
        assert_cells_where_drawn(label)


def test_cells_cli_defaults_to_the_hpa_segmenter_and_logs_its_settings(fake_hpa, folder, tmp_path, caplog):
    import logging

    import pandas as pd

    from hpa_kernel.cli import main

    fake_hpa()  # installs the fake weight loader; the CLI builds its own segmenter from the weight folder
    weights = next(p.parent for p in tmp_path.iterdir() if p.name == NUCLEI_WEIGHTS)
    out = tmp_path / "cells"
    argv = ["cells", "--data", str(folder.parent), "--split", folder.name, "--out", str(out), "--nuclei", str(weights),
            "--cell", str(weights), "--workers", "0", "--crop-size", "32", "--no-progress"]
    with caplog.at_level(logging.INFO, logger="hpa_kernel.cli.cells"):
        assert main(argv) == 0
    settings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("segmenter hpa: ")]
    assert len(settings) == 1 and "'padding': True" in settings[0] and "'nuclei_sha256': 'fake-nuclei'" in settings[0]
    cells = pd.read_csv(out / "cells.csv", dtype={"image_id": str})
    assert cells.groupby("image_id").size().to_dict() == {k: len(c) for k, (_, c) in LAYOUT.items()}
