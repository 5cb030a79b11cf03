"""Changing resolution: [upsample] (src/upsample_layer.c), [reorg3d] and [reorg] (src/reorg_layer.c,
src/reorg_old_layer.c, blas.c reorg_cpu)."""
import torch
import torch.nn.functional as F

from darkpy.layers.base import BuildContext, Layer, register


@register("upsample")
class UpsampleLayer(Layer):
    """Nearest-neighbour x stride, times `scale`; a negative stride sums |stride| x |stride| blocks (x scale)."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        stride = s.get_int("stride", 2)
        self.scale = s.get_float("scale", 1.0)
        if stride == 0:
            raise s.error("must not be 0", "stride")
        self.reverse = stride < 0
        self.stride = abs(stride)
        c, h, w = self.in_shape
        if self.reverse:
            self.out_shape = (c, h // self.stride, w // self.stride)
            if min(self.out_shape[1:]) < 1:
                raise s.error(f"downsampling {w}x{h} by {self.stride} leaves nothing", "stride")
        else:
            self.out_shape = (c, h * self.stride, w * self.stride)

    def forward(self, x, outputs):
        if self.reverse:
            # Darknet's downsample is the adjoint of its upsample: a sum, not an average.
            h, w = self.out_shape[1:]
            x = x[..., :h * self.stride, :w * self.stride]
            y = F.avg_pool2d(x, self.stride, divisor_override=1)
        else:
            # each pixel copied stride x stride times; interpolate keeps the input's memory format
            # (repeat_interleave returned NCHW from channels_last and took 9x as long)
            y = F.interpolate(x, scale_factor=self.stride, mode="nearest")
        return y * self.scale if self.scale != 1.0 else y

    def describe(self) -> str:
        return f"            {'/' if self.reverse else 'x'}{self.stride:2d}"


def reorg_flat(x: torch.Tensor, w: int, h: int, c: int, stride: int) -> torch.Tensor:
    """Darknet's reorg_cpu(x, w, h, c, batch, stride, forward=0) on a (B, ...) tensor, returned flat (B, c*h*w).

    reorg_cpu walks (k, j, i) over a c x h x w volume and fills it from element
    (k % (c/s^2), j*s + off/s, i*s + off%s) of x seen as a (c/s^2) x (h*s) x (w*s) volume, off = k / (c/s^2).
    """
    b = x.shape[0]
    big = x.reshape(b, c // (stride * stride), h, stride, w, stride)
    return big.permute(0, 3, 5, 1, 2, 4).reshape(b, -1)


class _Reorg(Layer):
    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        self.stride = s.get_int("stride", 1)
        # Darknet's reverse reorg (depth-to-space) walks buffers with mismatched dimensions; its result is not
        # pinned down by a reference here, so darkpy refuses it rather than guess.
        self.unsupported_if_set(s, ("reverse", "flatten", "extra"))
        if self.stride < 1:
            raise s.error("must be at least 1", "stride")
        c, h, w = self.in_shape
        st = self.stride
        if h % st or w % st:
            raise s.error(f"a {w}x{h} input is not divisible by stride {st}", "stride")
        self.out_shape = (c * st * st, h // st, w // st)

    def describe(self) -> str:
        return f"            /{self.stride:2d}"


@register("reorg3d")
class Reorg3dLayer(_Reorg):
    """Space-to-depth: output channel off*c + k holds input channel k at offset off = dy*s + dx."""

    def forward(self, x, outputs):
        c, h, w = self.out_shape
        flat = reorg_flat(x, w, h, c, self.stride)
        return flat.view(x.shape[0], *self.out_shape)


@register("reorg")
class ReorgOldLayer(_Reorg):
    """The historic YOLOv2 reorg: reorg_cpu called with the *input* dimensions (another channel order)."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        c = self.in_shape[0]
        if c % (self.stride * self.stride):
            raise section.error(f"{c} channels are not divisible by stride^2 (the old reorg needs it)", "stride")

    def forward(self, x, outputs):
        c, h, w = self.in_shape
        flat = reorg_flat(x, w, h, c, self.stride)
        return flat.view(x.shape[0], *self.out_shape)
