"""Boxes as Darknet computes them: head decoding, IoU variants, NMS and the console lines of `detector test`.

Reproduced from AlexeyAB darknet:
- src/yolo_layer.c `get_yolo_detections`, `get_yolo_box`, `correct_yolo_boxes`;
- src/gaussian_yolo_layer.c `get_gaussian_yolo_detections`, `correct_gaussian_yolo_boxes`;
- src/region_layer.c `get_region_boxes` and src/network.c `custom_get_region_detections` (the path
  `get_network_boxes` takes for [region]);
- src/box.c `box_iou`, `box_giou`, `box_diou`, `box_diounms`, `box_ciou`, `do_nms_sort`, `diounms_sort`;
- src/image.c `draw_detections_v3` / `get_actual_detections` (console output).

Every step runs in float32 with the C operation order (and in float64 where C calls exp/pow on doubles), so
boxes decoded from Darknet's own layer outputs equal Darknet's to the last bit.

A box is (x, y, w, h): centre and size, relative to the image (0..1), as Darknet's `box`.
The IoU helpers take arrays of shape (..., 4) and accept numpy arrays or torch tensors (differentiable,
for the training loss); for numpy float32 input they reproduce Darknet's float results exactly.
"""
from dataclasses import dataclass
from math import pi
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .image import letterbox_size

Array = Union[np.ndarray, torch.Tensor]
F32 = np.float32

NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")
DARKNET_DIOU_EXPONENT = 0.6  # box_diou's hard-coded exponent on the centre-distance term (greedynms)


# ============================================================================ array helpers (numpy or torch)

def _is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


def _minimum(a: Array, b: Array) -> Array:
    return torch.minimum(a, b) if _is_torch(a) else np.minimum(a, b)


def _maximum(a: Array, b: Array) -> Array:
    return torch.maximum(a, b) if _is_torch(a) else np.maximum(a, b)


def _where(condition: Array, a: Array, b: Array) -> Array:
    if _is_torch(condition):
        return torch.where(condition, a, b)
    return np.where(condition, a, b).astype(np.result_type(a, b), copy=False)


def _atan(x: Array) -> Array:
    return torch.atan(x) if _is_torch(x) else np.arctan(x)


def _pow_double(base: Array, exponent: float) -> Array:
    """C's `float r = pow(base, exponent)`: computed in double, rounded to the base's type (numpy)."""
    if _is_torch(base):
        # x^0.6 has an infinite slope at 0 (boxes with the same centre): keep the gradient finite there
        positive = base > 0
        return torch.where(positive, torch.pow(torch.where(positive, base, torch.ones_like(base)), exponent),
                           torch.zeros_like(base))
    return np.power(base.astype(np.float64), exponent).astype(base.dtype)


def _safe_denominator(x: Array) -> Array:
    # where(x == 0, 1, x): keeps torch's backward free of 0/0 in the branch that where() discards.
    return _where(x == 0, x * 0 + 1, x)


# ============================================================================ box geometry (src/box.c)

def _edges(box: Array) -> Tuple[Array, Array, Array, Array]:
    """left, right, top, bottom of centre-size boxes (overlap(): x - w/2, x + w/2)."""
    x, y, w, h = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    return x - w / 2, x + w / 2, y - h / 2, y + h / 2


def box_intersection(a: Array, b: Array) -> Array:
    """Intersection area (box_intersection): 0 when either overlap is negative."""
    al, ar, at, ab = _edges(a)
    bl, br, bt, bb = _edges(b)
    w = _minimum(ar, br) - _maximum(al, bl)
    h = _minimum(ab, bb) - _maximum(at, bt)
    return _where((w < 0) | (h < 0), w * 0, w * h)


def box_union(a: Array, b: Array) -> Array:
    """Union area (box_union): a.w*a.h + b.w*b.h - intersection."""
    return a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - box_intersection(a, b)


def box_iou(a: Array, b: Array) -> Array:
    """IoU (box_iou); 0 where the intersection or the union is 0."""
    # An untrained network's boxes can be infinite (exp overflow); their IoU is NaN, which compares false
    # everywhere, as in Darknet. Not worth a numpy warning per call.
    with np.errstate(invalid="ignore", over="ignore"):
        inter = box_intersection(a, b)
        union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter  # box_union, reusing the intersection
        degenerate = (inter == 0) | (union == 0)
        return _where(degenerate, inter * 0, inter / _safe_denominator(union))


def _enclosing(a: Array, b: Array) -> Tuple[Array, Array]:
    """Width and height of the smallest box enclosing both (box_c)."""
    al, ar, at, ab = _edges(a)
    bl, br, bt, bb = _edges(b)
    return _maximum(ar, br) - _minimum(al, bl), _maximum(ab, bb) - _minimum(at, bt)


def _centre_distance_sq(a: Array, b: Array) -> Array:
    dx = a[..., 0] - b[..., 0]
    dy = a[..., 1] - b[..., 1]
    return dx * dx + dy * dy


def box_giou(a: Array, b: Array) -> Array:
    """Generalised IoU (box_giou): iou - (C - U)/C with C the enclosing area; iou when C is 0."""
    iou = box_iou(a, b)
    cw, ch = _enclosing(a, b)
    c = cw * ch
    term = (c - box_union(a, b)) / _safe_denominator(c)
    return _where(c == 0, iou, iou - term)


def box_diou(a: Array, b: Array, beta: float = DARKNET_DIOU_EXPONENT) -> Array:
    """Distance IoU as Darknet defines it: iou - (d²/c²)^beta (box_diou with beta 0.6, box_diounms with
    beta_nms); d = centre distance, c = diagonal of the enclosing box; iou when c is 0.

    Note Darknet's exponent: box_diou (greedynms, iou_thresh_kind=diou, the printed DIoU) uses 0.6,
    the DIoU paper uses 1.
    """
    iou = box_iou(a, b)
    cw, ch = _enclosing(a, b)
    c = cw * cw + ch * ch
    term = _pow_double(_centre_distance_sq(a, b) / _safe_denominator(c), beta)
    return _where(c == 0, iou, iou - term)


def box_ciou(a: Array, b: Array) -> Array:
    """Complete IoU (box_ciou), b being the ground truth: iou - (d²/c² + alpha·v),
    v = 4/π²·(atan(wb/hb) - atan(wa/ha))², alpha = v / (1 - iou + v + 1e-6); iou when c is 0."""
    iou = box_iou(a, b)
    cw, ch = _enclosing(a, b)
    c = cw * cw + ch * ch
    distance = _centre_distance_sq(a, b) / _safe_denominator(c)
    # a zero height (degenerate box) would make the aspect 0/0; Darknet's boxes never have one
    angle = _atan(b[..., 2] / _safe_denominator(b[..., 3])) - _atan(a[..., 2] / _safe_denominator(a[..., 3]))
    v = (4 / (pi * pi)) * angle * angle
    alpha = v / (1 - iou + v + 0.000001)
    return _where(c == 0, iou, iou - (distance + alpha * v))


# ============================================================================ detections

@dataclass
class Detection:
    """One Darknet `detection`: box relative to the original image (centre x, y and w, h), objectness and
    per-class probabilities (objectness × class probability, 0 where at or below the threshold or
    suppressed by NMS). `uncertainty` holds Gaussian_yolo's σx, σy, σw, σh."""

    x: float
    y: float
    w: float
    h: float
    objectness: float
    probs: np.ndarray
    uncertainty: Optional[np.ndarray] = None

    @property
    def best_class(self) -> int:
        """Index of the highest probability (the first on ties), -1 when all are 0."""
        best = int(np.argmax(self.probs))
        return best if self.probs[best] > 0 else -1

    @property
    def confidence(self) -> float:
        return float(self.probs.max()) if self.probs.size else 0.0

    def xyxy(self, image_w: int, image_h: int) -> Tuple[float, float, float, float]:
        """Corners in pixels (not clipped)."""
        return ((self.x - self.w / 2) * image_w, (self.y - self.h / 2) * image_h,
                (self.x + self.w / 2) * image_w, (self.y + self.h / 2) * image_h)


@dataclass
class BoxSet:
    """Detections of one image as arrays, the form decoding and NMS work on: xywh (N, 4), objectness (N,),
    probs (N, classes), uncertainty (N, 4) or None; all float32."""

    xywh: np.ndarray
    objectness: np.ndarray
    probs: np.ndarray
    uncertainty: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.objectness)

    def take(self, index: np.ndarray) -> "BoxSet":
        return BoxSet(self.xywh[index], self.objectness[index], self.probs[index],
                      None if self.uncertainty is None else self.uncertainty[index])

    @staticmethod
    def empty(classes: int) -> "BoxSet":
        return BoxSet(np.zeros((0, 4), F32), np.zeros(0, F32), np.zeros((0, classes), F32))

    @staticmethod
    def concatenate(parts: Sequence["BoxSet"], classes: int) -> "BoxSet":
        parts = [p for p in parts if len(p)]
        if not parts:
            return BoxSet.empty(classes)
        widths = {p.probs.shape[1] for p in parts}
        if len(widths) != 1:
            # get_network_boxes: "Error: Different [yolo] layers have different number of classes"
            raise ValueError(f"the detection heads have different numbers of classes: {sorted(widths)}")
        uncertainty = None
        if all(p.uncertainty is not None for p in parts):
            uncertainty = np.concatenate([p.uncertainty for p in parts])
        return BoxSet(np.concatenate([p.xywh for p in parts]), np.concatenate([p.objectness for p in parts]),
                      np.concatenate([p.probs for p in parts]), uncertainty)

    def detections(self, keep_empty: bool = False) -> List[Detection]:
        """As Detection objects, in order; boxes whose probabilities are all 0 are left out unless keep_empty."""
        result = []
        for i in range(len(self)):
            if not keep_empty and not self.probs[i].any():
                continue
            x, y, w, h = (float(v) for v in self.xywh[i])
            result.append(Detection(x, y, w, h, float(self.objectness[i]), self.probs[i].copy(),
                                    None if self.uncertainty is None else self.uncertainty[i].copy()))
        return result


@dataclass
class HeadSpec:
    """What decoding needs to know about a detection head ([yolo], [Gaussian_yolo], [region]).

    anchors: (A, 2) of the head's mask — input pixels for yolo/Gaussian_yolo, grid cells for region."""

    kind: str
    classes: int
    anchors: np.ndarray
    scale_x_y: float = 1.0
    new_coords: int = 0
    nms_kind: str = "default"
    beta_nms: float = 0.6
    coords: int = 4
    yolo_point: str = "center"
    classfix: int = 0
    has_tree: bool = False
    index: int = -1

    @staticmethod
    def from_module(head) -> "HeadSpec":
        """From a head module of darkpy.model (attributes kind, classes, anchors, nms_kind, ...)."""
        options = getattr(head, "options", {}) or {}
        anchors = head.anchors
        anchors = anchors.detach().cpu().numpy() if _is_torch(anchors) else np.asarray(anchors)
        return HeadSpec(kind=head.kind, classes=int(head.classes), anchors=anchors.astype(F32).reshape(-1, 2),
                        scale_x_y=float(getattr(head, "scale_x_y", 1.0)),
                        new_coords=int(getattr(head, "new_coords", 0)),
                        nms_kind=str(getattr(head, "nms_kind", "default")),
                        beta_nms=float(getattr(head, "beta_nms", 0.6)),
                        coords=int(getattr(head, "coords", 4)),
                        yolo_point=str(options.get("yolo_point", "center")),
                        classfix=int(float(options.get("classfix", 0) or 0)),
                        has_tree=bool(options.get("tree")),
                        index=int(getattr(head, "index", -1)))


def _check_output(output: np.ndarray, head: HeadSpec, box_entries: int) -> np.ndarray:
    output = np.asarray(output, dtype=F32)
    expected = box_entries + 1 + head.classes
    if output.ndim != 4 or output.shape[0] != len(head.anchors) or output.shape[1] != expected:
        raise ValueError(f"{head.kind} head {head.index}: expected an output of shape "
                         f"({len(head.anchors)}, {expected}, H, W), got {output.shape}")
    return output


def _cells_first(output: np.ndarray) -> np.ndarray:
    """(A, E, H, W) -> (H*W*A, E): Darknet's detection order, cell by cell, anchors within a cell."""
    anchors, entries, rows, cols = output.shape
    return output.transpose(2, 3, 0, 1).reshape(rows * cols * anchors, entries)


def _cell_grid(output: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column, row and anchor index of each row of _cells_first(output), as float32/int."""
    anchors, _, rows, cols = output.shape
    row, col, anchor = np.meshgrid(np.arange(rows), np.arange(cols), np.arange(anchors), indexing="ij")
    return col.reshape(-1).astype(F32), row.reshape(-1).astype(F32), anchor.reshape(-1)


class _Cells(NamedTuple):
    """A head's output as Darknet's get_*_detections loops over it: one row per cell and anchor, in its order."""

    entries: np.ndarray  # (N, E) the output entries of each row
    col: np.ndarray  # (N,) float32 column of the row's cell
    row: np.ndarray  # (N,) float32 row of the row's cell
    anchor_wh: np.ndarray  # (N, 2) the row's anchor (w, h)
    cols: int
    rows: int

    def centre(self, tx: np.ndarray, ty: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Box centre relative to the network: ((col + tx) / W, (row + ty) / H), in float."""
        return (self.col + tx) / F32(self.cols), (self.row + ty) / F32(self.rows)


def _head_cells(output: np.ndarray, head: HeadSpec, box_entries: int, thresh: Optional[F32] = None) -> _Cells:
    """Check the output's shape and list its cells; with `thresh`, only those whose objectness (the entry after
    the box entries) is > thresh, as get_yolo_detections / get_gaussian_yolo_detections keep them."""
    output = _check_output(output, head, box_entries)
    flat = _cells_first(output)
    col, row, anchor = _cell_grid(output)
    if thresh is not None:
        keep = flat[:, box_entries] > thresh
        flat, col, row, anchor = flat[keep], col[keep], row[keep], anchor[keep]
    rows, cols = output.shape[2:]
    return _Cells(flat, col, row, head.anchors[anchor], cols, rows)


def _exp_scale(t: np.ndarray, anchor: np.ndarray, size: int) -> np.ndarray:
    """`exp(t) * anchor / size` with C's double exp, rounded to float (inf beyond float's range, as in C)."""
    with np.errstate(over="ignore"):
        return (np.exp(t.astype(np.float64)) * anchor.astype(np.float64) / size).astype(F32)


def _class_probs(objectness: np.ndarray, scores: np.ndarray, thresh: F32) -> np.ndarray:
    """prob = objectness * class score, kept only where > thresh (get_yolo_detections)."""
    probs = objectness[:, None] * scores
    return np.where(probs > thresh, probs, F32(0)).astype(F32)


def _fast_math_reciprocal(ratio: F32) -> F32:
    """`1 / ratio` (float) as Darknet's release build computes it in correct_yolo_boxes.

    Darknet is compiled with -Ofast, and GCC then computes a float reciprocal with RCPPS plus one
    Newton-Raphson step (GCC manual, -mrecip: "the inverse of 1.0 equals 0.99999994"). For ratio 1 (every box
    without letterbox, and the unpadded side with it) Darknet's w and h are therefore one float ulp below the
    exact value; the C Darknet fixtures show it for every box. Other ratios match the exact division there."""
    if ratio == F32(1):
        return np.nextafter(F32(1), F32(0))
    return F32(1) / ratio


def correct_boxes(xywh: np.ndarray, image_wh: Tuple[int, int], net_wh: Tuple[int, int], letter_box: bool,
                  gaussian: bool = False) -> np.ndarray:
    """Undo the letterbox (correct_yolo_boxes; correct_gaussian_yolo_boxes with gaussian=True).

    Without letterbox the ratios are 1 and only the fast-math reciprocal touches w and h."""
    if len(xywh) == 0:
        return xywh
    net_w, net_h = net_wh
    if letter_box:
        new_w, new_h = letterbox_size(image_wh[0], image_wh[1], net_w, net_h)
    else:
        new_w, new_h = net_w, net_h
    x, y, w, h = (xywh[:, i] for i in range(4))
    if gaussian:
        # b.x = (b.x - (netw - new_w)/2./netw) / ((float)new_w/netw); b.w *= (float)netw/new_w
        x = (x.astype(np.float64) - (net_w - new_w) / 2.0 / net_w) / np.float64(F32(new_w) / F32(net_w))
        y = (y.astype(np.float64) - (net_h - new_h) / 2.0 / net_h) / np.float64(F32(new_h) / F32(net_h))
        w = w * (F32(net_w) / F32(new_w))
        h = h * (F32(net_h) / F32(new_h))
    else:
        # b.x = (b.x - deltaw/2./netw) / ratiow; b.w *= 1/ratiow (ratiow = (float)new_w/netw)
        ratio_w, ratio_h = F32(new_w) / F32(net_w), F32(new_h) / F32(net_h)
        x = (x.astype(np.float64) - np.float64(F32(net_w - new_w)) / 2.0 / net_w) / np.float64(ratio_w)
        y = (y.astype(np.float64) - np.float64(F32(net_h - new_h)) / 2.0 / net_h) / np.float64(ratio_h)
        w = w * _fast_math_reciprocal(ratio_w)
        h = h * _fast_math_reciprocal(ratio_h)
    return np.stack([x.astype(F32), y.astype(F32), w.astype(F32), h.astype(F32)], axis=1)


def decode_yolo(output: np.ndarray, head: HeadSpec, net_wh: Tuple[int, int], image_wh: Tuple[int, int],
                thresh: float, letter_box: bool) -> BoxSet:
    """[yolo] head output (A, 4+1+classes, H, W), as left by Darknet's forward -> boxes with objectness > thresh
    (get_yolo_detections + get_yolo_box + correct_yolo_boxes)."""
    thresh = F32(thresh)
    cells = _head_cells(output, head, 4, thresh)
    flat, anchor_wh = cells.entries, cells.anchor_wh
    net_w, net_h = net_wh
    x, y = cells.centre(flat[:, 0], flat[:, 1])
    if head.new_coords:
        w = flat[:, 2] * flat[:, 2] * F32(4) * anchor_wh[:, 0] / F32(net_w)
        h = flat[:, 3] * flat[:, 3] * F32(4) * anchor_wh[:, 1] / F32(net_h)
    else:
        w = _exp_scale(flat[:, 2], anchor_wh[:, 0], net_w)
        h = _exp_scale(flat[:, 3], anchor_wh[:, 1], net_h)
    xywh = correct_boxes(np.stack([x, y, w, h], axis=1).astype(F32), image_wh, net_wh, letter_box)
    objectness = flat[:, 4].copy()
    return BoxSet(xywh, objectness, _class_probs(objectness, flat[:, 5:], thresh))


def decode_gaussian_yolo(output: np.ndarray, head: HeadSpec, net_wh: Tuple[int, int],
                         image_wh: Tuple[int, int], thresh: float, letter_box: bool) -> BoxSet:
    """[Gaussian_yolo] output (A, 8+1+classes, H, W): x, σx, y, σy, w, σw, h, σh, objectness, classes ->
    boxes with objectness > thresh, prob = obj·cls·(1 - mean σ) (get_gaussian_yolo_detections)."""
    thresh = F32(thresh)
    cells = _head_cells(output, head, 8, thresh)
    flat, anchor_wh = cells.entries, cells.anchor_wh
    net_w, net_h = net_wh
    w = _exp_scale(flat[:, 4], anchor_wh[:, 0], net_w)
    h = _exp_scale(flat[:, 6], anchor_wh[:, 1], net_h)
    x, y = cells.centre(flat[:, 0], flat[:, 2])
    if head.yolo_point == "left_top":
        x, y = x + w / 2, y + h / 2
    elif head.yolo_point == "right_bottom":
        x, y = x - w / 2, y - h / 2
    xywh = correct_boxes(np.stack([x, y, w, h], axis=1).astype(F32), image_wh, net_wh, letter_box, gaussian=True)
    uncertainty = flat[:, [1, 3, 5, 7]].copy()
    # uc_aver = (uc0+uc1+uc2+uc3)/4.0 (float, then double); prob = obj*cls*(1.0 - uc_aver) in double
    mean_sigma = (((uncertainty[:, 0] + uncertainty[:, 1]) + uncertainty[:, 2]) + uncertainty[:, 3]) / F32(4)
    objectness = flat[:, 8].copy()
    probs = ((objectness[:, None] * flat[:, 9:]).astype(np.float64)
             * (1.0 - mean_sigma.astype(np.float64))[:, None]).astype(F32)
    probs = np.where(probs > thresh, probs, F32(0)).astype(F32)
    return BoxSet(xywh, objectness, probs, uncertainty)


def _logistic(x: np.ndarray) -> np.ndarray:
    """logistic_activate: 1.f/(1.f + expf(-x)) in float."""
    return (F32(1) / (F32(1) + np.exp(-x.astype(F32)))).astype(F32)


def decode_region(output: np.ndarray, head: HeadSpec, net_wh: Tuple[int, int], image_wh: Tuple[int, int],
                  thresh: float, hier: float, letter_box: bool) -> BoxSet:
    """[region] (YOLOv2) output (A, 4+1+classes, H, W) with objectness logistic and classes softmaxed ->
    one box per cell and anchor (get_region_boxes via custom_get_region_detections: objectness is set to 1
    for every box, prob = objectness·class kept where > thresh, boxes corrected with correct_yolo_boxes).

    x, y get the logistic here, as get_region_box does; w, h = exp(t)·anchor/grid (anchors in grid cells).
    `hier` is used only by a softmax tree (YOLO9000), which darkpy does not decode."""
    if head.has_tree:
        raise NotImplementedError(f"region head {head.index}: softmax trees (tree=, YOLO9000) are not supported")
    if head.coords != 4:
        raise NotImplementedError(f"region head {head.index}: coords={head.coords} (only 4 is supported)")
    thresh = F32(thresh)
    cells = _head_cells(output, head, 4)  # every cell: custom_get_region_detections keeps them all
    flat, anchor_wh = cells.entries, cells.anchor_wh
    x, y = cells.centre(_logistic(flat[:, 0]), _logistic(flat[:, 1]))
    w = _exp_scale(flat[:, 2], anchor_wh[:, 0], cells.cols)
    h = _exp_scale(flat[:, 3], anchor_wh[:, 1], cells.rows)
    scale = flat[:, 4].copy()
    if head.classfix == -1:
        scale = np.where(scale < F32(0.5), F32(0), scale).astype(F32)
    xywh = correct_boxes(np.stack([x, y, w, h], axis=1).astype(F32), image_wh, net_wh, letter_box)
    probs = _class_probs(scale, flat[:, 5:], thresh)
    return BoxSet(xywh, np.ones(len(flat), F32), probs)


def decode_head(output: np.ndarray, head: HeadSpec, net_wh: Tuple[int, int], image_wh: Tuple[int, int],
                thresh: float, hier: float = 0.5, letter_box: bool = False) -> BoxSet:
    """Decode one head's output (A, E, H, W) for one image, whatever its kind."""
    if head.kind == "yolo":
        return decode_yolo(output, head, net_wh, image_wh, thresh, letter_box)
    if head.kind == "Gaussian_yolo":
        return decode_gaussian_yolo(output, head, net_wh, image_wh, thresh, letter_box)
    if head.kind == "region":
        return decode_region(output, head, net_wh, image_wh, thresh, hier, letter_box)
    raise ValueError(f"cannot decode a head of kind {head.kind!r}")


def get_network_boxes(outputs: Sequence[np.ndarray], heads: Sequence[HeadSpec], net_wh: Tuple[int, int],
                      image_wh: Tuple[int, int], thresh: float, hier: float = 0.5,
                      letter_box: bool = False) -> BoxSet:
    """All heads of one image, in cfg order (get_network_boxes / fill_network_boxes), before NMS."""
    parts = [decode_head(o, h, net_wh, image_wh, thresh, hier, letter_box) for o, h in zip(outputs, heads)]
    return BoxSet.concatenate(parts, heads[0].classes if heads else 0)


# ============================================================================ NMS (src/box.c)

def _objectness_zero_to_end(boxes: BoxSet) -> Tuple[np.ndarray, int]:
    """The swap loop that starts do_nms_sort: boxes with objectness 0 are swapped to the end (in C's order)."""
    order = np.arange(len(boxes))
    last = len(boxes) - 1
    i = 0
    while i <= last:
        if boxes.objectness[order[i]] == 0:
            order[i], order[last] = order[last], order[i]
            last -= 1
        else:
            i += 1
    return order, last + 1


def _suppression_metric(kind: str, beta: float):
    if kind in ("default", "cornersnms"):  # cornersnms suppresses on plain IoU (diounms_sort)
        return box_iou
    if kind == "greedynms":
        return lambda a, b: box_diou(a, b, DARKNET_DIOU_EXPONENT)
    if kind == "diounms":
        beta_f = float(F32(beta))  # l.beta_nms is a float
        return lambda a, b: box_diou(a, b, beta_f)
    raise ValueError(f"unknown nms_kind {kind!r} (expected one of {', '.join(NMS_KINDS)})")


def nms_sort(boxes: BoxSet, thresh: float, kind: str = "default", beta: float = 0.6) -> BoxSet:
    """Darknet's per-class NMS (do_nms_sort; diounms_sort for greedynms/diounms/cornersnms).

    Boxes with objectness 0 go to the end and are left alone; then for each class k: a stable sort by
    prob[k] descending (glibc's qsort is a merge sort), and every later box whose metric with a kept box
    is > thresh gets prob[k] = 0. Returns the boxes in Darknet's final order, probabilities updated."""
    order, total = _objectness_zero_to_end(boxes)
    probs = boxes.probs.copy()
    metric = _suppression_metric(kind, beta)
    thresh = F32(thresh)
    active = order[:total]
    for k in range(probs.shape[1]):
        column = probs[active, k]
        if not column.any():
            continue  # a stable sort of all-zero keys leaves the order as it is
        active = active[np.argsort(-column, kind="stable")]
        candidates = int(np.count_nonzero(probs[active, k]))  # the non-zero ones now lead
        for i in range(candidates - 1):
            kept = active[i]
            if probs[kept, k] == 0:
                continue
            later = active[i + 1:candidates]
            overlap = metric(boxes.xywh[kept][None, :], boxes.xywh[later])
            probs[later[overlap > thresh], k] = 0
    final = np.concatenate([active, order[total:]])
    result = boxes.take(final)
    result.probs = probs[final]
    return result


def do_nms_sort(boxes: BoxSet, thresh: float) -> BoxSet:
    """do_nms_sort: per-class NMS on IoU."""
    return nms_sort(boxes, thresh, "default")


# ============================================================================ console output (src/image.c)

def _c_round(value: np.ndarray) -> float:
    """C round(): halves away from zero (Python's round() rounds halves to even)."""
    value = float(value)
    return float(np.copysign(np.floor(abs(value) + 0.5), value))


def _ext_output(det: Detection, image_w: int, image_h: int) -> str:
    """`\\t(left_x: %4.0f   top_y: %4.0f   width: %4.0f   height: %4.0f)` with float products as in C."""
    x, y, w, h = F32(det.x), F32(det.y), F32(det.w), F32(det.h)
    left = _c_round((x - w / F32(2)) * F32(image_w))
    top = _c_round((y - h / F32(2)) * F32(image_h))
    width = _c_round(w * F32(image_w))
    height = _c_round(h * F32(image_h))
    return "\t(left_x: %4.0f   top_y: %4.0f   width: %4.0f   height: %4.0f)" % (left, top, width, height)


def _percent(prob: float) -> str:
    return "%.0f%%" % float(F32(prob) * F32(100))  # prob*100 in float, printed with %.0f (round half even)


def best_shown_class(det: Detection, names: Sequence[str], thresh: float) -> int:
    """get_actual_detections: the first class with the highest prob > thresh whose name does not start with
    'dont_show'; -1 if none."""
    best, best_prob = -1, F32(thresh)
    for j in np.flatnonzero(det.probs > best_prob):
        if det.probs[j] > best_prob and not names[j].startswith("dont_show"):
            best, best_prob = int(j), det.probs[j]
    return best


def detection_lines(detections: Sequence[Detection], names: Sequence[str], image_w: int, image_h: int,
                    thresh: float = 0.25, ext_output: bool = True) -> List[str]:
    """The lines `darknet detector test` prints for one image (draw_detections_v3).

    Detections with a shown class above thresh, sorted by left edge (stable); for each, the best class first,
    then every other class with prob > thresh, in class order, with the same box."""
    thresh = F32(thresh)
    selected = [(d, best_shown_class(d, names, thresh)) for d in detections]
    selected = [(d, best) for d, best in selected if best >= 0]
    selected.sort(key=lambda item: float(F32(item[0].x) - F32(item[0].w) / F32(2)))
    lines = []
    for det, best in selected:
        box = _ext_output(det, image_w, image_h) if ext_output else ""
        lines.append(f"{names[best]}: {_percent(det.probs[best])}{box}")
        for j in np.flatnonzero(det.probs > thresh):
            if j != best:
                lines.append(f"{names[j]}: {_percent(det.probs[j])}{box}")
    return lines
