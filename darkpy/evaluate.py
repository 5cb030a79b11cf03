"""`darkpy map`: darknet's `detector map` on a .data file's valid list, plus COCO metrics and a results JSON.

Reproduces AlexeyAB darknet's src/detector.c `validate_detector_map`: detections at thresh 0.005, hier 0,
NMS 0.45 (the cfg's nms_kind), truths from the label files, darknet's matching and AP arithmetic
(darkpy.metrics) and its printed report. Batched inference, a progress bar, and a summary of data problems
(bad label lines, missing label files, unreadable images) at the end.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .data import (
    DataConfig,
    DataError,
    DataProblems,
    check_names_count,
    label_path,
    read_data_config,
    read_image_list,
    read_labels,
    read_names,
    report_missing_image,
    resolve_path,
)
from .metrics import (
    MapAccumulator,
    coco_category_ids,
    coco_evaluate,
    coco_image_ids,
    coco_results,
    format_map_report,
    write_coco_results,
)

# validate_detector_map's fixed detection settings
MAP_DETECTION_THRESH = 0.005
MAP_HIER_THRESH = 0.0
MAP_NMS_THRESH = 0.45
# what darknet opens when the .data file has no `valid` / `names` (option_find_str defaults in map)
DEFAULT_VALID = "data/train.txt"
DEFAULT_NAMES = "data/names.list"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="darknet .data file (valid, names, optional difficult)")
    parser.add_argument("--cfg", required=True, help="network .cfg")
    parser.add_argument("--weights", help="darknet .weights (without it: the cfg's random initialisation)")
    parser.add_argument("--points", type=int, default=0,
                        help="AP method: 0 = area under the curve for each unique recall (default, VOC2010+), "
                             "11 = PascalVOC 2007, 101 = MS COCO")
    parser.add_argument("--iou-thresh", type=float, default=0.5,
                        help="a detection is a TP when its IoU with a truth is above this (default .5)")
    parser.add_argument("--thresh", type=float, default=0.25,
                        help="confidence for the TP/FP, precision, recall, F1 and average IoU lines (default .25)")
    parser.add_argument("--letter-box", action="store_true",
                        help="letterbox the images (also on when the cfg's [net] has letter_box=1)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N (default: auto)")
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--width", type=int, default=None, help="network width (default: the cfg's)")
    parser.add_argument("--height", type=int, default=None, help="network height (default: the cfg's)")
    parser.add_argument("--save-json", metavar="OUT",
                        help="write the detections as a COCO results JSON (darknet's `valid` with eval=coco)")
    parser.add_argument("--coco", action="store_true",
                        help="also print COCO metrics (AP@[.5:.95], AP50, AP75, small/medium/large) via pycocotools")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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


def _resolve_list(config: DataConfig, key: str, default: Optional[str]) -> Optional[str]:
    value = config.options.get(key, default)
    if value is None:
        return None
    path = resolve_path(value, config.path)
    if not os.path.exists(path):
        where = config.where(key) if key in config.options else f"{config.path} (no `{key}` line; darknet's default)"
        raise DataError(f"{where}: {key} file {value!r} does not exist")
    return path


def load_map_dataset(data_path: str) -> MapDataset:
    """Read the .data file and the files it names, resolving paths as darknet does (see resolve_path)."""
    config = read_data_config(data_path)
    list_path = _resolve_list(config, "valid", DEFAULT_VALID)
    names_path = _resolve_list(config, "names", DEFAULT_NAMES)
    assert list_path is not None and names_path is not None
    image_paths = [resolve_path(path, list_path) for path in read_image_list(list_path)]
    difficult_list = _resolve_list(config, "difficult", None)
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


def _detect_batch(detector: Any, frames: List[Tuple[int, Any]]) -> List[ImageDetections]:
    """(index in the valid list, Frame) pairs -> their detections at map's settings."""
    sizes = [(frame.image.shape[1], frame.image.shape[0]) for _, frame in frames]
    results = detector.detect_inputs(np.stack([frame.input for _, frame in frames]), sizes,
                                     thresh=MAP_DETECTION_THRESH, hier=MAP_HIER_THRESH, nms=MAP_NMS_THRESH)
    return [ImageDetections(index, frame.name, size, list(detections))
            for (index, frame), size, detections in zip(frames, sizes, results)]


def iterate_detections(detector: Any, image_paths: Sequence[str], batch: int, problems: DataProblems,
                       progress: bool = True) -> Iterator[ImageDetections]:
    """Run the detector over the images in list order, `batch` images per forward pass, at map's settings
    (thresh 0.005, hier 0, NMS .45). Images are read and resized in a background thread while the network
    runs; an image that cannot be read is reported to `problems` and skipped."""
    from tqdm import tqdm

    from .inference import Source, iterate_frames

    batch = max(1, int(batch))
    sources = [Source("image", path) for path in image_paths]
    pending: List[Any] = []
    with tqdm(total=len(image_paths), desc="map", unit="img", disable=not progress, file=sys.stderr) as bar:
        for index, frame in enumerate(iterate_frames(sources, preprocess=detector.preprocess)):
            if frame.error is not None:
                report_missing_image(problems, frame.name, frame.error.replace(f"{frame.name}: ", ""))
                bar.update(1)
                continue
            pending.append((index, frame))  # the index matters for the parallel `difficult` list
            if len(pending) == batch:
                yield from _detect_batch(detector, pending)
                bar.update(len(pending))
                pending = []
        if pending:
            yield from _detect_batch(detector, pending)
            bar.update(len(pending))


def image_truths(image_path: str, classes: int, problems: DataProblems) -> np.ndarray:
    """Truths of an image, from the label file found as darknet finds it (then the images->labels layout)."""
    return read_labels(label_path(image_path), classes, problems)


def accumulate_map(detected: Sequence[ImageDetections], dataset: MapDataset, classes: int,
                   iou_thresh: float, thresh: float, problems: DataProblems) -> MapAccumulator:
    """Feed already computed detections to a MapAccumulator (reusable for several thresholds)."""
    accumulator = MapAccumulator(classes, iou_thresh, thresh)
    for item in detected:
        add_to_accumulator(accumulator, item, dataset, classes, problems)
    return accumulator


def add_to_accumulator(accumulator: MapAccumulator, item: ImageDetections, dataset: MapDataset, classes: int,
                       problems: DataProblems) -> None:
    truths = image_truths(item.path, classes, problems)
    difficult = None
    if dataset.difficult_paths is not None:
        difficult = image_truths(dataset.difficult_paths[item.index], classes, problems)
    accumulator.add_image(item.detections, truths, difficult, image_size=item.size, name=item.path)


# --------------------------------------------------------------------------------------------- command

def build_detector(args: argparse.Namespace):
    """The network (cfg + weights, batch-norm folded as darknet does for inference) wrapped in a Detector."""
    from .inference import Detector
    from .model import Darknet

    model = Darknet.from_cfg(args.cfg, width=args.width, height=args.height)
    if args.weights:
        model.load_weights(args.weights)
    model.eval()
    model.fuse()  # darknet folds batch norm into the convolutions when it loads a network for map
    # letter_box=None follows the cfg's [net] letter_box; --letter-box forces it on
    detector = Detector(model, device=args.device, half=False, letter_box=True if args.letter_box else None,
                        batch_size=args.batch)
    return model, detector


def _check_classes(dataset: MapDataset, classes: int, cfg_path: str, problems: DataProblems) -> None:
    check_names_count(dataset.names, dataset.names_path, classes, cfg_path)
    declared = dataset.config.classes
    if declared is not None and declared != classes:
        problems.warn("classes differ from the cfg", f"{dataset.config.where('classes')}: classes={declared}, "
                      f"but the cfg's last layer has {classes}; map uses the cfg's, as darknet does")


def _print_lines(lines: Sequence[str], stream=None) -> None:
    stream = stream or sys.stdout
    for line in lines:
        print(line, file=stream)


def run_map(args: argparse.Namespace) -> int:
    problems = DataProblems(listed_per_kind=20)
    dataset = load_map_dataset(args.data)
    model, detector = build_detector(args)
    classes = int(model.heads[-1].classes)
    _check_classes(dataset, classes, args.cfg, problems)
    print(f"\n calculation mAP (mean average precision) on {len(dataset.image_paths)} images of "
          f"{dataset.list_path} ...", file=sys.stderr)

    accumulator = MapAccumulator(classes, args.iou_thresh, args.thresh)
    start = time.time()
    for item in iterate_detections(detector, dataset.image_paths, args.batch, problems,
                                   progress=not args.no_progress):
        add_to_accumulator(accumulator, item, dataset, classes, problems)
    elapsed = time.time() - start

    result = accumulator.result(args.points)
    _print_lines([""] + format_map_report(result, dataset.names))
    print(f"Total Detection Time: {int(elapsed)} Seconds", file=sys.stderr)
    _coco_outputs(args, accumulator, dataset)
    print("")
    _print_lines(problems.summary())
    return 0


def _coco_outputs(args: argparse.Namespace, accumulator: MapAccumulator, dataset: MapDataset) -> None:
    if not (args.coco or args.save_json):
        return
    image_ids = coco_image_ids([image.name or "" for image in accumulator.images])
    if args.save_json:
        results = coco_results(accumulator, coco_category_ids(dataset.names), image_ids)
        write_coco_results(args.save_json, results)
        print(f"\n COCO results: {len(results)} detections written to {args.save_json}")
    if args.coco:
        coco = coco_evaluate(accumulator, dataset.names, image_ids)
        print("\n COCO metrics (pycocotools, from the same detections):")
        _print_lines(coco.lines)


def run(args: argparse.Namespace) -> int:
    """`darkpy map`; bad input ends with a message naming the file (and line), exit code 1."""
    if args.points < 0 or args.points == 1:
        print(f"darkpy map: error: --points must be 0 or at least 2 (11, 101), got {args.points}", file=sys.stderr)
        return 2
    try:
        return run_map(args)
    except (ValueError, OSError) as error:  # DataError, CfgError, WeightsError... name their file themselves
        print(f"darkpy map: {error}", file=sys.stderr)
        return 1
