"""[detection] (src/detection_layer.c, YOLOv1): a fixed side x side grid, `num` boxes per cell, one class
distribution per cell; no anchors. Forward and decoding; darkpy does not train it."""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from darkpy.boxes import F32, BoxSet
from darkpy.cfg import Section
from darkpy.heads.base import COMMON_OPTIONS, Head, LossError, TorchBoxes, class_probs
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
        raise LossError(f"{self.cfg_location()}: training a [detection] (YOLOv1) layer is not supported by darkpy "
                        "(only [yolo] and [region] are)")

    def loss_line(self, stats, index: int) -> str:  # pragma: no cover  (prepare_loss refuses first)
        raise NotImplementedError
