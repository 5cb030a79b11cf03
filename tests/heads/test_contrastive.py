"""[contrastive] in training: C Darknet's forward_yolo_layer (track ids and class ids per cell) then
forward_contrastive_layer (delta and cost), stored in tests/fixtures/contrastive-loss by a small C program run on
the stored embeddings, raw [yolo] values and truths; and the GPU build's rule for two pairs or fewer."""
import json
import warnings

import numpy as np
import pytest
import torch

from conftest import LOCAL_FIXTURES
from darkpy.cfg import CfgError
from darkpy.heads import LossError
from darkpy.model import Darknet
from darkpy.training.loss import DarknetLoss

FIXTURE = json.loads((LOCAL_FIXTURES / "contrastive-loss" / "darknet.json").read_text())["cases"]
SHAPE = (4, 8, 3, 3)  # embeddings: batch 4, 2 anchors x 4 values, a 3x3 grid


def _model(tmp_path, cfg_text):
    path = tmp_path / "c.cfg"
    path.write_text(cfg_text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet.from_cfg(path)


@pytest.mark.parametrize("case", range(3))
def test_track_labels_and_contrastive_delta_equal_darknets(tmp_path, case):
    """Cases: temperature 1; temperature 0.5 with cls_normalizer=2, max_delta=0.05 (clipping) and
    contrastive_neg_max=1; time_steps=2 (pairs only inside a time step) with temperature 0.7 and neg_max 5."""
    fixture = FIXTURE[case]
    model = _model(tmp_path, fixture["cfg"])
    yolo, contrastive = model.layers[2], model.layers[4]
    labels, class_ids = yolo.track_labels(np.array(fixture["truths"], np.float32), (3, 3), (3, 3))
    np.testing.assert_array_equal(labels.ravel(), fixture["labels"])
    np.testing.assert_array_equal(class_ids.ravel(), fixture["class_ids"])
    delta, cost = contrastive.deltas(np.array(fixture["embedding"], np.float32).reshape(SHAPE), labels, class_ids)
    reference = np.array(fixture["delta"], np.float32).reshape(SHAPE)
    assert np.count_nonzero(reference) == 40  # 10 labelled cells x 4 values
    # Darknet's -Ofast build may reorder its float sums: a few float ulps of the order-1 terms
    np.testing.assert_allclose(delta, reference, rtol=1e-6, atol=1e-6)
    assert cost == pytest.approx(fixture["cost"], rel=1e-6)


def test_the_options_change_the_delta(tmp_path):
    """Guard of the test above: case 0's embeddings with case 1's options give another delta."""
    fixture = FIXTURE[0]
    model = _model(tmp_path, FIXTURE[1]["cfg"])
    labels, class_ids = model.layers[2].track_labels(np.array(fixture["truths"], np.float32), (3, 3), (3, 3))
    delta, _ = model.layers[4].deltas(np.array(fixture["embedding"], np.float32).reshape(SHAPE), labels, class_ids)
    assert np.abs(delta - np.array(fixture["delta"], np.float32).reshape(SHAPE)).max() > 0.01


def test_two_pairs_or_fewer_keep_p_zero_as_darknets_gpu_build(tmp_path):
    """forward_contrastive_layer_gpu runs P_constrastive_f_det_gpu only for more than two pairs, so with one
    object seen twice P stays 0 and cell i's delta is -(sim·z_i - z_j) / (T·|z_i|) (N = 2); the CPU build would
    use P = 0.9999 (its denominator is empty) and give 1e-4 of that."""
    model = _model(tmp_path, FIXTURE[0]["cfg"].replace("temperature=1.0", "temperature=0.5"))
    contrastive = model.layers[4]
    rng = np.random.default_rng(3)
    embedding = rng.normal(size=SHAPE).astype(np.float32)
    labels = np.full((4, 2, 3, 3), -1)
    class_ids = np.full((4, 2, 3, 3), -1)
    labels[0, 1, 2, 0] = labels[1, 0, 1, 1] = 7
    class_ids[0, 1, 2, 0] = class_ids[1, 0, 1, 1] = 1
    delta, cost = contrastive.deltas(embedding, labels, class_ids)
    z_i, z_j = embedding[0, 4:8, 2, 0].astype(np.float64), embedding[1, 0:4, 1, 1].astype(np.float64)
    sim = z_i @ z_j / np.linalg.norm(z_i) / np.linalg.norm(z_j)
    np.testing.assert_allclose(delta[0, 4:8, 2, 0], -(sim * z_i - z_j) / (0.5 * np.linalg.norm(z_i)), rtol=1e-5)
    np.testing.assert_allclose(delta[1, 0:4, 1, 1], -(sim * z_j - z_i) / (0.5 * np.linalg.norm(z_j)), rtol=1e-5)
    assert np.count_nonzero(delta) == 8
    assert cost == pytest.approx(float((delta.astype(np.float64) ** 2).sum()), rel=1e-6)


def test_a_zero_embedding_stops_training_as_in_darknet(tmp_path):
    fixture = FIXTURE[0]
    model = _model(tmp_path, fixture["cfg"])
    labels, class_ids = model.layers[2].track_labels(np.array(fixture["truths"], np.float32), (3, 3), (3, 3))
    with pytest.raises(LossError, match="vec_len"):
        model.layers[4].deltas(np.zeros(SHAPE, np.float32), labels, class_ids)


def test_the_embeddings_must_be_the_yolo_layers(tmp_path):
    cfg = FIXTURE[0]["cfg"]
    with pytest.raises(CfgError, match="embedding_size=0"):
        _model(tmp_path, cfg.replace("embedding_layer=-2\n", ""))
    with pytest.raises(CfgError, match="must be the \\[yolo\\] layer"):
        _model(tmp_path, cfg.replace("yolo_layer=-2", "yolo_layer=-1"))


def test_the_loss_applies_the_delta_to_the_embedding_layer(tmp_path):
    """DarknetLoss: the surrogate's gradient w.r.t. the [contrastive] input is minus Darknet's delta, and the
    printed cost is get_network_cost's mean over the layers with a cost ([yolo] and [contrastive])."""
    fixture = FIXTURE[0]
    model = _model(tmp_path, fixture["cfg"])
    loss = DarknetLoss(model.heads, contrastive=model.contrastive_layers(), warn=False)
    raw = torch.tensor(fixture["raw"]).view(4, 2, 7, 3, 3).requires_grad_()
    embedding = torch.tensor(fixture["embedding"]).view(SHAPE).requires_grad_()
    result = loss([raw], torch.tensor(fixture["truths"]), 3, 3, fixture["seen"], embeddings=[embedding])
    result.surrogate.backward()
    np.testing.assert_allclose(-embedding.grad.numpy(), np.array(fixture["delta"]).reshape(SHAPE), rtol=1e-6,
                               atol=1e-6)
    assert result.cost == pytest.approx((result.heads[0].cost + fixture["cost"]) / 2, rel=1e-6)
