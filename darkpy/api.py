"""darkpy in one call: `net = darkpy.load(cfg, weights, names=...)`, then `net("dog.jpg")`.

The network is built and loaded as `darkpy detect` builds it (commands.common: batch norm folded, eval
mode, channels_last on the chosen device) and its results are Darknet's: `.lines()` are the lines
`darknet detector test` prints, `.to_json()` is its `-out` record, `.plot()` draws Darknet's boxes.

Arrays carry no colour order, so an array must come with `bgr=True` (OpenCV's frames) or `bgr=False` (RGB,
as PIL, imageio and matplotlib give them): darkpy never guesses.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from darkpy.boxes import Detection, best_shown_class, detection_lines
from darkpy.commands.common import load_model, ready_for_inference
from darkpy.commands.detect import class_names, draw_detections, json_record
from darkpy.evaluation.inference import Detector
from darkpy.evaluation.classify import Classifier as ClassifierNetwork
from darkpy.image import load_image

Image = Union[str, Path, np.ndarray]


@dataclass
class Results:
    """One image's detections above the threshold: per box, its best class (Darknet's shown class), score and
    box. `image` is the image as read (RGB uint8); `path` is its file, or None for an array."""

    image: np.ndarray
    path: Optional[str]
    detections: List[Detection]  # all kept by NMS, as Darknet keeps them (also those without a class shown)
    class_names: List[str]  # the network's names, one per class
    thresh: float

    @property
    def _shown(self):
        shown = [(det, best_shown_class(det, self.class_names, self.thresh)) for det in self.detections]
        return [(det, best) for det, best in shown if best >= 0]

    @property
    def class_ids(self) -> np.ndarray:
        return np.array([best for _, best in self._shown], np.int64)

    @property
    def names(self) -> List[str]:
        return [self.class_names[best] for _, best in self._shown]

    @property
    def scores(self) -> np.ndarray:
        return np.array([det.probs[best] for det, best in self._shown], np.float32)

    @property
    def xywhn(self) -> np.ndarray:
        """Boxes relative to the image: centre x, centre y, width, height in 0..1 (YOLO labels' form)."""
        return np.array([[det.x, det.y, det.w, det.h] for det, _ in self._shown], np.float32).reshape(-1, 4)

    @property
    def xywh(self) -> np.ndarray:
        """Boxes in pixels: centre x, centre y, width, height."""
        height, width = self.image.shape[:2]
        return self.xywhn * np.array([width, height, width, height], np.float32)

    @property
    def xyxy(self) -> np.ndarray:
        """Boxes in pixels: left, top, right, bottom (not clipped to the image, as Darknet's)."""
        centre, size = self.xywh[:, :2], self.xywh[:, 2:]
        return np.concatenate([centre - size / 2, centre + size / 2], axis=1)

    def __len__(self) -> int:
        return len(self._shown)

    def lines(self, ext_output: bool = True) -> List[str]:
        """What `darknet detector test` prints for the image (with -ext_output: the boxes in pixels)."""
        height, width = self.image.shape[:2]
        return detection_lines(self.detections, self.class_names, width, height, self.thresh, ext_output)

    def to_json(self, frame_id: int = 1) -> str:
        """The image's record in Darknet's `-out` JSON."""
        return json_record(frame_id, self.path or "", self.detections, self.class_names)

    def plot(self) -> np.ndarray:
        """The image with Darknet's boxes and labels, as a BGR array (what cv2.imwrite and cv2.imshow take)."""
        return draw_detections(self.image, self.detections, self.class_names, self.thresh)

    def save(self, path: Union[str, Path]) -> None:
        if not cv2.imwrite(str(path), self.plot()):
            raise OSError(f"{path}: the image could not be written (unknown extension or unwritable folder)")


class Network:
    """A loaded Darknet network: call it on an image path, an array (say `bgr=`), or a list of them."""

    def __init__(self, detector: Detector, names: List[str], thresh: float, hier: float, nms: float):
        self.detector, self.names = detector, names
        self.thresh, self.hier, self.nms = thresh, hier, nms

    @property
    def model(self):
        return self.detector.model

    def reset_state(self) -> None:
        """Start a new video: a network with recurrent layers ([crnn], [conv_lstm]...) carries its state from
        each image to the next, in the order they are given (a list is consecutive frames)."""
        self.model.reset_state()

    def __call__(self, images: Union[Image, Sequence[Image]], bgr: Optional[bool] = None,
                 thresh: Optional[float] = None) -> Union[Results, List[Results]]:
        """Detections for one image (a Results) or a list of images (a list of Results, in batches)."""
        single = isinstance(images, (str, Path, np.ndarray))
        items = [images] if single else list(images)
        rgb = [_as_rgb(item, bgr) for item in items]
        thresh = self.thresh if thresh is None else thresh
        detected = self.detector.detect_arrays(rgb, thresh, self.hier, self.nms)
        results = [Results(image, None if isinstance(item, np.ndarray) else str(item), dets, self.names, thresh)
                   for item, image, dets in zip(items, rgb, detected)]
        return results[0] if single else results


def _as_rgb(image: Image, bgr: Optional[bool]) -> np.ndarray:
    """An image file read as Darknet reads it, or an HxWx3 uint8 array turned RGB as its caller said."""
    if not isinstance(image, np.ndarray):
        return load_image(image)
    if bgr is None:
        raise ValueError("an array's colour order is unknown: pass bgr=True (OpenCV) or bgr=False (RGB)")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"an image array must be HxWx3 uint8, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image[:, :, ::-1]) if bgr else image


@dataclass
class Classes:
    """A classifier's output for one image: the probability of every class (the network's last output)."""

    image: np.ndarray
    path: Optional[str]
    probabilities: np.ndarray
    class_names: List[str]

    def top(self, k: int = 5) -> List[Tuple[str, float]]:
        """The k most probable classes, best first (Darknet's top_k: the first class on ties)."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.class_names[i], float(self.probabilities[i])) for i in order]

    def lines(self, k: int = 5) -> List[str]:
        """What `darknet classifier predict` prints for the image: `name: probability` for the top k."""
        return ["%s: %f" % (name, probability) for name, probability in self.top(k)]


class Classifier:
    """A loaded Darknet classifier: call it on an image path, an array (say `bgr=`), or a list of them."""

    def __init__(self, network: ClassifierNetwork, names: List[str]):
        self.network, self.model, self.names = network, network.model, names

    def __call__(self, images: Union[Image, Sequence[Image]], bgr: Optional[bool] = None) -> Union[Classes, List[Classes]]:
        single = isinstance(images, (str, Path, np.ndarray))
        items = [images] if single else list(images)
        results = [self._classify(item, _as_rgb(item, bgr)) for item in items]
        return results[0] if single else results

    def _classify(self, item: Image, rgb: np.ndarray) -> Classes:
        """predict_classifier's input (resize_min, centre crop) and forward pass."""
        probabilities = self.network.predict(rgb)
        return Classes(rgb, None if isinstance(item, np.ndarray) else str(item), probabilities, self.names)


def load(cfg: Union[str, Path], weights: Optional[Union[str, Path]] = None, names: Optional[Union[str, Path]] = None,
         data: Optional[Union[str, Path]] = None, device: str = "auto", thresh: float = 0.25, hier: float = 0.5,
         nms: float = 0.45, letter_box: bool = False, batch: int = 4) -> Union[Network, Classifier]:
    """A Darknet network ready to detect — or, for a classifier cfg (no detection layer), to classify: `names`
    (one per line) or `data` (a .data file's names=) must have one name per class; without either, coco.names
    for an 80-class detector, else `class 0`, `class 1`... letter_box=True letterboxes as Darknet's
    -letter_box (the cfg's [net] letter_box=1 does too)."""
    data_path, names_path = (str(data) if data else None), (str(names) if names else None)
    model = ready_for_inference(load_model(str(cfg), str(weights) if weights else None), device)
    if not model.heads:
        network = ClassifierNetwork(model)
        return Classifier(network, class_names(data_path, names_path, network.classes, str(cfg), coco=False))
    detector = Detector(model, device=None, letter_box=True if letter_box else None, batch_size=batch)
    return Network(detector, class_names(data_path, names_path, detector.classes, str(cfg)), thresh, hier, nms)
