"""What every command shares: the model and the detector built from arguments, and the one rule that turns an
error into a printed message and an exit code.

Exit codes, as C Darknet's tools and argparse use them:

* 0 — the run did what was asked;
* 1 (`EXIT_FAILED`) — the run failed: an input file is missing or wrong (CfgError, WeightsError, DataError,
  ImageError name their file and line), nothing could be processed, an output could not be written;
* 2 (`EXIT_USAGE`) — an argument value the command cannot use (argparse exits 2 for the ones it checks itself).
  `darkpy make-dataset` treats every problem as one (its inputs are its arguments), and `darkpy detect` exits 2
  when its network or class names cannot be set up (tests/commands/test_detect.py asserts this code).

The message is `darkpy COMMAND: error: MESSAGE` on stderr, MESSAGE being the error's own text.
"""
import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Optional, Tuple, Type

from darkpy.cfg import CfgWarning
from darkpy.evaluation.inference import Detector, prepare_for_inference, resolve_device
from darkpy.evaluation.onnx_backend import BACKENDS, BackendUnavailable, OnnxRuntimeForward, onnxruntime_forward
from darkpy.model import Darknet

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# CfgError, WeightsError, DataError and ImageError are ValueErrors; OSError covers unreadable and unwritable files.
INPUT_ERRORS: Tuple[Type[BaseException], ...] = (ValueError, OSError)


class UsageError(ValueError):
    """An argument value the command cannot use: exit code 2."""


def finite_float(text: str) -> float:
    """argparse type of thresholds: a finite number (nan would silently keep or drop every detection)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """argparse type of a learning rate: a finite number above 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0")
    return value


def fail(command: str, error: BaseException, code: Optional[int] = None) -> int:
    """Print the error as `darkpy COMMAND: error: ...` and return its exit code (see the module docstring)."""
    print(f"darkpy {command}: error: {error}", file=sys.stderr)
    if code is not None:
        return code
    return EXIT_USAGE if isinstance(error, UsageError) else EXIT_FAILED


def require_file(path: str, what: str) -> None:
    """Darknet's "Couldn't open file" check, made before anything is built: names the file and what it is."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")


def add_allow_partial(parser: argparse.ArgumentParser) -> None:
    """--allow-partial, for the commands that run a network on its weights (detect, map, export)."""
    parser.add_argument("--allow-partial", action="store_true",
                        help="run on a partial weights file (*.conv.N, or one that ends between two layers): the "
                             "layers it does not fill keep their random initialisation")


def add_backend(parser: argparse.ArgumentParser) -> None:
    """--backend, for the commands that detect (detect, map, valid)."""
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="what runs the network: onnxruntime (CPU, float32; needs pip install darkpy[onnx]; "
                             "the export is cached), torch, or auto: onnxruntime when installed and the network "
                             "runs there, else torch (default: auto)")


def load_model(cfg: str, weights: Optional[str] = None, width: Optional[int] = None, height: Optional[int] = None,
               cfg_warnings: str = "warn", command: str = "", allow_partial: bool = False) -> Darknet:
    """Build the cfg's network (at width x height when given; Darknet's parse_network_cfg) and load its
    weights when given (load_weights), after checking that both files exist. Weights holding NaN or infinite
    values are refused, and so is a partial file unless allow_partial (Darknet runs on both silently).

    cfg_warnings decides what happens to the cfg's CfgWarnings (Darknet's "Unused field" notes): "warn" leaves
    them to Python's warnings, "ignore" drops them (commands for which unused keys change nothing), "print"
    writes each as one `darkpy COMMAND: warning: ...` line on stderr."""
    require_file(cfg, "cfg")
    if weights is not None:
        require_file(weights, "weights")
    if cfg_warnings == "warn":
        model = Darknet.from_cfg(cfg, width=width, height=height)
    else:
        model = _build_quietly(cfg, width, height, print_as=command if cfg_warnings == "print" else None)
    if weights is not None:
        model.load_weights(weights).refuse_unusable(allow_partial)
    return model


def _build_quietly(cfg: str, width: Optional[int], height: Optional[int], print_as: Optional[str]) -> Darknet:
    """Build with the CfgWarnings caught: printed as `darkpy PRINT_AS: warning: ...` lines, or dropped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CfgWarning)
        model = Darknet.from_cfg(cfg, width=width, height=height)
    for warning in caught:
        if not issubclass(warning.category, CfgWarning):  # not ours to handle: passed on unchanged
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        elif print_as is not None:
            print(f"darkpy {print_as}: warning: {warning.message}", file=sys.stderr)
    return model


def ready_for_inference(model: Darknet, device: str, half: bool = False,
                        backend: str = "torch") -> Optional[OnnxRuntimeForward]:
    """A model its caller owns, converted in place as Darknet loads a network for inference: eval mode, batch
    norm folded into the convolutions. When `backend` picks onnxruntime (evaluation/onnx_backend), its forward
    pass is returned and the model stays as it is (its sizes and heads still decode); otherwise None, the model
    on the device in channels_last (float16 with half on CUDA). An explicit backend that cannot run is a
    UsageError."""
    model.eval()
    model.fuse()
    try:
        runtime = onnxruntime_forward(model, backend, resolve_device(device))
    except BackendUnavailable as exc:
        raise UsageError(str(exc)) from None
    if runtime is None:
        prepare_for_inference(model, device, half)
    return runtime


def build_detector(args: argparse.Namespace) -> Tuple[Darknet, Detector]:
    """The network of --cfg/--weights (--width/--height) ready for detection as Darknet loads a detector
    (batch norm folded into the convolutions, eval mode), on --device in channels_last (float16 with --half on
    CUDA), wrapped in a Detector (--letter-box forces letterboxing; otherwise the cfg's [net] letter_box
    decides; --batch images per forward pass; --backend what runs the forward pass). Without --weights: the
    cfg's random initialisation; a partial --weights file only with --allow-partial."""
    model = load_model(args.cfg, args.weights or None, args.width, args.height, allow_partial=args.allow_partial)
    half = bool(getattr(args, "half", False))  # only `detect` has --half
    runtime = ready_for_inference(model, args.device, half, args.backend)
    detector = Detector(model, device=None, half=half, letter_box=True if args.letter_box else None,
                        batch_size=args.batch, runtime=runtime)
    return model, detector
