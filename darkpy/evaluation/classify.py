"""Darknet's classifier inference (src/classifier.c predict_classifier, validate_classifier_single): the input
darkpy.image.classifier_input makes (resize_min, centre crop), one forward pass, and the k best classes; and the
other inputs of Darknet's validation modes (`valid10`, `validmulti`, `validfull`: VALID_MODES)."""
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from darkpy.data import read_image_list, resolve_path, true_class
from darkpy.image import ImageError, classifier_input, crop_image, load_image, resize_image, resize_min, to_float
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
        self._resized: Dict[Tuple[int, int], Darknet] = {}  # the network at other input sizes (validmulti/full)

    @property
    def classes(self) -> int:
        """The number of outputs of the network's output layer (Darknet's net.outputs)."""
        c, h, w = self.model.layers[self.model.output_index].out_shape
        return c * h * w

    def predict(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> the last layer's outputs (float32, flat)."""
        return self.scores(classifier_input(image, self.model.width, self.model.height))

    def scores(self, network_input: np.ndarray) -> np.ndarray:
        """A float32 (3, h, w) input -> the last layer's outputs (float32, flat); an input of another size than
        the network's runs the network resized to it (Darknet's resize_network; the parameters are shared)."""
        _, height, width = network_input.shape
        model = self._at_size(width, height)
        x = torch.from_numpy(np.ascontiguousarray(network_input))[None]
        parameter = next(model.parameters(), None)
        if parameter is not None:
            x = x.to(parameter.device, parameter.dtype)
        with torch.inference_mode():
            out = model(x)
        return out.reshape(-1).float().cpu().numpy()

    def _at_size(self, width: int, height: int) -> Darknet:
        if (width, height) == (self.model.width, self.model.height):
            return self.model
        if (width, height) not in self._resized:
            self._resized[(width, height)] = self.model.resized(width, height)
        return self._resized[(width, height)]


TEN_CROP_SHIFT = 32  # validate_classifier_10: the image is resized 32 px larger than the network, crops 32 px apart
MULTI_SCALES = (224, 288, 320, 352, 384)  # validate_classifier_multi's shorter sides


def ten_crop_scores(classifier: Classifier, image: np.ndarray) -> np.ndarray:
    """validate_classifier_10: the image resized to (w + 32, h + 32); five crops of the network's size (offsets
    -32/+32 on both axes — outside the image, edge pixels repeat — and 0, 0), the same five of its mirror image;
    the sum of their outputs."""
    w, h, shift = classifier.model.width, classifier.model.height, TEN_CROP_SHIFT
    resized = resize_image(to_float(image), w + shift, h + shift)
    offsets = ((-shift, -shift), (shift, -shift), (0, 0), (-shift, shift), (shift, shift))
    return _summed_scores(classifier, [crop_image(picture, dx, dy, w, h) for picture in (resized, resized[:, :, ::-1])
                                       for dx, dy in offsets])


def multi_scale_scores(classifier: Classifier, image: np.ndarray) -> np.ndarray:
    """validate_classifier_multi: at each of MULTI_SCALES, resize_min to that shorter side, the network resized
    to the picture, the outputs of the picture and of its mirror image added up."""
    pictures = [resize_min(to_float(image), scale) for scale in MULTI_SCALES]
    return _summed_scores(classifier, [view for picture in pictures for view in (picture, picture[:, :, ::-1])])


def _summed_scores(classifier: Classifier, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """The outputs of the inputs added up in order, in float32 (Darknet's axpy_cpu into pred)."""
    total = classifier.scores(inputs[0])
    for network_input in inputs[1:]:
        total = total + classifier.scores(network_input)
    return total


def full_image_scores(classifier: Classifier, image: np.ndarray) -> np.ndarray:
    """validate_classifier_full: resize_min to the network's width, the network resized to the whole picture."""
    return classifier.scores(resize_min(to_float(image), classifier.model.width))


# Darknet's `classifier valid*` modes -> the scores of one image. `valid` folds batch norm as
# validate_classifier_single does; the others run the network unfolded (parse_network_cfg alone), as Darknet.
VALID_MODES: Dict[str, Callable[[Classifier, np.ndarray], np.ndarray]] = {
    "valid": Classifier.predict, "valid10": ten_crop_scores, "validmulti": multi_scale_scores,
    "validfull": full_image_scores,
}


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
                     on_error: Optional[Callable[[str], None]] = None, mode: str = "valid") -> Accuracy:
    """Top-1 and top-k over the images of a list file, the true class of each the first of the first `classes`
    labels found in its path as the list writes it (an image without one, or one that cannot be read, counts as
    wrong, as in Darknet). `after_image(i, accuracy)` is called after each image (Darknet prints its running
    line there). `mode` is one of VALID_MODES."""
    accuracy = Accuracy()
    for i, path in enumerate(read_image_list(list_file)):
        truth = true_class(path, labels[:classes])
        if truth < 0:
            accuracy.unlabelled.append(path)
        accuracy.images += 1
        try:
            scores = VALID_MODES[mode](classifier, load_image(resolve_path(path, list_file)))
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
