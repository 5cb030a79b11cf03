"""What classifier training needs beyond the detector's loop: Darknet's classification data and its loss.

src/classifier.c train_classifier hands src/data.c load_data_augment one image per draw, augmented by
load_image_augment_paths: src/image.c random_augment_image (a random aspect, a crop side drawn in
[min_crop, max_crop], a rotation in [-angle, angle] degrees and a random shift, sampled bilinearly by
rotate_crop_image into a square of the network's larger side), a horizontal flip, random_distort_image (hue,
saturation, exposure in Darknet's float HSV) and resize_image to the network size; with mixup, cutmix or mosaic
([net] mixup=1, cutmix=1, mosaic=1) half of the samples are mixed with other images. The truth is one entry per
class: 1 (or 1 - label_smooth_eps) for each label name found in the image's path, 0 (or eps/(classes-1)) for the
others (fill_truth_smooth); a path with no label or several is reported and trained as Darknet trains it.

The loss (src/softmax_layer.c, src/cost_layer.c): a [softmax] layer writes delta = truth - output and hands it
unchanged to its input (the logits), cost = sum of -log(p) over the non-zero truths; a [cost] layer (sse) writes
delta = truth - input times its `scale` into the layer below, cost = sum of squared differences. Darknet's printed
cost is the mean over these layers. Every random number comes from the numpy Generator of the sample
(darkpy.training.sampler.SampleKey); Darknet's own random sequence is not reproduced, only its distributions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from darkpy.cfg import Section
from darkpy.data import NO_LABEL_IN_PATH, SEVERAL_LABELS_IN_PATH, DataProblems, labels_in_path
from darkpy.heads import LossError
from darkpy.image import resize_image, to_float
from darkpy.training.augment import rand_scale
from darkpy.training.dataset import ProblemLog, TrainImages, hand_over
from darkpy.training.loss import LossResult
from darkpy.training.sampler import SampleKey
from darkpy.training.settings import net_mixup_mode

F32 = np.float32
BLUR_CHANCE = 4  # load_data_augment blurs one image in four (blur=1: a 15x15 Gaussian, blur=N: NxN)
BLUR_DEFAULT_KERNEL = 15
MIXUP, CUTMIX, MOSAIC, CUTMIX_OR_MOSAIC = 1, 2, 3, 4  # net.mixup (darkpy.training.settings.net_mixup_mode)
CUTMIX_SIDES = (0.3, 0.8)  # load_data_augment: the cut is 30..80 % of the network's width and height
MOSAIC_MIN_OFFSET = 0.2  # the mosaic's cut point lies in 20..80 % of the width and height


@dataclass(frozen=True)
class ClassifierAugment:
    """train_classifier's load_args: parse_net_options' defaults (min_crop = width, max_crop = 2*width, flip 1)."""

    classes: int
    width: int
    height: int
    min_crop: int
    max_crop: int
    angle: float = 0.0
    aspect: float = 1.0
    flip: bool = True
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    label_smooth_eps: float = 0.0
    mixup: int = 0  # net.mixup: 1 mixup, 2 cutmix, 3 mosaic, 4 cutmix or mosaic
    blur: int = 0
    random: float = 0.0  # train_classifier has no multi-scale training
    resize_step: int = 32
    contrastive: bool = False  # no image pairs: darkpy does not train a classifier's contrastive loss (a warning)

    @classmethod
    def from_net(cls, net: Section, classes: int, width: int, height: int) -> "ClassifierAugment":
        return cls(classes=classes, width=width, height=height,
                   min_crop=net.get_int("min_crop", width), max_crop=net.get_int("max_crop", width * 2),
                   angle=net.get_float("angle", 0.0), aspect=net.get_float("aspect", 1.0),
                   flip=bool(net.get_int("flip", 1)), hue=net.get_float("hue", 0.0),
                   saturation=net.get_float("saturation", 1.0), exposure=net.get_float("exposure", 1.0),
                   label_smooth_eps=net.get_float("label_smooth_eps", 0.0), mixup=net_mixup_mode(net),
                   blur=net.get_int("blur", 0))

    @property
    def size(self) -> int:
        """The side of the square crop: the network's larger side."""
        return max(self.width, self.height)


# ------------------------------------------------------------------------------------------- augmentation

def rotate_crop(image: np.ndarray, rad: float, scale: float, width: int, height: int, dx: float, dy: float,
                aspect: float) -> np.ndarray:
    """rotate_crop_image on float32 CxHxW: each output pixel samples the image bilinearly (outside it: 0) at the
    point rotated by `rad` about the image centre; the coordinates in double, as C computes them, then float."""
    _, h, w = image.shape
    x = np.arange(width, dtype=np.float64)[None, :]
    y = np.arange(height, dtype=np.float64)[:, None]
    u = (x - width / 2.0) / scale * aspect + dx / scale * aspect
    v = (y - height / 2.0) / scale + dy / scale
    rx = (math.cos(rad) * u - math.sin(rad) * v + w / 2.0).astype(F32)
    ry = (math.sin(rad) * u + math.cos(rad) * v + h / 2.0).astype(F32)
    ix, iy = np.floor(rx).astype(np.int64), np.floor(ry).astype(np.int64)
    fx, fy = rx - ix.astype(F32), ry - iy.astype(F32)
    padded = np.zeros((image.shape[0], h + 2, w + 2), F32)  # get_pixel_extend: 0 outside the image
    padded[:, 1:-1, 1:-1] = image

    def pixel(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        return padded[:, np.where(inside, py + 1, 0), np.where(inside, px + 1, 0)]

    one = F32(1)
    return ((one - fy) * (one - fx) * pixel(ix, iy) + fy * (one - fx) * pixel(ix, iy + 1)
            + (one - fy) * fx * pixel(ix + 1, iy) + fy * fx * pixel(ix + 1, iy + 1)).astype(F32)


def random_augment(image: np.ndarray, config: ClassifierAugment, rng: np.random.Generator) -> np.ndarray:
    """random_augment_image: aspect, crop side, angle and shift drawn as Darknet draws them."""
    aspect = F32(rand_scale(rng, config.aspect))
    side = _rand_int(rng, config.min_crop, config.max_crop)
    _, h, w = image.shape
    shorter = F32(h) if h < w * aspect else F32(w * aspect)
    scale = F32(side) / shorter
    rad = float(F32(F32(rng.uniform(-config.angle, config.angle)) * 2.0 * math.pi / 360.0))
    size = config.size
    dx = max(0.0, float(F32((w * scale / aspect - size) / 2.0)))
    dy = max(0.0, float(F32((h * scale - size) / 2.0)))
    dx, dy = float(F32(rng.uniform(-dx, dx))), float(F32(rng.uniform(-dy, dy)))
    return rotate_crop(image, rad, float(scale), size, size, dx, dy, float(aspect))


def distort(image: np.ndarray, dhue: float, dsat: float, dexp: float) -> np.ndarray:
    """distort_image on float32 CxHxW RGB: Darknet's float HSV (rgb_to_hsv, S *= dsat, V *= dexp, H += dhue
    wrapped into [0, 1], hsv_to_rgb), then constrain_image (clamp to [0, 1]). Darknet runs it on every image,
    even with neutral values; so does darkpy (the round trip moves values by a few ulp)."""
    r, g, b = image
    high, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    delta = high - low
    with np.errstate(divide="ignore", invalid="ignore"):
        hue = np.where(r == high, (g - b) / delta, np.where(g == high, F32(2) + (b - r) / delta,
                                                           F32(4) + (r - g) / delta)).astype(F32)
        hue = np.where(hue < 0, hue + F32(6), hue) / F32(6.0)
        sat = np.where(high == 0, F32(0), delta / high).astype(F32)
    hue = np.where(delta == 0, F32(0), hue).astype(F32)  # grey (C: 0/0); s = 0 makes hsv_to_rgb ignore it
    sat, val = sat * F32(dsat), high * F32(dexp)
    hue = hue + F32(dhue)
    hue = np.where(hue > 1, hue - F32(1), hue)
    hue = np.where(hue < 0, hue + F32(1), hue).astype(F32)
    return np.clip(_hsv_to_rgb(hue, sat, val), 0, 1).astype(F32)


def _hsv_to_rgb(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    h6 = F32(6) * hue
    index = np.floor(h6).astype(np.int64)
    f = h6 - index.astype(F32)
    p, q, t = val * (F32(1) - sat), val * (F32(1) - sat * f), val * (F32(1) - sat * (F32(1) - f))
    choices = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val)]
    out = np.stack([val, p, q])  # index 5 (and beyond)
    for k, channels in enumerate(choices):
        out = np.where(index == k, np.stack(channels), out)
    grey = sat == 0
    return np.where(grey, np.stack([val, val, val]), out)


def augment_classification_image(image: np.ndarray, config: ClassifierAugment,
                                 rng: np.random.Generator) -> np.ndarray:
    """load_image_augment_paths for one image (uint8 HxWx3 RGB) -> float32 3 x height x width."""
    crop = random_augment(to_float(image), config, rng)
    if config.flip and rng.integers(2):
        crop = crop[:, :, ::-1]
    dhue = float(rng.uniform(-config.hue, config.hue))
    dsat, dexp = rand_scale(rng, config.saturation), rand_scale(rng, config.exposure)
    crop = distort(np.ascontiguousarray(crop), dhue, dsat, dexp)
    return resize_image(crop, config.width, config.height)


def truth_vector(path: str, labels: Sequence[str], classes: int, eps: float,
                 problems: Optional[DataProblems] = None) -> np.ndarray:
    """fill_truth_smooth: 1 - eps for each label found in the path, eps/(classes-1) for the others; a path with
    no label or several is reported (Darknet prints "Too many or too few labels") and trained as it is."""
    found = labels_in_path(path, labels[:classes])
    truth = np.full(classes, F32(eps) / F32(max(classes - 1, 1)) if eps else 0, F32)
    truth[found] = F32(1) - F32(eps)
    if len(found) != 1 and problems is not None:
        if not found:
            problems.warn(NO_LABEL_IN_PATH, f"{path}: no label name of the labels list in the path: trained with "
                                            "no class (as Darknet does)")
        else:
            names = ", ".join(labels[i] for i in found)
            problems.warn(SEVERAL_LABELS_IN_PATH, f"{path}: {len(found)} label names in the path ({names}): "
                                                  "trained as all of them (as Darknet does)")
    return truth


# ------------------------------------------------------------------------------------------------ dataset

class ClassificationTrainSet(TrainImages):
    """A classifier's training list; `dataset[SampleKey]` is (image (3, h, w) float32, truth (classes,), the
    problems met). Unreadable images are reported and replaced by other random ones, as for the detector."""

    def __init__(self, image_paths: Sequence[str], labels: Sequence[str], config: ClassifierAugment,
                 problems: Optional[DataProblems] = None, list_file: Optional[str] = None):
        super().__init__(image_paths, problems, list_file)
        self.labels, self.config = list(labels), config

    def __getitem__(self, key: SampleKey) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[str, str]]]:
        log = ProblemLog()
        image, truth = self.sample(key.index, key.rng(), log)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(truth), hand_over(self, log)

    def sample(self, index: int, rng: np.random.Generator, problems=None) -> Tuple[np.ndarray, np.ndarray]:
        """The augmented image `index` (another one if it cannot be read) and its truth; with mixup, cutmix or
        mosaic, half of the time mixed with other random images (load_data_augment)."""
        problems = problems if problems is not None else self.problems
        image, truth = self._augmented(index, rng, problems)
        if self.config.mixup and rng.integers(2):
            mixup = self.config.mixup
            mode = mixup if mixup != CUTMIX_OR_MOSAIC else int(rng.integers(CUTMIX, MOSAIC + 1))
            others = [self._augmented(int(rng.integers(len(self))), rng, problems)
                      for _ in range(3 if mode == MOSAIC else 1)]
            image, truth = mix_samples([(image, truth)] + others, mode, rng)
        if self.config.blur and rng.integers(BLUR_CHANCE) == 0:
            image = blur(image, BLUR_DEFAULT_KERNEL if self.config.blur == 1 else self.config.blur)
        return image, truth

    def _augmented(self, index: int, rng: np.random.Generator, problems) -> Tuple[np.ndarray, np.ndarray]:
        index, image = self.read_image(index, rng, problems)
        truth = truth_vector(self.written_paths[index], self.labels, self.config.classes,
                             self.config.label_smooth_eps, problems)
        return augment_classification_image(image, self.config, rng), truth


def mix_samples(samples: Sequence[Tuple[np.ndarray, np.ndarray]], mode: int,
                rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """load_data_augment's mix of (image (3, h, w), truth) samples: MIXUP averages two; CUTMIX pastes a
    rectangle of the second (30..80 % of each side) and weighs the truths by area; MOSAIC takes the four
    quadrants around a random cut point from four images, the truths weighed by area."""
    (image, truth), (second, second_truth) = samples[0], samples[1]
    _, h, w = image.shape
    if mode == MIXUP:
        return (image + second) / F32(2), (truth + second_truth) / F32(2)
    image = image.copy()
    if mode == CUTMIX:
        cut_w = _rand_int(rng, int(F32(w) * F32(CUTMIX_SIDES[0])), int(F32(w) * F32(CUTMIX_SIDES[1])))
        cut_h = _rand_int(rng, int(F32(h) * F32(CUTMIX_SIDES[0])), int(F32(h) * F32(CUTMIX_SIDES[1])))
        left, top = _rand_int(rng, 0, w - cut_w - 1), _rand_int(rng, 0, h - cut_h - 1)
        image[:, top:top + cut_h, left:left + cut_w] = second[:, top:top + cut_h, left:left + cut_w]
        alpha = F32(cut_w * cut_h) / F32(w * h)
        return image, truth * (F32(1) - alpha) + second_truth * alpha
    cut_x = _rand_int(rng, int(F32(w) * F32(MOSAIC_MIN_OFFSET)), int(F32(w) * F32(1 - MOSAIC_MIN_OFFSET)))
    cut_y = _rand_int(rng, int(F32(h) * F32(MOSAIC_MIN_OFFSET)), int(F32(h) * F32(1 - MOSAIC_MIN_OFFSET)))
    (third, third_truth), (fourth, fourth_truth) = samples[2], samples[3]
    image[:, :cut_y, cut_x:] = second[:, :cut_y, cut_x:]
    image[:, cut_y:, :cut_x] = third[:, cut_y:, :cut_x]
    image[:, cut_y:, cut_x:] = fourth[:, cut_y:, cut_x:]
    areas = [F32(cut_x * cut_y), F32((w - cut_x) * cut_y), F32(cut_x * (h - cut_y)), F32((w - cut_x) * (h - cut_y))]
    truths = [truth, second_truth, third_truth, fourth_truth]
    mixed = sum(t * (area / F32(w * h)) for t, area in zip(truths, areas))
    return image, mixed.astype(F32)


def blur(image: np.ndarray, kernel: int) -> np.ndarray:
    """image_opencv.cpp blur_image on float32 (3, h, w): to 8 bits as image_to_mat does ((unsigned char)(v*255),
    truncated), cv::GaussianBlur with a kernel x kernel window (sigma from the size), back by /255."""
    pixels = (image * F32(255)).astype(np.uint8).transpose(1, 2, 0)
    blurred = cv2.GaussianBlur(np.ascontiguousarray(pixels), (kernel, kernel), 0)
    return to_float(blurred)


def _rand_int(rng: np.random.Generator, low: int, high: int) -> int:
    """utils.c rand_int: uniform in [low, high] (the bounds swapped when high < low)."""
    low, high = min(low, high), max(low, high)
    return int(rng.integers(low, high + 1))


# --------------------------------------------------------------------------------------------------- loss

@dataclass(frozen=True)
class LossPoint:
    """A [softmax] or [cost] layer that computes a loss, and the layer whose output its delta reaches (a
    [softmax] hands a delta on unchanged, so through softmaxes it is the logits)."""

    index: int
    kind: str  # "softmax" or "cost"
    target: int
    scale: float = 1.0
    smooth: bool = False  # [cost] type=smooth: smooth L1


def _delta_target(layers: Sequence, index: int) -> int:
    while index >= 0 and layers[index].type == "softmax":
        index -= 1
    if index < 0:
        raise LossError("a [softmax] or [cost] layer is the network's first layer: there is nothing to train")
    return index


def loss_points(layers: Sequence, classes: int) -> List[LossPoint]:
    """The network's loss layers; each must have `classes` outputs (the truth's size), as Darknet requires of
    its last layer."""
    points = []
    for layer in layers:
        if layer.type == "softmax" and not layer.section.get_int("noloss", 0):
            points.append(LossPoint(layer.index, "softmax", _delta_target(layers, layer.index - 1)))
        elif layer.type == "cost":
            points.append(LossPoint(layer.index, "cost", _delta_target(layers, layer.index - 1),
                                    layer.section.get_float("scale", 1.0), layer.cost_type == "smooth"))
    if not points:
        raise LossError("the cfg has no [softmax] or [cost] layer: there is no classifier loss to train with")
    for point in points:
        c, h, w = layers[point.index].out_shape
        if c * h * w != classes:
            section = layers[point.index].section
            raise LossError(f"{section.file}:{section.line}: [{section.written_type}] has {c * h * w} outputs, but "
                            f"the .data file's classes={classes} (Darknet: \"num of filters ... doesn't match to "
                            "classes\")")
    return points


class ClassifierLoss:
    """Darknet's classifier loss for a model; `outputs(model, x)` runs the forward pass keeping what the loss
    needs, `__call__(outputs, truths, ...)` gives the LossResult whose surrogate's gradient is Darknet's."""

    def __init__(self, layers: Sequence, classes: int):
        self.points = loss_points(layers, classes)
        self.heads: List = []  # no per-head lines

    def outputs(self, model, x: torch.Tensor) -> List[Optional[torch.Tensor]]:
        return model.forward_layers(x, keep_all=True)

    def __call__(self, outputs: Sequence[torch.Tensor], truths: torch.Tensor, net_w: int = 0, net_h: int = 0,
                 seen: int = 0) -> LossResult:
        surrogate, costs, deltas = None, [], []
        for point in self.points:
            target = outputs[point.target]
            truth = truths.to(target.device).reshape(target.shape[0], -1).float()
            if point.kind == "softmax":
                output = outputs[point.index].detach().float().reshape_as(truth)
                delta = truth - output  # softmax_x_ent
                costs.append(float(torch.where(truth != 0, -torch.log(output), torch.zeros_like(output)).sum()))
            else:
                given = outputs[point.index - 1].detach().float().reshape_as(truth)
                delta, cost = _cost_delta(truth - given, point.smooth)
                costs.append(float(cost.sum()))
                delta = delta * point.scale
            deltas.append(delta)
            term = -(delta.reshape(target.shape) * target.float()).sum()
            surrogate = term if surrogate is None else surrogate + term
        return LossResult(surrogate=surrogate, cost=sum(costs) / len(costs), heads=[], deltas=deltas)


def _cost_delta(diff: torch.Tensor, smooth: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """l2_cpu (delta = diff, cost = diff^2) or smooth_l1_cpu."""
    if not smooth:
        return diff, diff * diff
    small = diff.abs() < 1
    return (torch.where(small, diff, torch.sign(diff)),
            torch.where(small, diff * diff, 2 * diff.abs() - 1))
