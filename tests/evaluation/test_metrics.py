"""darkpy.evaluation.metrics against C Darknet's `detector map` output and hand-computed cases."""
import json
import math

import numpy as np
import pytest

from conftest import ORACLE, require
from darkpy.boxes import Detection, box_iou
from darkpy.data import read_labels, read_names
from darkpy.evaluation.metrics import (
    COCO_CATEGORY_IDS,
    MapAccumulator,
    coco_category_ids,
    coco_evaluate,
    coco_image_ids,
    coco_results,
    darknet_map,
    format_map_report,
)
from map_report import parse_map_report

MAP_DIR = ORACLE / "map-tiny3"
REAL = ORACLE / "real-yolov3-tiny"
# valid.txt order; darknet's output files and the flags that made them
IMAGES = ["dog", "person", "horses"]
DARKNET_RUNS = {
    "map_points0.txt": (0.5, 0),
    "map_points11.txt": (0.5, 11),
    "map_points101.txt": (0.5, 101),
    "map_iou075.txt": (0.75, 0),
}


def oracle_detections(name):
    """Darknet's own boxes for `detector map` (thresh 0.005, hier 0, NMS .45), in darknet's NMS output order."""
    data = json.loads(require(REAL / name / "detections_map.json").read_text())
    detections = []
    for box in data["post_nms"]:
        probs = np.zeros(80, np.float32)
        for class_id, prob in box["probs_nonzero"].items():
            probs[int(class_id)] = prob
        detections.append(Detection(*box["bbox_xywh_rel"], box["objectness"], probs))
    return detections, tuple(data["orig_image_wh"])


def darknet_output(file_name):
    """darknet's stdout, its CRs kept (progress lines end with CR, not LF)."""
    with open(require(MAP_DIR / "darknet-output" / file_name), newline="") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def tiny3():
    require(MAP_DIR)
    names = read_names(str(MAP_DIR / "coco.names"))
    images = [(name, *oracle_detections(name), read_labels(str(MAP_DIR / f"{name}.txt"), 80)) for name in IMAGES]
    return names, images


def accumulate(images, iou_thresh, thresh=0.25):
    accumulator = MapAccumulator(80, iou_thresh=iou_thresh, thresh=thresh)
    for name, detections, size, truths in images:
        accumulator.add_image(detections, truths, image_size=size, name=name)
    return accumulator


@pytest.mark.parametrize("output_name", sorted(DARKNET_RUNS))
def test_map_equals_darknet_output(tiny3, output_name):
    names, images = tiny3
    iou_thresh, points = DARKNET_RUNS[output_name]
    darknet = parse_map_report(darknet_output(output_name))
    result = accumulate(images, iou_thresh).result(points)
    ours = parse_map_report("\n".join(format_map_report(result, names)))

    assert len(darknet.ap_percent) == 80
    assert result.detections_count == 124 and result.unique_truth_count == 12
    for class_id in range(80):
        assert abs(result.ap[class_id] * 100 - darknet.ap_percent[class_id]) <= 0.005 + 1e-9, class_id
        assert result.tp_per_class[class_id] == darknet.tp[class_id], class_id
        assert result.fp_per_class[class_id] == darknet.fp[class_id], class_id
    assert (result.tp, result.fp, result.fn) == (darknet.total_tp, darknet.total_fp, darknet.total_fn)
    assert (ours.precision, ours.recall, ours.f1) == (darknet.precision, darknet.recall, darknet.f1)
    assert ours.average_iou_percent == darknet.average_iou_percent
    assert abs(result.mean_ap - darknet.mean_ap) <= 5e-7
    # ... and the report is darknet's, character for character
    assert format_map_report(result, names) == darknet.report_lines


def test_known_darknet_figures(tiny3):
    """The figures quoted in the oracle README and darknet's output, as literal numbers."""
    names, images = tiny3
    accumulator = accumulate(images, 0.5)
    by_points = {points: accumulator.result(points) for points in (0, 11, 101)}
    assert round(by_points[0].mean_ap, 6) == 0.050360
    assert round(by_points[11].mean_ap, 6) == 0.050528
    assert round(by_points[101].mean_ap, 6) == 0.050379
    assert round(by_points[0].ap[16] * 100, 2) == 83.33  # dog
    assert round(by_points[11].ap[16] * 100, 2) == 84.85
    assert round(by_points[0].ap[17] * 100, 2) == 69.55  # horse
    # bicycle: the first-ranked bicycle box is a TP (AP 100 %), yet at thresh .25 darknet counts the only box
    # above it as a FP, because a weaker bicycle box earlier in the NMS output took the truth first.
    assert by_points[0].ap[1] == 1.0 and (by_points[0].tp_per_class[1], by_points[0].fp_per_class[1]) == (0, 1)


def test_thresh_counts_depend_on_nms_output_order():
    """Darknet's TP/FP at thresh look at earlier records *of the image in NMS output order*, any probability."""
    truth = np.array([[0, 0.5, 0.5, 0.2, 0.2]], np.float32)
    weak = Detection(0.5, 0.5, 0.2, 0.2, 0.1, np.array([0.01], np.float32))
    strong = Detection(0.5, 0.5, 0.2, 0.2, 0.9, np.array([0.9], np.float32))
    weak_first = darknet_map([[weak, strong]], [truth], classes=1)
    strong_first = darknet_map([[strong, weak]], [truth], classes=1)
    assert (weak_first.tp, weak_first.fp) == (0, 1)
    assert (strong_first.tp, strong_first.fp) == (1, 0)
    # the ranking itself goes by probability: AP is 100 % both ways
    assert weak_first.ap == strong_first.ap == [1.0]


def test_ap_by_hand():
    """Two truths; ranked TP, FP, TP: precision 1, .5, .667 at recall .5, .5, 1."""
    truths = np.array([[0, 0.2, 0.2, 0.1, 0.1], [0, 0.7, 0.7, 0.1, 0.1]], np.float32)
    detections = [Detection(0.2, 0.2, 0.1, 0.1, 1, np.array([0.9], np.float32)),
                  Detection(0.45, 0.45, 0.1, 0.1, 1, np.array([0.8], np.float32)),
                  Detection(0.7, 0.7, 0.1, 0.1, 1, np.array([0.7], np.float32))]
    auc = darknet_map([detections], [truths], classes=1, points=0).ap[0]
    voc = darknet_map([detections], [truths], classes=1, points=11).ap[0]
    assert auc == pytest.approx(0.5 * 1 + 0.5 * (2 / 3), abs=1e-12)
    assert voc == pytest.approx((6 * 1 + 5 * (2 / 3)) / 11, abs=1e-12)


def test_map_averages_over_all_classes():
    truths = np.array([[0, 0.5, 0.5, 0.2, 0.2]], np.float32)
    detections = [Detection(0.5, 0.5, 0.2, 0.2, 1, np.array([0.9, 0, 0, 0], np.float32))]
    result = darknet_map([detections], [truths], classes=4)
    assert result.ap == [1.0, 0.0, 0.0, 0.0] and result.mean_ap == 0.25


def test_iou_threshold_is_strict():
    truth = np.array([[0, 0.5, 0.5, 0.5, 0.5]], np.float32)
    # half as wide, same centre: IoU exactly 0.5 -> not a match at iou_thresh .5
    detection = Detection(0.5, 0.5, 0.25, 0.5, 1, np.array([0.9], np.float32))
    assert box_iou(np.float32([0.5, 0.5, 0.25, 0.5]), truth[0, 1:]) == np.float32(0.5)
    assert darknet_map([[detection]], [truth], classes=1, iou_thresh=0.5).ap == [0.0]
    assert darknet_map([[detection]], [truth], classes=1, iou_thresh=0.49).ap == [1.0]


def test_difficult_detection_leaves_ranking_but_counts_fp_at_thresh():
    """A detection of a `difficult` object is dropped from the ranking, but darknet still counts it as a FP
    at thresh (it decrements the detection count and goes on to the threshold step)."""
    truths = np.zeros((0, 5), np.float32)
    difficult = np.array([[0, 0.5, 0.5, 0.2, 0.2]], np.float32)
    detection = Detection(0.5, 0.5, 0.2, 0.2, 1, np.array([0.9], np.float32))
    result = darknet_map([[detection]], [truths], classes=1, difficult=[difficult])
    assert result.detections_count == 0
    assert (result.tp, result.fp) == (0, 1)


def test_nan_printed_like_glibc():
    """No detection above thresh and no truth: darknet divides 0 by 0 and glibc prints -nan."""
    result = darknet_map([[Detection(0.5, 0.5, 0.2, 0.2, 1, np.array([0.1], np.float32))]],
                         [np.zeros((0, 5), np.float32)], classes=1)
    line = format_map_report(result, ["a"])[-5]
    assert line == " for conf_thresh = 0.25, precision = -nan, recall = -nan, F1-score = -nan "
    assert math.isnan(parse_map_report("\n".join(format_map_report(result, ["a"]))).precision)


def test_points_validation():
    with pytest.raises(ValueError, match="points"):
        MapAccumulator(1).result(points=1)


# --------------------------------------------------------------------------------------------- COCO

def test_coco_ids():
    assert coco_category_ids(read_names(str(require(MAP_DIR / "coco.names")))) == COCO_CATEGORY_IDS
    assert COCO_CATEGORY_IDS[79] == 90 and COCO_CATEGORY_IDS[11] == 13 and len(COCO_CATEGORY_IDS) == 80
    assert coco_category_ids(["cat", "dog"]) == [0, 1]
    assert coco_image_ids(["val/COCO_val2014_000000000042.jpg", "x/000000000139.jpg"]) == [42, 139]
    assert coco_image_ids(["a/dog.jpg", "a/7.jpg"]) == [0, 1]  # a name without a number: indices for all
    assert coco_image_ids(["a/7.jpg", "b/7.jpg"]) == [0, 1]  # two images would share an id


def test_coco_results_are_darknet_pixels(tiny3):
    names, images = tiny3
    accumulator = accumulate(images[:1], 0.5)
    results = coco_results(accumulator, coco_category_ids(names), [42])
    assert len(results) == 63  # dog.jpg: one result per box and class with prob > 0
    width, height = images[0][2]
    first = images[0][1][0]  # tvmonitor (62 -> COCO id 72)
    assert results[0]["category_id"] == 72 and results[0]["image_id"] == 42
    left, right = (first.x - first.w / 2) * width, (first.x + first.w / 2) * width
    assert left < 0  # this box crosses the left border: clipped to 0
    assert results[0]["bbox"][0] == 0
    assert results[0]["bbox"][2] == pytest.approx(right, abs=1e-3)
    assert results[0]["score"] == pytest.approx(first.probs[62], abs=1e-6)
    for result in results:  # clipped to the image as darknet's print_cocos does
        x, y, w, h = result["bbox"]
        assert x >= 0 and y >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3


def test_coco_perfect_detections_score_one():
    truths = np.array([[0, 0.3, 0.3, 0.2, 0.2], [1, 0.7, 0.6, 0.3, 0.5]], np.float32)
    detections = [Detection(*t[1:], 1.0, np.eye(2, dtype=np.float32)[int(t[0])] * 0.9) for t in truths]
    accumulator = MapAccumulator(2)
    accumulator.add_image(detections, truths, image_size=(640, 480))
    coco = coco_evaluate(accumulator, ["a", "b"])
    assert coco.stats["AP"] == pytest.approx(1.0) and coco.stats["AP50"] == pytest.approx(1.0)
    assert coco.stats["APs"] == -1.0  # no small objects: undefined, as pycocotools reports it
    assert any("IoU=0.50:0.95" in line for line in coco.lines)


def test_coco_on_darknet_detections_agrees_with_darknet_101_points(tiny3):
    """pycocotools' AP50 / AP75 are 101-recall-point APs averaged over the classes that have truths; on this
    data (no crowd, no competing matches) they equal darknet's -points 101 APs averaged the same way."""
    names, images = tiny3
    coco = coco_evaluate(accumulate(images, 0.5), names, image_ids=[1, 2, 3])
    for iou_thresh, key in ((0.5, "AP50"), (0.75, "AP75")):
        result = accumulate(images, iou_thresh).result(101)
        with_truths = np.array(result.truths_per_class) > 0
        assert coco.stats[key] == pytest.approx(np.array(result.ap)[with_truths].mean(), abs=1e-9)
    assert round(coco.stats["AP50"], 4) == 0.6717
    assert 0 < coco.stats["AP"] < coco.stats["AP75"] < coco.stats["AP50"]
