"""darkpy.loss against hand-computed Darknet deltas (src/yolo_layer.c forward_yolo_layer, src/box.c dx_box_iou)."""
import math

import numpy as np
import pytest
import torch

from darkpy import boxes
from darkpy.boxes import dx_box_iou
from darkpy.cfg import parse_cfg_text
from darkpy.training.loss import DarknetLoss, LossError
from darkpy.model import Darknet
from helpers.heads import region_head

NET = 64
ANCHORS = [(10, 14), (23, 27), (37, 58)]


def yolo_model(extra: str = "", classes: int = 2, mask: str = "0,1,2") -> Darknet:
    """A 2x2-grid [yolo] head at 64x64: 3 anchors, `classes` classes."""
    filters = len(mask.split(",")) * (5 + classes)
    anchors = ", ".join(f"{w},{h}" for w, h in ANCHORS)
    text = f"""
[net]
width={NET}
height={NET}
channels=3
[maxpool]
size=32
stride=32
[convolutional]
filters={filters}
size=1
stride=1
pad=0
activation=linear
[yolo]
mask={mask}
anchors={anchors}
classes={classes}
num=3
{extra}
"""
    return Darknet(parse_cfg_text(text, "test.cfg"))


def zero_raw(classes: int = 2, anchors: int = 3) -> torch.Tensor:
    return torch.zeros(1, anchors, 5 + classes, 2, 2)


TRUTH = (0.3, 0.7, 0.3, 0.4, 1.0)  # cell i = int(0.3*2) = 0, j = int(0.7*2) = 1; best anchor: 23x27 (index 1)


def run(model: Darknet, raw: torch.Tensor, truths):
    loss = DarknetLoss(model.heads)
    t = torch.tensor([truths], dtype=torch.float32)
    return loss, loss(raw_outputs=[raw], truths=t, net_w=NET, net_h=NET)


def test_single_truth_mse_deltas_by_hand():
    model = yolo_model()
    raw = zero_raw()  # every activated x, y, obj, class = 0.5; w, h raw 0 -> anchor-sized boxes
    _, result = run(model, raw, [TRUTH])
    delta = result.deltas[0][0].numpy()  # (A, E, H, W)
    x, y, w, h, _ = TRUTH
    scale = 2 - w * h  # 1.88
    norm = 0.75  # iou_normalizer default
    expected_box = [scale * (x * 2 - 0 - 0.5) * norm,
                    scale * (y * 2 - 1 - 0.5) * norm,
                    scale * (math.log(w * NET / 23) - 0) * norm,
                    scale * (math.log(h * NET / 27) - 0) * norm]
    np.testing.assert_allclose(delta[1, :4, 1, 0], expected_box, rtol=1e-5)
    assert delta[1, 4, 1, 0] == pytest.approx(0.5)  # 1 - obj
    np.testing.assert_allclose(delta[1, 5:, 1, 0], [-0.5, 0.5])  # class 1 is the truth's
    # every other cell and anchor: objectness pushed to 0, nothing else (no other prediction reaches IoU .5)
    others = np.ones((3, 2, 2), bool)
    others[1, 1, 0] = False
    np.testing.assert_allclose(delta[:, 4][others], -0.5)
    assert not delta[:, :4][np.broadcast_to(others[:, None], (3, 4, 2, 2))].any()
    assert not delta[:, 5:][np.broadcast_to(others[:, None], (3, 2, 2, 2))].any()
    # Darknet's cost for mse is |delta|^2
    assert result.cost == pytest.approx(float((delta.astype(np.float64) ** 2).sum()), rel=1e-6)
    assert result.heads[0].count == 1


def _raw_with_matching_anchor2() -> torch.Tensor:
    """Anchor 2 (37x58) at the truth's cell predicts a 0.3x0.4 box centred at (0.25, 0.75): IoU .5738 with it."""
    raw = zero_raw()
    raw[0, 2, 2, 1, 0] = math.log(0.3 * NET / 37)
    raw[0, 2, 3, 1, 0] = math.log(0.4 * NET / 58)
    return raw


def test_ignore_thresh_zeroes_objectness_of_good_predictions():
    raw = _raw_with_matching_anchor2()
    pred = np.array([0.25, 0.75, 0.3, 0.4], np.float32)
    iou = float(boxes.box_iou(pred, np.array(TRUTH[:4], np.float32)))
    assert iou == pytest.approx(0.0875 / 0.1525, rel=1e-5)  # .5738 by hand
    _, low = run(yolo_model("ignore_thresh=.5"), raw, [TRUTH])
    _, high = run(yolo_model("ignore_thresh=.6"), raw, [TRUTH])
    assert low.deltas[0][0, 2, 4, 1, 0] == 0  # IoU .57 > .5: ignored
    assert high.deltas[0][0, 2, 4, 1, 0] == pytest.approx(-0.5)  # IoU .57 <= .6: a negative


def test_ignore_thresh_needs_a_class_probability_above_quarter():
    raw = _raw_with_matching_anchor2()
    raw[0, 2, 5:, 1, 0] = -5.0  # both class probabilities ~0.007 < 0.25 at that cell
    _, result = run(yolo_model("ignore_thresh=.5"), raw, [TRUTH])
    obj = torch.sigmoid(torch.tensor(0.0)).item()
    assert result.deltas[0][0, 2, 4, 1, 0] == pytest.approx(-obj)


def shape_iou(anchor):
    a = np.array([0, 0, anchor[0] / NET, anchor[1] / NET], np.float32)
    return float(boxes.box_iou(a, np.array([0, 0, 0.3, 0.4], np.float32)))


def test_iou_thresh_assigns_extra_anchors():
    # shape IoUs with the truth: anchor 0 .2848, anchor 1 .7915 (best), anchor 2 .2290
    assert shape_iou(ANCHORS[0]) == pytest.approx(0.0341796875 / 0.12, rel=1e-5)
    assert shape_iou(ANCHORS[2]) == pytest.approx(0.12 / (0.578125 * 0.90625), rel=1e-5)
    _, none = run(yolo_model(), zero_raw(), [TRUTH])
    _, one = run(yolo_model("iou_thresh=0.25"), zero_raw(), [TRUTH])
    _, two = run(yolo_model("iou_thresh=0.2"), zero_raw(), [TRUTH])
    positives = lambda r: sorted(n for n in range(3) if r.deltas[0][0, n, 4, 1, 0] > 0)
    assert positives(none) == [1]
    assert positives(one) == [0, 1]
    assert positives(two) == [0, 1, 2]
    # the extra anchor gets its own box delta, computed with its own anchor size
    x, y, w, h, _ = TRUTH
    expected_w = (2 - w * h) * math.log(w * NET / ANCHORS[0][0]) * 0.75
    assert two.deltas[0][0, 0, 2, 1, 0].item() == pytest.approx(expected_w, rel=1e-5)
    assert two.heads[0].count == 3


def test_iou_thresh_averages_box_deltas_over_classes_at_a_cell():
    # two truths of different classes in the same cell with the same best anchor
    t1 = (0.3, 0.7, 0.3, 0.4, 0.0)
    t2 = (0.3, 0.7, 0.3, 0.4, 1.0)
    _, single = run(yolo_model("iou_thresh=0.99"), zero_raw(), [t1])
    _, double = run(yolo_model("iou_thresh=0.99"), zero_raw(), [t1, t2])
    d1 = single.deltas[0][0, 1, :4, 1, 0]
    d2 = double.deltas[0][0, 1, :4, 1, 0]
    # box deltas accumulate (2x), then are divided by the 2 positive classes
    np.testing.assert_allclose(d2.numpy(), d1.numpy(), rtol=1e-6)
    np.testing.assert_allclose(double.deltas[0][0, 1, 5:, 1, 0].numpy(), [0.5, 0.5])
    # without iou_thresh < 1 the accumulated deltas stay doubled (no averaging)
    _, plain = run(yolo_model(), zero_raw(), [t1, t2])
    np.testing.assert_allclose(plain.deltas[0][0, 1, :4, 1, 0].numpy(), 2 * d1.numpy(), rtol=1e-6)
    assert plain.heads[0].rewritten_bbox == 1


def test_truths_end_at_first_zero_x_and_out_of_range_classes_are_skipped():
    _, with_padding = run(yolo_model(), zero_raw(), [TRUTH, (0, 0, 0, 0, 0), (0.8, 0.2, 0.3, 0.3, 0)])
    _, alone = run(yolo_model(), zero_raw(), [TRUTH])
    np.testing.assert_array_equal(with_padding.deltas[0].numpy(), alone.deltas[0].numpy())
    _, bad_class = run(yolo_model(), zero_raw(), [TRUTH, (0.8, 0.2, 0.3, 0.3, 7)])
    np.testing.assert_array_equal(bad_class.deltas[0].numpy(), alone.deltas[0].numpy())


def test_label_smoothing_and_counters_per_class():
    _, smooth = run(yolo_model("label_smooth_eps=0.1"), zero_raw(), [TRUTH])
    # y = y(1-eps) + eps/2: 0.95 for the class, 0.05 for the other
    np.testing.assert_allclose(smooth.deltas[0][0, 1, 5:, 1, 0].numpy(), [0.05 - 0.5, 0.95 - 0.5], rtol=1e-6)
    # cls_normalizer alone changes nothing (quirk) ...
    _, norm_only = run(yolo_model("cls_normalizer=3"), zero_raw(), [TRUTH])
    np.testing.assert_allclose(norm_only.deltas[0][0, 1, 5:, 1, 0].numpy(), [-0.5, 0.5])
    # ... with counters_per_class the true class gets multiplier (max/count) * cls_normalizer
    _, counted = run(yolo_model("cls_normalizer=3\ncounters_per_class=100,25"), zero_raw(), [TRUTH])
    d = counted.deltas[0][0, 1, :, 1, 0].numpy()
    assert d[6] == pytest.approx(0.5 * 4 * 3)  # class 1: multiplier 100/25 = 4
    assert d[5] == pytest.approx(-0.5)
    assert d[4] == pytest.approx(4 * 0.5)  # objectness x class multiplier
    x, _, w, h, _ = TRUTH
    assert d[0] == pytest.approx((2 - w * h) * (x * 2 - 0.5) * 0.75 * 4, rel=1e-5)


def test_obj_normalizer_and_scale_x_y():
    _, result = run(yolo_model("obj_normalizer=2\nscale_x_y=1.2"), zero_raw(), [TRUTH])
    d = result.deltas[0][0].numpy()
    assert d[0, 4, 0, 0] == pytest.approx(2 * -0.5)
    assert d[1, 4, 1, 0] == pytest.approx(2 * 0.5)
    # x is the scaled sigmoid: 0.5*1.2 - 0.1 = 0.5 at raw 0, so tx - x is unchanged
    assert d[1, 0, 1, 0] == pytest.approx((2 - 0.12) * (0.6 - 0.5) * 0.75, rel=1e-5)


def test_gradient_of_surrogate_is_minus_delta():
    model = yolo_model("iou_loss=ciou\niou_normalizer=0.07")
    torch.manual_seed(0)
    raw = (torch.randn(2, 3, 7, 2, 2) * 0.5).requires_grad_()
    truths = torch.tensor([[TRUTH, (0.8, 0.2, 0.2, 0.3, 0)], [(0.6, 0.4, 0.5, 0.5, 0), (0, 0, 0, 0, 0)]])
    loss = DarknetLoss(model.heads)
    result = loss([raw], truths, NET, NET)
    result.surrogate.backward()
    np.testing.assert_array_equal(raw.grad.numpy(), -result.deltas[0].numpy())


def test_new_coords_mse_targets():
    model = yolo_model("new_coords=1")
    raw = torch.full((1, 3, 7, 2, 2), 0.5)  # new_coords: the conv output is already logistic
    _, result = run(model, raw, [TRUTH])
    x, y, w, h, _ = TRUTH
    tw = math.sqrt(w * NET / (4 * 23))
    assert result.deltas[0][0, 1, 2, 1, 0].item() == pytest.approx((2 - w * h) * (tw - 0.5) * 0.75, rel=1e-5)
    assert result.deltas[0][0, 1, 4, 1, 0].item() == pytest.approx(0.5)


# ---- IoU-based box deltas (src/box.c dx_box_iou) -------------------------------------------------------------

def _numeric(f, box, k, eps=1e-6):
    a = list(box)
    b = list(box)
    a[k] += eps
    b[k] -= eps
    return (f(a) - f(b)) / (2 * eps)


def test_dx_box_iou_matches_numeric_gradient_of_iou_and_giou():
    pred = (0.45, 0.52, 0.3, 0.25)
    truth = (0.5, 0.5, 0.35, 0.3)
    iou = lambda p: float(boxes.box_iou(np.array(p, np.float64), np.array(truth, np.float64)))
    giou = lambda p: float(boxes.box_giou(np.array(p, np.float64), np.array(truth, np.float64)))
    for kind, f in (("iou", iou), ("giou", giou)):
        dx, dy, dw, dh = dx_box_iou(pred, truth, kind)
        assert dx == pytest.approx(_numeric(f, pred, 0), rel=1e-4)
        assert dy == pytest.approx(_numeric(f, pred, 1), rel=1e-4)
        # Darknet does not halve the w/h derivatives ("For dw and dh, we do not divided by 2")
        assert dw == pytest.approx(2 * _numeric(f, pred, 2), rel=1e-4)
        assert dh == pytest.approx(2 * _numeric(f, pred, 3), rel=1e-4)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _raw_predicting(cx: float, cy: float, w: float, h: float) -> torch.Tensor:
    """Raw values that make anchor 1 at the truth's cell (i=0, j=1) predict this box."""
    raw = zero_raw()
    raw[0, 1, 0, 1, 0] = _logit(cx * 2 - 0)
    raw[0, 1, 1, 1, 0] = _logit(cy * 2 - 1)
    raw[0, 1, 2, 1, 0] = math.log(w * NET / 23)
    raw[0, 1, 3, 1, 0] = math.log(h * NET / 27)
    return raw


@pytest.mark.parametrize("kind", ["giou", "diou", "ciou"])
def test_iou_loss_deltas_are_finite_and_point_towards_the_truth(kind):
    model = yolo_model(f"iou_loss={kind}")
    x, y, w, h, _ = TRUTH
    # too large, centred on the truth: shrink w and h
    _, bigger = run(model, _raw_predicting(x, y, 0.45, 0.6), [TRUTH])
    d = bigger.deltas[0][0, 1, :4, 1, 0].numpy()
    assert np.isfinite(d).all()
    assert d[2] < 0 and d[3] < 0
    assert abs(d[0]) < 1e-3 and abs(d[1]) < 1e-3
    # right size, left of and below the truth: move right and up
    _, shifted = run(model, _raw_predicting(x - 0.1, y + 0.1, w, h), [TRUTH])
    d = shifted.deltas[0][0, 1, :4, 1, 0].numpy()
    assert np.isfinite(d).all()
    assert d[0] > 0 and d[1] < 0
    # no overlap at all: still finite and towards the truth (GIoU/DIoU/CIoU branch of dx_box_iou)
    _, apart = run(model, _raw_predicting(0.05, 0.95, 0.05, 0.05), [TRUTH])
    d = apart.deltas[0][0, 1, :4, 1, 0].numpy()
    assert np.isfinite(d).all()
    assert d[0] > 0 and d[1] < 0
    # the printed cost: iou_normalizer * mean(1 - IoU or GIoU) + |delta without box entries|^2
    pred = np.array([x - 0.1, y + 0.1, w, h], np.float32)
    truth = np.array(TRUTH[:4], np.float32)
    term = boxes.box_giou(pred, truth) if kind == "giou" else boxes.box_iou(pred, truth)
    no_box = float((shifted.deltas[0][:, :, 4:].double() ** 2).sum())
    assert shifted.cost == pytest.approx(0.75 * (1 - float(term)) + no_box, rel=1e-4)


def test_max_delta_clips_iou_deltas():
    raw = zero_raw()
    _, free = run(yolo_model("iou_loss=giou\niou_normalizer=10"), raw, [TRUTH])
    _, clipped = run(yolo_model("iou_loss=giou\niou_normalizer=10\nmax_delta=0.05"), raw, [TRUTH])
    d_free = free.deltas[0][0, 1, :4, 1, 0].numpy()
    d_clip = clipped.deltas[0][0, 1, :4, 1, 0].numpy()
    np.testing.assert_allclose(d_clip, np.clip(d_free, -0.05, 0.05), rtol=1e-6)
    assert (np.abs(d_free) > 0.05).any()


def test_delta_normalizer_scales_the_gradient_not_the_cost():
    """backward_yolo_layer_gpu hands delta_normalizer * delta to the layer below; the printed cost is unchanged."""
    grads, costs = [], []
    for extra in ("", "delta_normalizer=2.5"):
        raw = zero_raw().requires_grad_(True)
        _, result = run(yolo_model(extra), raw, [TRUTH])
        result.surrogate.backward()
        grads.append(raw.grad)
        costs.append(result.cost)
    assert costs[0] == costs[1]
    assert torch.count_nonzero(grads[0]) > 0
    torch.testing.assert_close(grads[1], 2.5 * grads[0])


def test_unsupported_heads_and_options():
    with pytest.warns(UserWarning, match="embedding_layer"):
        DarknetLoss(yolo_model("embedding_layer=5").heads)
    with pytest.raises(LossError, match="no \\[yolo\\] or \\[region\\]"):
        DarknetLoss([])


# ---- [region] -------------------------------------------------------------------------------------------------

def test_region_positive_deltas_by_hand():
    anchors = np.array([[1.0, 1.0], [2.0, 3.0]], np.float32)  # grid cells
    head = region_head(2, anchors, bias_match=1, object_scale=5, noobject_scale=1, class_scale=1,
                       coord_scale=1)
    out = np.zeros((1, 2, 7, 2, 2), np.float32)
    out[:, :, 4] = 0.5  # activated objectness
    out[:, :, 5:] = 0.5  # softmax over 2 classes at equal logits
    truths = np.array([[(0.3, 0.7, 0.9, 1.4, 1)]], np.float32)  # 1.8 x 2.8 cells: anchor 1 fits best
    delta, stats = head.deltas(out, truths, (NET, NET), seen=100000)
    sig = 0.5
    d = delta[0, 1, :, 1, 0]
    assert d[0] == pytest.approx((0.3 * 2 - 0 - sig) * sig * (1 - sig), rel=1e-5)
    assert d[1] == pytest.approx((0.7 * 2 - 1 - sig) * sig * (1 - sig), rel=1e-5)
    assert d[2] == pytest.approx(math.log(0.9 * 2 / 2.0), rel=1e-5)
    assert d[3] == pytest.approx(math.log(1.4 * 2 / 3.0), rel=1e-5)
    assert d[4] == pytest.approx(5 * (1 - 0.5) * 0.25)
    np.testing.assert_allclose(d[5:], [-0.5, 0.5])
    assert delta[0, 0, 4, 0, 0] == pytest.approx(-0.5 * 0.25)  # noobject
    assert stats.cost == pytest.approx(float((delta.astype(np.float64) ** 2).sum()), rel=1e-6)
    # early training (seen < 12800) pulls every prediction towards its anchor prior with scale .01
    early, _ = head.deltas(out, truths, (NET, NET), seen=0)
    assert early[0, 0, 0, 0, 0] == pytest.approx(0.01 * (0.5 - sig) * 0.25)
    assert early[0, 0, 2, 0, 0] == pytest.approx(0.0)
    np.testing.assert_allclose(early[0, 1, :, 1, 0], d)  # the positive overwrites the prior term
