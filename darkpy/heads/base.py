"""What every detection head shares: `Head(Layer)` and the arithmetic its subclasses reuse.

A head's output is the previous convolution's output seen as (B, A, E, H, W): A anchors of its mask, E entries
per anchor. In train() the raw values are returned (the loss works from them); in eval() the head applies
Darknet's forward activation, so the tensor equals what Darknet's forward leaves in the layer's output.

Each head type (heads/yolo.py, heads/region.py) implements four things: `activate` (torch forward), `decode`
(Darknet-exact numpy, for detect and map), `decode_torch` (for ONNX export) and `deltas` (its training loss,
Darknet's delta array). Nothing outside dispatches on a head's type name.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from darkpy.boxes import F32, BoxSet, box_iou
from darkpy.cfg import Section
from darkpy.layers.base import Layer

TorchBoxes = Tuple[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Options every head type reads, with Darknet's defaults (parse_yolo / parse_region): what augmentation and the
# multi-scale sampler take from the last head (l.jitter, l.resize, l.random, l.max_boxes) and the map= file.
COMMON_OPTIONS: Dict[str, object] = {"max": 200, "jitter": 0.2, "resize": 1.0, "random": 0.0, "map": ""}
# cfg keys whose attribute has another name (`max` would shadow the builtin and says less than l.max_boxes)
ATTRIBUTE_NAMES = {"max": "max_boxes"}


class LossError(ValueError):
    """A head that darkpy cannot train, named by cfg file and line."""


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


def read_options(section: Section, defaults: Dict[str, object]) -> Dict[str, object]:
    """Read every known option with Darknet's default, typed like its default."""
    values = {}
    for key, default in defaults.items():
        if isinstance(default, str):
            values[key] = section.get_str(key, default)
        elif isinstance(default, int):
            values[key] = section.get_int(key, default)
        else:
            values[key] = section.get_float(key, default)
    return values


class Head(Layer):
    """A detection head: classes, anchors, mask, the filters check and the (B, A, E, H, W) view of the
    previous output; subclasses add their options, activation, decoding and loss.

    Every option of the subclass's OPTIONS table becomes a typed attribute (the cfg key, `max` as max_boxes);
    `options` keeps the same values by cfg key."""

    OPTIONS: Dict[str, object] = COMMON_OPTIONS
    box_entries = 4
    # the typed options every head has (Darknet's l.jitter, l.resize, l.random, l.max_boxes)
    jitter: float
    resize: float
    random: float
    max_boxes: int
    # what decoding and NMS read; [region] has Darknet's fixed values
    scale_x_y: float = 1.0
    new_coords: int = 0
    nms_kind: str = "default"
    beta_nms: float = 0.6
    # the fewest classes the head type accepts ([region] runs with none: objectness only)
    min_classes = 1

    def _read_options(self, section: Section) -> None:
        self.options = read_options(section, self.OPTIONS)
        for key, value in self.options.items():
            setattr(self, ATTRIBUTE_NAMES.get(key, key), value)

    def _read_anchors(self, section: Section, default_mask: bool) -> None:
        s = section
        self.classes = s.get_int("classes", 20)
        self.num = s.get_int("num", 1)
        if self.classes < self.min_classes:
            raise s.error(f"must be at least {self.min_classes}, got {self.classes}", "classes")
        if self.num < 1:
            raise s.error(f"must be at least 1, got {self.num}", "num")
        self.mask: List[int] = s.get_int_list("mask", list(range(self.num))) if default_mask else list(
            range(self.num))
        given = s.get_float_list("anchors", [])
        if len(given) % 2:
            raise s.error(f"has an odd number of values ({len(given)}); anchors are w,h pairs", "anchors")
        anchors = [0.5] * (2 * self.num)  # Darknet's default for anchors not given
        anchors[:min(len(given), 2 * self.num)] = given[:2 * self.num]
        for m in self.mask:
            if not 0 <= m < self.num:
                raise s.error(f"anchor index {m} is outside 0..{self.num - 1} (num={self.num})", "mask")
            if 2 * m + 1 >= len(given) and given:
                raise s.error(f"anchor {m} is used by mask but only {len(given) // 2} anchors are given",
                              "anchors")
        self.register_buffer("all_anchors", torch.tensor(anchors, dtype=torch.float32).view(self.num, 2),
                             persistent=False)
        self.register_buffer("anchors", self.all_anchors[self.mask].clone(), persistent=False)

    def _check_filters(self, section: Section, key_hint: str) -> None:
        c, h, w = self.in_shape
        self.entries = self.box_entries + 1 + self.classes
        expected = self.entries * len(self.mask)
        if c != expected:
            raise section.error(f"the layer before has filters={c}, but {len(self.mask)} anchors x (classes "
                                f"{self.classes} + {self.box_entries + 1}) needs filters={expected} (Darknet: "
                                f"'filters= ... doesn't correspond')", key_hint)
        self.out_shape = (c, h, w)

    def anchor_array(self, every: bool = False) -> np.ndarray:
        """The anchors of the mask (or, with every, of the whole cfg line) as a (A, 2) float32 array."""
        anchors = self.all_anchors if every else self.anchors
        return anchors.detach().cpu().numpy().astype(F32).reshape(-1, 2)

    # ---- torch ------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, outputs: List[Optional[torch.Tensor]]) -> torch.Tensor:
        b, _, h, w = x.shape
        raw = x.view(b, len(self.mask), self.entries, h, w)
        return raw if self.training else self.activate(raw)

    def activate(self, raw: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Darknet's forward activation of the raw (B, A, E, H, W) output."""
        raise NotImplementedError

    def decode_torch(self, out: torch.Tensor, net_wh: Tuple[int, int]) -> TorchBoxes:  # pragma: no cover
        """Activated output (B, A, E, H, W) -> ((x, y, w, h) each (B, A, H, W), relative to the network input;
        scores (B, A, classes, H, W)): decode's formulas in torch, for the ONNX graph."""
        raise NotImplementedError

    def _grid_torch(self, out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Column and row of every cell and the anchor w, h, shaped to broadcast against (B, A, H, W)."""
        h, w = out.shape[-2:]
        col = torch.arange(w, dtype=out.dtype, device=out.device).view(1, 1, 1, w)
        row = torch.arange(h, dtype=out.dtype, device=out.device).view(1, 1, h, 1)
        anchors = self.anchors.to(out)
        return col, row, anchors[:, 0].view(1, -1, 1, 1), anchors[:, 1].view(1, -1, 1, 1)

    # ---- numpy decoding (detect, map) -------------------------------------------------------------------------
    def decode(self, output: np.ndarray, net_wh: Tuple[int, int], image_wh: Tuple[int, int], thresh: float,
               hier: float = 0.5, letter_box: bool = False) -> BoxSet:  # pragma: no cover
        """This head's output (A, E, H, W) for one image, as Darknet's forward leaves it -> its boxes before
        NMS, in Darknet's order, relative to the image (`hier` matters only to a softmax tree)."""
        raise NotImplementedError

    def _cells(self, output: np.ndarray, thresh: Optional[F32] = None) -> "Cells":
        """Check the output's shape and list its cells; with `thresh`, only those whose objectness (the entry
        after the box entries) is > thresh, as get_yolo_detections / get_gaussian_yolo_detections keep them."""
        output = np.asarray(output, dtype=F32)
        anchors, entries, rows, cols = output.shape if output.ndim == 4 else (0, 0, 0, 0)
        if output.ndim != 4 or anchors != len(self.mask) or entries != self.entries:
            raise ValueError(f"{self.type} head {self.index}: expected an output of shape "
                             f"({len(self.mask)}, {self.entries}, H, W), got {output.shape}")
        # The kept cells in Darknet's detection order (cell by cell, anchors within a cell: C order of (H, W, A)),
        # found on the objectness plane; only their entries are gathered (no copy of the whole output per image)
        keep = np.ones((rows, cols, anchors), dtype=bool) if thresh is None else \
            output[:, self.box_entries].transpose(1, 2, 0) > thresh
        row, col, anchor = np.nonzero(keep)
        flat = output[anchor, :, row, col]  # (N, E)
        return Cells(flat, col.astype(F32), row.astype(F32), self.anchor_array()[anchor], cols, rows)

    # ---- training ---------------------------------------------------------------------------------------------
    # What the backward multiplies the loss delta by before handing it to the layer below.
    gradient_scale: float = 1.0

    def prepare_loss(self) -> List[str]:
        """Check that darkpy can train this head (LossError if not); return the options it reads but the loss
        does not implement, for one warning."""
        return [f"map={self.options['map']} (class-id remapping file)"] if self.options["map"] else []

    def deltas(self, out: np.ndarray, truths: np.ndarray, net_wh: Tuple[int, int], seen: int
               ) -> Tuple[np.ndarray, HeadLoss]:  # pragma: no cover
        """Darknet's delta of every output entry and the layer's cost for one mini-batch: `out` is the activated
        output (B, A, E, H, W), `truths` (B, T, 5) rows x, y, w, h, class (x == 0 ends an image's list), `seen`
        the images trained so far."""
        raise NotImplementedError

    def loss_line(self, stats: HeadLoss, index: int) -> str:  # pragma: no cover
        """Darknet's per-layer training line."""
        raise NotImplementedError


class Cells(NamedTuple):
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


def exp_scale(t: np.ndarray, anchor: np.ndarray, size: int) -> np.ndarray:
    """`exp(t) * anchor / size` with C's double exp, rounded to float (inf beyond float's range, as in C)."""
    with np.errstate(over="ignore"):
        return (np.exp(t.astype(np.float64)) * anchor.astype(np.float64) / size).astype(F32)


def logistic(x: np.ndarray) -> np.ndarray:
    """logistic_activate: 1.f/(1.f + expf(-x)) in float."""
    return (F32(1) / (F32(1) + np.exp(-x.astype(F32)))).astype(F32)


def class_probs(objectness: np.ndarray, scores: np.ndarray, thresh: F32) -> np.ndarray:
    """prob = objectness * class score, kept only where > thresh (get_yolo_detections)."""
    probs = objectness[:, None] * scores
    return np.where(probs > thresh, probs, F32(0)).astype(F32)


# ============================================================================ loss arithmetic of every head

def as_box(values: Sequence[float]) -> np.ndarray:
    """One box (x, y, w, h) of Python floats as the float32 array the IoU family takes (Darknet's `box`)."""
    return np.asarray(values, dtype=np.float32)


def valid_counts(truths: np.ndarray) -> np.ndarray:
    """Truths per image: Darknet stops at the first row with x == 0."""
    is_end = truths[:, :, 0] == 0
    has_end = is_end.any(axis=1)
    first_end = np.where(has_end, is_end.argmax(axis=1), truths.shape[1])
    return first_end.astype(np.int64)


def best_truth_per_cell(pred: np.ndarray, truths: np.ndarray, counts: np.ndarray, classes: int,
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
            iou = np.nan_to_num(box_iou(cells[:, None, :], rows[None, :, :4]), nan=0.0)  # (cells, T)
        iou[:, ~usable] = 0
        best_iou[b] = iou.max(axis=1).reshape(shape[1:])
        best_t[b] = iou.argmax(axis=1).reshape(shape[1:])
    return best_iou, best_t


def first_max_index(values: np.ndarray) -> int:
    """Darknet's `if (v > best) best = v` from 0: the first index of the largest positive value, else 0."""
    values = np.asarray(values, dtype=np.float32)
    return int(first_max_indices(values[None])[0]) if values.size else 0


def first_max_indices(values: np.ndarray) -> np.ndarray:
    """first_max_index of every row (along the last axis)."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    best = values.argmax(axis=-1)
    return np.where(np.take_along_axis(values, best[..., None], axis=-1)[..., 0] > 0, best, 0)


def c_exp(v: float) -> float:
    """C's exp: +inf on overflow (Python raises instead)."""
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


def c_sqrt(v: float) -> float:
    """C's sqrt: NaN for negatives (Python raises instead)."""
    return math.sqrt(v) if v >= 0 else math.nan


def c_log(v: float) -> float:
    """C's log: -inf for 0, NaN for negatives (Python raises instead)."""
    if v > 0:
        return math.log(v)
    return -math.inf if v == 0 else math.nan
