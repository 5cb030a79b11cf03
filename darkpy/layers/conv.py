"""[convolutional] (src/convolutional_layer.c): grouped/dilated/strided conv, batch norm, activation, antialiasing,
XNOR (binary) convolution."""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from darkpy.activations import ONEDNN_POST_OPS, activate_fresh
from darkpy.layers.base import BuildContext, Layer, register, untraced_inference

BN_EPS = 1e-5  # Darknet's batch norm epsilon (.00001f)
GPU_ROLLING_FACTOR = 0.01  # cuDNN exponentialAverageFactor in forward_batchnorm_layer_gpu


def darknet_conv_out(size_in: int, padding: int, size: int, stride: int) -> int:
    """Darknet's output size; dilation is not part of it (convolutional_out_height)."""
    return (size_in + 2 * padding - size) // stride + 1


def darknet_conv2d(x, weight, bias, stride, padding, dilation, groups, out_hw):
    """Convolve with Darknet's geometry: taps at out*stride - padding*dilation + k*dilation, `out_hw` outputs.

    For odd kernels with pad=size/2 this is exactly torch's conv2d. For other combinations (even kernels,
    dilation with explicit padding) Darknet's output count differs from torch's: pad more on the right/bottom
    (zeros, as im2col reads outside the image) and crop.
    """
    p = padding * dilation
    out_h, out_w = out_hw
    h, w = x.shape[-2:]
    kh, kw = weight.shape[-2:]
    torch_h = (h + 2 * p - dilation * (kh - 1) - 1) // stride[0] + 1
    torch_w = (w + 2 * p - dilation * (kw - 1) - 1) // stride[1] + 1
    if (torch_h, torch_w) == (out_h, out_w):
        return F.conv2d(x, weight, bias, stride, p, dilation, groups)
    need_h = (out_h - 1) * stride[0] + dilation * (kh - 1) + 1
    need_w = (out_w - 1) * stride[1] + dilation * (kw - 1) + 1
    x = F.pad(x, (p, max(p, need_w - w - p), p, max(p, need_h - h - p)))
    y = F.conv2d(x, weight, bias, stride, 0, dilation, groups)
    return y[..., :out_h, :out_w]


class PackedConv:
    """A folded convolution (bias, no batch norm) prepared for oneDNN on the CPU: the weights reordered once into
    oneDNN's blocked layout (instead of at every call) and the activation applied as a post-op inside the
    convolution when oneDNN computes it exactly (activations.ONEDNN_POST_OPS). The outputs are those of F.conv2d
    + the activation on channels_last tensors, bit for bit on 3x3 layers and to float rounding where torch sums a
    1x1 convolution in another order (tests/layers/test_packed_conv.py); about 20 % less time per image at batch 1
    (docs/latency.md).

    It is a copy of the weights at packing time: `matches` refuses it once they have changed (a weights load, an
    optimiser step, fuse()) and the layer then runs its ordinary path. A deep copy of the model drops it."""

    def __init__(self, layer: "ConvLayer", weight: torch.Tensor):
        self.attr, self.scalars = ONEDNN_POST_OPS.get(layer.activation_name, ("none", []))
        self.activated = layer.activation_name in ONEDNN_POST_OPS
        self.padding = [layer.padding * layer.dilation] * 2
        self.stride, self.dilation, self.groups = list(layer.stride), [layer.dilation] * 2, layer.groups
        self.source = (weight.data_ptr(), weight._version)
        self.weight = torch.ops.mkldnn._reorder_convolution_weight(
            weight.detach(), self.padding, self.stride, self.dilation, self.groups, [1, *layer.in_shape])

    @staticmethod
    def available() -> bool:
        """Whether this torch has oneDNN's fused convolution (CPU builds with MKLDNN)."""
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")

    def matches(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Usable for this call: a float32 CPU input, no gradient wanted, the weights those packed, not traced
        (an ONNX or TorchScript trace records the ordinary operators)."""
        return (x.device.type == "cpu" and x.dtype == torch.float32 and untraced_inference()
                and (weight.data_ptr(), weight._version) == self.source)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, bias.detach(), self.padding, self.stride,
                                                       self.dilation, self.groups, self.attr, self.scalars, None)

    # oneDNN's opaque tensors neither copy nor pickle: a copied or pickled model has no packed weights and runs the
    # ordinary path until it is packed again
    def __deepcopy__(self, memo) -> None:
        return None

    def __reduce__(self):
        return type(None), ()


def darknet_batch_norm(x, running_mean, running_var, weight, bias, training: bool):
    """Batch norm as Darknet's GPU build computes it (cuDNN, src/batchnorm_layer.c forward_batchnorm_layer_gpu),
    the build Darknet users train with: eps 1e-5; in training the biased batch variance for normalising and the
    unbiased one in the rolling average, with factor .01 — which is torch's own batch_norm.

    Darknet's CPU build differs (N-1 variance, factor .1, inexact backward): docs/train.md says why darkpy
    follows the GPU build.
    """
    if training and _channels_last_on_cpu(x):
        return ChannelsLastTrainingBatchNorm.apply(x, weight, bias, running_mean, running_var)
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, GPU_ROLLING_FACTOR, BN_EPS)


def _channels_last_on_cpu(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and not x.is_contiguous() \
        and x.is_contiguous(memory_format=torch.channels_last)


def channels_last_batch_moments(x: torch.Tensor):
    """The mean and biased variance of each channel of a channels_last (N, C, H, W) tensor, in float64, to float32
    accuracy (about 1e-7 relative).

    torch's channels_last batch norm sums a channel's N*H*W values one after another in float32: at 16x16x224x224
    its variance is 1.4e-4 (relative) off, enough to change which input of a near-tied max-pool window is the
    largest (the train-steps parity, v2tiny-region at k = 5). Here the same memory, viewed as N*H rows of W*C
    values, gets torch's 2-D statistics per column (sums of N*H values; batch_norm_update_stats computes the
    statistics alone, a third of the time of a 2-D batch norm, which also writes its output), and the W columns of
    a channel are combined in float64 (the law of total variance)."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h, w * c)  # a view: channels_last memory is (N, H, W, C)
    column_mean, column_var = torch.batch_norm_update_stats(rows, None, None, 0.0)
    column_mean, column_var = column_mean.double().view(w, c), column_var.double().view(w, c)
    mean = column_mean.mean(0)
    return mean, (column_var + (column_mean - mean) ** 2).mean(0)


class ChannelsLastTrainingBatchNorm(torch.autograd.Function):
    """darknet_batch_norm in training on a channels_last CPU tensor (darkpy trains in channels_last on the CPU):
    the batch statistics from channels_last_batch_moments, then torch's own normalisation and backward kernels,
    given those statistics. The result is that of the contiguous kernel to float rounding."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var):
        mean, var = channels_last_batch_moments(x)
        count = x.numel() // x.shape[1]
        with torch.no_grad():  # cuDNN's rolling statistics: factor .01, the unbiased variance
            running_mean.copy_(GPU_ROLLING_FACTOR * mean + (1 - GPU_ROLLING_FACTOR) * running_mean.double())
            unbiased = var * count / max(count - 1, 1)
            running_var.copy_(GPU_ROLLING_FACTOR * unbiased + (1 - GPU_ROLLING_FACTOR) * running_var.double())
        mean, invstd = mean.float(), (var + BN_EPS).rsqrt().float()
        scale = weight * invstd
        ctx.save_for_backward(x, weight, mean, invstd)
        return torch.addcmul((bias - mean * scale)[:, None, None], x, scale[:, None, None])

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, None, None, mean, invstd, True, BN_EPS, list(ctx.needs_input_grad[:3]))
        return grad_x, grad_weight, grad_bias, None, None


def binarized_weights(weight: torch.Tensor) -> torch.Tensor:
    """binarize_weights (src/convolutional_layer.c): each filter's weights become +mean|w| where w > 0, else
    -mean|w|. The gradient passes straight through to the real weights, which Darknet updates."""
    mean = weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    binary = torch.where(weight > 0, mean, -mean)
    return weight + (binary - weight).detach()


def binarized_input(x: torch.Tensor) -> torch.Tensor:
    """binarize_cpu: +1 where x > 0, else -1; the gradient is hardtan's (1 inside (-1, 1), 0 outside), as
    backward_convolutional_layer applies it to an XNOR layer's input."""
    clamped = x.clamp(-1.0, 1.0)
    return clamped + (torch.where(x > 0, 1.0, -1.0).to(x) - clamped).detach()


def blur_kernel(antialiasing: int, channels: int) -> torch.Tensor:
    """The fixed depthwise blur Darknet appends to antialiased layers: 3x3 binomial, or 2x2 box for mode 2."""
    if antialiasing == 2:
        k = torch.full((2, 2), 0.25)
    else:
        v = torch.tensor([1.0, 2.0, 1.0])
        k = torch.outer(v, v) / 16.0
    return k.expand(channels, 1, *k.shape).contiguous()


class Antialias(nn.Module):
    """The blur sub-layer (antialiasing=1|2): depthwise, stride of the host layer, weights not in .weights."""

    def __init__(self, mode: int, channels: int, stride_y: int, stride_x: int, h: int, w: int):
        super().__init__()
        self.register_buffer("kernel", blur_kernel(mode, channels), persistent=False)
        self.padding = 0 if mode == 2 else 1
        self.stride = (stride_y, stride_x)
        size = self.kernel.shape[-1]
        self.out_hw = (darknet_conv_out(h, self.padding, size, stride_y), darknet_conv_out(w, self.padding, size,
                                                                                             stride_x))

    def forward(self, x):
        return darknet_conv2d(x, self.kernel, None, self.stride, self.padding, 1, x.shape[1], self.out_hw)


@register("convolutional")
class ConvLayer(Layer):
    """Convolution, then batch norm (no bias) or bias, then the activation; optional blur for antialiasing."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        c, h, w = self.in_shape
        s = section
        self.unsupported_if_set(s, ("binary", "flipped", "coordconv", "reverse", "dot"))
        self.training_only(s, ("sway", "rotate", "stretch", "stretch_sway", "assisted_excitation", "grad_centr"))
        s.get_float("angle", 15)
        self.xnor = s.get_int("xnor", 0)
        self.bin_output = s.get_int("bin_output", 0)
        n = s.get_int("filters", 1)
        size = s.get_int("size", 1)
        stride = s.get_int("stride", 1)
        sx, sy = s.get_int("stride_x", -1), s.get_int("stride_y", -1)
        stride_x = sx if sx >= 1 else stride
        stride_y = sy if sy >= 1 else stride
        dilation = s.get_int("dilation", 1)
        if size == 1:
            dilation = 1  # Darknet forces it
        pad = s.get_int("pad", 0)
        padding = size // 2 if pad else s.get_int("padding", 0)
        groups = 1 if self.xnor else s.get_int("groups", 1)  # make_convolutional_layer: no groups in XNOR
        self.batch_normalize = s.get_int("batch_normalize", 0) or (2 if s.get_int("cbn", 0) else 0)
        self.antialiasing = s.get_int("antialiasing", 0)
        self.activation_name, self.activation = self.activation_of(s, "logistic")
        for key, value in (("filters", n), ("size", size), ("stride", min(stride_x, stride_y)),
                           ("groups", groups), ("dilation", dilation)):
            if value < 1:
                raise s.error(f"must be at least 1, got {value}", key)
        if padding < 0:
            raise s.error(f"must not be negative, got {padding}", "padding")
        if c % groups or n % groups:
            raise s.error(f"groups={groups} must divide the input channels ({c}) and filters ({n})", "groups")

        self.size, self.groups, self.dilation, self.padding = size, groups, dilation, padding
        self.filters = n
        # Antialiasing: the convolution itself runs with stride 1, the blur takes the stride.
        conv_sy, conv_sx = (1, 1) if self.antialiasing else (stride_y, stride_x)
        self.stride = (conv_sy, conv_sx)
        out_h = darknet_conv_out(h, padding, size, conv_sy)
        out_w = darknet_conv_out(w, padding, size, conv_sx)
        if out_h < 1 or out_w < 1:
            raise s.error(f"a {size}x{size} kernel with stride {stride} and padding {padding} gives no output "
                          f"on a {w}x{h} input", "size")
        self.conv_hw = (out_h, out_w)

        self._make_parameters(s, ctx, c)
        self.fused = False
        self.packed: Optional[PackedConv] = None

        self.blur = Antialias(self.antialiasing, n, stride_y, stride_x, out_h, out_w) if self.antialiasing else None
        final_h, final_w = self.blur.out_hw if self.blur else (out_h, out_w)
        self.out_shape = (n, final_h, final_w)

    def _make_parameters(self, s, ctx: BuildContext, c: int) -> None:
        """Weights with Darknet's initialisation, or those of the layer `share_index` names."""
        n, size, groups = self.filters, self.size, self.groups
        share = s.get_int("share_index", None)
        self.share_index = None
        if share is not None:
            self.share_index = ctx.resolve(s, "share_index", share)
            other = ctx.layers[self.share_index]
            if not isinstance(other, ConvLayer) or other.weight.shape != (n, c // groups, size, size) \
                    or other.batch_normalize != self.batch_normalize:
                raise s.error(f"layer {self.share_index} is not a convolution of the same shape", "share_index")
            self.shared = [other]  # a list keeps the other layer out of this module's parameters
            return
        fan_in = c // groups * size * size
        bound = (2.0 / fan_in) ** 0.5  # Darknet's init: U(-1, 1) * sqrt(2 / fan_in)
        self.weight = nn.Parameter(torch.empty(n, c // groups, size, size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n))
        if self.batch_normalize:
            self.bn_weight = nn.Parameter(torch.ones(n))
            self.register_buffer("running_mean", torch.zeros(n))
            self.register_buffer("running_var", torch.zeros(n))  # calloc'd in Darknet

    # Parameters live on the owner when share_index is used.
    def _owner(self) -> "ConvLayer":
        return self.shared[0] if self.share_index is not None else self

    def forward(self, x, outputs):
        owner = self._owner()
        weight, padding = owner.weight, self.padding
        if self.packed is not None and not self.training and self.packed.matches(x, weight):
            y = self.packed(x, owner.bias)
            y = y if self.packed.activated else activate_fresh(self.activation_name, y)
            return self.blur(y) if self.blur is not None else y
        if self.xnor:
            x, weight, padding = self._xnor_operands(x), binarized_weights(weight), 0
        if self.batch_normalize and not owner.fused:
            y = darknet_conv2d(x, weight, None, self.stride, padding, self.dilation, self.groups, self.conv_hw)
            y = darknet_batch_norm(y, owner.running_mean, owner.running_var, owner.bn_weight, owner.bias,
                                   self.training)
        else:
            y = darknet_conv2d(x, weight, owner.bias, self.stride, padding, self.dilation, self.groups, self.conv_hw)
        # calculate_binary_weights (src/network.c) makes a bin_output XNOR layer linear for inference
        linear = self.xnor and self.bin_output and not self.training
        y = y if linear else activate_fresh(self.activation_name, y)
        return self.blur(y) if self.blur is not None else y

    def _xnor_operands(self, x: torch.Tensor) -> torch.Tensor:
        """The binarised input, padded as Darknet pads it: at inference its bit-packed XNOR GEMM
        (im2col_cpu_custom_bin, gemm_nn_custom_bin_mean_transposed) reads the border as a 0 bit, which counts as
        -1; in training its float path pads the ±1 input with 0."""
        p = self.padding * self.dilation
        return F.pad(binarized_input(x), (p, p, p, p), value=0.0 if self.training else -1.0)

    def darknet_arrays(self) -> List[torch.Tensor]:
        if self.share_index is not None:
            return []  # Darknet skips layers that share another layer's weights
        if self.batch_normalize and not self.dontloadscales:
            return [self.bias, self.bn_weight, self.running_mean, self.running_var, self.weight]
        return [self.bias, self.weight]

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold batch norm into the convolution as Darknet's fuse_conv_batchnorm does (computed in double)."""
        if not self.batch_normalize or self.fused or self.share_index is not None:
            return
        scale = self.bn_weight.double() / torch.sqrt(self.running_var.double() + BN_EPS)
        self.bias.copy_((self.bias.double() - scale * self.running_mean.double()).float())
        self.weight.copy_((self.weight.double() * scale.view(-1, 1, 1, 1)).float())
        self.fused = True

    def pack_for_cpu(self) -> bool:
        """Prepare the convolution for oneDNN (PackedConv) when it can run there: batch norm folded (or none),
        torch's output size equal to Darknet's, not XNOR, on the CPU in float32. Returns whether it did."""
        owner = self._owner()
        taps = self.dilation * (self.size - 1) + 1
        torch_hw = tuple(darknet_conv_out(n, self.padding * self.dilation, taps, s)
                         for n, s in zip(self.in_shape[1:], self.stride))
        usable = (not self.batch_normalize or owner.fused) and not self.xnor and torch_hw == self.conv_hw \
            and owner.weight.device.type == "cpu" and owner.weight.dtype == torch.float32 and PackedConv.available()
        self.packed = PackedConv(self, owner.weight) if usable else None
        return usable

    def bflops(self) -> float:
        n, c = self.filters, self.in_shape[0]
        nweights = c // self.groups * n * self.size * self.size
        bflops = 2.0 * nweights * self.conv_hw[0] * self.conv_hw[1] / 1e9
        return bflops / 32 if self.xnor else bflops  # Darknet counts an XNOR layer's binary operations as 1/32

    def describe(self) -> str:
        s = f"{self.filters:5d}"
        if self.groups > 1:
            s += f"/{self.groups:4d}"
        stride = self.blur.stride if self.blur else self.stride
        s += f" {self.size:2d} x{self.size:2d}/{stride[1]:2d}"
        if self.dilation > 1:
            s += f" (dil {self.dilation})"
        return s
