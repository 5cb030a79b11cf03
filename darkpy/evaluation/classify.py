"""Darknet's classifier inference (src/classifier.c predict_classifier, validate_classifier_single): the image
resized so that its shorter side is the network width (resize_min), the network-sized centre crop (crop_image,
edges repeated where the crop reaches past the image), one forward pass, and the k best classes (top_k)."""
from typing import List

import numpy as np
import torch

from darkpy.image import resize_image, to_float
from darkpy.model import Darknet


def resize_min(image: np.ndarray, size: int) -> np.ndarray:
    """image.c resize_min on float32 CxHxW: the shorter side becomes `size`, the other keeps the aspect ratio
    (integer arithmetic, truncated); an image already that size is returned as it is."""
    _, h, w = image.shape
    if w < h:
        new_w, new_h = size, (h * size) // w
    else:
        new_w, new_h = (w * size) // h, size
    if (new_w, new_h) == (w, h):
        return image
    return resize_image(image, new_w, new_h)


def crop_image(image: np.ndarray, dx: int, dy: int, width: int, height: int) -> np.ndarray:
    """image.c crop_image: the width x height window at (dx, dy); rows and columns outside the image take the
    nearest edge (Darknet clamps the coordinates before it reads)."""
    _, h, w = image.shape
    rows = np.clip(np.arange(height) + dy, 0, h - 1)
    cols = np.clip(np.arange(width) + dx, 0, w - 1)
    return np.ascontiguousarray(image[:, rows][:, :, cols])


def classifier_input(image: np.ndarray, net_w: int, net_h: int) -> np.ndarray:
    """HxWx3 uint8 RGB -> float32 (3, net_h, net_w) as predict_classifier feeds it: resize_min to the network
    width, then the centre crop."""
    resized = resize_min(to_float(image), net_w)
    _, h, w = resized.shape
    return crop_image(resized, (w - net_w) // 2, (h - net_h) // 2, net_w, net_h)


def top_k(scores: np.ndarray, k: int) -> List[int]:
    """utils.c top_k: the indices of the k largest scores, largest first; of equal scores the earlier index
    comes first."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [int(i) for i in order[:k]]


class Classifier:
    """A classifier network ready for predict/valid: fused, in eval mode, on the CPU or the given device."""

    def __init__(self, model: Darknet, device: torch.device = torch.device("cpu")):
        if model.heads:
            raise ValueError(f"{model.cfg_path}: the network has detection layers; use `darkpy detect`")
        self.model = model
        self.device = device

    @property
    def classes(self) -> int:
        """The number of outputs of the last layer (Darknet's net.outputs)."""
        c, h, w = self.model.layers[-1].out_shape
        return c * h * w

    def predict(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> the last layer's outputs (float32, flat)."""
        x = classifier_input(image, self.model.width, self.model.height)
        with torch.inference_mode():
            out = self.model(torch.from_numpy(x)[None].to(self.device))
        return out.reshape(-1).float().cpu().numpy()
