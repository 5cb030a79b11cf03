"""Anchors from a dataset's label boxes, as Darknet's `detector calc_anchors` computes them (src/detector.c
calc_anchors, src/matrix.c do_kmeans): k-means over the boxes' (width, height) scaled to the network size, with
1 - IoU of two boxes sharing a corner as the distance; the anchors sorted by area, and the average over the
boxes of the IoU with their closest anchor.

Darknet seeds its k-means with the clock (random data points as the first centres), so its anchors change from
run to run. Here the generator is seeded (reproducible), and the k-means is restarted from several seeded
starts — Darknet's random points and k-means++ — keeping the anchors with the best average IoU, which is
therefore at least what a typical Darknet run reaches.
"""
from dataclasses import dataclass
from typing import Tuple

import numpy as np

MAX_ITERATIONS = 1000  # do_kmeans' limit
F32 = np.float32


@dataclass
class Anchors:
    """(k, 2) anchors (width, height in network pixels), smallest area first; average IoU in 0..1."""

    sizes: np.ndarray
    average_iou: float
    iterations: int  # of the k-means run that gave them


def iou_with_centres(boxes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, K) IoU of boxes and centres given as (width, height), aligned at a corner (matrix.c `dist`)."""
    inter = np.minimum(boxes[:, None, 0], centres[None, :, 0]) * np.minimum(boxes[:, None, 1], centres[None, :, 1])
    union = boxes[:, None, 0] * boxes[:, None, 1] + centres[None, :, 0] * centres[None, :, 1] - inter
    return (inter / union).astype(F32)


def _closest(boxes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """closest_center: the centre at the smallest distance, the first one on ties."""
    return np.argmax(iou_with_centres(boxes, centres), axis=1)


def _maximization(boxes: np.ndarray, assignments: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """kmeans_maximization: each centre the mean of its boxes; a coordinate that comes out 0 (a centre without
    boxes) keeps its old value."""
    k = len(centres)
    counts = np.bincount(assignments, minlength=k).astype(F32)
    sums = np.stack([np.bincount(assignments, boxes[:, c], minlength=k) for c in range(2)], axis=1).astype(F32)
    means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0).astype(F32)
    return np.where(means == 0, centres, means).astype(F32)


def kmeans(boxes: np.ndarray, centres: np.ndarray) -> Tuple[np.ndarray, int]:
    """do_kmeans from the given first centres: expectation and maximization until no box changes its centre
    (at most 1000 rounds); returns the centres and the number of rounds."""
    assignments = np.zeros(len(boxes), np.int64)
    if len(centres) == 1:
        centres = _maximization(boxes, assignments, centres)
    for iteration in range(MAX_ITERATIONS):
        closest = _closest(boxes, centres)
        if np.array_equal(closest, assignments):
            return centres, iteration
        assignments = closest
        centres = _maximization(boxes, assignments, centres)
    return centres, MAX_ITERATIONS


def _random_points(boxes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """random_centers: k different boxes."""
    return boxes[rng.permutation(len(boxes))[:k]].copy()


def _kmeans_plus_plus(boxes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++: each next centre drawn with probability proportional to its distance to the nearest chosen."""
    chosen = [int(rng.integers(len(boxes)))]
    for _ in range(1, k):
        distance = 1 - iou_with_centres(boxes, boxes[chosen]).max(axis=1).astype(np.float64)
        total = distance.sum()
        chosen.append(int(rng.choice(len(boxes), p=distance / total)) if total > 0 else int(rng.integers(len(boxes))))
    return boxes[chosen].copy()


def average_iou(boxes: np.ndarray, centres: np.ndarray) -> float:
    """Mean over the boxes of the IoU with their closest centre (calc_anchors' `avg IoU`, as a fraction)."""
    return float(iou_with_centres(boxes, centres).max(axis=1).astype(np.float64).mean())


def calc_anchors(boxes: np.ndarray, k: int, seed: int = 0, restarts: int = 10) -> Anchors:
    """The best of `restarts` k-means runs on (N, 2) box sizes, half of them started from random boxes as
    Darknet does and half by k-means++; sorted by area (anchors_data_comparator)."""
    boxes = np.asarray(boxes, F32).reshape(-1, 2)
    if not 0 < k <= len(boxes):
        raise ValueError(f"{k} anchors asked for {len(boxes)} boxes: need at least one box per anchor")
    rng = np.random.default_rng(seed)
    best = None
    for run in range(max(1, restarts)):
        start = _random_points(boxes, k, rng) if run % 2 == 0 else _kmeans_plus_plus(boxes, k, rng)
        centres, iterations = kmeans(boxes, start)
        score = average_iou(boxes, centres)
        if best is None or score > best.average_iou:
            best = Anchors(centres, score, iterations)
    order = np.argsort(best.sizes[:, 0] * best.sizes[:, 1], kind="stable")
    return Anchors(best.sizes[order], best.average_iou, best.iterations)
