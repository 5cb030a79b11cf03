"""Running a Darknet model on images: Detector (batched forward + Darknet's decoding and NMS) and the image
sources `darkpy detect` reads (files, folders, list files, globs, videos, cameras), read in the background.

Detector reproduces src/detector.c `test_detector` per image: the network input as darknet builds it
(darkpy.image), the forward pass, `get_network_boxes` (darkpy.boxes) and `do_nms_sort` / `diounms_sort`
with the nms_kind of the last detection head.
"""
import copy
import glob
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import cv2
import numpy as np
import torch
from torch import nn

from darkpy.boxes import Detection, get_network_boxes, nms_sort
from darkpy.data import DataError, read_image_list, resolve_path
from darkpy.image import ImageError, load_image, network_input
from darkpy.layers.conv import ConvLayer
from darkpy.layers.pool import MaxPoolLayer

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
                    ".jp2", ".jpe", ".sr", ".ras", ".exr", ".hdr", ".pic"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv", ".3gp",
                    ".ts", ".mts", ".m2ts", ".gif"}
LIST_EXTENSIONS = {".txt", ".list", ".lst"}
GLOB_CHARACTERS = set("*?[")


def resolve_device(device: Union[str, torch.device] = "auto") -> torch.device:
    """'auto' -> the first CUDA device when there is one, else the CPU; a GPU number N (Darknet's -i N) ->
    cuda:N; otherwise torch.device(device), checked to exist."""
    if str(device) == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if str(device).isdigit():
        device = f"cuda:{device}"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device}: not a device name (auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device}: CUDA is not available on this machine (use --device cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    return resolved


# ============================================================================ the detector

def prepare_for_inference(model: nn.Module, device: Union[str, torch.device] = "auto",
                          half: bool = False) -> nn.Module:
    """Convert a model the caller owns, in place, for fast inference: moved to `device`, in channels_last
    memory format (oneDNN's convolutions and max-pools run in NHWC, about twice as fast on the CPU,
    docs/latency.md; the numbers are the same up to float rounding) and, when `half` and on CUDA, float16. On
    the CPU its folded convolutions are packed for oneDNN (ConvLayer.pack_for_cpu: weights reordered once,
    activation fused; the same numbers as unpacked), and a [maxpool] that alone reads the layer before it is told
    so (MaxPoolLayer.reads_alone: a concatenation's parts pooled unjoined, a convolution's output overwritten;
    the same numbers, less memory traffic)."""
    resolved = resolve_device(device)
    model.to(resolved, memory_format=torch.channels_last)
    if half and resolved.type == "cuda":
        model.half()
    if resolved.type == "cpu":
        for layer in model.modules():
            if isinstance(layer, ConvLayer):
                layer.pack_for_cpu()
        for before, pool in zip(model.layers, model.layers[1:]):
            if isinstance(pool, MaxPoolLayer) and model.read_only_by_next_layer(before.index):
                pool.reads_alone(before)
    return model


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _is_channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-d weights are stored channels_last (then its inputs should be too)."""
    return any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters())


class Detector:
    """A Darknet model plus Darknet's pre- and post-processing.

    The Detector never changes the model it is handed (a model being trained can be evaluated): it runs it on
    the device, in the dtype and memory format it has. When `device` (None: the model's) or `half` ask for
    something else, it runs a converted copy instead; a caller that owns its model converts it itself first
    (`prepare_for_inference`) to avoid the copy. `letter_box=None` follows the cfg's [net] letter_box.
    half=True runs in float16 (CUDA only; detections then differ from Darknet's float32 ones in the last
    digits). The train/eval state is restored after each call. `runtime`, when given, runs the forward pass
    instead of the model (onnx_backend.OnnxRuntimeForward: the same outputs from onnxruntime); the model still
    gives the sizes and the heads that decode them."""

    def __init__(self, model: nn.Module, device: Union[str, torch.device, None] = "cpu", half: bool = False,
                 letter_box: Optional[bool] = None, batch_size: int = 8,
                 runtime: Optional[Callable[[np.ndarray], List[np.ndarray]]] = None):
        if not model.heads:
            raise ValueError(f"{getattr(model, 'cfg_path', 'the model')}: the network has no [yolo], "
                             f"[Gaussian_yolo] or [region] layer, so it cannot detect objects")
        self.device = _model_device(model) if device is None else resolve_device(device)
        self.half = bool(half) and self.device.type == "cuda"
        first = next(model.parameters(), None)
        wrong_dtype = self.half and first is not None and first.dtype != torch.float16
        if _model_device(model) != self.device or wrong_dtype:
            model = copy.deepcopy(model).to(self.device)
            if self.half:
                model.half()
        self.model = model
        self.runtime = runtime
        self.channels_last = _is_channels_last(model)
        self.letter_box = bool(model.letter_box if letter_box is None else letter_box)
        self.batch_size = max(1, int(batch_size))
        self.heads = list(model.heads)  # each head decodes its own output (Head.decode)
        last = self.heads[-1]  # test_detector: the nms_kind of the last detection layer decides
        self.nms_kind, self.beta_nms = last.nms_kind, last.beta_nms

    @property
    def net_wh(self) -> Tuple[int, int]:
        return self.model.width, self.model.height

    @property
    def classes(self) -> int:
        return self.heads[0].classes

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> float32 (3, net_h, net_w), as Darknet feeds it (resize_image or letterbox)."""
        return network_input(image, self.model.width, self.model.height, self.letter_box)

    def forward(self, inputs: np.ndarray) -> List[np.ndarray]:
        """Network inputs (B, 3, H, W) -> per head, float32 numpy (B, A, E, H, W) in Darknet's eval layout."""
        if self.runtime is not None:
            return self.runtime(inputs)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                outputs = self.model(x.half() if self.half else x)
                return [o.float().cpu().numpy() for o in outputs]
        finally:
            self.model.train(was_training)

    def postprocess(self, head_outputs: Sequence[np.ndarray], image_wh: Tuple[int, int], thresh: float = 0.25,
                    hier: float = 0.5, nms: float = 0.45) -> List[Detection]:
        """One image's head outputs (A, E, H, W) -> detections after NMS, in Darknet's order; boxes whose
        probabilities are all 0 (at or below thresh, or suppressed) are left out."""
        boxes = get_network_boxes(head_outputs, self.heads, self.net_wh, image_wh, thresh, hier, self.letter_box)
        if nms:
            boxes = nms_sort(boxes, nms, self.nms_kind, self.beta_nms)
        return boxes.detections()

    def detect_inputs(self, inputs: np.ndarray, image_sizes: Sequence[Tuple[int, int]], thresh: float = 0.25,
                      hier: float = 0.5, nms: float = 0.45) -> List[List[Detection]]:
        """Already preprocessed inputs (B, 3, H, W) with each original (width, height) -> detections."""
        outputs = self.forward(inputs)
        return [self.postprocess([o[i] for o in outputs], image_sizes[i], thresh, hier, nms)
                for i in range(len(image_sizes))]

    def detect_frames(self, frames: Sequence["Frame"], thresh: float = 0.25, hier: float = 0.5,
                      nms: float = 0.45) -> List[List[Detection]]:
        """Frames read with `preprocess` (their `input` set) -> their detections, in one forward pass."""
        return self.detect_inputs(np.stack([frame.input for frame in frames]), [frame.size for frame in frames],
                                  thresh, hier, nms)

    def detect_arrays(self, images: Sequence[np.ndarray], thresh: float = 0.25, hier: float = 0.5,
                      nms: float = 0.45) -> List[List[Detection]]:
        """HxWx3 uint8 RGB images -> for each, its detections (boxes relative to that image), in batches of
        batch_size."""
        results: List[List[Detection]] = []
        for chunk in batched(images, self.batch_size):
            inputs = np.stack([self.preprocess(image) for image in chunk])
            sizes = [(image.shape[1], image.shape[0]) for image in chunk]
            results.extend(self.detect_inputs(inputs, sizes, thresh, hier, nms))
        return results


# ============================================================================ image sources

@dataclass
class Source:
    """One thing to read frames from: kind 'image', 'video' or 'camera' (path is the camera index)."""

    kind: str
    path: str


@dataclass
class Frame:
    """One image or video frame: the RGB image and its network input, or the error that prevented reading it."""

    name: str
    source: Source
    image: Optional[np.ndarray] = None
    input: Optional[np.ndarray] = None
    error: Optional[str] = None
    frame_index: int = 0
    fps: float = 0.0

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) of the image as read."""
        return self.image.shape[1], self.image.shape[0]


def _is_glob(text: str) -> bool:
    return any(ch in GLOB_CHARACTERS for ch in text) and not os.path.exists(text)


def _classify_file(path: str) -> str:
    extension = Path(path).suffix.lower()
    if extension in VIDEO_EXTENSIONS:
        return "video"
    if extension in LIST_EXTENSIONS:
        return "list"
    return "image"  # anything else is tried as an image; a failure names the file


def _folder_sources(folder: str) -> List[Source]:
    entries = sorted(os.listdir(folder))
    sources = []
    for entry in entries:
        path = os.path.join(folder, entry)
        extension = Path(entry).suffix.lower()
        if not os.path.isfile(path):
            continue
        if extension in IMAGE_EXTENSIONS:
            sources.append(Source("image", path))
        elif extension in VIDEO_EXTENSIONS:
            sources.append(Source("video", path))
    return sources


def expand_sources(specs: Sequence[str]) -> Tuple[List[Source], List[str]]:
    """Turn command-line sources into a flat list, in order: image and video files, folders (their images and
    videos, sorted, not recursive), list files (.txt/.list: one path per line, as darknet's `< list.txt`; a
    relative path is tried from the current folder, then beside the list, as map reads lists),
    glob patterns and camera indices ('0'). Returns the sources and the error messages for the specs that
    name nothing usable (each names the spec)."""
    sources: List[Source] = []
    errors: List[str] = []
    for spec in specs:
        spec = str(spec)
        if spec.isdigit() and not os.path.exists(spec):
            sources.append(Source("camera", spec))
        elif os.path.isdir(spec):
            found = _folder_sources(spec)
            if not found:
                errors.append(f"{spec}: the folder contains no image or video files")
            sources.extend(found)
        elif os.path.isfile(spec):
            kind = _classify_file(spec)
            if kind == "list":
                try:
                    listed = [resolve_path(p, spec) for p in read_image_list(spec)]  # also beside the list
                    sources.extend(Source(_classify_file(p), p) for p in listed)
                except DataError as exc:
                    errors.append(str(exc))
            else:
                sources.append(Source(kind, spec))
        elif _is_glob(spec):
            matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not matches:
                errors.append(f"{spec}: no file matches this pattern")
            sources.extend(Source(_classify_file(p), p) for p in matches if _classify_file(p) != "list")
        else:
            errors.append(f"{spec}: no such file or folder")
    return sources, errors


def count_frames(sources: Sequence[Source]) -> Optional[int]:
    """Images plus video frames (as the container reports them); None when a camera makes it open-ended."""
    total = 0
    for source in sources:
        if source.kind == "camera":
            return None
        if source.kind == "video":
            capture = cv2.VideoCapture(source.path)
            total += max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0) if capture.isOpened() else 0
            capture.release()
        else:
            total += 1
    return total


def _read_image(source: Source, preprocess: Optional[Callable]) -> Frame:
    frame = Frame(source.path, source)
    try:
        frame.image = load_image(source.path)
        if preprocess is not None:
            frame.input = preprocess(frame.image)
    except ImageError as exc:
        frame.error = str(exc)
    return frame


def _video_frames(source: Source, preprocess: Optional[Callable]) -> Iterator[Frame]:
    capture = cv2.VideoCapture(int(source.path) if source.kind == "camera" else source.path)
    label = f"camera {source.path}" if source.kind == "camera" else source.path
    if not capture.isOpened():
        yield Frame(label, source, error=f"{label}: cannot open the {source.kind}")
        return
    index = 0
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield Frame(f"{label}#{index}", source, image, preprocess(image) if preprocess else None,
                        frame_index=index, fps=fps)
            index += 1
    finally:
        capture.release()
    if index == 0:
        yield Frame(label, source, error=f"{label}: no frame could be read")


def _frames_in_order(sources: Sequence[Source], preprocess: Optional[Callable], workers: int) -> Iterator[Frame]:
    """Images are read by a small thread pool (OpenCV and numpy release the GIL) in a bounded window, so the
    order is kept; videos and cameras are read frame by frame."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        window: List = []
        for source in sources:
            if source.kind == "image":
                window.append(pool.submit(_read_image, source, preprocess))
                if len(window) > 2 * workers:
                    yield window.pop(0).result()
                continue
            while window:
                yield window.pop(0).result()
            yield from _video_frames(source, preprocess)
        while window:
            yield window.pop(0).result()


T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[List[T]]:
    """Items in order, `size` at a time, the last group shorter: what goes through the network in one
    forward pass (detect and map both batch their frames this way and flush the rest at the end)."""
    size = max(1, int(size))
    batch: List[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def iterate_frames(sources: Sequence[Source], preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                   prefetch: int = 16, workers: int = 2) -> Iterator[Frame]:
    """Frames of all sources in order, read (and preprocessed) in a background thread while the caller runs
    the network on the previous ones. Unreadable files and unopenable videos come as frames with `error`."""
    buffer: "queue.Queue" = queue.Queue(maxsize=max(1, prefetch))
    finished = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for frame in _frames_in_order(sources, preprocess, workers):
                while not stop.is_set():
                    try:
                        buffer.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # surfaced in the consumer rather than lost in the thread
            buffer.put(exc)
        finally:
            buffer.put(finished)

    thread = threading.Thread(target=produce, name="darkpy-image-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is finished:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)
