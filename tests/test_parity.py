"""Every fixture of the oracle (C Darknet outputs for seeded weights) against darkpy, layer by layer.

The fixture folder comes from DARKPY_ORACLE_DIR (default ../shared/oracle), so another fixture set in the same
format is checked by the same test; tests/fixtures adds the repository's own (XNOR networks). A fixture of a
Darknet zoo cfg that ../shared does not hold keeps only Darknet's outputs and names the cfg in zoo_cfg.txt: it is
built from DARKPY_DARKNET_CFG (Darknet's cfg/ folder) at the size its summary.json states, or skipped.
"""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from conftest import DARKNET_CFG, LOCAL_FIXTURES, ORACLE, require
from darkpy.boxes import get_network_boxes
from darkpy.commands.common import ready_for_inference
from darkpy.export import INSTALL_HINT, onnxruntime_or_none
from darkpy.model import Darknet
from oracle_utils import close_to_darknet, fixture_dirs, layer_stats_close, make_weights

FIXTURES = (fixture_dirs(ORACLE) if ORACLE.is_dir() else []) + fixture_dirs(LOCAL_FIXTURES)


def build(fixture, summary):
    if (fixture / "cfg.cfg").exists():
        cfg, width, height = fixture / "cfg.cfg", None, None
    else:
        if DARKNET_CFG is None:
            pytest.skip(f"{fixture.name}: set DARKPY_DARKNET_CFG to Darknet's cfg/ folder to build its zoo cfg")
        cfg = require(DARKNET_CFG / (fixture / "zoo_cfg.txt").read_text().strip())
        width, height = summary["input"][:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zoo cfgs carry keys Darknet itself ignores
        return Darknet.from_cfg(cfg, width=width, height=height)


@pytest.mark.skipif(not FIXTURES, reason=f"no oracle fixtures in {ORACLE} (set DARKPY_ORACLE_DIR or add ../shared)")
@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_fixture_matches_darknet(fixture, tmp_path):
    summary = json.loads((fixture / "summary.json").read_text())
    model = build(fixture, summary)
    report = model.load_weights(make_weights(require(ORACLE), fixture, tmp_path / "w.weights"))
    assert report.complete
    assert len(model.layers) == summary["n_layers"]
    assert model.count_weight_floats() == summary["n_weights_floats"]
    assert f"{model.total_bflops():.3f}" == f"{summary['total_bflops']:.3f}"

    x = torch.from_numpy(np.load(fixture / "input.npy"))[None]
    with torch.inference_mode():
        outputs = model.eval().forward_layers(x, keep_all=True)
    # The first layer whose statistics differ from Darknet's names where a divergence starts.
    for expected, out in zip(json.loads((fixture / "layers.json").read_text()), outputs):
        ours = out[0].numpy()
        assert ours.size == int(np.prod(expected["out_shape"])), f"layer {expected['index']} shape"
        assert layer_stats_close(ours, expected), (
            f"layer {expected['index']} ({expected['type']}) first differs from Darknet: mean {ours.mean():.6g} "
            f"vs {expected['mean']:.6g}, max {ours.max():.6g} vs {expected['max']:.6g}")

    arrays = np.load(fixture / "outputs.npz")
    heads = [k for k in arrays.files if k.startswith("L") and not k.endswith(("_anchors", "_mask"))]
    for key in heads:
        index = int(key[1:])
        ours = outputs[index][0].numpy()
        assert ours.shape == arrays[key].shape
        assert close_to_darknet(ours, arrays[key]), f"head {key}: max diff {np.abs(ours - arrays[key]).max():.3g}"
        head = next(h for h in model.heads if h.index == index)
        if f"{key}_mask" in arrays.files:  # heads with anchors ([detection], YOLOv1, has none)
            np.testing.assert_array_equal(head.mask, arrays[f"{key}_mask"])
            # anchors as the cfg states them ([yolo]: input pixels, [region]: grid cells)
            np.testing.assert_allclose(head.anchors.numpy(), arrays[f"{key}_anchors"], rtol=1e-6)
    if "boxes_thresh_0.02" in arrays.files:
        # get_network_boxes with w = h = 1 (relative boxes), thresh .02, before NMS: x, y, w, h, objectness, probs
        expected = arrays["boxes_thresh_0.02"]
        size = (model.width, model.height)
        boxes = get_network_boxes([outputs[h.index][0].numpy() for h in model.heads], model.heads, size, size, 0.02)
        for ours, column in ((boxes.xywh, expected[:, :4]), (boxes.objectness, expected[:, 4]),
                             (boxes.probs, expected[:, 5:])):
            assert close_to_darknet(ours, column)
    if "final" in arrays.files:
        ours = outputs[model.output_index][0].numpy().ravel()
        assert close_to_darknet(ours, arrays["final"])
        # "penultimate" is the output of the cfg's second-to-last layer (the last may be a [cost]).
        penultimate = outputs[len(model.layers) - 2][0].numpy()
        assert close_to_darknet(penultimate.reshape(arrays["penultimate"].shape), arrays["penultimate"])
    if not heads:
        assert "final" in arrays.files



@pytest.mark.skipif(not FIXTURES, reason=f"no oracle fixtures in {ORACLE} (set DARKPY_ORACLE_DIR or add ../shared)")
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_the_inference_path_of_the_commands_matches_darknet(fixture, backend, tmp_path, monkeypatch):
    """What `darkpy detect`, `map` and `classifier` run gives Darknet's head and final outputs too: on torch
    (batch norm folded, channels_last, on the CPU the packed convolutions, the strided-view max-pools and the
    concatenations pooled unjoined), and on the onnxruntime backend (darkpy's ONNX export, cached) for the
    detectors."""
    summary = json.loads((fixture / "summary.json").read_text())
    model = build(fixture, summary)
    model.load_weights(make_weights(require(ORACLE), fixture, tmp_path / "w.weights"))
    x = torch.from_numpy(np.load(fixture / "input.npy"))[None]
    if backend == "onnxruntime":
        if onnxruntime_or_none() is None:
            pytest.skip(f"onnxruntime is not installed ({INSTALL_HINT})")
        if not model.heads or model.recurrent_layers():
            pytest.skip("classifiers and recurrent networks run on torch only")
        monkeypatch.setenv("DARKPY_CACHE_DIR", str(tmp_path / "cache"))
        outputs = ready_for_inference(model, "cpu", backend="onnxruntime")(x.numpy())
        shutil.rmtree(tmp_path / "cache")  # up to 380 MB a fixture; pytest keeps the last runs' folders
    else:
        assert ready_for_inference(model, "cpu", backend="torch") is None
        with torch.inference_mode():
            result = model(x.contiguous(memory_format=torch.channels_last))
        outputs = [out.numpy() for out in result] if model.heads else result.numpy()
    arrays = np.load(fixture / "outputs.npz")
    compared = {f"L{head.index}": out for head, out in zip(model.heads, outputs)} if model.heads \
        else {"final": outputs}
    compared = {key: out for key, out in compared.items() if key in arrays.files}
    assert compared, f"{fixture.name}: Darknet's outputs hold neither a head's nor the final layer's"
    for key, out in compared.items():
        ours = out[0].reshape(arrays[key].shape)
        assert close_to_darknet(ours, arrays[key]), f"{key}: max diff {np.abs(ours - arrays[key]).max():.3g}"
