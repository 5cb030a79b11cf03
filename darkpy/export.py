"""`darkpy export`: a Darknet cfg + weights as an ONNX model, batch norm folded (Darknet's fuse_conv_batchnorm).

The graph takes `images`: float32 (B, C, H, W), RGB in [0, 1] at the network size, exactly what darkpy's model
takes (resizing or letterboxing the photo is the caller's job, as in darknet's network_predict). It returns:

- by default, the raw head tensors of `model(x)` in eval(), one per [yolo] / [Gaussian_yolo] / [region] layer,
  named `<section type>_<layer index>`, shape (B, A, E, H, W): what Darknet's forward leaves in the layer's output
  (src/yolo_layer.c forward_yolo_layer, src/region_layer.c forward_region_layer). A classifier returns its last
  layer's output as `output`.
- with decode=True, `boxes` (B, N, 4) as x1, y1, x2, y2 in network-input pixels and `scores` (B, N, classes) =
  objectness x class probability, for every cell and anchor of every head in Darknet's detection order (cfg
  order of heads; in a head row by row, column by column, anchor by anchor). No threshold and no NMS.

The TorchScript-based exporter of torch.onnx (dynamo=False) is used: it needs only the `onnx` package, whereas
the dynamo exporter also needs onnxscript. Two of its symbolic functions are replaced while darkpy exports (see
_darkpy_symbolics): aten::avg_pool2d, whose divisor_override (Darknet's sum pooling in [local_avgpool] and
[upsample] stride<0) the exporter silently drops, and aten::expm1 (elu, selu), which it does not export.
"""
import contextlib
import io
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from darkpy import __version__

INPUT_NAME = "images"
DEFAULT_OPSET = 17
MIN_OPSET = 13  # repeat_interleave ([upsample]) along a dimension of unknown size needs opset 13
MAX_OPSET = 20  # the newest opset torch's TorchScript-based exporter writes
DECODED_NAMES = ("boxes", "scores")
INSTALL_HINT = "pip install darkpy[onnx]"


class ExportError(Exception):
    """The model cannot be exported, or the exported model does not compute what darkpy computes."""


# ============================================================================ decoding in torch

def _detection_order(t: torch.Tensor) -> torch.Tensor:
    """(B, A, K, H, W) -> (B, H*W*A, K): cell by cell, anchors within a cell (Darknet's detection order)."""
    return t.permute(0, 3, 4, 1, 2).reshape(t.shape[0], -1, t.shape[2])


def decode_heads(outputs: Sequence[torch.Tensor], heads: Sequence[nn.Module], net_wh: Tuple[int, int]
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eval-state head outputs (B, A, E, H, W) -> boxes (B, N, 4) x1, y1, x2, y2 in network-input pixels and
    scores (B, N, classes), N = sum of H*W*A. Each head's decode_torch: the formulas of its numpy decode
    (Darknet's float order), in torch so that they trace into an ONNX graph; no letterbox correction (the image
    size is not known here)."""
    if len({head.classes for head in heads}) > 1:
        raise ExportError(f"the detection heads have different class counts "
                          f"({', '.join(str(h.classes) for h in heads)}); decoded scores need one")
    net_w, net_h = net_wh
    all_boxes, all_scores = [], []
    for out, head in zip(outputs, heads):
        (x, y, w, h), scores = head.decode_torch(out, net_wh)
        corners = torch.stack([(x - w / 2) * net_w, (y - h / 2) * net_h, (x + w / 2) * net_w,
                               (y + h / 2) * net_h], dim=2)
        all_boxes.append(_detection_order(corners))
        all_scores.append(_detection_order(scores))
    return torch.cat(all_boxes, dim=1), torch.cat(all_scores, dim=1)


# ============================================================================ the exported module

class ExportModule(nn.Module):
    """What the ONNX graph computes: the model's outputs as a tuple (raw heads, or decoded boxes and scores)."""

    def __init__(self, model: nn.Module, decode: bool = False):
        super().__init__()
        if decode and not model.heads:
            raise ExportError(f"{model.cfg_path}: --decode needs a [yolo], [Gaussian_yolo] or [region] layer; "
                              f"this network has none")
        self.model = model
        self.decode = decode

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out = self.model(x)
        if not self.model.heads:
            return (out,)
        if self.decode:
            return decode_heads(out, self.model.heads, (self.model.width, self.model.height))
        return tuple(out)

    def output_names(self) -> List[str]:
        if not self.model.heads:
            return ["output"]
        if self.decode:
            return list(DECODED_NAMES)
        return [f"{head.type}_{head.index}" for head in self.model.heads]


# ============================================================================ exporter fixes

def _avg_pool2d_symbolic(g, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """aten::avg_pool2d -> AveragePool, times k*k/divisor when divisor_override is set (darkpy sums windows
    with divisor_override=1; the stock symbolic ignores the argument and exports a mean)."""
    from torch.onnx import symbolic_helper as sh

    kernel = sh._maybe_get_const(kernel_size, "is")
    strides = sh._maybe_get_const(stride, "is") or kernel
    pads = sh._maybe_get_const(padding, "is")
    ceil = bool(sh._maybe_get_const(ceil_mode, "i"))
    include_pad = bool(sh._maybe_get_const(count_include_pad, "i"))
    kernel, strides, pads = (list(v) * 2 if len(v) == 1 else list(v) for v in (kernel, strides, pads))
    pooled = g.op("AveragePool", x, kernel_shape_i=kernel, strides_i=strides, pads_i=pads + pads,
                  ceil_mode_i=int(ceil), count_include_pad_i=int(include_pad))
    if sh._is_none(divisor_override):
        return pooled
    divisor = sh._maybe_get_const(divisor_override, "i")
    if any(pads) or ceil or not isinstance(divisor, int):
        # Every window must hold k*k taps for mean * k*k / divisor to be the right sum.
        raise torch.onnx.errors.SymbolicValueError(
            "avg_pool2d with divisor_override is exported only without padding and ceil_mode", x)
    factor = g.op("Constant", value_t=torch.tensor(kernel[0] * kernel[1] / divisor, dtype=torch.float32))
    return g.op("Mul", pooled, factor)


def _expm1_symbolic(g, x):
    """aten::expm1 (elu, selu) as Exp - 1: absolute error ~1e-7 near 0, where exp(x) - 1 cancels."""
    one = g.op("Constant", value_t=torch.tensor(1.0, dtype=torch.float32))
    return g.op("Sub", g.op("Exp", x), one)


DARKPY_SYMBOLICS = {"aten::avg_pool2d": _avg_pool2d_symbolic, "aten::expm1": _expm1_symbolic}


@contextlib.contextmanager
def _darkpy_symbolics(opset: int) -> Iterator[None]:
    """Register darkpy's symbolic functions for this opset for the duration of one export, then restore torch's."""
    for name, fn in DARKPY_SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in DARKPY_SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


@contextlib.contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """Silence file descriptor 1 for a while: on a failed export torch's C++ side prints the whole TorchScript
    graph there (hundreds of lines); the reason is in the exception, which darkpy reports."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _export_reason(exc: BaseException) -> str:
    """The exporter's one-line reason (its messages carry a dump of the TorchScript graph)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Torch IR graph", "%", "graph(", "return"))]
    text = lines[0] if lines else type(exc).__name__
    return text.split(" [Caused by")[0].strip()[:300]


def _trace_to_onnx(module: nn.Module, args: Tuple[torch.Tensor, ...], target, opset: int,
                   input_names: List[str], output_names: List[str], dynamic_batch: bool) -> None:
    """torch.onnx.export (TorchScript-based) with darkpy's symbolics and the exporter's warnings silenced."""
    module.eval()  # torch.onnx.export restores the module's mode afterwards: it must be eval already
    dynamic_axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
    with warnings.catch_warnings(), _darkpy_symbolics(opset), torch.no_grad(), _native_stdout_silenced():
        warnings.simplefilter("ignore")  # TracerWarnings on Python-level shape checks, exporter deprecation
        torch.onnx.export(module, args, target, dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)


# ============================================================================ locating layers that fail

@dataclass
class LayerProblem:
    index: int
    type: str
    location: str
    reason: str

    def __str__(self) -> str:
        return f"layer {self.index} [{self.type}] ({self.location}): {self.reason}"


class _OneLayer(nn.Module):
    """One layer as a graph of its own: inputs are the previous output and the outputs it reads by index."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, previous: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        outputs: List[Optional[torch.Tensor]] = [None] * self.layer.index
        for i, tensor in zip(self.layer.inputs, others):
            outputs[i] = tensor
        return self.layer(previous, outputs)


def _close(ours: np.ndarray, reference: np.ndarray) -> bool:
    """The oracle's tolerance: max|a - b| <= 1e-4 * max|b| + 1e-6 over the finite values; NaN and infinite ones
    (random weights that overflow, as a large mish network's do) must be the same in both."""
    finite = np.isfinite(reference)
    if not np.array_equal(ours[~finite], reference[~finite], equal_nan=True) or not np.isfinite(ours[finite]).all():
        return False
    ours, reference = ours[finite], reference[finite]
    return float(np.abs(ours - reference).max(initial=0.0)) <= 1e-4 * float(np.abs(reference).max(initial=0.0)) \
        + 1e-6


def _relative_difference(ours: np.ndarray, reference: np.ndarray) -> float:
    """max|a - b| / max|b| over the values finite in the reference."""
    finite = np.isfinite(reference)
    ours, reference = ours[finite], reference[finite]
    return float(np.abs(ours - reference).max(initial=0.0)) / max(float(np.abs(reference).max(initial=0.0)), 1e-12)


def find_layer_problems(model: nn.Module, opset: int = DEFAULT_OPSET, compare: bool = True) -> List[LayerProblem]:
    """Export every layer on its own (batch dimension dynamic, as the traced whole graph sees it) and, with
    onnxruntime installed and compare=True, run it: the layers the exporter refuses, with its reason, and
    those whose ONNX result differs from darkpy's. Slow on big networks: used to explain a failed export."""
    model.eval()
    x = torch.rand(1, model.channels, model.height, model.width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = model.forward_layers(x, keep_all=True)
    runtime = onnxruntime_or_none() if compare else None
    problems = []
    previous = x
    for layer, out in zip(model.layers, outputs):
        args = (previous, *[outputs[i] for i in layer.inputs])
        names = ["previous"] + [f"layer_{i}" for i in layer.inputs]
        location = f"{layer.section.file}:{layer.section.line}"
        buffer = io.BytesIO()
        try:
            _trace_to_onnx(_OneLayer(layer), args, buffer, opset, names, ["output"], dynamic_batch=True)
        except Exception as exc:  # the exporter raises many types; each is reported with its reason
            problems.append(LayerProblem(layer.index, layer.type, location, _export_reason(exc)))
        else:
            if runtime is not None:
                session = onnxruntime_session(buffer.getvalue())
                feeds = dict(zip(names, (a.detach().numpy() for a in args)))
                got = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
                if not _close(got, out.detach().numpy()):
                    problems.append(LayerProblem(layer.index, layer.type, location,
                                                 f"onnxruntime differs from darkpy by "
                                                 f"{_relative_difference(got, out.detach().numpy()):.3g} (relative)"))
        previous = out
    return problems


def _problems_message(problems: Sequence[LayerProblem], opset: int) -> str:
    shown = "\n  ".join(str(p) for p in problems[:10])
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    return f"layers that cannot be exported to ONNX opset {opset}:\n  {shown}{more}"


# ============================================================================ export and verification

def onnxruntime_or_none():
    """The onnxruntime module, or None when it is not installed (an optional dependency)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def onnxruntime_session(model_file: Union[str, bytes], threads: Optional[int] = None):
    """An onnxruntime session on the CPU for an ONNX file (or its bytes), with `threads` intra-op threads
    (None: onnxruntime's default); ExportError when onnxruntime cannot load it. Its warnings are not printed:
    where a shape is symbolic (the dynamic batch) onnxruntime logs each output whose inferred shape it could not
    check, on every run. Its threads wait as
    OMP_WAIT_POLICY tells PyTorch's to: with PASSIVE (what the `darkpy` command sets unless the user set another)
    they sleep between operators instead of spinning. At two threads with another process busy on one of the
    two cores, spinning made the tiny models 1.3-1.5x slower; on a quiet machine it is 5-11 % faster
    (docs/latency.md)."""
    runtime = onnxruntime_or_none()
    if runtime is None:
        raise ImportError(f"onnxruntime is not installed ({INSTALL_HINT})")
    options = runtime.SessionOptions()
    options.log_severity_level = 3  # errors only
    passive = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if passive else "1")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return runtime.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types: a graph it cannot load, a damaged file
        where = model_file if isinstance(model_file, str) else "the exported graph"
        raise ExportError(f"{where}: onnxruntime cannot load the export: {_export_reason(exc)}") from None


def _add_metadata(path: Path, model: nn.Module, decode: bool) -> None:
    """Store what a consumer needs to decode raw outputs (heads, anchors) in the model's metadata_props."""
    import onnx

    proto = onnx.load(str(path))
    heads = [{"name": f"{h.type}_{h.index}", "kind": h.type, "index": h.index, "classes": h.classes,
              "mask": list(h.mask), "anchors": h.anchors.tolist(), "scale_x_y": h.scale_x_y,
              "new_coords": h.new_coords, "nms_kind": h.nms_kind, "beta_nms": h.beta_nms} for h in model.heads]
    entries = {"darkpy_version": __version__, "cfg": os.path.basename(str(model.cfg_path)),
               "input": f"{INPUT_NAME}: float32 (batch, {model.channels}, {model.height}, {model.width}), RGB in "
                        f"[0, 1]" + (", letterboxed (padding 0.5)" if model.letter_box else ", resized"),
               "outputs": "decoded: boxes x1,y1,x2,y2 in network-input pixels, scores = objectness x class"
                          if decode else "raw: (batch, anchors, entries, h, w) per head, Darknet's layer output",
               "heads": json.dumps(heads)}
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def export_onnx(model: nn.Module, path: Union[str, Path], opset: int = DEFAULT_OPSET, dynamic_batch: bool = False,
                decode: bool = False) -> List[str]:
    """Write `model` (batch norm folded in place with model.fuse()) as an ONNX file; returns the output names.

    Raises ExportError naming the layers (index, type, cfg file:line) that the exporter refuses, and why."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    recurrent = getattr(model, "recurrent_layers", list)()
    if recurrent:  # a traced graph would freeze the state at zeros and treat its batch as frames
        section = recurrent[0].section
        raise ExportError(f"{section.file}:{section.line}: [{section.written_type}] keeps a state from frame to "
                          f"frame; darkpy does not export recurrent networks to ONNX")
    model.fuse().eval()
    module = ExportModule(model, decode=decode)
    names = module.output_names()
    x = torch.rand(1, model.channels, model.height, model.width)
    path = Path(path)
    if not path.parent.exists():
        raise ExportError(f"{path.parent}: folder does not exist")
    try:
        _trace_to_onnx(module, (x,), str(path), opset, [INPUT_NAME], names, dynamic_batch)
    except Exception as exc:  # locate the layer(s) responsible before giving up
        problems = find_layer_problems(model, opset, compare=False)
        if problems:
            raise ExportError(_problems_message(problems, opset)) from None
        raise ExportError(f"{model.cfg_path}: ONNX export failed: {_export_reason(exc)}") from None
    _add_metadata(path, model, decode)
    return names


def verify_onnx(model: nn.Module, path: Union[str, Path], decode: bool = False, batch: int = 1,
                seed: int = 0, explain: bool = True) -> Dict[str, float]:
    """Run the ONNX file with onnxruntime and darkpy on the same random images; returns, per output, the largest
    difference relative to darkpy's largest value. Raises ExportError when one exceeds the oracle's tolerance
    (1e-4 relative), naming the layers that differ when `explain` (each layer exported on its own: slow on a
    large network). Needs onnxruntime."""
    module = ExportModule(model, decode=decode).eval()
    x = torch.rand(batch, model.channels, model.height, model.width, generator=torch.Generator().manual_seed(seed))
    session = onnxruntime_session(str(path))
    got = session.run(None, {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        expected = [t.detach().numpy() for t in module(x)]
    differences = {name: _relative_difference(g, e) for name, g, e in zip(module.output_names(), got, expected)}
    if not all(_close(g, e) for g, e in zip(got, expected)):
        summary = f"{path}: onnxruntime's outputs differ from darkpy's " \
                  f"({', '.join(f'{k} {v:.3g}' for k, v in differences.items())})"
        if not explain:
            raise ExportError(summary)
        opset = _opset_of(path)
        problems = find_layer_problems(model, opset)
        raise ExportError(f"{summary}; {_problems_message(problems, opset) if problems else 'no single layer differs'}")
    return differences


def _opset_of(path: Union[str, Path]) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
