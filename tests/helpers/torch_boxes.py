"""darkpy.boxes' IoU family evaluated in torch as well: the same formulas, differentiable.

darkpy computes IoUs in numpy (Darknet's float results) and trains with Darknet's analytic gradient
(boxes.dx_box_iou); the tests also check that the formulas stay finite and differentiable under autograd. For a
torch tensor, the functions here run darkpy.boxes' own code with its array primitives swapped for torch's; numpy
input goes straight to darkpy.boxes.
"""
import functools
from unittest import mock

import torch

from darkpy import boxes


def _pow(base: torch.Tensor, exponent: float) -> torch.Tensor:
    # x^0.6 has an infinite slope at 0 (boxes with the same centre): keep the gradient finite there
    positive = base > 0
    return torch.where(positive, torch.pow(torch.where(positive, base, torch.ones_like(base)), exponent),
                       torch.zeros_like(base))


TORCH_PRIMITIVES = {"_minimum": torch.minimum, "_maximum": torch.maximum, "_where": torch.where,
                    "_atan": torch.atan, "_pow_double": _pow}


def on_torch(function):
    """`function` of darkpy.boxes, accepting torch tensors too."""

    @functools.wraps(function)
    def call(a, b, *args, **kwargs):
        if not isinstance(a, torch.Tensor):
            return function(a, b, *args, **kwargs)
        with mock.patch.multiple(boxes, **TORCH_PRIMITIVES):
            return function(a, b, *args, **kwargs)

    return call


box_iou = on_torch(boxes.box_iou)
box_giou = on_torch(boxes.box_giou)
box_diou = on_torch(boxes.box_diou)
box_ciou = on_torch(boxes.box_ciou)
