"""Loading hpacellseg weight files without pytorch_zoo: formats, DataParallel, train/eval flags, safety.

The official files are whole-model pickles of pytorch_zoo classes. The tests make files of that
kind with throwaway classes registered as ``pytorch_zoo.unet`` / ``pytorch_zoo.dpn`` only while
saving, then load them with the fake modules gone.
"""

from __future__ import annotations

import hashlib
import os
import sys
import types
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from hpa_kernel.segmentation.weights import (
    LoadedWeights,
    UnsafeWeightsError,
    WeightsHashError,
    load_dpn_unet,
    load_weights,
)

# Our class name -> (pytorch_zoo module, class) of the original.
ZOO_NAMES = {
    "DPNUnet": ("pytorch_zoo.unet", "DPNUnet"),
    "_ConvRelu": ("pytorch_zoo.unet", "ConvBottleneck"),
    "_UpConvRelu": ("pytorch_zoo.unet", "UnetDecoderBlock"),
    "DualPathBlock": ("pytorch_zoo.dpn", "DualPathBlock"),
    "BnActConv2d": ("pytorch_zoo.dpn", "BnActConv2d"),
    "CatBnAct": ("pytorch_zoo.dpn", "CatBnAct"),
    "TinyNet": ("pytorch_zoo.unet", "DPNUnet"),
    "TinyBlock": ("pytorch_zoo.dpn", "BnActConv2d"),
}


def fake_zoo_modules() -> dict[str, types.ModuleType]:
    """Throwaway ``pytorch_zoo``, ``pytorch_zoo.unet`` and ``pytorch_zoo.dpn`` with empty module classes."""
    mods = {name: types.ModuleType(name) for name in ("pytorch_zoo", "pytorch_zoo.unet", "pytorch_zoo.dpn")}
    for mod_name, cls_name in set(ZOO_NAMES.values()):
        cls = type(cls_name, (nn.Module,), {"__module__": mod_name, "__qualname__": cls_name})
        setattr(mods[mod_name], cls_name, cls)
    mods["pytorch_zoo"].unet = mods["pytorch_zoo.unet"]
    mods["pytorch_zoo"].dpn = mods["pytorch_zoo.dpn"]
    return mods


def to_zoo_tree(module: nn.Module, mods: dict) -> nn.Module:
    """A copy of ``module``'s tree (sharing tensors) made of pytorch_zoo-named and torch.nn classes.

    timm's BatchNormAct2d becomes a plain ``nn.BatchNorm2d`` (the original keeps the ReLU as a
    separate parameter-free module), our stage containers become ``nn.Sequential``.
    """
    name = type(module).__name__
    if name == "_CatStage":
        cls = nn.Sequential
    elif name == "DualModeBatchNormAct2d":
        cls = nn.BatchNorm2d
    elif name in ZOO_NAMES:
        mod_name, cls_name = ZOO_NAMES[name]
        cls = getattr(mods[mod_name], cls_name)
    elif type(module).__module__.startswith("torch.nn"):
        cls = type(module)
    else:
        raise AssertionError(f"no pytorch_zoo counterpart for {type(module)}")
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    if cls is nn.BatchNorm2d:
        state["_modules"] = OrderedDict()
    else:
        state["_modules"] = OrderedDict(
            (k, None if v is None else to_zoo_tree(v, mods)) for k, v in module._modules.items()
        )
    new.__dict__.update(state)
    return new


def write_zoo_pickle(
    net: nn.Module, path, *, dataparallel: bool = False, legacy: bool = False, train: bool = False
) -> None:
    """``torch.save`` a whole model the way the official files were made, with fake pytorch_zoo classes.

    The fake modules are in ``sys.modules`` only during the save.
    """
    mods = fake_zoo_modules()
    saved = {name: sys.modules.get(name) for name in mods}
    sys.modules.update(mods)
    try:
        tree = to_zoo_tree(net, mods)
        tree.train(train)
        obj = nn.DataParallel(tree) if dataparallel else tree
        if dataparallel:
            obj.train(train)
        with warnings.catch_warnings():
            # the legacy format looks up each class's source; the throwaway classes have none
            warnings.filterwarnings("ignore", message=r".*source code.*")
            torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


class TinyBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c, eps=1e-3)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.blocks = nn.ModuleList([TinyBlock(4), TinyBlock(4)])
        self.up = nn.Upsample(scale_factor=2)
        self.drop = nn.Dropout2d(0.1)
        self.final = nn.Sequential(nn.Conv2d(4, 3, 1))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
    return net


def assert_same_state(loaded: LoadedWeights, net: nn.Module) -> None:
    expected = net.state_dict()
    assert list(loaded.state_dict) == list(expected)
    for k, v in expected.items():
        assert loaded.state_dict[k].dtype == v.dtype, k
        assert torch.equal(loaded.state_dict[k], v), k


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("dataparallel", [False, True], ids=["plain", "dataparallel"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_whole_model_pickle_loads_without_pytorch_zoo(tmp_path, legacy, dataparallel, train):
    net = tiny_net()
    path = tmp_path / "model.pth"
    write_zoo_pickle(net, path, dataparallel=dataparallel, legacy=legacy, train=train)
    assert "pytorch_zoo" not in sys.modules and "pytorch_zoo.unet" not in sys.modules
    # An ordinary torch.load needs pytorch_zoo: the file really references it.
    with pytest.raises((ModuleNotFoundError, AttributeError)):
        torch.load(path, weights_only=False)

    loaded = load_weights(path)
    assert_same_state(loaded, net)
    assert not any(k.startswith("module.") for k in loaded.state_dict)
    assert "scratch" not in loaded.state_dict  # non-persistent buffer
    assert loaded.was_dataparallel is dataparallel
    assert loaded.file_format == ("legacy" if legacy else "zip")
    assert loaded.root_class == "pytorch_zoo.unet.DPNUnet"
    n_modules = len(list(net.modules()))
    assert loaded.training_flags == ({"train": n_modules} if train else {"eval": n_modules})
    assert loaded.batchnorm_training == {"stem.1": train, "blocks.0.bn": train, "blocks.1.bn": train}
    assert loaded.batchnorm_per_image is train
    assert loaded.dropout_training == (["drop"] if train else [])
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    summary = loaded.summary()
    assert summary["batchnorm_layers"] == 3 and summary["batchnorm_train_mode"] == (3 if train else 0)


def test_mixed_training_flags_are_reported_per_layer(tmp_path):
    net = tiny_net()
    mods = fake_zoo_modules()
    sys.modules.update(mods)
    try:
        tree = to_zoo_tree(net, mods)
        tree.eval()
        tree.blocks[1].train()
        torch.save(tree, tmp_path / "m.pth")
    finally:
        for name in mods:
            sys.modules.pop(name, None)
    loaded = load_weights(tmp_path / "m.pth")
    assert loaded.batchnorm_training == {"stem.1": False, "blocks.0.bn": False, "blocks.1.bn": True}
    assert loaded.training_flags == {"eval": len(list(net.modules())) - 4, "train": 4}


def test_plain_state_dict_file_with_module_prefix(tmp_path):
    net = tiny_net()
    sd = OrderedDict(("module." + k, v) for k, v in net.state_dict().items())
    torch.save(sd, tmp_path / "sd.pth")
    loaded = load_weights(tmp_path / "sd.pth")
    assert_same_state(loaded, net)
    assert loaded.was_dataparallel is True
    assert loaded.training_flags == {} and loaded.batchnorm_training == {}


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_without_side_effect(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Evil(target)}, path)
    with pytest.raises(UnsafeWeightsError, match=r"system"):
        load_weights(path)
    assert not target.exists()
    # The legacy format goes through the same unpickler.
    torch.save({"payload": _Evil(target)}, tmp_path / "evil_legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeWeightsError, match=r"system"):
        load_weights(tmp_path / "evil_legacy.pth")
    assert not target.exists()


def test_unknown_class_outside_pytorch_zoo_is_refused(tmp_path):
    torch.save(OrderedDict(a=torch.zeros(1), b=np.float32(1)), tmp_path / "np.pth")
    with pytest.raises(UnsafeWeightsError, match=r"numpy"):
        load_weights(tmp_path / "np.pth")


def test_sha256_mismatch_names_file_and_hashes(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(tiny_net().state_dict(), path)
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_weights(path, expected_sha256=found.upper()).sha256 == found
    with pytest.raises(WeightsHashError) as err:
        load_weights(path, expected_sha256="0" * 64)
    msg = str(err.value)
    assert str(path) in msg and "0" * 64 in msg and found in msg


def test_missing_file_and_wrong_content(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(tmp_path / "nope.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a pickled nn.Module or a state_dict"):
        load_weights(tmp_path / "list.pth")
    torch.save(tiny_net().state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="does not fit the DPNUnet"):
        load_dpn_unet(tmp_path / "tiny.pth")


@pytest.fixture(scope="module")
def filled_dpn_unet():
    from hpa_kernel.segmentation.dpn_unet import DPNUnet, reference_fill_state_dict

    with torch.device("meta"):
        net = DPNUnet()
    net.load_state_dict(reference_fill_state_dict(net), strict=True, assign=True)
    return net.eval()


def test_official_layout_file_loads_strictly_and_reproduces_reference(tmp_path, filled_dpn_unet, reference):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = tmp_path / "dpn_unet_nuclei_v1.pth"
    write_zoo_pickle(filled_dpn_unet, path, dataparallel=True)
    net, loaded = load_dpn_unet(path)
    assert loaded.was_dataparallel and loaded.root_class == "pytorch_zoo.unet.DPNUnet"
    assert len(loaded.state_dict) == 595
    assert len(loaded.batchnorm_training) == 96 and not loaded.batchnorm_per_image
    assert not any(net.batchnorm_stats().values())
    # the reference logits of the original pytorch_zoo DPNUnet with the README's weight fill
    # (float64 run); float32 differs by up to 2e-5 there (logits_a_float32_run)
    ref = np.load(reference / "segmentation" / "dpn_unet_forward.npz")
    x = torch.from_numpy(ref["input_b"].copy())
    with torch.no_grad():
        got = net(x)[0].double().numpy()
    np.testing.assert_allclose(got, ref["logits_b"], rtol=0, atol=1e-4)


def test_pickled_train_mode_gives_per_image_batchnorm(tmp_path, filled_dpn_unet):
    path = tmp_path / "dpn_unet_cell_3ch_v1.pth"
    write_zoo_pickle(filled_dpn_unet, path, dataparallel=False, legacy=True, train=True)
    net, loaded = load_dpn_unet(path)
    assert loaded.file_format == "legacy" and not loaded.was_dataparallel
    assert loaded.batchnorm_per_image and all(net.batchnorm_stats().values())
    assert not net.training

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 64, 64, generator=gen)
    x[1] = 2.5 * x[1] + 0.7  # different statistics per image
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        batched = net(x)
        single = torch.cat([net(x[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-4)
    # running statistics are never updated
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k

    # What hpacellseg does: the pickled module in train mode (BatchNorm with batch statistics),
    # one image per batch. Emulated on the same network with its BatchNorm layers in train mode.
    net.set_batchnorm_stats(False)
    with torch.no_grad():
        running = net(x[1:2])
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
                m.momentum = 0.0
        original = net(x[1:2])
    torch.testing.assert_close(single[1:2], original, rtol=1e-5, atol=1e-4)
    # and it really differs from running statistics
    assert (running - original).abs().max() > 1e-2


@pytest.mark.parametrize("content", [b"", b"this is not a torch file", b"PK\x03\x04 truncated zip"])
def test_unreadable_weight_file_is_named(tmp_path, content):
    path = tmp_path / "dpn_unet_cell_3ch_v1.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="dpn_unet_cell_3ch_v1.pth"):
        load_weights(path)
