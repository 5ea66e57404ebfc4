"""HPASegmenter end to end on CPU, with official-format weight files made here (reference fill recipe)."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
from test_seg_weights import write_zoo_pickle

from hpa_kernel.manifest import sha256_of
from hpa_kernel.segmentation import create_segmenter
from hpa_kernel.segmentation import preprocess
from hpa_kernel.segmentation.base import SegmentationMaps
from hpa_kernel.segmentation.hpa import (
    CELL_WEIGHTS,
    NUCLEI_WEIGHTS,
    HPAParams,
    HPASegmenter,
    postprocess_maps,
    resolve_weight_file,
)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Nuclei: DataParallel zip pickle, eval mode. Cell: legacy pickle in train mode (per-image BatchNorm)."""
    from hpa_kernel.segmentation.dpn_unet import DPNUnet, reference_fill_state_dict

    torch.set_num_threads(min(2, torch.get_num_threads()))
    folder = tmp_path_factory.mktemp("hpa_weights")
    with torch.device("meta"):
        net = DPNUnet()
    net.load_state_dict(reference_fill_state_dict(net), strict=True, assign=True)
    write_zoo_pickle(net, folder / NUCLEI_WEIGHTS, dataparallel=True)
    write_zoo_pickle(net, folder / CELL_WEIGHTS, legacy=True, train=True)
    del net
    return folder


@pytest.fixture(scope="module")
def segmenter(weight_files):
    return create_segmenter(
        "hpa", nuclei=weight_files / NUCLEI_WEIGHTS, cell=weight_files / CELL_WEIGHTS, device="cpu", batch_size=2
    )


def _images():
    from hpa_kernel.synthetic import synthesize_image

    sizes = [(256, 256), (128, 256), (256, 256), (256, 256)]
    return [synthesize_image(seed, h, w, n_cells=4).image for seed, (h, w) in enumerate(sizes)]


@pytest.fixture(scope="module")
def images():
    return _images()


@pytest.fixture(scope="module")
def batched_maps(segmenter, images):
    return segmenter.predict(images)


def test_factory_settings_and_weights(segmenter, weight_files):
    assert isinstance(segmenter, HPASegmenter)
    s = segmenter.settings()
    assert s["name"] == "hpa"
    assert s["nuclei_sha256"] == sha256_of(weight_files / NUCLEI_WEIGHTS)
    assert s["cell_sha256"] == sha256_of(weight_files / CELL_WEIGHTS)
    assert s["nuclei_batchnorm_per_image"] == [] and len(s["cell_batchnorm_per_image"]) == 96
    assert (s["scale_factor"], s["padding"], s["resize_mode"], s["fp16"]) == (0.25, True, "skimage018", False)
    assert segmenter.nuclei_weights.was_dataparallel and not segmenter.cell_weights.was_dataparallel
    assert not segmenter.nuclei_net.training and not segmenter.cell_net.training


def test_predict_shapes_order_and_direct_computation(segmenter, images, batched_maps):
    assert len(batched_maps) == len(images)
    for image, maps in zip(images, batched_maps):
        assert isinstance(maps, SegmentationMaps)
        for m in (maps.nuclei, maps.cell):
            assert m.shape == (*image.shape[:2], 3) and m.dtype == np.uint8
            assert not m[..., 0].any()
    # image 1 (128 x 256, alone in its size group) recomputed step by step
    image = images[1]
    with torch.no_grad():
        x_n = torch.from_numpy(preprocess.nuclei_input(image[..., 2], padding=True)[None])
        x_c = torch.from_numpy(preprocess.cell_input(image[..., 0], image[..., 3], image[..., 2], padding=True)[None])
        p_n = torch.softmax(segmenter.nuclei_net(x_n), dim=1)[0].numpy()
        p_c = torch.softmax(segmenter.cell_net(x_c), dim=1)[0].numpy()
    assert x_n.shape[2:] == (32 + 32 + 32, 32 + 64 + 32)  # 128 x 256 scales to 32 x 64, padded by 32 + 32
    np.testing.assert_array_equal(batched_maps[1].nuclei, preprocess.restore_nuclei(p_n, image.shape[:2], padding=True))
    np.testing.assert_array_equal(batched_maps[1].cell, preprocess.restore_cell(p_c, image.shape[:2], padding=True))
    # the networks saw different inputs
    assert not np.array_equal(batched_maps[1].nuclei, batched_maps[1].cell)


def test_batched_equals_one_by_one(segmenter, images, batched_maps):
    # images 0 and 2 ran together (batch_size=2, same size); the cell network runs with per-image
    # BatchNorm statistics (pickled train mode), the nuclei network with running statistics
    for i in (0, 2):
        (single,) = segmenter.predict([images[i]])
        for got, want in ((batched_maps[i].nuclei, single.nuclei), (batched_maps[i].cell, single.cell)):
            diff = np.abs(got.astype(int) - want.astype(int))
            # float32 batched vs single convolutions may differ in the last bits; a rounding
            # flip changes a pixel by 1 at most
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert not np.array_equal(batched_maps[0].cell, batched_maps[2].cell)


def test_postprocess_is_picklable_label_cell(segmenter, batched_maps):
    fn = segmenter.postprocess_fn
    assert fn is postprocess_maps
    assert pickle.loads(pickle.dumps(fn)) is postprocess_maps
    from hpa_kernel.segmentation.postprocess import label_cell

    maps = batched_maps[1]
    nuclei_label, cell_label = fn(maps)
    want = label_cell(maps.nuclei, maps.cell)
    np.testing.assert_array_equal(nuclei_label, want[0])
    np.testing.assert_array_equal(cell_label, want[1])
    assert cell_label.dtype == np.uint16 and cell_label.shape == (128, 256)


def test_padding_for_sizes_that_are_not_multiples(segmenter, images, monkeypatch):
    image = images[1][:100, :168]  # scales to 25 x 42
    (maps,) = segmenter.predict([image])  # padding=True, the default
    assert maps.nuclei.shape == maps.cell.shape == (100, 168, 3)
    assert segmenter.settings()["padding"] is True
    # the same networks without padding (attribute patched to skip reloading)
    monkeypatch.setattr(segmenter, "padding", False)
    with pytest.raises(ValueError, match="padding=True"):
        segmenter.predict([image])
    assert segmenter.settings()["padding"] is False


def test_cpu_ignores_fp16_and_channels_last(weight_files, caplog):
    with caplog.at_level(logging.WARNING, logger="hpa_kernel.segmentation.hpa"):
        seg = HPASegmenter(nuclei=weight_files, cell=weight_files, device="cpu", fp16=True, channels_last=True)
    assert not seg.fp16 and not seg.channels_last
    assert "fp16=True only applies on CUDA" in caplog.text and "channels_last=True" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda_is_an_error(weight_files):
    with pytest.raises(ValueError, match="CUDA is not available"):
        HPASegmenter(nuclei=weight_files, cell=weight_files, device="cuda")


def test_bad_images(segmenter, monkeypatch):
    with pytest.raises(ValueError, match=r"images\[0\] must be an \(H, W, 4\)"):
        segmenter.predict([np.zeros((64, 64, 3), np.uint8)])
    with pytest.raises(ValueError, match="single array"):
        segmenter.predict(np.zeros((64, 64, 4), np.uint8))
    monkeypatch.setattr(segmenter, "padding", False)
    with pytest.raises(ValueError, match="not a multiple of 32"):
        segmenter.predict([np.zeros((200, 256, 4), np.uint8)])
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"images\[1\] is empty"):
        segmenter.predict([np.zeros((128, 128, 4), np.uint8), np.zeros((0, 128, 4), np.uint8)])


def test_missing_weights_name_file_and_places(tmp_path, monkeypatch):
    monkeypatch.delenv("HPA_KERNEL_WEIGHTS", raising=False)
    kaggle = tmp_path / "kaggle_input"
    (kaggle / "some-dataset").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        resolve_weight_file(None, NUCLEI_WEIGHTS, "nuclei", kaggle_root=kaggle)
    msg = str(err.value)
    assert NUCLEI_WEIGHTS in msg and "HPA_KERNEL_WEIGHTS" in msg and str(kaggle) in msg
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_segmenter("hpa", nuclei=tmp_path / "nope.pth", cell=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=CELL_WEIGHTS):
        resolve_weight_file(tmp_path, CELL_WEIGHTS, "cell")
    # found through the environment variable, then through a Kaggle input folder
    (tmp_path / NUCLEI_WEIGHTS).write_bytes(b"x")
    monkeypatch.setenv("HPA_KERNEL_WEIGHTS", str(tmp_path))
    assert resolve_weight_file(None, NUCLEI_WEIGHTS, "nuclei", kaggle_root=kaggle) == tmp_path / NUCLEI_WEIGHTS
    monkeypatch.delenv("HPA_KERNEL_WEIGHTS")
    (kaggle / "some-dataset" / "weights").mkdir()
    (kaggle / "some-dataset" / "weights" / CELL_WEIGHTS).write_bytes(b"x")
    found = resolve_weight_file(None, CELL_WEIGHTS, "cell", kaggle_root=kaggle)
    assert found == kaggle / "some-dataset" / "weights" / CELL_WEIGHTS


def test_cli_writes_16bit_masks(weight_files, images, batched_maps, tmp_path):
    import cv2

    from hpa_kernel.cli import main
    from hpa_kernel.io import write_image

    src = tmp_path / "images"
    write_image(src, "img_a", images[1])
    out = tmp_path / "masks"
    argv = ["segment", "--images", str(src), "--out", str(out)]
    argv += ["--nuclei", str(weight_files / NUCLEI_WEIGHTS), "--cell", str(weight_files), "--batch-size", "2"]
    assert main(argv) == 0
    cell = cv2.imread(str(out / "img_a_cellmask.png"), cv2.IMREAD_UNCHANGED)
    nuclei = cv2.imread(str(out / "img_a_nucleimask.png"), cv2.IMREAD_UNCHANGED)
    assert cell.dtype == nuclei.dtype == np.uint16 and cell.shape == nuclei.shape == (128, 256)
    # the PNG round trip is lossless and image 1 ran alone in its batch above
    want_nuclei, want_cell = postprocess_maps(batched_maps[1])
    np.testing.assert_array_equal(cell, want_cell)
    np.testing.assert_array_equal(nuclei, want_nuclei)
    # missing weights: a clear error, exit status 1, nothing written
    argv = ["segment", "--images", str(src), "--out", str(tmp_path / "x"), "--nuclei", str(tmp_path / "no.pth")]
    assert main(argv) == 1
    assert not (tmp_path / "x").exists()  # the weights are resolved before the output folder is made



# --- HPAParams -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"scale_factor": 0.0}, "scale_factor"),
        ({"resize_mode": "bilinear"}, "resize_mode"),
        ({"batchnorm": "frozen"}, "batchnorm"),
        ({"fp16": "yes"}, "fp16"),
        ({"padding": None}, "padding"),
        ({"cell_sha256": 123}, "cell_sha256"),
    ],
)
def test_hpa_params_check_themselves(bad, match):
    with pytest.raises(ValueError, match=match):
        HPAParams(**bad)


def test_hpa_params_and_overrides_build_the_same_segmenter(weight_files):
    params = HPAParams(device="cpu", batch_size=3, padding=False, resize_mode="skimage")
    seg = HPASegmenter(nuclei=weight_files, cell=weight_files, params=params)
    assert seg.params == params and seg.batch_size == 3 and seg.padding is False and seg.device.type == "cpu"
    loose = create_segmenter("hpa", nuclei=weight_files, cell=weight_files, device="cpu", batch_size=3, padding=False,
                             resize_mode="skimage")
    assert loose.params == params and loose.settings() == seg.settings()
    # overrides apply on top of params
    assert HPASegmenter(nuclei=weight_files, cell=weight_files, params=params, padding=True).padding is True
    with pytest.raises(ValueError, match="unknown hpa segmenter setting"):
        HPASegmenter(nuclei=weight_files, cell=weight_files, no_such_thing=1)
    with pytest.raises(ValueError, match="params: expected HPAParams"):
        HPASegmenter(nuclei=weight_files, cell=weight_files, params={"batch_size": 2})


def test_settings_keys_are_the_cache_keys(segmenter):
    assert set(segmenter.settings()) == {
        "name", "nuclei_sha256", "cell_sha256", "nuclei_batchnorm_per_image", "cell_batchnorm_per_image",
        "scale_factor", "padding", "resize_mode", "device", "fp16", "channels_last", "postprocess", "skimage",
    }


def test_segment_cli_builds_hpa_params_with_the_default_device(monkeypatch):
    from hpa_kernel.cli import build_parser
    from hpa_kernel.cli.segment import _segmenter_kwargs

    parser = build_parser()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = parser.parse_args(["segment", "--images", "x", "--out", "y", "--batch-size", "2", "--no-padding"])
    kwargs = _segmenter_kwargs(args)
    assert kwargs["params"] == HPAParams(device="cuda", batch_size=2, padding=False)  # CUDA when available
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _segmenter_kwargs(args)["params"].device == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        _segmenter_kwargs(parser.parse_args(["segment", "--images", "x", "--out", "y", "--device", "cuda"]))


def test_cells_cli_builds_hpa_params_with_the_default_device(monkeypatch, tmp_path):
    from hpa_kernel import segmentation
    from hpa_kernel.cli import build_parser
    from hpa_kernel.cli.cells import run

    calls = []

    class Stop(Exception):
        pass

    def fake_create(name, **kwargs):
        calls.append((name, kwargs))
        raise Stop

    monkeypatch.setattr(segmentation, "create_segmenter", fake_create)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = build_parser().parse_args(["cells", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--nuclei", "n.pth"])
    with pytest.raises(Stop):
        run(args)
    assert calls == [("hpa", {"nuclei": "n.pth", "cell": None, "params": HPAParams(device="cuda", padding=True)})]
