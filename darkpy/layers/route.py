"""Joining layers: [route] (src/route_layer.c) and [shortcut] (src/shortcut_layer.c, blas.c shortcut_multilayer_cpu)."""
from typing import List

import torch
from torch import nn

from darkpy.activations import activate_fresh
from darkpy.layers.base import BuildContext, Layer, register, untraced_inference


def _layer_list(section, ctx: BuildContext, key: str) -> List[int]:
    values = section.get_int_list(key)
    if not values:
        raise section.error("is required", key)
    return [ctx.resolve(section, key, v) for v in values]


class ChannelParts(list):
    """The parts a concatenating [route] has not joined: in inference, what it hands the max-pool right after it
    when nothing else reads it (prepare_for_inference). The pool writes each part's maxima straight into that
    part's channels of its output, since max-pooling a concatenation equals concatenating the parts' max-pools;
    the concatenation is then never written nor read again (yolov4-tiny: 0.3 ms of 20, docs/latency.md)."""

    def joined(self) -> torch.Tensor:
        return torch.cat(self, dim=1)


@register("route")
class RouteLayer(Layer):
    """Concatenate, along channels, the slice [group_id/groups] of each listed layer's channels.

    groups/group_id is applied to every input separately, then the slices are joined (not join-then-slice).
    """

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        self.inputs = _layer_list(s, ctx, "layers")
        self.groups = s.get_int("groups", 1)
        self.group_id = s.get_int("group_id", 0)
        if self.groups < 1 or not 0 <= self.group_id < self.groups:
            raise s.error(f"group_id={self.group_id} with groups={self.groups} selects no channels", "group_id")
        shapes = [ctx.shapes[i] for i in self.inputs]
        h, w = shapes[0][1:]
        for i, shape in zip(self.inputs, shapes):
            if shape[1:] != (h, w):
                raise s.error(f"layers have different sizes: layer {self.inputs[0]} is {w}x{h}, layer {i} is "
                              f"{shape[2]}x{shape[1]} (Darknet: 'The width and height of the input layers are "
                              f"different')", "layers")
            if shape[0] % self.groups:
                raise s.error(f"groups={self.groups} does not divide the {shape[0]} channels of layer {i}", "groups")
        self.slices = [(c // self.groups * self.group_id, c // self.groups * (self.group_id + 1))
                       for c, _, _ in shapes]
        self.out_shape = (sum(b - a for a, b in self.slices), h, w)
        self.parts_to_pool = False  # hand the next layer, a max-pool, the parts unjoined (MaxPoolLayer.reads_alone)

    def forward(self, x, outputs):
        parts = [outputs[i][:, a:b] for i, (a, b) in zip(self.inputs, self.slices)]
        if len(parts) == 1:
            return parts[0]
        # the pool's strided-view maxima have no gradient that splits ties as max_pool2d's, and a trace records
        # the ordinary operators
        if self.parts_to_pool and untraced_inference():
            return ChannelParts(parts)
        return torch.cat(parts, dim=1)

    def describe(self) -> str:
        text = " ".join(str(i) for i in self.inputs)
        return text + (f" /{self.groups}({self.group_id})" if self.groups > 1 else "")


@register("shortcut")
class ShortcutLayer(Layer):
    """Add the outputs of the `from` layers to the previous layer's output, then the activation.

    Where channel counts differ (the PRN case) only the channels both have are added: the output keeps the
    previous layer's shape; extra channels of a `from` layer are ignored and missing ones pass through.
    Where sizes differ (the resnet cfgs), the maps are matched as the original pjreddie Darknet does
    (src/blas.c shortcut_cpu; AlexeyAB Darknet asserts instead): see `_resampled`.
    With weights_type, each input is scaled by a (normalised) weight per input or per input and channel.
    """

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        self.inputs = _layer_list(s, ctx, "from")
        self.activation_name, self.activation = self.activation_of(s, "linear")
        c, h, w = self.in_shape
        self.steps = [self._step(s, i, ctx.shapes[i]) for i in self.inputs]
        self.shared_channels = [min(c, ctx.shapes[i][0]) for i in self.inputs]
        self.weights_type = s.get_str("weights_type", "none")
        self.normalization = s.get_str("weights_normalization", "none")
        aliases = {"per_layer": "per_feature", "avg_relu": "relu"}
        self.weights_type = aliases.get(self.weights_type, self.weights_type)
        self.normalization = aliases.get(self.normalization, self.normalization)
        if self.weights_type not in ("none", "per_feature", "per_channel"):
            raise s.error(f"unknown weights_type '{self.weights_type}' (none, per_feature, per_channel)",
                          "weights_type")
        self.weight = None
        if self.weights_type != "none":
            if self.normalization not in ("relu", "softmax"):
                # Darknet stops with "Incorrect weights_normalization" in this case too.
                raise s.error(f"'{self.normalization}' is not relu or softmax, which weights_type="
                              f"{self.weights_type} requires", "weights_normalization")
            per = c if self.weights_type == "per_channel" else 1
            self.weight = nn.Parameter(torch.ones(len(self.inputs) + 1, per))  # Darknet initialises to 1

    def _step(self, section, index: int, shape) -> int:
        """How a `from` map of another size meets the previous layer's, as pjreddie's shortcut_cpu matches them:
        a larger map is read every `stride` pixels (stride = its width // the previous width), a smaller one is
        added at every `sample`-th pixel (sample = the previous width // its width). Both ratios must agree in
        height and width, as shortcut_cpu asserts. Returns stride (> 0), -sample (< 0), or 1 for equal sizes."""
        (_, h1, w1), (_, h2, w2) = shape, self.in_shape
        if (h1, w1) == (h2, w2):
            return 1
        if w1 // w2 == h1 // h2 and w2 // w1 == h2 // h1:
            return w1 // w2 if w1 > w2 else -(w2 // w1)
        raise section.error(f"layer {index} is {w1}x{h1} but the previous layer is {w2}x{h2}: a shortcut adds maps "
                            f"of the same size, or of sizes in the same whole ratio across and down", "from")

    def _resampled(self, add: torch.Tensor, step: int) -> torch.Tensor:
        """A `from` map brought to the previous layer's (h, w): a larger one sampled with the stride (the pixels at
        multiples of it); a smaller one placed at every `sample`-th pixel, zero between (those pass through)."""
        h, w = self.in_shape[1:]
        if step > 0:
            return add[..., ::step, ::step][..., :h, :w]
        sample = -step
        placed = add.new_zeros(*add.shape[:2], h, w)
        placed[..., :add.shape[2] * sample:sample, :add.shape[3] * sample:sample] = add
        return placed

    def _normalized_weights(self) -> torch.Tensor:
        """(n+1, per) weights after Darknet's per-element normalisation across the n+1 inputs."""
        w = self.weight
        if self.normalization == "relu":
            r = torch.relu(w)
            return r / (1e-4 + r.sum(dim=0, keepdim=True))
        e = torch.exp(w - w.max(dim=0, keepdim=True).values)
        return e / (1e-4 + e.sum(dim=0, keepdim=True))

    def forward(self, x, outputs):
        if self.weight is None:
            weights = [None] * (len(self.inputs) + 1)
        else:
            nw = self._normalized_weights()
            weights = [nw[k].view(1, -1, 1, 1) for k in range(nw.shape[0])]
        out = x if weights[0] is None else x * weights[0]
        c = x.shape[1]
        for k, (i, shared, step) in enumerate(zip(self.inputs, self.shared_channels, self.steps), start=1):
            add = outputs[i][:, :shared]
            if step != 1:
                add = self._resampled(add, step)
            if weights[k] is not None:
                add = add * (weights[k] if weights[k].shape[1] == 1 else weights[k][:, :shared])
            out = out + add if shared == c else torch.cat([out[:, :shared] + add, out[:, shared:]], dim=1)
        return activate_fresh(self.activation_name, out)  # `out` is a new sum nothing else reads

    def darknet_arrays(self):
        return [] if self.weight is None else [self.weight]

    def bflops(self) -> float:
        c, h, w = self.out_shape
        return c * h * w * len(self.inputs) * (2 if self.weight is not None else 1) / 1e9

    def describe(self) -> str:
        return " ".join(str(i) for i in self.inputs)
