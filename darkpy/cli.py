"""The `darkpy` command: one subcommand per module, each exposing `add_arguments(parser)` and `run(args) -> int`."""
import argparse
import errno
import importlib
import os
import sys
from typing import List, Optional

from darkpy import __version__

# PyTorch's OpenMP threads spin while they wait: when other processes (data loaders, other jobs) share the cores,
# every layer waits for a time slice and inference gets up to 20x slower. Passive waiting costs about 10 % on an
# idle machine (yolov3-tiny 19.5 vs 17.4 ms) and avoids that (docs/latency.md). Must be set before torch loads;
# a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# subcommand -> (module, one-line help). Modules are imported only when their subcommand runs.
COMMANDS = {
    "detect": ("darkpy.commands.detect", "detect objects in images, folders, lists and videos (darknet detector test/demo)"),
    "map": ("darkpy.commands.map", "mean average precision on a .data file's valid list (darknet detector map)"),
    "valid": ("darkpy.commands.valid", "write every detection of the valid list as COCO JSON or VOC files "
                                        "(darknet detector valid)"),
    "train": ("darkpy.commands.train", "train a cfg on a darknet dataset (darknet detector train)"),
    "classifier": ("darkpy.commands.classifier",
                   "top classes of images, or accuracy on a valid list (darknet classifier predict|valid)"),
    "calc-anchors": ("darkpy.commands.calc_anchors", "anchors for a cfg from a dataset's label boxes, k-means "
                                                     "(darknet detector calc_anchors)"),
    "summary": ("darkpy.commands.summary", "layer table, BFLOPs and parameter count of a cfg"),
    "partial": ("darkpy.commands.partial", "copy the first N layers of a weights file (darknet partial)"),
    "paths": ("darkpy.commands.paths", "gradient-path analysis of a cfg"),
    "export": ("darkpy.commands.export", "export a cfg and weights to ONNX"),
    "make-dataset": ("darkpy.commands.make_dataset", "write a small darknet-format dataset of shapes on photos"),
}


def _load(name: str):
    module_name, _ = COMMANDS[name]
    return importlib.import_module(module_name)


def _from_darknet(argv: List[str]) -> Optional[List[str]]:
    """A Darknet command line (`detector test ...`) as darkpy's, its warnings printed; None when it cannot
    run (the error printed)."""
    from darkpy.commands.darknet_cli import DarknetUsageError, translate
    try:
        translation = translate(argv)
    except DarknetUsageError as error:
        print(f"darkpy {argv[0]}: error: {error}", file=sys.stderr)
        return None
    for warning in translation.warnings:
        print(f"darkpy {argv[0]}: warning: {warning}", file=sys.stderr)
    return translation.argv


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from darkpy.commands.darknet_cli import is_darknet_command_line
    if is_darknet_command_line(argv):
        translated = _from_darknet(argv)
        if translated is None:
            return 2
        argv = translated
    parser = argparse.ArgumentParser(
        prog="darkpy", description="Darknet's .cfg/.weights networks on PyTorch, with Darknet's numbers.",
        epilog="`darkpy COMMAND --help` lists a command's options. Darknet's own command lines work too: "
               "`darkpy detector test|map|train|valid|demo|calc_anchors DATA CFG [WEIGHTS] [IMAGE] [-flags]`, "
               "`darkpy detect CFG WEIGHTS [IMAGE]` (docs/darknet_commands.md).")
    parser.add_argument("--version", action="version", version=f"darkpy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Parse only the command name first so that a module is imported only when it is used.
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints the version, or usage / error for unknown commands
        parser.print_help()
        return 2
    name = argv[0]
    module = _load(name)
    cmd_parser = argparse.ArgumentParser(prog=f"darkpy {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    try:
        code = int(module.run(args) or 0)
        sys.stdout.flush()  # a full disk behind stdout shows here, not in Python's exit
        return code
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of the command
        sys.stderr.close()
        return 0
    except OSError as error:
        if not _is_output_failure(error):
            raise
        _stdout_to_null()
        print(f"darkpy {name}: error: cannot write to the standard output: {error.strerror}", file=sys.stderr)
        return 1


def _is_output_failure(error: OSError) -> bool:
    """An OSError that reached the front end without a file name and saying the disk is full or failing: a write
    to stdout (the commands catch and name the failures of the files they write themselves)."""
    return error.filename is None and error.errno in (errno.ENOSPC, errno.EIO, errno.EFBIG, errno.EDQUOT)


def _stdout_to_null() -> None:
    """Point stdout at the null device, so that Python's own flush at exit does not fail a second time."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing is flushed at exit
        pass


def run_command(name: str, argv: Optional[List[str]] = None) -> int:
    """Entry for the thin scripts detect.py / train.py: `darkpy NAME argv...`."""
    return main([name] + list(sys.argv[1:] if argv is None else argv))
