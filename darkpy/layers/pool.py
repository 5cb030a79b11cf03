"""Pooling: [maxpool] (src/maxpool_layer.c), [local_avgpool], [avgpool] (src/avgpool_layer.c)."""
import torch
import torch.nn.functional as F

from darkpy.layers.base import BuildContext, Layer, register, untraced_inference
from darkpy.layers.conv import Antialias, ConvLayer
from darkpy.layers.route import ChannelParts, RouteLayer

FLT_MAX = torch.finfo(torch.float32).max  # Darknet's out-of-image taps count as -FLT_MAX


class _WindowPool(Layer):
    """Geometry shared by maxpool and local_avgpool: `padding` is the *total* padding, the window starts at
    -padding/2 (C integer division), so odd padding puts the extra row/column on the right/bottom."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        c, h, w = self.in_shape
        s = section
        stride = s.get_int("stride", 1)
        self.stride_x = s.get_int("stride_x", stride)
        self.stride_y = s.get_int("stride_y", stride)
        self.size = s.get_int("size", stride)
        self.padding = s.get_int("padding", self.size - 1)
        for key, value in (("size", self.size), ("stride", min(self.stride_x, self.stride_y))):
            if value < 1:
                raise s.error(f"must be at least 1, got {value}", key)
        self.out_hw = ((h + self.padding - self.size) // self.stride_y + 1,
                       (w + self.padding - self.size) // self.stride_x + 1)
        if min(self.out_hw) < 1:
            raise s.error(f"a {self.size}x{self.size} window gives no output on a {w}x{h} input", "size")
        self.out_shape = (c, *self.out_hw)

    def _pads(self):
        """(left, right, top, bottom) padding that makes plain unpadded pooling visit exactly Darknet's windows."""
        _, h, w = self.in_shape
        left = top = self.padding // 2
        right = max(0, (self.out_hw[1] - 1) * self.stride_x - left + self.size - w)
        bottom = max(0, (self.out_hw[0] - 1) * self.stride_y - top + self.size - h)
        return left, right, top, bottom

    def _pad(self, x, value):
        return F.pad(x, self._pads(), value=value)

    def _crop(self, y):
        return y[..., :self.out_hw[0], :self.out_hw[1]]

    def bflops(self) -> float:
        return self.size * self.size * self.in_shape[0] * self.out_hw[0] * self.out_hw[1] / 1e9

    def describe(self) -> str:
        return f"      {self.size:2d}x{self.size:2d}/{self.stride_x:2d}"


@register("maxpool")
class MaxPoolLayer(_WindowPool):
    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        self.unsupported_if_set(s, ("maxpool_zero_nonmax",))
        self.depth = s.get_int("maxpool_depth", 0)
        self.out_channels = s.get_int("out_channels", 1)
        self.antialiasing = s.get_int("antialiasing", 0)
        c, h, w = self.in_shape
        self.blur = None
        self.rows_in_place = False  # see reads_alone
        if self.depth:
            # Channel-wise max: out channel g = max over input channels g, g + out_c, g + 2 out_c, ...
            if self.out_channels < 1:
                raise s.error("must be at least 1", "out_channels")
            self.out_shape = (self.out_channels, h, w)
            return
        if self.antialiasing:
            # As in Darknet: the max runs with stride 1, the blur takes the stride.
            sx, sy = self.stride_x, self.stride_y
            self.stride_x = self.stride_y = 1
            self.out_hw = (h + self.padding - self.size + 1, w + self.padding - self.size + 1)
            self.blur = Antialias(self.antialiasing, c, sy, sx, *self.out_hw)
            self.out_shape = (c, *self.blur.out_hw)

    def forward(self, x, outputs):
        if isinstance(x, ChannelParts):
            return self._taps_max_of_parts(x)
        if self.depth:
            b, _, h, w = x.shape
            # The channel count from in_shape (a Python int), not x.shape: traced for ONNX, x.shape arithmetic
            # becomes graph ops, and ONNX's integer Div truncates where Python's // floors (wrong ceil here).
            c = self.in_shape[0]
            groups = -(-c // self.out_channels)
            padded = F.pad(x, (0, 0, 0, 0, 0, groups * self.out_channels - c), value=-FLT_MAX)
            return padded.view(b, groups, self.out_channels, h, w).amax(dim=1)
        if self._taps_max_pays(x):
            y = self._taps_max(x, rows_in_place=self.rows_in_place and _dropped_by_the_model(outputs))
        else:
            y = self._max_pool(x)
        return self.blur(y) if self.blur is not None else y

    def _taps_max_pays(self, x) -> bool:
        """In inference on channels_last input, a small unpadded window is faster as elementwise maxima of strided
        views (each reads whole pixels' channels) than as max_pool2d, which also computes the argmax indices:
        0.16 instead of 0.6 ms for 2x2/2 on 16x416x416 (two threads). Its gradient would split ties, so training
        keeps max_pool2d."""
        return self.size <= 3 and not any(self._pads()) and not (torch.is_grad_enabled() and x.requires_grad) \
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)

    def _taps_max(self, x, out=None, rows_in_place: bool = False):
        """The window's maximum taken along its rows, then along its columns: size-1 elementwise maxima each (the
        maximum is exact in any order), the first pass already shrinking the tensor by the vertical stride. With
        rows_in_place the first pass writes into the first row of each window in x, which nothing reads any more:
        memory just read and still in the cache, where a new tensor's is not (1–2 % of yolov3-tiny's time at two
        threads, docs/latency.md)."""
        (out_h, out_w), sy, sx = self.out_hw, self.stride_y, self.stride_x
        rows = [x[..., dy:dy + (out_h - 1) * sy + 1:sy, :] for dy in range(self.size)]
        y = _elementwise_max(rows, out=rows[0] if rows_in_place else None)
        return _elementwise_max([y[..., dx:dx + (out_w - 1) * sx + 1:sx] for dx in range(self.size)], out)

    def reads_alone(self, before: Layer) -> None:
        """Told, for inference on the CPU (prepare_for_inference), that this pool alone reads `before`, the layer
        before it. When the pool takes its windows as maxima of strided views (at most 3x3, no padding, no
        maxpool_depth or antialiasing), a concatenating route then hands it its parts unjoined (ChannelParts), and
        a convolution's output, a tensor of its own, takes the first pass's maxima in its rows when the windows
        do not overlap vertically (size <= stride)."""
        by_views = self.size <= 3 and not any(self._pads()) and not self.depth and self.blur is None
        if isinstance(before, RouteLayer):
            before.parts_to_pool = by_views
        self.rows_in_place = by_views and isinstance(before, ConvLayer) and self.size <= self.stride_y

    def _taps_max_of_parts(self, parts: ChannelParts) -> torch.Tensor:
        """The pooled concatenation of `parts`: each part's maxima written into its channels of the output."""
        first = parts[0]
        out = torch.empty((first.shape[0], self.out_shape[0], *self.out_hw), dtype=first.dtype, device=first.device,
                          memory_format=torch.channels_last)
        start = 0
        for part in parts:
            stop = start + part.shape[1]
            self._taps_max(part, out=out[:, start:stop])
            start = stop
        return out

    def _max_pool(self, x):
        """Darknet's windows start at -left + i*stride. PyTorch's own padding (implicitly -inf, symmetric, at most
        half the window) starts them at -P + j*stride: when that lines up, pool with it and take the matching
        outputs (no padded copy of the input); otherwise pad explicitly with -FLT_MAX."""
        left, right, top, bottom = self._pads()
        pad_w, pad_h = max(left, right), max(top, bottom)
        if pad_w <= self.size // 2 and pad_h <= self.size // 2 and \
                (pad_w - left) % self.stride_x == 0 and (pad_h - top) % self.stride_y == 0:
            y = F.max_pool2d(x, self.size, (self.stride_y, self.stride_x), (pad_h, pad_w))
            off_h, off_w = (pad_h - top) // self.stride_y, (pad_w - left) // self.stride_x
            return y[..., off_h:off_h + self.out_hw[0], off_w:off_w + self.out_hw[1]]
        y = F.max_pool2d(self._pad(x, -FLT_MAX), self.size, (self.stride_y, self.stride_x))
        return self._crop(y)

    def bflops(self) -> float:
        return 0.0 if self.depth else super().bflops()


def _dropped_by_the_model(outputs) -> bool:
    """Whether the previous layer's output may be overwritten: Darknet.forward_layers stored None for it (no later
    layer reads it and the caller did not ask for every layer's output), and no gradient or trace records the
    operations on it."""
    return bool(outputs) and outputs[-1] is None and untraced_inference()


def _elementwise_max(tensors, out=None):
    if len(tensors) == 1:
        return tensors[0] if out is None else out.copy_(tensors[0])
    y = torch.maximum(tensors[0], tensors[1], out=out)
    for tensor in tensors[2:]:
        torch.maximum(y, tensor, out=y)
    return y


@register("local_avgpool")
class LocalAvgPoolLayer(_WindowPool):
    """Average over the taps inside the image only (padding is not counted)."""

    def forward(self, x, outputs):
        stride = (self.stride_y, self.stride_x)
        total = F.avg_pool2d(self._pad(x, 0.0), self.size, stride, divisor_override=1)
        ones = torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
        count = F.avg_pool2d(self._pad(ones, 0.0), self.size, stride, divisor_override=1)
        return self._crop(total / count.clamp(min=1))


@register("avgpool")
class AvgPoolLayer(Layer):
    """Global average: (c, h, w) -> (c, 1, 1)."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        self.out_shape = (self.in_shape[0], 1, 1)

    def forward(self, x, outputs):
        return x.mean(dim=(2, 3), keepdim=True)
