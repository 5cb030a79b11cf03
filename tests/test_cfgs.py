"""The project's own cfg/ files describe exactly the Darknet zoo networks they are written after.

For each cfg: the same layers, shapes, heads and [net] training settings as the zoo cfg in
../shared/darknet/cfg, Darknet's BFLOPs and weight counts at 416x416, no unused keys (CfgWarning), and the same
outputs when both models carry the same weights (one model's weights are saved with save_weights and loaded
into the other). cfg/yolov3-tiny.cfg with weights/yolov3-tiny.weights reproduces C Darknet's head outputs.
"""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ORACLE, REPO, SHARED, require
from darkpy.cfg import CfgWarning
from darkpy.model import Darknet
from oracle_utils import close_to_darknet

CFG_DIR = REPO / "cfg"
ZOO_DIR = SHARED / "darknet" / "cfg"

# name -> (Darknet's "Total BFLOPS" at 416x416, floats in the .weights file, layers). The tiny figures are
# the oracle's summary.json values; yolov3's are darkpy's for the zoo cfg at 416 (the oracle runs it at 320).
FIGURES = {
    "yolov3-tiny": (5.571, 8_858_734, 24),
    "yolov3-tiny-prn": (3.467, 4_939_758, 28),
    "yolov4-tiny": (6.910, 6_062_814, 38),
    "yolov3": (65.879, 62_001_757, 107),
}
# The size the outputs are compared at (yolov3 runs smaller to keep the test fast; the cfg is size-agnostic).
COMPARE_SIZE = {"yolov3": 256}
# Keys that may differ: the zoo files are set up for testing (batch=1), the project's for training.
NET_KEYS_ALLOWED_TO_DIFFER = {"batch", "subdivisions"}


def build_quietly(path: Path, size=None) -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CfgWarning)
        return Darknet.from_cfg(path, width=size, height=size)


def as_number(value: str):
    try:
        return float(value.split("#")[0])
    except ValueError:
        return value


def numbers_of(options: dict) -> dict:
    """Option strings compared by value ('.7' == '0.7', '1.0' == '1'), lists item by item."""
    return {k: tuple(as_number(v) for v in str(value).split(",") if v != "") for k, value in options.items()}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_project_cfg_has_darknet_figures_and_no_unused_keys(name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = Darknet.from_cfg(CFG_DIR / f"{name}.cfg")
    cfg_warnings = [str(w.message) for w in caught if issubclass(w.category, CfgWarning)]
    assert cfg_warnings == []
    bflops, floats, layers = FIGURES[name]
    assert (model.width, model.height, model.channels) == (416, 416, 3)
    assert f"{model.total_bflops():.3f}" == f"{bflops:.3f}"
    assert model.count_weight_floats() == floats
    assert len(model.layers) == layers
    assert all(head.classes == 80 for head in model.heads)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_project_cfg_is_the_zoo_architecture(name):
    ours = build_quietly(CFG_DIR / f"{name}.cfg")
    zoo = build_quietly(require(ZOO_DIR / f"{name}.cfg"))
    assert f"{zoo.total_bflops():.3f}" == f"{FIGURES[name][0]:.3f}"
    assert zoo.count_weight_floats() == FIGURES[name][1]
    assert len(ours.layers) == len(zoo.layers)
    for a, b in zip(ours.layers, zoo.layers):
        assert (a.type, a.in_shape, a.out_shape, a.inputs, a.describe()) == \
               (b.type, b.in_shape, b.out_shape, b.inputs, b.describe()), f"layer {a.index}"
        assert getattr(a, "activation_name", None) == getattr(b, "activation_name", None), f"layer {a.index}"
        assert getattr(a, "batch_normalize", None) == getattr(b, "batch_normalize", None), f"layer {a.index}"
    for a, b in zip(ours.heads, zoo.heads):
        assert (a.type, a.index, a.classes, list(a.mask), a.scale_x_y, a.new_coords, a.nms_kind, a.beta_nms) == \
               (b.type, b.index, b.classes, list(b.mask), b.scale_x_y, b.new_coords, b.nms_kind, b.beta_nms)
        assert torch.equal(a.all_anchors, b.all_anchors)
        assert numbers_of(a.options) == numbers_of(b.options), f"head at layer {a.index}"
    ours_net = {k: v for k, v in ours.net.items() if k not in NET_KEYS_ALLOWED_TO_DIFFER}
    zoo_net = {k: v for k, v in zoo.net.items() if k not in NET_KEYS_ALLOWED_TO_DIFFER}
    assert numbers_of(ours_net) == numbers_of(zoo_net)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_zoo_weights_give_the_same_outputs(name, tmp_path):
    size = COMPARE_SIZE.get(name)
    torch.manual_seed(0)
    ours = build_quietly(CFG_DIR / f"{name}.cfg", size)
    # Non-trivial batch-norm statistics, so that a swapped array in the weights order would show.
    with torch.no_grad():
        for layer in ours.layers:
            if getattr(layer, "batch_normalize", 0):
                layer.bias.uniform_(-0.1, 0.1)
                layer.bn_weight.uniform_(0.5, 1.0)
                layer.running_mean.uniform_(-0.2, 0.2)
                layer.running_var.uniform_(0.5, 1.5)
    ours.save_weights(tmp_path / "seeded.weights")
    zoo = build_quietly(require(ZOO_DIR / f"{name}.cfg"), size)
    assert zoo.load_weights(tmp_path / "seeded.weights").complete

    x = torch.rand(1, 3, ours.height, ours.width, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = zoo.eval()(x)
        got = ours.eval()(x)
    assert len(got) == len(expected) == len(ours.heads)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        assert torch.equal(a, b)  # the same operations on the same numbers


def test_yolov3_tiny_cfg_with_the_release_weights_reproduces_darknet():
    weights = REPO / "weights" / "yolov3-tiny.weights"
    if not weights.exists():
        weights = require(SHARED / "weights" / "yolov3-tiny.weights")
    fixture = require(ORACLE / "real-yolov3-tiny" / "dog")
    model = Darknet.from_cfg(CFG_DIR / "yolov3-tiny.cfg")
    assert model.load_weights(weights).complete
    arrays = np.load(fixture / "outputs.npz")
    x = torch.from_numpy(np.load(fixture / "input.npy"))[None]
    with torch.inference_mode():
        outputs = model.eval()(x)
    for head, out in zip(model.heads, outputs):
        key = f"L{head.index}"
        assert close_to_darknet(out[0].numpy(), arrays[key]), key
        # The masks Darknet ran with (the second head: 0,1,2, see the comment in the cfg) and their anchors.
        np.testing.assert_array_equal(head.mask, arrays[f"{key}_mask"])
        np.testing.assert_allclose(head.anchors.numpy(), arrays[f"{key}_anchors"], rtol=1e-6)
    assert [list(h.mask) for h in model.heads] == [[3, 4, 5], [0, 1, 2]]
