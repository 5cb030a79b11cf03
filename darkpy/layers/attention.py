"""Multiplicative attention: [sam] (src/sam_layer.c) and [scale_channels] (src/scale_channels_layer.c)."""
from darkpy.layers.base import BuildContext, Layer, register


def _from_layer(section, ctx: BuildContext) -> int:
    value = section.get_int("from")
    if value is None:
        raise section.error("is required", "from")
    return ctx.resolve(section, "from", value)


@register("sam")
class SamLayer(Layer):
    """Spatial attention: previous output times the `from` layer's output, element by element."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        self.inputs = [_from_layer(section, ctx)]
        self.activation_name, self.activation = self.activation_of(section, "linear")
        other = ctx.shapes[self.inputs[0]]
        if other != self.in_shape:
            raise section.error(f"layer {self.inputs[0]} has shape {other} but the previous layer has "
                                f"{self.in_shape}; [sam] multiplies equal shapes", "from")
        self.out_shape = other

    def forward(self, x, outputs):
        return self.activation(x * outputs[self.inputs[0]])

    def describe(self) -> str:
        return str(self.inputs[0])


@register("scale_channels")
class ScaleChannelsLayer(Layer):
    """Scale the `from` layer's output by the previous layer: per channel (1x1xC input) or, with scale_wh=1,
    per position (WxHx1 input). The output has the `from` layer's shape."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        self.inputs = [_from_layer(section, ctx)]
        self.scale_wh = section.get_int("scale_wh", 0)
        self.activation_name, self.activation = self.activation_of(section, "linear")
        other = ctx.shapes[self.inputs[0]]
        c, h, w = self.in_shape
        fits = (h, w) == other[1:] and c == 1 if self.scale_wh else (h, w) == (1, 1) and c == other[0]
        if not fits:
            expected = f"1x{other[1]}x{other[2]}" if self.scale_wh else f"{other[0]}x1x1"
            raise section.error(f"the previous layer is {c}x{h}x{w} (CxHxW) but scaling layer "
                                f"{self.inputs[0]} of shape {other} needs {expected}", "from")
        self.out_shape = other

    def forward(self, x, outputs):
        return self.activation(outputs[self.inputs[0]] * x)

    def describe(self) -> str:
        return str(self.inputs[0])
