"""`darkpy make-dataset shapes|shapes-cls OUT`: write the small darknet-format dataset of shapes on photos
(darkpy.shapes): `shapes` for detection, `shapes-cls` (one shape per image, the class in the file name) for a
classifier."""
import argparse
import sys

from darkpy.commands.common import EXIT_USAGE, INPUT_ERRORS, fail
from darkpy.shapes import (MAX_CLASSES, MIN_CLASSES, SHAPE_NAMES, make_shapes_classification_dataset,
                           make_shapes_dataset)

DATASET_KINDS = ("shapes", "shapes-cls")
CLASSIFICATION_DEFAULTS = {"images": 1000, "size": 64}  # shapes-cls: more, smaller images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=DATASET_KINDS,
                        help="shapes: detection (several shapes per image, YOLO label files); shapes-cls: "
                             "classification (one shape per image, the class name in the file name)")
    parser.add_argument("out", help="output folder (created; must be empty unless --force)")
    parser.add_argument("--images", type=int, default=None,
                        help="number of images, train and valid (default 500; shapes-cls 1000)")
    parser.add_argument("--size", type=int, default=None,
                        help="image width and height in pixels (default 224; shapes-cls 64)")
    parser.add_argument("--classes", type=int, default=5,
                        help=f"number of shape classes, {MIN_CLASSES}..{MAX_CLASSES}: the first of "
                             f"{', '.join(SHAPE_NAMES)} (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same dataset")
    parser.add_argument("--valid-fraction", type=float, default=0.2,
                        help="fraction of the images listed in valid.txt (default 0.2)")
    parser.add_argument("--max-objects", type=int, default=4, help="most shapes per image (default 4)")
    parser.add_argument("--negative-fraction", type=float, default=0.05,
                        help="fraction of images without shapes, with empty label files (default 0.05)")
    parser.add_argument("--backgrounds", default=None,
                        help="folder of background photos (default: the repository's data/images)")
    parser.add_argument("--relative", action="store_true",
                        help="write paths relative to OUT in the lists and .data file (a movable dataset; "
                             "darknet itself must then be run from inside OUT) instead of absolute paths")
    parser.add_argument("--force", action="store_true", help="write into a folder that is not empty")


def run(args: argparse.Namespace) -> int:
    """Write the dataset and say how to train on it; 2 for options or folders it cannot use."""
    classification = args.kind == "shapes-cls"
    common = dict(classes=args.classes, seed=args.seed, valid_fraction=args.valid_fraction,
                  backgrounds=args.backgrounds, relative_paths=args.relative, force=args.force,
                  progress=sys.stderr.isatty())
    try:  # every input of make-dataset is an argument: a usage error
        if classification:
            summary = make_shapes_classification_dataset(
                args.out, images=args.images or CLASSIFICATION_DEFAULTS["images"],
                size=args.size or CLASSIFICATION_DEFAULTS["size"], **common)
        else:
            summary = make_shapes_dataset(args.out, images=args.images or 500, size=args.size or 224,
                                          max_objects=args.max_objects, negative_fraction=args.negative_fraction,
                                          **common)
    except INPUT_ERRORS as error:
        return fail("make-dataset", error, EXIT_USAGE)
    print(f"{summary.train_images} train and {summary.valid_images} valid images "
          + ("" if classification else f"with {summary.objects} shapes ")
          + f"({', '.join(summary.classes)}) in {summary.out_dir}")
    if classification:
        print(f"train with: darkpy classifier train {summary.data_file} cfg/shapes-cls.cfg --topk")
        change = f"filters={args.classes} in its last [convolutional]"
    else:
        print(f"train with: darkpy train --data {summary.data_file} --cfg cfg/shapes-prn.cfg --map")
        change = (f"classes={args.classes} in its [yolo] sections and filters={(args.classes + 5) * 3} in the "
                  f"convolution before each")
    if args.classes != MAX_CLASSES:
        print(f"(cfg/{'shapes-cls' if classification else 'shapes-prn'}.cfg is written for {MAX_CLASSES} classes: "
              f"set {change})")
    return 0
