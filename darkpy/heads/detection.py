"""[detection] (src/detection_layer.c, YOLOv1): a fixed side x side grid, `num` boxes per cell, one class
distribution per cell; no anchors. Forward, decoding and loss."""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from darkpy.boxes import F32, BoxSet, box_iou
from darkpy.cfg import Section
from darkpy.heads.base import COMMON_OPTIONS, Head, HeadLoss, TorchBoxes, as_box, c_sqrt, class_probs, valid_counts
from darkpy.layers.base import BuildContext, register

# Options Darknet reads in parse_detection with their defaults (classes, num, coords are read separately).
DETECTION_OPTIONS: Dict[str, object] = {
    **COMMON_OPTIONS, "rescore": 0, "side": 7, "softmax": 0, "sqrt": 0, "forced": 0, "reorg": 0,
    "coord_scale": 1.0, "object_scale": 1.0, "noobject_scale": 1.0, "class_scale": 1.0,
}


@register("detection")
class DetectionLayer(Head):
    """YOLOv1. Darknet's output is the input as it comes (a [connected] layer's flat vector), laid out as
    side*side class scores per cell, then side*side*num objectness values, then side*side*num boxes (x, y, w, h);
    softmax=1 turns each cell's class scores into a softmax. The output keeps this flat layout, (inputs, 1, 1)."""

    OPTIONS = DETECTION_OPTIONS
    side: int
    softmax: int
    sqrt: int
    rescore: int
    forced: int
    coord_scale: float
    object_scale: float
    noobject_scale: float
    class_scale: float

    def __init__(self, section: Section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        self.classes = s.get_int("classes", 1)
        self.num = s.get_int("num", 1)
        self.coords = s.get_int("coords", 1)
        self._read_options(s)
        if self.coords != 4:
            raise s.error(f"only coords=4 (x, y, w, h) is supported by darkpy, got {self.coords}", "coords")
        if self.classes < 1 or self.num < 1 or self.side < 1:
            raise s.error("classes, num and side must be at least 1", "classes")
        c, h, w = self.in_shape
        expected = self.side * self.side * ((1 + self.coords) * self.num + self.classes)
        if c * h * w != expected:
            raise s.error(f"the layer before gives {c * h * w} values, but side {self.side} x side x (num {self.num} "
                          f"x 5 + classes {self.classes}) needs {expected} (Darknet asserts this in "
                          f"make_detection_layer)", "side")
        self.mask: List[int] = list(range(self.num))  # every box of a cell; YOLOv1 has no anchors
        self.register_buffer("anchors", torch.zeros(0, 2), persistent=False)
        self.register_buffer("all_anchors", torch.zeros(0, 2), persistent=False)
        self.out_shape = (expected, 1, 1)

    def forward(self, x: torch.Tensor, outputs: List[Optional[torch.Tensor]]) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1, 1, 1)
        return x if self.training else self.activate(x)

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """forward_detection_layer: with softmax=1, a softmax over each cell's class scores; else unchanged."""
        if not self.softmax:
            return raw
        b, cells = raw.shape[0], self.side * self.side
        flat = raw.reshape(b, -1)
        scores = torch.softmax(flat[:, :cells * self.classes].reshape(b, cells, self.classes), dim=2)
        return torch.cat([scores.reshape(b, -1), flat[:, cells * self.classes:]], dim=1).view_as(raw)

    def _parts(self, flat):
        """The flat output's three blocks: class scores (cells, classes), objectness (cells, num), boxes
        (cells, num, 4); numpy or torch, with a leading batch axis or none."""
        cells, lead = self.side * self.side, flat.shape[:-1]
        scores_end = cells * self.classes
        objectness_end = scores_end + cells * self.num
        return (flat[..., :scores_end].reshape(*lead, cells, self.classes),
                flat[..., scores_end:objectness_end].reshape(*lead, cells, self.num),
                flat[..., objectness_end:].reshape(*lead, cells, self.num, 4))

    # ---- decoding ---------------------------------------------------------------------------------------------
    def decode(self, output: np.ndarray, net_wh: Tuple[int, int], image_wh: Tuple[int, int], thresh: float,
               hier: float = 0.5, letter_box: bool = False) -> BoxSet:
        """get_detection_detections (src/detection_layer.c): one box per cell and box slot, cell by cell:
        x = (tx + col) / side, y = (ty + row) / side, w = tw (tw² with sqrt=1), h likewise, relative to the image
        (no letterbox correction: YOLOv1 has none); prob = objectness x the cell's class score, kept where > thresh.

        These are the boxes Darknet's own `yolo` command gets (it asks for them with w = h = 1). AlexeyAB's
        `detector test` passes the image size instead, which gives this layer's boxes in pixels where its drawing
        and printing expect fractions: darkpy returns the fractions."""
        thresh = F32(thresh)
        flat = np.asarray(output, dtype=F32).reshape(-1)
        if flat.size != self.out_shape[0]:
            raise ValueError(f"detection head {self.index}: expected {self.out_shape[0]} values, got {flat.size}")
        scores, objectness, boxes = self._parts(flat)
        cells = np.arange(self.side * self.side)
        col = np.repeat((cells % self.side).astype(F32), self.num)
        row = np.repeat((cells // self.side).astype(F32), self.num)
        boxes = boxes.reshape(-1, 4)
        side = F32(self.side)
        wh = boxes[:, 2:] * boxes[:, 2:] if self.sqrt else boxes[:, 2:]
        xywh = np.stack([(boxes[:, 0] + col) / side, (boxes[:, 1] + row) / side, wh[:, 0], wh[:, 1]], axis=1)
        scale = objectness.reshape(-1)
        probs = class_probs(scale, np.repeat(scores, self.num, axis=0), thresh)
        return BoxSet(xywh.astype(F32), scale.copy(), probs)

    def decode_torch(self, out: torch.Tensor, net_wh: Tuple[int, int]) -> TorchBoxes:
        """decode's formulas in torch: boxes (B, num, side, side) relative to the input, scores
        (B, num, classes, side, side)."""
        b, s = out.shape[0], self.side
        scores, objectness, boxes = self._parts(out.reshape(b, -1))
        index = torch.arange(s, dtype=out.dtype, device=out.device)
        col, row = index.view(1, 1, 1, s), index.view(1, 1, s, 1)
        grid = boxes.reshape(b, s, s, self.num, 4).permute(0, 3, 4, 1, 2)  # (B, num, 4, side, side)
        w, h = (grid[:, :, 2] ** 2, grid[:, :, 3] ** 2) if self.sqrt else (grid[:, :, 2], grid[:, :, 3])
        obj = objectness.reshape(b, s, s, self.num).permute(0, 3, 1, 2)  # (B, num, side, side)
        cls = scores.reshape(b, s, s, self.classes).permute(0, 3, 1, 2)  # (B, classes, side, side)
        return ((grid[:, :, 0] + col) / s, (grid[:, :, 1] + row) / s, w, h), obj[:, :, None] * cls[:, None]

    # ---- training ---------------------------------------------------------------------------------------------
    def prepare_loss(self) -> List[str]:
        ignored = super().prepare_loss()
        if self.random:
            ignored.append(f"random={self.random} (a random box slot while seen < 64000: darkpy keeps the best IoU)")
        return ignored

    def cell_truths(self, truths: np.ndarray) -> List[Dict[int, Tuple[int, float, float, float, float]]]:
        """fill_truth_region (src/data.c), the truth layout this layer reads: per image, cell -> (class, x, y, w,
        h) with x, y the offset in the cell; boxes under .001 wide or high are dropped, a cell keeps its first box
        (Darknet shuffles the boxes first; darkpy keeps their order)."""
        side, cells = self.side, []
        for rows, count in zip(truths, valid_counts(truths)):
            by_cell: Dict[int, Tuple[int, float, float, float, float]] = {}
            for x, y, w, h, class_id in (tuple(float(v) for v in row[:5]) for row in rows[:count]):
                if w < .001 or h < .001:
                    continue
                col, row = int(F32(x) * side), int(F32(y) * side)
                by_cell.setdefault(row * side + col, (int(class_id), x * side - col, y * side - row, w, h))
            cells.append(by_cell)
        return cells

    def deltas(self, out: np.ndarray, truths: np.ndarray, net_wh: Tuple[int, int], seen: int
               ) -> Tuple[np.ndarray, HeadLoss]:
        """forward_detection_layer in training (src/detection_layer.c): every objectness is pushed to 0
        (noobject_scale); in a cell with a truth, the class scores to its one-hot class, and the box slot that
        best matches it (IoU, else the smallest RMSE) to its box and to objectness 1 (or the IoU, rescore=1).
        The cost is what Darknet finally sets it to: the squared magnitude of the delta array."""
        batch = out.shape[0]
        scores, objectness, boxes = self._parts(np.asarray(out, dtype=F32).reshape(batch, -1))
        d_scores, d_objectness, d_boxes = np.zeros_like(scores), np.zeros_like(objectness), np.zeros_like(boxes)
        d_objectness[:] = self.noobject_scale * (0 - objectness)
        stats = HeadLoss(cost=0.0, batch=batch)
        for b, by_cell in enumerate(self.cell_truths(np.asarray(truths, dtype=F32))):
            for cell, truth in by_cell.items():
                one_hot = np.zeros(self.classes, F32)
                if truth[0] < self.classes:
                    one_hot[truth[0]] = 1
                d_scores[b, cell] = self.class_scale * (one_hot - scores[b, cell])
                self._positive(objectness[b, cell], boxes[b, cell], d_objectness[b, cell], d_boxes[b, cell], truth,
                               stats)
        delta = np.concatenate([d.reshape(batch, -1) for d in (d_scores, d_objectness, d_boxes)], axis=1)
        stats.cost = float(np.square(delta, dtype=np.float64).sum())
        return delta.reshape(out.shape), stats

    def _in_side_units(self, box: np.ndarray) -> np.ndarray:
        """A box as the loss compares it: x, y divided by side; w, h squared with sqrt=1."""
        x, y, w, h = (float(v) for v in box)
        return as_box((x / self.side, y / self.side, w * w if self.sqrt else w, h * h if self.sqrt else h))

    def _positive(self, objectness: np.ndarray, boxes: np.ndarray, d_objectness: np.ndarray, d_boxes: np.ndarray,
                  truth: Tuple[int, float, float, float, float], stats: HeadLoss) -> None:
        """One cell's truth: choose its box slot as forward_detection_layer does, then that slot's deltas."""
        _, tx, ty, tw, th = truth
        truth_box = as_box((tx / self.side, ty / self.side, tw, th))
        best, best_iou, best_rmse = -1, 0.0, 20.0
        for j in range(self.num):
            candidate = self._in_side_units(boxes[j])
            iou = float(box_iou(candidate, truth_box))
            rmse = float(np.sqrt(np.square(candidate.astype(np.float64) - truth_box).sum()))
            if best_iou > 0 or iou > 0:
                if iou > best_iou:
                    best, best_iou = j, iou
            elif rmse < best_rmse:
                best, best_rmse = j, rmse
        if self.forced:
            best = 1 if tw * th < .1 else 0
        iou = float(box_iou(self._in_side_units(boxes[best]), truth_box))
        d_objectness[best] = self.object_scale * ((iou if self.rescore else 1.0) - float(objectness[best]))
        target_wh = (c_sqrt(tw), c_sqrt(th)) if self.sqrt else (tw, th)
        d_boxes[best] = self.coord_scale * (np.asarray((tx, ty) + target_wh, F32) - boxes[best])
        stats.count += 1
        stats.tot_iou += iou
        stats.total_bbox += 1

    def loss_line(self, stats: HeadLoss, index: int) -> str:
        """forward_detection_layer's line, with the figures darkpy keeps (Darknet adds the class and
        objectness averages)."""
        return f"Detection Avg IOU: {stats.avg_iou:f}, count: {stats.count}"
