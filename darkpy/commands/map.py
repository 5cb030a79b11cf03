"""`darkpy map`: darknet's `detector map` on a .data file's valid list, plus COCO metrics and a results JSON.

Reproduces AlexeyAB darknet's src/detector.c `validate_detector_map`: detections at thresh 0.005, hier 0,
NMS 0.45 (the cfg's nms_kind), truths from the label files, darknet's matching and AP arithmetic
(darkpy.evaluation) and its printed report. Batched inference, a progress bar, and a summary of data problems
(bad label lines, missing label files, unreadable images) at the end.
"""
import argparse
import sys
import time
from typing import Sequence

from darkpy.commands.common import (
    INPUT_ERRORS,
    UsageError,
    add_allow_partial,
    add_backend,
    build_detector,
    fail,
    finite_float,
)
from darkpy.data import DataProblems, check_names_count
from darkpy.evaluation.mapdata import MapDataset, accumulate_map, iterate_detections, load_map_dataset
from darkpy.evaluation.metrics import (
    MapAccumulator,
    coco_category_ids,
    coco_evaluate,
    coco_image_ids,
    coco_results,
    format_map_report,
    write_coco_results,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="darknet .data file (valid, names, optional difficult)")
    parser.add_argument("--cfg", required=True, help="network .cfg")
    parser.add_argument("--weights", help="darknet .weights (without it: the cfg's random initialisation)")
    add_allow_partial(parser)
    parser.add_argument("--points", type=int, default=0,
                        help="AP method: 0 = area under the curve for each unique recall (default, VOC2010+), "
                             "11 = PascalVOC 2007, 101 = MS COCO")
    parser.add_argument("--iou-thresh", type=finite_float, default=0.5,
                        help="a detection is a TP when its IoU with a truth is above this (default .5)")
    parser.add_argument("--thresh", type=finite_float, default=0.25,
                        help="confidence for the TP/FP, precision, recall, F1 and average IoU lines (default .25)")
    parser.add_argument("--letter-box", action="store_true",
                        help="letterbox the images (also on when the cfg's [net] has letter_box=1)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N (default: auto)")
    add_backend(parser)
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--width", type=int, default=None, help="network width (default: the cfg's)")
    parser.add_argument("--height", type=int, default=None, help="network height (default: the cfg's)")
    parser.add_argument("--save-json", metavar="OUT",
                        help="write the detections as a COCO results JSON (darknet's `valid` with eval=coco)")
    parser.add_argument("--coco", action="store_true",
                        help="also print COCO metrics (AP@[.5:.95], AP50, AP75, small/medium/large) via pycocotools")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_classes(dataset: MapDataset, classes: int, cfg_path: str, problems: DataProblems) -> None:
    """Darknet stops when the names file has another count than the cfg's classes; a .data `classes=` that
    differs is only noted (map uses the cfg's)."""
    check_names_count(dataset.names, dataset.names_path, classes, cfg_path)
    declared = dataset.config.classes
    if declared is not None and declared != classes:
        problems.warn("classes differ from the cfg", f"{dataset.config.where('classes')}: classes={declared}, "
                      f"but the cfg's last layer has {classes}; map uses the cfg's, as darknet does")


def _print_lines(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


def run_map(args: argparse.Namespace) -> int:
    """validate_detector_map: the detections, the report on stdout, timings on stderr, data problems last."""
    problems = DataProblems(listed_per_kind=20)
    dataset = load_map_dataset(args.data)
    model, detector = build_detector(args)
    classes = int(model.heads[-1].classes)
    _check_classes(dataset, classes, args.cfg, problems)
    print(f"\n calculation mAP (mean average precision) on {len(dataset.image_paths)} images of "
          f"{dataset.list_path} ...", file=sys.stderr)

    start = time.time()
    detected = iterate_detections(detector, dataset.image_paths, args.batch, problems, progress=not args.no_progress)
    accumulator = accumulate_map(detected, dataset, classes, args.iou_thresh, args.thresh, problems)
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
        return fail("map", UsageError(f"--points must be 0 or at least 2 (11, 101), got {args.points}"))
    try:
        return run_map(args)
    except INPUT_ERRORS as error:  # DataError, CfgError, WeightsError... name their file themselves
        return fail("map", error)
