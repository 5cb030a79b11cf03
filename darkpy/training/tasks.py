"""The two things darkpy trains — detectors (src/detector.c train_detector) and classifiers (src/classifier.c
train_classifier) — as one loop (darkpy.training.trainer) and a Task: what differs between them.

A Task holds the training set, the loss (`outputs(model, x)` then `loss(outputs, truths, w, h, seen)`), the
evaluation during training (-map: mAP@0.5 with `_best` snapshots; -topk: top-k accuracy on the valid list), the
default snapshot period and Darknet's per-iteration line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch

from darkpy.data import DataConfig, DataProblems, read_names
from darkpy.evaluation.classify import Classifier, evaluating, measure_accuracy
from darkpy.evaluation.inference import Detector
from darkpy.evaluation.mapdata import accumulate_map, iterate_detections, load_map_dataset
from darkpy.evaluation.metrics import format_map_report
from darkpy.training.settings import TrainError

MAP_EVERY_AT_LEAST = 100  # -map: at least every 100 iterations
TOPK_NOT_BEFORE = 100  # -topk: not before iteration 100
DEFAULT_LABELS = "data/labels.list"  # train_classifier's option_find_str default
DEFAULT_TOP = 5  # train_classifier: option_find_int(options, "top", 5)


@dataclass
class Schedule:
    """When an evaluation is due, in iterations."""

    images_per_iteration: int
    train_images: int
    burn_in: int
    epochs: int


class MapEvaluation:
    """-map: validate_detector_map on the valid list at the initial network size (AUC, IoU .5); keeps `_best`."""

    label, keeps_best = "mAP%", True

    def __init__(self, data_file: str, problems: DataProblems):
        self.data_file, self.problems = data_file, problems
        self.dataset = None  # loaded at the first evaluation, kept

    def next_due(self, last: int, when: Schedule) -> int:
        each = max(when.epochs * when.train_images // when.images_per_iteration, MAP_EVERY_AT_LEAST)
        return max(last + each, when.burn_in)

    def result(self, model, device: torch.device):
        """Darknet's mAP result (all classes)."""
        self.dataset = self.dataset or load_map_dataset(self.data_file)
        detector = Detector(model, device, letter_box=model.letter_box)
        detected = iterate_detections(detector, self.dataset.image_paths, 8, self.problems, progress=False)
        accumulator = accumulate_map(detected, self.dataset, int(model.heads[-1].classes), 0.5, 0.25,
                                     self.problems)
        return accumulator.result(0)

    def measure(self, model, device: torch.device) -> Tuple[float, List[str]]:
        result = self.result(model, device)
        value = float(result.mean_ap)
        lines = [""] + format_map_report(result, self.dataset.names)
        return value, lines + [f"\n mean_average_precision (mAP@0.50) = {value:f} "]


class TopKEvaluation:
    """-topk: validate_classifier_single on the valid list with the .data file's top (5 by default) — the
    network in eval mode (rolling batch-norm statistics), as Darknet's network_predict."""

    keeps_best = False

    def __init__(self, data: DataConfig, labels: Sequence[str], classes: int):
        self.valid_list = data.existing_file("valid", "data/train.list")
        self.labels, self.classes = list(labels), classes
        self.k = min(data.get_positive_int("top", DEFAULT_TOP), classes)
        self.label = f"top{self.k}%"

    def next_due(self, last: int, when: Schedule) -> int:
        return max(last + when.epochs * when.train_images // when.images_per_iteration, when.burn_in,
                   TOPK_NOT_BEFORE)

    def measure(self, model, device: torch.device) -> Tuple[float, List[str]]:
        with evaluating(model), torch.no_grad():
            accuracy = measure_accuracy(Classifier(model), self.valid_list, self.labels, self.classes, self.k)
        lines = [" TOP calculation..."]
        if accuracy.unlabelled:
            lines.append(f" warning: {len(accuracy.unlabelled)} valid image path(s) contain no label name (counted "
                         f"as wrong), e.g. {accuracy.unlabelled[0]}")
        return accuracy.topk_rate, lines + [f"\n accuracy top{self.k} = {accuracy.topk_rate:f} "]


def detector_line(iteration: int, epoch: float, loss: float, avg: float, rate: float, seconds: float, images: int,
                  hours: float) -> str:
    return (f" {iteration}: {loss:f}, {avg:f} avg loss, {rate:f} rate, {seconds:f} seconds, {images} images, "
            f"{hours:f} hours left")


def classifier_line(iteration: int, epoch: float, loss: float, avg: float, rate: float, seconds: float,
                    images: int, hours: float) -> str:
    return (f"{iteration}, {epoch:.3f}: {loss:f}, {avg:f} avg, {rate:f} rate, {seconds:f} seconds, {images} "
            f"images, {hours:f} hours left")


@dataclass
class Task:
    """What differs between detector and classifier training."""

    name: str  # "detector" or "classifier"
    train_set: object  # a Dataset indexed by SampleKey: (image, truths, problems)
    loss: object  # outputs(model, x) and __call__(outputs, truths, net_w, net_h, seen) -> LossResult
    evaluation: object  # MapEvaluation or TopKEvaluation
    save_every: int  # <cfg>_N.weights every this many iterations
    line: Callable[..., str]  # Darknet's per-iteration line

    def resume_command(self, data: str, cfg: str) -> str:
        if self.name == "classifier":
            return f"darkpy classifier train {data} {cfg} --resume"
        return f"darkpy train --data {data} --cfg {cfg} --resume"


def classifier_labels(data: DataConfig, classes: int) -> List[str]:
    """train_classifier's labels= list (darkpy also takes names=); each image's class is the label found in its
    path, so without one there is nothing to train."""
    path = data.existing_file("labels", None) or data.existing_file("names", None)
    if path is None:
        raise TrainError(f"{data.path}: no labels= (or names=) line: classifier training takes each image's class "
                         f"from the label names (one a line) found in its path")
    labels = read_names(path)
    if len(labels) < classes:
        raise TrainError(f"{path}: {len(labels)} label names for classes={classes} (in {data.path})")
    return labels

