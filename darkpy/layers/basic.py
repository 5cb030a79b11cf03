"""Small layers: [connected], [softmax], [dropout], [batchnorm], [activation], [empty], [crop], [cost], [implicit]
(the [contrastive] loss layer is in heads/contrastive.py)."""
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from darkpy.cfg import CfgWarning
from darkpy.layers.base import BuildContext, Layer, register
from darkpy.layers.conv import darknet_batch_norm


@register("connected")
class ConnectedLayer(Layer):
    """Fully connected on the flattened (c, h, w) input; optional batch norm."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        c, h, w = self.in_shape
        self.inputs_count = c * h * w
        self.outputs_count = s.get_int("output", 1)
        if self.outputs_count < 1:
            raise s.error("must be at least 1", "output")
        self.batch_normalize = s.get_int("batch_normalize", 0)
        self.activation_name, self.activation = self.activation_of(s, "logistic")
        bound = (2.0 / self.inputs_count) ** 0.5  # Darknet's init: U(-1, 1) * sqrt(2 / inputs)
        self.weight = nn.Parameter(torch.empty(self.outputs_count, self.inputs_count).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(self.outputs_count))
        if self.batch_normalize:
            self.bn_weight = nn.Parameter(torch.ones(self.outputs_count))
            self.register_buffer("running_mean", torch.zeros(self.outputs_count))
            self.register_buffer("running_var", torch.ones(self.outputs_count))
        self.out_shape = (self.outputs_count, 1, 1)

    def forward(self, x, outputs):
        y = x.reshape(x.shape[0], -1) @ self.weight.t()
        if self.batch_normalize:
            y = darknet_batch_norm(y, self.running_mean, self.running_var, self.bn_weight, self.bias, self.training)
        else:
            y = y + self.bias
        return self.activation(y).view(x.shape[0], -1, 1, 1)

    def darknet_arrays(self):
        # Unlike a convolution, the batch-norm arrays come after the weights.
        arrays = [self.bias, self.weight]
        if self.batch_normalize and not self.dontloadscales:
            arrays += [self.bn_weight, self.running_mean, self.running_var]
        return arrays

    def connected_weights(self):
        return [self.weight]

    def bflops(self) -> float:
        # Darknet leaves connected layers out of its BFLOPs total (alexnet: 2.154, not 2.272).
        return 0.0

    def describe(self) -> str:
        return f"{self.inputs_count:5d} -> {self.outputs_count:d}"


@register("softmax")
class SoftmaxLayer(Layer):
    """Softmax over `groups` equal chunks of the flattened input (or over channels at each pixel, spatial=1)."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        self.groups = s.get_int("groups", 1)
        self.temperature = s.get_float("temperature", 1.0)
        self.spatial = s.get_int("spatial", 0)
        s.get_int("noloss", 0)
        if s.has("tree"):
            raise s.error("hierarchical softmax (tree) is not supported by darkpy", "tree")
        c, h, w = self.in_shape
        if self.groups < 1 or (c * h * w) % self.groups:
            raise s.error(f"groups={self.groups} does not divide the {c * h * w} inputs", "groups")

    def forward(self, x, outputs):
        z = x / self.temperature
        if self.spatial:
            return torch.softmax(z, dim=1)
        b = x.shape[0]
        return torch.softmax(z.reshape(b, self.groups, -1), dim=2).view_as(x)


@register("dropout")
class DropoutLayer(Layer):
    """Identity at inference; in training zero with `probability` and scale by 1/(1-p)."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        self.probability = s.get_float("probability", 0.2)
        if not 0 <= self.probability < 1:
            raise s.error(f"must be in [0, 1), got {self.probability}", "probability")
        s.get_float("dropblock_size_rel", 0)
        s.get_int("dropblock_size_abs", 0)
        self.training_only(s, ("dropblock",))

    def forward(self, x, outputs):
        return F.dropout(x, self.probability, self.training) if self.probability > 0 else x


@register("batchnorm")
class BatchNormLayer(Layer):
    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        c = self.in_shape[0]
        self.bias = nn.Parameter(torch.zeros(c))
        self.bn_weight = nn.Parameter(torch.ones(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.zeros(c))

    def forward(self, x, outputs):
        return darknet_batch_norm(x, self.running_mean, self.running_var, self.bn_weight, self.bias, self.training)

    def darknet_arrays(self):
        return [self.bias, self.bn_weight, self.running_mean, self.running_var]


@register("activation")
class ActivationLayer(Layer):
    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        self.activation_name, self.activation = self.activation_of(section, "linear")

    def forward(self, x, outputs):
        return self.activation(x)


@register("empty")
class EmptyLayer(Layer):
    """[empty] / [silence]: passes the previous output on."""

    def forward(self, x, outputs):
        return x


@register("crop")
class CropLayer(Layer):
    """Centre crop (Darknet crops at random only while training), then x*2-1 unless noadjust."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        c, h, w = self.in_shape
        self.crop_h = s.get_int("crop_height", 1)
        self.crop_w = s.get_int("crop_width", 1)
        noadjust = s.get_int("noadjust", 0)
        self.scale, self.shift = (1.0, 0.0) if noadjust else (2.0, -1.0)
        s.get_float("angle", 0)
        s.get_float("saturation", 1)
        s.get_float("exposure", 1)
        s.get_int("shift", 0)
        self.training_only(s, ("flip",))
        if not (1 <= self.crop_h <= h and 1 <= self.crop_w <= w):
            raise s.error(f"a {self.crop_w}x{self.crop_h} crop does not fit a {w}x{h} input", "crop_width")
        self.out_shape = (c, self.crop_h, self.crop_w)

    def forward(self, x, outputs):
        h, w = x.shape[-2:]
        top, left = (h - self.crop_h) // 2, (w - self.crop_w) // 2
        return x[..., top:top + self.crop_h, left:left + self.crop_w] * self.scale + self.shift


@register("cost")
class CostLayer(Layer):
    """A training loss in Darknet; at inference it has no truth and its output stays zero."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        self.cost_type = s.get_str("type", "sse")
        if self.cost_type not in ("sse", "masked", "smooth", "L1", "seg", "wgan"):
            raise s.error(f"unknown cost type '{self.cost_type}'", "type")
        s.get_float("scale", 1.0)
        s.get_float("ratio", 0.0)
        s.get_float("noobj", 1.0)
        s.get_float("thresh", 0.0)

    def forward(self, x, outputs):
        return torch.zeros_like(x)


@register("implicit")
class ImplicitLayer(Layer):
    """A learned constant (filters x atoms), the same for every image; the input is ignored."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        mean = s.get_float("mean", 0.0)
        std = s.get_float("std", 0.2)
        filters = s.get_int("filters", 128)
        atoms = s.get_int("atoms", 1)
        if filters < 1 or atoms < 1:
            raise s.error("filters and atoms must be at least 1", "filters")
        self.weight = nn.Parameter(mean + torch.empty(filters * atoms).uniform_(-std, std))
        self.out_shape = (filters, atoms, 1)

    def forward(self, x, outputs):
        # The parameter itself would carry requires_grad into inference_mode / no_grad callers (their .numpy()
        # fails): outside autograd the output is a detached view.
        weight = self.weight if torch.is_grad_enabled() else self.weight.detach()
        return weight.view(1, *self.out_shape).expand(x.shape[0], *self.out_shape)

    def darknet_arrays(self):
        return [self.weight]
