"""`darkpy partial CFG IN OUT N`: keep the first N layers' weights, like `darknet partial` (src/darknet.c).

Used to make backbone files such as yolov4-tiny.conv.29 for transfer learning: the weights of layers [0, N) are
loaded and written with `seen` reset to 0.
"""
import argparse

from darkpy.cfg import CfgError
from darkpy.model import Darknet
from darkpy.weights import WeightsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cfg", help="the cfg the weights belong to")
    parser.add_argument("weights", help="input .weights file")
    parser.add_argument("output", help="output .weights file (e.g. yolov4-tiny.conv.29)")
    parser.add_argument("layers", type=int, help="number of leading layers to keep")


def run(args) -> int:
    try:
        model = Darknet.from_cfg(args.cfg)
        if not 0 < args.layers <= len(model.layers):
            print(f"error: N must be in 1..{len(model.layers)} (the cfg has {len(model.layers)} layers)")
            return 2
        report = model.load_weights(args.weights, upto=args.layers)
        model.save_weights(args.output, upto=args.layers, seen=0)
    except (CfgError, WeightsError, OSError) as e:
        print(f"error: {e}")
        return 1
    print(f"Loaded {report.layers_loaded} layers with weights from {args.weights}; saved layers 0..{args.layers - 1} "
          f"({model.count_weight_floats(args.layers)} floats) to {args.output}")
    return 0
