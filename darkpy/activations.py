"""Every activation Darknet knows (src/activations.c / activations.h), by its cfg name.

Each function takes and returns a tensor and is differentiable with autograd. Where Darknet's CPU and GPU code
differ, darkpy follows the GPU (the correct) arithmetic; the difference is noted.
"""
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]


def _linear(x):
    return x


def _leaky(x):  # Darknet's leaky slope is 0.1, not PyTorch's default 0.01
    return F.leaky_relu(x, 0.1)


def _relie(x):
    return torch.where(x > 0, x, 0.01 * x)


def _ramp(x):
    return x * (x > 0) + 0.1 * x


def _loggy(x):
    return 2.0 * torch.sigmoid(x) - 1.0


def _elu(x):
    return torch.where(x >= 0, x, torch.expm1(x))


def _selu(x):
    return torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * torch.expm1(x))


def _gelu(x):  # Darknet's tanh approximation with its own constants
    return 0.5 * x * (1.0 + torch.tanh(0.797885 * x + 0.035677 * x * x * x))


def _plse(x):
    return torch.where(x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5))


def _stair(x):
    n = torch.floor(x)
    half = torch.floor(x / 2)
    return torch.where(torch.remainder(n, 2) == 0, half, (x - n) + half)


def _hardtan(x):
    return torch.clamp(x, -1.0, 1.0)


def _lhtan(x):
    return torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x))


def _softplus_darknet(x, threshold=20.0):
    # src/activations.h softplus_activate: linear above the threshold, exp below its negative.
    return torch.where(x > threshold, x, torch.where(x < -threshold, torch.exp(x), torch.log1p(torch.exp(x))))


def _mish(x):
    return x * torch.tanh(_softplus_darknet(x))


def _hard_mish(x):
    return torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x)))


def _swish(x):
    return x * torch.sigmoid(x)


def _relu6(x):
    # GPU arithmetic; Darknet's CPU activate() has no RELU6 case and returns 0 (a bug not reproduced).
    return torch.clamp(x, 0.0, 6.0)


_EPS_CHANNELS = 1e-4


def _normalize_channels(x):
    """Per pixel, over channels: relu(x) / (eps + sum relu(x)) (activate_array_normalize_channels)."""
    positive = torch.relu(x)
    return positive / (_EPS_CHANNELS + positive.sum(dim=1, keepdim=True))


def _normalize_channels_softmax(x):
    """Per pixel softmax over channels, no max subtraction, eps in the denominator."""
    e = torch.exp(x)
    return e / (_EPS_CHANNELS + e.sum(dim=1, keepdim=True))


def _normalize_channels_softmax_maxval(x):
    e = torch.exp(x - x.max(dim=1, keepdim=True).values)
    return e / (_EPS_CHANNELS + e.sum(dim=1, keepdim=True))


ACTIVATIONS: Dict[str, Activation] = {
    "logistic": torch.sigmoid,
    "loggy": _loggy,
    "relu": torch.relu,
    "relu6": _relu6,
    "elu": _elu,
    "selu": _selu,
    "gelu": _gelu,
    "relie": _relie,
    "ramp": _ramp,
    "leaky": _leaky,
    "revleaky": _leaky,  # same forward as leaky; differs only in Darknet's backward
    "tanh": torch.tanh,
    "plse": _plse,
    "stair": _stair,
    "hardtan": _hardtan,
    "lhtan": _lhtan,
    "linear": _linear,
    "swish": _swish,
    "mish": _mish,
    "hard_mish": _hard_mish,
    "normalize_channels": _normalize_channels,
    "normalize_channels_softmax": _normalize_channels_softmax,
    "normalize_channels_softmax_maxval": _normalize_channels_softmax_maxval,
}

# Activations whose value at a pixel depends on the other channels: they need the (B, C, H, W) layout.
CHANNEL_ACTIVATIONS = {"normalize_channels", "normalize_channels_softmax", "normalize_channels_softmax_maxval"}


# In-place forms for a tensor nothing else holds (saves a full copy per layer). In training their gradients read
# the result instead of the input, which gives the same numbers: leaky and relu keep the sign, and the logistic's
# backward reads its result anyway.
_IN_PLACE: Dict[str, Activation] = {
    "logistic": torch.sigmoid_,
    "relu": torch.relu_,
    "leaky": lambda x: F.leaky_relu_(x, 0.1),
    "revleaky": lambda x: F.leaky_relu_(x, 0.1),
    "linear": _linear,
}


# Activations oneDNN computes exactly as darkpy does (a select or a clamp: no rounding of its own), so that a CPU
# convolution can apply them as a post-op (darkpy.layers.conv.PackedConv): the oneDNN name and its scalars.
ONEDNN_POST_OPS: Dict[str, Tuple[str, List[float]]] = {
    "linear": ("none", []),
    "relu": ("relu", []),
    "leaky": ("leaky_relu", [0.1]),
    "revleaky": ("leaky_relu", [0.1]),
    "relu6": ("hardtanh", [0.0, 6.0]),
    "hardtan": ("hardtanh", [-1.0, 1.0]),
}


def activate_fresh(name: str, x: torch.Tensor) -> torch.Tensor:
    """Apply activation `name` to the output a convolution or batch norm has just computed (their backward does not
    read it), in place where there is an in-place form."""
    if name in _IN_PLACE:
        return _IN_PLACE[name](x)
    return ACTIVATIONS[name](x)


def get_activation(name: str) -> Activation:
    """The activation called `name` in a cfg; KeyError for a name Darknet does not know."""
    return ACTIVATIONS[name]
