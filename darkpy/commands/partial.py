"""`darkpy partial CFG IN OUT N`: keep the first N layers' weights, like `darknet partial` (src/darknet.c).

Used to make backbone files such as yolov4-tiny.conv.29 for transfer learning: the weights of layers [0, N) are
loaded and written with `seen` reset to 0.
"""
import argparse

from darkpy.commands.common import INPUT_ERRORS, UsageError, fail, load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cfg", help="the cfg the weights belong to")
    parser.add_argument("weights", help="input .weights file")
    parser.add_argument("output", help="output .weights file (e.g. yolov4-tiny.conv.29)")
    parser.add_argument("layers", type=int, help="number of leading layers to keep")


def run(args: argparse.Namespace) -> int:
    """Load layers [0, N) of the weights and save them; 2 for an N the cfg does not have, 1 for bad files."""
    try:
        model = load_model(args.cfg)
        if not 0 < args.layers <= len(model.layers):
            raise UsageError(f"N must be in 1..{len(model.layers)} (the cfg has {len(model.layers)} layers)")
        report = model.load_weights(args.weights, upto=args.layers)
        model.save_weights(args.output, upto=args.layers, seen=0)
    except INPUT_ERRORS as error:
        return fail("partial", error)
    print(f"Loaded {report.layers_loaded} layers with weights from {args.weights}; saved layers 0..{args.layers - 1} "
          f"({model.count_weight_floats(args.layers)} floats) to {args.output}")
    return 0
