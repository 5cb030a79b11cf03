"""The .weights codec: byte-identical round trip, partial files, and clear errors for files that do not fit."""
import hashlib
import struct
import warnings

import numpy as np
import pytest
import torch

from conftest import SHARED, require
from darkpy.cli import main as cli_main
from darkpy.model import Darknet
from darkpy.weights import WeightsError, read_header

TINY = """[net]
width=32
height=32
channels=3
[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
filters=8
size=1
activation=linear
[connected]
output=5
activation=linear
"""
TINY_FLOATS = (4 * 4 + 4 * 27) + (8 + 8 * 4) + (5 + 5 * 8 * 16 * 16)


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.cfg"
    path.write_text(TINY)
    return path


def random_model(cfg, seed=0):
    torch.manual_seed(seed)
    model = Darknet.from_cfg(cfg)
    with torch.no_grad():
        for layer in model.layers:
            for t in layer.darknet_arrays():
                t.uniform_(0.5, 1.5)
    return model


def test_save_load_roundtrip_is_bit_exact(tiny, tmp_path):
    model = random_model(tiny)
    model.seen = 123456789012
    assert model.count_weight_floats() == TINY_FLOATS
    model.save_weights(tmp_path / "a.weights")
    data = (tmp_path / "a.weights").read_bytes()
    assert struct.unpack("<iiiQ", data[:20]) == (0, 2, 5, 123456789012)
    assert len(data) == 20 + 4 * TINY_FLOATS
    other = Darknet.from_cfg(tiny)
    report = other.load_weights(tmp_path / "a.weights")
    assert report.complete and report.layers_loaded == 3 and other.seen == 123456789012
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    other.save_weights(tmp_path / "b.weights")
    assert (tmp_path / "b.weights").read_bytes() == data


def test_real_yolov3_tiny_roundtrip_byte_identical(tmp_path):
    weights = require(SHARED / "weights" / "yolov3-tiny.weights")
    cfg = require(SHARED / "darknet" / "cfg" / "yolov3-tiny.cfg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet.from_cfg(cfg)
    report = model.load_weights(weights)
    assert report.complete and report.floats == 8_858_734 and model.seen == 32_013_312
    model.save_weights(tmp_path / "out.weights")
    original = weights.read_bytes()
    assert hashlib.md5(original).hexdigest() == "3bcd6b390912c18924b46b26a9e7ff53"
    assert (tmp_path / "out.weights").read_bytes() == original


def test_seen_32_bit_and_transposed_connected(tiny, tmp_path):
    model = random_model(tiny)
    floats = []
    for layer in model.layers:
        for t in layer.darknet_arrays():
            value = t.detach()
            if layer.type == "connected" and t is layer.weight:
                value = value.t()  # stored transposed when major or minor > 1000
            floats.append(value.contiguous().numpy().ravel())
    path = tmp_path / "transposed.weights"
    path.write_bytes(struct.pack("<iiiQ", 0, 1001, 0, 77) + np.concatenate(floats).astype("<f4").tobytes())
    header = read_header(path.read_bytes(), str(path))
    assert header.seen_is_64bit and header.transpose and header.seen == 77
    other = Darknet.from_cfg(tiny)
    other.load_weights(path)
    assert other.seen == 77
    assert torch.equal(other.layers[3].weight, model.layers[3].weight)

    model.save_weights(tmp_path / "new.weights")
    old = tmp_path / "old.weights"  # version 0.1: `seen` is 32 bits
    old.write_bytes(struct.pack("<iiiI", 0, 1, 0, 99) + (tmp_path / "new.weights").read_bytes()[20:])
    header = read_header(old.read_bytes(), str(old))
    assert not header.seen_is_64bit and not header.transpose and header.seen == 99
    third = Darknet.from_cfg(tiny)
    third.load_weights(old)
    assert third.seen == 99 and torch.equal(third.layers[3].weight, model.layers[3].weight)


def test_partial_file_stops_between_layers(tiny, tmp_path):
    model = random_model(tiny)
    model.save_weights(tmp_path / "part.conv.2", upto=2)
    assert (tmp_path / "part.conv.2").stat().st_size == 20 + 4 * (4 * 4 + 4 * 27)
    other = Darknet.from_cfg(tiny)
    before = other.layers[2].weight.detach().clone()
    report = other.load_weights(tmp_path / "part.conv.2")
    assert report.layers_loaded == 1 and report.layers_with_weights == 3 and not report.complete
    assert torch.equal(other.layers[0].weight, model.layers[0].weight)
    assert torch.equal(other.layers[2].weight, before)


def test_partial_command_like_darknet_partial(tiny, tmp_path):
    model = random_model(tiny)
    model.seen = 6400
    model.save_weights(tmp_path / "full.weights")
    assert cli_main(["partial", str(tiny), str(tmp_path / "full.weights"), str(tmp_path / "out.conv.3"), "3"]) == 0
    data = (tmp_path / "out.conv.3").read_bytes()
    assert struct.unpack("<iiiQ", data[:20])[3] == 0  # seen reset, as darknet partial does
    assert len(data) == 20 + 4 * ((4 * 4 + 4 * 27) + (8 + 8 * 4))


def test_truncated_inside_a_layer_is_an_error(tiny, tmp_path):
    random_model(tiny).save_weights(tmp_path / "a.weights")
    data = (tmp_path / "a.weights").read_bytes()
    (tmp_path / "cut.weights").write_bytes(data[:20 + 4 * 50])
    with pytest.raises(WeightsError, match=r"cut.weights: the file ends inside layer 0 \(\[convolutional\], .*tiny.cfg:5\)"):
        Darknet.from_cfg(tiny).load_weights(tmp_path / "cut.weights")
    (tmp_path / "odd.weights").write_bytes(data[:-2])
    with pytest.raises(WeightsError, match="not a whole number of float32"):
        Darknet.from_cfg(tiny).load_weights(tmp_path / "odd.weights")
    (tmp_path / "short.weights").write_bytes(data[:10])
    with pytest.raises(WeightsError, match="too short"):
        Darknet.from_cfg(tiny).load_weights(tmp_path / "short.weights")


def test_extra_floats_name_expected_and_actual_counts(tiny, tmp_path):
    random_model(tiny).save_weights(tmp_path / "a.weights")
    (tmp_path / "extra.weights").write_bytes((tmp_path / "a.weights").read_bytes() + b"\0" * 12)
    with pytest.raises(WeightsError, match=f"3 floats are left over: the cfg .* needs {TINY_FLOATS} floats, "
                                           f"the file has {TINY_FLOATS + 3}"):
        Darknet.from_cfg(tiny).load_weights(tmp_path / "extra.weights")


def test_missing_weights_file(tiny, tmp_path):
    with pytest.raises(WeightsError, match="cannot read weights file"):
        Darknet.from_cfg(tiny).load_weights(tmp_path / "nope.weights")


def test_fused_model_refuses_to_save_and_keeps_outputs(tiny, tmp_path):
    model = random_model(tiny).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        after = model.fuse()(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    with pytest.raises(WeightsError, match="cannot be saved"):
        model.save_weights(tmp_path / "f.weights")


def test_atomic_save_leaves_no_partial_file(tiny, tmp_path, monkeypatch):
    model = random_model(tiny)
    model.save_weights(tmp_path / "keep.weights")
    good = (tmp_path / "keep.weights").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("darkpy.weights.os.fsync", broken)
    with pytest.raises(OSError):
        random_model(tiny, seed=1).save_weights(tmp_path / "keep.weights")
    assert (tmp_path / "keep.weights").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.weights", "tiny.cfg"]
