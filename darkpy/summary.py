"""The layer table Darknet prints when it loads a network, with totals (`darkpy summary CFG` prints it).

Darknet's parse_network_cfg (src/parser.c) prints one line per layer while it builds the network (index, type,
filters and kernel, input and output sizes as w x h x c, BFLOPs of the layers that count) and ends with
`Total BFLOPS %5.3f`. The BFLOPs come from each layer's own accounting (conv 2*weights*out_h*out_w, maxpool
size^2*c*out_h*out_w, shortcut w*h*c*inputs; connected layers are not counted), so the totals equal
Darknet's. `--compare CFG2` puts a second network's totals beside the first, e.g. yolov3-tiny-prn against
yolov3-tiny: 38 % fewer BFLOPs and 44 % fewer weights (darkpy.commands.summary).
"""
from dataclasses import dataclass
from typing import List

from darkpy.layers import Layer
from darkpy.model import Darknet

# Darknet's short names in the table (the section type otherwise).
SHORT_TYPE = {
    "convolutional": "conv",
    "maxpool": "max",
    "avgpool": "avg",
    "local_avgpool": "local_avg",
    "scale_channels": "scale",
}
TYPE_WIDTH = 9
DESCRIBE_WIDTH = 21


@dataclass
class Totals:
    """What the last lines of the table state for one network."""

    bflops: float
    parameters: int  # learned values (batch-norm running statistics excluded)
    weight_floats: int  # what a .weights file holds for it (running statistics included)
    layers: int
    size: str  # "416x416x3"


def totals(model: Darknet) -> Totals:
    """The totals of the last lines of the table."""
    return Totals(bflops=model.total_bflops(), parameters=model.num_parameters(),
                  weight_floats=model.count_weight_floats(), layers=len(model.layers),
                  size=f"{model.width}x{model.height}x{model.channels}")


def _whc(shape) -> str:
    c, h, w = shape
    return f"{w:4d} x{h:4d} x{c:4d}"  # Darknet prints w x h x c


def layer_row(layer: Layer) -> str:
    """One Darknet-like line: index, type, describe(), input and output as w x h x c, BFLOPs where counted:
    `   0 conv        16  3 x 3/ 1       416 x 416 x   3 ->  416 x 416 x  16 0.150 BF`."""
    kind = SHORT_TYPE.get(layer.type, layer.type)
    # A route reads only the layers it lists, not the previous one: Darknet prints no input size for it.
    source = " " * 17 if layer.type == "route" else _whc(layer.in_shape)
    row = (f"{layer.index:4d} {kind:<{TYPE_WIDTH}s}{layer.describe():<{DESCRIBE_WIDTH}s}"
           f"{source} -> {_whc(layer.out_shape)}")
    bflops = layer.bflops()
    return row + (f" {bflops:5.3f} BF" if bflops > 0 else "")


def summary_lines(model: Darknet) -> List[str]:
    """The whole table for a built model, ending with Darknet's `Total BFLOPS` line and the parameter count."""
    head = f"{'':4s} {'type':<{TYPE_WIDTH}s}{'filters  size/strd':<{DESCRIBE_WIDTH}s}{'input':^17s}    {'output':^17s}"
    head = head.rstrip()
    lines = [head] + [layer_row(layer) for layer in model.layers]
    t = totals(model)
    lines.append(f"Total BFLOPS {t.bflops:5.3f}")
    lines.append(f"Parameters {t.parameters:,} ({t.parameters / 1e6:.2f}M); {t.weight_floats:,} floats in a "
                 f".weights file ({t.weight_floats / 1e6:.2f}M, with the batch-norm running statistics)")
    return lines


def _change(new: float, old: float) -> str:
    return f"{100.0 * (new - old) / old:+.1f} %" if old else "n/a"


def comparison_lines(name: str, ours: Totals, other_name: str, other: Totals) -> List[str]:
    """The two networks' totals side by side and the relative change of the first against the second."""
    width = max(len(name), len(other_name), 12)
    rows = [
        ("input", ours.size, other.size, ""),
        ("layers", f"{ours.layers}", f"{other.layers}", ""),
        ("BFLOPs", f"{ours.bflops:.3f}", f"{other.bflops:.3f}", _change(ours.bflops, other.bflops)),
        ("parameters", f"{ours.parameters:,}", f"{other.parameters:,}", _change(ours.parameters, other.parameters)),
        ("weight floats", f"{ours.weight_floats:,}", f"{other.weight_floats:,}",
         _change(ours.weight_floats, other.weight_floats)),
    ]
    lines = [f"{'':14s} {name:>{width}s} {other_name:>{width}s}   change"]
    lines += [f"{label:14s} {a:>{width}s} {b:>{width}s}   {change}".rstrip() for label, a, b, change in rows]
    return lines
