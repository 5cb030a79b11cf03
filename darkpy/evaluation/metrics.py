"""Detection metrics: darknet's `detector map` arithmetic, its printed report, and COCO metrics.

`MapAccumulator` reproduces AlexeyAB darknet's src/detector.c `validate_detector_map` step by step (matching,
the TP/FP counts at `-thresh`, the ranking, per-class precision/recall, AP by area under the curve or N recall
points, mAP over all classes) so that the numbers equal darknet's to the printed digit; `format_map_report`
prints them with darknet's printf formats. `coco_evaluate` scores the same detections with pycocotools
(AP@[.5:.95] and friends), and `coco_results` gives the COCO results JSON darknet's `valid` writes.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from darkpy.boxes import box_iou

__all__ = [
    "MapAccumulator",
    "MapResult",
    "darknet_map",
    "format_map_report",
    "COCO_NAMES",
    "COCO_CATEGORY_IDS",
    "coco_category_ids",
    "coco_image_ids",
    "coco_results",
    "write_coco_results",
    "CocoResult",
    "coco_evaluate",
]


# --------------------------------------------------------------------------------------------- IoU

def _iou_matrix(boxes: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """(N, T) float32 IoU of every box with every truth, darknet's `box_iou` (0 where I or U is 0)."""
    a = np.asarray(boxes, dtype=np.float32).reshape(-1, 1, 4)
    b = np.asarray(truths, dtype=np.float32).reshape(1, -1, 4)
    return box_iou(a, b)


# --------------------------------------------------------------------------------------------- accumulation

def _detections_to_arrays(detections: Sequence[Any], classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """(boxes (N, 4), probs (N, classes)) float32 from Detection-like objects (x, y, w, h, probs)."""
    if len(detections) == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0, classes), np.float32)
    boxes = np.array([[d.x, d.y, d.w, d.h] for d in detections], dtype=np.float32)
    probs = np.stack([np.asarray(d.probs, dtype=np.float32).reshape(-1) for d in detections])
    if probs.shape[1] != classes:
        raise ValueError(f"detections have {probs.shape[1]} class probabilities, the evaluation has {classes} classes")
    return boxes, probs


@dataclass
class _ImageRecords:
    """What darknet's map keeps of one image: one record per (box, class) with prob > 0."""

    boxes: np.ndarray  # (R, 4) float32 relative x, y, w, h
    probs: np.ndarray  # (R,) float32
    class_ids: np.ndarray  # (R,) int64
    truth_index: np.ndarray  # (R,) int64: unique (dataset-wide) index of the matched truth, or -1
    kept: np.ndarray  # (R,) bool: False for a detection of a `difficult` object (left out of the ranking)
    truths: np.ndarray  # (T, 5) float32 class, x, y, w, h
    size: Optional[Tuple[int, int]]  # original image (width, height)
    name: Optional[str]


class MapAccumulator:
    """Darknet's `validate_detector_map`, fed one image at a time in the order of the valid list.

    `iou_thresh` (a detection matches a truth of its class with IoU strictly above it) and `thresh` (the
    confidence for the TP/FP/precision/recall/F1/average-IoU lines) act while images are added; the AP
    method (`points`) is chosen in `result()`, so one accumulation serves -points 0, 11 and 101.
    """

    def __init__(self, classes: int, iou_thresh: float = 0.5, thresh: float = 0.25):
        self.classes = int(classes)
        # darknet keeps both as C floats and compares float32 values with them.
        self.iou_thresh = np.float32(iou_thresh)
        self.thresh = np.float32(thresh)
        self.images: List[_ImageRecords] = []
        self.unique_truth_count = 0
        self.truth_classes_count = np.zeros(self.classes, dtype=np.int64)
        self.tp_for_thresh = np.zeros(self.classes, dtype=np.int64)
        self.fp_for_thresh = np.zeros(self.classes, dtype=np.int64)
        self.avg_iou_sum = np.float32(0)  # darknet's `avg_iou`, a float sum of the matched IoUs

    def add_image(self, detections: Sequence[Any], truths: np.ndarray,
                  difficult: Optional[np.ndarray] = None, image_size: Optional[Tuple[int, int]] = None,
                  name: Optional[str] = None) -> None:
        """Add one image: its detections after NMS, in darknet's order (the order matters, see below),
        its truths (N, 5) [class, x, y, w, h] relative, and optionally the `difficult` truths of the image.
        """
        boxes, probs = _detections_to_arrays(detections, self.classes)
        self.add_image_arrays(boxes, probs, truths, difficult, image_size, name)

    def add_image_arrays(self, boxes: np.ndarray, probs: np.ndarray, truths: np.ndarray,
                         difficult: Optional[np.ndarray] = None, image_size: Optional[Tuple[int, int]] = None,
                         name: Optional[str] = None) -> None:
        """`add_image` with the detections as arrays: boxes (N, 4) x, y, w, h and probs (N, classes)."""
        truths = np.asarray(truths, dtype=np.float32).reshape(-1, 5)
        truth_classes = truths[:, 0].astype(np.int64)
        if np.any((truth_classes < 0) | (truth_classes >= self.classes)):
            raise ValueError(f"truth class ids must lie in 0..{self.classes - 1} (read_labels skips the others)")
        probs = np.asarray(probs, dtype=np.float32).reshape(-1, self.classes)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        np.add.at(self.truth_classes_count, truth_classes, 1)

        # One record per box and class with prob > 0, box-major then class order, as darknet appends them.
        rows, record_classes = np.nonzero(probs > 0)
        record_probs = probs[rows, record_classes]
        truth_index, match_iou = self._match(boxes[rows], record_classes, truths, self.unique_truth_count)
        kept = self._not_difficult(boxes[rows], record_classes, truth_index, difficult)
        self._count_at_thresh(record_probs, record_classes, truth_index, match_iou, kept)

        self.images.append(_ImageRecords(boxes[rows], record_probs, record_classes.astype(np.int64),
                                         truth_index, kept, truths, image_size, name))
        self.unique_truth_count += len(truths)

    def _match(self, boxes: np.ndarray, classes: np.ndarray, truths: np.ndarray,
               first_index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Best truth of the same class with IoU > iou_thresh for each record (first one on ties)."""
        count = len(boxes)
        if count == 0 or len(truths) == 0:
            return np.full(count, -1, np.int64), np.zeros(count, np.float32)
        iou = _iou_matrix(boxes, truths[:, 1:5])
        same_class = truths[None, :, 0].astype(np.int64) == classes[:, None]
        # darknet starts max_iou at 0 and takes a truth only when its IoU is above both iou_thresh and max_iou.
        candidate = np.where(same_class & (iou > self.iou_thresh), iou, np.float32(0))
        best = np.argmax(candidate, axis=1)
        best_iou = candidate[np.arange(count), best]
        matched = best_iou > 0
        return np.where(matched, best + first_index, -1).astype(np.int64), np.where(matched, best_iou, 0)

    def _not_difficult(self, boxes: np.ndarray, classes: np.ndarray, truth_index: np.ndarray,
                       difficult: Optional[np.ndarray]) -> np.ndarray:
        """Unmatched detections that overlap a `difficult` truth of their class (IoU > iou_thresh) are dropped."""
        kept = np.ones(len(boxes), dtype=bool)
        if difficult is None or len(difficult) == 0 or len(boxes) == 0:
            return kept
        difficult = np.asarray(difficult, dtype=np.float32).reshape(-1, 5)
        iou = _iou_matrix(boxes, difficult[:, 1:5])
        same_class = difficult[None, :, 0].astype(np.int64) == classes[:, None]
        overlaps = np.any(same_class & (iou > self.iou_thresh), axis=1)
        return ~((truth_index < 0) & overlaps)

    def _count_at_thresh(self, probs: np.ndarray, classes: np.ndarray, truth_index: np.ndarray,
                         match_iou: np.ndarray, kept: np.ndarray) -> None:
        """TP/FP and the IoU sum at `thresh`, with darknet's rule for a truth already found in this image.

        A record above thresh is a TP when matched and no *earlier record of this image* (of any probability,
        kept in the ranking) matched the same truth; so a low-probability box that comes first in the NMS
        output order makes a later high-probability box on the same truth a FP here. A dropped `difficult`
        detection is unmatched, so it still counts as a FP here (darknet decrements its detection count but
        goes on to this step).
        """
        found_in_image = set()
        for prob, class_id, index, iou, is_kept in zip(probs, classes, truth_index, match_iou, kept):
            if prob > self.thresh:
                if index > -1 and index not in found_in_image:
                    self.avg_iou_sum = np.float32(self.avg_iou_sum + iou)
                    self.tp_for_thresh[class_id] += 1
                else:
                    self.fp_for_thresh[class_id] += 1
            if is_kept and index > -1:
                found_in_image.add(int(index))

    # ----------------------------------------------------------------------------------------- result

    def ranked(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probs, class_ids, truth_index) of the kept records, sorted by probability, highest first.

        darknet qsorts with a comparator returning 0 on ties; glibc's qsort is a merge sort there, so ties
        keep their order of accumulation: a stable sort.
        """
        if not self.images:
            return np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        probs = np.concatenate([image.probs[image.kept] for image in self.images])
        classes = np.concatenate([image.class_ids[image.kept] for image in self.images])
        truth_index = np.concatenate([image.truth_index[image.kept] for image in self.images])
        order = np.argsort(-probs, kind="stable")
        return probs[order], classes[order], truth_index[order]

    def result(self, points: int = 0) -> "MapResult":
        """AP of every class, mAP and the figures at `thresh`, for `points` 0 (AUC) or N recall points."""
        if points < 0 or points == 1:
            raise ValueError(f"points must be 0 (area under the curve) or at least 2 (e.g. 11, 101), got {points}")
        probs, classes, truth_index = self.ranked()
        detections_count = len(probs)
        ap = []
        detections_per_class = []
        for class_id in range(self.classes):
            positions = np.flatnonzero(classes == class_id)
            detections_per_class.append(len(positions))
            precision, recall = _precision_recall(truth_index[positions], int(self.truth_classes_count[class_id]))
            # Before the class's first record in the ranking, darknet's PR table holds precision 0, recall 0.
            if detections_count > 0 and (len(positions) == 0 or positions[0] > 0):
                precision = np.concatenate([[0.0], precision])
                recall = np.concatenate([[0.0], recall])
            if detections_count == 0:
                ap.append(0.0)
            elif points == 0:
                ap.append(_ap_area_under_curve(precision, recall))
            else:
                ap.append(_ap_recall_points(precision, recall, points))
        mean_ap = 0.0
        for value in ap:  # darknet adds in class order (double), then divides
            mean_ap += value
        mean_ap /= self.classes
        return self._make_result(points, ap, mean_ap, detections_count, detections_per_class)

    def _make_result(self, points: int, ap: List[float], mean_ap: float, detections_count: int,
                     detections_per_class: List[int]) -> "MapResult":
        tp = int(self.tp_for_thresh.sum())
        fp = int(self.fp_for_thresh.sum())
        fn = self.unique_truth_count - tp
        f32 = np.float32
        with np.errstate(divide="ignore", invalid="ignore"):  # darknet divides 0 by 0 here too (prints -nan)
            precision = f32(tp) / (f32(tp) + f32(fp))
            recall = f32(tp) / (f32(tp) + f32(fn))
            f1 = f32(2) * precision * recall / (precision + recall)
            average_iou = self.avg_iou_sum / f32(tp + fp) if tp + fp > 0 else self.avg_iou_sum
        return MapResult(
            classes=self.classes, iou_thresh=float(self.iou_thresh), thresh=float(self.thresh), points=points,
            ap=ap, mean_ap=mean_ap,
            tp_per_class=[int(v) for v in self.tp_for_thresh], fp_per_class=[int(v) for v in self.fp_for_thresh],
            truths_per_class=[int(v) for v in self.truth_classes_count], detections_per_class=detections_per_class,
            detections_count=detections_count, unique_truth_count=self.unique_truth_count,
            tp=tp, fp=fp, fn=fn, precision=float(precision), recall=float(recall), f1=float(f1),
            average_iou=float(average_iou),
        )


def _precision_recall(truth_index: np.ndarray, truth_count: int) -> Tuple[np.ndarray, np.ndarray]:
    """Cumulative precision and recall (double) along one class's ranked records.

    A record is a TP when it matched a truth that no higher-ranked record took, else a FP.
    """
    taken = set()
    is_tp = np.zeros(len(truth_index), dtype=bool)
    for k, index in enumerate(truth_index):
        if index > -1 and index not in taken:
            taken.add(int(index))
            is_tp[k] = True
    tp = np.cumsum(is_tp).astype(np.float64)
    fp = np.cumsum(~is_tp).astype(np.float64)
    precision = tp / np.maximum(tp + fp, 1)  # tp + fp >= 1 on every record
    recall = tp / truth_count if truth_count > 0 else np.zeros(len(tp))
    return precision, recall


def _ap_area_under_curve(precision: np.ndarray, recall: np.ndarray) -> float:
    """`-points 0`: walk the ranks from last to first keeping the running max precision, summing
    Δrecall·maxprecision, then the remaining `recall·maxprecision` at the first rank (darknet's loop)."""
    last_recall = float(recall[-1])
    last_precision = float(precision[-1])
    ap = 0.0
    for k in range(len(recall) - 2, -1, -1):
        delta_recall = last_recall - float(recall[k])
        last_recall = float(recall[k])
        if precision[k] > last_precision:
            last_precision = float(precision[k])
        ap += delta_recall * last_precision
    ap += (last_recall - 0) * last_precision
    return ap


def _ap_recall_points(precision: np.ndarray, recall: np.ndarray, points: int) -> float:
    """`-points N`: mean over r = k/(N-1) of the max precision among ranks with recall >= r."""
    ap = 0.0
    for point in range(points):
        current_recall = point * 1.0 / (points - 1)
        reached = recall >= current_recall
        ap += float(precision[reached].max()) if reached.any() else 0.0
    return ap / points


@dataclass
class MapResult:
    """What darknet's map prints: AP per class, mAP, and the TP/FP/precision/recall/F1/IoU at `thresh`."""

    classes: int
    iou_thresh: float
    thresh: float
    points: int
    ap: List[float]  # per class, 0..1
    mean_ap: float
    tp_per_class: List[int]  # at thresh
    fp_per_class: List[int]
    truths_per_class: List[int]
    detections_per_class: List[int]  # ranked records (prob > 0 at the 0.005 detection threshold)
    detections_count: int
    unique_truth_count: int
    tp: int
    fp: int
    fn: int
    precision: float  # float32 values, nan where darknet divides 0 by 0
    recall: float
    f1: float
    average_iou: float  # 0..1


def darknet_map(detections: Sequence[Sequence[Any]], truths: Sequence[np.ndarray], classes: int,
                iou_thresh: float = 0.5, points: int = 0, thresh: float = 0.25,
                difficult: Optional[Sequence[np.ndarray]] = None) -> MapResult:
    """Darknet's map over a dataset: per image its detections (NMS output order) and truths."""
    accumulator = MapAccumulator(classes, iou_thresh, thresh)
    for index, (image_detections, image_truths) in enumerate(zip(detections, truths)):
        accumulator.add_image(image_detections, image_truths, None if difficult is None else difficult[index])
    return accumulator.result(points)


# --------------------------------------------------------------------------------------------- report

def _c_float(spec: str, value: float) -> str:
    """printf of a float: Python's % matches C for finite values; a 0/0 computed by darknet on x86 is the
    default NaN, which has its sign bit set, so glibc prints `-nan`."""
    if math.isnan(value):
        return "-nan"
    return spec % value


def format_map_report(result: MapResult, names: Sequence[str], detections_line: bool = True) -> List[str]:
    """Darknet's map output, line by line, with its printf formats (src/detector.c `validate_detector_map`).

    Starts with the `detections_count` line (darknet prints a blank line before it) and ends with the mAP
    line; blank lines are empty strings. Thresholds are printed as the C floats darknet holds.
    """
    lines: List[str] = []
    if detections_line:
        lines.append(f" detections_count = {result.detections_count}, "
                     f"unique_truth_count = {result.unique_truth_count}  ")
    for class_id in range(result.classes):
        name = names[class_id] if class_id < len(names) else str(class_id)
        lines.append("class_id = %d, name = %s, ap = %2.2f%%   \t (TP = %d, FP = %d) "
                     % (class_id, name, result.ap[class_id] * 100,
                        result.tp_per_class[class_id], result.fp_per_class[class_id]))
    thresh = float(np.float32(result.thresh))
    lines.append("")
    lines.append(" for conf_thresh = %s, precision = %s, recall = %s, F1-score = %s "
                 % (_c_float("%1.2f", thresh), _c_float("%1.2f", result.precision),
                    _c_float("%1.2f", result.recall), _c_float("%1.2f", result.f1)))
    lines.append(" for conf_thresh = %s, TP = %d, FP = %d, FN = %d, average IoU = %s %% "
                 % (_c_float("%0.2f", thresh), result.tp, result.fp, result.fn,
                    _c_float("%2.2f", float(np.float32(result.average_iou) * np.float32(100)))))
    lines.append("")
    iou_thresh = np.float32(result.iou_thresh)
    method = (f"used {result.points} Recall-points " if result.points
              else "used Area-Under-Curve for each unique Recall ")
    lines.append(" IoU threshold = %2.0f %%, %s" % (float(iou_thresh * np.float32(100)), method))
    lines.append(" mean average precision (mAP@%0.2f) = %f, or %2.2f %% "
                 % (float(iou_thresh), result.mean_ap, result.mean_ap * 100))
    return lines


# --------------------------------------------------------------------------------------------- COCO

# darknet's coco.names (80 classes) and the COCO category id of each (src/detector.c `coco_ids`).
COCO_NAMES = [
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "sofa",
    "pottedplant", "bed", "diningtable", "toilet", "tvmonitor", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
COCO_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
    34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60,
    61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]
# The names COCO's own annotation files use where darknet's file differs.
_COCO_OFFICIAL_NAMES = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch",
                        "pottedplant": "potted plant", "diningtable": "dining table", "tvmonitor": "tv"}


def _is_coco(names: Sequence[str]) -> bool:
    if len(names) != len(COCO_NAMES):
        return False
    return all(name.strip() in (coco, _COCO_OFFICIAL_NAMES.get(coco, coco)) for name, coco in zip(names, COCO_NAMES))


def coco_category_ids(names: Sequence[str]) -> List[int]:
    """Category id of each class: COCO's 80 -> 91 ids when the names are COCO's, else the class id."""
    return list(COCO_CATEGORY_IDS) if _is_coco(names) else list(range(len(names)))


def _darknet_coco_image_id(path: str) -> Optional[int]:
    """darknet's `get_coco_image_id`: atoi of what follows the last `_` (else the last `/`) of the path;
    None where that has no leading digits (darknet would give 0)."""
    tail = path.replace("\\", "/")
    tail = tail[tail.rfind("_") + 1:] if "_" in tail else tail[tail.rfind("/") + 1:]
    match = re.match(r"\s*[+-]?\d+", tail)
    return int(match.group()) if match else None


def coco_image_ids(image_paths: Sequence[str]) -> List[int]:
    """Image ids as darknet's `valid` writes them (COCO file names give their number); when some name has no
    number, or two images would share an id, every image gets its index in the list instead."""
    ids = [_darknet_coco_image_id(path) for path in image_paths]
    if all(i is not None for i in ids) and len(set(ids)) == len(ids):
        return [int(i) for i in ids]  # type: ignore[arg-type]
    return list(range(len(image_paths)))


def _pixel_boxes(boxes: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Relative centre boxes -> [left, top, width, height] pixels clipped to the image (darknet `print_cocos`)."""
    width, height = size
    x, y, w, h = (boxes[:, k].astype(np.float32) for k in range(4))
    xmin = np.maximum((x - w / 2) * width, 0)
    xmax = np.minimum((x + w / 2) * width, width)
    ymin = np.maximum((y - h / 2) * height, 0)
    ymax = np.minimum((y + h / 2) * height, height)
    return np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=1).astype(np.float64)


def _require_sizes(accumulator: MapAccumulator) -> None:
    missing = [i for i, image in enumerate(accumulator.images) if image.size is None]
    if missing:
        raise ValueError(f"COCO metrics need each image's size; image {missing[0]} was added without image_size")


def coco_results(accumulator: MapAccumulator, category_ids: Sequence[int],
                 image_ids: Sequence[int]) -> List[Dict[str, Any]]:
    """COCO results (one per box and class with prob > 0, boxes in pixels), as darknet's `valid` with
    `eval=coco` writes them, from the detections the accumulator holds."""
    _require_sizes(accumulator)
    results: List[Dict[str, Any]] = []
    for image, image_id in zip(accumulator.images, image_ids):
        pixel = _pixel_boxes(image.boxes, image.size)  # type: ignore[arg-type]
        for box, prob, class_id in zip(pixel, image.probs, image.class_ids):
            results.append({"image_id": int(image_id), "category_id": int(category_ids[class_id]),
                            "bbox": [round(float(v), 3) for v in box], "score": round(float(prob), 6)})
    return results


def write_coco_results(path: str, results: List[Dict[str, Any]]) -> None:
    """Write a COCO results JSON (a list of {image_id, category_id, bbox, score})."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle)


COCO_STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


@dataclass
class CocoResult:
    """pycocotools' 12 bbox figures (0..1, -1 where undefined) and its printed summary lines."""

    stats: Dict[str, float]
    lines: List[str] = field(default_factory=list)


def _coco_ground_truth(accumulator: MapAccumulator, category_ids: Sequence[int], image_ids: Sequence[int],
                       names: Sequence[str]) -> Dict[str, Any]:
    images, annotations = [], []
    for image, image_id in zip(accumulator.images, image_ids):
        width, height = image.size  # type: ignore[misc]
        images.append({"id": int(image_id), "width": int(width), "height": int(height)})
        for truth, box in zip(image.truths, _pixel_boxes(image.truths[:, 1:5], image.size)):  # type: ignore
            annotations.append({"id": len(annotations) + 1,  # pycocotools treats id 0 as "no match"
                                "image_id": int(image_id), "category_id": int(category_ids[int(truth[0])]),
                                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0})
    categories = [{"id": int(category_ids[k]), "name": names[k] if k < len(names) else str(k)}
                  for k in range(accumulator.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_evaluate(accumulator: MapAccumulator, names: Sequence[str],
                  image_ids: Optional[Sequence[int]] = None) -> CocoResult:
    """COCO bbox metrics (AP@[.5:.95], AP50, AP75, small/medium/large, AR) of the accumulated detections,
    computed by pycocotools against the accumulated truths (darknet itself leaves this to pycocotools)."""
    # optional dependency, needed only for --coco: imported when used
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _require_sizes(accumulator)
    category_ids = coco_category_ids(names)
    if image_ids is None:
        image_ids = list(range(len(accumulator.images)))
    results = coco_results(accumulator, category_ids, image_ids)
    ground_truth = _coco_ground_truth(accumulator, category_ids, image_ids, names)
    if not results or not ground_truth["annotations"]:
        value = 0.0 if ground_truth["annotations"] else -1.0
        return CocoResult({name: value for name in COCO_STAT_NAMES},
                          ["COCO metrics: no detections" if not results else "COCO metrics: no ground truth"])
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):  # pycocotools prints progress lines
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}
    return CocoResult(stats, [line for line in summary.getvalue().splitlines() if line.strip()])
