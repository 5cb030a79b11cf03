"""Layer semantics from Darknet's C code, checked by hand on small inputs, and one cfg using every layer type
(forward and backward)."""
import warnings

import numpy as np
import pytest
import torch

from darkpy.layers.conv import channels_last_batch_moments, darknet_batch_norm
from darkpy.model import Darknet

NET = "[net]\nwidth={w}\nheight={h}\nchannels={c}\n"


def build(tmp_path, body, w=8, h=8, c=2):
    path = tmp_path / "l.cfg"
    path.write_text(NET.format(w=w, h=h, c=c) + body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet.from_cfg(path).eval()


def run_all(model, x):
    with torch.no_grad():
        return model.forward_layers(x, keep_all=True)


def test_maxpool_pads_right_bottom_with_minus_infinity(tmp_path):
    # size=2 stride=1 (yolov3-tiny layer 11): padding=1 total, window offset -0: the extra column is on the right.
    model = build(tmp_path, "[maxpool]\nsize=2\nstride=1\n", w=3, h=2, c=1)
    x = -torch.arange(1.0, 7.0).view(1, 1, 2, 3)  # all negative: a zero pad would win
    out = run_all(model, x)[0][0, 0]
    expected = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    assert torch.equal(out, expected)


def test_maxpool_odd_size_stride2_gives_ceil_outputs(tmp_path):
    model = build(tmp_path, "[maxpool]\nsize=2\nstride=2\n", w=5, h=5, c=1)
    assert model.layers[0].out_shape == (1, 3, 3)
    x = torch.arange(25.0).view(1, 1, 5, 5)
    out = run_all(model, x)[0][0, 0]
    assert out[2, 2] == 24 and out[0, 0] == 6


def test_maxpool_depth_takes_strided_channels(tmp_path):
    model = build(tmp_path, "[maxpool]\nmaxpool_depth=1\nout_channels=2\n", w=1, h=1, c=5)
    x = torch.tensor([1.0, 9.0, 3.0, 2.0, 7.0]).view(1, 5, 1, 1)
    out = run_all(model, x)[0].flatten()
    assert out.tolist() == [7.0, 9.0]  # channel 0: max(1, 3, 7); channel 1: max(9, 2)


def test_local_avgpool_counts_only_inside_taps(tmp_path):
    model = build(tmp_path, "[local_avgpool]\nsize=3\nstride=1\n", w=3, h=3, c=1)
    x = torch.ones(1, 1, 3, 3)
    x[0, 0, 0, 0] = 4.0
    out = run_all(model, x)[0][0, 0]
    assert out[0, 0].item() == pytest.approx((4 + 1 + 1 + 1) / 4)
    assert out[1, 1].item() == pytest.approx((4 + 8) / 9)


def test_route_groups_apply_per_input(tmp_path):
    body = ("[convolutional]\nfilters=4\nactivation=linear\n[convolutional]\nfilters=2\nactivation=linear\n"
            "[route]\nlayers=0,1\ngroups=2\ngroup_id=1\n")
    model = build(tmp_path, body)
    outs = run_all(model, torch.rand(1, 2, 8, 8))
    assert model.layers[2].out_shape == (3, 8, 8)
    assert torch.equal(outs[2], torch.cat([outs[0][:, 2:4], outs[1][:, 1:2]], dim=1))


def test_partial_shortcut_adds_shared_channels_only(tmp_path):
    body = ("[convolutional]\nfilters=3\nactivation=linear\n[convolutional]\nfilters=5\nactivation=linear\n"
            "[shortcut]\nfrom=0\nactivation=leaky\n[convolutional]\nfilters=2\nactivation=linear\n"
            "[shortcut]\nfrom=1\nactivation=linear\n")
    model = build(tmp_path, body)
    outs = run_all(model, torch.rand(1, 2, 8, 8))
    a, b = outs[0], outs[1]
    added = torch.cat([b[:, :3] + a, b[:, 3:]], dim=1)  # from-layer has fewer channels: the rest pass through
    assert torch.allclose(outs[2], torch.nn.functional.leaky_relu(added, 0.1))
    assert torch.allclose(outs[4], outs[3] + outs[1][:, :2])  # from-layer has more: its extra channels ignored
    assert model.layers[4].out_shape == (2, 8, 8)


@pytest.mark.parametrize("weights_type, normalization", [("per_feature", "relu"), ("per_channel", "softmax")])
def test_weighted_shortcut_normalises_across_inputs(tmp_path, weights_type, normalization):
    body = ("[convolutional]\nfilters=2\nactivation=linear\n[convolutional]\nfilters=2\nactivation=linear\n"
            f"[shortcut]\nfrom=0\nweights_type={weights_type}\nweights_normalization={normalization}\n")
    model = build(tmp_path, body)
    layer = model.layers[2]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.0], [1.5, 2.0]])[:, :layer.weight.shape[1]])
    outs = run_all(model, torch.rand(1, 2, 8, 8))
    w = layer.weight.detach().numpy()
    if normalization == "relu":
        r = np.maximum(w, 0)
        n = r / (1e-4 + r.sum(axis=0))
    else:
        e = np.exp(w - w.max(axis=0))
        n = e / (1e-4 + e.sum(axis=0))
    n = torch.from_numpy(n).float()
    expected = outs[1] * n[0].view(1, -1, 1, 1) + outs[0] * n[1].view(1, -1, 1, 1)
    assert torch.allclose(outs[2], expected, atol=1e-6)
    assert len(layer.darknet_arrays()[0].flatten()) == (2 if weights_type == "per_feature" else 4)


def test_upsample_scale_and_negative_stride_sums(tmp_path):
    model = build(tmp_path, "[upsample]\nstride=2\nscale=0.5\n[upsample]\nstride=-2\n", w=2, h=2, c=1)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    outs = run_all(model, x)
    assert outs[0][0, 0].tolist() == [[0.5, 0.5, 1.0, 1.0]] * 2 + [[1.5, 1.5, 2.0, 2.0]] * 2
    assert torch.equal(outs[1], 4 * 0.5 * x)  # a 2x2 sum of equal values


def test_reorg3d_channel_order(tmp_path):
    model = build(tmp_path, "[reorg3d]\nstride=2\n", w=4, h=4, c=2)
    x = torch.arange(32.0).view(1, 2, 4, 4)
    out = run_all(model, x)[0][0]
    assert out.shape == (8, 2, 2)
    for k in range(8):
        off, c = divmod(k, 2)  # output channel off*c_in + c, offset off = dy*2 + dx
        dy, dx = divmod(off, 2)
        assert torch.equal(out[k], x[0, c, dy::2, dx::2])


def test_reorg_old_uses_input_dims(tmp_path):
    model = build(tmp_path, "[reorg]\nstride=2\n", w=4, h=4, c=4)
    x = torch.arange(64.0).view(1, 4, 4, 4)
    flat = run_all(model, x)[0].flatten()
    # reorg_cpu(w=4, h=4, c=4, stride=2, forward=0): out[k,j,i] = x seen as (1, 8, 8)[0, j*2 + off/2, i*2 + off%2]
    big = x.flatten().view(1, 8, 8)
    for k in range(4):
        for j in range(4):
            for i in range(4):
                off = k  # k / (c / s^2) with c / s^2 = 1
                assert flat[k * 16 + j * 4 + i] == big[0, j * 2 + off // 2, i * 2 + off % 2]


def test_scale_channels_and_sam(tmp_path):
    body = ("[convolutional]\nfilters=3\nactivation=linear\n[avgpool]\n[scale_channels]\nfrom=0\n"
            "[convolutional]\nfilters=1\nactivation=logistic\n[scale_channels]\nfrom=0\nscale_wh=1\n"
            "[convolutional]\nfilters=3\nactivation=logistic\n[sam]\nfrom=0\n")
    model = build(tmp_path, body)
    outs = run_all(model, torch.rand(1, 2, 8, 8))
    assert torch.allclose(outs[2], outs[0] * outs[1])
    assert torch.allclose(outs[4], outs[0] * outs[3])
    assert torch.allclose(outs[6], outs[5] * outs[0])


def test_antialiasing_blur_takes_the_stride(tmp_path):
    model = build(tmp_path, "[convolutional]\nfilters=2\nsize=3\nstride=2\npad=1\nantialiasing=1\n"
                            "activation=linear\n", w=8, h=8, c=2)
    layer = model.layers[0]
    assert layer.stride == (1, 1) and layer.out_shape == (2, 4, 4)
    x = torch.rand(1, 2, 8, 8)
    conv = torch.nn.functional.conv2d(x, layer.weight, layer.bias, 1, 1)
    kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    blur = torch.nn.functional.conv2d(conv, kernel.expand(2, 1, 3, 3), None, 2, 1, groups=2)
    assert torch.allclose(run_all(model, x)[0], blur, atol=1e-6)


def test_even_kernel_uses_darknet_output_size(tmp_path):
    model = build(tmp_path, "[convolutional]\nfilters=1\nsize=2\npad=1\nactivation=linear\n", w=5, h=5, c=1)
    # Darknet: pad=1 means padding = size/2 = 1, out = (5 + 2 - 2)/1 + 1 = 6
    assert model.layers[0].out_shape == (1, 6, 6)
    assert run_all(model, torch.rand(1, 1, 5, 5))[0].shape == (1, 1, 6, 6)


def test_yolo_activation_scale_x_y_and_new_coords(tmp_path):
    body = ("[convolutional]\nfilters=14\nactivation=linear\n[yolo]\nclasses=2\nnum=2\nmask=0,1\n"
            "anchors=1,2,3,4\nscale_x_y=1.2\n")
    model = build(tmp_path, body)
    x = torch.rand(1, 2, 8, 8)
    outs = run_all(model, x)
    raw = outs[0].view(1, 2, 7, 8, 8)
    head = outs[1]
    assert torch.allclose(head[:, :, :2], torch.sigmoid(raw[:, :, :2]) * 1.2 - 0.1)
    assert torch.equal(head[:, :, 2:4], raw[:, :, 2:4])
    assert torch.allclose(head[:, :, 4:], torch.sigmoid(raw[:, :, 4:]))


def test_every_layer_type_forward_and_backward(tmp_path):
    body = """
[convolutional]
batch_normalize=1
filters=8
size=3
stride_x=1
stride_y=1
pad=1
activation=mish
[convolutional]
filters=8
size=3
pad=1
groups=2
dilation=2
activation=swish
[convolutional]
filters=8
size=3
pad=1
groups=2
dilation=2
activation=swish
share_index=-1
[shortcut]
from=-3
weights_type=per_channel
weights_normalization=softmax
activation=hard_mish
[maxpool]
size=2
stride=2
antialiasing=2
[local_avgpool]
size=3
stride=1
[convolutional]
filters=4
size=1
activation=normalize_channels_softmax
[route]
layers=-1,-3
groups=2
group_id=0
[batchnorm]
[activation]
activation=gelu
[empty]
[dropout]
probability=0.3
[upsample]
stride=2
[upsample]
stride=-2
scale=0.25
[reorg3d]
stride=2
[convolutional]
filters=8
size=1
activation=leaky
[avgpool]
[scale_channels]
from=-2
[sam]
from=-3
[convolutional]
filters=14
size=1
activation=logistic
[yolo]
classes=2
num=2
mask=0,1
anchors=4,5,8,9
new_coords=1
scale_x_y=2.0
[route]
layers=-3
[convolutional]
filters=14
size=1
activation=linear
[region]
classes=2
num=2
coords=4
softmax=1
anchors=1,1,2,2
[route]
layers=-3
[convolutional]
filters=22
size=1
activation=linear
[Gaussian_yolo]
classes=2
num=2
mask=0,1
anchors=4,5,8,9
[implicit]
filters=8
[route]
layers=18
[crop]
crop_width=2
crop_height=2
noadjust=1
[connected]
output=6
batch_normalize=1
activation=relu
[softmax]
groups=2
[cost]
"""
    model = build(tmp_path, body, w=16, h=16, c=3)
    assert [h.type for h in model.heads] == ["yolo", "region", "Gaussian_yolo"]
    model.train()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    outs = model.forward_layers(x)
    loss = sum(o.float().pow(2).mean() for o in outs if o is not None and o.requires_grad)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        heads = model(x)
    assert [tuple(h.shape) for h in heads] == [(2, 2, 7, 4, 4), (2, 2, 7, 4, 4), (2, 2, 11, 4, 4)]
    assert (heads[1][:, :, 5:].sum(dim=2) - 1).abs().max() < 1e-5  # region: softmax over classes


def test_training_batch_norm_is_darknets_gpu_arithmetic(tmp_path):
    """Darknet's GPU build (cuDNN, forward_batchnorm_layer_gpu), which users train with: normalise by
    sqrt(var_N + 1e-5) with the biased batch variance, and move the rolling statistics by .01 of the batch's mean
    and unbiased (N-1) variance."""
    model = build(tmp_path, "[convolutional]\nbatch_normalize=1\nfilters=3\nsize=1\nactivation=linear\n", w=3, h=2)
    layer = model.layers[0]
    with torch.no_grad():
        layer.bn_weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    model.train()
    x = torch.rand(2, 2, 2, 3)
    out = model(x)
    conv = torch.nn.functional.conv2d(x, layer.weight)
    mean = conv.mean(dim=(0, 2, 3))
    biased = conv.var(dim=(0, 2, 3), unbiased=False)  # N = 2*2*3
    expected = (conv - mean.view(1, -1, 1, 1)) / torch.sqrt(biased.view(1, -1, 1, 1) + 1e-5)
    expected = expected * layer.bn_weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(layer.running_mean, 0.01 * mean, atol=1e-7)
    assert torch.allclose(layer.running_var, 0.01 * conv.var(dim=(0, 2, 3), unbiased=True), atol=1e-7)  # from 0


def test_channels_last_training_batch_norm_is_the_contiguous_one():
    """darkpy trains in channels_last on the CPU; its training batch norm there gives what the contiguous one
    gives, to float32 rounding: output, gradients and rolling statistics against a float64 computation."""
    torch.manual_seed(0)
    x64 = torch.randn(4, 8, 20, 24, dtype=torch.float64) * 0.7 + 3.0  # an offset mean, as conv outputs have
    weight64, bias64 = torch.rand(8, dtype=torch.float64) + 0.5, torch.randn(8, dtype=torch.float64)
    grad64 = torch.randn_like(x64)
    results = {}
    for name, dtype, memory_format in (("reference", torch.float64, torch.contiguous_format),
                                       ("contiguous", torch.float32, torch.contiguous_format),
                                       ("channels_last", torch.float32, torch.channels_last)):
        x = x64.to(dtype).clone(memory_format=memory_format).requires_grad_()
        weight, bias = weight64.to(dtype).clone().requires_grad_(), bias64.to(dtype).clone().requires_grad_()
        running_mean, running_var = torch.full((8,), 0.5, dtype=dtype), torch.full((8,), 2.0, dtype=dtype)
        y = darknet_batch_norm(x, running_mean, running_var, weight, bias, training=True)
        y.backward(grad64.to(dtype))
        results[name] = (y, x.grad, weight.grad, bias.grad, running_mean, running_var)
    assert type(results["channels_last"][0].grad_fn).__name__ == "ChannelsLastTrainingBatchNormBackward"
    assert results["channels_last"][0].is_contiguous(memory_format=torch.channels_last)
    for what, ours, theirs, reference in zip(("output", "input gradient", "scale gradient", "bias gradient",
                                              "rolling mean", "rolling variance"),
                                             results["channels_last"], results["contiguous"], results["reference"]):
        error = (ours.double() - reference).abs().max() / reference.abs().max()
        contiguous_error = (theirs.double() - reference).abs().max() / reference.abs().max()
        assert error <= max(4 * contiguous_error, 1e-6), (what, float(error), float(contiguous_error))


def test_channels_last_batch_moments_are_float32_exact():
    """torch's channels_last batch norm sums a channel sequentially in float32 (its variance is 1e-5 to 1e-4 off at
    this size); darkpy's channels_last statistics stay at float32 rounding."""
    torch.manual_seed(1)
    x = (torch.randn(8, 16, 112, 112) * 0.5 + 2.0).contiguous(memory_format=torch.channels_last)
    mean, var = channels_last_batch_moments(x)
    exact_var, exact_mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    assert ((mean - exact_mean) / exact_mean).abs().max() < 1e-6
    assert ((var - exact_var) / exact_var).abs().max() < 1e-6
    # a constant channel (a filter that died) and a single image row: variance 0, not inf or nan
    x[:, 3] = 0.25
    mean, var = channels_last_batch_moments(x)
    assert mean[3] == 0.25 and 0 <= var[3] < 1e-10
    mean, var = channels_last_batch_moments(x[:1, :, :1])
    exact_var, exact_mean = torch.var_mean(x[:1, :, :1].double(), dim=(0, 2, 3), correction=0)
    assert torch.allclose(mean, exact_mean, rtol=1e-6) and torch.allclose(var, exact_var, rtol=1e-5, atol=1e-10)


def test_implicit_output_needs_no_grad_under_inference_mode(tmp_path):
    model = build(tmp_path, "[implicit]\nfilters=4\n", w=2, h=2, c=1)
    with torch.inference_mode():
        out = model(torch.zeros(2, 1, 2, 2))
    assert not out.requires_grad
    assert out.numpy().shape == (2, 4, 1, 1)
    model.train()
    assert model(torch.zeros(1, 1, 2, 2)).requires_grad  # training still reaches the parameter


def test_region_with_no_classes_is_objectness_only(tmp_path):
    # parse_region reads classes=0 as it is: each anchor has x, y, w, h and objectness only.
    body = "[convolutional]\nfilters=10\nsize=1\nactivation=linear\n[region]\nclasses=0\nnum=2\nanchors=1,1,2,2\n"
    model = build(tmp_path, body, w=4, h=4, c=1)
    with torch.inference_mode():
        out = model(torch.rand(1, 1, 4, 4))[0]
    assert out.shape == (1, 2, 5, 4, 4)
    head = model.heads[0]
    boxes = head.decode(out[0].numpy(), (4, 4), (4, 4), thresh=0.0)
    assert boxes.probs.shape == (32, 0)


def test_shortcut_between_sizes_samples_as_pjreddie_darknet(tmp_path):
    # pjreddie's shortcut_cpu: a larger `from` map is read every stride-th pixel; a smaller one is added at every
    # sample-th pixel of the previous output, the pixels between pass through.
    body = ("[activation]\nactivation=linear\n[maxpool]\nsize=2\nstride=2\n[shortcut]\nfrom=0\nactivation=linear\n"
            "[upsample]\nstride=2\n[shortcut]\nfrom=2\nactivation=linear\n")
    model = build(tmp_path, body, w=4, h=4, c=1)
    outputs = run_all(model, torch.arange(16.0).view(1, 1, 4, 4))
    # maxpool [[5, 7], [13, 15]] + x[::2, ::2] [[0, 2], [8, 10]]
    assert outputs[2][0, 0].tolist() == [[5, 9], [21, 25]]
    # upsampled [[5, 5, 9, 9], ...] + layer 2 at the even rows and columns
    assert outputs[4][0, 0].tolist() == [[10, 5, 18, 9], [5, 5, 9, 9], [42, 21, 50, 25], [21, 21, 25, 25]]


def test_shortcut_refuses_sizes_out_of_ratio(tmp_path):
    body = "[maxpool]\nsize=2\nstride_x=2\nstride_y=1\n[shortcut]\nfrom=-2\n"
    with pytest.raises(Exception, match="same whole ratio"):
        build(tmp_path, "[activation]\nactivation=linear\n" + body, w=4, h=4, c=1)


def test_xnor_convolution_pads_with_minus_one_at_inference(tmp_path):
    # Weights become sign(w) * mean|w| per filter, inputs sign(x) (+1 where x > 0, else -1). Darknet's inference
    # (bit-packed) path reads the border as a 0 bit, i.e. -1; its training (float) path pads with 0.
    model = build(tmp_path, "[convolutional]\nxnor=1\nfilters=1\nsize=3\npad=1\nactivation=linear\n", w=3, h=3, c=1)
    layer = model.layers[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, -2.0]).view(1, 1, 3, 3))
    x = torch.full((1, 1, 3, 3), 0.3)
    with torch.no_grad():
        inference = model(x)[0, 0]
        training = model.train()(x)[0, 0]
    # centre: 8 taps agree, 1 disagrees -> (8 - 1) * 2; corner (0, 0): 4 taps inside (the last is w < 0), 5 border
    assert inference[1, 1].item() == 14.0 and training[1, 1].item() == 14.0
    assert inference[0, 0].item() == (3 - 1 - 5) * 2.0
    assert training[0, 0].item() == (3 - 1) * 2.0
    assert model.layers[0].bflops() == 2.0 * 9 * 9 / 1e9 / 32  # Darknet counts XNOR operations as 1/32


def test_contrastive_outputs_zero_and_needs_a_yolo_layer(tmp_path):
    # forward_contrastive_layer returns at once outside training: the output stays zero, like [cost]'s.
    body = ("[convolutional]\nfilters=4\nsize=1\nactivation=linear\n[convolutional]\nfilters=14\nsize=1\n"
            "activation=linear\n[yolo]\nclasses=2\nnum=2\nmask=0,1\nanchors=4,5,8,9\nembedding_layer=-2\n"
            "[route]\nlayers=-3\n[contrastive]\nclasses=1\nyolo_layer=-2\n")
    path = tmp_path / "c.cfg"
    path.write_text(NET.format(w=4, h=4, c=1) + body)
    model = Darknet.from_cfg(path).eval()
    outputs = run_all(model, torch.rand(1, 1, 4, 4))
    assert outputs[3].abs().sum() > 0 and torch.equal(outputs[4], torch.zeros_like(outputs[3]))
    path.write_text(NET.format(w=4, h=4, c=1) + body.replace("yolo_layer=-2", "yolo_layer=-1"))
    with pytest.raises(Exception, match="must be the \\[yolo\\] layer"):
        Darknet.from_cfg(path)
