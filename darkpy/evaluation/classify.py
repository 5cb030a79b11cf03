"""Darknet's classifier inference (src/classifier.c predict_classifier, validate_classifier_single): the input
darkpy.image.classifier_input makes (resize_min, centre crop), one forward pass, and the k best classes."""
from typing import List

import numpy as np
import torch

from darkpy.image import classifier_input
from darkpy.model import Darknet


def top_k(scores: np.ndarray, k: int) -> List[int]:
    """utils.c top_k: the indices of the k largest scores, largest first; of equal scores the earlier index
    comes first."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [int(i) for i in order[:k]]


class Classifier:
    """A classifier network (eval mode, batch norm folded as the caller chose) run on the device and dtype its
    parameters have."""

    def __init__(self, model: Darknet):
        if model.heads:
            raise ValueError(f"{model.cfg_path}: the network has detection layers; use `darkpy detect`")
        self.model = model

    @property
    def classes(self) -> int:
        """The number of outputs of the network's output layer (Darknet's net.outputs)."""
        c, h, w = self.model.layers[self.model.output_index].out_shape
        return c * h * w

    def predict(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> the last layer's outputs (float32, flat)."""
        x = torch.from_numpy(classifier_input(image, self.model.width, self.model.height))[None]
        parameter = next(self.model.parameters(), None)
        if parameter is not None:
            x = x.to(parameter.device, parameter.dtype)
        with torch.inference_mode():
            out = self.model(x)
        return out.reshape(-1).float().cpu().numpy()
