"""[yolo] (src/yolo_layer.c) and [Gaussian_yolo] (src/gaussian_yolo_layer.c): activation, decoding, loss."""
import math
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from darkpy.boxes import (F32, IOU_KINDS, NMS_KINDS, Box, BoxSet, box_giou, box_iou, box_iou_kind, correct_boxes,
                          dx_box_iou)
from darkpy.cfg import Section
from darkpy.heads.base import (COMMON_OPTIONS, Head, HeadLoss, LossError, TorchBoxes, as_box,
                               best_truth_per_cell, c_exp, c_log, c_sqrt, class_probs, exp_scale, first_max_indices,
                               valid_counts)
from darkpy.layers.base import BuildContext, register

FLT_MAX = 3.4028234663852886e38  # Darknet's default max_delta (FLT_MAX): no clipping

# Options Darknet reads in parse_yolo (training, tracking and detection settings) with their defaults.
YOLO_OPTIONS: Dict[str, object] = {
    **COMMON_OPTIONS, "ignore_thresh": 0.5, "truth_thresh": 1.0, "iou_thresh": 1.0, "iou_thresh_kind": "iou",
    "iou_loss": "mse", "iou_normalizer": 0.75, "obj_normalizer": 1.0, "cls_normalizer": 1.0,
    "delta_normalizer": 1.0, "max_delta": FLT_MAX, "label_smooth_eps": 0.0, "objectness_smooth": 0,
    "focal_loss": 0, "beta_nms": 0.6, "show_details": 1, "counters_per_class": "", "embedding_layer": 0,
    "track_history_size": 5, "sim_thresh": 0.8, "dets_for_track": 1, "dets_for_show": 1, "track_ciou_norm": 0.01,
    "equidistant_point": 0, "uc_normalizer": 1.0, "yolo_point": "center",
}


Array = Union[np.ndarray, torch.Tensor]  # _yolo_point serves decode (numpy) and decode_torch


def _scale_xy(t: torch.Tensor, s: float) -> torch.Tensor:
    """scale_x_y on an activated x or y: t * s - (s - 1) / 2."""
    return t * s - 0.5 * (s - 1.0) if s != 1.0 else t


@register("yolo")
class YoloLayer(Head):
    """YOLOv3/v4: the logistic on x, y, objectness and classes (unless new_coords), anchors in input pixels."""

    OPTIONS = YOLO_OPTIONS
    ignore_thresh: float
    truth_thresh: float
    iou_thresh: float
    iou_thresh_kind: str  # one of IOU_KINDS (Darknet uses iou for any other)
    iou_loss: str  # mse or one of IOU_KINDS (any other string means iou, as in Darknet)
    iou_normalizer: float
    obj_normalizer: float
    cls_normalizer: float
    max_delta: float
    label_smooth_eps: float
    objectness_smooth: int
    focal_loss: int
    show_details: int
    yolo_point: str
    classes_multipliers: Optional[np.ndarray]

    def __init__(self, section: Section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        self._read_anchors(s, default_mask=True)
        self.scale_x_y = s.get_float("scale_x_y", 1.0)
        self.new_coords = s.get_int("new_coords", 0)
        self.nms_kind = s.get_str("nms_kind", "default")
        if self.nms_kind not in NMS_KINDS:
            raise s.error(f"unknown nms_kind '{self.nms_kind}' ({', '.join(NMS_KINDS)})", "nms_kind")
        self._read_options(s)
        if self.iou_loss not in ("mse",) + IOU_KINDS:
            self.iou_loss = "iou"
        if self.iou_thresh_kind not in IOU_KINDS:
            self.iou_thresh_kind = "iou"
        self.classes_multipliers = None  # from counters_per_class, set by prepare_loss
        self._check_filters(s, "classes")
        self.embedding_filters = self._embedding_filters(s, ctx)
        self.embeddings_trained = False  # a [contrastive] layer that reads this layer's embeddings sets it

    def _embedding_filters(self, s: Section, ctx: BuildContext) -> int:
        """parse_yolo: the output channels of the embedding_layer (default 999999: none), 0 if none."""
        value = s.get_int("embedding_layer", 999999)
        if not s.has("embedding_layer") or value == 999999:
            return 0
        index = ctx.index + value if value < 0 else value
        return int(ctx.shapes[index][0]) if 0 <= index < ctx.index else 0

    def embedding_size(self) -> int:
        """Darknet's l.embedding_size: the embedding layer's filters / anchors of the mask (0 without one)."""
        return self.embedding_filters // len(self.mask)

    def track_labels(self, truths: np.ndarray, grid_wh: Tuple[int, int], net_wh: Tuple[int, int]
                     ) -> Tuple[np.ndarray, np.ndarray]:
        """What forward_yolo_layer in training leaves in l.labels and l.class_ids for a [contrastive] layer:
        (B, n, H, W) track ids (the truth's 6th value) and class ids where a truth's best anchor is in the mask
        (a later truth overwrites an earlier one), -1 elsewhere. `truths` is (B, T, 6)."""
        truths = np.asarray(truths, dtype=np.float32)
        if truths.shape[-1] < 6:
            raise LossError(f"{self.cfg_location()}: a [contrastive] loss needs truths with a track id "
                            f"(6 values per box), got {truths.shape[-1]}")
        labels = np.full((truths.shape[0], len(self.mask), grid_wh[1], grid_wh[0]), -1, dtype=np.int64)
        class_ids = labels.copy()
        anchor_boxes = _anchor_boxes(self.anchor_array(every=True), *net_wh)
        for b, count in enumerate(valid_counts(truths)):
            best, _ = _best_anchors(truths[b, :count], anchor_boxes)
            for truth, best_n in zip(truths[b, :count], best):
                class_id = int(truth[4])
                if class_id < 0 or class_id >= self.classes:
                    continue
                i, j = _truth_cell(float(truth[0]), float(truth[1]), *grid_wh)
                if best_n in self.mask:
                    labels[b, self.mask.index(best_n), j, i] = int(truth[5])
                    class_ids[b, self.mask.index(best_n), j, i] = class_id
        return labels, class_ids

    def _class_multipliers(self) -> Optional[np.ndarray]:
        """counters_per_class -> max_count / count per class, capped at max_delta (get_classes_multipliers)."""
        counters = self.section.get_int_list("counters_per_class")  # the options table keeps the text
        if not counters:
            return None
        if len(counters) != self.classes:
            raise LossError(f"{self.cfg_location()} counters_per_class has {len(counters)} values but "
                            f"classes={self.classes}")
        counts = np.array([max(1, c) for c in counters], dtype=np.float64)
        return np.minimum(counts.max() / counts, self.max_delta).astype(np.float32)

    def class_multiplier(self, class_id: int) -> float:
        return float(self.classes_multipliers[class_id]) if self.classes_multipliers is not None else 1.0

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """forward_yolo_layer: the logistic on x, y, objectness and classes, then scale_x_y on x, y."""
        # the raw tensor may be read by other layers: activate a copy, in (B, A, E, H, W) order (from a channels_last
        # convolution the slices below are then contiguous, and so is the array the decoding reads)
        out = raw.clone(memory_format=torch.contiguous_format)
        if not self.new_coords:  # with new_coords the conv before already applied the logistic
            out[:, :, :2].sigmoid_()
            out[:, :, 4:].sigmoid_()
        if self.scale_x_y != 1.0:
            # An assignment, not .mul_().sub_() on the slice: torch's ONNX exporter drops the second in-place op
            # on a slice (the exported x, y missed the -0.5*(s-1)).
            out[:, :, :2] = out[:, :, :2] * self.scale_x_y - 0.5 * (self.scale_x_y - 1.0)
        return out

    # ---- decoding ---------------------------------------------------------------------------------------------
    def decode(self, output: np.ndarray, net_wh: Tuple[int, int], image_wh: Tuple[int, int], thresh: float,
               hier: float = 0.5, letter_box: bool = False) -> BoxSet:
        """Boxes with objectness > thresh (src/yolo_layer.c get_yolo_detections + get_yolo_box +
        correct_yolo_boxes)."""
        thresh = F32(thresh)
        cells = self._cells(output, thresh)
        flat, anchor_wh = cells.entries, cells.anchor_wh
        net_w, net_h = net_wh
        x, y = cells.centre(flat[:, 0], flat[:, 1])
        if self.new_coords:
            w = flat[:, 2] * flat[:, 2] * F32(4) * anchor_wh[:, 0] / F32(net_w)
            h = flat[:, 3] * flat[:, 3] * F32(4) * anchor_wh[:, 1] / F32(net_h)
        else:
            w = exp_scale(flat[:, 2], anchor_wh[:, 0], net_w)
            h = exp_scale(flat[:, 3], anchor_wh[:, 1], net_h)
        xywh = correct_boxes(np.stack([x, y, w, h], axis=1).astype(F32), image_wh, net_wh, letter_box)
        objectness = flat[:, 4].copy()
        return BoxSet(xywh, objectness, class_probs(objectness, flat[:, 5:], thresh))

    def decode_torch(self, out: torch.Tensor, net_wh: Tuple[int, int]) -> TorchBoxes:
        """get_yolo_box (src/yolo_layer.c), boxes relative to the network input; prob = obj * class."""
        net_w, net_h = net_wh
        h, w = out.shape[-2:]
        col, row, aw, ah = self._grid_torch(out)
        x = (col + out[:, :, 0]) / w
        y = (row + out[:, :, 1]) / h
        if self.new_coords:  # the conv before applied the logistic: w = tw^2 * 4 * anchor
            bw = out[:, :, 2] * out[:, :, 2] * 4 * aw / net_w
            bh = out[:, :, 3] * out[:, :, 3] * 4 * ah / net_h
        else:
            bw = torch.exp(out[:, :, 2]) * aw / net_w
            bh = torch.exp(out[:, :, 3]) * ah / net_h
        scores = out[:, :, 4:5] * out[:, :, 5:]
        return (x, y, bw, bh), scores

    def _pred_boxes(self, out: np.ndarray, net_w: int, net_h: int) -> np.ndarray:
        """get_yolo_box for every cell and anchor of the mask -> (B, A, H, W, 4), as the loss computes it."""
        B, A, _, H, W = out.shape
        anchors = self.anchor_array()
        gx = np.arange(W, dtype=np.float32)[None, None, None, :]
        gy = np.arange(H, dtype=np.float32)[None, None, :, None]
        x = (gx + out[:, :, 0]) / np.float32(W)
        y = (gy + out[:, :, 1]) / np.float32(H)
        aw = anchors[None, :, 0, None, None]
        ah = anchors[None, :, 1, None, None]
        with np.errstate(over="ignore"):
            if self.new_coords:
                w = out[:, :, 2] * out[:, :, 2] * 4 * aw / np.float32(net_w)
                h = out[:, :, 3] * out[:, :, 3] * 4 * ah / np.float32(net_h)
            else:
                w = np.exp(out[:, :, 2]) * aw / np.float32(net_w)
                h = np.exp(out[:, :, 3]) * ah / np.float32(net_h)
        return np.stack([x, y, w, h], axis=-1)

    # ---- training ---------------------------------------------------------------------------------------------
    @property
    def gradient_scale(self) -> float:
        """backward_yolo_layer_gpu hands delta_normalizer * delta to the layer below (Darknet's CPU build ignores
        delta_normalizer; darkpy follows the GPU build, which users train with)."""
        return float(self.delta_normalizer)

    def prepare_loss(self) -> List[str]:
        """The checks and notes of parse_yolo's training options; reads counters_per_class (one per class)."""
        o = self.options
        self.classes_multipliers = self._class_multipliers()
        ignored = []
        if o["iou_thresh_kind"] not in IOU_KINDS:
            ignored.append(f"iou_thresh_kind={o['iou_thresh_kind']} (Darknet says 'Wrong iou_thresh_kind' and "
                           "uses iou)")
        ignored += super().prepare_loss()
        if o["embedding_layer"] not in (0, 999999) and not self.embeddings_trained:
            ignored.append(f"embedding_layer={o['embedding_layer']} (tracking embeddings are not trained)")
        return ignored

    def deltas(self, out: np.ndarray, truths: np.ndarray, net_wh: Tuple[int, int], seen: int
               ) -> Tuple[np.ndarray, HeadLoss]:
        """src/yolo_layer.c forward_yolo_layer in training (CPU). `out` is as activate() leaves it: the logistic
        on x, y, obj and classes unless new_coords, then x, y scaled by scale_x_y."""
        net_w, net_h = net_wh
        out = np.array(out, dtype=np.float32, copy=True)
        B, A, E, H, W = out.shape
        if E != 5 + self.classes:
            raise LossError(f"yolo output has {E} entries per anchor, expected 5 + classes = {5 + self.classes}")
        truths = np.asarray(truths, dtype=np.float32)[:, :, :5]
        counts = valid_counts(truths)
        delta = np.zeros_like(out)
        stats = HeadLoss(cost=0.0, batch=B)

        # Darknet zeroes a NaN/Inf objectness before using it (only when the image has truths)
        for b in np.nonzero(counts > 0)[0]:
            obj = out[b, :, 4]
            obj[~np.isfinite(obj)] = 0

        best_iou, best_t = best_truth_per_cell(self._pred_boxes(out, net_w, net_h), truths, counts, self.classes,
                                               skip_negative_classes=True)
        delta[:, :, 4] = self._negative_objectness(out, best_iou)
        images = [_YoloImage(out, delta, b, self, net_w, net_h, stats) for b in range(B)]
        # truth_thresh (default 1: never): cells whose prediction already matches a truth become positives
        for b, n, j, i in zip(*np.nonzero(best_iou > self.truth_thresh)):
            _truth_thresh_positive(images[b], truths[b, best_t[b, n, j, i]], float(best_iou[b, n, j, i]), n, j, i)

        # 2./3./4. positives
        tot_iou_loss = tot_giou_loss = 0.0
        for b in range(B):
            images[b].positives(truths[b], int(counts[b]))
            tot_iou_loss += images[b].tot_iou_loss
            tot_giou_loss += images[b].tot_giou_loss

        _set_cost(stats, delta, self, tot_iou_loss, tot_giou_loss)
        return delta, stats

    def _negative_objectness(self, out: np.ndarray, best_iou: np.ndarray) -> np.ndarray:
        """1. negatives: objectness pushed to 0 unless a truth overlaps by more than ignore_thresh."""
        # compare_yolo_class: does *any* class at the cell exceed 0.25 (the truth's class is not checked)
        class_match = (out[:, :, 5:] > 0.25).any(axis=2)
        best_match_iou = np.where(class_match, best_iou, np.float32(0))
        obj = out[:, :, 4]
        delta_obj = self.obj_normalizer * (0 - obj)
        ignore = best_match_iou > self.ignore_thresh
        if self.objectness_smooth:
            smooth = self.obj_normalizer * (best_match_iou - obj)
            return np.where(ignore & (smooth > delta_obj), smooth, delta_obj)
        return np.where(ignore, np.float32(0), delta_obj)

    def loss_line(self, stats: HeadLoss, index: int) -> str:
        """forward_yolo_layer's `v3 (mse loss, Normalizer: ...) Region N Avg (IOU: ...) ...` line."""
        b = max(stats.batch, 1)
        count = max(stats.count, 1)  # Darknet sets count to 1 when no truth fell in this layer, before printing
        name = "mse" if self.iou_loss == "mse" else ("giou" if self.iou_loss == "giou" else "iou")
        return (f"v3 ({name} loss, Normalizer: (iou: {self.iou_normalizer:.2f}, obj: {self.obj_normalizer:.2f}, "
                f"cls: {self.cls_normalizer:.2f}) Region {index} Avg (IOU: {stats.avg_iou:f}), count: {count}, "
                f"class_loss = {stats.class_loss / b:f}, iou_loss = {stats.iou_loss / b:f}, "
                f"total_loss = {(stats.class_loss + stats.iou_loss) / b:f} ")


@register("Gaussian_yolo")
class GaussianYoloLayer(YoloLayer):
    """Entries x, sx, y, sy, w, sw, h, sh, objectness, classes: the logistic on all but w and h."""

    box_entries = 8

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """forward_gaussian_yolo_layer: the logistic on all entries but w and h, then scale_x_y on x, y."""
        act = torch.sigmoid(raw)
        act = torch.cat([act[:, :, :4], raw[:, :, 4:5], act[:, :, 5:6], raw[:, :, 6:7], act[:, :, 7:]], dim=2)
        x = _scale_xy(act[:, :, 0:1], self.scale_x_y)
        y = _scale_xy(act[:, :, 2:3], self.scale_x_y)
        return torch.cat([x, act[:, :, 1:2], y, act[:, :, 3:]], dim=2)

    def decode(self, output: np.ndarray, net_wh: Tuple[int, int], image_wh: Tuple[int, int], thresh: float,
               hier: float = 0.5, letter_box: bool = False) -> BoxSet:
        """Boxes with objectness > thresh, prob = obj·cls·(1 - mean σ) (src/gaussian_yolo_layer.c
        get_gaussian_yolo_detections, correct_gaussian_yolo_boxes)."""
        thresh = F32(thresh)
        cells = self._cells(output, thresh)
        flat, anchor_wh = cells.entries, cells.anchor_wh
        net_w, net_h = net_wh
        w = exp_scale(flat[:, 4], anchor_wh[:, 0], net_w)
        h = exp_scale(flat[:, 6], anchor_wh[:, 1], net_h)
        x, y = self._yolo_point(*cells.centre(flat[:, 0], flat[:, 2]), w, h)
        xywh = correct_boxes(np.stack([x, y, w, h], axis=1).astype(F32), image_wh, net_wh, letter_box,
                             gaussian=True)
        uncertainty = flat[:, [1, 3, 5, 7]].copy()
        # uc_aver = (uc0+uc1+uc2+uc3)/4.0 (float, then double); prob = obj*cls*(1.0 - uc_aver) in double
        mean_sigma = (((uncertainty[:, 0] + uncertainty[:, 1]) + uncertainty[:, 2]) + uncertainty[:, 3]) / F32(4)
        objectness = flat[:, 8].copy()
        probs = ((objectness[:, None] * flat[:, 9:]).astype(np.float64)
                 * (1.0 - mean_sigma.astype(np.float64))[:, None]).astype(F32)
        probs = np.where(probs > thresh, probs, F32(0)).astype(F32)
        return BoxSet(xywh, objectness, probs, uncertainty)

    def _yolo_point(self, x: Array, y: Array, w: Array, h: Array) -> Tuple[Array, Array]:
        """yolo_point: the decoded x, y are the box's centre, top-left or bottom-right corner."""
        if self.yolo_point == "left_top":
            return x + w / 2, y + h / 2
        if self.yolo_point == "right_bottom":
            return x - w / 2, y - h / 2
        return x, y

    def decode_torch(self, out: torch.Tensor, net_wh: Tuple[int, int]) -> TorchBoxes:
        """get_gaussian_yolo_box; prob = obj * class * (1 - mean of the four sigmas)
        (get_gaussian_yolo_detections)."""
        net_w, net_h = net_wh
        h, w = out.shape[-2:]
        col, row, aw, ah = self._grid_torch(out)
        bw = torch.exp(out[:, :, 4]) * aw / net_w
        bh = torch.exp(out[:, :, 6]) * ah / net_h
        x, y = self._yolo_point((col + out[:, :, 0]) / w, (row + out[:, :, 2]) / h, bw, bh)
        mean_sigma = (out[:, :, 1] + out[:, :, 3] + out[:, :, 5] + out[:, :, 7]) / 4
        scores = out[:, :, 8:9] * out[:, :, 9:] * (1 - mean_sigma).unsqueeze(2)
        return (x, y, bw, bh), scores

    def prepare_loss(self) -> List[str]:
        raise LossError(f"{self.cfg_location()}: training a [{self.type}] layer is not supported by darkpy "
                        "(only [yolo] and [region] are)")


# ============================================================================ the loss of one image

class _YoloImage:
    """Darknet's process_batch for one image b of one [yolo] layer, writing into the shared delta array."""

    def __init__(self, out: np.ndarray, delta: np.ndarray, b: int, head: "YoloLayer", net_w: int, net_h: int,
                 stats: HeadLoss):
        self.out, self.delta, self.b, self.head = out, delta, b, head
        self.net_w, self.net_h = net_w, net_h
        self.h, self.w = out.shape[3], out.shape[4]
        self.stats = stats
        self.anchors = head.anchor_array(every=True)  # best_n runs over every anchor of the cfg line
        self.anchor_boxes = _anchor_boxes(self.anchors, net_w, net_h)

    # ---- get_yolo_box / delta_yolo_box ----
    def pred_box(self, n_mask: int, anchor: int, j: int, i: int) -> Box:
        o = self.out[self.b, n_mask, :4, j, i]
        aw, ah = float(self.anchors[anchor, 0]), float(self.anchors[anchor, 1])
        x, y = (i + float(o[0])) / self.w, (j + float(o[1])) / self.h
        if self.head.new_coords:
            return x, y, float(o[2]) ** 2 * 4 * aw / self.net_w, float(o[3]) ** 2 * 4 * ah / self.net_h
        return x, y, c_exp(float(o[2])) * aw / self.net_w, c_exp(float(o[3])) * ah / self.net_h

    def box_delta(self, truth: Box, n_mask: int, anchor: int, j: int, i: int, scale: float,
                  iou_normalizer: float) -> Tuple[float, float]:
        head, d = self.head, self.delta[self.b, n_mask, :4, j, i]  # a view: writes go to self.delta
        if d[0] or d[1] or d[2] or d[3]:
            self.stats.rewritten_bbox += 1
        pred = self.pred_box(n_mask, anchor, j, i)
        pred_arr, truth_arr = as_box(pred), as_box(truth)
        with np.errstate(all="ignore"):  # an infinite predicted size gives NaN/0 as in C
            iou, giou = float(box_iou(pred_arr, truth_arr)), float(box_giou(pred_arr, truth_arr))
        o = self.out[self.b, n_mask, :4, j, i]
        if head.iou_loss == "mse":
            aw, ah = float(self.anchors[anchor, 0]), float(self.anchors[anchor, 1])
            tx, ty = truth[0] * self.w - i, truth[1] * self.h - j
            if head.new_coords:
                tw, th = c_sqrt(truth[2] * self.net_w / (4 * aw)), c_sqrt(truth[3] * self.net_h / (4 * ah))
            else:
                tw, th = c_log(truth[2] * self.net_w / aw), c_log(truth[3] * self.net_h / ah)
            for k, t in enumerate((tx, ty, tw, th)):
                d[k] += scale * (t - float(o[k])) * iou_normalizer
            return iou, giou
        px, py, pw, ph = pred
        pred = (px, py, pw if pw != 0 else 1.0, ph if ph != 0 else 1.0)  # "avoid nan in dx_box_iou"
        dx, dy, dw, dh = dx_box_iou(pred, truth, head.iou_loss)
        if not head.new_coords:  # chain rule of exp() for w and h only
            dw *= c_exp(float(o[2]))
            dh *= c_exp(float(o[3]))
        grads = [_finite_or_zero(v * iou_normalizer) for v in (dx, dy, dw, dh)]
        if head.max_delta != FLT_MAX:
            grads = [_clip(v, head.max_delta) for v in grads]
        for k, v in enumerate(grads):
            d[k] += v  # accumulate=1 in every Darknet call
        return iou, giou

    # ---- delta_yolo_class ----
    def class_delta(self, n_mask: int, j: int, i: int, class_id: int) -> None:
        head = self.head
        out = self.out[self.b, n_mask, 5:, j, i]
        d = self.delta[self.b, n_mask, 5:, j, i]
        eps = head.label_smooth_eps
        multipliers = head.classes_multipliers
        if d[class_id]:
            # this cell already trains this class: only that entry is refreshed (no cls_normalizer here: quirk)
            y = 1.0 * (1 - eps) + 0.5 * eps if eps else 1.0
            result = y - float(out[class_id])
            if math.isfinite(result):
                d[class_id] = result
            if multipliers is not None:
                d[class_id] *= multipliers[class_id]
            return
        if head.focal_loss:
            alpha = 0.5
            pt = float(out[class_id]) + 0.000000000000001
            grad = -(1 - pt) * (2 * pt * c_log(pt) + pt - 1)
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
            d[class_id] *= multipliers[class_id] * head.cls_normalizer

    # ---- one truth assigned to one anchor ----
    def assign(self, truth: Box, class_id: int, n_mask: int, anchor: int, j: int, i: int) -> None:
        head, stats = self.head, self.stats
        class_multiplier = head.class_multiplier(class_id)
        iou, giou = self.box_delta(truth, n_mask, anchor, j, i, 2 - truth[2] * truth[3],
                                   head.iou_normalizer * class_multiplier)
        stats.total_bbox += 1
        stats.tot_iou += iou
        self.tot_iou_loss += 1 - iou
        self.tot_giou_loss += 1 - giou
        obj = float(self.out[self.b, n_mask, 4, j, i])
        target = class_multiplier * head.obj_normalizer * (1 - obj)
        if head.objectness_smooth:
            if self.delta[self.b, n_mask, 4, j, i] == 0:
                self.delta[self.b, n_mask, 4, j, i] = target
        else:
            self.delta[self.b, n_mask, 4, j, i] = target
        self.class_delta(n_mask, j, i, class_id)
        stats.count += 1

    def positives(self, truths: np.ndarray, count: int) -> None:
        """The loop over truths of process_batch: best anchor over all anchors, then iou_thresh extras. The
        anchors are matched for all truths at once (the same float32 arithmetic as one by one); the assignments
        stay a loop in Darknet's truth order, since a later truth overwrites an earlier one's deltas in a cell."""
        head = self.head
        self.tot_iou_loss = self.tot_giou_loss = 0.0
        best, shapes = _best_anchors(truths[:count], self.anchor_boxes)
        extras = box_iou_kind(self.anchor_boxes[None], shapes, head.iou_thresh_kind) > head.iou_thresh \
            if head.iou_thresh < 1.0 else None
        for t in range(count):
            x, y, w, h = (float(v) for v in truths[t, :4])
            if x < 0 or y < 0 or x > 1 or y > 1 or w < 0 or h < 0:
                self.stats.wrong_labels += 1  # Darknet prints "Wrong label" and still uses the truth
            class_id = int(truths[t, 4])
            if class_id < 0 or class_id >= head.classes:
                continue
            i, j = _truth_cell(x, y, self.w, self.h)
            truth, best_n = (x, y, w, h), int(best[t])
            if best_n in head.mask:
                self.assign(truth, class_id, head.mask.index(best_n), best_n, j, i)
            if extras is not None:
                for n in np.nonzero(extras[t])[0]:
                    if n != best_n and n in head.mask:
                        self.assign(truth, class_id, head.mask.index(int(n)), int(n), j, i)
        if head.iou_thresh < 1.0:
            _average_box_deltas(self.delta[self.b])


def _anchor_boxes(anchors: np.ndarray, net_w: int, net_h: int) -> np.ndarray:
    """The anchors as boxes centred on 0, relative to the network (process_batch's anchor shapes)."""
    boxes = np.zeros((len(anchors), 4), dtype=np.float32)
    boxes[:, 2] = anchors[:, 0] / np.float32(net_w)
    boxes[:, 3] = anchors[:, 1] / np.float32(net_h)
    return boxes


def _best_anchors(truths: np.ndarray, anchor_boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """process_batch: each truth's best anchor over every anchor of the cfg line (IoU of the shapes alone, the
    first of equal ones), for all truths at once (the same float32 arithmetic as one by one); and the truths'
    shapes centred on 0, (T, 1, 4), for the iou_thresh extras."""
    shapes = np.zeros((len(truths), 1, 4), dtype=np.float32)
    shapes[:, 0, 2:] = truths[:, 2:4]
    return first_max_indices(box_iou(anchor_boxes[None], shapes)), shapes


def _truth_cell(x: float, y: float, grid_w: int, grid_h: int) -> Tuple[int, int]:
    """The cell (i, j) of a truth's centre. Darknet truncates x*w; x == 1.0 would index one cell past the row (a
    write into the next row's memory in C): darkpy uses the last cell instead."""
    i = min(int(np.float32(x) * np.float32(grid_w)), grid_w - 1)
    j = min(int(np.float32(y) * np.float32(grid_h)), grid_h - 1)
    return i, j


def _average_box_deltas(delta_b: np.ndarray) -> None:
    """averages_yolo_deltas: where the objectness delta is set, divide box deltas by the positive classes there."""
    obj_set = delta_b[:, 4] != 0  # (A, H, W)
    positive_classes = (delta_b[:, 5:] > 0).sum(axis=1)  # (A, H, W)
    divide = obj_set & (positive_classes > 0)
    if divide.any():
        delta_b[:, :4] = np.where(divide[:, None], delta_b[:, :4] / np.maximum(positive_classes, 1)[:, None],
                                  delta_b[:, :4])


def _truth_thresh_positive(img: _YoloImage, truth_row: np.ndarray, best_iou: float, n: int, j: int, i: int) -> None:
    head = img.head
    obj = float(img.out[img.b, n, 4, j, i])
    iou_multiplier = best_iou * best_iou
    if head.objectness_smooth:
        img.delta[img.b, n, 4, j, i] = head.obj_normalizer * (iou_multiplier - obj)
    else:
        img.delta[img.b, n, 4, j, i] = head.obj_normalizer * (1 - obj)
    class_id = int(truth_row[4])
    img.class_delta(n, j, i, class_id)
    class_multiplier = head.class_multiplier(class_id)
    if head.objectness_smooth:
        img.delta[img.b, n, 5 + class_id, j, i] = class_multiplier * (
            iou_multiplier - float(img.out[img.b, n, 5 + class_id, j, i]))
    truth = tuple(float(v) for v in truth_row[:4])
    img.box_delta(truth, n, head.mask[n], j, i, 2 - truth[2] * truth[3], head.iou_normalizer * class_multiplier)
    img.stats.total_bbox += 1


def _set_cost(stats: HeadLoss, delta: np.ndarray, head: "YoloLayer", tot_iou_loss: float,
              tot_giou_loss: float) -> None:
    """The layer cost of forward_yolo_layer: |delta|^2, or for IoU losses the IoU term plus the rest."""
    total = float(np.square(delta, dtype=np.float64).sum())
    no_box = float(np.square(delta[:, :, 4:], dtype=np.float64).sum()) * head.obj_normalizer
    stats.class_loss = no_box
    stats.iou_loss = total - no_box
    if head.show_details == 0 or head.iou_loss == "mse":
        stats.cost = total
        return
    count = max(stats.count, 1)
    iou_term = (tot_giou_loss if head.iou_loss == "giou" else tot_iou_loss) / count
    stats.cost = head.iou_normalizer * iou_term + no_box


def _finite_or_zero(v: float) -> float:
    return v if math.isfinite(v) else 0.0


def _clip(v: float, limit: float) -> float:
    return limit if v > limit else (-limit if v < -limit else v)
