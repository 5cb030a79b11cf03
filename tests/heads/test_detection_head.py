"""[detection] (YOLOv1, src/detection_layer.c) on hand-made numbers; tests/fixtures/detection-small and t1.test
hold C Darknet's outputs and boxes (checked by tests/test_parity.py), detection-loss its training delta."""
import json
import warnings

import numpy as np
import pytest
import torch

from darkpy.cfg import CfgError
from conftest import LOCAL_FIXTURES
from darkpy.boxes import box_iou
from darkpy.model import Darknet

# side 2, num 1, classes 2: 4 x (1 x 5 + 2) = 28 values
CFG = "[net]\nwidth=4\nheight=4\nchannels=1\n[connected]\noutput={outputs}\nactivation=linear\n[detection]\nclasses=2\n" \
      "coords=4\nside=2\nnum=1\nsoftmax={softmax}\nsqrt=1\n"


def build(tmp_path, outputs=28, softmax=1):
    path = tmp_path / "d.cfg"
    path.write_text(CFG.format(outputs=outputs, softmax=softmax))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet.from_cfg(path).eval()


def test_softmax_over_each_cells_classes_only(tmp_path):
    model = build(tmp_path)
    raw = torch.arange(28.0).view(1, 28, 1, 1) / 10
    out = model.heads[0].activate(raw).flatten()
    scores = out[:8].view(4, 2)
    assert torch.allclose(scores.sum(dim=1), torch.ones(4))
    assert torch.allclose(scores[0], torch.softmax(torch.tensor([0.0, 0.1]), dim=0))
    assert torch.equal(out[8:], raw.flatten()[8:])  # objectness and boxes as they come


def test_decode_is_get_detection_detections(tmp_path):
    head = build(tmp_path, softmax=0).heads[0]
    flat = np.zeros(28, np.float32)
    flat[6:8] = [0.25, 0.75]  # cell 3 (row 1, col 1): class scores
    flat[8 + 3] = 0.8  # its objectness
    flat[12 + 3 * 4:12 + 4 * 4] = [0.5, 0.25, 0.5, 0.4]  # its box: x, y, sqrt(w), sqrt(h)
    boxes = head.decode(flat.reshape(28, 1, 1), (4, 4), (640, 480), thresh=0.3)
    np.testing.assert_allclose(boxes.xywh[3], [(0.5 + 1) / 2, (0.25 + 1) / 2, 0.25, 0.16], rtol=1e-6)
    np.testing.assert_allclose(boxes.probs[3], [0.0, 0.8 * 0.75], rtol=1e-6)  # 0.2 is under thresh
    assert boxes.objectness[3] == np.float32(0.8) and len(boxes) == 4


def test_wrong_size_is_refused(tmp_path):
    with pytest.raises(CfgError, match="needs 28"):
        build(tmp_path, outputs=27)


def test_loss_is_forward_detection_layers(tmp_path):
    head = build(tmp_path, softmax=0).heads[0]
    out = np.zeros((1, 28, 1, 1), np.float32)
    flat = out.reshape(-1)
    flat[8 + 3] = 0.5  # objectness of cell 3 (row 1, col 1)
    flat[12 + 3 * 4:12 + 4 * 4] = [0.3, 0.6, 0.4, 0.5]  # its box: x, y in the cell, sqrt(w), sqrt(h)
    flat[8 + 0] = 0.2  # an empty cell's objectness
    truths = np.array([[[0.75, 0.75, 0.25, 0.16, 1]]], np.float32)  # cell 3, offsets (0.5, 0.5)
    delta, stats = head.deltas(out, truths, (4, 4), seen=0)
    d = delta.reshape(-1)
    np.testing.assert_allclose(d[6:8], [0.0, 1.0])  # cell 3's classes towards one-hot class 1
    np.testing.assert_allclose(d[8:12], [-0.2, 0, 0, 0.5])  # noobject everywhere, object 1 - 0.5 at the truth
    np.testing.assert_allclose(d[24:28], [0.2, -0.1, 0.1, -0.1], rtol=1e-6)  # towards (0.5, 0.5, sqrt w, sqrt h)
    iou = float(box_iou(np.array([0.15, 0.3, 0.16, 0.25], np.float32), np.array([0.25, 0.25, 0.25, 0.16],
                                                                                 np.float32)))
    assert stats.count == 1 and stats.avg_iou == pytest.approx(iou, rel=1e-6)
    assert stats.cost == pytest.approx(float(np.square(delta, dtype=np.float64).sum()))  # Darknet: |delta|^2


def test_loss_equals_darknets(tmp_path):
    # C Darknet's delta and cost for one image (tests/fixtures/detection-loss: softmax, sqrt, rescore, scales).
    fixture = json.loads((LOCAL_FIXTURES / "detection-loss" / "darknet.json").read_text())
    path = tmp_path / "d.cfg"
    path.write_text(fixture["cfg"])
    head = Darknet.from_cfg(path).heads[0]
    raw = torch.tensor(fixture["raw"]).view(1, -1, 1, 1)
    delta, stats = head.deltas(head.activate(raw).numpy(), np.array([fixture["truths"]], np.float32), (4, 4), 0)
    np.testing.assert_allclose(delta.reshape(-1), fixture["delta"], atol=1e-6)
    assert stats.cost == pytest.approx(fixture["cost"], rel=1e-6)
    assert stats.count == 2  # the third box shares the first one's cell: fill_truth_region keeps the first
