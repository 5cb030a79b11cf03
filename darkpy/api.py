"""darkpy in one call: `net = darkpy.load(cfg, weights, names=...)`, then `net("dog.jpg")`.

The network is loaded as Darknet loads it for inference (commands.common: batch norm folded, eval mode,
channels_last on the chosen device) and its results are Darknet's: `.lines()` are the lines `darknet detector
test` prints, `.to_json()` is its `-out` record, `.label_lines()` its -save_labels file, `.plot()` draws its
boxes. `darkpy detect` is this API on a stream of frames: `load`, then `Network.detect_frames` and the Results'
methods for every output it prints and writes.

Arrays carry no colour order, so an array must come with `bgr=True` (OpenCV's frames) or `bgr=False` (RGB,
as PIL, imageio and matplotlib give them): darkpy never guesses.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from darkpy.boxes import Detection, best_shown_class, detection_lines
from darkpy.commands.common import load_model, ready_for_inference
from darkpy.data import check_names_count, read_data_config, read_names
from darkpy.evaluation.classify import Classifier as ClassifierNetwork
from darkpy.evaluation.inference import Detector, Frame
from darkpy.image import load_image

REPO_DIR = Path(__file__).resolve().parents[1]  # darkpy/api.py -> the checkout
DEFAULT_NAMES = "data/coco.names"
COCO_CLASSES = 80  # a network with this many classes and no names given is labelled with coco.names
JSON_MIN_PROB = 0.005  # detection_to_json: only probabilities above this are written
# draw_detections_v3 / get_color: the class colour ramp of Darknet's pictures
_COLOR_RAMP = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0]], np.float32)

Image = Union[str, Path, np.ndarray]


def project_file(path: str, fallback_to_repo: bool = True) -> str:
    """A default path (data/coco.names, cfg/yolov3-tiny.cfg...) is looked up in the current folder, then in the
    project checkout."""
    if fallback_to_repo and not os.path.exists(path) and (REPO_DIR / path).exists():
        return str(REPO_DIR / path)
    return path


def class_names(data: Optional[str], names: Optional[str], classes: int, cfg_path: str,
                detector: bool = True) -> List[str]:
    """The names of a .data file's names= (a classifier's: else its labels=, as predict_classifier reads them) or
    of a names file, which must have one name per class of the network (as map requires); without either: the
    project's coco.names for an 80-class detector, else `class 0`, `class 1`... (COCO names on another network
    would label its boxes wrongly, silently)."""
    if data:
        config = read_data_config(data)
        names_path = config.resolve("names") or (None if detector else config.resolve("labels"))
        if names_path is None:
            raise ValueError(f"{data}: the .data file has no names= line" + ("" if detector else " (nor labels=)"))
    elif names:
        names_path = names
    elif detector and classes == COCO_CLASSES:
        return read_names(project_file(DEFAULT_NAMES))
    else:
        return [f"class {i}" for i in range(classes)]
    listed = read_names(names_path)
    check_names_count(listed, names_path, classes, cfg_path)
    return listed


def _class_color(class_id: int, classes: int) -> Tuple[int, int, int]:
    """draw_detections_v3's colour: offset = class*123457 % classes, get_color(c, offset, classes); as BGR."""
    offset = class_id * 123457 % classes
    ratio = offset / classes * 5
    low, high = int(np.floor(ratio)), int(np.ceil(ratio))
    rgb = (1 - (ratio - low)) * _COLOR_RAMP[low] + (ratio - low) * _COLOR_RAMP[high]
    return tuple(int(255 * v) for v in rgb[::-1])


def draw_detections(image_rgb: np.ndarray, detections: Sequence[Detection], names: Sequence[str],
                    thresh: float) -> np.ndarray:
    """A BGR copy of the image with Darknet-style boxes and labels (class names above thresh, best first)."""
    canvas = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    height, width = canvas.shape[:2]
    line = max(1, int(height * 0.006))
    for det in detections:
        best = best_shown_class(det, names, thresh)
        if best < 0:
            continue
        others = [names[j] for j in np.flatnonzero(det.probs > np.float32(thresh)) if j != best]
        label = ", ".join([names[best]] + others) + f" {det.probs[best] * 100:.0f}%"
        color = _class_color(best, len(names))
        left, top, right, bottom = det.xyxy(width, height)
        left, right = (int(np.clip(v, 0, width - 1)) for v in (left, right))
        top, bottom = (int(np.clip(v, 0, height - 1)) for v in (top, bottom))
        cv2.rectangle(canvas, (left, top), (right, bottom), color, line)
        scale = max(0.4, height / 1000)
        (text_w, text_h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        text_top = max(0, top - text_h - base - 2)
        cv2.rectangle(canvas, (left, text_top), (left + text_w + 2, text_top + text_h + base + 2), color, -1)
        cv2.putText(canvas, label, (left + 1, text_top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def json_record(frame_id: int, filename: str, detections: Sequence[Detection], names: Sequence[str]) -> str:
    """One frame of darknet's `-out` JSON, as detection_to_json formats it (every class with prob > 0.005)."""
    objects = []
    for det in detections:
        for j in np.flatnonzero(det.probs > np.float32(JSON_MIN_PROB)):
            if names[j].startswith("dont_show"):
                continue
            objects.append(
                '  {"class_id":%d, "name":%s, "relative_coordinates":{"center_x":%f, "center_y":%f, '
                '"width":%f, "height":%f}, "confidence":%f}'
                % (j, json.dumps(names[j]), det.x, det.y, det.w, det.h, float(det.probs[j])))
    return ('{\n "frame_id":%d, \n "filename":%s, \n "objects": [ \n' % (frame_id, json.dumps(filename))
            + ", \n".join(objects) + "\n ] \n}")


def label_lines(detections: Sequence[Detection], thresh: float, confidence: bool = True) -> List[str]:
    """YOLO-format lines for the best class above thresh of each box: `class x y w h confidence` (--save-txt),
    or without the confidence in Darknet's -save_labels format (`%d %2.4f %2.4f %2.4f %2.4f`): a label file that
    training and map read back. A box that crosses the image's border is cut to the image, so that the file is
    a valid label file (Darknet writes it as it is, outside [0, 1])."""
    lines = []
    for det in detections:
        above = np.where(det.probs > np.float32(thresh), det.probs, 0)
        if not above.any():
            continue
        best = int(np.argmax(above))
        left, right = np.clip([det.x - det.w / 2, det.x + det.w / 2], 0.0, 1.0)
        top, bottom = np.clip([det.y - det.h / 2, det.y + det.h / 2], 0.0, 1.0)
        box = ((left + right) / 2, (top + bottom) / 2, right - left, bottom - top)
        if confidence:
            lines.append("%d %.6f %.6f %.6f %.6f %.6f" % (best, *box, float(det.probs[best])))
        else:
            lines.append("%d %2.4f %2.4f %2.4f %2.4f" % (best, *box))
    return lines


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

    def label_lines(self, confidence: bool = False) -> List[str]:
        """The image's YOLO label lines (Darknet's -save_labels); with confidence, each box's score appended."""
        return label_lines(self.detections, self.thresh, confidence)

    def plot(self) -> np.ndarray:
        """The image with Darknet's boxes and labels, as a BGR array (what cv2.imwrite and cv2.imshow take)."""
        return draw_detections(self.image, self.detections, self.class_names, self.thresh)

    def save(self, path: Union[str, Path]) -> None:
        if not cv2.imwrite(str(path), self.plot()):
            raise OSError(f"{path}: cannot write the annotated image (an unknown extension, a full disk or a "
                          f"read-only folder?)")


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

    def detect_frames(self, frames: Sequence[Frame]) -> List[Results]:
        """Frames already read and prepared (evaluation.inference.iterate_frames with `detector.preprocess`, as
        `darkpy detect` reads images, videos and cameras) -> their Results, in one forward pass."""
        detected = self.detector.detect_frames(frames, self.thresh, self.hier, self.nms)
        return [Results(frame.image, frame.name, dets, self.names, self.thresh)
                for frame, dets in zip(frames, detected)]


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
         nms: float = 0.45, letter_box: bool = False, batch: int = 4, width: Optional[int] = None,
         height: Optional[int] = None, half: bool = False, allow_partial: bool = False,
         backend: str = "auto") -> Union[Network, Classifier]:
    """A Darknet network ready to detect — or, for a classifier cfg (no detection layer), to classify: `names`
    (one per line) or `data` (a .data file's names=) must have one name per class; without either, coco.names
    for an 80-class detector, else `class 0`, `class 1`... letter_box=True letterboxes as Darknet's
    -letter_box (the cfg's [net] letter_box=1 does too). width/height resize the network, half runs float16 on
    CUDA, allow_partial accepts a partial weights file (*.conv.N). backend: what runs a detector's forward pass
    on the CPU, "auto" (onnxruntime when installed, else torch), "torch" or "onnxruntime"
    (darkpy/evaluation/onnx_backend.py); a classifier runs on torch. `darkpy detect` loads its network here."""
    data_path, names_path = (str(data) if data else None), (str(names) if names else None)
    model = load_model(str(cfg), str(weights) if weights else None, width, height, allow_partial=allow_partial)
    runtime = ready_for_inference(model, device, half, backend)
    if not model.heads:
        network = ClassifierNetwork(model)
        return Classifier(network, class_names(data_path, names_path, network.classes, str(cfg), detector=False))
    detector = Detector(model, device=None, half=half, letter_box=True if letter_box else None, batch_size=batch,
                        runtime=runtime)
    return Network(detector, class_names(data_path, names_path, detector.classes, str(cfg)), thresh, hier, nms)
