"""[region] (src/region_layer.c, YOLOv2): activation, decoding and loss; YOLO9000's softmax tree (tree=) and
class map (map=) in activation, decoding and loss."""
import os
from typing import Dict, Tuple

import numpy as np
import torch

from darkpy.boxes import F32, BoxSet, box_iou, correct_boxes
from darkpy.cfg import Section
from darkpy.data import DataError, SoftmaxTree, read_class_map, read_tree
from darkpy.heads.base import (COMMON_OPTIONS, Head, HeadLoss, TorchBoxes, as_box, best_truth_per_cell,
                               c_exp, c_log, class_probs, exp_scale, first_max_index, logistic, valid_counts)
from darkpy.layers.base import BuildContext, register

# Options Darknet reads in parse_region with their defaults.
REGION_OPTIONS: Dict[str, object] = {
    **COMMON_OPTIONS, "log": 0, "sqrt": 0, "softmax": 0, "focal_loss": 0, "rescore": 0, "thresh": 0.5,
    "classfix": 0, "absolute": 0, "coord_scale": 1.0, "object_scale": 1.0, "noobject_scale": 1.0, "mask_scale": 1.0,
    "class_scale": 1.0, "bias_match": 0, "background": 0,
}


@register("region")
class RegionLayer(Head):
    """YOLOv2: anchors in grid cells; the logistic on objectness, softmax over classes; x, y, w, h raw."""

    OPTIONS = REGION_OPTIONS
    min_classes = 0  # parse_region takes classes=0 (objectness only, no class entries)
    softmax: int
    thresh: float
    classfix: int
    rescore: int
    bias_match: int
    focal_loss: int
    coord_scale: float
    object_scale: float
    noobject_scale: float
    class_scale: float

    def __init__(self, section: Section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        self.coords = s.get_int("coords", 4)
        if self.coords != 4:
            raise s.error("only coords=4 is supported by darkpy", "coords")
        self._read_anchors(s, default_mask=False)
        self._read_options(s)
        if self.background:
            raise s.error("background=1 is not supported by darkpy", "background")
        self._check_filters(s, "classes")
        self.tree = self._read_tree(s) if s.has("tree") else None
        # map= (read_map): a label's class -> the network's, in training only (detect and map ignore it, as Darknet)
        self.class_map = self._read_file(s, "map", lambda path: read_class_map(path, self.classes))[1] \
            if s.has("map") else None

    @staticmethod
    def _read_file(s: Section, option: str, read):
        """A file option (tree=, map=) opened as Darknet opens it, relative to the current folder; else beside the
        cfg, or in the folder above it (Darknet's layout: cfg/yolo9000.cfg names data/9k.tree)."""
        written = s.get_str(option)
        cfg_folder = os.path.dirname(os.path.abspath(s.file))
        candidates = [written, os.path.join(cfg_folder, written), os.path.join(cfg_folder, os.pardir, written)]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            raise s.error(f"cannot find the file '{written}' (looked in the current folder, beside the cfg and "
                          f"in the folder above it)", option)
        try:
            return found, read(found)
        except DataError as error:
            raise s.error(str(error), option) from None

    def _read_tree(self, s: Section) -> SoftmaxTree:
        """tree= (parse_region, read_tree)."""
        found, tree = self._read_file(s, "tree", read_tree)
        if len(tree.parent) != self.classes:
            raise s.error(f"the tree {found} has {len(tree.parent)} classes but classes={self.classes}", "tree")
        self.register_buffer("tree_group", torch.from_numpy(tree.group_of), persistent=False)
        return tree

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """forward_region_layer: the logistic on objectness; softmax_tree over each group of the tree (tree=),
        else softmax over the classes (softmax=1)."""
        obj = torch.sigmoid(raw[:, :, 4:5])
        if self.tree is not None:
            cls = self._tree_softmax(raw[:, :, 5:])
        else:
            cls = torch.softmax(raw[:, :, 5:], dim=2) if self.softmax else raw[:, :, 5:]
        return torch.cat([raw[:, :, :4], obj, cls], dim=2)

    def _tree_softmax(self, scores: torch.Tensor) -> torch.Tensor:
        """softmax_tree (src/softmax_layer.c): a softmax within each group of sibling classes (axis 2)."""
        last = scores.dim() - 1  # (a negative dimension exports as a Transpose onnxruntime cannot load)
        x = scores.movedim(2, last)
        group = self.tree_group.expand_as(x)
        groups = len(self.tree.group_size)
        largest = x.new_full((*x.shape[:-1], groups), -torch.inf).scatter_reduce(-1, group, x, "amax")
        e = torch.exp(x - largest.gather(-1, group))
        sums = x.new_zeros((*x.shape[:-1], groups)).scatter_add(-1, group, e)
        return (e / sums.gather(-1, group)).movedim(last, 2)

    # ---- decoding ---------------------------------------------------------------------------------------------
    def decode(self, output: np.ndarray, net_wh: Tuple[int, int], image_wh: Tuple[int, int], thresh: float,
               hier: float = 0.5, letter_box: bool = False) -> BoxSet:
        """One box per cell and anchor (src/region_layer.c get_region_boxes via src/network.c
        custom_get_region_detections: objectness is set to 1 for every box, prob = objectness·class kept where
        > thresh, boxes corrected with correct_yolo_boxes).

        x, y get the logistic here, as get_region_box does; w, h = exp(t)·anchor/grid (anchors in grid cells).
        `hier` is used only by a softmax tree (YOLO9000), which darkpy refuses at build."""
        thresh = F32(thresh)
        cells = self._cells(output)  # every cell: custom_get_region_detections keeps them all
        flat, anchor_wh = cells.entries, cells.anchor_wh
        x, y = cells.centre(logistic(flat[:, 0]), logistic(flat[:, 1]))
        w = exp_scale(flat[:, 2], anchor_wh[:, 0], cells.cols)
        h = exp_scale(flat[:, 3], anchor_wh[:, 1], cells.rows)
        scale = flat[:, 4].copy()
        if self.classfix == -1:
            scale = np.where(scale < F32(0.5), F32(0), scale).astype(F32)
        xywh = correct_boxes(np.stack([x, y, w, h], axis=1).astype(F32), image_wh, net_wh, letter_box)
        if self.tree is not None:
            probs = self._tree_probs(flat[:, 5:], scale, thresh)
        else:
            probs = class_probs(scale, flat[:, 5:], thresh)
        return BoxSet(xywh, np.ones(len(flat), F32), probs)

    def _tree_probs(self, scores: np.ndarray, scale: np.ndarray, thresh: F32) -> np.ndarray:
        """get_region_boxes with a softmax tree and no map (as detect and map call it): hierarchy_predictions
        multiplies each class's score by its parent's, in class order; then, walking back from the last class,
        only the first one above .5 keeps its score, and only where objectness > thresh. The probability is that
        score itself, not objectness x score (`hier` is not used on this path)."""
        by_class = scores.T.copy()  # (classes, boxes): one row per class, updated in Darknet's order
        for j in np.flatnonzero(self.tree.parent >= 0):
            by_class[j] *= by_class[self.tree.parent[j]]
        above = by_class.T > F32(0.5)
        last_above = np.cumsum(above[:, ::-1], axis=1)[:, ::-1] == 1
        keep = above & last_above & (scale > thresh)[:, None]
        return np.where(keep, by_class.T, F32(0)).astype(F32)

    def decode_torch(self, out: torch.Tensor, net_wh: Tuple[int, int]) -> TorchBoxes:
        """get_region_box, x, y get the logistic here, anchors in grid cells; prob = objectness * class
        (custom_get_region_detections; classfix=-1 drops objectness below 0.5)."""
        if self.tree is not None:
            raise NotImplementedError(f"{self.cfg_location()}: exporting a softmax tree (tree=, YOLO9000) is not "
                                      "supported by darkpy")
        h, w = out.shape[-2:]
        col, row, aw, ah = self._grid_torch(out)
        x = (col + torch.sigmoid(out[:, :, 0])) / w
        y = (row + torch.sigmoid(out[:, :, 1])) / h
        bw = torch.exp(out[:, :, 2]) * aw / w
        bh = torch.exp(out[:, :, 3]) * ah / h
        objectness = out[:, :, 4:5]
        if self.classfix == -1:
            objectness = torch.where(objectness < 0.5, torch.zeros_like(objectness), objectness)
        return (x, y, bw, bh), objectness * out[:, :, 5:]

    # ---- training ---------------------------------------------------------------------------------------------
    def deltas(self, out: np.ndarray, truths: np.ndarray, net_wh: Tuple[int, int], seen: int
               ) -> Tuple[np.ndarray, HeadLoss]:
        """src/region_layer.c forward_region_layer in training.

        `out` is as activate() leaves it: x, y, w, h raw, logistic on the objectness, softmax over the classes.
        The prior-matching term applies while seen < 12800; the network size is not used (anchors in cells).
        """
        out = np.asarray(out, dtype=np.float32)
        B, A, E, H, W = out.shape
        truths = np.asarray(truths, dtype=np.float32)[:, :, :5]
        counts = valid_counts(truths)
        delta = np.zeros_like(out)
        stats = HeadLoss(cost=0.0, batch=B)
        anchors = self.anchor_array()  # a [region]'s mask is every anchor

        # decode every cell: x = (i + sigmoid(tx)) / W, w = exp(tw) * anchor_w / W  (get_region_box, DOABS)
        gx = np.arange(W, dtype=np.float32)[None, None, None, :]
        gy = np.arange(H, dtype=np.float32)[None, None, :, None]
        sx, sy = logistic(out[:, :, 0]), logistic(out[:, :, 1])
        with np.errstate(over="ignore"):
            pw = np.exp(out[:, :, 2]) * anchors[None, :A, 0, None, None] / W
            ph = np.exp(out[:, :, 3]) * anchors[None, :A, 1, None, None] / H
        pred = np.stack([(gx + sx) / W, (gy + sy) / H, pw, ph], axis=-1)
        class_ids = truths[:, :, 4].astype(np.int64)
        # region's loop skips class ids >= classes (negative ones are kept) before testing for the end of the list
        best_iou, best_t = best_truth_per_cell(pred, truths, counts, self.classes, skip_negative_classes=False)

        obj = out[:, :, 4]
        grad = obj * (1 - obj)  # logistic_gradient of the activated objectness
        if self.classfix == -1:
            delta[:, :, 4] = self.noobject_scale * ((best_iou - obj) * grad)
        else:
            delta[:, :, 4] = np.where(best_iou > self.thresh, np.float32(0), self.noobject_scale * ((0 - obj) * grad))
            if self.classfix > 0:
                for b, n, j, i in zip(*np.nonzero(best_iou > self.thresh)):
                    scale = self.class_scale * (float(obj[b, n, j, i]) if self.classfix == 2 else 1.0)
                    self._class_delta(out, delta, b, n, j, i, int(class_ids[b, best_t[b, n, j, i]]), scale)
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
                self._positive(out, delta, b, truths[b, t], anchors, stats)

        stats.cost = float(np.square(delta, dtype=np.float64).sum())
        return delta, stats

    def _class_delta(self, out: np.ndarray, delta: np.ndarray, b: int, n: int, j: int, i: int, class_id: int,
                     scale: float) -> None:
        """delta_region_class: softmax cross-entropy gradient, or Darknet's focal variant; with a softmax tree,
        the same within the class's group and within the group of each of its ancestors up to the root."""
        p = out[b, n, 5:, j, i]
        if self.tree is not None:
            self._tree_class_delta(p, delta[b, n, 5:, j, i], class_id, scale)
            return
        target = np.zeros_like(p)
        target[class_id] = 1
        d = scale * (target - p)
        if self.focal_loss:
            pt = float(p[class_id]) + 0.000000000000001
            d = d * (0.5 * (-(1 - pt) * (2 * pt * c_log(pt) + pt - 1)))
        delta[b, n, 5:, j, i] = d

    def _tree_class_delta(self, p: np.ndarray, d: np.ndarray, class_id: int, scale: float) -> None:
        """delta_region_class with a hierarchy: from the class up to its root, the whole group of siblings gets
        scale·(0 - p), the class on the path scale·(1 - p); groups off the path keep their delta. (The focal
        variant does not apply to a tree, as in Darknet.)"""
        tree = self.tree
        while class_id >= 0:
            group = self.tree_group[class_id].item()
            first = int(tree.group_offset[group])
            siblings = slice(first, first + int(tree.group_size[group]))
            d[siblings] = np.float32(scale) * (np.float32(0) - p[siblings])
            d[class_id] = np.float32(scale) * (np.float32(1) - p[class_id])
            class_id = int(tree.parent[class_id])

    def _positive(self, out: np.ndarray, delta: np.ndarray, b: int, truth_row: np.ndarray, anchors: np.ndarray,
                  stats: HeadLoss) -> None:
        """One truth: its best anchor at its cell gets the coordinate, objectness and class deltas."""
        class_id = int(truth_row[4])
        # a class the map does not list would make Darknet read past its map: counted as a wrong label instead
        if class_id >= self.classes or self.class_map is not None and class_id >= len(self.class_map):
            stats.wrong_labels += 1
            return
        x, y, w, h = (float(v) for v in truth_row[:4])
        A, H, W = out.shape[1], out.shape[3], out.shape[4]
        i = min(int(np.float32(x) * np.float32(W)), W - 1)
        j = min(int(np.float32(y) * np.float32(H)), H - 1)
        if self.bias_match:
            sizes_w, sizes_h = anchors[:A, 0] / np.float32(W), anchors[:A, 1] / np.float32(H)
        else:
            with np.errstate(over="ignore"):
                sizes_w = np.exp(out[b, :, 2, j, i]) * anchors[:A, 0] / np.float32(W)
                sizes_h = np.exp(out[b, :, 3, j, i]) * anchors[:A, 1] / np.float32(H)
        shapes = np.zeros((A, 4), dtype=np.float32)
        shapes[:, 2], shapes[:, 3] = sizes_w, sizes_h
        best_n = first_max_index(box_iou(shapes, as_box((0.0, 0.0, w, h))))
        o = out[b, best_n, :, j, i]
        sx, sy = 1 / (1 + c_exp(-float(o[0]))), 1 / (1 + c_exp(-float(o[1])))
        pred = ((i + sx) / W, (j + sy) / H, c_exp(float(o[2])) * float(anchors[best_n, 0]) / W,
                c_exp(float(o[3])) * float(anchors[best_n, 1]) / H)
        iou = float(box_iou(as_box(pred), as_box((x, y, w, h))))
        s = self.coord_scale
        d = delta[b, best_n, :, j, i]
        d[0] = s * (x * W - i - sx) * (sx * (1 - sx))
        d[1] = s * (y * H - j - sy) * (sy * (1 - sy))
        d[2] = s * (c_log(w * W / float(anchors[best_n, 0])) - float(o[2]))
        d[3] = s * (c_log(h * H / float(anchors[best_n, 1])) - float(o[3]))
        obj = float(o[4])
        target = iou if self.rescore else 1.0
        d[4] = self.object_scale * (target - obj) * (obj * (1 - obj))
        if self.class_map is not None:  # the label's class, as the network numbers it
            class_id = int(self.class_map[class_id])
        self._class_delta(out, delta, b, best_n, j, i, class_id, self.class_scale)
        stats.count += 1
        stats.tot_iou += iou
        stats.total_bbox += 1

    def loss_line(self, stats: HeadLoss, index: int) -> str:
        """forward_region_layer's `Region Avg IOU: ..., count: ...` line."""
        return f"Region Avg IOU: {stats.avg_iou:f}, count: {stats.count}"
