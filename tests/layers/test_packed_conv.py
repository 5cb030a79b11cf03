"""darkpy's fast CPU inference path (prepare_for_inference): oneDNN convolutions with packed weights and fused
activations, and max-pools as maxima of strided views, give what the ordinary layers give; the ordinary path
takes over whenever the packed copy no longer applies."""
import copy
import pickle
import warnings

import pytest
import torch

from darkpy.evaluation.inference import prepare_for_inference
from darkpy.layers.conv import ConvLayer, PackedConv
from darkpy.layers.route import ChannelParts
from darkpy.model import Darknet

pytestmark = pytest.mark.skipif(not PackedConv.available(), reason="this torch has no oneDNN fused convolution")

# Every kind of convolution a packed layer meets: batch norm (folded), bias only, fused activations (leaky, relu,
# linear, relu6) and one applied after (mish), 1x1, stride 2, groups, dilation; maxpools on the fast path (2x2/2,
# 3x3/2 with its right-bottom padding on the ordinary one) and a route.
CFG = """[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=16
size=3
stride=2
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
groups=4
activation=relu

[maxpool]
size=3
stride=2

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
dilation=2
activation=relu6

[route]
layers=-1,-2

[convolutional]
filters=12
size=1
stride=1
pad=1
activation=linear
"""


def build(tmp_path, seed=0, cfg=CFG):
    path = tmp_path / "packed.cfg"
    path.write_text(cfg)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet.from_cfg(path).eval()
    for layer in model.layers:  # batch-norm statistics that make the folding matter
        if isinstance(layer, ConvLayer) and layer.batch_normalize:
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
            layer.bn_weight.data.uniform_(0.5, 1.5)
    return model.fuse()


def outputs(model, x):
    with torch.inference_mode():
        return model.forward_layers(x.contiguous(memory_format=torch.channels_last), keep_all=True)


def test_packed_layers_compute_what_the_ordinary_ones_do(tmp_path):
    ordinary = build(tmp_path).to(memory_format=torch.channels_last)
    fast = prepare_for_inference(build(tmp_path), "cpu")
    assert all(layer.packed is not None for layer in fast.layers if isinstance(layer, ConvLayer))
    x = torch.rand(3, 3, 32, 32)
    fast_outputs = outputs(fast, x)
    for index, (want, got) in enumerate(zip(outputs(ordinary, x), fast_outputs)):
        # oneDNN may sum a 1x1 convolution in another order than torch's own kernel: float rounding, no more
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=lambda m: f"layer {index}: {m}")
    pool, pool_input = fast.layers[1], fast_outputs[0]
    with torch.inference_mode():
        assert pool._taps_max_pays(pool_input)  # a maximum is exact, whichever way it is taken
        assert torch.equal(pool._taps_max(pool_input), pool._max_pool(pool_input))


def test_changed_weights_and_training_take_the_ordinary_path(tmp_path):
    model = prepare_for_inference(build(tmp_path), "cpu")
    other = build(tmp_path, seed=1).to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # a weights load: the packed copies are stale
        for mine, theirs in zip(model.parameters(), other.parameters()):
            mine.copy_(theirs)
    torch.testing.assert_close(outputs(model, x)[-1], outputs(other, x)[-1], rtol=1e-6, atol=1e-6)
    model.train()
    y = model(x.contiguous(memory_format=torch.channels_last))
    y.sum().backward()  # gradients flow: the ordinary layers ran
    assert model.layers[0].weight.grad is not None


def test_a_deep_copy_drops_the_packed_weights(tmp_path):
    model = prepare_for_inference(build(tmp_path), "cpu")
    copied = copy.deepcopy(model)
    assert all(layer.packed is None for layer in copied.layers if isinstance(layer, ConvLayer))
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(outputs(copied, x)[-1], outputs(model, x)[-1], rtol=1e-6, atol=1e-6)


def test_a_traced_or_pickled_model_has_the_ordinary_operators(tmp_path):
    model = prepare_for_inference(build(tmp_path).requires_grad_(False), "cpu")  # a trace takes no grad constants
    x = torch.rand(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = str(torch.jit.trace(lambda t: model(t), (x,), check_trace=False).graph)
    assert "mkldnn" not in graph and "aten::_convolution" in graph
    restored = pickle.loads(pickle.dumps(model))
    assert all(layer.packed is None for layer in restored.layers if isinstance(layer, ConvLayer))
    torch.testing.assert_close(outputs(restored, x)[-1], outputs(model, x)[-1], rtol=1e-6, atol=1e-6)


# yolov4-tiny's pattern: a concatenating route read by the max-pool after it alone (layers 3, 4), and one that a
# later layer reads too (layer 7, read by 8 and 9)
POOLED_ROUTE_CFG = """[net]
width=16
height=16
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[route]
layers=-3,-1

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=6
size=1
stride=1
pad=1
activation=leaky

[route]
layers=-1,-2

[maxpool]
size=2
stride=2

[route]
layers=-2
"""


def test_a_route_read_by_its_max_pool_alone_hands_it_the_parts_unjoined(tmp_path):
    ordinary = build(tmp_path, cfg=POOLED_ROUTE_CFG).to(memory_format=torch.channels_last)
    fast = prepare_for_inference(build(tmp_path, cfg=POOLED_ROUTE_CFG), "cpu")
    assert fast.layers[3].parts_to_pool and not fast.layers[6].parts_to_pool  # layer 8 reads layer 6 too
    assert not fast.layers[4].rows_in_place  # its input is the parts, views of layers 0 and 2
    x = torch.rand(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        handed = fast.layers[3](None, outputs(fast, x))
        assert isinstance(handed, ChannelParts) and [p.shape[1] for p in handed] == [8, 4]
        want, got = outputs(ordinary, x), outputs(fast, x)  # keep_all: the parts joined for the caller
    for index, (a, b) in enumerate(zip(want, got)):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6, msg=lambda m: f"layer {index}: {m}")
    # the max-pool of the parts is that of the concatenation, bit for bit, written channels_last
    pooled = fast.layers[4]._taps_max_of_parts(ChannelParts([got[0], got[2]]))
    assert torch.equal(pooled, fast.layers[4]._max_pool(torch.cat([got[0], got[2]], dim=1)))
    assert pooled.is_contiguous(memory_format=torch.channels_last)


def test_a_route_joins_its_parts_when_gradients_are_wanted(tmp_path):
    model = prepare_for_inference(build(tmp_path, cfg=POOLED_ROUTE_CFG), "cpu")
    x = torch.rand(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    model.train()
    outputs_with_grad = model.forward_layers(x, keep_all=False)
    assert isinstance(outputs_with_grad[4], torch.Tensor)
    outputs_with_grad[-1].sum().backward()  # the ordinary route and max_pool2d ran
    assert model.layers[0].weight.grad is not None


def test_a_pool_overwrites_a_convolution_output_only_when_the_model_dropped_it(tmp_path):
    fast = prepare_for_inference(build(tmp_path), "cpu")
    pool = fast.layers[1]
    assert pool.rows_in_place and not fast.layers[4].rows_in_place  # 3x3/2 windows overlap: never in place
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv_output = fast.layers[0](x, [])
        original = conv_output.clone()
        held = pool(original, [original])  # the model holds the output (keep_all, or a later layer reads it)
        assert torch.equal(original, conv_output)
        dropped = pool(conv_output, [None])
        assert not torch.equal(conv_output, original)  # its rows took the first pass's maxima
    assert torch.equal(dropped, held) and torch.equal(held, pool._max_pool(original))
    ordinary = build(tmp_path).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), ordinary(x), rtol=1e-6, atol=1e-6)
