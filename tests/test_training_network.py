"""The team's training network, epoch and loss (issue 20, training items 3-5) and the offline ImageNet
weights (issue 25 item 3). Expected values are written here from the team's rules; nothing downloads."""

from __future__ import annotations

import dataclasses
import json
import math
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hpa_kernel import paths
from hpa_kernel.training import config as C

TEAM_QUOTAS_SUM = 9 * 10_000 + 6 * 20_000 + 2 * 40_000 + 6_666 + 20_000  # recipe README "sampler": 316,666


# --- item 5: the loss on probabilities ----------------------------------------------------------

LOGITS = np.array([-30.0, -20.0, 0.0, 5.0, 20.0, 30.0])
TARGETS = np.array([0.0, 0.01, 0.69, 1.0])


def _team_bce_and_grad(x: np.ndarray, t: np.ndarray):
    """The team's per-element BCE on probabilities and its derivative in the logit, from the formula.

    p = sigmoid(x) rounded to float32; each log clamped at -100 (F.binary_cross_entropy);
    dBCE/dp = (p - t) / max(p (1 - p), 1e-12) (PyTorch's backward of that loss), dp/dx = p (1 - p).
    """
    p = (1.0 / (1.0 + np.exp(-x))).astype(np.float32).astype(np.float64)
    with np.errstate(divide="ignore"):
        log_p, log_q = np.maximum(np.log(p), -100.0), np.maximum(np.log1p(-p), -100.0)
    bce = -(t * log_p + (1.0 - t) * log_q)
    grad = (p - t) / np.maximum(p * (1.0 - p), 1e-12) * (p * (1.0 - p))
    return bce, grad


def _loss_and_grad(loss_fn, x: np.ndarray, t: np.ndarray):
    import torch

    logits = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    value = loss_fn(logits, torch.tensor(t, dtype=torch.float32))
    (grad,) = torch.autograd.grad(value, logits)
    return float(value.detach()), grad.numpy().astype(np.float64)


def test_team_loss_on_probabilities_saturates_as_theirs():
    from hpa_kernel.training.losses import create_loss

    x, t = np.meshgrid(LOGITS, TARGETS)  # 4 cells (targets) x 6 classes (logits)
    bce, g = _team_bce_and_grad(x, t)
    n = bce.size
    # numbers read off the formula: saturated logits cost 100 (x the wrong share of the target) with gradient 0
    assert bce[0, 4] == 100.0 and g[0, 4] == 0.0 and bce[1, 5] == pytest.approx(99.0) and bce[2, 0] == pytest.approx(0.69 * 30)
    team_focal, team_bce = C.training_preset("milimed2021", 1).loss, C.training_preset("milimed2021", 2).loss
    assert (team_focal.on, team_bce.on, C.training_preset("milimed2021", 3).loss.on) == ("probabilities",) * 3

    value, grad = _loss_and_grad(create_loss(team_bce), x, t)  # nn.BCELoss: mean over all elements
    assert value == pytest.approx(bce.mean(), rel=1e-5)
    np.testing.assert_allclose(grad, g / n, rtol=1e-4, atol=1e-9)

    e = np.exp(-bce)  # focal, alpha 1, gamma 2: (1 - pt)^2 BCE with pt = exp(-BCE), mean over classes then cells
    focal = (1.0 - e) ** 2 * bce
    dfocal = 2.0 * (1.0 - e) * e * bce + (1.0 - e) ** 2
    value, grad = _loss_and_grad(create_loss(team_focal), x, t)
    assert value == pytest.approx(focal.mean(axis=1).mean(), rel=1e-5)
    np.testing.assert_allclose(grad, dfocal * g / n, rtol=1e-4, atol=1e-9)

    # one element alone: logit 20, target 0 -> 100 and gradient 0 (the kit's logits form: 20 and 1)
    team_value, team_grad = _loss_and_grad(create_loss(team_bce), np.array([[20.0]]), np.array([[0.0]]))
    assert team_value == 100.0 and team_grad[0, 0] == 0.0
    kit_value, kit_grad = _loss_and_grad(create_loss(C.training_preset("kit2025", 3).loss), np.array([[20.0]]), np.array([[0.0]]))
    assert kit_value == pytest.approx(20.0) and kit_grad[0, 0] == pytest.approx(1.0)


def test_loss_on_probabilities_only_for_the_team_forms():
    with pytest.raises(ValueError, match="probabilities"):
        C.LossConfig("focal", form="split", on="probabilities")
    with pytest.raises(ValueError, match="'logits' or 'probabilities'"):
        C.LossConfig("bce", on="sigmoid")


# --- item 4: the epoch ----------------------------------------------------------------------------

def _all_class_cells():
    """labels/targets/manual for 2 cells of every trained class 0..17 and 2 Negative cells."""
    labels = np.zeros((38, 19), bool)
    for c in range(18):
        labels[2 * c:2 * c + 2, c] = True
    labels[36:, 18] = True
    return SimpleNamespace(labels=labels, targets=labels.astype(float), manual=np.zeros_like(labels),
                           relabelled=np.zeros_like(labels))


@pytest.mark.parametrize("scale, world, per_rank, steps", [
    (1.0, 1, 316_666, 9_896),      # the team's epoch: 316,666 draws, 9,896 batches of 32 (the last one short)
    (0.01, 1, 3_167, 99),          # round(3,166.66)
    (0.001, 2, 159, 5),            # round(316.666) = 317 draws shared by 2 ranks: 159 each, 5 batches of 32
])
def test_milimed_epoch_is_the_team_quota_draws_times_one_scale(scale, world, per_rank, steps):
    import torch

    from hpa_kernel.training.loop import _Dist, _make_sampler

    assert C.MILIMED_EPOCH_SIZE == TEAM_QUOTAS_SUM == 316_666
    cfg = C.training_preset("milimed2021", 1)
    assert cfg.steps_per_epoch is None and cfg.sampler.epoch_size == 316_666 and cfg.sampler.epoch_scale == 1.0
    cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, epoch_scale=scale))
    cells = _all_class_cells()
    sampler, n_steps, _ = _make_sampler(cfg, cells, np.arange(38), _Dist(world, 0, torch.device("cpu"), False))
    assert (len(sampler), n_steps) == (per_rank, steps)
    assert sum(sampler.counts.values()) == per_rank * world
    if scale == 1.0:  # every class present: the draws are the team's quotas exactly
        assert sampler.counts == {k: int(v) for k, v in C.MILIMED_QUOTAS.items()}
    kit = C.training_preset("kit2025", 1)
    assert kit.sampler.epoch_size is None and kit.sampler.draws_per_epoch(123) == 123  # kit2025: one pass over the cells


# --- item 3: the network ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imagenet_tf_b0(tmp_path_factory):
    """A seeded random 3-channel timm tf_efficientnet_b0 state_dict standing in for ImageNet's, under its standard name."""
    import timm
    import torch

    torch.manual_seed(11)
    state = timm.create_model("tf_efficientnet_b0", pretrained=False).state_dict()
    path = tmp_path_factory.mktemp("imagenet") / "tf_efficientnet_b0_imagenet.pth"
    torch.save(state, path)
    return path, state


def _built_network(cfg, tmp_path):
    """The network the training loop builds for ``cfg`` (loop._build)."""
    import torch

    from hpa_kernel.training.loop import _build, _Dist, _FitJob

    job = _FitJob(cfg, None, None, None, 1, tmp_path, "g1")
    return _build(job, _Dist(1, 0, torch.device("cpu"), False)).model


def _hand_adapted_stem(w: np.ndarray) -> np.ndarray:
    """timm's adapt_input_conv to 4 channels, by hand: R, G, B, R filters, scaled by 3/4."""
    return np.concatenate([w, w[:, :1]], axis=1) * 0.75


def test_milimed_trains_the_team_network(imagenet_tf_b0, tmp_path):
    import torch
    from timm.layers import Conv2dSame

    path, ref = imagenet_tf_b0
    cfg = C.training_preset("milimed2021", 3, pretrained=str(path))
    assert (cfg.arch, cfg.stem, cfg.batchnorm, cfg.drop_rate, cfg.drop_path_rate, cfg.amp) == (
        "tf_efficientnet_b0", "random", "efficientnet_pytorch", 0.2, 0.2, False)
    assert not any(C.training_preset("milimed2021", g).amp for g in (1, 2, 3))
    model = _built_network(cfg, tmp_path)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 49 and {(m.eps, m.momentum) for m in bns} == {(1e-3, 0.01)}  # momentum = 1 - TF decay 0.99
    blocks = [b for stage in model.blocks for b in stage]
    assert len(blocks) == 16 and isinstance(blocks[0].drop_path, torch.nn.Identity)
    assert [b.drop_path.drop_prob for b in blocks[1:]] == pytest.approx([0.2 * i / 16 for i in range(1, 16)])
    assert model.drop_rate == 0.2
    assert isinstance(model.conv_stem, Conv2dSame) and isinstance(model.blocks[1][0].conv_dw, Conv2dSame)  # TF "same"

    stem, w = model.conv_stem.weight.detach().numpy(), ref["conv_stem.weight"].numpy()
    assert stem.shape == (32, 4, 3, 3)
    assert not np.allclose(stem[:, :3], w) and not np.allclose(stem, _hand_adapted_stem(w))
    assert np.abs(stem).max() <= 1 / 6 + 1e-7  # a new torch.nn.Conv2d: uniform within 1/sqrt(fan_in = 4*3*3)
    state = model.state_dict()
    same = [k for k in ref if not k.startswith(("conv_stem.", "classifier."))]
    assert len(same) > 300 and all(torch.equal(state[k], ref[k]) for k in same)
    assert state["classifier.weight"].shape == (18, 1280)

    adapted = _built_network(dataclasses.replace(cfg, stem="adapt"), tmp_path)  # the switch of an ablation
    np.testing.assert_allclose(adapted.conv_stem.weight.detach().numpy(), _hand_adapted_stem(w), rtol=1e-6)

    kit = C.training_preset("kit2025", 1)
    assert (kit.arch, kit.stem, kit.batchnorm, kit.drop_path_rate, kit.amp) == ("efficientnet_b0", "adapt", "timm", 0.0, True)
    kit_bn = next(m for m in _built_network(kit, tmp_path).modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert (kit_bn.eps, kit_bn.momentum) == (1e-5, 0.1)


def test_milimed_head_has_pytorch_linear_init_and_kit_keeps_timm(imagenet_tf_b0, tmp_path):
    """The team's head is efficientnet_pytorch's nn.Linear(1280, 18): weight and bias U(+-1/sqrt(1280))."""
    path, _ = imagenet_tf_b0
    bound = 1.0 / math.sqrt(1280)  # 0.027951
    for cfg in (C.training_preset("milimed2021", 1, pretrained=str(path)), C.training_preset("milimed2021", 2, pretrained=None)):
        head = _built_network(cfg, tmp_path).classifier
        w, b = head.weight.detach().numpy(), head.bias.detach().numpy()
        assert w.shape == (18, 1280) and b.shape == (18,)
        assert np.abs(w).max() <= bound + 1e-7 and np.abs(b).max() <= bound + 1e-7
        assert np.count_nonzero(b) == 18  # timm's init leaves the bias at zero
        assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound / math.sqrt(3)  # uniform: std = bound / sqrt(3)
    kit = _built_network(C.training_preset("kit2025", 1), tmp_path).classifier
    assert not kit.bias.detach().numpy().any()  # kit2025 keeps timm's head (zero bias)


def test_network_equals_efficientnet_pytorch_from_pretrained(tmp_path, monkeypatch):
    """Against the team's own library: their from_pretrained(in_channels=4) and the kit's network on the
    same efficientnet_pytorch ImageNet file agree everywhere but the random stem and head."""
    ep = pytest.importorskip("efficientnet_pytorch")
    import torch

    from hpa_kernel.classifier import create_classifier

    torch.manual_seed(3)
    (tmp_path / "w").mkdir()
    imagenet = tmp_path / "w" / "efficientnet-b0-355c32eb.pth"
    torch.save(ep.EfficientNet.from_name("efficientnet-b0").state_dict(), imagenet)
    theirs = ep.EfficientNet.from_pretrained("efficientnet-b0", weights_path=str(imagenet), in_channels=4, num_classes=18,
                                              image_size=64)
    monkeypatch.setenv(paths.WEIGHTS_ENV, str(tmp_path / "w"))
    cfg = C.training_preset("milimed2021", 1)
    ours = create_classifier(cfg.arch, num_classes=18, pretrained="imagenet", stem=cfg.stem, **cfg.network_kwargs())
    with torch.no_grad():
        ours.conv_stem.weight.copy_(theirs._conv_stem.weight)
        ours.classifier.weight.copy_(theirs._fc.weight)
        ours.classifier.bias.copy_(theirs._fc.bias)
    x = torch.rand(2, 4, 64, 64)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)
    ours.train(), theirs.train()
    with torch.no_grad():
        ours(x), theirs(x)  # one training step of the stem's BatchNorm statistics (momentum 0.01 in both)
    torch.testing.assert_close(ours.bn1.running_mean, theirs._bn0.running_mean)


# --- issue 25 item 3: the ImageNet weights offline ----------------------------------------------------

@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No $HPA_KERNEL_WEIGHTS, an empty fake Kaggle input folder, no sockets, and the hub downloader refused."""
    import timm

    from hpa_kernel.classifier import pretrained

    calls = []
    monkeypatch.delenv(paths.WEIGHTS_ENV, raising=False)
    root = tmp_path / "kaggle_input"
    (root / "some-dataset").mkdir(parents=True)
    monkeypatch.setattr(paths, "KAGGLE_INPUT", root)

    def no_hub(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("the hub downloader was called")

    create = timm.create_model

    def no_download(*args, **kwargs):
        if kwargs.get("pretrained"):
            no_hub(*args, **kwargs)
        return create(*args, **kwargs)

    monkeypatch.setattr(pretrained, "hub_state", no_hub)
    monkeypatch.setattr(timm, "create_model", no_download)
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: no_hub("socket"))
    return SimpleNamespace(root=root, calls=calls)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from toy_training import make_toy_cells

    return make_toy_cells(tmp_path_factory.mktemp("toy"), n_images=4, cells_per_image=3, size=48, seed=3)


def test_default_recipe_offline_without_weights_fails_at_once_naming_the_places(offline, toy, tmp_path, caplog, monkeypatch):
    from hpa_kernel.cli import main
    from hpa_kernel.training import RunOptions, loop, train_group

    monkeypatch.setattr(loop, "_datasets", lambda *a, **k: pytest.fail("the cells were read before the weights were found"))
    assert main(["train", "--cells", str(toy), "--out", str(tmp_path / "w"), "--device", "cpu", "--no-progress"]) == 1
    message = caplog.text
    for part in ("tf_efficientnet_b0_imagenet.pth", "efficientnet-b0-355c32eb.pth", "$HPA_KERNEL_WEIGHTS (not set)",
                 str(offline.root), "--pretrained PATH", "--pretrained none"):
        assert part in message
    with pytest.raises(FileNotFoundError, match=r"pretrained = None"):  # the Python API speaks Python
        train_group(C.training_preset("milimed2021", 1), toy, tmp_path / "w", options=RunOptions(progress=False))
    assert offline.calls == [] and not (tmp_path / "w").exists()


def test_training_notebook_offline_error_names_its_parameter(offline, tmp_path):
    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "train.ipynb").read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    namespace: dict = {}
    exec(code[0], namespace)  # the parameters cell: pretrained = "imagenet"
    assert namespace["pretrained"] == "imagenet"
    with pytest.raises(FileNotFoundError) as info:
        exec(code[1], namespace)  # derived values: the weights are looked for before any training
    assert 'pretrained = "PATH"' in str(info.value) and "--pretrained" not in str(info.value)
    assert "tf_efficientnet_b0_imagenet.pth" in str(info.value) and offline.calls == []


def test_imagenet_weights_found_in_kaggle_input_or_env_and_a_run_loads_in_the_ensemble(offline, imagenet_tf_b0, toy, tmp_path,
                                                                                        monkeypatch):
    import shutil

    import torch

    from hpa_kernel.classifier import Ensemble, load_checkpoint
    from hpa_kernel.classifier.pretrained import resolve_pretrained
    from hpa_kernel.cli import main

    path, ref = imagenet_tf_b0
    kaggle = offline.root / "tf-efficientnet-b0-imagenet" / "tf_efficientnet_b0_imagenet.pth"
    kaggle.parent.mkdir()
    shutil.copy(path, kaggle)
    assert resolve_pretrained("imagenet", "tf_efficientnet_b0") == str(kaggle)
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, env_dir / "efficientnet-b0-355c32eb.pth")
    monkeypatch.setenv(paths.WEIGHTS_ENV, str(env_dir))
    assert resolve_pretrained("imagenet", "tf_efficientnet_b0") == str(env_dir / "efficientnet-b0-355c32eb.pth")  # env first
    assert resolve_pretrained(str(path), "tf_efficientnet_b0") == str(path)  # an explicit file first of all
    monkeypatch.delenv(paths.WEIGHTS_ENV)

    torch.set_num_threads(1)
    out = tmp_path / "w"
    assert main(["train", "--cells", str(toy), "--out", str(out), "--group", "2", "--device", "cpu", "--no-progress",
                 "--input-size", "32", "--batch-size", "4", "--epochs", "1", "--ensemble-epochs", "0",
                 "--epoch-scale", "0.00002"]) == 0  # round(316,666 x 2e-5) = 6 draws: 2 batches
    _, ck = load_checkpoint(out / "g2_m0.pth")
    assert (ck.arch, ck.source_format, ck.step, ck.extra["train_config"]["pretrained"]) == (
        "tf_efficientnet_b0", "efficientnet_pytorch", 2, "imagenet")
    trained = torch.load(out / "g2_e00.pth", weights_only=True)
    assert not torch.equal(trained["blocks.6.0.conv_pwl.weight"], ref["blocks.6.0.conv_pwl.weight"])  # trained from there
    ens = Ensemble.from_checkpoints([[out / "g2_m0.pth"]], [1.0], recipe="milimed2021")
    bn = ens.members[0].model.bn1
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)
    assert ens.predict(np.zeros((2, 32, 32, 4), np.uint8)).shape[0] == 2
    assert offline.calls == []


def test_the_hub_only_when_asked_by_name(monkeypatch):
    import timm
    import torch

    from hpa_kernel.classifier import create_classifier

    asked, create = [], timm.create_model

    def fake_hub(name, pretrained=False, **kwargs):  # stands in for the download: a seeded random 3-channel B0
        if pretrained:
            asked.append(name)
            torch.manual_seed(2)
            return create("tf_efficientnet_b0", pretrained=False)
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", fake_hub)
    model = create_classifier("tf_efficientnet_b0", num_classes=18, pretrained="hub", stem="random")
    assert asked == ["tf_efficientnet_b0.aa_in1k"]  # the AutoAugment ImageNet weights, as efficientnet_pytorch's
    torch.manual_seed(2)
    assert torch.equal(model.blocks[3][0].conv_pw.weight, create("tf_efficientnet_b0").blocks[3][0].conv_pw.weight)
    create_classifier("tf_efficientnet_b0", num_classes=18)
    assert asked == ["tf_efficientnet_b0.aa_in1k"]


def test_finetuning_a_checkpoint_without_its_training_config_keeps_its_batchnorm():
    from hpa_kernel.classifier.milimed import milimed_config
    from hpa_kernel.training.finetune import _train_config_of

    team = _train_config_of(milimed_config("b0-old.pt", group=1))  # a converted team checkpoint: no train_config
    assert (team.arch, team.batchnorm, team.network_kwargs()["bn_momentum"]) == ("tf_efficientnet_b0", "efficientnet_pytorch", 0.01)
