"""`darkpy paths CFG`: gradient-path analysis of a cfg's graph (the method behind PRN, CSPNet and ELAN).

Wang et al. design networks by the paths the *gradient* takes from the loss back to every layer's weights
("Enriching Variety of Layer-wise Learning Information by Gradient Combination", PRN, 2019; "Designing Network
Design Strategies Through Gradient Path Analysis", 2022). This module computes their quantities from the
graph Darknet builds (src/parser.c parse_network_cfg) and the way Darknet's backward passes deltas
(src/network.c backward_network, route_layer.c backward_route_layer, shortcut_layer.c backward_shortcut_layer,
blas.c shortcut_multilayer_cpu): no weights are read and nothing runs forward. docs/paths.md states the
definitions; in short:

* A *gradient term* G_t^s reaching a layer's weights has a timestamp t, the number of layers with weights it
  has passed through including the receiving one (the layer right before a loss has t = 1), and a source s,
  the last layer with weights it passed through before (or the loss), together with the channel piece of that
  source's backward gradient it carries: a concatenation splits a gradient into pieces (different sources), an
  addition hands the same piece to every addend (same source).
* Channels are tracked: a partial [shortcut] sends the gradient through its identity only into the shared
  channels and a [route] with groups/group_id only into its slice, so the output channels of one layer fall
  into *channel groups* that receive different terms. A convolution mixes all channels of each of its groups.
* A *gradient combination* is the set of terms one channel group receives. The shortest / longest gradient path
  of a layer is its smallest / largest timestamp.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from darkpy.layers.base import Layer
from darkpy.model import Darknet

# A term while it travels: (depth, source, delta). depth = layers with weights passed so far; source = index of
# the last layer with weights passed, or -(i + 1) for the loss of layer i; delta maps a channel c of the tensor
# the term sits on to channel c + delta of the source's backward gradient (None once a weightless layer mixed
# channels, e.g. the old [reorg] or [softmax], and the piece can no longer be told).
_Term = Tuple[int, int, Optional[int]]
# A term as a layer's weights receive it: (timestamp, source, piece of the source's gradient or None).
Term = Tuple[int, int, Optional[Tuple[int, int]]]
# Part of a layer's output gradient: channels [start, stop) carry these terms.
_Piece = Tuple[int, int, FrozenSet[_Term]]

# Weightless layers that mix every channel into every other one when the gradient goes back.
_MIXING_WEIGHTLESS = ("reorg", "softmax")
# Weightless layers that pass the gradient channel by channel to the previous layer only.
_PASS_THROUGH = ("maxpool", "local_avgpool", "avgpool", "upsample", "dropout", "activation", "empty", "crop",
                 "cost", "yolo", "Gaussian_yolo", "region")


def loss_label(source: int) -> str:
    return f"loss@{-source - 1}" if source < 0 else str(source)


@dataclass(frozen=True)
class Link:
    """How the gradient of some output channels of a layer goes back into one of the layers it reads.

    reads: index of the layer read (-1: the network input, which has no weights and is dropped).
    mixing=False: output channel c goes to input channel c - out_start + in_start (one to one);
    mixing=True: every output channel in [out_start, out_stop) reaches every input channel in [in_start, in_stop).
    """

    reads: int
    out_start: int
    out_stop: int
    in_start: int
    in_stop: int
    mixing: bool


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels [start, stop) of a layer with weights and the gradient combination they receive."""

    start: int
    stop: int
    terms: FrozenSet[Term]

    @property
    def timestamps(self) -> List[int]:
        return sorted({t for t, _, _ in self.terms})

    @property
    def sources(self) -> List[int]:
        return sorted({s for _, s, _ in self.terms}, key=_source_order)

    @property
    def shortest(self) -> int:
        return min(t for t, _, _ in self.terms)

    @property
    def longest(self) -> int:
        return max(t for t, _, _ in self.terms)


@dataclass
class LayerPaths:
    """The gradient a layer with weights receives: one ChannelGroup per set of channels receiving the same terms.
    Channels in none of the groups receive no gradient at all."""

    index: int
    type: str
    channels: int
    groups: List[ChannelGroup] = field(default_factory=list)

    @property
    def receives_gradient(self) -> bool:
        return bool(self.groups)

    @property
    def timestamps(self) -> List[int]:
        return sorted({t for g in self.groups for t in g.timestamps})

    @property
    def sources(self) -> List[int]:
        return sorted({s for g in self.groups for s in g.sources}, key=_source_order)

    @property
    def shortest(self) -> Optional[int]:
        return min((g.shortest for g in self.groups), default=None)

    @property
    def longest(self) -> Optional[int]:
        return max((g.longest for g in self.groups), default=None)

    @property
    def channels_without_gradient(self) -> int:
        return self.channels - sum(g.stop - g.start for g in self.groups)


@dataclass
class PathReport:
    """The analysis of one network: every layer with weights, and the network-level figures."""

    cfg: str
    losses: List[int]
    layers: List[LayerPaths]
    frozen_through: Optional[int] = None  # stopbackward=1 at this layer: it and all before it get no gradient
    notes: List[str] = field(default_factory=list)

    @property
    def trained(self) -> List[LayerPaths]:
        return [layer for layer in self.layers if layer.receives_gradient]

    @property
    def longest_path(self) -> int:
        """The longest gradient path of the network (0 when nothing receives a gradient)."""
        return max((layer.longest for layer in self.trained), default=0)

    @property
    def max_shortest_path(self) -> int:
        """The largest shortest gradient path over all layers: what ELAN keeps short when stacking blocks."""
        return max((layer.shortest for layer in self.trained), default=0)

    def layer_with(self, attribute: str, value: int) -> Optional[int]:
        """The first layer whose `shortest`/`longest` equals value (for the summary lines)."""
        return next((layer.index for layer in self.trained if getattr(layer, attribute) == value), None)

    @property
    def groups(self) -> List[Tuple[LayerPaths, ChannelGroup]]:
        return [(layer, group) for layer in self.layers for group in layer.groups]

    @property
    def combinations(self) -> int:
        """Distinct gradient combinations (sets of terms G_t^s) over all channel groups of all layers."""
        return len({group.terms for _, group in self.groups})

    @property
    def timestamp_sets(self) -> int:
        """Distinct sets of timestamps over all channel groups (terms of one timestamp merged, as in G1+G3+G5)."""
        return len({tuple(group.timestamps) for _, group in self.groups})

    @property
    def sources(self) -> int:
        """Distinct gradient sources in the network: (source layer or loss, piece of its gradient) pairs."""
        return len({(s, piece) for _, group in self.groups for _, s, piece in group.terms})

    def combination_ids(self) -> Dict[FrozenSet[Term], int]:
        """A number per distinct combination, in order of first appearance (layer order, then channels)."""
        ids: Dict[FrozenSet[Term], int] = {}
        for _, group in self.groups:
            ids.setdefault(group.terms, len(ids))
        return ids


def _source_order(source: int) -> Tuple[int, int]:
    return (1, -source - 1) if source < 0 else (0, source)


# ---- the graph: which channels of which inputs each layer's gradient goes to -----------------------------------
def has_weights(layer: Layer) -> bool:
    """A layer whose weights learn: it stores arrays in .weights, or it is a convolution sharing another's
    weights (share_index; Darknet stores nothing for it but its gradient updates the shared weights)."""
    return bool(layer.darknet_arrays()) or getattr(layer, "share_index", None) is not None


def _previous(layer: Layer) -> int:
    return layer.index - 1  # -1 for layer 0: the image


def _identity(reads: int, start: int, stop: int, in_start: int = 0) -> Link:
    return Link(reads, start, stop, in_start, in_start + stop - start, False)


def _conv_links(layer: Layer) -> List[Link]:
    """A (grouped) convolution: output group g depends on every channel of input group g (conv groups=)."""
    groups = getattr(layer, "groups", 1)
    c_in, c_out = layer.in_shape[0], layer.out_shape[0]
    step_in, step_out = c_in // groups, c_out // groups
    return [Link(_previous(layer), g * step_out, (g + 1) * step_out, g * step_in, (g + 1) * step_in, True)
            for g in range(groups)]


def _route_links(layer: Layer) -> List[Link]:
    """[route]: each input's slice [a, b) (groups/group_id) lands at the next channels of the output."""
    links, offset = [], 0
    for reads, (a, b) in zip(layer.inputs, layer.slices):
        links.append(_identity(reads, offset, offset + b - a, a))
        offset += b - a
    return links


def _shortcut_links(layer: Layer) -> List[Link]:
    """[shortcut]: the previous layer gets every channel; a `from` layer only the channels both have."""
    c = layer.out_shape[0]
    links = [_identity(_previous(layer), 0, c)]
    links += [_identity(reads, 0, shared) for reads, shared in zip(layer.inputs, layer.shared_channels)]
    return links


def _maxpool_links(layer: Layer) -> List[Link]:
    """maxpool_depth=1: output channel g is the max of input channels g, g + out_c, ...; else channel-wise."""
    c_in, c_out = layer.in_shape[0], layer.out_shape[0]
    if not getattr(layer, "depth", 0):
        return [_identity(_previous(layer), 0, c_out)]
    return [_identity(_previous(layer), 0, min(c_out, c_in - start), start) for start in range(0, c_in, c_out)]


def _reorg3d_links(layer: Layer) -> List[Link]:
    """Space-to-depth: output channels [k*c, (k+1)*c) hold input channels [0, c) at offset k."""
    c = layer.in_shape[0]
    return [_identity(_previous(layer), k * c, (k + 1) * c) for k in range(layer.out_shape[0] // c)]


def _scale_channels_links(layer: Layer) -> List[Link]:
    c = layer.out_shape[0]
    scaled = _identity(layer.inputs[0], 0, c)
    if getattr(layer, "scale_wh", 0):  # one map scales every channel
        return [scaled, Link(_previous(layer), 0, c, 0, 1, True)]
    return [scaled, _identity(_previous(layer), 0, c)]


def links_of(layer: Layer, out_channels: Sequence[int]) -> List[Link]:
    """Where the gradient of each output channel of `layer` goes (Darknet's backward for that layer type);
    out_channels[i] is the channel count of layer i."""
    kind = layer.type
    c_in, c_out = layer.in_shape[0], layer.out_shape[0]
    if kind == "convolutional":
        return _conv_links(layer)
    if kind == "connected":
        return [Link(_previous(layer), 0, c_out, 0, c_in, True)]
    if kind == "implicit":
        return []  # a learned constant: it ignores its input
    if kind == "route":
        return _route_links(layer)
    if kind == "shortcut":
        return _shortcut_links(layer)
    if kind == "maxpool":
        return _maxpool_links(layer)
    if kind == "reorg3d":
        return _reorg3d_links(layer)
    if kind == "scale_channels":
        return _scale_channels_links(layer)
    if kind == "sam":
        return [_identity(_previous(layer), 0, c_out), _identity(layer.inputs[0], 0, c_out)]
    if kind in _MIXING_WEIGHTLESS:
        return [Link(_previous(layer), 0, c_out, 0, c_in, True)]
    if kind in _PASS_THROUGH or kind == "batchnorm":
        # [batchnorm] has weights but applies them channel by channel, like a weighted [shortcut]
        return [_identity(_previous(layer), 0, c_out)]
    # A layer type this analysis does not know: assume it mixes everything it reads (the cautious reading).
    reads = [(_previous(layer), c_in)] + [(i, out_channels[i]) for i in layer.inputs]
    return [Link(index, 0, c_out, 0, channels, True) for index, channels in reads]


# ---- the backward walk -------------------------------------------------------------------------------------
def _segments(pieces: Sequence[_Piece], channels: int) -> List[_Piece]:
    """Cut [0, channels) where any piece starts or stops; each part gets the union of the terms over it.
    Neighbouring parts with the same terms are joined. Parts that receive nothing are left out."""
    cuts = sorted({0, channels} | {p[0] for p in pieces} | {p[1] for p in pieces})
    parts: List[_Piece] = []
    for start, stop in zip(cuts, cuts[1:]):
        covering = [terms for a, b, terms in pieces if a <= start and stop <= b]
        terms = frozenset().union(*covering) if covering else frozenset()
        if not terms:
            continue
        if parts and parts[-1][1] == start and parts[-1][2] == terms:
            parts[-1] = (parts[-1][0], stop, terms)
        else:
            parts.append((start, stop, terms))
    return parts


def _overlap(parts: Sequence[_Piece], start: int, stop: int) -> Iterable[_Piece]:
    for a, b, terms in parts:
        lo, hi = max(a, start), min(b, stop)
        if lo < hi:
            yield lo, hi, terms


def _shift(terms: FrozenSet[_Term], by: int) -> FrozenSet[_Term]:
    return frozenset((d, s, None if delta is None else delta + by) for d, s, delta in terms)


def _send_weightless(parts: Sequence[_Piece], links: Sequence[Link]) -> Iterable[Tuple[int, _Piece]]:
    """A layer without weights hands its gradient on unchanged: depth and source stay, only channels move."""
    for link in links:
        if link.mixing:
            mixed = [terms for _, _, terms in _overlap(parts, link.out_start, link.out_stop)]
            if mixed:
                terms = frozenset((d, s, None) for d, s, _ in frozenset().union(*mixed))
                yield link.reads, (link.in_start, link.in_stop, terms)
            continue
        move = link.in_start - link.out_start
        for lo, hi, terms in _overlap(parts, link.out_start, link.out_stop):
            yield link.reads, (lo + move, hi + move, _shift(terms, -move))


def _send_weighted(index: int, parts: Sequence[_Piece], links: Sequence[Link]) -> Iterable[Tuple[int, _Piece]]:
    """A layer with weights becomes the source: every timestamp t it received leaves it as depth t, with the
    channel coordinates of its own backward gradient (its input channels for a convolution)."""
    for link in links:
        if link.mixing:
            depths = {d + 1 for _, _, terms in _overlap(parts, link.out_start, link.out_stop) for d, _, _ in terms}
            if depths:
                # Channel c of the input is channel c of this layer's backward gradient: delta 0.
                yield link.reads, (link.in_start, link.in_stop, frozenset((t, index, 0) for t in depths))
            continue
        move = link.in_start - link.out_start
        for lo, hi, terms in _overlap(parts, link.out_start, link.out_stop):
            depths = {d + 1 for d, _, _ in terms}
            yield link.reads, (lo + move, hi + move, frozenset((t, index, -move) for t in depths))


def _receive(parts: Sequence[_Piece]) -> List[ChannelGroup]:
    """What the weights of each channel group receive: every arriving term one layer deeper (this one)."""
    groups: List[ChannelGroup] = []
    for start, stop, terms in parts:
        received = frozenset((d + 1, s, None if delta is None else (start + delta, stop + delta))
                             for d, s, delta in terms)
        if groups and groups[-1].stop == start and groups[-1].terms == received:
            # neighbours fed the same pieces (a channel fan-out such as maxpool_depth): one group
            groups[-1] = ChannelGroup(groups[-1].start, stop, received)
        else:
            groups.append(ChannelGroup(start, stop, received))
    return groups


def _frozen_through(layers: Sequence[Layer], notes: List[str]) -> Optional[int]:
    """Darknet's backward_network stops at the last layer with stopbackward=1 (that layer and all before it get
    no gradient). stopbackward=N>1 stops it only for the first N iterations on GPU: noted and ignored."""
    frozen = None
    for layer in layers:
        value = getattr(layer, "stopbackward", 0)
        if value == 1:
            frozen = layer.index
        elif value > 1:
            notes.append(f"layer {layer.index}: stopbackward={value} stops the gradient only during the first "
                         f"{value} iterations (GPU); the analysis shows the network after them")
    return frozen


def loss_layers(model: Darknet) -> List[int]:
    """Every [yolo]/[Gaussian_yolo]/[region] layer, and the network's final layer (the last that is not [cost])."""
    return sorted({head.index for head in model.heads} | {model.output_index})


def analyze(model: Darknet) -> PathReport:
    """Gradient paths of a built darkpy.model.Darknet, walking its layers from the last to the first."""
    layers: Sequence[Layer] = list(model.layers)
    notes: List[str] = []
    frozen = _frozen_through(layers, notes)
    losses = loss_layers(model)
    incoming: Dict[int, List[_Piece]] = defaultdict(list)
    for index in losses:
        incoming[index].append((0, layers[index].out_shape[0], frozenset({(0, -index - 1, 0)})))
    out_channels = [layer.out_shape[0] for layer in layers]
    results: List[LayerPaths] = []
    for layer in reversed(layers):
        weighted = has_weights(layer)
        parts = _segments(incoming.pop(layer.index, []), layer.out_shape[0])
        blocked = (frozen is not None and layer.index <= frozen) or getattr(layer, "onlyforward", 0)
        if blocked:
            parts = []
        if weighted:
            results.append(LayerPaths(layer.index, layer.type, layer.out_shape[0], _receive(parts)))
        if not parts:
            continue
        links = links_of(layer, out_channels)
        sent = _send_weighted(layer.index, parts, links) if weighted else _send_weightless(parts, links)
        for reads, piece in sent:
            if reads >= 0:
                incoming[reads].append(piece)
    results.reverse()
    return PathReport(str(getattr(model, "cfg_path", "")), losses, results, frozen, notes)


# ---- presenting the analysis ---------------------------------------------------------------------------------
def compress(values: Iterable[int]) -> str:
    """1,2,3,5,7,8 -> '1-3,5,7-8'."""
    ordered = sorted(set(values))
    runs: List[List[int]] = []
    for v in ordered:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def format_sources(sources: Sequence[int]) -> str:
    layers = compress(s for s in sources if s >= 0)
    losses = [loss_label(s) for s in sources if s < 0]
    return ",".join(part for part in [layers] + losses if part)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def summary_lines(report: PathReport) -> List[str]:
    longest, shortest = report.longest_path, report.max_shortest_path
    lines = [
        f"layers with weights:             {len(report.layers)} ({len(report.trained)} receive a gradient)",
        f"longest gradient path:           {longest} (layer {report.layer_with('longest', longest)})",
        f"largest shortest gradient path:  {shortest} (layer {report.layer_with('shortest', shortest)})",
        f"gradient combinations:           {report.combinations} "
        f"({report.timestamp_sets} distinct sets of timestamps)",
        f"gradient sources:                {report.sources}",
    ]
    if report.frozen_through is not None:
        lines.append(f"stopbackward=1 at layer {report.frozen_through}: it and the layers before it get no gradient")
    return lines + [f"note: {note}" for note in report.notes]


def _row(label: str, channels: int, groups: str, shortest: str, longest: str, timestamps: str,
         sources: str) -> str:
    return (f"{label:<20} {channels:5d} {groups:>6} {shortest:>5} {longest:>5}  {_clip(timestamps, 24):<24} "
            f"{_clip(sources, 40)}").rstrip()


def table_lines(report: PathReport, channels: bool = False) -> List[str]:
    """One row per layer with weights (and, with channels=True, one per channel group when there are several)."""
    lines = [f"{'layer':>5}  {'type':<13} {'chan':>5} {'groups':>6} {'short':>5} {'long':>5}  "
             f"{'timestamps':<24} sources"]
    for layer in report.layers:
        label = f"{layer.index:5d}  {layer.type[:13]}"
        if not layer.receives_gradient:
            lines.append(_row(label, layer.channels, "0", "-", "-", "(no gradient)", ""))
            continue
        lines.append(_row(label, layer.channels, str(len(layer.groups)), str(layer.shortest), str(layer.longest),
                          compress(layer.timestamps), format_sources(layer.sources)))
        if channels and (len(layer.groups) > 1 or layer.channels_without_gradient):
            for group in layer.groups:
                lines.append(_row(f"         ch {group.start}-{group.stop - 1}", group.stop - group.start, "",
                                  str(group.shortest), str(group.longest), compress(group.timestamps),
                                  format_sources(group.sources)))
    return lines


def _json_source(source: int) -> Union[int, str]:
    return source if source >= 0 else loss_label(source)


def to_json(report: PathReport) -> dict:
    """Everything the table shows, per layer and per channel group; `combination` numbers the distinct
    gradient combinations (equal numbers: the same terms G_t^s)."""
    ids = report.combination_ids()
    layers = []
    for layer in report.layers:
        layers.append({
            "index": layer.index, "type": layer.type, "channels": layer.channels,
            "shortest": layer.shortest, "longest": layer.longest, "timestamps": layer.timestamps,
            "sources": [_json_source(s) for s in layer.sources],
            "channels_without_gradient": layer.channels_without_gradient,
            "groups": [{"channels": [g.start, g.stop], "shortest": g.shortest, "longest": g.longest,
                        "timestamps": g.timestamps, "sources": [_json_source(s) for s in g.sources],
                        "combination": ids[g.terms]} for g in layer.groups],
        })
    longest, shortest = report.longest_path, report.max_shortest_path
    return {
        "cfg": report.cfg, "losses": report.losses, "frozen_through": report.frozen_through, "notes": report.notes,
        "network": {
            "layers_with_weights": len(report.layers), "layers_with_gradient": len(report.trained),
            "longest_path": longest, "longest_path_layer": report.layer_with("longest", longest),
            "max_shortest_path": shortest, "max_shortest_path_layer": report.layer_with("shortest", shortest),
            "combinations": report.combinations, "timestamp_sets": report.timestamp_sets,
            "sources": report.sources,
        },
        "layers": layers,
    }


def _tick_step(span: int, most: int = 10) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that puts at most `most` ticks on [0, span]."""
    decade = 1
    while True:
        for factor in (1, 2, 5):
            if span <= most * decade * factor:
                return decade * factor
        decade *= 10


def draw_plot(report: PathReport, path: Union[str, Path], layer_count: Optional[int] = None) -> None:
    """Shortest (blue) and longest (red) gradient path of every layer with weights against its index, drawn with
    OpenCV; a grey bar joins the two."""
    last = max(layer_count or 0, max((l.index for l in report.layers), default=0) + 1)
    width = int(min(2400, max(720, 140 + 6 * last)))
    height, left, right, top, bottom = 480, 60, 20, 50, 50
    image = np.full((height, width, 3), 255, np.uint8)
    y_max = max(report.longest_path, 1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_of(index: float) -> int:
        return int(round(left + plot_w * (index + 0.5) / last))  # half a step of margin

    def y_of(value: float) -> int:
        return int(round(top + plot_h * (1 - value / y_max)))

    font, grey, black = cv2.FONT_HERSHEY_SIMPLEX, (200, 200, 200), (0, 0, 0)
    for value in range(0, y_max + 1, _tick_step(y_max)):
        cv2.line(image, (left, y_of(value)), (width - right, y_of(value)), (235, 235, 235), 1)
        cv2.putText(image, str(value), (8, y_of(value) + 4), font, 0.4, black, 1, cv2.LINE_AA)
    for index in range(0, last, _tick_step(last)):
        cv2.line(image, (x_of(index), height - bottom), (x_of(index), height - bottom + 4), black, 1)
        cv2.putText(image, str(index), (x_of(index) - 8, height - bottom + 18), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (width - right, height - bottom), black, 1)
    blue, red = (200, 80, 0), (0, 0, 210)  # BGR
    for layer in report.trained:
        x = x_of(layer.index)
        cv2.line(image, (x, y_of(layer.shortest)), (x, y_of(layer.longest)), grey, 1)
        cv2.circle(image, (x, y_of(layer.longest)), 3, red, -1, cv2.LINE_AA)
        cv2.circle(image, (x, y_of(layer.shortest)), 3, blue, -1, cv2.LINE_AA)
    title = (f"{Path(report.cfg).name}: longest {report.longest_path}, largest shortest {report.max_shortest_path}, "
             f"{report.combinations} combinations")
    cv2.putText(image, title, (left, 20), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.circle(image, (left + 6, 37), 4, blue, -1, cv2.LINE_AA)
    cv2.putText(image, "shortest gradient path", (left + 14, 41), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.circle(image, (left + 206, 37), 4, red, -1, cv2.LINE_AA)
    cv2.putText(image, "longest gradient path", (left + 214, 41), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(image, "layer index", (width // 2 - 40, height - 12), font, 0.45, black, 1, cv2.LINE_AA)
    try:
        written = cv2.imwrite(str(path), image)
    except cv2.error:  # OpenCV raises for an extension it has no writer for
        written = False
    if not written:
        raise OSError(f"cannot write the plot to {path} (does the folder exist? is the extension .png or .jpg?)")
