"""What every Darknet layer shares: the section-name registry, the build context and the Layer base class."""
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from darkpy.activations import get_activation
from darkpy.cfg import CfgWarning, Section

Shape = Tuple[int, int, int]  # (channels, height, width) of one image, as Darknet's (c, h, w)

LAYER_TYPES: Dict[str, Type["Layer"]] = {}


def untraced_inference() -> bool:
    """No gradient is being recorded and no trace (ONNX, TorchScript) is being taken: the inference-only
    arrangements of the fast CPU path (packed convolutions, a route's parts pooled unjoined, a max-pool overwriting
    its input) may run; otherwise the ordinary operators do."""
    return not torch.is_grad_enabled() and not torch.jit.is_tracing()


def register(*section_types: str) -> Callable[[Type["Layer"]], Type["Layer"]]:
    """Class decorator: build this layer for these (alias-resolved) section types."""

    def add(cls):
        for name in section_types:
            LAYER_TYPES[name] = cls
        cls.section_types = section_types
        return cls

    return add


@dataclass
class BuildContext:
    """What a layer may look at while it is built: its index, the shapes of the layers before it, [net]."""

    index: int
    input_shape: Shape  # the network input (c, h, w)
    shapes: List[Shape] = field(default_factory=list)  # output shape of every layer built so far
    layers: List["Layer"] = field(default_factory=list)
    time_steps: int = 1  # [net] time_steps: the steps a recurrent layer walks per training batch

    @property
    def prev_shape(self) -> Shape:
        return self.shapes[-1] if self.shapes else self.input_shape

    def resolve(self, section: Section, key: str, value: int) -> int:
        """Darknet's layer reference: negative is relative to this layer, non-negative is absolute."""
        absolute = self.index + value if value < 0 else value
        if not 0 <= absolute < self.index:
            raise section.error(f"refers to layer {value} (absolute {absolute}), but layer {self.index} can only "
                                f"read layers 0..{self.index - 1}", key)
        return absolute


# Keys Darknet reads for every layer after its own parse (parse_network_cfg_custom).
COMMON_KEYS_INT = ("stopbackward", "onlyforward", "dont_update", "burnin_update", "train_only_bn", "dontload",
                   "dontloadscales", "stream", "wait_stream")
COMMON_KEYS_FLOAT = ("learning_rate", "clip")


class Layer(nn.Module):
    """One Darknet layer. Subclasses read their options in __init__ and set `out_shape`.

    forward(x, outputs) gets the previous layer's output and the list of all earlier outputs (entries that no
    later layer reads may be None). `inputs` lists the absolute indices of earlier layers read besides the
    previous one, so the model knows which outputs to keep.
    """

    section_types: Sequence[str] = ()

    def __init__(self, section: Section, ctx: BuildContext):
        super().__init__()
        self.index = ctx.index
        self.type = section.type
        self.section = section
        self.in_shape: Shape = ctx.prev_shape
        self.out_shape: Shape = ctx.prev_shape
        self.inputs: List[int] = []
        self.learning_rate_scale = section.get_float("learning_rate", 1.0)
        self.clip = section.get_float("clip", 0.0)
        for key in COMMON_KEYS_INT:
            setattr(self, key, section.get_int(key, 0 if key not in ("stream", "wait_stream") else -1))

    def cfg_location(self) -> str:
        """`file:line: [section]` of this layer, for messages."""
        s = self.section
        return f"{s.file}:{s.line}: [{s.written_type or self.type}]"

    # ---- helpers for subclasses ---------------------------------------------------------------------------
    @staticmethod
    def activation_of(section: Section, default: str, key: str = "activation"):
        name = section.get_str(key, default)
        try:
            return name, get_activation(name)
        except KeyError:
            raise section.error(f"unknown activation '{name}'", key) from None

    @staticmethod
    def unsupported_if_set(section: Section, keys: Sequence[str], why: str = "is not supported by darkpy") -> None:
        for key in keys:
            if section.has(key) and section.get_str(key) not in ("0", "0.0"):
                raise section.error(f"{key}={section.get_str(key)} {why}", key)

    @staticmethod
    def training_only(section: Section, keys: Sequence[str]) -> None:
        """Options that change only Darknet's training; darkpy reads them and says it ignores them."""
        for key in keys:
            if section.has(key) and section.get_str(key) not in ("0", "0.0"):
                warnings.warn(f"{section.file}:{section.options[key].line}: [{section.written_type}] {key} "
                              f"affects only Darknet's training and is ignored by darkpy", CfgWarning, stacklevel=4)

    # ---- what the model, the weights codec and the summary use ------------------------------------------------
    def darknet_arrays(self) -> List[torch.Tensor]:
        """The tensors stored for this layer in a .weights file, in Darknet's order (none by default)."""
        return []

    def connected_weights(self) -> List[torch.Tensor]:
        """Those of darknet_arrays() that are [connected] weights, which a .weights file whose major or minor
        version is over 1000 stores transposed."""
        return []

    def bflops(self) -> float:
        return 0.0

    def describe(self) -> str:
        """The filters/size column of the summary table."""
        return ""

    def forward(self, x: torch.Tensor, outputs: List[Optional[torch.Tensor]]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
