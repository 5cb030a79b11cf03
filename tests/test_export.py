"""`darkpy export` (ONNX): onnxruntime's outputs against darkpy's and C Darknet's, decoded boxes against
darkpy.boxes (Darknet's own decoding), every layer kind outside the zoo, and the errors for layers that cannot be
exported.

The zoo loop exports every oracle fixture (about a minute on 2 cores for all 20).
"""
import warnings

import numpy as np
import pytest
import torch

from conftest import ORACLE, SHARED, require
from oracle_utils import close_to_darknet, fixture_dirs, make_weights

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install darkpy[onnx])")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install darkpy[onnx])")

from darkpy import boxes  # noqa: E402
from darkpy.cli import main  # noqa: E402
from darkpy.export import ExportError, decode_heads, export_onnx, verify_onnx  # noqa: E402
from darkpy.model import Darknet  # noqa: E402

FIXTURES = fixture_dirs(ORACLE) if ORACLE.is_dir() else []
NO_FIXTURES = f"no oracle fixtures in {ORACLE} (set DARKPY_ORACLE_DIR or add ../shared)"


def within(ours: np.ndarray, reference: np.ndarray) -> bool:
    """The issue's criterion, 1e-4 relative (to the largest value, as the oracle compares)."""
    return float(np.abs(ours - reference).max()) <= 1e-4 * float(np.abs(reference).max()) + 1e-6


def build(cfg, weights=None) -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet.from_cfg(cfg)
    if weights is not None:
        assert model.load_weights(weights).complete
    return model


def run_onnx(path, images: np.ndarray):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


def darknet_arrays(fixture):
    """The oracle's head outputs (cfg order) or, for a classifier, its flat final output."""
    arrays = np.load(fixture / "outputs.npz")
    heads = sorted((k for k in arrays.files if k.startswith("L") and not k.endswith(("_anchors", "_mask"))),
                   key=lambda k: int(k[1:]))
    return [arrays[k] for k in heads] if heads else [arrays["final"]]


@pytest.mark.skipif(not FIXTURES, reason=NO_FIXTURES)
@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_zoo_fixture_onnx_matches_darkpy_and_darknet(fixture, tmp_path):
    model = build(fixture / "cfg.cfg", make_weights(ORACLE, fixture, tmp_path / "w.weights"))
    path = tmp_path / "model.onnx"
    names = export_onnx(model, path, dynamic_batch=True)
    assert [o.name for o in onnx.load(str(path), load_external_data=False).graph.output] == names

    image = np.load(fixture / "input.npy")
    batch = np.stack([image, image[:, ::-1, :]]).astype(np.float32)  # two images: the batch axis is dynamic
    got = run_onnx(path, batch)
    with torch.no_grad():
        ours = model(torch.from_numpy(batch))
    ours = [t.detach().numpy() for t in (ours if isinstance(ours, list) else [ours])]
    assert len(got) == len(ours)
    for name, g, o in zip(names, got, ours):
        assert g.shape == o.shape, name
        for b in range(2):
            assert within(g[b], o[b]), f"{name} image {b}: max diff {np.abs(g[b] - o[b]).max():.3g}"
    for name, g, expected in zip(names, got, darknet_arrays(fixture)):
        assert close_to_darknet(g[0].reshape(expected.shape), expected), f"{name} differs from C Darknet"


def _network_boxes_xyxy(arrays, model, classes):
    """darkpy.boxes (numpy, Darknet's get_network_boxes) on the same outputs, for one image of network size,
    as x1, y1, x2, y2 pixels and per-class probabilities (threshold -1: every cell and anchor kept)."""
    specs = list(model.heads)
    net_wh = (model.width, model.height)
    found = boxes.get_network_boxes(arrays, specs, net_wh, net_wh, thresh=-1.0)
    x, y, w, h = (found.xywh[:, i] for i in range(4))
    xyxy = np.stack([(x - w / 2) * net_wh[0], (y - h / 2) * net_wh[1], (x + w / 2) * net_wh[0],
                     (y + h / 2) * net_wh[1]], axis=1)
    assert found.probs.shape[1] == classes
    return xyxy, found.probs


@pytest.mark.skipif(not FIXTURES, reason=NO_FIXTURES)
@pytest.mark.parametrize("name", ["yolov3-tiny", "yolov2-tiny", "yolov4-csp", "yolov7-tiny"])
def test_torch_decode_equals_darknet_decoding(name):
    """decode_heads on C Darknet's head outputs = darkpy.boxes' decoding of them (yolo; region; new_coords with
    scale_x_y 2.0; yolov7's anchors), box for box in Darknet's detection order."""
    fixture = require(ORACLE / name)
    model = build(fixture / "cfg.cfg")
    arrays = darknet_arrays(fixture)
    with torch.no_grad():
        xyxy, scores = decode_heads([torch.from_numpy(a)[None] for a in arrays], model.heads,
                                    (model.width, model.height))
    expected_xyxy, expected_scores = _network_boxes_xyxy(arrays, model, model.heads[0].classes)
    assert xyxy.shape == (1, len(expected_xyxy), 4)
    np.testing.assert_allclose(xyxy[0].numpy(), expected_xyxy, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(scores[0].numpy(), expected_scores, rtol=1e-5, atol=1e-7)


GAUSSIAN_CFG = """[net]
width=64
height=32
channels=3

[convolutional]
filters=42
size=3
stride=2
pad=1
activation=leaky

[Gaussian_yolo]
mask=0,1,2
anchors=10,13,16,30,33,23
classes=5
num=3
scale_x_y=1.1
"""


def test_torch_decode_equals_darknet_decoding_gaussian_yolo(tmp_path):
    cfg = tmp_path / "g.cfg"
    cfg.write_text(GAUSSIAN_CFG)
    model = build(cfg).eval()
    x = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = model(x)
        xyxy, scores = decode_heads(outputs, model.heads, (64, 32))
    expected_xyxy, expected_scores = _network_boxes_xyxy([o[0].numpy() for o in outputs], model, 5)
    np.testing.assert_allclose(xyxy[0].numpy(), expected_xyxy, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores[0].numpy(), expected_scores, rtol=1e-5, atol=1e-7)


def test_cli_decoded_export_of_real_yolov3_tiny(tmp_path, capsys):
    """`darkpy export --decode` on the COCO weights: onnxruntime's boxes and scores for the dog photo equal
    darkpy.boxes' decoding of C Darknet's own outputs for it."""
    weights = require(SHARED / "weights" / "yolov3-tiny.weights")
    real = require(ORACLE / "real-yolov3-tiny")
    dog = real / "dog"
    out = tmp_path / "tiny.onnx"
    rc = main(["export", "--cfg", str(real / "cfg.cfg"), "--weights", str(weights), "--format", "onnx", "-o",
               str(out), "--decode", "--dynamic-batch"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    printed = printed.out
    assert "outputs boxes, scores" in printed and "onnxruntime matches darkpy" in printed

    boxes_onnx, scores_onnx = run_onnx(out, np.load(dog / "input.npy")[None])
    model = build(real / "cfg.cfg")
    expected_xyxy, expected_scores = _network_boxes_xyxy(darknet_arrays(dog), model, 80)
    assert boxes_onnx.shape == (1, 3 * (13 * 13 + 26 * 26), 4)
    assert within(boxes_onnx[0], expected_xyxy) and within(scores_onnx[0], expected_scores)
    # the three objects darknet reports on this photo (dog, bicycle, car) are the ones above 0.25 after NMS
    strong = scores_onnx[0].max(axis=1) > 0.25
    assert {int(c) for c in scores_onnx[0][strong].argmax(axis=1)} >= {1, 2, 16}
    metadata = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert "yolo_16" in metadata["heads"] and metadata["cfg"] == "cfg.cfg"


# Layers and options no zoo cfg uses, each after a batch-normalised convolution (8 channels, 32x32 input).
EXTRA_LAYERS = {
    "local_avgpool": "[local_avgpool]\nsize=3\nstride=2\n",
    "downsample_sum": "[upsample]\nstride=-2\nscale=0.5\n",
    "maxpool_depth": "[maxpool]\nmaxpool_depth=1\nout_channels=3\n",
    "maxpool_antialias": "[maxpool]\nsize=2\nstride=2\nantialiasing=1\n",
    "conv_antialias": "[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\nantialiasing=2\nactivation=elu\n",
    "even_kernel_selu": "[convolutional]\nfilters=8\nsize=2\nstride=1\npad=1\nactivation=selu\n",
    "reorg3d_crop": "[reorg3d]\nstride=2\n\n[crop]\ncrop_width=12\ncrop_height=10\n",
    "batchnorm_act": "[batchnorm]\n\n[activation]\nactivation=normalize_channels_softmax\n",
    "implicit": "[implicit]\nfilters=8\n",
    "connected_bn": "[connected]\noutput=10\nbatch_normalize=1\nactivation=gelu\n\n[softmax]\ngroups=2\n",
    "weighted_shortcut": "[convolutional]\nfilters=8\nsize=1\nactivation=stair\n\n[shortcut]\nfrom=-2\n"
                         "weights_type=per_channel\nweights_normalization=softmax\n",
    "scale_wh_sam": "[convolutional]\nfilters=1\nsize=1\nactivation=logistic\n\n[scale_channels]\nfrom=-2\n"
                    "scale_wh=1\n\n[sam]\nfrom=-3\n",
    "dilated_shared_mish": "[convolutional]\nfilters=8\nsize=3\npad=1\ndilation=2\nbatch_normalize=1\n"
                           "activation=mish\n\n[convolutional]\nfilters=8\nsize=3\npad=1\ndilation=2\n"
                           "batch_normalize=1\nshare_index=-1\nactivation=mish\n",
    "yolo_new_coords": "[convolutional]\nfilters=30\nsize=1\nactivation=logistic\n\n[yolo]\nmask=0,1,2\n"
                       "anchors=10,13,16,30,33,23\nclasses=5\nnum=3\nscale_x_y=2.0\nnew_coords=1\n",
    "gaussian_yolo": "[convolutional]\nfilters=42\nsize=1\nactivation=linear\n\n" + GAUSSIAN_CFG.split("\n\n")[-1],
    "xnor": "[convolutional]\nxnor=1\nfilters=8\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\n\n"
            "[convolutional]\nxnor=1\nbin_output=1\nfilters=8\nsize=1\nactivation=leaky\n",
    "strided_shortcut": "[maxpool]\nsize=2\nstride=2\n\n[shortcut]\nfrom=-2\n\n[upsample]\nstride=2\n\n"
                        "[shortcut]\nfrom=-2\nactivation=leaky\n",
    "detection": "[connected]\noutput=52\nactivation=linear\n\n[detection]\nclasses=3\ncoords=4\nside=2\nnum=2\n"
                 "softmax=1\nsqrt=1\n",
}


@pytest.mark.parametrize("name", sorted(EXTRA_LAYERS))
def test_layers_outside_the_zoo_export(name, tmp_path):
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n\n[convolutional]\nfilters=8\nsize=3\npad=1\n"
                   "batch_normalize=1\nactivation=leaky\n\n" + EXTRA_LAYERS[name])
    model = build(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights that make every layer matter (non-trivial batch-norm and shortcut weights)
        for parameter in model.parameters():
            parameter.uniform_(-1, 1, generator=generator)
        for buffer_name, buffer in model.named_buffers():
            if buffer_name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0, generator=generator)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, dynamic_batch=True)
    images = torch.rand(3, 3, 32, 32, generator=generator)
    got = run_onnx(path, images.numpy())
    with torch.no_grad():
        ours = model(images)
    ours = ours if isinstance(ours, list) else [ours]
    for g, o in zip(got, ours):
        o = o.detach().numpy()
        assert within(g, o), f"max diff {np.abs(g - o).max():.3g}"


def test_unexportable_layer_is_named_with_its_reason(tmp_path):
    model = build(require(ORACLE / "yolov3-tiny") / "cfg.cfg")
    layer = model.layers[4]
    forward = layer.forward
    # then an operator torch's ONNX exporter has no translation for
    layer.forward = lambda x, outputs: torch.special.i0(forward(x, outputs))
    with pytest.raises(ExportError) as error:
        export_onnx(model, tmp_path / "m.onnx")
    message = str(error.value)
    assert "layer 4 [convolutional]" in message and "cfg.cfg:" in message and "aten::i0" in message
    assert "layer 3" not in message and "layer 5" not in message


def test_verify_reports_a_file_that_does_not_match_the_model(tmp_path):
    fixture = require(ORACLE / "yolov3-tiny")
    model = build(fixture / "cfg.cfg", make_weights(ORACLE, fixture, tmp_path / "w.weights"))
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    assert max(verify_onnx(model, path).values()) < 1e-5
    with torch.no_grad():
        model.layers[22].weight *= 1.01  # the model changes after export
    with pytest.raises(ExportError, match="differ from darkpy's"):
        verify_onnx(model, path)


def test_verify_compares_overflowed_values_by_place():
    """Random weights can overflow to inf and NaN (a large mish network's do): the check then asks for the same
    non-finite values in the same places, and the oracle's tolerance on the others."""
    from darkpy.export import _close
    reference = np.array([1.0, np.nan, np.inf, -2.0], dtype=np.float32)
    assert _close(reference + np.float32(1e-6), reference)
    assert not _close(np.array([1.0, 0.0, np.inf, -2.0], np.float32), reference)  # a NaN lost
    assert not _close(np.array([1.0, np.nan, -np.inf, -2.0], np.float32), reference)  # another infinity
    assert not _close(np.array([np.nan, np.nan, np.inf, -2.0], np.float32), reference)  # a NaN too many
    assert not _close(np.array([1.1, np.nan, np.inf, -2.0], np.float32), reference)


def test_cli_errors_are_messages(tmp_path, capsys):
    cfg = require(ORACLE / "yolov3-tiny") / "cfg.cfg"
    assert main(["export", "--cfg", str(cfg), "--weights", str(tmp_path / "none.weights")]) == 1
    assert "none.weights: weights file not found" in capsys.readouterr().err
    weights = tmp_path / "short.weights"
    weights.write_bytes(b"\0" * 40)
    assert main(["export", "--cfg", str(cfg), "--weights", str(weights), "--opset", "11"]) == 1
    assert "short.weights" in capsys.readouterr().err
    classifier = require(ORACLE / "darknet19") / "cfg.cfg"
    model = build(classifier)
    with pytest.raises(ExportError, match="--decode needs a"):
        export_onnx(model, tmp_path / "c.onnx", decode=True)
    with pytest.raises(ExportError, match="opset 11 is not supported"):
        export_onnx(model, tmp_path / "c.onnx", opset=11)


def test_recurrent_network_is_refused_naming_the_layer(tmp_path):
    cfg = tmp_path / "r.cfg"
    cfg.write_text("[net]\nwidth=4\nheight=4\nchannels=1\n[crnn]\nsize=1\noutput=2\n")
    with pytest.raises(ExportError, match=r"r.cfg:5: \[crnn\] keeps a state from frame to frame"):
        export_onnx(Darknet.from_cfg(cfg), tmp_path / "r.onnx")
