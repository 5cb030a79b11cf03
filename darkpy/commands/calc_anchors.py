"""`darkpy calc-anchors`: Darknet's `detector calc_anchors DATA -num_of_clusters K -width W -height H`.

Reads the label boxes of the .data file's train list, computes K anchors at the network size (darkpy.anchors:
Darknet's k-means, seeded and restarted), prints Darknet's lines — the per-class box counts, `avg IoU`, the
`anchors = ...` line to paste into the cfg — and writes anchors.txt and counters_per_class.txt in the current
folder, as Darknet does.
"""
import argparse
import sys
from typing import List, Tuple

import numpy as np

from darkpy.anchors import calc_anchors
from darkpy.commands.common import INPUT_ERRORS, UsageError, fail
from darkpy.data import DataProblems, label_path, read_data_config, read_image_list, read_labels, resolve_path

DEFAULT_TRAIN_LIST = "data/train.list"  # calc_anchors' option_find_str default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="darknet .data file (its train list's labels are read)")
    parser.add_argument("--num-of-clusters", type=int, default=5, help="number of anchors (Darknet's default 5)")
    parser.add_argument("--width", type=int, required=True, help="network width the anchors are for")
    parser.add_argument("--height", type=int, required=True, help="network height the anchors are for")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed: the same seed gives the same anchors")
    parser.add_argument("--restarts", type=int, default=10,
                        help="k-means runs, the best average IoU kept (default 10)")


def read_box_sizes(data_path: str, width: int, height: int) -> Tuple[np.ndarray, List[int], int, DataProblems]:
    """(N, 2) label box sizes in network pixels, the boxes per class, the image count and the data problems."""
    config = read_data_config(data_path)
    images = read_image_list(resolve_path(config.options.get("train", DEFAULT_TRAIN_LIST), config.path))
    problems = DataProblems(listed_per_kind=20)
    labels = [read_labels(label_path(image), None, problems) for image in images]
    boxes = np.concatenate([np.zeros((0, 5), np.float32)] + labels)
    classes = max([config.classes or 1] + [int(c) + 1 for c in boxes[:, 0]])
    counts = np.bincount(boxes[:, 0].astype(np.int64), minlength=classes).tolist()
    sizes = boxes[:, 3:5] * np.array([width, height], np.float32)
    return sizes, counts, len(images), problems


def _anchor_text(sizes: np.ndarray, width: int) -> str:
    """Darknet's anchors line: whole pixels for a network wider than 32, else 4 decimals."""
    form = "%3.0f,%3.0f" if width > 32 else "%2.4f,%2.4f"
    return ", ".join(form % (w, h) for w, h in sizes)


def run_calc_anchors(args: argparse.Namespace) -> int:
    if args.width <= 0 or args.height <= 0:
        raise UsageError("set the network's --width and --height (Darknet's -width -height)")
    print(f"\n num_of_clusters = {args.num_of_clusters}, width = {args.width}, height = {args.height} ")
    sizes, counts, images, problems = read_box_sizes(args.data, args.width, args.height)
    print(f" read labels from {images} images \n loaded {len(sizes)} boxes \n all loaded. ")
    try:
        anchors = calc_anchors(sizes, args.num_of_clusters, seed=args.seed, restarts=args.restarts)
    except ValueError as error:
        raise UsageError(str(error)) from error
    print(f"\n calculating k-means++ ... (seed {args.seed}, best of {args.restarts} runs)\n\n iterations = "
          f"{anchors.iterations} \n")
    counters = ", ".join(str(count) for count in counts)
    print(f"counters_per_class = {counters}")
    with open("counters_per_class.txt", "w", encoding="utf-8") as handle:
        handle.write(f"counters_per_class = {counters}")
    print(f"\n avg IoU = {100 * anchors.average_iou:2.2f} % \n")
    text = _anchor_text(anchors.sizes, args.width)
    with open("anchors.txt", "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"Saving anchors to the file: anchors.txt \nanchors = {text}")
    for line in problems.summary():
        print(line, file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """`darkpy calc-anchors`: 0 when anchors.txt is written, 1 for bad input files, 2 for bad arguments."""
    try:
        return run_calc_anchors(args)
    except INPUT_ERRORS as error:
        return fail("calc-anchors", error)
