"""`darkpy summary CFG`: the layer table Darknet prints when it loads a network (src/parser.c
parse_network_cfg), with totals; `--compare CFG2` puts a second network's totals beside the first."""
import argparse
from pathlib import Path

from darkpy.commands.common import INPUT_ERRORS, fail, load_model
from darkpy.model import Darknet
from darkpy.summary import comparison_lines, summary_lines, totals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cfg", help="a Darknet .cfg file")
    parser.add_argument("--width", type=int, default=None, help="input width (default: the cfg's [net] width)")
    parser.add_argument("--height", type=int, default=None, help="input height (default: the cfg's [net] height)")
    parser.add_argument("--compare", metavar="CFG2", default=None,
                        help="print CFG's totals beside CFG2's (same --width/--height) with the saving")


def _build(cfg: str, args: argparse.Namespace) -> Darknet:
    """CfgWarnings (Darknet's "Unused field" notes) go to stderr as one-line warnings."""
    return load_model(cfg, width=args.width, height=args.height, cfg_warnings="print", command="summary")


def run(args: argparse.Namespace) -> int:
    """Print the table (and with --compare the two networks' totals); 1 when a cfg is missing or wrong."""
    for path in filter(None, (args.cfg, args.compare)):  # both checked before either is built
        if not Path(path).is_file():
            return fail("summary", FileNotFoundError(f"{path}: no such cfg file"))
    try:
        model = _build(args.cfg, args)
        other = _build(args.compare, args) if args.compare else None
    except INPUT_ERRORS as error:  # CfgError names the file, line and option
        return fail("summary", error)
    print(f"{args.cfg}: {model.width} x {model.height} x {model.channels} input, {len(model.layers)} layers")
    print("\n".join(summary_lines(model)))
    if other is not None:
        print()
        print("\n".join(comparison_lines(Path(args.cfg).stem, totals(model), Path(args.compare).stem,
                                         totals(other))))
    return 0
