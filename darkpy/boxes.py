"""Boxes as Darknet computes them: geometry, the IoU family and its gradient, NMS and the console lines of
`detector test`. Each head decodes its own output (darkpy.heads); `get_network_boxes` asks every head.

Reproduced from AlexeyAB darknet:
- src/box.c `box_iou`, `box_giou`, `box_diou`, `box_diounms`, `box_ciou`, `dx_box_iou`, `do_nms_sort`,
  `diounms_sort`, `do_nms_obj`;
- src/yolo_layer.c `correct_yolo_boxes`, src/gaussian_yolo_layer.c `correct_gaussian_yolo_boxes`;
- src/network.c `get_network_boxes`;
- src/image.c `draw_detections_v3` / `get_actual_detections` (console output).

Every step runs in float32 with the C operation order (and in float64 where C calls exp/pow on doubles), so
boxes decoded from Darknet's own layer outputs equal Darknet's to the last bit.

A box is (x, y, w, h): centre and size, relative to the image (0..1), as Darknet's `box`.
The IoU helpers take numpy arrays of shape (..., 4); for float32 input they reproduce Darknet's float results
exactly. The training loss uses Darknet's analytic gradient `dx_box_iou`, not autograd.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence, Tuple

import numpy as np

from darkpy.image import letterbox_size

Array = np.ndarray
F32 = np.float32

NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")
IOU_KINDS = ("iou", "giou", "diou", "ciou")
Box = Tuple[float, float, float, float]  # one box as Python floats: centre x, centre y, w, h
DARKNET_DIOU_EXPONENT = 0.6  # box_diou's hard-coded exponent on the centre-distance term (greedynms)


# ============================================================================ array primitives
# The IoU family reaches numpy only through these names (tests/helpers/torch_boxes.py evaluates the same
# formulas in torch by swapping them).

_minimum = np.minimum
_maximum = np.maximum
_atan = np.arctan


def _where(condition: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.where, keeping the operands' float type."""
    return np.where(condition, a, b).astype(np.result_type(a, b), copy=False)


def _pow_double(base: np.ndarray, exponent: float) -> np.ndarray:
    """C's `float r = pow(base, exponent)`: computed in double, rounded to the base's type."""
    return np.power(base.astype(np.float64), exponent).astype(base.dtype)


def _safe_denominator(x: np.ndarray) -> np.ndarray:
    # where(x == 0, 1, x): the branch where() discards never divides by 0 (and stays free of 0/0 under autograd)
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
    v = (4 / (math.pi * math.pi)) * angle * angle
    alpha = v / (1 - iou + v + 0.000001)
    return _where(c == 0, iou, iou - (distance + alpha * v))


def box_iou_kind(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """box_iou_kind: the IoU variant named by kind (one of IOU_KINDS)."""
    return {"iou": box_iou, "giou": box_giou, "diou": box_diou, "ciou": box_ciou}[kind](a, b)


# ============================================================================ IoU gradient (the training loss)

def _safe_atan_ratio(box: Box) -> float:
    """atan(w/h) as C computes it: w/0 is +-inf (atan -> +-pi/2), 0/0 is NaN."""
    w, h = box[2], box[3]
    if h == 0:
        return math.nan if w == 0 else math.copysign(math.pi / 2, w)
    return math.atan(w / h)


# long: box.c's dx_box_iou is one function whose terms share a dozen edges, areas and widths; kept whole, in C's
# order, so that it can be read against Darknet line by line.
def dx_box_iou(pred: Box, truth: Box, kind: str) -> Tuple[float, float, float, float]:
    """box.c dx_box_iou: Darknet's analytic gradient of IoU/GIoU/DIoU/CIoU w.r.t. (x, y, w, h) of `pred`.

    Reproduced term by term, including its conventions: w/h derivatives are not halved, the GIoU/DIoU/CIoU
    branches replace the IoU part when the boxes do not overlap, and the intersection terms use the signed
    (possibly negative) overlap widths.
    """
    px, py, pw, ph = pred
    tx, ty, tw, th = truth
    p_top, p_bot = py - ph / 2, py + ph / 2
    p_left, p_right = px - pw / 2, px + pw / 2
    pred_t, pred_b = min(p_top, p_bot), max(p_top, p_bot)
    pred_l, pred_r = min(p_left, p_right), max(p_left, p_right)
    t_top, t_bot, t_left, t_right = ty - th / 2, ty + th / 2, tx - tw / 2, tx + tw / 2

    area_pred = (pred_b - pred_t) * (pred_r - pred_l)
    area_truth = (t_bot - t_top) * (t_right - t_left)
    ih = min(pred_b, t_bot) - max(pred_t, t_top)
    iw = min(pred_r, t_right) - max(pred_l, t_left)
    inter = iw * ih
    union = area_pred + area_truth - inter
    dist2 = (px - tx) ** 2 + (py - ty) ** 2
    giou_cw = max(pred_r, t_right) - min(pred_l, t_left)
    giou_ch = max(pred_b, t_bot) - min(pred_t, t_top)
    giou_c = giou_cw * giou_ch

    dX = (-(pred_r - pred_l), pred_r - pred_l, -(pred_b - pred_t), pred_b - pred_t)  # d area / d (t, b, l, r)
    dI = (-iw if pred_t > t_top else 0.0, iw if pred_b < t_bot else 0.0,
          -ih if pred_l > t_left else 0.0, ih if pred_r < t_right else 0.0)
    dU = tuple(x - i for x, i in zip(dX, dI))
    dC = (-giou_cw if pred_t < t_top else 0.0, giou_cw if pred_b > t_bot else 0.0,
          -giou_ch if pred_l < t_left else 0.0, giou_ch if pred_r > t_right else 0.0)

    p = [0.0, 0.0, 0.0, 0.0]  # d IoU / d (t, b, l, r)
    if union > 0:
        p = [(union * di - inter * du) / (union * union) for di, du in zip(dI, dU)]
    # corner selection for flipped boxes (a no-op for positive w/h, kept for fidelity)
    if not p_top < p_bot:
        p[0], p[1] = p[1], p[1]
    if not p_left < p_right:
        p[2], p[3] = p[3], p[3]
    if kind == "giou":
        c_terms = [((giou_c * du) - (union * dc)) / (giou_c * giou_c) if giou_c != 0 else math.nan
                   for du, dc in zip(dU, dC)]
        if giou_c > 0:
            p = [a + c for a, c in zip(p, c_terms)]
        if iw <= 0 or ih <= 0:
            p = c_terms
    p_t, p_b, p_l, p_r = p
    p_dx, p_dy = p_l + p_r, p_t + p_b
    p_dw, p_dh = p_r - p_l, p_b - p_t

    if kind in ("diou", "ciou"):
        c_top = min(py - ph / 2, ty - th / 2)
        c_bot = max(py + ph / 2, ty + th / 2)
        c_left = min(px - pw / 2, tx - tw / 2)
        c_right = max(px + pw / 2, tx + tw / 2)
        cw, ch = c_right - c_left, c_bot - c_top
        c = cw * cw + ch * ch
        dCt = (0.0, 1.0 if pred_t < t_top else 0.0, 0.0, -0.5 if pred_t < t_top else 0.0)  # d/d(x, y, w, h)
        dCb = (0.0, 1.0 if pred_b > t_bot else 0.0, 0.0, 0.5 if pred_b > t_bot else 0.0)
        dCl = (1.0 if pred_l < t_left else 0.0, 0.0, -0.5 if pred_l < t_left else 0.0, 0.0)
        dCr = (1.0 if pred_r > t_right else 0.0, 0.0, 0.5 if pred_r > t_right else 0.0, 0.0)
        dCw = [r - l for r, l in zip(dCr, dCl)]
        dCh = [b - t for b, t in zip(dCb, dCt)]
        ar_dw = ar_dh = alpha = 0.0
        if kind == "ciou":
            diff = _safe_atan_ratio(truth) - _safe_atan_ratio(pred)
            ar_term = 4 / (math.pi * math.pi) * diff * diff
            iou_part = inter / union if union != 0 else math.nan
            alpha = ar_term / (1 - iou_part + ar_term + 0.000001)
            ar_dw = 8 / (math.pi * math.pi) * diff * ph
            ar_dh = -8 / (math.pi * math.pi) * diff * pw

        def centre_terms():
            cc = c * c if c != 0 else math.nan
            return ((2 * (tx - px) * c - (2 * cw * dCw[0] + 2 * ch * dCh[0]) * dist2) / cc,
                    (2 * (ty - py) * c - (2 * cw * dCw[1] + 2 * ch * dCh[1]) * dist2) / cc,
                    (2 * cw * dCw[2] + 2 * ch * dCh[2]) * dist2 / cc + alpha * ar_dw,
                    (2 * cw * dCw[3] + 2 * ch * dCh[3]) * dist2 / cc + alpha * ar_dh)

        if c > 0:
            extra = centre_terms()
            p_dx, p_dy, p_dw, p_dh = p_dx + extra[0], p_dy + extra[1], p_dw + extra[2], p_dh + extra[3]
        if iw <= 0 or ih <= 0:
            p_dx, p_dy, p_dw, p_dh = centre_terms()
    return p_dx, p_dy, p_dw, p_dh


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


class HeadDecoder(Protocol):
    """What get_network_boxes needs of a detection head (darkpy.heads.Head)."""

    classes: int

    def decode(self, output: np.ndarray, net_wh: Tuple[int, int], image_wh: Tuple[int, int], thresh: float,
               hier: float = 0.5, letter_box: bool = False) -> "BoxSet":
        ...


def get_network_boxes(outputs: Sequence[np.ndarray], heads: Sequence[HeadDecoder], net_wh: Tuple[int, int],
                      image_wh: Tuple[int, int], thresh: float, hier: float = 0.5,
                      letter_box: bool = False) -> BoxSet:
    """All heads of one image, in cfg order (src/network.c get_network_boxes / fill_network_boxes), before NMS:
    each head decodes its own output (darkpy.heads: Head.decode)."""
    parts = [head.decode(o, net_wh, image_wh, thresh, hier, letter_box) for o, head in zip(outputs, heads)]
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


def nms_sort_order(boxes: BoxSet, thresh: float, kind: str = "default", beta: float = 0.6
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Darknet's per-class NMS (do_nms_sort; diounms_sort for greedynms/diounms/cornersnms), as the order it
    leaves the boxes in (indices into `boxes`) and their probabilities in that order.

    Boxes with objectness 0 go to the end and are left alone; then for each class k: a stable sort by
    prob[k] descending (glibc's qsort is a merge sort), and every later box whose metric with a kept box
    is > thresh gets prob[k] = 0."""
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
    return final, probs[final]


def nms_sort(boxes: BoxSet, thresh: float, kind: str = "default", beta: float = 0.6) -> BoxSet:
    """Darknet's per-class NMS (nms_sort_order): the boxes in Darknet's final order, probabilities updated."""
    final, probs = nms_sort_order(boxes, thresh, kind, beta)
    result = boxes.take(final)
    result.probs = probs
    return result


def nms_obj_order(boxes: BoxSet, thresh: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Darknet's do_nms_obj (class-blind NMS), as the order it leaves the boxes in (indices into `boxes`) and
    their objectness and probabilities in that order.

    Boxes with objectness 0 go to the end; the others are stably sorted by objectness, descending, and every
    later box whose IoU with a kept one is > thresh gets objectness 0 and all probabilities 0."""
    order, total = _objectness_zero_to_end(boxes)
    active = order[:total]
    active = active[np.argsort(-boxes.objectness[active], kind="stable")]
    final = np.concatenate([active, order[total:]])
    objectness, probs = boxes.objectness[final].copy(), boxes.probs[final].copy()
    xywh, thresh = boxes.xywh[final], F32(thresh)
    for i in range(total - 1):
        if objectness[i] == 0:
            continue
        later = np.arange(i + 1, total)
        later = later[objectness[later] != 0]
        suppressed = later[box_iou(xywh[i][None, :], xywh[later]) > thresh]
        objectness[suppressed] = 0
        probs[suppressed] = 0
    return final, objectness, probs


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
