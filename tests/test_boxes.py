"""darkpy.boxes: decoding, NMS and console lines against C Darknet's own detections (oracle), fed with
Darknet's layer outputs (outputs.npz) so that no model is involved: every number must be bit-identical."""
import json
import math

import numpy as np
import pytest
import torch

from conftest import ORACLE, SHARED, require
from darkpy.boxes import BoxSet, Detection, correct_boxes, detection_lines, get_network_boxes, nms_sort
from helpers.heads import gaussian_yolo_head, region_head, yolo_head
from helpers.torch_boxes import box_ciou, box_diou, box_giou, box_iou

F = np.float32
REAL = ORACLE / "real-yolov3-tiny"
FOLDERS = ["astronaut", "chelsea", "coffee", "dog", "dog_letterbox", "eagle", "giraffe", "grace_hopper", "horses",
           "person", "rocket", "scream"]
# detections.json at thresh 0.25 for every folder; detections_map.json (thresh 0.005, hier 0) where darknet made one
CASES = [(f, "detections.json") for f in FOLDERS] + [(f, "detections_map.json") for f in FOLDERS
                                                       if f != "dog_letterbox"]


def _names():
    return (require(SHARED / "weights" / "coco.names")).read_text().splitlines()


def _oracle_heads(meta: dict, outputs) -> list:
    return [yolo_head(layer["classes"], outputs[f"L{layer['layer_index']}_anchors"], layer["scale_x_y"],
                      layer["new_coords"], layer["beta_nms"], index=layer["layer_index"])
            for layer in meta["yolo_layers"]]


def _decode_oracle(folder: str, file: str):
    base = require(REAL / folder)
    meta = json.loads(require(base / file).read_text())
    outputs = np.load(base / "outputs.npz")
    heads = _oracle_heads(meta, outputs)
    pre = get_network_boxes([outputs[f"L{h.index}"] for h in heads], heads, tuple(meta["net_wh"]),
                            tuple(meta["orig_image_wh"]), meta["thresh"], meta["hier_thresh"],
                            bool(meta["letter_box"]))
    return meta, pre


def _as_arrays(entries):
    boxes = np.array([e["bbox_xywh_rel"] for e in entries], np.float64).astype(F).reshape(-1, 4)
    objectness = np.array([e["objectness"] for e in entries], np.float64).astype(F)
    probs = [{int(k): F(v) for k, v in e["probs_nonzero"].items()} for e in entries]
    return boxes, objectness, probs


def _nonzero(row: np.ndarray) -> dict:
    return {int(j): row[j] for j in np.flatnonzero(row)}


# ============================================================================ against the oracle

@pytest.mark.parametrize("folder,file", CASES)
def test_decode_and_nms_equal_darknet(folder, file):
    """pre_nms (get_network_boxes, in Darknet's order) and post_nms (do_nms_sort, Darknet's final order, boxes
    with a non-zero probability) are bit-identical: boxes, objectness and every probability."""
    meta, pre = _decode_oracle(folder, file)
    boxes, objectness, probs = _as_arrays(meta["pre_nms"])
    assert len(pre) == len(boxes)
    assert np.array_equal(pre.xywh, boxes) and np.array_equal(pre.objectness, objectness)
    assert [_nonzero(row) for row in pre.probs] == probs

    detections = nms_sort(pre, meta["nms"]).detections()
    boxes, objectness, probs = _as_arrays(meta["post_nms"])
    assert len(detections) == len(boxes)
    ours = np.array([[d.x, d.y, d.w, d.h] for d in detections], np.float64).astype(F).reshape(-1, 4)
    assert np.array_equal(ours, boxes)
    assert [F(d.objectness) for d in detections] == list(objectness)
    assert [_nonzero(d.probs) for d in detections] == probs


@pytest.mark.parametrize("folder,file", CASES)
def test_console_lines_equal_darknet(folder, file):
    """draw_detections_v3 with -ext_output: the exact text Darknet printed (thresh 0.25, and 0.005 for map)."""
    meta, pre = _decode_oracle(folder, file)
    detections = nms_sort(pre, meta["nms"]).detections()
    width, height = meta["orig_image_wh"]
    lines = detection_lines(detections, _names(), width, height, meta["thresh"], ext_output=True)
    assert lines == meta["cli_ext_output_lines"]
    short = detection_lines(detections, _names(), width, height, meta["thresh"], ext_output=False)
    assert short == [line.split("\t")[0] for line in meta["cli_ext_output_lines"]]


def test_the_oracle_covers_letterbox_and_multi_class_lines():
    """Guard that the cases above are exercised: a letterboxed image and a box printed under two classes."""
    meta = json.loads((require(REAL / "dog_letterbox") / "detections.json").read_text())
    assert meta["letter_box"] == 1 and meta["orig_image_wh"] == [768, 576]
    lines = json.loads((REAL / "dog" / "detections.json").read_text())["cli_ext_output_lines"]
    assert lines[2].startswith("car: 71%") and lines[3].startswith("truck: 42%")
    assert lines[2].split("\t")[1] == lines[3].split("\t")[1]


def test_fast_math_reciprocal_of_correct_yolo_boxes():
    """Darknet's -Ofast build computes 1/1.0 as 0.99999994 in correct_yolo_boxes: w and h one ulp down."""
    boxes = np.array([[0.5, 0.5, 0.25, 0.75]], F)
    corrected = correct_boxes(boxes, (640, 480), (416, 416), letter_box=False)
    assert corrected[0, 0] == F(0.5) and corrected[0, 1] == F(0.5)
    assert corrected[0, 2] == np.nextafter(F(0.25), F(0)) and corrected[0, 3] == np.nextafter(F(0.75), F(0))
    # letterbox 640x480 -> 416x312: x unchanged (ratio 1), y = (y - 52/416) / 0.75, h * (1/0.75)
    corrected = correct_boxes(np.array([[0.5, 0.25, 0.5, 0.375]], F), (640, 480), (416, 416), letter_box=True)
    assert corrected[0, 1] == F((0.25 - 52 / 416) / 0.75)
    assert corrected[0, 3] == F(0.375) * (F(1) / F(0.75))


# ============================================================================ other heads

def _zoo_outputs(name: str, layer: int):
    outputs = np.load(require(ORACLE / name / "outputs.npz"))
    return outputs[f"L{layer}"], outputs[f"L{layer}_anchors"]


def test_region_decode_on_yolov2_output():
    """[region] on Darknet's yolov2 output (random weights): every cell and anchor gives a box with objectness
    1, in cell-major order; box and probabilities recomputed here from get_region_box's formula."""
    output, anchors = _zoo_outputs("yolov2", 31)
    assert output.shape == (5, 85, 10, 10)
    head = region_head(80, anchors, index=31)
    boxes = head.decode(output, (320, 320), (768, 576), thresh=0.005, hier=0.5, letter_box=False)
    assert len(boxes) == 10 * 10 * 5 and (boxes.objectness == 1).all()
    assert ((boxes.xywh[:, :2] >= 0) & (boxes.xywh[:, :2] <= 1)).all() and (boxes.xywh[:, 2:] > 0).all()
    for row, col, anchor in [(0, 0, 0), (3, 7, 2), (9, 9, 4)]:
        i = (row * 10 + col) * 5 + anchor  # get_region_boxes: index = cell * l.n + n
        entries = output[anchor, :, row, col]
        sigmoid = 1 / (1 + np.exp(-entries[:2].astype(np.float64)))
        expected = [(col + sigmoid[0]) / 10, (row + sigmoid[1]) / 10,
                    math.exp(entries[2]) * anchors[anchor, 0] / 10, math.exp(entries[3]) * anchors[anchor, 1] / 10]
        assert np.allclose(boxes.xywh[i], expected, rtol=1e-6, atol=1e-7)
        probs = entries[4] * entries[5:]
        assert np.array_equal(boxes.probs[i], np.where(probs > F(0.005), probs, 0).astype(F))
    # softmax classes times a logistic objectness: every probability is below 1
    assert boxes.probs.max() < 1 and np.isclose(output[:, 5:].sum(axis=1), 1, atol=1e-5).all()


def test_new_coords_decode_on_yolov4_csp_output():
    """new_coords=1 (yolov4-csp, scale_x_y=2): w = tw²·4·anchor/netw, no exp; x, y as left by Darknet."""
    from darkpy.model import Darknet
    model = Darknet.from_cfg(require(ORACLE / "yolov4-csp" / "cfg.cfg"))
    head = model.heads[0]
    assert head.new_coords == 1 and head.scale_x_y == 2.0 and head.nms_kind == "diounms"
    output, anchors = _zoo_outputs("yolov4-csp", head.index)
    assert np.array_equal(head.anchors, anchors)
    net_wh = (model.width, model.height)
    boxes = head.decode(output, net_wh, net_wh, thresh=0.3, letter_box=False)
    a, _, rows, cols = output.shape
    keep = np.argwhere(output[:, 4] > F(0.3))
    assert len(boxes) == len(keep) > 0
    cells_first = sorted(keep.tolist(), key=lambda t: (t[1], t[2], t[0]))  # cell by cell, anchors within
    for k, (n, row, col) in enumerate(cells_first[:50]):
        e = output[n, :, row, col]
        expected = [(col + e[0]) / cols, (row + e[1]) / rows, e[2] * e[2] * 4 * anchors[n, 0] / net_wh[0],
                    e[3] * e[3] * 4 * anchors[n, 1] / net_wh[1]]
        assert np.allclose(boxes.xywh[k, :2], expected[:2], rtol=0, atol=1e-7)
        # w, h: then one ulp down from correct_yolo_boxes' fast-math reciprocal
        assert np.allclose(boxes.xywh[k, 2:], expected[2:], rtol=3e-7, atol=0)


def test_gaussian_yolo_decode():
    """[Gaussian_yolo]: x, σx, y, σy, w, σw, h, σh, obj, classes; prob = obj·cls·(1 - mean σ)."""
    output = np.zeros((1, 9 + 2, 1, 2), F)
    output[0, :, 0, 1] = [0.5, 0.1, 0.25, 0.2, 0.0, 0.3, math.log(2), 0.4, 0.8, 0.5, 0.9]
    output[0, 8, 0, 0] = 0.1  # below thresh
    head = gaussian_yolo_head(2, np.array([[32, 16]], F))
    boxes = head.decode(output, (64, 64), (64, 64), thresh=0.25, letter_box=False)
    assert len(boxes) == 1
    assert np.allclose(boxes.xywh[0], [(1 + 0.5) / 2, 0.25, 0.5, 0.5], rtol=3e-7)
    assert np.allclose(boxes.uncertainty[0], [0.1, 0.2, 0.3, 0.4])
    assert np.allclose(boxes.probs[0], [0.8 * 0.5 * 0.75, 0.8 * 0.9 * 0.75], rtol=1e-6)


# ============================================================================ box helpers

def _box(*values):
    return np.array(values, F)


def test_iou_variants_on_known_boxes():
    a, b = _box(0.5, 0.5, 0.2, 0.2), _box(0.6, 0.5, 0.2, 0.2)  # overlap 0.1 x 0.2
    assert math.isclose(box_iou(a, b), 0.02 / 0.06, rel_tol=1e-6)
    enclosing = 0.3 * 0.2
    assert math.isclose(box_giou(a, b), 0.02 / 0.06 - (enclosing - 0.06) / enclosing, rel_tol=1e-6)
    diagonal = 0.3 ** 2 + 0.2 ** 2
    assert math.isclose(box_diou(a, b), 1 / 3 - (0.01 / diagonal) ** 0.6, rel_tol=1e-5)
    assert math.isclose(box_diou(a, b, beta=1.0), 1 / 3 - 0.01 / diagonal, rel_tol=1e-5)
    assert math.isclose(box_ciou(a, b), 1 / 3 - 0.01 / diagonal, rel_tol=1e-5)  # same aspect: no v term
    tall = _box(0.5, 0.5, 0.1, 0.4)
    v = 4 / math.pi ** 2 * (math.atan(0.25) - math.atan(1.0)) ** 2
    iou = float(box_iou(a, tall))
    assert math.isclose(box_ciou(a, tall), iou - v * v / (1 - iou + v + 1e-6), rel_tol=1e-5)
    far = _box(0.9, 0.9, 0.1, 0.1)
    assert box_iou(a, far) == 0 and box_giou(a, far) < 0
    assert box_iou(a, _box(0.5, 0.5, 0.0, 0.0)) == 0  # box_iou: 0 when the intersection is 0
    # a box with itself: 1 up to float rounding (the intersection comes from the edges, 0.6 - 0.4 in float)
    for function in (box_iou, box_giou, box_diou, box_ciou):
        assert math.isclose(function(a, a), 1, rel_tol=1e-6)


def test_iou_helpers_work_on_torch_with_gradients():
    rng = np.random.default_rng(3)
    a = np.concatenate([rng.random((64, 2)), rng.random((64, 2)) * 0.5 + 0.01], axis=1).astype(F)
    b = np.concatenate([rng.random((64, 2)), rng.random((64, 2)) * 0.5 + 0.01], axis=1).astype(F)
    for function in (box_iou, box_giou, box_diou, box_ciou):
        ta = torch.tensor(a, requires_grad=True)
        result = function(ta, torch.tensor(b))
        assert np.allclose(result.detach().numpy(), function(a, b), atol=1e-6)
        result.sum().backward()
        assert torch.isfinite(ta.grad).all() and ta.grad.abs().sum() > 0
    # degenerate cases: an empty box, and two boxes with the same centre (d = 0 under the ^0.6 of box_diou)
    for first, second in [([0.0, 0, 0, 0], [0.0, 0, 0, 1e-3]), ([0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.3])]:
        for function in (box_iou, box_giou, box_diou, box_ciou):
            box = torch.tensor([first], dtype=torch.float32, requires_grad=True)
            value = function(box, torch.tensor([second]))
            value.sum().backward()
            assert torch.isfinite(value).all() and torch.isfinite(box.grad).all(), function.__name__


# ============================================================================ NMS

def _set(boxes, probs, objectness=None):
    boxes = np.array(boxes, F)
    probs = np.array(probs, F)
    objectness = np.ones(len(boxes), F) if objectness is None else np.array(objectness, F)
    return BoxSet(boxes, objectness, probs)


def test_nms_per_class_and_strict_threshold():
    boxes = [[0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]]
    result = nms_sort(_set(boxes, [[0.9, 0.0], [0.8, 0.7], [0.6, 0.0]]), 0.45)
    # class 0: box 1 overlaps box 0 (IoU 0.82) -> suppressed; class 1 keeps box 1 (alone in its class)
    by_x = {round(float(r[0]), 3): p for r, p in zip(result.xywh, result.probs)}
    assert by_x[0.52][0] == 0 and by_x[0.52][1] == F(0.7)
    assert by_x[0.5][0] == F(0.9) and by_x[0.9][0] == F(0.6)
    # IoU exactly equal to the threshold is kept (Darknet suppresses on IoU > thresh)
    iou = float(box_iou(np.array(boxes[0], F), np.array(boxes[1], F)))
    kept = nms_sort(_set(boxes[:2], [[0.9], [0.8]]), iou)
    assert (kept.probs[:, 0] > 0).sum() == 2


def test_nms_moves_zero_objectness_to_the_end():
    result = nms_sort(_set([[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]],
                           [[0.3], [0.0], [0.9]], objectness=[0.5, 0.0, 0.9]), 0.45)
    assert result.objectness.tolist()[-1] == 0
    assert result.probs[:2, 0].tolist() == [pytest.approx(0.9), pytest.approx(0.3)]


def test_diou_nms_kinds():
    """Two equal-size boxes with IoU 0.5 whose centres are apart: plain NMS at 0.45 suppresses, diounms
    (IoU - (d²/c²)^0.6) and greedynms do not, and a lower threshold makes them suppress again."""
    boxes = [[0.4, 0.5, 0.3, 0.3], [0.5, 0.5, 0.3, 0.3]]
    probs = [[0.9], [0.8]]
    a, b = np.array(boxes, F)
    assert math.isclose(box_iou(a, b), 0.5, rel_tol=1e-6)
    assert nms_sort(_set(boxes, probs), 0.45, "default").probs[1, 0] == 0
    diou = float(box_diou(a, b, float(F(0.6))))
    assert diou < 0.45
    assert nms_sort(_set(boxes, probs), 0.45, "diounms", 0.6).probs[1, 0] > 0
    assert nms_sort(_set(boxes, probs), 0.45, "greedynms").probs[1, 0] > 0
    assert nms_sort(_set(boxes, probs), diou - 1e-3, "diounms", 0.6).probs[1, 0] == 0
    assert nms_sort(_set(boxes, probs), 0.45, "cornersnms").probs[1, 0] == 0  # plain IoU in diounms_sort
    with pytest.raises(ValueError, match="nms_kind"):
        nms_sort(_set(boxes, probs), 0.45, "softnms")


# ============================================================================ console lines

def _detection(x, y, w, h, probs):
    return Detection(float(F(x)), float(F(y)), float(F(w)), float(F(h)), 1.0, np.array(probs, F))


def test_lines_use_c_rounding():
    """round() of the pixel values rounds halves away from zero; %.0f of the percentage rounds halves to even
    (glibc); prob*100 is a float product."""
    names = ["a", "b"]
    det = _detection(0.25, 0.25, 0.25, 0.5, [0.125, 0.375])  # left = 0.125*20 = 2.5 -> 3, top = 0 -> 0
    lines = detection_lines([det], names, 20, 20, thresh=0.1)
    assert lines == ["b: 38%\t(left_x:    3   top_y:    0   width:    5   height:   10)",
                     "a: 12%\t(left_x:    3   top_y:    0   width:    5   height:   10)"]
    negative = _detection(0.0, 0.5, 0.25, 0.5, [0.5, 0.0])  # left = -0.125*20 = -2.5 -> -3
    assert detection_lines([negative], names, 20, 20)[0].endswith("(left_x:   -3   top_y:    5   width:    5   "
                                                                  "height:   10)")
    tiny = _detection(-0.01, 0.5, 0.01, 0.5, [0.5, 0.0])  # left = -0.3 -> round gives -0.0, printed "-0"
    assert "(left_x:   -0 " in detection_lines([tiny], names, 20, 20)[0]


def test_lines_sorted_by_left_edge_and_dont_show():
    names = ["dont_show_me", "cat", "dog"]
    right = _detection(0.8, 0.5, 0.2, 0.2, [0.9, 0.0, 0.3])
    left = _detection(0.3, 0.5, 0.2, 0.2, [0.0, 0.6, 0.0])
    hidden = _detection(0.1, 0.5, 0.1, 0.1, [0.99, 0.0, 0.0])
    lines = detection_lines([right, left, hidden], names, 100, 100, ext_output=False)
    # the dont_show class is never the printed best class; a box with only dont_show is not printed
    assert lines == ["cat: 60%", "dog: 30%", "dont_show_me: 90%"]
    assert detection_lines([], names, 100, 100) == []
