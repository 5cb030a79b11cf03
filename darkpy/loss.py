"""Darknet's detection losses: the deltas of [yolo] and [region] layers, and a surrogate that makes autograd apply them.

Darknet does not differentiate a loss. Its detection layers write `delta = target - output` for every output entry
(src/yolo_layer.c `forward_yolo_layer` / `process_batch` / `delta_yolo_box` / `delta_yolo_class`, src/box.c
`dx_box_iou`, src/region_layer.c `forward_region_layer`) and `backward_*_layer` adds that delta unchanged to the
previous layer's delta, i.e. the gradient w.r.t. the layer's raw input is `-delta`. darkpy computes the same deltas
from the head's activated output (`head.activate(raw)`) and returns the surrogate `-(delta.detach() * raw).sum()`,
whose gradient w.r.t. `raw` is exactly `-delta`; the cost Darknet prints is reported separately.

The deltas follow Darknet's CPU code: the GPU build additionally multiplies them by `delta_normalizer` (and
`loss_scale`); the CPU build, and darkpy, do not (a warning says so when delta_normalizer is set).

Truths are (B, T, 5) rows `[x, y, w, h, class]` relative to the network input; as in Darknet a row with x == 0 ends
an image's list.
"""
import math
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from darkpy import boxes

FLT_MAX = 3.4028234663852886e38  # Darknet's default max_delta (FLT_MAX): no clipping
IOU_KINDS = ("iou", "giou", "diou", "ciou")


class LossError(ValueError):
    """A head that darkpy cannot train, named by cfg file and line."""


class LossWarning(UserWarning):
    """A loss option that darkpy reads but does not implement."""


# ---------------------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------------------

def _where(head) -> str:
    section = getattr(head, "section", None)
    if section is not None:
        return f"{section.file}:{section.line}: [{getattr(section, 'written_type', '') or head.kind}]"
    return f"layer {getattr(head, 'index', '?')} [{head.kind}]"


def _class_multipliers(head, classes: int, max_delta: float) -> Optional[np.ndarray]:
    """yolo `counters_per_class` -> max_count / count per class, capped at max_delta (get_classes_multipliers)."""
    counters = head.section.get_int_list("counters_per_class")  # the head keeps it as a string: read it typed
    if not counters:
        return None
    if len(counters) != classes:
        raise LossError(f"{_where(head)} counters_per_class has {len(counters)} values but classes={classes}")
    counts = np.array([max(1, c) for c in counters], dtype=np.float64)
    return np.minimum(counts.max() / counts, max_delta).astype(np.float32)


def _all_anchors(head) -> np.ndarray:
    """The head's anchors of the whole cfg line, (num, 2) float32."""
    return head.all_anchors.detach().cpu().numpy().astype(np.float32).reshape(-1, 2)


@dataclass
class YoloLossOptions:
    """The [yolo] keys the loss reads, with Darknet's defaults (parse_yolo)."""

    classes: int
    mask: Tuple[int, ...]
    anchors: np.ndarray  # (num, 2) all anchors of the cfg line, in network-input pixels
    ignore_thresh: float = 0.5
    truth_thresh: float = 1.0
    iou_thresh: float = 1.0
    iou_thresh_kind: str = "iou"
    iou_loss: str = "mse"  # mse | giou | diou | ciou | iou (any other string means iou, as in Darknet)
    iou_normalizer: float = 0.75
    obj_normalizer: float = 1.0
    cls_normalizer: float = 1.0
    max_delta: float = FLT_MAX
    label_smooth_eps: float = 0.0
    classes_multipliers: Optional[np.ndarray] = None
    objectness_smooth: int = 0
    focal_loss: int = 0
    scale_x_y: float = 1.0
    new_coords: int = 0
    show_details: int = 1
    ignored: List[str] = field(default_factory=list)  # options read but not implemented (for one warning)

    @classmethod
    def from_head(cls, head) -> "YoloLossOptions":
        """From a [yolo] head: its options are already read, typed, with parse_yolo's defaults (head.options)."""
        o = head.options
        iou_loss = o["iou_loss"]
        if iou_loss not in ("mse",) + IOU_KINDS:
            iou_loss = "iou"  # Darknet: any other string selects plain IoU
        kind = o["iou_thresh_kind"]
        ignored = []
        if kind not in IOU_KINDS:
            ignored.append(f"iou_thresh_kind={kind} (Darknet says 'Wrong iou_thresh_kind' and uses iou)")
            kind = "iou"
        if o["map"]:
            ignored.append(f"map={o['map']} (class-id remapping file)")
        if o["delta_normalizer"] != 1.0:
            ignored.append(f"delta_normalizer={o['delta_normalizer']} (Darknet's GPU build multiplies gradients by it, "
                           "its CPU build and darkpy do not)")
        if o["embedding_layer"] not in (0, 999999):
            ignored.append(f"embedding_layer={o['embedding_layer']} (tracking embeddings are not trained)")
        classes = int(head.classes)
        return cls(
            classes=classes,
            mask=tuple(int(m) for m in head.mask),
            anchors=_all_anchors(head),
            ignore_thresh=o["ignore_thresh"],
            truth_thresh=o["truth_thresh"],
            iou_thresh=o["iou_thresh"],
            iou_thresh_kind=kind,
            iou_loss=iou_loss,
            iou_normalizer=o["iou_normalizer"],
            obj_normalizer=o["obj_normalizer"],
            cls_normalizer=o["cls_normalizer"],
            max_delta=o["max_delta"],
            label_smooth_eps=o["label_smooth_eps"],
            classes_multipliers=_class_multipliers(head, classes, o["max_delta"]),
            objectness_smooth=o["objectness_smooth"],
            focal_loss=o["focal_loss"],
            scale_x_y=float(head.scale_x_y),
            new_coords=int(head.new_coords),
            show_details=o["show_details"],
            ignored=ignored,
        )


@dataclass
class RegionLossOptions:
    """The [region] (YOLOv2) keys the loss reads, with Darknet's defaults (parse_region)."""

    classes: int
    anchors: np.ndarray  # (num, 2) in grid cells
    thresh: float = 0.5
    coord_scale: float = 1.0
    object_scale: float = 1.0
    noobject_scale: float = 1.0
    class_scale: float = 1.0
    rescore: int = 0
    bias_match: int = 0
    classfix: int = 0
    focal_loss: int = 0
    ignored: List[str] = field(default_factory=list)

    @classmethod
    def from_head(cls, head) -> "RegionLossOptions":
        """From a [region] head: its options are already read, typed, with parse_region's defaults (the head
        refuses tree= itself)."""
        o = head.options
        map_file = o["map"]
        ignored = [f"map={map_file} (class-id remapping file)"] if map_file else []
        return cls(
            classes=int(head.classes),
            anchors=_all_anchors(head),
            thresh=o["thresh"],
            coord_scale=head.coord_scale,
            object_scale=head.object_scale,
            noobject_scale=head.noobject_scale,
            class_scale=head.class_scale,
            rescore=head.rescore,
            bias_match=head.bias_match,
            classfix=o["classfix"],
            focal_loss=o["focal_loss"],
            ignored=ignored,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Darknet's box arithmetic on single boxes (src/box.c), in Python floats: used per truth, where numpy is slower
# ---------------------------------------------------------------------------------------------------------------------

Box = Tuple[float, float, float, float]  # centre x, centre y, w, h


def _as_box(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _iou_kind(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """box_iou_kind (src/box.c) on float32 arrays (..., 4), via darkpy.boxes."""
    return {"iou": boxes.box_iou, "giou": boxes.box_giou, "diou": boxes.box_diou, "ciou": boxes.box_ciou}[kind](a, b)


def _safe_atan_ratio(box: Box) -> float:
    """atan(w/h) as C computes it: w/0 is +-inf (atan -> +-pi/2), 0/0 is NaN."""
    w, h = box[2], box[3]
    if h == 0:
        return math.nan if w == 0 else math.copysign(math.pi / 2, w)
    return math.atan(w / h)


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


def _finite_or_zero(v: float) -> float:
    return v if math.isfinite(v) else 0.0


def _clip(v: float, limit: float) -> float:
    return limit if v > limit else (-limit if v < -limit else v)


# ---------------------------------------------------------------------------------------------------------------------
# [yolo]
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class HeadLoss:
    """One head's result for one mini-batch: Darknet's cost and the numbers of its `v3 (...)` line."""

    cost: float
    count: int = 0  # truths assigned to an anchor of this head
    tot_iou: float = 0.0
    total_bbox: int = 0
    rewritten_bbox: int = 0
    class_loss: float = 0.0
    iou_loss: float = 0.0
    wrong_labels: int = 0
    batch: int = 1

    @property
    def avg_iou(self) -> float:
        return self.tot_iou / max(self.count, 1)


def _valid_counts(truths: np.ndarray) -> np.ndarray:
    """Truths per image: Darknet stops at the first row with x == 0."""
    is_end = truths[:, :, 0] == 0
    has_end = is_end.any(axis=1)
    first_end = np.where(has_end, is_end.argmax(axis=1), truths.shape[1])
    return first_end.astype(np.int64)


def _best_truth_per_cell(pred: np.ndarray, truths: np.ndarray, counts: np.ndarray, classes: int,
                         skip_negative_classes: bool) -> Tuple[np.ndarray, np.ndarray]:
    """For every cell and anchor, the best IoU with a usable truth and that truth's index, shaped (B, A, H, W).

    `pred` is (B, A, H, W, 4). Darknet's strict '>' from 0 keeps the first truth with the largest positive IoU;
    truths past the image's count, or with a class id >= classes (and < 0 for [yolo]), are skipped.
    """
    shape = pred.shape[:4]
    best_iou = np.zeros(shape, dtype=np.float32)
    best_t = np.zeros(shape, dtype=np.int64)
    for b in range(pred.shape[0]):
        rows = truths[b, :int(counts[b])]
        class_ids = rows[:, 4].astype(np.int64)
        usable = class_ids < classes
        if skip_negative_classes:
            usable &= class_ids >= 0
        if not usable.any():
            continue
        cells = np.ascontiguousarray(pred[b].reshape(-1, 4), dtype=np.float32)
        with np.errstate(invalid="ignore", over="ignore"):  # exp() overflows of wild early predictions
            iou = np.nan_to_num(boxes.box_iou(cells[:, None, :], rows[None, :, :4]), nan=0.0)  # (cells, T)
        iou[:, ~usable] = 0
        best_iou[b] = iou.max(axis=1).reshape(shape[1:])
        best_t[b] = iou.argmax(axis=1).reshape(shape[1:])
    return best_iou, best_t


class _YoloImage:
    """Darknet's process_batch for one image b of one [yolo] layer, writing into the shared delta array."""

    def __init__(self, out: np.ndarray, delta: np.ndarray, b: int, opt: YoloLossOptions, net_w: int, net_h: int,
                 stats: HeadLoss):
        self.out, self.delta, self.b, self.opt = out, delta, b, opt
        self.net_w, self.net_h = net_w, net_h
        self.h, self.w = out.shape[3], out.shape[4]
        self.stats = stats

    # ---- get_yolo_box / delta_yolo_box ----
    def pred_box(self, n_mask: int, anchor: int, j: int, i: int) -> Box:
        o = self.out[self.b, n_mask, :4, j, i]
        aw, ah = float(self.opt.anchors[anchor, 0]), float(self.opt.anchors[anchor, 1])
        x, y = (i + float(o[0])) / self.w, (j + float(o[1])) / self.h
        if self.opt.new_coords:
            return x, y, float(o[2]) ** 2 * 4 * aw / self.net_w, float(o[3]) ** 2 * 4 * ah / self.net_h
        return x, y, _exp(float(o[2])) * aw / self.net_w, _exp(float(o[3])) * ah / self.net_h

    def box_delta(self, truth: Box, n_mask: int, anchor: int, j: int, i: int, scale: float,
                  iou_normalizer: float) -> Tuple[float, float]:
        opt, d = self.opt, self.delta[self.b, n_mask, :4, j, i]  # a view: writes go to self.delta
        if d[0] or d[1] or d[2] or d[3]:
            self.stats.rewritten_bbox += 1
        pred = self.pred_box(n_mask, anchor, j, i)
        pred_arr, truth_arr = _as_box(pred), _as_box(truth)
        with np.errstate(all="ignore"):  # an infinite predicted size gives NaN/0 as in C
            iou, giou = float(boxes.box_iou(pred_arr, truth_arr)), float(boxes.box_giou(pred_arr, truth_arr))
        o = self.out[self.b, n_mask, :4, j, i]
        if opt.iou_loss == "mse":
            aw, ah = float(opt.anchors[anchor, 0]), float(opt.anchors[anchor, 1])
            tx, ty = truth[0] * self.w - i, truth[1] * self.h - j
            if opt.new_coords:
                tw, th = _sqrt(truth[2] * self.net_w / (4 * aw)), _sqrt(truth[3] * self.net_h / (4 * ah))
            else:
                tw, th = _log(truth[2] * self.net_w / aw), _log(truth[3] * self.net_h / ah)
            for k, t in enumerate((tx, ty, tw, th)):
                d[k] += scale * (t - float(o[k])) * iou_normalizer
            return iou, giou
        px, py, pw, ph = pred
        pred = (px, py, pw if pw != 0 else 1.0, ph if ph != 0 else 1.0)  # "avoid nan in dx_box_iou"
        dx, dy, dw, dh = dx_box_iou(pred, truth, opt.iou_loss)
        if not opt.new_coords:  # chain rule of exp() for w and h only
            dw *= _exp(float(o[2]))
            dh *= _exp(float(o[3]))
        grads = [_finite_or_zero(v * iou_normalizer) for v in (dx, dy, dw, dh)]
        if opt.max_delta != FLT_MAX:
            grads = [_clip(v, opt.max_delta) for v in grads]
        for k, v in enumerate(grads):
            d[k] += v  # accumulate=1 in every Darknet call
        return iou, giou

    # ---- delta_yolo_class ----
    def class_delta(self, n_mask: int, j: int, i: int, class_id: int) -> None:
        opt = self.opt
        out = self.out[self.b, n_mask, 5:, j, i]
        d = self.delta[self.b, n_mask, 5:, j, i]
        eps = opt.label_smooth_eps
        multipliers = opt.classes_multipliers
        if d[class_id]:
            # this cell already trains this class: only that entry is refreshed (no cls_normalizer here: quirk)
            y = 1.0 * (1 - eps) + 0.5 * eps if eps else 1.0
            result = y - float(out[class_id])
            if math.isfinite(result):
                d[class_id] = result
            if multipliers is not None:
                d[class_id] *= multipliers[class_id]
            return
        if opt.focal_loss:
            alpha = 0.5
            pt = float(out[class_id]) + 0.000000000000001
            grad = -(1 - pt) * (2 * pt * _log(pt) + pt - 1)
            target = np.zeros_like(out)
            target[class_id] = 1
            d[:] = (target - out) * (alpha * grad)
            return
        target = np.zeros(out.shape, dtype=np.float32)
        target[class_id] = 1
        if eps:
            target = target * (1 - eps) + 0.5 * eps
        result = target - out
        finite = np.isfinite(result)
        d[finite] = result[finite]
        if multipliers is not None:  # cls_normalizer only takes effect together with counters_per_class (quirk)
            d[class_id] *= multipliers[class_id] * opt.cls_normalizer

    # ---- one truth assigned to one anchor ----
    def assign(self, truth: Box, class_id: int, n_mask: int, anchor: int, j: int, i: int) -> None:
        opt, stats = self.opt, self.stats
        class_multiplier = float(opt.classes_multipliers[class_id]) if opt.classes_multipliers is not None else 1.0
        iou, giou = self.box_delta(truth, n_mask, anchor, j, i, 2 - truth[2] * truth[3],
                                   opt.iou_normalizer * class_multiplier)
        stats.total_bbox += 1
        stats.tot_iou += iou
        self.tot_iou_loss += 1 - iou
        self.tot_giou_loss += 1 - giou
        obj = float(self.out[self.b, n_mask, 4, j, i])
        target = class_multiplier * opt.obj_normalizer * (1 - obj)
        if opt.objectness_smooth:
            if self.delta[self.b, n_mask, 4, j, i] == 0:
                self.delta[self.b, n_mask, 4, j, i] = target
        else:
            self.delta[self.b, n_mask, 4, j, i] = target
        self.class_delta(n_mask, j, i, class_id)
        stats.count += 1

    def positives(self, truths: np.ndarray, count: int) -> None:
        """The loop over truths of process_batch: best anchor over all anchors, then iou_thresh extras."""
        opt = self.opt
        self.tot_iou_loss = self.tot_giou_loss = 0.0
        for t in range(count):
            x, y, w, h = (float(v) for v in truths[t, :4])
            if x < 0 or y < 0 or x > 1 or y > 1 or w < 0 or h < 0:
                self.stats.wrong_labels += 1  # Darknet prints "Wrong label" and still uses the truth
            class_id = int(truths[t, 4])
            if class_id < 0 or class_id >= opt.classes:
                continue
            # Darknet truncates x*w; x == 1.0 would index one cell past the row (a write into the next row's
            # memory in C): darkpy uses the last cell instead.
            i = min(int(np.float32(x) * np.float32(self.w)), self.w - 1)
            j = min(int(np.float32(y) * np.float32(self.h)), self.h - 1)
            truth = (x, y, w, h)
            shape = _as_box((0.0, 0.0, w, h))
            anchor_boxes = np.zeros((len(opt.anchors), 4), dtype=np.float32)
            anchor_boxes[:, 2] = opt.anchors[:, 0] / np.float32(self.net_w)
            anchor_boxes[:, 3] = opt.anchors[:, 1] / np.float32(self.net_h)
            best_n = _first_max_index(boxes.box_iou(anchor_boxes, shape))
            if best_n in opt.mask:
                self.assign(truth, class_id, opt.mask.index(best_n), best_n, j, i)
            if opt.iou_thresh < 1.0:
                extra = _iou_kind(anchor_boxes, shape, opt.iou_thresh_kind) > opt.iou_thresh
                for n in np.nonzero(extra)[0]:
                    if n != best_n and n in opt.mask:
                        self.assign(truth, class_id, opt.mask.index(int(n)), int(n), j, i)
        if opt.iou_thresh < 1.0:
            _average_box_deltas(self.delta[self.b])


def _first_max_index(values: np.ndarray) -> int:
    """Darknet's `if (v > best) best = v` from 0: the first index of the largest positive value, else 0."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    best = int(np.argmax(values)) if values.size else 0
    return best if values.size and values[best] > 0 else 0


def _exp(v: float) -> float:
    """C's exp: +inf on overflow (Python raises instead)."""
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


def _sqrt(v: float) -> float:
    return math.sqrt(v) if v >= 0 else math.nan


def _log(v: float) -> float:
    """C's log: -inf for 0, NaN for negatives (Python raises instead)."""
    if v > 0:
        return math.log(v)
    return -math.inf if v == 0 else math.nan


def _average_box_deltas(delta_b: np.ndarray) -> None:
    """averages_yolo_deltas: where the objectness delta is set, divide box deltas by the positive classes there."""
    obj_set = delta_b[:, 4] != 0  # (A, H, W)
    positive_classes = (delta_b[:, 5:] > 0).sum(axis=1)  # (A, H, W)
    divide = obj_set & (positive_classes > 0)
    if divide.any():
        delta_b[:, :4] = np.where(divide[:, None], delta_b[:, :4] / np.maximum(positive_classes, 1)[:, None],
                                  delta_b[:, :4])


def _decode_yolo(out: np.ndarray, opt: YoloLossOptions, net_w: int, net_h: int) -> np.ndarray:
    """get_yolo_box for every cell and anchor of the mask -> (B, A, H, W, 4)."""
    B, A, _, H, W = out.shape
    anchors = opt.anchors[list(opt.mask)].astype(np.float32)
    gx = np.arange(W, dtype=np.float32)[None, None, None, :]
    gy = np.arange(H, dtype=np.float32)[None, None, :, None]
    x = (gx + out[:, :, 0]) / np.float32(W)
    y = (gy + out[:, :, 1]) / np.float32(H)
    aw = anchors[None, :, 0, None, None]
    ah = anchors[None, :, 1, None, None]
    with np.errstate(over="ignore"):
        if opt.new_coords:
            w = out[:, :, 2] * out[:, :, 2] * 4 * aw / np.float32(net_w)
            h = out[:, :, 3] * out[:, :, 3] * 4 * ah / np.float32(net_h)
        else:
            w = np.exp(out[:, :, 2]) * aw / np.float32(net_w)
            h = np.exp(out[:, :, 3]) * ah / np.float32(net_h)
    return np.stack([x, y, w, h], axis=-1)


def yolo_deltas(out: np.ndarray, truths: np.ndarray, opt: YoloLossOptions, net_w: int, net_h: int
                ) -> Tuple[np.ndarray, HeadLoss]:
    """Darknet's forward_yolo_layer in training: the delta of every output entry and the layer's cost.

    `out` is the activated output (B, A, 4+1+classes, H, W) as Darknet's forward leaves it (sigmoid on x, y, obj
    and classes unless new_coords, then x, y scaled by scale_x_y); `truths` is (B, T, 5).
    """
    out = np.array(out, dtype=np.float32, copy=True)
    B, A, E, H, W = out.shape
    if E != 5 + opt.classes:
        raise LossError(f"yolo output has {E} entries per anchor, expected 5 + classes = {5 + opt.classes}")
    truths = np.asarray(truths, dtype=np.float32)[:, :, :5]
    counts = _valid_counts(truths)
    delta = np.zeros_like(out)
    stats = HeadLoss(cost=0.0, batch=B)

    # Darknet zeroes a NaN/Inf objectness before using it (only when the image has truths)
    for b in np.nonzero(counts > 0)[0]:
        obj = out[b, :, 4]
        obj[~np.isfinite(obj)] = 0

    # 1. negatives: objectness pushed to 0 unless a truth overlaps by more than ignore_thresh
    best_iou, best_t = _best_truth_per_cell(_decode_yolo(out, opt, net_w, net_h), truths, counts, opt.classes,
                                            skip_negative_classes=True)
    # compare_yolo_class: does *any* class at the cell exceed 0.25 (the truth's class is not checked)
    class_match = (out[:, :, 5:] > 0.25).any(axis=2)
    best_match_iou = np.where(class_match, best_iou, np.float32(0))
    obj = out[:, :, 4]
    delta_obj = opt.obj_normalizer * (0 - obj)
    ignore = best_match_iou > opt.ignore_thresh
    if opt.objectness_smooth:
        smooth = opt.obj_normalizer * (best_match_iou - obj)
        delta_obj = np.where(ignore & (smooth > delta_obj), smooth, delta_obj)
    else:
        delta_obj = np.where(ignore, np.float32(0), delta_obj)
    delta[:, :, 4] = delta_obj

    images = [_YoloImage(out, delta, b, opt, net_w, net_h, stats) for b in range(B)]
    # truth_thresh (default 1: never): cells whose prediction already matches a truth become positives
    for b, n, j, i in zip(*np.nonzero(best_iou > opt.truth_thresh)):
        _truth_thresh_positive(images[b], truths[b, best_t[b, n, j, i]], float(best_iou[b, n, j, i]), n, j, i)

    # 2./3./4. positives
    tot_iou_loss = tot_giou_loss = 0.0
    for b in range(B):
        images[b].positives(truths[b], int(counts[b]))
        tot_iou_loss += images[b].tot_iou_loss
        tot_giou_loss += images[b].tot_giou_loss

    _set_cost(stats, delta, opt, tot_iou_loss, tot_giou_loss)
    return delta, stats


def _truth_thresh_positive(img: _YoloImage, truth_row: np.ndarray, best_iou: float, n: int, j: int, i: int) -> None:
    opt = img.opt
    obj = float(img.out[img.b, n, 4, j, i])
    iou_multiplier = best_iou * best_iou
    if opt.objectness_smooth:
        img.delta[img.b, n, 4, j, i] = opt.obj_normalizer * (iou_multiplier - obj)
    else:
        img.delta[img.b, n, 4, j, i] = opt.obj_normalizer * (1 - obj)
    class_id = int(truth_row[4])
    img.class_delta(n, j, i, class_id)
    class_multiplier = float(opt.classes_multipliers[class_id]) if opt.classes_multipliers is not None else 1.0
    if opt.objectness_smooth:
        img.delta[img.b, n, 5 + class_id, j, i] = class_multiplier * (
            iou_multiplier - float(img.out[img.b, n, 5 + class_id, j, i]))
    truth = tuple(float(v) for v in truth_row[:4])
    img.box_delta(truth, n, opt.mask[n], j, i, 2 - truth[2] * truth[3], opt.iou_normalizer * class_multiplier)
    img.stats.total_bbox += 1


def _set_cost(stats: HeadLoss, delta: np.ndarray, opt: YoloLossOptions, tot_iou_loss: float,
              tot_giou_loss: float) -> None:
    """The layer cost of forward_yolo_layer: |delta|^2, or for IoU losses the IoU term plus the rest."""
    total = float(np.square(delta, dtype=np.float64).sum())
    no_box = float(np.square(delta[:, :, 4:], dtype=np.float64).sum()) * opt.obj_normalizer
    stats.class_loss = no_box
    stats.iou_loss = total - no_box
    if opt.show_details == 0 or opt.iou_loss == "mse":
        stats.cost = total
        return
    count = max(stats.count, 1)
    iou_term = (tot_giou_loss if opt.iou_loss == "giou" else tot_iou_loss) / count
    stats.cost = opt.iou_normalizer * iou_term + no_box


# ---------------------------------------------------------------------------------------------------------------------
# [region] (YOLOv2)
# ---------------------------------------------------------------------------------------------------------------------

def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def region_deltas(out: np.ndarray, truths: np.ndarray, opt: RegionLossOptions, seen: int
                  ) -> Tuple[np.ndarray, HeadLoss]:
    """Darknet's forward_region_layer in training (CPU, no softmax tree).

    `out` is (B, A, coords+1+classes, H, W) as the head's activate() leaves it: x, y, w, h raw, logistic on the
    objectness, softmax over the classes. `seen` is the number of images trained so far (the prior-matching term
    applies while seen < 12800).
    """
    out = np.asarray(out, dtype=np.float32)
    B, A, E, H, W = out.shape
    truths = np.asarray(truths, dtype=np.float32)[:, :, :5]
    counts = _valid_counts(truths)
    delta = np.zeros_like(out)
    stats = HeadLoss(cost=0.0, batch=B)
    anchors = opt.anchors

    # decode every cell: x = (i + sigmoid(tx)) / W, w = exp(tw) * anchor_w / W  (get_region_box, DOABS)
    gx = np.arange(W, dtype=np.float32)[None, None, None, :]
    gy = np.arange(H, dtype=np.float32)[None, None, :, None]
    sx, sy = _sigmoid(out[:, :, 0]), _sigmoid(out[:, :, 1])
    with np.errstate(over="ignore"):
        pw = np.exp(out[:, :, 2]) * anchors[None, :A, 0, None, None] / W
        ph = np.exp(out[:, :, 3]) * anchors[None, :A, 1, None, None] / H
    pred = np.stack([(gx + sx) / W, (gy + sy) / H, pw, ph], axis=-1)
    class_ids = truths[:, :, 4].astype(np.int64)
    # region's loop skips class ids >= classes (negative ones are kept) before testing for the end of the list
    best_iou, best_t = _best_truth_per_cell(pred, truths, counts, opt.classes, skip_negative_classes=False)

    obj = out[:, :, 4]
    grad = obj * (1 - obj)  # logistic_gradient of the activated objectness
    if opt.classfix == -1:
        delta[:, :, 4] = opt.noobject_scale * ((best_iou - obj) * grad)
    else:
        delta[:, :, 4] = np.where(best_iou > opt.thresh, np.float32(0), opt.noobject_scale * ((0 - obj) * grad))
        if opt.classfix > 0:
            for b, n, j, i in zip(*np.nonzero(best_iou > opt.thresh)):
                scale = opt.class_scale * (float(obj[b, n, j, i]) if opt.classfix == 2 else 1.0)
                _region_class_delta(out, delta, b, n, j, i, int(class_ids[b, best_t[b, n, j, i]]), scale, opt)
    if seen < 12800:
        # early training: pull every box towards its anchor at the cell centre, scale .01
        prior_x = (np.arange(W, dtype=np.float32)[None, :] + 0.5) / W
        prior_y = (np.arange(H, dtype=np.float32)[:, None] + 0.5) / H
        tx = prior_x * W - np.arange(W)[None, :]
        ty = prior_y * H - np.arange(H)[:, None]
        delta[:, :, 0] = 0.01 * (tx[None, None] - sx) * (sx * (1 - sx))
        delta[:, :, 1] = 0.01 * (ty[None, None] - sy) * (sy * (1 - sy))
        # tw = log((anchor/W) * W / anchor) = 0
        delta[:, :, 2] = 0.01 * (0 - out[:, :, 2])
        delta[:, :, 3] = 0.01 * (0 - out[:, :, 3])

    for b in range(B):
        for t in range(int(counts[b])):
            _region_positive(out, delta, b, truths[b, t], opt, stats, W, H)

    stats.cost = float(np.square(delta, dtype=np.float64).sum())
    return delta, stats


def _region_class_delta(out, delta, b, n, j, i, class_id, scale, opt: RegionLossOptions) -> None:
    """delta_region_class without a tree: softmax cross-entropy gradient, or Darknet's focal variant."""
    p = out[b, n, 5:, j, i]
    target = np.zeros_like(p)
    target[class_id] = 1
    d = scale * (target - p)
    if opt.focal_loss:
        pt = float(p[class_id]) + 0.000000000000001
        d = d * (0.5 * (-(1 - pt) * (2 * pt * _log(pt) + pt - 1)))
    delta[b, n, 5:, j, i] = d


def _region_positive(out, delta, b, truth_row, opt: RegionLossOptions, stats: HeadLoss, W: int, H: int) -> None:
    class_id = int(truth_row[4])
    if class_id >= opt.classes:
        stats.wrong_labels += 1
        return
    x, y, w, h = (float(v) for v in truth_row[:4])
    i = min(int(np.float32(x) * np.float32(W)), W - 1)
    j = min(int(np.float32(y) * np.float32(H)), H - 1)
    A = out.shape[1]
    if opt.bias_match:
        sizes_w, sizes_h = opt.anchors[:A, 0] / np.float32(W), opt.anchors[:A, 1] / np.float32(H)
    else:
        with np.errstate(over="ignore"):
            sizes_w = np.exp(out[b, :, 2, j, i]) * opt.anchors[:A, 0] / np.float32(W)
            sizes_h = np.exp(out[b, :, 3, j, i]) * opt.anchors[:A, 1] / np.float32(H)
    shapes = np.zeros((A, 4), dtype=np.float32)
    shapes[:, 2], shapes[:, 3] = sizes_w, sizes_h
    best_n = _first_max_index(boxes.box_iou(shapes, _as_box((0.0, 0.0, w, h))))
    o = out[b, best_n, :, j, i]
    sx, sy = 1 / (1 + _exp(-float(o[0]))), 1 / (1 + _exp(-float(o[1])))
    pred = ((i + sx) / W, (j + sy) / H, _exp(float(o[2])) * float(opt.anchors[best_n, 0]) / W,
            _exp(float(o[3])) * float(opt.anchors[best_n, 1]) / H)
    iou = float(boxes.box_iou(_as_box(pred), _as_box((x, y, w, h))))
    s = opt.coord_scale
    d = delta[b, best_n, :, j, i]
    d[0] = s * (x * W - i - sx) * (sx * (1 - sx))
    d[1] = s * (y * H - j - sy) * (sy * (1 - sy))
    d[2] = s * (_log(w * W / float(opt.anchors[best_n, 0])) - float(o[2]))
    d[3] = s * (_log(h * H / float(opt.anchors[best_n, 1])) - float(o[3]))
    obj = float(o[4])
    target = iou if opt.rescore else 1.0
    d[4] = opt.object_scale * (target - obj) * (obj * (1 - obj))
    _region_class_delta(out, delta, b, best_n, j, i, class_id, opt.class_scale, opt)
    stats.count += 1
    stats.tot_iou += iou
    stats.total_bbox += 1


# ---------------------------------------------------------------------------------------------------------------------
# The loss over all heads, in torch
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class LossResult:
    """surrogate: backward() of it gives Darknet's gradients; cost: Darknet's get_network_cost (mean over heads)."""

    surrogate: torch.Tensor
    cost: float
    heads: List[HeadLoss]
    deltas: List[torch.Tensor]


class DarknetLoss:
    """The training loss of a model's detection heads ([yolo] and [region]), as Darknet computes it.

    `DarknetLoss(model.heads)(raw_outputs, truths, net_w, net_h, seen)` where raw_outputs are what the model
    returns in train() mode (one (B, A, E, H, W) tensor per head) and truths is (B, T, 5).
    """

    def __init__(self, heads: Sequence, warn: bool = True):
        self.heads = list(heads)
        if not self.heads:
            raise LossError("the cfg has no [yolo] or [region] layer: there is nothing to train a detector with")
        self.options: List[object] = []
        ignored: List[str] = []
        for head in self.heads:
            if head.kind == "yolo":
                opt = YoloLossOptions.from_head(head)
            elif head.kind == "region":
                opt = RegionLossOptions.from_head(head)
            else:
                raise LossError(f"{_where(head)}: training a [{head.kind}] layer is not supported by darkpy "
                                "(only [yolo] and [region] are)")
            self.options.append(opt)
            ignored += [f"{_where(head)} {what}" for what in opt.ignored]
        if warn and ignored:
            warnings.warn("darkpy's loss ignores these options:\n  " + "\n  ".join(ignored), LossWarning,
                          stacklevel=2)

    def deltas(self, raw_outputs: Sequence[torch.Tensor], truths, net_w: int, net_h: int, seen: int = 0
               ) -> Tuple[List[np.ndarray], List[HeadLoss]]:
        """Darknet's delta arrays (numpy, same shape as each raw output) and per-head costs."""
        truths_np = truths.detach().cpu().numpy() if torch.is_tensor(truths) else np.asarray(truths)
        deltas, stats = [], []
        for head, opt, raw in zip(self.heads, self.options, raw_outputs):
            with torch.no_grad():
                out = head.activate(raw.detach().float()).cpu().numpy()
            if isinstance(opt, YoloLossOptions):
                delta, st = yolo_deltas(out, truths_np, opt, net_w, net_h)
            else:
                delta, st = region_deltas(out, truths_np, opt, seen)
            deltas.append(delta)
            stats.append(st)
        return deltas, stats

    def __call__(self, raw_outputs: Sequence[torch.Tensor], truths, net_w: int, net_h: int, seen: int = 0
                 ) -> LossResult:
        if len(raw_outputs) != len(self.heads):
            raise LossError(f"the model returned {len(raw_outputs)} outputs for {len(self.heads)} heads")
        deltas_np, stats = self.deltas(raw_outputs, truths, net_w, net_h, seen)
        surrogate = None
        deltas = []
        for raw, delta_np in zip(raw_outputs, deltas_np):
            delta = torch.from_numpy(delta_np).to(raw.device)
            deltas.append(delta)
            term = -(delta * raw.float()).sum()  # d term / d raw = -delta: Darknet's backward copies delta
            surrogate = term if surrogate is None else surrogate + term
        cost = sum(s.cost for s in stats) / len(stats)
        return LossResult(surrogate=surrogate, cost=cost, heads=stats, deltas=deltas)


def format_head_line(kind_options, stats: HeadLoss, index: int) -> str:
    """Darknet's per-layer training line (`v3 (mse loss, Normalizer: ...) Region N Avg (IOU: ...) ...`)."""
    b = max(stats.batch, 1)
    if isinstance(kind_options, YoloLossOptions):
        o = kind_options
        name = "mse" if o.iou_loss == "mse" else ("giou" if o.iou_loss == "giou" else "iou")
        return (f"v3 ({name} loss, Normalizer: (iou: {o.iou_normalizer:.2f}, obj: {o.obj_normalizer:.2f}, "
                f"cls: {o.cls_normalizer:.2f}) Region {index} Avg (IOU: {stats.avg_iou:f}), count: {stats.count}, "
                f"class_loss = {stats.class_loss / b:f}, iou_loss = {stats.iou_loss / b:f}, "
                f"total_loss = {(stats.class_loss + stats.iou_loss) / b:f} ")
    return f"Region Avg IOU: {stats.avg_iou:f}, count: {stats.count}"
