"""The network built from a cfg: Darknet(nn.Module) (src/parser.c parse_network_cfg, src/network.c)."""
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from darkpy.cfg import C_INT_MAX, Section, mark_net_options_read, parse_cfg, warn_unused
from darkpy.heads import Head as _Head
from darkpy.layers import LAYER_TYPES, UNSUPPORTED, BuildContext, Layer
from darkpy.layers.route import ChannelParts
from darkpy.weights import LoadReport, WeightsError, count_floats, load_weights, save_weights

ModelOutput = Union[List[torch.Tensor], torch.Tensor]


def _size_of(error: BaseException) -> str:
    """' (216.0 GB)' from PyTorch's "you tried to allocate 216000000000 bytes"; '' when it does not say."""
    match = re.search(r"allocate (\d+) bytes", str(error))
    return f" ({int(match.group(1)) / 1e9:.1f} GB)" if match else ""


class Darknet(nn.Module):
    """A Darknet network. forward(x) returns one (B, A, E, H, W) tensor per detection head, or, for a network
    without heads (a classifier), the output of its last layer that is not a [cost] layer."""

    def __init__(self, sections: Sequence[Section], width: Optional[int] = None, height: Optional[int] = None,
                 warn: bool = True):
        super().__init__()
        self._sections = list(sections)
        net = sections[0]
        self.cfg_path = net.file
        # [net] as typed, located options (get_int/get_float/... raise CfgError naming file and line) for the
        # trainer; `net` is the same as plain strings.
        self.net_section = net
        self.net: Dict[str, str] = {k: o.value for k, o in net.options.items()}
        mark_net_options_read(net)
        self.width = self._size(net, "width", width)
        self.height = self._size(net, "height", height)
        self.channels = self._size(net, "channels", None)
        if self.width * self.height * self.channels > C_INT_MAX:  # checked before anything is allocated
            raise net.error(f"a {self.width}x{self.height}x{self.channels} input has more values than Darknet's "
                            f"int counts ({C_INT_MAX}): it cannot be built", "width")
        self.letter_box = bool(net.get_int("letter_box", 0))
        self.seen = 0
        self.weights_version = None
        self.is_fused = False

        # parse_network_cfg_custom: time_steps below 1 counts as 1
        ctx = BuildContext(index=0, input_shape=(self.channels, self.height, self.width),
                           time_steps=max(1, net.get_int("time_steps", 1)))
        for index, section in enumerate(sections[1:]):
            ctx.index = index
            layer = self._build(section, ctx)
            ctx.layers.append(layer)
            ctx.shapes.append(layer.out_shape)
        if not ctx.layers:
            raise net.error("the cfg has no layers after [net]")
        self.layers = nn.ModuleList(ctx.layers)
        self.heads: List[_Head] = [layer for layer in ctx.layers if isinstance(layer, _Head)]
        # a trailing loss layer ([cost], [contrastive]) outputs zeros at inference: the network's output is before it
        self.output_index = max(i for i, layer in enumerate(ctx.layers) if layer.type not in ("cost", "contrastive"))
        # Outputs forward() must keep: those later layers read, the heads' and the network's output.
        kept = {i for layer in ctx.layers for i in layer.inputs} | {h.index for h in self.heads} | {self.output_index}
        self._keep = [i in kept for i in range(len(ctx.layers))]
        if warn:
            warn_unused(sections)

    @staticmethod
    def _size(net: Section, key: str, override: Optional[int]) -> int:
        value = override if override is not None else net.get_int(key, 0)
        if (value is None or value < 1) and net.has("inputs"):
            # Darknet's text and sequence models (cfg/rnn.cfg, gru.cfg, lstm.train.cfg...): `inputs=` values a
            # step and no image; C Darknet itself stops on them outside its `rnn` command.
            raise net.error(f"is not set: this [net] takes inputs={net.get_str('inputs')} values, not an image "
                            f"(a text model for Darknet's `rnn` command, fed one character at a time, which darkpy does not run; "
                            f"darkpy runs [rnn], [gru] and [lstm] layers in networks that take an image)", key)
        if value is None or value < 1:
            raise net.error(f"must be a positive integer (got {value})", key)
        return value

    @staticmethod
    def _build(section: Section, ctx: BuildContext) -> Layer:
        if section.type in UNSUPPORTED:
            raise section.error(UNSUPPORTED[section.type] + " by darkpy")
        cls = LAYER_TYPES.get(section.type)
        if cls is None:
            raise section.error(f"unknown section type (Darknet: 'Type not recognized'); known: "
                                f"{', '.join(sorted(LAYER_TYPES))}")
        try:
            return cls(section, ctx)
        except (MemoryError, RuntimeError) as error:  # the allocator refused the layer's arrays: nothing was made
            if not isinstance(error, MemoryError) and "allocate" not in str(error):
                raise
            raise section.error(f"cannot be built: its arrays need more memory than there is{_size_of(error)}"
                                f"; check its sizes (filters, size, output...)") from None

    @classmethod
    def from_cfg(cls, path: Union[str, Path], width: Optional[int] = None,
                 height: Optional[int] = None) -> "Darknet":
        """Build the network a cfg file describes, optionally at another input size than its [net] states."""
        return cls(parse_cfg(path), width=width, height=height)

    # ---- running ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, keep_all: bool = False) -> ModelOutput:
        outputs = self.forward_layers(x, keep_all=keep_all)
        if self.heads:
            return [outputs[head.index] for head in self.heads]
        return outputs[self.output_index]

    def contrastive_layers(self) -> List[Layer]:
        """The [contrastive] loss layers; each reads a [yolo] layer's embeddings (its input)."""
        return [layer for layer in self.layers if layer.type == "contrastive"]

    def forward_with_embeddings(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """forward()'s head outputs and the input of every [contrastive] layer (the embeddings its loss reads)."""
        outputs = self.forward_layers(x, keep_all=False)
        return ([outputs[head.index] for head in self.heads],
                [outputs[layer.inputs[0]] for layer in self.contrastive_layers()])

    def forward_layers(self, x: torch.Tensor, keep_all: bool = True) -> List[Optional[torch.Tensor]]:
        """Every layer's output (entries no later layer reads are dropped unless keep_all)."""
        expected = (self.channels, self.height, self.width)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{self.cfg_path}: the network takes (batch, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}) input, got {tuple(x.shape)}")
        outputs: List[Optional[torch.Tensor]] = []
        for i, layer in enumerate(self.layers):
            x = layer(x, outputs)
            outputs.append(x if keep_all or self._keep[i] else None)
        if keep_all:  # a route's parts its max-pool read unjoined (inference, ChannelParts), joined for the caller
            outputs = [o.joined() if isinstance(o, ChannelParts) else o for o in outputs]
        return outputs

    def read_only_by_next_layer(self, index: int) -> bool:
        """Whether layer `index`'s output is read by the layer after it alone (not a head or the network's
        output, and listed in no later layer's inputs)."""
        return not self._keep[index]

    def reset_state(self) -> "Darknet":
        """Forget the state of the recurrent layers ([crnn], [conv_lstm], [lstm]...), as before the first frame:
        call it before a new video. In eval mode a recurrent layer carries its state from each frame to the next,
        a batch being consecutive frames (darkpy/layers/recurrent.py); nothing else keeps state."""
        for layer in self.recurrent_layers():
            layer.reset_state()
        return self

    def recurrent_layers(self) -> List[Layer]:
        """The layers that keep a state from one call to the next."""
        return [layer for layer in self.layers if hasattr(layer, "reset_state")]

    def resized(self, width: int, height: int) -> "Darknet":
        """The same network built for another input size, sharing this one's parameters and buffers (Darknet's
        resize_network, used by multi-scale training). Layers keep their geometry per size, so each size is its
        own module; training either trains both. A buffer whose shape depends on the size (none so far) stays
        the new size's own."""
        other = Darknet(self._sections, width=width, height=height, warn=False)
        for mine, theirs in zip(other.modules(), self.modules()):
            for name, _ in list(mine.named_parameters(recurse=False)):
                setattr(mine, name, getattr(theirs, name))  # nn.Module registers the assigned Parameter
            for name, buffer in list(mine.named_buffers(recurse=False)):
                source = getattr(theirs, name, None)
                if isinstance(source, torch.Tensor) and source.shape == buffer.shape:
                    setattr(mine, name, source)  # replaces the registered buffer, keeping it (non-)persistent
        other.seen, other.weights_version = self.seen, self.weights_version
        return other.to(next(self.parameters()).device).train(self.training)

    # ---- weights ---------------------------------------------------------------------------------------------
    def load_weights(self, path: Union[str, Path], upto: Optional[int] = None) -> LoadReport:
        """Load a Darknet .weights file into layers [0, upto) (all when None; then floats left over are an
        error); the header's `seen` and version are kept for saving."""
        layers = list(self.layers)[:upto] if upto is not None else list(self.layers)
        report = load_weights(layers, path, partial=upto is not None)
        self.seen, self.weights_version = report.seen, report.version
        return report

    def save_weights(self, path: Union[str, Path], upto: Optional[int] = None, seen: Optional[int] = None) -> None:
        """Write layers [0, upto) as a .weights file, with this model's `seen` unless `seen` is given."""
        if self.is_fused:
            raise WeightsError("a model with batch norm folded (fuse()) cannot be saved: the file would not match "
                               "its cfg; save before fusing")
        layers = list(self.layers)[:upto] if upto is not None else list(self.layers)
        save_weights(layers, path, seen=self.seen if seen is None else seen, version=self.weights_version)

    def count_weight_floats(self, upto: Optional[int] = None) -> int:
        """Floats a .weights file holds for layers [0, upto)."""
        return count_floats(list(self.layers)[:upto] if upto is not None else list(self.layers))

    def fuse(self) -> "Darknet":
        """Fold batch norm into convolutions for inference, as Darknet does when it loads a detector."""
        for layer in self.layers:
            if hasattr(layer, "fuse"):
                layer.fuse()
        self.is_fused = True
        return self

    # ---- description -----------------------------------------------------------------------------------------
    def num_parameters(self) -> int:
        """Learned floats: what a .weights file stores (batch-norm running statistics excluded)."""
        return sum(p.numel() for p in self.parameters())

    def total_bflops(self) -> float:
        return sum(layer.bflops() for layer in self.layers)
