"""Detection heads built from a few numbers, for tests that feed them outputs directly (no model around them)."""
from typing import Sequence

import numpy as np

from darkpy.cfg import parse_cfg_text
from darkpy.heads import Head
from darkpy.heads.region import RegionLayer
from darkpy.heads.yolo import GaussianYoloLayer, YoloLayer
from darkpy.layers.base import BuildContext


def _head(cls, section_type: str, classes: int, anchors: np.ndarray, index: int, lines: Sequence[str]) -> Head:
    """A head of `cls` whose mask is every anchor given, as if the layer before had the filters it needs."""
    anchors = np.asarray(anchors, dtype=np.float32).reshape(-1, 2)
    values = ",".join(repr(float(v)) for v in anchors.reshape(-1))  # float32 -> exact decimal -> same float32
    text = "\n".join(["[net]", f"[{section_type}]", f"classes={classes}", f"num={len(anchors)}",
                      f"anchors={values}", *lines])
    section = parse_cfg_text(text, "test.cfg")[1]
    channels = len(anchors) * (cls.box_entries + 1 + classes)
    return cls(section, BuildContext(index=index, input_shape=(channels, 1, 1)))


def yolo_head(classes: int, anchors: np.ndarray, scale_x_y: float = 1.0, new_coords: int = 0,
              beta_nms: float = 0.6, index: int = -1) -> YoloLayer:
    return _head(YoloLayer, "yolo", classes, anchors, index,
                 [f"scale_x_y={scale_x_y!r}", f"new_coords={new_coords}", f"beta_nms={beta_nms!r}"])


def gaussian_yolo_head(classes: int, anchors: np.ndarray, index: int = -1) -> GaussianYoloLayer:
    return _head(GaussianYoloLayer, "Gaussian_yolo", classes, anchors, index, [])


def region_head(classes: int, anchors: np.ndarray, index: int = -1, **options) -> RegionLayer:
    """A [region] head with these cfg options (softmax, bias_match, object_scale, ...)."""
    return _head(RegionLayer, "region", classes, anchors, index, [f"{k}={v}" for k, v in options.items()])
