"""`darkpy classify`: Darknet's `classifier predict` (src/classifier.c predict_classifier) through darkpy.load.

For each image: `<path>: Predicted in <ms> milli-seconds.` and the top classes as `name: probability`, the
image resized as Darknet does (the shorter side to the network width, then the centre crop). Without images,
the paths on standard input, one a line.
"""
import argparse
import sys
import time
from typing import List

from darkpy.api import Classifier, load
from darkpy.commands.common import INPUT_ERRORS, UsageError, fail
from darkpy.data import read_data_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", help="image files (default, or -: the paths on standard input)")
    parser.add_argument("--cfg", required=True, help="classifier .cfg")
    parser.add_argument("--weights", help="darknet .weights (without it: the cfg's random initialisation)")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--names", help="class names, one per line (default: class 0, class 1...)")
    names.add_argument("--data", help="a darknet .data file: its names= and top=")
    parser.add_argument("--top", type=int, default=None,
                        help="classes printed per image (default: the .data file's top=, else 1, as Darknet)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N (default: auto)")


def _top(args: argparse.Namespace) -> int:
    """--top, else the .data file's top= (predict_classifier's default 1)."""
    if args.top is not None:
        return args.top
    if args.data:
        return int(read_data_config(args.data).options.get("top", 1))
    return 1


def _image_paths(images: List[str]) -> List[str]:
    if images and images != ["-"]:
        return images
    return [line.strip() for line in sys.stdin if line.strip()]


def run_classify(args: argparse.Namespace) -> int:
    classifier = load(args.cfg, args.weights, names=args.names, data=args.data, device=args.device)
    if not isinstance(classifier, Classifier):
        raise UsageError(f"{args.cfg} has detection layers: use darkpy detect")
    top = min(_top(args), len(classifier.names))
    for path in _image_paths(args.images):
        start = time.perf_counter()
        result = classifier(path)
        print(f"{path}: Predicted in {(time.perf_counter() - start) * 1000:f} milli-seconds.")
        for line in result.lines(top):
            print(line)
    return 0


def run(args: argparse.Namespace) -> int:
    """`darkpy classify`: 0 when every image was classified, 1 for bad input files, 2 for a detector cfg."""
    try:
        return run_classify(args)
    except INPUT_ERRORS as error:
        return fail("classify", error)
