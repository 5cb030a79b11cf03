"""Darknet's classifier inference (src/classifier.c predict_classifier, validate_classifier_single): the input
darkpy.image.classifier_input makes (resize_min, centre crop), one forward pass, and the k best classes."""
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch

from darkpy.data import read_image_list, resolve_path, true_class
from darkpy.image import ImageError, classifier_input, load_image
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


@dataclass
class Accuracy:
    """validate_classifier_single's running figures over a valid list."""

    top1: int = 0
    topk: int = 0
    images: int = 0
    unreadable: int = 0
    unlabelled: List[str] = field(default_factory=list)

    @property
    def top1_rate(self) -> float:
        return self.top1 / self.images if self.images else 0.0

    @property
    def topk_rate(self) -> float:
        return self.topk / self.images if self.images else 0.0


def measure_accuracy(classifier: Classifier, list_file: str, labels: Sequence[str], classes: int, k: int,
                     after_image: Optional[Callable[[int, Accuracy], None]] = None,
                     on_error: Optional[Callable[[str], None]] = None) -> Accuracy:
    """Top-1 and top-k over the images of a list file, the true class of each the first of the first `classes`
    labels found in its path as the list writes it (an image without one, or one that cannot be read, counts as
    wrong, as in Darknet). `after_image(i, accuracy)` is called after each image (Darknet prints its running
    line there)."""
    accuracy = Accuracy()
    for i, path in enumerate(read_image_list(list_file)):
        truth = true_class(path, labels[:classes])
        if truth < 0:
            accuracy.unlabelled.append(path)
        accuracy.images += 1
        try:
            scores = classifier.predict(load_image(resolve_path(path, list_file)))
        except ImageError as error:
            accuracy.unreadable += 1
            if on_error is not None:
                on_error(f"{error} (counted as wrong)")
            continue
        best = top_k(scores[:classes], k)
        accuracy.top1 += best[0] == truth
        accuracy.topk += truth in best
        if after_image is not None:
            after_image(i, accuracy)
    return accuracy


@contextmanager
def evaluating(model: Darknet) -> Iterator[Darknet]:
    """The model in eval mode (batch norm with its rolling statistics, as Darknet's network_predict) for the
    duration, then back in the mode it had: accuracy during training."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
