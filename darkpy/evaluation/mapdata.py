"""The map dataset and the detection pass shared by `darkpy map` and training's `--map`.

Reproduces what AlexeyAB darknet's src/detector.c `validate_detector_map` reads and runs: the .data file's
valid list (and optional `difficult` list) and names, resolved as darknet resolves them; detections at thresh
0.005, hier 0, NMS 0.45 (the cfg's nms_kind); truths from the label files; then darknet's matching and AP
arithmetic (darkpy.evaluation.metrics).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from darkpy.data import (
    DataConfig,
    DataError,
    DataProblems,
    label_path,
    read_data_config,
    read_image_list,
    read_labels,
    read_names,
    report_missing_image,
    resolve_path,
)
from darkpy.evaluation.inference import Frame, Source, batched, iterate_frames
from darkpy.evaluation.metrics import MapAccumulator

# validate_detector_map's fixed detection settings
MAP_DETECTION_THRESH = 0.005
MAP_HIER_THRESH = 0.0
MAP_NMS_THRESH = 0.45
# what darknet opens when the .data file has no `valid` / `names` (option_find_str defaults in map)
DEFAULT_VALID = "data/train.txt"
DEFAULT_NAMES = "data/names.list"


# --------------------------------------------------------------------------------------------- dataset

@dataclass
class MapDataset:
    """What `detector map` reads from a .data file: the image list, names and optional `difficult` list."""

    config: DataConfig
    list_path: str
    image_paths: List[str]
    names_path: str
    names: List[str]
    difficult_paths: Optional[List[str]] = None


def load_map_dataset(data_path: str) -> MapDataset:
    """Read the .data file and the files it names, resolving paths as darknet does (see resolve_path)."""
    config = read_data_config(data_path)
    list_path = config.existing_file("valid", DEFAULT_VALID)
    names_path = config.existing_file("names", DEFAULT_NAMES)
    assert list_path is not None and names_path is not None
    image_paths = [resolve_path(path, list_path) for path in read_image_list(list_path)]
    if not image_paths:
        raise DataError(f"{list_path}: the valid list has no images")
    difficult_list = config.existing_file("difficult", None)
    difficult_paths = None
    if difficult_list is not None:
        difficult_paths = [resolve_path(path, difficult_list) for path in read_image_list(difficult_list)]
        if len(difficult_paths) != len(image_paths):
            raise DataError(f"{difficult_list}: {len(difficult_paths)} images, but the valid list {list_path} "
                            f"has {len(image_paths)} (darknet reads the two lists in parallel)")
    return MapDataset(config, list_path, image_paths, names_path, read_names(names_path), difficult_paths)


# --------------------------------------------------------------------------------------------- detection

@dataclass
class ImageDetections:
    """One image of the valid list after inference: its index, path, size (w, h) and detections."""

    index: int
    path: str
    size: Tuple[int, int]
    detections: List[Any]


MAP_SETTINGS = (MAP_DETECTION_THRESH, MAP_HIER_THRESH, MAP_NMS_THRESH)


def _detect_batch(detector: Any, frames: List[Tuple[int, Frame]],
                  settings: Tuple[float, float, float]) -> List[ImageDetections]:
    """(index in the valid list, Frame) pairs -> their detections at (thresh, hier, nms)."""
    thresh, hier, nms = settings
    results = detector.detect_frames([frame for _, frame in frames], thresh=thresh, hier=hier, nms=nms)
    return [ImageDetections(index, frame.name, frame.size, list(detections))
            for (index, frame), detections in zip(frames, results)]


def iterate_detections(detector: Any, image_paths: Sequence[str], batch: int, problems: DataProblems,
                       progress: bool = True, settings: Tuple[float, float, float] = MAP_SETTINGS,
                       desc: str = "map") -> Iterator[ImageDetections]:
    """Run the detector over the images in list order, `batch` images per forward pass, at (thresh, hier,
    nms) `settings` (default map's: 0.005, 0, .45). Images are read and resized in a background thread while
    the network runs; an image that cannot be read is reported to `problems` and skipped."""
    sources = [Source("image", path) for path in image_paths]
    with tqdm(total=len(image_paths), desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
        frames = iterate_frames(sources, preprocess=detector.preprocess)
        for pending in batched(_readable(frames, problems, bar), batch):
            yield from _detect_batch(detector, pending, settings)
            bar.update(len(pending))


def _readable(frames: Iterator[Frame], problems: DataProblems, bar: Any) -> Iterator[Tuple[int, Frame]]:
    """(index in the valid list, frame) of the frames that could be read; the index matters for the parallel
    `difficult` list. Unreadable images are reported as darknet's missing images."""
    for index, frame in enumerate(frames):
        if frame.error is not None:
            report_missing_image(problems, frame.name, frame.error.replace(f"{frame.name}: ", ""))
            bar.update(1)
            continue
        yield index, frame


def image_truths(image_path: str, classes: int, problems: DataProblems) -> np.ndarray:
    """Truths of an image, from the label file found as darknet finds it (then the images->labels layout)."""
    return read_labels(label_path(image_path), classes, problems)


def accumulate_map(detected: Iterable[ImageDetections], dataset: MapDataset, classes: int,
                   iou_thresh: float, thresh: float, problems: DataProblems) -> MapAccumulator:
    """Feed detections (computed already, or as iterate_detections yields them) to a MapAccumulator (whose
    result can be asked for several AP methods)."""
    accumulator = MapAccumulator(classes, iou_thresh, thresh)
    for item in detected:
        add_to_accumulator(accumulator, item, dataset, classes, problems)
    return accumulator


def add_to_accumulator(accumulator: MapAccumulator, item: ImageDetections, dataset: MapDataset, classes: int,
                       problems: DataProblems) -> None:
    """One image's detections, its truths and (with a `difficult` list) its difficult truths into the
    accumulator, as validate_detector_map reads them per image."""
    truths = image_truths(item.path, classes, problems)
    difficult = None
    if dataset.difficult_paths is not None:
        difficult = image_truths(dataset.difficult_paths[item.index], classes, problems)
    accumulator.add_image(item.detections, truths, difficult, image_size=item.size, name=item.path)
