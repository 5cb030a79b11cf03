"""`darkpy export`: a cfg and its weights to ONNX (darkpy.export), checked against darkpy with onnxruntime."""
import argparse
import os
from pathlib import Path

from darkpy.commands.common import INPUT_ERRORS, UsageError, add_allow_partial, fail, load_model
from darkpy.export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    INSTALL_HINT,
    MAX_OPSET,
    MIN_OPSET,
    ExportError,
    export_onnx,
    onnxruntime_or_none,
    verify_onnx,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg", required=True, help="the network's .cfg")
    parser.add_argument("--weights", required=True, help="its .weights")
    add_allow_partial(parser)
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default onnx)")
    parser.add_argument("--output", "-o", help="output file (default: the weights path with .onnx)")
    parser.add_argument("--width", type=int, help="network input width (default: the cfg's [net] width)")
    parser.add_argument("--height", type=int, help="network input height (default: the cfg's [net] height)")
    parser.add_argument("--dynamic-batch", action="store_true", help="let the batch dimension vary")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    parser.add_argument("--decode", action="store_true",
                        help="output boxes (x1,y1,x2,y2, network-input pixels) and scores (objectness x class) "
                             "instead of the raw head tensors")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the comparison of onnxruntime's outputs with darkpy's")


def run(args: argparse.Namespace) -> int:
    """Export, then check the file with onnxruntime; 2 without the onnx package, 1 when the export fails."""
    try:
        import onnx  # noqa: F401  (optional heavy dependency: torch's exporter and the metadata need it)
    except ImportError:
        return fail("export", UsageError(f"darkpy export needs the onnx package ({INSTALL_HINT})"))
    output = args.output or str(Path(args.weights).with_suffix(".onnx"))
    try:  # keys Darknet itself ignores are not reported here; `summary` is where they are listed
        model = load_model(args.cfg, args.weights, args.width, args.height, cfg_warnings="ignore",
                           allow_partial=args.allow_partial)
        names = export_onnx(model, output, opset=args.opset, dynamic_batch=args.dynamic_batch, decode=args.decode)
    except INPUT_ERRORS + (ExportError,) as error:
        return fail("export", error)
    size_mb = os.path.getsize(output) / 1e6
    print(f"wrote {output} ({size_mb:.1f} MB, opset {args.opset}, input {INPUT_NAME} "
          f"({'batch' if args.dynamic_batch else 1}, {model.channels}, {model.height}, {model.width}), "
          f"outputs {', '.join(names)})")
    if args.no_verify:
        return 0
    if onnxruntime_or_none() is None:
        print(f"onnxruntime is not installed: the file was not checked ({INSTALL_HINT})")
        return 0
    try:
        differences = verify_onnx(model, output, decode=args.decode, batch=2 if args.dynamic_batch else 1)
    except ExportError as error:
        return fail("export", error)
    worst = max(differences.values())
    print(f"onnxruntime matches darkpy: largest difference {worst:.2g} of the largest value (tolerance 1e-4)")
    return 0
