"""Darknet's detection loss over a model's heads, and a surrogate that makes autograd apply it.

Darknet does not differentiate a loss. Its detection layers write `delta = target - output` for every output entry
(src/yolo_layer.c `forward_yolo_layer`, src/region_layer.c `forward_region_layer`) and `backward_*_layer` adds that
delta unchanged to the previous layer's delta, i.e. the gradient w.r.t. the layer's raw input is `-delta`. Each head
computes its deltas (`head.deltas`, darkpy.heads) from its activated output (`head.activate(raw)`); this module
sums over the heads and returns the surrogate `-(delta.detach() * raw).sum()`, whose gradient w.r.t. `raw` is
exactly `-delta`; the cost Darknet prints is reported separately.

As Darknet's GPU build does, the gradient handed to the layer below is the delta times the head's
`gradient_scale` ([yolo] `delta_normalizer`); the printed cost is that of the unscaled delta.

Truths are (B, T, 5) rows `[x, y, w, h, class]` relative to the network input; as in Darknet a row with x == 0 ends
an image's list.
"""
import warnings
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch

from darkpy.heads import Head, HeadLoss, LossError

__all__ = ["DarknetLoss", "HeadLoss", "LossError", "LossResult", "LossWarning"]


class LossWarning(UserWarning):
    """A loss option that darkpy reads but does not implement."""


@dataclass
class LossResult:
    """surrogate: backward() of it gives Darknet's gradients; cost: Darknet's get_network_cost (mean over heads)."""

    surrogate: torch.Tensor
    cost: float
    heads: List[HeadLoss]
    deltas: List[torch.Tensor]


class DarknetLoss:
    """The training loss of a model's detection heads ([yolo] and [region]), as Darknet computes it.

    `DarknetLoss(model.heads)(raw_outputs, truths, net_w, net_h, seen)` where raw_outputs are what the model
    returns in train() mode (one (B, A, E, H, W) tensor per head) and truths is (B, T, 5).
    """

    def __init__(self, heads: Sequence[Head], warn: bool = True):
        self.heads = list(heads)
        if not self.heads:
            raise LossError("the cfg has no [yolo] or [region] layer: there is nothing to train a detector with")
        ignored: List[str] = []
        for head in self.heads:
            ignored += [f"{head.cfg_location()} {what}" for what in head.prepare_loss()]
        if warn and ignored:
            warnings.warn("darkpy's loss ignores these options:\n  " + "\n  ".join(ignored), LossWarning,
                          stacklevel=2)

    def deltas(self, raw_outputs: Sequence[torch.Tensor], truths, net_w: int, net_h: int, seen: int = 0
               ) -> Tuple[List[np.ndarray], List[HeadLoss]]:
        """Darknet's delta arrays (numpy, same shape as each raw output) and per-head costs."""
        truths_np = truths.detach().cpu().numpy() if torch.is_tensor(truths) else np.asarray(truths)
        deltas, stats = [], []
        for head, raw in zip(self.heads, raw_outputs):
            with torch.no_grad():
                out = head.activate(raw.detach().float()).cpu().numpy()
            delta, st = head.deltas(out, truths_np, (net_w, net_h), seen)
            deltas.append(delta)
            stats.append(st)
        return deltas, stats

    def __call__(self, raw_outputs: Sequence[torch.Tensor], truths, net_w: int, net_h: int, seen: int = 0
                 ) -> LossResult:
        if len(raw_outputs) != len(self.heads):
            raise LossError(f"the model returned {len(raw_outputs)} outputs for {len(self.heads)} heads")
        deltas_np, stats = self.deltas(raw_outputs, truths, net_w, net_h, seen)
        surrogate = None
        deltas = []
        for head, raw, delta_np in zip(self.heads, raw_outputs, deltas_np):
            # in raw's memory layout, so that the gradient flowing back into a channels_last model has the layout of
            # the activations it meets (mixed layouts take torch's slow elementwise kernels: 2x the backward time)
            delta = torch.empty_like(raw, dtype=torch.float32).copy_(torch.from_numpy(delta_np))
            deltas.append(delta)
            # d term / d raw = -delta * scale: Darknet's backward adds the (scaled) delta to the layer below
            term = -(delta * raw.float()).sum() * head.gradient_scale
            surrogate = term if surrogate is None else surrogate + term
        cost = sum(s.cost for s in stats) / len(stats)
        return LossResult(surrogate=surrogate, cost=cost, heads=stats, deltas=deltas)

