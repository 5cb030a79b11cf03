"""Detection heads: [yolo] (src/yolo_layer.c), [Gaussian_yolo] (src/gaussian_yolo_layer.c), [region]
(src/region_layer.c).

A head's output is the previous convolution's output seen as (B, A, E, H, W): A anchors of its mask, E entries
per anchor. In train() the raw values are returned (the loss works from them); in eval() the head applies
Darknet's forward activation, so the tensor equals what Darknet's forward leaves in the layer's output.
"""
from typing import Dict, List

import torch

from darkpy.layers.base import BuildContext, Layer, register

NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")

# Options Darknet reads in parse_yolo (training, tracking and detection settings) with their defaults.
YOLO_OPTIONS: Dict[str, object] = {
    "max": 200, "jitter": 0.2, "resize": 1.0, "random": 0.0, "ignore_thresh": 0.5, "truth_thresh": 1.0,
    "iou_thresh": 1.0, "iou_thresh_kind": "iou", "iou_loss": "mse", "iou_normalizer": 0.75, "obj_normalizer": 1.0,
    "cls_normalizer": 1.0, "delta_normalizer": 1.0, "max_delta": 3.4028234663852886e38, "label_smooth_eps": 0.0,
    "objectness_smooth": 0, "focal_loss": 0, "beta_nms": 0.6, "show_details": 1, "counters_per_class": "",
    "embedding_layer": 0, "track_history_size": 5, "sim_thresh": 0.8, "dets_for_track": 1, "dets_for_show": 1,
    "track_ciou_norm": 0.01, "map": "", "equidistant_point": 0, "uc_normalizer": 1.0, "yolo_point": "center",
}
REGION_OPTIONS: Dict[str, object] = {
    "max": 200, "jitter": 0.2, "resize": 1.0, "random": 0.0, "log": 0, "sqrt": 0, "softmax": 0, "focal_loss": 0,
    "rescore": 0, "thresh": 0.5, "classfix": 0, "absolute": 0, "coord_scale": 1.0, "object_scale": 1.0,
    "noobject_scale": 1.0, "mask_scale": 1.0, "class_scale": 1.0, "bias_match": 0, "background": 0, "map": "",
}


def _read_options(section, defaults: Dict[str, object]) -> Dict[str, object]:
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


class _Head(Layer):
    """What the three heads share: classes, anchors, mask and the (B, A, E, H, W) view of the previous output."""

    kind = ""
    box_entries = 4

    # Darknet's l.jitter, l.resize, l.random, l.max_boxes (parse_yolo / parse_region): what training's
    # augmentation takes from the last head (train_detector).
    jitter = property(lambda self: float(self.options["jitter"]))
    resize = property(lambda self: float(self.options["resize"]))
    random = property(lambda self: float(self.options["random"]))
    max_boxes = property(lambda self: int(self.options["max"]))

    def _read_anchors(self, section, default_mask: bool) -> None:
        s = section
        self.classes = s.get_int("classes", 20)
        self.num = s.get_int("num", 1)
        if self.classes < 1 or self.num < 1:
            raise s.error("classes and num must be at least 1", "classes" if self.classes < 1 else "num")
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

    def _check_filters(self, section, key_hint: str) -> None:
        c, h, w = self.in_shape
        self.entries = self.box_entries + 1 + self.classes
        expected = self.entries * len(self.mask)
        if c != expected:
            raise section.error(f"the layer before has filters={c}, but {len(self.mask)} anchors x (classes "
                                f"{self.classes} + {self.box_entries + 1}) needs filters={expected} (Darknet: "
                                f"'filters= ... doesn't correspond')", key_hint)
        self.out_shape = (c, h, w)

    def forward(self, x, outputs):
        b, _, h, w = x.shape
        raw = x.view(b, len(self.mask), self.entries, h, w)
        return raw if self.training else self.activate(raw)

    def activate(self, raw: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _scale_xy(t: torch.Tensor, s: float) -> torch.Tensor:
    return t * s - 0.5 * (s - 1.0) if s != 1.0 else t


@register("yolo")
class YoloLayer(_Head):
    kind = "yolo"

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        self._read_anchors(s, default_mask=True)
        self.scale_x_y = s.get_float("scale_x_y", 1.0)
        self.new_coords = s.get_int("new_coords", 0)
        self.nms_kind = s.get_str("nms_kind", "default")
        if self.nms_kind not in NMS_KINDS:
            raise s.error(f"unknown nms_kind '{self.nms_kind}' ({', '.join(NMS_KINDS)})", "nms_kind")
        self.options = _read_options(s, YOLO_OPTIONS)
        self.beta_nms = float(self.options["beta_nms"])
        self._check_filters(s, "classes")

    def activate(self, raw):
        out = raw.clone()  # the raw tensor may be read by other layers: activate a copy
        if not self.new_coords:  # with new_coords the conv before already applied the logistic
            out[:, :, :2].sigmoid_()
            out[:, :, 4:].sigmoid_()
        if self.scale_x_y != 1.0:
            # An assignment, not .mul_().sub_() on the slice: torch's ONNX exporter drops the second in-place op
            # on a slice (the exported x, y missed the -0.5*(s-1)).
            out[:, :, :2] = out[:, :, :2] * self.scale_x_y - 0.5 * (self.scale_x_y - 1.0)
        return out


@register("Gaussian_yolo")
class GaussianYoloLayer(YoloLayer):
    """Entries x, sx, y, sy, w, sw, h, sh, objectness, classes: the logistic on all but w and h."""

    kind = "Gaussian_yolo"
    box_entries = 8

    def activate(self, raw):
        act = torch.sigmoid(raw)
        act = torch.cat([act[:, :, :4], raw[:, :, 4:5], act[:, :, 5:6], raw[:, :, 6:7], act[:, :, 7:]], dim=2)
        x = _scale_xy(act[:, :, 0:1], self.scale_x_y)
        y = _scale_xy(act[:, :, 2:3], self.scale_x_y)
        return torch.cat([x, act[:, :, 1:2], y, act[:, :, 3:]], dim=2)


@register("region")
class RegionLayer(_Head):
    """YOLOv2: anchors in grid cells; the logistic on objectness, softmax over classes; x, y, w, h raw."""

    kind = "region"

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        self.coords = s.get_int("coords", 4)
        if self.coords != 4:
            raise s.error("only coords=4 is supported by darkpy", "coords")
        if s.has("tree"):
            raise s.error("hierarchical softmax (tree, YOLO9000) is not supported by darkpy", "tree")
        self._read_anchors(s, default_mask=False)
        self.options = _read_options(s, REGION_OPTIONS)
        if self.options["background"]:
            raise s.error("background=1 is not supported by darkpy", "background")
        for key in ("softmax", "bias_match", "rescore", "absolute", "log", "sqrt"):
            setattr(self, key, self.options[key])
        for key in ("object_scale", "noobject_scale", "class_scale", "coord_scale"):
            setattr(self, key, self.options[key])
        self.scale_x_y, self.new_coords, self.nms_kind, self.beta_nms = 1.0, 0, "default", 0.6
        self._check_filters(s, "classes")

    def activate(self, raw):
        obj = torch.sigmoid(raw[:, :, 4:5])
        cls = torch.softmax(raw[:, :, 5:], dim=2) if self.softmax else raw[:, :, 5:]
        return torch.cat([raw[:, :, :4], obj, cls], dim=2)
