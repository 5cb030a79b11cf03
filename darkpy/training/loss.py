"""Darknet's detection loss over a model's heads, and a surrogate that makes autograd apply it.

Darknet does not differentiate a loss. Its detection layers write `delta = target - output` for every output entry
(src/yolo_layer.c `forward_yolo_layer`, src/region_layer.c `forward_region_layer`) and `backward_*_layer` adds that
delta unchanged to the previous layer's delta, i.e. the gradient w.r.t. the layer's raw input is `-delta`. Each head
computes its deltas (`head.deltas`, darkpy.heads) from its activated output (`head.activate(raw)`); this module
sums over the heads and returns the surrogate `-(delta.detach() * raw).sum()`, whose gradient w.r.t. `raw` is
exactly `-delta`; the cost Darknet prints is reported separately.

As Darknet's GPU build does, the gradient handed to the layer below is the delta times the head's
`gradient_scale` ([yolo] `delta_normalizer`); the printed cost is that of the unscaled delta.

A [contrastive] layer (darkpy.heads.contrastive) adds its delta the same way to its input, the embeddings of its
[yolo] layer, from the track ids that [yolo] layer assigns to its cells; its cost counts in get_network_cost's mean
as one more layer with a cost.

Truths are (B, T, 5) rows `[x, y, w, h, class]` relative to the network input, or (B, T, 6) with the track id
(Darknet's 6th truth value, which a [contrastive] loss needs); as in Darknet a row with x == 0 ends an image's list.
"""
import warnings
from dataclasses import dataclass, field
from typing import List, NamedTuple, Sequence, Tuple, Union

import numpy as np
import torch

from darkpy.heads import Head, HeadLoss, LossError
from darkpy.heads.contrastive import ContrastiveLayer

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
    contrastive_costs: List[float] = field(default_factory=list)


class DetectorOutputs(NamedTuple):
    """One forward pass as a detector's loss reads it."""

    heads: List[torch.Tensor]  # each head's raw output
    embeddings: List[torch.Tensor]  # each [contrastive] layer's input


class DarknetLoss:
    """The training loss of a model's detection heads ([yolo] and [region]), as Darknet computes it.

    `DarknetLoss(model.heads)(raw_outputs, truths, net_w, net_h, seen)` where raw_outputs are what the model
    returns in train() mode (one (B, A, E, H, W) tensor per head) and truths is (B, T, 5), or (B, T, 6) with track ids.
    """

    def __init__(self, heads: Sequence[Head], warn: bool = True, contrastive: Sequence[ContrastiveLayer] = ()):
        self.heads = list(heads)
        if not self.heads:
            raise LossError("the cfg has no [yolo] or [region] layer: there is nothing to train a detector with")
        self.contrastive = list(contrastive)
        by_index = {head.index: k for k, head in enumerate(self.heads)}
        for layer in self.contrastive:
            if layer.yolo_index is None:
                raise LossError(f"{layer.cfg_location()} without yolo_layer is a classifier's contrastive loss, "
                                "which darkpy does not train (only a detector's, on a [yolo] layer's embeddings)")
        self._yolo_of = [by_index[layer.yolo_index] for layer in self.contrastive]
        ignored: List[str] = []
        for head in self.heads:
            ignored += [f"{head.cfg_location()} {what}" for what in head.prepare_loss()]
        if warn and ignored:
            warnings.warn("darkpy's loss ignores these options:\n  " + "\n  ".join(ignored), LossWarning,
                          stacklevel=2)

    def outputs(self, model, x: torch.Tensor) -> "DetectorOutputs":
        """The forward pass the loss reads: the raw output of each head, and the input of each [contrastive]
        layer."""
        if not self.contrastive:
            return DetectorOutputs(model(x), [])
        return DetectorOutputs(*model.forward_with_embeddings(x))

    def deltas(self, raw_outputs: Sequence[torch.Tensor], truths, net_w: int, net_h: int, seen: int = 0
               ) -> Tuple[List[np.ndarray], List[HeadLoss]]:
        """Darknet's delta arrays (numpy, same shape as each raw output) and per-head costs."""
        truths_np = _numpy(truths)
        deltas, stats = [], []
        for head, raw in zip(self.heads, raw_outputs):
            with torch.no_grad():
                out = head.activate(raw.detach().float()).cpu().numpy()
            delta, st = head.deltas(out, truths_np, (net_w, net_h), seen)
            deltas.append(delta)
            stats.append(st)
        return deltas, stats

    def __call__(self, raw_outputs: Union["DetectorOutputs", Sequence[torch.Tensor]], truths, net_w: int, net_h: int,
                 seen: int = 0, embeddings: Sequence[torch.Tensor] = ()) -> LossResult:
        """raw_outputs: what `outputs` returns, or the heads' raw outputs and `embeddings`, the input of each
        [contrastive] layer (Darknet.forward_with_embeddings gives them)."""
        if isinstance(raw_outputs, DetectorOutputs):
            raw_outputs, embeddings = raw_outputs
        if len(raw_outputs) != len(self.heads):
            raise LossError(f"the model returned {len(raw_outputs)} outputs for {len(self.heads)} heads")
        if len(embeddings) != len(self.contrastive):
            raise LossError(f"{len(embeddings)} embeddings given for {len(self.contrastive)} [contrastive] layers")
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
        costs = []
        for layer, head, embedding in zip(self.contrastive, self._yolo_of, embeddings):
            raw = raw_outputs[head]
            labels, class_ids = self.heads[head].track_labels(_numpy(truths), (raw.shape[-1], raw.shape[-2]),
                                                              (net_w, net_h))
            delta_np, cost = layer.deltas(embedding.detach().float().cpu().numpy(), labels, class_ids)
            # backward_contrastive_layer adds the delta to the embedding layer's delta
            surrogate = surrogate - (torch.from_numpy(delta_np).to(embedding.device) * embedding.float()).sum()
            costs.append(cost)
        # get_network_cost: the mean over every layer with a cost
        cost = (sum(s.cost for s in stats) + sum(costs)) / (len(stats) + len(costs))
        return LossResult(surrogate=surrogate, cost=cost, heads=stats, deltas=deltas, contrastive_costs=costs)


def _numpy(truths) -> np.ndarray:
    return truths.detach().cpu().numpy() if torch.is_tensor(truths) else np.asarray(truths)

