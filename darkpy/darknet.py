"""Darknet's Python API (the `darknet.py` module that ships with AlexeyAB darknet) on darkpy, so that a script
written for it runs with one line changed: `import darknet` becomes `from darkpy import darknet`.

The functions keep darknet.py's names, arguments, defaults and return shapes, and give the same numbers: the
network is darkpy's Darknet model, detections are decoded by darkpy's heads, NMS is darkpy.boxes' copy of
Darknet's. What was C memory behind ctypes is plain Python here:

* the network `load_network` returns is a `Network` (the model, its Detector and the outputs of the last
  forward pass, which `get_network_boxes` decodes as Darknet's layers keep theirs);
* an `IMAGE` holds its pixels as a flat float32 numpy array (or the ctypes float pointer a script built);
* a detection array is a list of `DETECTION`s, whose `prob` is a list of floats; NMS reorders it in place;
* the `free_*` functions have nothing to free and return at once.

docs/python.md maps darknet.py's names to darkpy. `POINTER`, `c_float`, `c_int` and `pointer` are re-exported
because Darknet's examples reach them through the module (`darknet.POINTER(darknet.c_float)`).
"""
import random
from ctypes import POINTER, c_float, c_int, pointer  # noqa: F401 (re-exported for the scripts)
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from darkpy.boxes import BoxSet, nms_obj_order, nms_sort_order
from darkpy.commands.common import load_model
from darkpy.data import DataError, read_data_config, read_names
from darkpy.evaluation.inference import Detector, prepare_for_inference
from darkpy.image import letterbox_image as _letterbox, load_image as _load_rgb, resize_image, to_float
from darkpy.model import Darknet

F32 = np.float32
Prediction = Tuple[str, Any, Tuple[float, float, float, float]]  # (label, confidence, (x, y, w, h))

_DEVICE = {"name": "auto"}  # set_gpu / init_cpu choose where networks loaded afterwards run


# ============================================================================ the types scripts touch

@dataclass
class BOX:
    """A box: centre x, y and w, h (relative to the image, or in its pixels when asked with relative=0)."""

    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0


@dataclass
class DETECTION:
    """One of Darknet's `detection`s, with the fields darknet.py declares; `prob` is a list of floats."""

    bbox: BOX = field(default_factory=BOX)
    classes: int = 0
    best_class_idx: int = 0
    prob: List[float] = field(default_factory=list)
    mask: Optional[List[float]] = None
    objectness: float = 0.0
    sort_class: int = 0
    uc: Optional[List[float]] = None
    points: int = 0
    embeddings: Optional[List[float]] = None
    embedding_size: int = 0
    sim: float = 0.0
    track_id: int = 0


@dataclass
class DETNUMPAIR:
    """One image's detections from network_predict_batch."""

    num: int = 0
    dets: List[DETECTION] = field(default_factory=list)


@dataclass
class IMAGE:
    """Darknet's `image`: w, h, c and the pixels, channel after channel (CHW), as floats in [0, 1]. `data` is
    a flat float32 numpy array, or a ctypes float pointer (as `batch_array.ctypes.data_as(...)` makes)."""

    w: int = 0
    h: int = 0
    c: int = 0
    data: Any = None


@dataclass
class METADATA:
    """What load_meta reads from a .data file: the class count and the names (bytes, as ctypes gives them)."""

    classes: int = 0
    names: List[bytes] = field(default_factory=list)


class Network:
    """What load_network returns in place of Darknet's network pointer."""

    def __init__(self, model: Darknet, batch: int):
        self.model = model
        self.batch = batch
        # Darknet's Python API never letterboxes unless asked (get_network_boxes' letter argument)
        self.detector = Detector(model, device=None, letter_box=False, batch_size=batch) if model.heads else None
        self.outputs: List[np.ndarray] = []  # the last forward pass: per head (B, A, E, H, W), else the output

    @property
    def size(self) -> Tuple[int, int]:
        return self.model.width, self.model.height


# ============================================================================ networks and metadata

def set_gpu(gpu: int) -> None:
    """Run the networks loaded from now on on CUDA device `gpu` (Darknet's cuda_set_device)."""
    _DEVICE["name"] = f"cuda:{int(gpu)}"


def init_cpu() -> None:
    """Run the networks loaded from now on on the CPU."""
    _DEVICE["name"] = "cpu"


def _text(path: Union[str, bytes]) -> str:
    return path.decode() if isinstance(path, bytes) else str(path)


def load_net_custom(config_file: Union[str, bytes], weights: Union[str, bytes], clear: int = 0,
                    batch: int = 1) -> Network:
    """The network of a cfg and its weights, ready for detection as Darknet's load_network_custom leaves it:
    batch norm folded into the convolutions, eval mode; on the GPU when there is one (see set_gpu)."""
    model = load_model(_text(config_file), _text(weights) or None, cfg_warnings="ignore")
    model.eval()
    model.fuse()
    prepare_for_inference(model, _DEVICE["name"])
    return Network(model, max(1, int(batch)))


def load_net(config_file: Union[str, bytes], weights: Union[str, bytes], clear: int = 0) -> Network:
    return load_net_custom(config_file, weights, clear, 1)


def load_meta(data_file: Union[str, bytes]) -> METADATA:
    """The classes= count (2 when absent, as get_metadata) and the names of a .data file's names= file."""
    config = read_data_config(_text(data_file))
    names_path = config.resolve("names") or config.resolve("labels")
    if names_path is None:
        raise DataError(f"{config.path}: the .data file has no names= line")
    classes = 2 if config.classes is None else config.classes
    return METADATA(classes, [name.encode() for name in read_names(names_path)])


def class_colors(names: Sequence[str]) -> dict:
    """One random BGR colour per name, drawn from `random` in darknet.py's order (seed it for the same ones)."""
    return {name: (random.randint(0, 255), random.randint(0, 255), random.randint(0, 255)) for name in names}


def load_network(config_file: str, data_file: str, weights: str, batch_size: int = 1
                 ) -> Tuple[Network, List[str], dict]:
    """(network, class_names, class_colors) for a cfg, a .data file and weights."""
    network = load_net_custom(config_file, weights, 0, batch_size)
    metadata = load_meta(data_file)
    class_names = [name.decode() for name in metadata.names[:metadata.classes]]
    return network, class_names, class_colors(class_names)


def network_width(net: Network) -> int:
    return net.model.width


def network_height(net: Network) -> int:
    return net.model.height


def free_network_ptr(net: Network) -> None:
    """Nothing to free: Python releases the network with its last reference."""


def reset_rnn(net: Network) -> None:
    """Zero the state of the recurrent layers ([crnn], [conv_lstm]...), as Darknet's GPU build does (its CPU
    build's reset_network_state does nothing)."""
    net.model.reset_state()


# ============================================================================ images

def _pixels(image: IMAGE, count: int) -> np.ndarray:
    """The first `count` floats of an image's data, as a numpy view (writes go to the image)."""
    if isinstance(image.data, np.ndarray):
        return image.data.reshape(-1)[:count]
    return np.ctypeslib.as_array(image.data, shape=(count,))


def _chw(image: IMAGE) -> np.ndarray:
    return _pixels(image, image.c * image.h * image.w).reshape(image.c, image.h, image.w)


def _from_chw(chw: np.ndarray) -> IMAGE:
    c, h, w = chw.shape
    return IMAGE(w, h, c, np.ascontiguousarray(chw, dtype=F32).reshape(-1))


def make_image(w: int, h: int, c: int) -> IMAGE:
    return IMAGE(w, h, c, np.zeros(w * h * c, F32))


def copy_image_from_bytes(image: IMAGE, data: bytes) -> None:
    """Fill an image from interleaved 8-bit pixels (h x w x c, as `numpy_image.tobytes()`), each byte / 255."""
    interleaved = np.frombuffer(data, np.uint8, count=image.w * image.h * image.c)
    _pixels(image, interleaved.size)[:] = to_float(interleaved.reshape(image.h, image.w, image.c)).reshape(-1)


def free_image(image: IMAGE) -> None:
    """Nothing to free: the pixels are a numpy array."""


def load_image(path: Union[str, bytes], w: int = 0, h: int = 0) -> IMAGE:
    """An RGB image file (load_image_color), resized with Darknet's resize_image when w and h are given."""
    chw = to_float(_load_rgb(_text(path)))
    return _from_chw(resize_image(chw, w, h) if w and h else chw)


def letterbox_image(image: IMAGE, w: int, h: int) -> IMAGE:
    return _from_chw(_letterbox(_chw(image), w, h))


def rgbgr_image(image: IMAGE) -> None:
    """Swap the first and third channels, in place."""
    chw = _chw(image)
    chw[[0, 2]] = chw[[2, 0]]


# ============================================================================ prediction

def _forward(net: Network, inputs: np.ndarray) -> None:
    """Run the network on (B, 3, H, W) inputs and keep its outputs for get_network_boxes."""
    inputs = np.ascontiguousarray(inputs, dtype=F32)
    if net.detector is not None:
        net.outputs = net.detector.forward(inputs)
        return
    device = next(net.model.parameters()).device  # a network without detection head: its last output
    with torch.inference_mode():
        net.outputs = [net.model(torch.from_numpy(inputs).to(device)).float().cpu().numpy()]


def _last_output(net: Network) -> np.ndarray:
    """The last layer's output of the first image, flat (what Darknet's predict functions return)."""
    return net.outputs[-1][0].reshape(-1)


def network_predict(net: Network, data: Any) -> np.ndarray:
    """Run the network on one input already at its size (a float pointer or array, CHW) -> its last output."""
    width, height = net.size
    _forward(net, _pixels(IMAGE(width, height, 3, data), 3 * height * width).reshape(1, 3, height, width))
    return _last_output(net)


predict = network_predict  # darknet.py's other name for network_predict_ptr


def predict_image(net: Network, image: IMAGE) -> np.ndarray:
    """Run the network on an image, resized to the network's size first when it is not (resize_image)."""
    width, height = net.size
    chw = _chw(image)
    if (image.w, image.h) != (width, height):
        chw = resize_image(chw, width, height)
    _forward(net, chw[None])
    return _last_output(net)


def predict_image_letterbox(net: Network, image: IMAGE) -> np.ndarray:
    width, height = net.size
    _forward(net, _letterbox(_chw(image), width, height)[None])
    return _last_output(net)


# ============================================================================ detections

def _as_detections(boxes: BoxSet, best_class_idx: np.ndarray) -> List[DETECTION]:
    classes = boxes.probs.shape[1]
    uncertainty = [None] * len(boxes) if boxes.uncertainty is None else boxes.uncertainty.tolist()  # Gaussian
    return [DETECTION(BOX(*xywh), classes, int(best), prob, objectness=objectness, uc=uc)
            for xywh, best, prob, objectness, uc in zip(boxes.xywh.tolist(), best_class_idx, boxes.probs.tolist(),
                                                         boxes.objectness.tolist(), uncertainty)]


def _best_class_idx(head: Any, probs: np.ndarray) -> np.ndarray:
    """Darknet sets best_class_idx only for [region] boxes (the first highest prob, -1 when all are 0); the
    other heads leave calloc's 0 in it, which remove_negatives_faster then reads as it is. (A quirk of C's
    fill_network_boxes rather than of the head, hence the test on the type here.)"""
    if head.type != "region" or probs.shape[1] == 0:
        return np.zeros(len(probs), np.int64)
    return np.where(probs.max(axis=1) > 0, probs.argmax(axis=1), -1)


def _image_detections(net: Network, index: int, w: int, h: int, thresh: float, hier: float, relative: int,
                      letter: int) -> List[DETECTION]:
    """The detections of image `index` of the last forward pass (fill_network_boxes): relative boxes, or in
    pixels of a w x h image when relative is 0 (correct_yolo_boxes multiplies in float)."""
    if net.detector is None:
        raise ValueError(f"{net.model.cfg_path}: the network has no [yolo], [Gaussian_yolo] or [region] layer, "
                         f"so it has no boxes")
    detections: List[DETECTION] = []
    for output, head in zip(net.outputs, net.detector.heads):
        boxes = head.decode(output[index], net.size, (w, h), thresh, hier, bool(letter))
        if not relative:
            boxes.xywh = boxes.xywh * np.array([w, h, w, h], F32)
        detections += _as_detections(boxes, _best_class_idx(head, boxes.probs))
    return detections


def get_network_boxes(net: Network, w: int, h: int, thresh: float, hier: float, map: Any, relative: int,
                      num: Any, letter: int = 0) -> List[DETECTION]:
    """The detections of the last prediction, before NMS; `num[0]` (a ctypes int pointer) gets their count."""
    detections = _image_detections(net, 0, w, h, thresh, hier, relative, letter)
    if num is not None:
        num[0] = len(detections)
    return detections


def network_predict_batch(net: Network, image: IMAGE, batch_size: int, w: int, h: int, thresh: float,
                          hier: float, map: Any = None, relative: int = 0, letter: int = 0) -> List[DETNUMPAIR]:
    """One forward pass over `batch_size` network inputs stored one after another in image.data (image.w and
    image.h, like w and h, are the original images' size, which the boxes are corrected to)."""
    width, height = net.size
    inputs = _pixels(image, batch_size * 3 * height * width).reshape(batch_size, 3, height, width)
    _forward(net, inputs)
    pairs = []
    for index in range(batch_size):
        detections = _image_detections(net, index, w, h, thresh, hier, relative, letter)
        pairs.append(DETNUMPAIR(len(detections), detections))
    return pairs


def _box_set(detections: Sequence[DETECTION]) -> BoxSet:
    classes = detections[0].classes if detections else 0
    return BoxSet(np.array([[d.bbox.x, d.bbox.y, d.bbox.w, d.bbox.h] for d in detections], F32).reshape(-1, 4),
                  np.array([d.objectness for d in detections], F32),
                  np.array([d.prob for d in detections], F32).reshape(len(detections), classes))


def do_nms_sort(detections: List[DETECTION], total: int, classes: int, thresh: float) -> None:
    """Darknet's per-class NMS on the first `total` detections, in place: reordered as Darknet leaves them,
    suppressed probabilities set to 0."""
    order, probs = nms_sort_order(_box_set(detections[:total]), thresh)
    detections[:total] = [detections[i] for i in order]
    for detection, prob in zip(detections, probs.tolist()):
        detection.prob, detection.sort_class = prob, classes - 1


def do_nms_obj(detections: List[DETECTION], total: int, classes: int, thresh: float) -> None:
    """Darknet's class-blind NMS on the first `total` detections, in place: reordered by objectness, a
    suppressed detection gets objectness 0 and every probability 0."""
    order, objectness, probs = nms_obj_order(_box_set(detections[:total]), thresh)
    detections[:total] = [detections[i] for i in order]
    for detection, score, prob in zip(detections, objectness.tolist(), probs.tolist()):
        detection.objectness, detection.prob, detection.sort_class = score, prob, -1


def free_detections(detections: List[DETECTION], num: int) -> None:
    """Nothing to free."""


def free_batch_detections(pairs: List[DETNUMPAIR], num: int) -> None:
    """Nothing to free."""


def free_ptrs(pointers: Any, num: int) -> None:
    """Nothing to free."""


def remove_negatives(detections: Sequence[DETECTION], class_names: Sequence[str], num: int) -> List[Prediction]:
    """(name, probability, (x, y, w, h)) for every class of every detection whose probability is above 0."""
    predictions = []
    for detection in detections[:num]:
        box = detection.bbox
        predictions += [(name, detection.prob[k], (box.x, box.y, box.w, box.h))
                        for k, name in enumerate(class_names) if detection.prob[k] > 0]
    return predictions


def remove_negatives_faster(detections: Sequence[DETECTION], class_names: Sequence[str],
                            num: int) -> List[Prediction]:
    """(name, probability, box) of each detection's best_class_idx; detections without one are left out."""
    predictions = []
    for detection in detections[:num]:
        best = detection.best_class_idx
        if best != -1:
            box = detection.bbox
            predictions.append((class_names[best], detection.prob[best], (box.x, box.y, box.w, box.h)))
    return predictions


def decode_detection(detections: Sequence[Prediction]) -> List[Prediction]:
    """The confidence as a percentage string, rounded to 2 decimals ('87.46'), the label as a string."""
    return [(str(label), str(round(confidence * 100, 2)), box) for label, confidence, box in detections]


def detect_image(network: Network, class_names: Sequence[str], image: IMAGE, thresh: float = .5,
                 hier_thresh: float = .5, nms: float = .45) -> List[Prediction]:
    """Detect objects in an image: (label, confidence string, (x, y, w, h) in the image's pixels), after
    per-class NMS, ordered as darknet.py orders them: by the confidence *string* (so '46.6' before '5.52')."""
    predict_image(network, image)
    count = pointer(c_int(0))
    detections = get_network_boxes(network, image.w, image.h, thresh, hier_thresh, None, 0, count, 0)
    if nms:
        do_nms_sort(detections, count[0], len(class_names), nms)
    predictions = decode_detection(remove_negatives(detections, class_names, count[0]))
    return sorted(predictions, key=lambda prediction: prediction[1])


# ============================================================================ boxes, printing, drawing

def bbox2points(bbox: Sequence[float]) -> Tuple[int, int, int, int]:
    """Centre-size box -> (xmin, ymin, xmax, ymax) in whole pixels (Python's round: halves to even)."""
    x, y, w, h = bbox
    return round(x - w / 2), round(y - h / 2), round(x + w / 2), round(y + h / 2)


def print_detections(detections: Sequence[Prediction], coordinates: bool = False) -> None:
    print("\nObjects:")
    for label, confidence, (x, y, w, h) in detections:
        if coordinates:
            print(f"{label}: {confidence}%    (left_x: {x:.0f}   top_y:  {y:.0f}   width:   {w:.0f}   "
                  f"height:  {h:.0f})")
        else:
            print(f"{label}: {confidence}%")


def draw_boxes(detections: Sequence[Prediction], image: np.ndarray, colors: dict) -> np.ndarray:
    """Draw each box (1 pixel) and 'label [confidence]' above it, in the label's colour, on the image."""
    for label, confidence, bbox in detections:
        left, top, right, bottom = bbox2points(bbox)
        cv2.rectangle(image, (left, top), (right, bottom), colors[label], 1)
        cv2.putText(image, f"{label} [{float(confidence):.2f}]", (left, top - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    colors[label], 2)
    return image


def non_max_suppression_fast(detections: Sequence[Any], overlap_thresh: float) -> List[Any]:
    """Malisiewicz's fast NMS (pixel boxes, +1 areas) on detections whose last element is (x, y, w, h): the
    kept ones, highest bottom edge first. darknet.py's version reads the box as a 4th element; any tuple
    ending with the box works here."""
    if not detections:
        return []
    x, y, w, h = np.array([detection[-1] for detection in detections], np.float64).T
    x1, y1, x2, y2 = x - w / 2, y - h / 2, x + w / 2, y + h / 2
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    remaining = list(np.argsort(y2))
    picked = []
    while remaining:
        current, others = remaining[-1], np.array(remaining[:-1], np.int64)
        picked.append(current)
        overlap_w = np.maximum(0, np.minimum(x2[current], x2[others]) - np.maximum(x1[current], x1[others]) + 1)
        overlap_h = np.maximum(0, np.minimum(y2[current], y2[others]) - np.maximum(y1[current], y1[others]) + 1)
        overlap = overlap_w * overlap_h / area[others]
        remaining = [int(i) for i in others[~(overlap > overlap_thresh)]]  # a NaN overlap keeps the box
    return [detections[i] for i in picked]
