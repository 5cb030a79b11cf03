"""The recurrent layers ([crnn], [conv_lstm], [history], [rnn], [gru], [lstm]) against C Darknet on consecutive
frames with the state carried, and the state rules (reset, a batch = consecutive frames, training layout).

The fixtures (tests/fixtures/<name>/ with frames.npy, see tests/fixtures/README.md) hold what C Darknet computed
calling network_predict once per frame on a network built as `detector demo` builds it (batch 1, time_steps 1).
"""
import json
import warnings

import numpy as np
import pytest
import torch

from conftest import DARKNET_CFG, LOCAL_FIXTURES, ORACLE, require
from darkpy.boxes import get_network_boxes
from darkpy.cfg import CfgError
from darkpy.model import Darknet
from oracle_utils import close_to_darknet, layer_stats_close, make_weights

FIXTURES = sorted(p for p in LOCAL_FIXTURES.iterdir() if (p / "frames.npy").exists())


def build(fixture):
    summary = json.loads((fixture / "summary.json").read_text())
    if (fixture / "cfg.cfg").exists():
        cfg = fixture / "cfg.cfg"
    else:
        if DARKNET_CFG is None:
            pytest.skip(f"{fixture.name}: set DARKPY_DARKNET_CFG to Darknet's cfg/ folder to build its zoo cfg")
        cfg = require(DARKNET_CFG / (fixture / "zoo_cfg.txt").read_text().strip())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet.from_cfg(cfg, width=summary["input"][0], height=summary["input"][1])
    return model, summary


def network_inputs(fixture) -> torch.Tensor:
    """frames.npy: float32 (F, C, H, W) network inputs, or uint8 (F, H, W, 3) RGB frames fed as /255."""
    frames = np.load(fixture / "frames.npy")
    if frames.dtype == np.uint8:
        frames = frames.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    return torch.from_numpy(np.ascontiguousarray(frames))


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_consecutive_frames_match_darknet(fixture, tmp_path):
    model, summary = build(fixture)
    assert model.load_weights(make_weights(require(ORACLE), fixture, tmp_path / "w.weights")).complete
    assert model.count_weight_floats() == summary["n_weights_floats"]
    assert f"{model.total_bflops():.3f}" == f"{summary['total_bflops']:.3f}"
    frames, expected = network_inputs(fixture), json.loads((fixture / "layers.json").read_text())
    arrays = np.load(fixture / "outputs.npz")
    model.eval()
    for f in range(len(frames)):  # one call per frame, as Darknet's demo runs them
        with torch.inference_mode():
            outputs = model.forward_layers(frames[f:f + 1])
        for stats, out in zip(expected[f], outputs):
            ours = out[0].numpy()
            assert ours.size == int(np.prod(stats["out_shape"]))
            assert layer_stats_close(ours, stats), (
                f"frame {f}: layer {stats['index']} ({stats['type']}) first differs from Darknet: mean "
                f"{ours.mean():.6g} vs {stats['mean']:.6g}, max {ours.max():.6g} vs {stats['max']:.6g}")
        for head in model.heads:
            assert close_to_darknet(outputs[head.index][0].numpy(), arrays[f"F{f}_L{head.index}"])
        if model.heads:
            size = (model.width, model.height)
            boxes = get_network_boxes([outputs[h.index][0].numpy() for h in model.heads], model.heads, size, size,
                                      0.02)
            expected_boxes = arrays[f"F{f}_boxes_thresh_0.02"]
            assert close_to_darknet(boxes.xywh, expected_boxes[:, :4])
            assert close_to_darknet(boxes.objectness, expected_boxes[:, 4])
        else:
            assert close_to_darknet(outputs[model.output_index][0].numpy().ravel(), arrays[f"F{f}_final"])


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_a_batch_is_consecutive_frames_and_reset_starts_again(fixture, tmp_path):
    model, _ = build(fixture)
    model.load_weights(make_weights(require(ORACLE), fixture, tmp_path / "w.weights"))
    frames = network_inputs(fixture)
    model.eval()
    with torch.inference_mode():
        one_by_one = [model.forward_layers(frames[f:f + 1])[model.output_index] for f in range(len(frames))]
        together = model.reset_state().forward_layers(frames)[model.output_index]
        again = model.reset_state().forward_layers(frames[:1])[model.output_index]
    for f, out in enumerate(one_by_one):
        assert torch.allclose(together[f], out[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(again, one_by_one[0])
    assert not torch.allclose(one_by_one[1], one_by_one[0])  # the state (and the frame) changed the output


def small(tmp_path, body: str, net: str = "width=4\nheight=4\nchannels=2"):
    path = tmp_path / "r.cfg"
    path.write_text(f"[net]\n{net}\n{body}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet.from_cfg(path)


def test_crnn_state_is_the_sum_of_its_convolutions(tmp_path):
    model = small(tmp_path, "[crnn]\nsize=1\nhidden=3\noutput=2\nactivation=linear\n").eval()
    layer = model.layers[0]
    x = torch.rand(2, 2, 4, 4)
    with torch.inference_mode():
        y = model(x)
        w_in, w_self, w_out = (getattr(layer, n).weight[:, :, 0, 0] for n in layer.parts)
        b_in, b_self, b_out = (getattr(layer, n).bias.view(1, -1, 1, 1) for n in layer.parts)
        s0 = torch.einsum("oc,bchw->bohw", w_in, x[:1]) + b_in + b_self  # the first state: self conv of zeros
        s1 = torch.einsum("oc,bchw->bohw", w_in, x[1:]) + b_in + torch.einsum("oc,bchw->bohw", w_self, s0) + b_self
        expected = torch.cat([torch.einsum("oc,bchw->bohw", w_out, s) + b_out for s in (s0, s1)])
    assert torch.allclose(y, expected, atol=1e-5)


def test_training_layout_is_time_steps_of_mini_batches_from_zero_state(tmp_path):
    model = small(tmp_path, "[lstm]\noutput=3\n", "width=4\nheight=4\nchannels=2\ntime_steps=2")
    x = torch.rand(4, 2, 4, 4)  # 2 steps of 2 sequences: rows 0, 1 are step 0; rows 2, 3 step 1
    y_train = model.train()(x)
    with torch.no_grad():
        model.eval()
        for sequence in (0, 1):
            model.reset_state()
            y = model(x[[sequence, sequence + 2]])
            assert torch.allclose(y, y_train[[sequence, sequence + 2]], atol=1e-6)
    with pytest.raises(ValueError, match="multiple of \\[net\\] time_steps"):
        model.train()(x[:3])


def test_options_darkpy_does_not_implement_fail_at_load(tmp_path):
    with pytest.raises(CfgError, match=r"r.cfg:7: option 'bottleneck'.*GPU build"):
        small(tmp_path, "[conv_lstm]\noutput=2\nbottleneck=1\n")
    with pytest.raises(CfgError, match=r"r.cfg:7: option 'xnor'"):
        small(tmp_path, "[crnn]\noutput=2\nxnor=1\n")
    with pytest.raises(CfgError, match=r"r.cfg:7: option 'size'.*must keep the input's size"):
        small(tmp_path, "[crnn]\noutput=2\nsize=3\npad=0\n")


def test_history_at_detection_is_the_input_then_zeros(tmp_path):
    model = small(tmp_path, "[history]\nhistory_size=3\n").eval()
    x = torch.rand(2, 2, 4, 4)
    y = model(x)
    assert y.shape == (2, 6, 4, 4)
    assert torch.equal(y[:, :2], x) and not y[:, 2:].any()
    # training with time_steps=2 (forward_history_layer): each step's input, then the step before's output
    model = small(tmp_path, "[history]\nhistory_size=3\n", "width=4\nheight=4\nchannels=2\ntime_steps=2").train()
    y = model(torch.cat([x, x + 1]))  # step 0: rows 0, 1; step 1: rows 2, 3
    assert torch.equal(y[2:, :2], x + 1) and torch.equal(y[2:, 2:4], x) and not y[2:, 4:].any()


def test_connected_sub_layers_are_read_transposed_when_the_header_says_so(tmp_path):
    """parser.c's load_weights passes `transpose` to every connected sub-layer of [rnn], [gru] and [lstm]."""
    import struct
    cfg = LOCAL_FIXTURES / "recurrent-flat" / "cfg.cfg"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, other = Darknet.from_cfg(cfg), Darknet.from_cfg(cfg)
    # the 2-D arrays are the connected weights (out, in); a transposing file stores them (in, out)
    floats = [(t.detach().t() if t.dim() == 2 else t.detach()).contiguous().numpy().ravel()
              for layer in model.layers for t in layer.darknet_arrays()]
    path = tmp_path / "transposed.weights"
    path.write_bytes(struct.pack("<iiiQ", 0, 1001, 0, 0) + np.concatenate(floats).astype("<f4").tobytes())
    assert other.load_weights(path).complete
    for ours, theirs in zip(other.parameters(), model.parameters()):
        assert torch.equal(ours, theirs)


def test_state_left_by_inference_mode_serves_a_later_call_with_autograd(tmp_path):
    model = small(tmp_path, "[conv_lstm]\noutput=2\nsize=3\npad=1\n").eval()
    x = torch.rand(2, 2, 4, 4)
    with torch.inference_mode():
        model(x[:1])
    frame = x[1:].clone().requires_grad_()
    model(frame).sum().backward()  # would fail on the inference tensor of the state
    assert frame.grad.abs().sum() > 0
    assert model.double()(x[:1].double()).dtype == torch.float64  # the state follows the input's dtype
