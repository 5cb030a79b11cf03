"""darkpy against OpenCV's Darknet importer (cv2.dnn.readNetFromDarknet), a second implementation of the
same cfg/.weights format written independently of both C Darknet and darkpy.

What is compared, for zoo cfgs from ../shared/darknet/cfg ([net] batch=1, some at a smaller input size to keep
the test fast) with seeded random weights written by darkpy's save_weights, and for cfg/yolov3-tiny.cfg with
the released COCO weights on a photo:
- the output of every layer but the detection heads and [cost]: OpenCV builds Darknet layer i from parts
  named `<kind>_i` (conv_i, bn_i, pool_i, concat_i, shortcut_i, ...) plus, for a non-linear activation,
  `<activation>_{i+1}` (the leaky of layer 3 is leaky_4); the last part built for layer i holds its output.
  Tolerance: max|OpenCV - darkpy| <= 1e-4 * max|darkpy| + 1e-6 (the oracle's, as both fold batch norm);
- each [yolo]/[region] head through OpenCV's decoded rows (one per cell and anchor: centre x, y, w, h relative
  to the input, objectness, objectness x class score where above the layer's `thresh` (0.2 for [yolo], the
  cfg's 0.6 for these [region]s), else 0), against darkpy's own decoder (the head's decode). For
  [region] OpenCV also runs Darknet's per-class NMS (do_nms_sort) at IoU 0.4 inside the layer, so darkpy's
  nms_sort at 0.4 is applied before comparing.

Batch-norm epsilon: Darknet and darkpy divide by sqrt(var + 1e-5), OpenCV's importer by sqrt(var + 1e-6).
Choosing variances large enough to hide that would leave the small-variance channels real networks have
untested (the released yolov3-tiny has variances down to 0.013, where the difference is 3e-4 relative).
Instead OpenCV reads its own copy of the weights with every running variance raised by exactly 1e-5 - 1e-6, so
both divide by the same number, and darkpy runs unchanged. test_opencv_batch_norm_epsilon checks the 1e-6.

Seeded weights: darkpy's initial convolution weights (seeded), random batch-norm scales and biases, and
running statistics calibrated on the test input (one train-mode pass with momentum 1), so that activations
neither vanish nor blow up through deep networks, the variances come out small (down to ~0.01), and the
heads' scores spread across OpenCV's class threshold. Each [region] head's class filters are scaled up so
that its softmax peaks above thresh=0.6.

OpenCV settings: Winograd off (its 3x3 Winograd convolution is about 1e-4 relative away from plain float32
arithmetic, which adds up over deep networks) and layer fusion off (a fused batch norm or activation no
longer holds its own output, so asking for it by name returns another blob). Networks deeper than these
(yolov4, yolov4-csp) are left out: with random weights their float32 rounding alone, darkpy's or OpenCV's
against a float64 run, reaches 2-4e-4 relative in the last layers.
"""
import re
import warnings
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest
import torch

from conftest import ORACLE, REPO, SHARED, require
from darkpy.boxes import nms_sort
from darkpy.cfg import CfgWarning
from darkpy.layers import conv
from darkpy.model import Darknet

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromDarknet"):
    pytest.skip(f"OpenCV {cv2.__version__} has no cv2.dnn.readNetFromDarknet (OpenCV 5 removed the Darknet "
                "importer; opencv-python-headless<5 has it)", allow_module_level=True)

ZOO_DIR = SHARED / "darknet" / "cfg"
DARKNET_BN_EPS = 1e-5
OPENCV_BN_EPS = 1e-6
# The activations OpenCV's importer adds as separate layers (named after the next layer index).
OPENCV_ACTIVATIONS = {"leaky", "relu", "mish", "swish", "logistic", "tanh", "elu", "selu", "gelu", "hardswish",
                      "hardsigmoid", "relu6"}
OPENCV_YOLO_THRESH = 0.2  # the importer's default `thresh` for [yolo] (the cfgs here give none)
OPENCV_REGION_NMS = 0.4  # the NMS threshold OpenCV's [region] layer applies to its rows
REGION_CLASS_GAIN = 8.0

# zoo cfg -> input size for the comparison (None: the cfg's own)
ZOO_CASES = {
    "yolov3-tiny": None,
    "yolov3-tiny-prn": None,  # shortcuts across different channel counts (PRN)
    "yolov4-tiny": None,  # grouped routes, scale_x_y
    "yolov3": 256,
    "yolov2-tiny": None,  # [region]
    "yolov2": 256,  # [reorg]
    "darknet19": None,  # classifier: avgpool, softmax, cost
    "yolov7-tiny": 256,  # new_coords=1, logistic convs, SPP max-pools
    "efficientnet_b0": None,  # swish, depthwise convs, scale_channels, dropout
}


# ---- preparing cfgs and weights ------------------------------------------------------------------------------
def with_net_values(text: str, **values) -> str:
    """The cfg text with these keys set in its [net] section (replaced where present, else added)."""
    start = re.search(r"(?m)^[ \t]*\[(net|network)\][ \t]*$", text).end()
    following = re.search(r"(?m)^\s*\[", text[start:])
    end = start + following.start() if following else len(text)
    net = text[start:end]
    for key, value in values.items():
        pattern = re.compile(rf"(?m)^[ \t]*{key}[ \t]*=.*$")
        net = pattern.sub(f"{key}={value}", net) if pattern.search(net) else f"\n{key}={value}" + net
    return text[:start] + net + text[end:]


def zoo_cfg(name: str, size: Optional[int], tmp_path: Path) -> Path:
    text = require(ZOO_DIR / f"{name}.cfg").read_text()
    values = {"batch": 1, "subdivisions": 1}
    if size:
        values.update(width=size, height=size)
    path = tmp_path / f"{name}.cfg"
    path.write_text(with_net_values(text, **values))
    return path


def build(path: Path) -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CfgWarning)  # zoo cfgs carry keys Darknet itself ignores
        return Darknet.from_cfg(path)


def batch_norm_layers(model: Darknet) -> list:
    return [layer for layer in model.layers
            if getattr(layer, "batch_normalize", 0) and getattr(layer, "share_index", None) is None]


@torch.no_grad()
def seed_weights(model: Darknet, calibration: torch.Tensor) -> None:
    """Random batch-norm scales/biases; running statistics set to those of `calibration` (see the docstring)."""
    generator = torch.Generator().manual_seed(3)
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.bn_weight.copy_(torch.empty_like(layer.bn_weight).uniform_(0.5, 1.5, generator=generator))
        layer.bias.copy_(torch.empty_like(layer.bias).uniform_(-0.1, 0.1, generator=generator))
    rolling_factor = conv.GPU_ROLLING_FACTOR
    conv.GPU_ROLLING_FACTOR = 1.0  # running statistics := this batch's
    try:
        model.train()
        model(calibration)
    finally:
        conv.GPU_ROLLING_FACTOR = rolling_factor
    for head in model.heads:
        if head.type == "region":
            sharpen_region_classes(model, head)
    model.eval()


def sharpen_region_classes(model: Darknet, head) -> None:
    conv = model.layers[head.index - 1]
    entries = 4 + 1 + head.classes
    for anchor in range(len(head.mask)):
        rows = slice(anchor * entries + 5, (anchor + 1) * entries)
        conv.weight[rows] *= REGION_CLASS_GAIN
        conv.bias[rows] *= REGION_CLASS_GAIN


@torch.no_grad()
def save_for_opencv(model: Darknet, path: Path) -> Path:
    """The model's weights with each running variance raised by 1e-5 - 1e-6 (OpenCV adds 1e-6, not 1e-5)."""
    layers = batch_norm_layers(model)
    saved = [layer.running_var.clone() for layer in layers]
    try:
        for layer in layers:
            layer.running_var += DARKNET_BN_EPS - OPENCV_BN_EPS
        model.save_weights(path)
    finally:
        for layer, var in zip(layers, saved):
            layer.running_var.copy_(var)
    return path


def opencv_net(cfg: Path, weights: Path):
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableWinograd(False)
    net.enableFusion(False)
    return net


# ---- comparing -----------------------------------------------------------------------------------------------
def opencv_layer_outputs(net) -> Dict[int, str]:
    """Darknet layer index -> name of the last OpenCV layer built for it (see the module docstring)."""
    owner: Dict[int, str] = {}
    for name in net.getLayerNames():
        kind, _, number = name.rpartition("_")
        if not number.isdigit():
            continue  # e.g. detection_out, the [region] head's output
        owner[int(number) - (1 if kind in OPENCV_ACTIVATIONS else 0)] = name
    return owner


def assert_close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    diff = float(np.abs(ours - theirs).max())
    scale = float(np.abs(ours).max())
    assert diff <= 1e-4 * scale + 1e-6, f"{what}: max diff {diff:.3g} (max |darkpy| {scale:.3g})"


def head_output_name(head) -> str:
    return "detection_out" if head.type == "region" else f"yolo_{head.index}"


def region_boxes_after_nms(boxes):
    """RegionLayer.decode's boxes (every cell and anchor, in row order) after nms_sort, put back in row order.

    nms_sort returns the boxes in Darknet's sorted order; the row index rides along in the `uncertainty`
    field, which [region] boxes do not use."""
    boxes.uncertainty = np.repeat(np.arange(len(boxes), dtype=np.float32)[:, None], 4, axis=1)
    sorted_boxes = nms_sort(boxes, OPENCV_REGION_NMS)
    back = np.argsort(sorted_boxes.uncertainty[:, 0])
    return sorted_boxes.take(back)


def opencv_class_thresh(head) -> float:
    """The class-score threshold of OpenCV's layer: the cfg's `thresh` for [region], 0.2 for [yolo]."""
    if head.type == "region":
        return float(head.options.get("thresh", OPENCV_YOLO_THRESH))
    return OPENCV_YOLO_THRESH


def compare_head(model: Darknet, head, output: np.ndarray, rows: np.ndarray) -> int:
    """One head's OpenCV rows against darkpy's decoder; returns how many class scores are above the threshold."""
    anchors, entries, grid_h, grid_w = output.shape
    assert rows.shape == (grid_h * grid_w * anchors, entries), f"head {head.index}: {rows.shape}"
    thresh = opencv_class_thresh(head)
    net_wh = (model.width, model.height)
    # Darknet's order of boxes is OpenCV's order of rows: cell by cell, the anchors within a cell.
    cells = output.transpose(2, 3, 0, 1).reshape(-1, entries)
    assert_close(cells[:, 4], rows[:, 4], f"head {head.index} objectness")
    # Scores within float rounding of the threshold may be kept by one side and dropped by the other.
    clear = np.abs(cells[:, 4:5] * cells[:, 5:] - thresh) > 1e-4
    boxes = head.decode(output, net_wh, net_wh, thresh=thresh)
    if head.type == "region":  # every cell and anchor
        boxes = region_boxes_after_nms(boxes)
        kept = np.ones(len(rows), bool)
    else:  # YoloLayer.decode keeps the boxes with objectness > thresh; OpenCV's other rows must score 0
        kept = cells[:, 4] > thresh
        assert not rows[~kept, 5:][clear[~kept]].any(), f"head {head.index}: scores where objectness <= thresh"
    theirs = rows[kept]
    assert_close(boxes.xywh, theirs[:, :4], f"head {head.index} boxes")
    assert_close(np.where(clear[kept], boxes.probs, 0), np.where(clear[kept], theirs[:, 5:], 0),
                 f"head {head.index} class scores")
    return int((boxes.probs > 0).sum())


def compare_with_opencv(model: Darknet, cfg: Path, opencv_weights: Path, x: torch.Tensor) -> int:
    """Every layer and head of `model` against OpenCV on input x; returns the count of class scores above
    OpenCV's threshold (so a caller can insist that the heads were really exercised)."""
    net = opencv_net(cfg, opencv_weights)
    owner = opencv_layer_outputs(net)
    heads = {head.index for head in model.heads}
    compared = [i for i, layer in enumerate(model.layers) if i not in heads and layer.type != "cost"]
    missing = [i for i in compared if i not in owner]
    assert not missing, f"no OpenCV layer for darknet layers {missing}"

    with torch.inference_mode():
        ours = model.eval().forward_layers(x, keep_all=True)
    net.setInput(x.numpy())
    theirs = net.forward([owner[i] for i in compared] + [head_output_name(h) for h in model.heads])
    for i, blob in zip(compared, theirs):
        expected = ours[i][0].numpy()
        assert blob.size == expected.size, f"layer {i} ({model.layers[i].type}): {blob.shape} vs {expected.shape}"
        assert_close(expected, blob.reshape(expected.shape), f"layer {i} ({model.layers[i].type}, {owner[i]})")
    head_rows = theirs[len(compared):]
    return sum(compare_head(model, head, ours[head.index][0].numpy(), rows)
               for head, rows in zip(model.heads, head_rows))


# ---- tests ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ZOO_CASES))
def test_zoo_cfg_matches_opencv(name, tmp_path):
    cfg = zoo_cfg(name, ZOO_CASES[name], tmp_path)
    torch.manual_seed(0)
    model = build(cfg)
    shape = (model.channels, model.height, model.width)
    seed_weights(model, torch.rand(2, *shape, generator=torch.Generator().manual_seed(1)))
    smallest_var = min(float(layer.running_var.min()) for layer in batch_norm_layers(model))
    assert smallest_var < 0.1  # the epsilon shift is really exercised (9e-6 / 0.1 > 1e-4 / 2)
    opencv_weights = save_for_opencv(model, tmp_path / f"{name}.opencv.weights")
    x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(2))
    above = compare_with_opencv(model, cfg, opencv_weights, x)
    if model.heads:
        assert above > 0, "no class score above OpenCV's threshold: the head comparison would be empty"


def test_released_yolov3_tiny_matches_opencv(tmp_path):
    weights = REPO / "weights" / "yolov3-tiny.weights"
    if not weights.exists():
        weights = require(SHARED / "weights" / "yolov3-tiny.weights")
    photo = require(ORACLE / "real-yolov3-tiny" / "dog" / "input.npy")
    cfg = REPO / "cfg" / "yolov3-tiny.cfg"
    model = build(cfg)
    assert model.load_weights(weights).complete
    opencv_weights = save_for_opencv(model, tmp_path / "yolov3-tiny.opencv.weights")
    x = torch.from_numpy(np.load(photo))[None]
    above = compare_with_opencv(model, cfg, opencv_weights, x)
    assert above >= 3  # the dog photo: dog, bicycle, truck at least


def test_opencv_batch_norm_epsilon(tmp_path):
    """OpenCV normalises with var + 1e-6: on the unshifted weights its output differs from darkpy's by exactly
    sqrt(var + 1e-5) / sqrt(var + 1e-6) per channel; on the shifted ones it equals darkpy's."""
    cfg = tmp_path / "bn.cfg"
    cfg.write_text("[net]\nbatch=1\nwidth=8\nheight=8\nchannels=3\n\n"
                   "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\nstride=1\npad=1\nactivation=linear\n")
    torch.manual_seed(0)
    model = build(cfg)
    variances = torch.tensor([1e-6, 1e-5, 1e-4, 1.0])
    with torch.no_grad():
        conv = model.layers[0]
        conv.running_var.copy_(variances)
        conv.running_mean.uniform_(-0.2, 0.2)
        conv.bias.uniform_(-0.1, 0.1)
    model.save_weights(tmp_path / "plain.weights")
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = model.eval()(x)[0].numpy()
    beta = conv.bias.detach().numpy()[:, None, None]

    net = opencv_net(cfg, tmp_path / "plain.weights")
    net.setInput(x.numpy())
    plain = net.forward()[0]
    ratio = (plain - beta) / (ours - beta)
    variances = variances.numpy()
    expected = np.sqrt((variances + DARKNET_BN_EPS) / (variances + OPENCV_BN_EPS))
    np.testing.assert_allclose(np.median(ratio.reshape(4, -1), axis=1), expected, rtol=1e-3)

    net = opencv_net(cfg, save_for_opencv(model, tmp_path / "shifted.weights"))
    net.setInput(x.numpy())
    assert_close(ours, net.forward()[0], "shifted variances")
