"""`darkpy paths CFG`: gradient-path analysis of a cfg's graph (darkpy.paths; docs/paths.md), as a table, a
summary, and optionally JSON and a plot."""
import argparse
import json

from darkpy.commands.common import INPUT_ERRORS, fail, load_model
from darkpy.paths import analyze, draw_plot, summary_lines, table_lines, to_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cfg", help="the network's .cfg file (no weights needed)")
    parser.add_argument("--json", metavar="OUT", help="write the full analysis as JSON to OUT")
    parser.add_argument("--plot", metavar="OUT.png", help="draw shortest/longest gradient path per layer index")
    parser.add_argument("--channels", action="store_true",
                        help="also print one row per channel group of layers whose channels receive different "
                             "gradients")
    parser.add_argument("--width", type=int, help="build at this input width instead of [net] width")
    parser.add_argument("--height", type=int, help="build at this input height instead of [net] height")


def run(args: argparse.Namespace) -> int:
    """Print the analysis table and summary; write --json / --plot. 1 when the cfg or an output fails."""
    try:  # unused keys do not change the graph: their warnings are dropped
        model = load_model(args.cfg, width=args.width, height=args.height, cfg_warnings="ignore")
    except INPUT_ERRORS as error:  # CfgError names file, line and option
        return fail("paths", error)
    report = analyze(model)
    heads = ", ".join(f"{model.layers[i].type}@{i}" for i in report.losses)
    print(f"{args.cfg}: {len(model.layers)} layers, losses at {heads}")
    for line in table_lines(report, channels=args.channels) + [""] + summary_lines(report):
        print(line)
    try:
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(to_json(report), f, indent=1)
            print(f"JSON written to {args.json}")
        if args.plot:
            draw_plot(report, args.plot, len(model.layers))
            print(f"plot written to {args.plot}")
    except OSError as error:
        return fail("paths", error)
    return 0
