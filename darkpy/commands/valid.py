"""`darkpy valid`: Darknet's `detector valid` (src/detector.c validate_detector): every detection on the .data
file's valid list, for an outside evaluator, in Darknet's files and formats.

Detections at thresh .001, hier .5 and NMS .6 (the cfg's nms_kind), letterboxed only when the cfg's [net] says
so, as Darknet runs them. The .data `eval=` decides the format and `results=` the folder (default `results`,
relative to the current folder, created when missing):

* `eval=coco`: `<results>/coco_results.json`, one line per box and class with a probability:
  `{"image_id":N, "category_id":C, "bbox":[left, top, width, height], "score":P},` where N is atoi of the file
  name up to its first dot, C the COCO category id, the box in pixels clipped to the image;
* otherwise (VOC): `<results>/comp4_det_test_<class name>.txt` per class, lines `<file name> P xmin ymin xmax
  ymax` in VOC's 1-based pixels.

`--out NAME` replaces `coco_results` / `comp4_det_test_` (Darknet's -out).
"""
import argparse
from pathlib import Path
from typing import List, Sequence, TextIO, Tuple

import numpy as np

from darkpy.boxes import Detection
from darkpy.commands.common import (
    INPUT_ERRORS,
    UsageError,
    add_allow_partial,
    add_backend,
    build_detector,
    fail,
)
from darkpy.data import DataProblems, atoi, check_names_count
from darkpy.evaluation.mapdata import iterate_detections, load_map_dataset
from darkpy.evaluation.metrics import COCO_CATEGORY_IDS

VALID_SETTINGS = (0.001, 0.5, 0.6)  # validate_detector's thresh, hier and nms
F32 = np.float32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="darknet .data file (valid, names, results, eval)")
    parser.add_argument("--cfg", required=True, help="network .cfg")
    parser.add_argument("--weights", help="darknet .weights (without it: the cfg's random initialisation)")
    parser.add_argument("--out", default=None,
                        help="file name in the results folder (default: coco_results / comp4_det_test_)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N (default: auto)")
    add_backend(parser)
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_allow_partial(parser)


def _corners(det: Detection, width: int, height: int, offset: float = 0.0) -> Tuple[float, float, float, float]:
    """The box in pixels as Darknet has it (get_network_boxes, relative=0: float products), then its corners
    plus `offset` computed as print_cocos / print_detector_detections do (in double, stored as float)."""
    x, w = float(F32(det.x) * F32(width)), float(F32(det.w) * F32(width))
    y, h = float(F32(det.y) * F32(height)), float(F32(det.h) * F32(height))
    return (float(F32(x - w / 2 + offset)), float(F32(y - h / 2 + offset)),
            float(F32(x + w / 2 + offset)), float(F32(y + h / 2 + offset)))


def _stem(path: str) -> str:
    """Darknet's basecfg of an image path: the file name up to its first '.'."""
    return Path(path.replace("\\", "/")).name.split(".", 1)[0]


def coco_lines(path: str, size: Tuple[int, int], detections: Sequence[Detection]) -> List[str]:
    """print_cocos: one line per box and class with probability > 0."""
    width, height = size
    image_id = atoi(_stem(path)) or 0
    lines = []
    for det in detections:
        xmin, ymin, xmax, ymax = _corners(det, width, height)
        left, top = max(xmin, 0.0), max(ymin, 0.0)
        right, bottom = min(xmax, float(width)), min(ymax, float(height))
        box = (left, top, float(F32(right - left)), float(F32(bottom - top)))
        for j in np.flatnonzero(det.probs > 0):
            lines.append('{"image_id":%d, "category_id":%d, "bbox":[%f, %f, %f, %f], "score":%f},'
                         % ((image_id, COCO_CATEGORY_IDS[j]) + box + (float(det.probs[j]),)))
    return lines


def voc_lines(path: str, size: Tuple[int, int], detections: Sequence[Detection]) -> List[Tuple[int, str]]:
    """print_detector_detections: (class, line) per box and class with a probability, 1-based pixels."""
    width, height = size
    stem = _stem(path)
    lines = []
    for det in detections:
        xmin, ymin, xmax, ymax = _corners(det, width, height, offset=1.0)
        xmin, ymin, xmax, ymax = max(xmin, 1.0), max(ymin, 1.0), min(xmax, float(width)), min(ymax, float(height))
        for j in np.flatnonzero(det.probs):
            lines.append((int(j), "%s %f %f %f %f %f" % (stem, float(det.probs[j]), xmin, ymin, xmax, ymax)))
    return lines


class _ResultFiles:
    """The open output files of one run: the COCO JSON, or one VOC file per class."""

    def __init__(self, folder: Path, coco: bool, out: str, names: Sequence[str]):
        folder.mkdir(parents=True, exist_ok=True)
        self.coco = coco
        self.written = 0
        if coco:
            self.paths = [folder / f"{out or 'coco_results'}.json"]
        else:
            self.paths = [folder / f"{out or 'comp4_det_test_'}{name}.txt" for name in names]
        self.files: List[TextIO] = [open(path, "w", encoding="utf-8") for path in self.paths]
        if coco:
            self.files[0].write("[\n")

    def add(self, path: str, size: Tuple[int, int], detections: Sequence[Detection]) -> None:
        if self.coco:
            lines = coco_lines(path, size, detections)
            self.files[0].write("".join(line + "\n" for line in lines))
        else:
            lines = voc_lines(path, size, detections)
            for class_id, line in lines:
                self.files[class_id].write(line + "\n")
        self.written += len(lines)

    def close(self) -> None:
        if self.coco:  # Darknet steps back over the last ",\n" and closes the list
            self.files[0].seek(self.files[0].tell() - (2 if self.written else 0))
            self.files[0].truncate()
            self.files[0].write("\n]\n")
        for handle in self.files:
            handle.close()


def run_valid(args: argparse.Namespace) -> int:
    dataset = load_map_dataset(args.data)
    kind = dataset.config.options.get("eval", "voc")
    if kind not in ("coco", "voc"):
        raise UsageError(f"{args.data}: eval={kind} is not implemented (darkpy writes eval=coco and VOC files)")
    settings = argparse.Namespace(cfg=args.cfg, weights=args.weights, width=None, height=None, device=args.device,
                                  letter_box=False, batch=args.batch,
                                  allow_partial=args.allow_partial, backend=args.backend)
    model, detector = build_detector(settings)
    classes = int(model.heads[-1].classes)
    check_names_count(dataset.names, dataset.names_path, classes, args.cfg)
    if kind == "coco" and classes > len(COCO_CATEGORY_IDS):
        raise UsageError(f"eval=coco needs at most {len(COCO_CATEGORY_IDS)} classes, the cfg has {classes}")
    problems = DataProblems(listed_per_kind=20)
    files = _ResultFiles(Path(dataset.config.options.get("results", "results")), kind == "coco", args.out or "",
                         dataset.names)
    try:
        for image in iterate_detections(detector, dataset.image_paths, args.batch, problems,
                                        progress=not args.no_progress, settings=VALID_SETTINGS, desc="valid"):
            files.add(image.path, image.size, image.detections)
    finally:
        files.close()
    where = files.paths[0] if kind == "coco" else f"{files.paths[0].parent}/{args.out or 'comp4_det_test_'}<class>.txt"
    print(f"{files.written} detections of {len(dataset.image_paths)} images written to {where}")
    for line in problems.summary():
        print(line)
    return 0


def run(args: argparse.Namespace) -> int:
    """`darkpy valid`: 0 when the files are written, 1 for bad input files, 2 for an eval= it cannot write."""
    try:
        return run_valid(args)
    except INPUT_ERRORS as error:
        return fail("valid", error)
