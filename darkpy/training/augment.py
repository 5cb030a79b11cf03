"""Darknet's detection augmentation as pure image / geometry operations (no dataset, no loader).

Reproduces AlexeyAB darknet's OpenCV data path:
- src/data.c `load_data_detection`: jitter/resize crop offsets, letter_box, mosaic (net.mixup=3) and mixup (1);
- src/data.c `fill_truth_detection` / `correct_boxes`: boxes moved into the crop, flipped, clipped, filtered;
- src/data.c `blend_truth` / `blend_truth_mosaic`: truths of mixup and mosaic images;
- src/image_opencv.cpp `image_data_augmentation`: crop (outside filled with the image's mean colour),
  cv::resize INTER_LINEAR to the network size, flip, HSV in OpenCV 8-bit space, blur, gaussian noise.

Every random number comes from the numpy Generator passed in (darkpy.training.sampler.SampleKey seeds it from
the seed and the sample's place in training). Darknet's own random_gen() sequence is not reproduced (it is
rand()-based and shared between threads), only its distributions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional, Tuple

import cv2
import numpy as np

from darkpy.data import BAD_CLASS_ID, BAD_COORDINATES, DataProblems
from darkpy.image import to_float
from darkpy.training.settings import MIXUP_BLEND, MIXUP_MOSAIC, MIXUP_NONE, AugmentConfig

MOSAIC_MIN_OFFSET = 0.2  # load_data_detection: cut points in [0.2, 0.8] of the network size
BACKGROUND_BLUR_KERNEL = 17  # image_data_augmentation: blur == 1 blurs the background with a 17x17 Gaussian

# A loaded training image: uint8 HxWx3 RGB, labels (N, 5) [class, x, y, w, h] relative (or (N, 6) with a track
# id, which the boxes carry along as Darknet's 6th truth value), and the label file name (for messages).
Source = Tuple[np.ndarray, np.ndarray, str]
F32 = np.float32

def rand_scale(rng: np.random.Generator, s: float) -> float:
    """Darknet's rand_scale: U(1, s), or its reciprocal half of the time."""
    scale = float(rng.uniform(min(1.0, s), max(1.0, s)))
    return scale if rng.integers(2) else 1.0 / scale


@dataclass(frozen=True)
class TileDraw:
    """The random numbers load_data_detection draws for one image (one mosaic tile)."""

    r: Tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.5)  # r1..r4: pleft, pright, ptop, pbot in U(-d, d)
    resize_r: Tuple[float, float] = (0.5, 0.5)  # resize_r1 (left/top), resize_r2 (right/bottom)
    flip: bool = False
    dhue: float = 0.0
    dsat: float = 1.0
    dexp: float = 1.0
    blur: int = 0
    gaussian_noise: int = 0
    to_corner: bool = False  # mosaic: "move each 2nd image to the corner"

    @classmethod
    def identity(cls) -> "TileDraw":
        """No jitter (r = 0.5 gives zero offsets), no flip, no colour change."""
        return cls()


def draw_tile(rng: np.random.Generator, config: AugmentConfig, mosaic: bool = False,
              pair: Optional[np.random.Generator] = None) -> TileDraw:
    """One image's random draws, with load_data_detection's distributions.

    With [net] contrastive=1 the two images of a pair draw from `pair` (the same generator state for both) the
    crop offsets and flip unless contrastive_jit_flip, the colour unless contrastive_color: Darknet's second
    image keeps the first one's values."""
    blur = 0
    if config.blur:
        blur = (0, 1, config.blur)[int(rng.integers(3))]  # none, background only, whole image
    noise = config.gaussian_noise if config.gaussian_noise and rng.integers(2) == 1 else 0
    r = tuple(float(v) for v in rng.random(4))
    resize_r = tuple(float(v) for v in rng.random(2))
    flip = bool(config.flip and rng.integers(2))
    colour = _colour_draw(rng, config)
    if pair is not None:
        shared_r, shared_flip = tuple(float(v) for v in pair.random(4)), bool(config.flip and pair.integers(2))
        shared_colour = _colour_draw(pair, config)
        if not config.contrastive_jit_flip:
            r, flip = shared_r, shared_flip
        if not config.contrastive_color:
            colour = shared_colour
    return TileDraw(r=r, resize_r=resize_r, flip=flip, dhue=colour[0], dsat=colour[1], dexp=colour[2], blur=blur,
                    gaussian_noise=noise, to_corner=bool(mosaic and rng.integers(2) == 0))


def _colour_draw(rng: np.random.Generator, config: AugmentConfig) -> Tuple[float, float, float]:
    """dhue, dsat, dexp."""
    dhue = float(rng.uniform(-config.hue, config.hue)) if config.hue else 0.0
    return dhue, rand_scale(rng, config.saturation), rand_scale(rng, config.exposure)



@dataclass(frozen=True)
class CropWindow:
    """Darknet's crop of an ow x oh image: pleft/pright/ptop/pbot pixels cut from each side (negative = the crop
    reaches outside the image, where the mean colour is painted)."""

    ow: int
    oh: int
    left: int
    right: int
    top: int
    bottom: int

    @property
    def width(self) -> int:  # swidth
        return self.ow - self.left - self.right

    @property
    def height(self) -> int:  # sheight
        return self.oh - self.top - self.bottom

    @property
    def is_whole_image(self) -> bool:
        return self.left == 0 and self.top == 0 and self.width == self.ow and self.height == self.oh


def _precalc(low: float, high: float, r: float) -> int:
    """rand_precalc_random(min, max, r) stored in an int: r*(max-min)+min, truncated toward zero."""
    if high < low:
        low, high = high, low
    return int(F32(r) * (F32(high) - F32(low)) + F32(low))


def crop_window(ow: int, oh: int, net_w: int, net_h: int, config: AugmentConfig, draw: TileDraw,
                tile: Optional[int] = None) -> CropWindow:
    """The crop load_data_detection cuts from an ow x oh image (jitter, resize, letter_box, mosaic corner).

    `tile` (0..3: top-left, top-right, bottom-left, bottom-right) is the mosaic quadrant, None outside mosaic.
    """
    dw, dh = int(F32(ow) * F32(config.jitter)), int(F32(oh) * F32(config.jitter))
    pleft, pright = _precalc(-dw, dw, draw.r[0]), _precalc(-dw, dw, draw.r[1])
    ptop, pbot = _precalc(-dh, dh, draw.r[2]), _precalc(-dh, dh, draw.r[3])

    resize_down = config.resize if config.resize <= 1 else 1 / config.resize
    resize_up = config.resize if config.resize >= 1 else 1 / config.resize
    min_rdw, min_rdh = (int(F32(size) * (1 - 1 / F32(resize_down)) / 2) for size in (ow, oh))  # <= 0
    max_rdw, max_rdh = (int(F32(size) * (1 - 1 / F32(resize_up)) / 2) for size in (ow, oh))  # >= 0
    if config.resize < 1:  # zoom out only
        max_rdw = max_rdh = 0
    # The left and top sides share one random number, the right and bottom sides another.
    pleft += _precalc(min_rdw, max_rdw, draw.resize_r[0])
    pright += _precalc(min_rdw, max_rdw, draw.resize_r[1])
    ptop += _precalc(min_rdh, max_rdh, draw.resize_r[0])
    pbot += _precalc(min_rdh, max_rdh, draw.resize_r[1])

    if config.letter_box:
        pleft, pright, ptop, pbot = _letter_box_sides(ow, oh, net_w, net_h, pleft, pright, ptop, pbot)
    if tile is not None and draw.to_corner:
        pleft, pright, ptop, pbot = _push_to_corner(tile, draw.flip, pleft, pright, ptop, pbot)

    window = CropWindow(ow, oh, pleft, pright, ptop, pbot)
    if _invalid_window(window):
        # Darknet prints "WARNING: invalid resize" here; darkpy falls back to the whole image.
        window = CropWindow(ow, oh, 0, 0, 0, 0)
    return window


def _letter_box_sides(ow: int, oh: int, net_w: int, net_h: int, pleft: int, pright: int, ptop: int,
                      pbot: int) -> Tuple[int, int, int, int]:
    """Widen the crop on two opposite sides so that it has the network's aspect ratio (C: int -= float)."""
    img_ar, net_ar = F32(ow) / F32(oh), F32(net_w) / F32(net_h)
    if img_ar / net_ar > 1:  # the image is wider than the network: add height
        delta_h = (F32(ow) / net_ar - F32(oh)) / 2
        return pleft, pright, int(ptop - delta_h), int(pbot - delta_h)
    delta_w = (F32(oh) * net_ar - F32(ow)) / 2
    return int(pleft - delta_w), int(pright - delta_w), ptop, pbot


def _push_to_corner(tile: int, flip: bool, pleft: int, pright: int, ptop: int,
                    pbot: int) -> Tuple[int, int, int, int]:
    """Mosaic: move the crop so that the image touches the mosaic's centre (the side that stays visible).

    The horizontal side is mirrored when the tile will be flipped.
    """
    slack_to_right = (tile in (0, 2)) != flip  # the left/right offsets both go to the right side
    if slack_to_right:
        pright, pleft = pright + pleft, 0
    else:
        pleft, pright = pleft + pright, 0
    if tile in (0, 1):
        pbot, ptop = pbot + ptop, 0
    else:
        ptop, pbot = ptop + pbot, 0
    return pleft, pright, ptop, pbot


def _invalid_window(window: CropWindow) -> bool:
    # Darknet's test (swidth, sheight, ow - pleft, oh - ptop <= 0) plus the mirror conditions, so that the crop
    # always overlaps the image.
    return (window.width <= 0 or window.height <= 0 or window.ow - window.left <= 0 or window.oh - window.top <= 0
            or window.ow - window.right <= 0 or window.oh - window.bottom <= 0)



def place_truths(labels: np.ndarray, window: CropWindow, flip: bool, net_w: int, net_h: int,
                 config: AugmentConfig, rng: Optional[np.random.Generator] = None,
                 problems: Optional[DataProblems] = None, label_file: str = "") -> Tuple[np.ndarray, int]:
    """Darknet's fill_truth_detection: labels (N, 5) [class, x, y, w, h] -> truths (K, 5) [x, y, w, h, class]
    (labels (N, 6) with a track id give truths (K, 6) [x, y, w, h, class, track id]).

    Boxes are shuffled (randomize_boxes), moved into the crop, flipped and clipped to [0, 1] (correct_boxes),
    the list is cut to `max` boxes (before filtering, as in Darknet), and then boxes narrower or lower than one
    network pixel are dropped silently, a class id >= classes or a box at x = y = 0 is dropped with a warning.
    Also returns min_w_h: the smallest side of a kept box in network pixels, truncated (0 without boxes).
    """
    labels = np.asarray(labels, dtype=F32)
    labels = labels.reshape(-1, labels.shape[-1] if labels.ndim == 2 else 5)
    if rng is not None and len(labels) > 1:
        labels = labels[rng.permutation(len(labels))]
    cls, x, y, w, h = (labels[:, i] for i in range(5))
    # correct_boxes marks these as 999999 ("Wrong annotation: x = 0 or y = 0"): a box at the origin, and one wholly
    # outside [0, 1] (read_labels keeps boxes with coordinates outside [0, 1], as read_boxes does).
    marked = ((x == 0) & (y == 0)) | (x + w / 2 < 0) | (y + h / 2 < 0) | (x - w / 2 > 1) | (y - h / 2 > 1)

    sx = F32(window.width) / F32(window.ow)
    sy = F32(window.height) / F32(window.oh)
    scale_x, scale_y = F32(1.0 / sx), F32(1.0 / sy)
    dx = (F32(window.left) / F32(window.ow)) / sx
    dy = (F32(window.top) / F32(window.oh)) / sy
    left, right = (x - w / 2) * scale_x - dx, (x + w / 2) * scale_x - dx
    top, bottom = (y - h / 2) * scale_y - dy, (y + h / 2) * scale_y - dy
    if flip:
        left, right = 1 - right, 1 - left
    left, right, top, bottom = (np.clip(v, 0, 1).astype(F32) for v in (left, right, top, bottom))
    new_x, new_y = (left + right) / 2, (top + bottom) / 2
    new_w, new_h = np.clip(right - left, 0, 1), np.clip(bottom - top, 0, 1)

    count = min(len(labels), config.max_boxes)  # Darknet truncates before it filters
    lowest_w, lowest_h = F32(1) / F32(net_w), F32(1) / F32(net_h)
    kept: List[int] = []
    for i in range(count):
        if cls[i] >= config.classes or cls[i] < 0:
            _warn(problems, BAD_CLASS_ID, f"{label_file}: class id {int(cls[i])} is outside 0..{config.classes - 1}; "
                                          "box skipped")
        elif marked[i]:
            _warn(problems, BAD_COORDINATES, f"{label_file}: box at x = {x[i]:g}, y = {y[i]:g} (Darknet: 'Wrong "
                                             "annotation: x = 0 or y = 0'); box skipped")
        elif new_w[i] < lowest_w or new_h[i] < lowest_h:
            continue  # smaller than one network pixel (or cropped away): dropped silently, as Darknet does
        elif new_x[i] <= 0 or new_x[i] > 1 or new_y[i] <= 0 or new_y[i] > 1:
            continue  # cannot happen after clipping with a positive size; kept for Darknet's checks' order
        else:
            kept.append(i)
    truths = np.concatenate([np.stack([new_x, new_y, new_w, new_h], axis=1), labels[:, :1], labels[:, 5:]],
                            axis=1)[kept].astype(F32)
    min_w_h = int(min(float((truths[:, 2] * net_w).min()), float((truths[:, 3] * net_h).min()))) if kept else 0
    return truths, min_w_h


def _warn(problems: Optional[DataProblems], kind: str, message: str) -> None:
    if problems is not None:
        problems.warn(kind, message)



def crop_and_resize(image: np.ndarray, window: CropWindow, net_w: int, net_h: int) -> np.ndarray:
    """image_data_augmentation's crop: the window (outside filled with cv::mean of the image) resized to the
    network size with cv::resize INTER_LINEAR. uint8 HxWx3 in and out."""
    if window.is_whole_image:
        return cv2.resize(image, (net_w, net_h), interpolation=cv2.INTER_LINEAR)
    mean = cv2.mean(image)[: image.shape[2]]
    cropped = np.empty((window.height, window.width, image.shape[2]), np.uint8)
    cropped[:] = np.clip(np.rint(mean), 0, 255).astype(np.uint8)  # cv::Mat::setTo(Scalar) rounds and saturates
    src_x0, src_y0 = max(0, window.left), max(0, window.top)
    src_x1 = min(window.ow, window.left + window.width)
    src_y1 = min(window.oh, window.top + window.height)
    dst_x0, dst_y0 = max(0, -window.left), max(0, -window.top)
    cropped[dst_y0:dst_y0 + src_y1 - src_y0, dst_x0:dst_x0 + src_x1 - src_x0] = image[src_y0:src_y1, src_x0:src_x1]
    return cv2.resize(cropped, (net_w, net_h), interpolation=cv2.INTER_LINEAR)


def adjust_hsv(image: np.ndarray, dhue: float, dsat: float, dexp: float) -> np.ndarray:
    """HSV jitter in OpenCV's 8-bit HSV (H in 0..179): S *= dsat, V *= dexp, H += 179*dhue, each rounded and
    saturated to 0..255 as cv::Mat arithmetic does (a hue pushed past 179 wraps in HSV2RGB, one below 0
    sticks at 0, as in Darknet)."""
    if dsat == 1 and dexp == 1 and dhue == 0:
        return image
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    sat = cv2.convertScaleAbs(sat, alpha=float(dsat))  # Mat *= double: saturate_cast(v * s), v >= 0
    val = cv2.convertScaleAbs(val, alpha=float(dexp))
    hue = cv2.add(hue, float(F32(179) * F32(dhue)))
    return cv2.cvtColor(cv2.merge([hue, sat, val]), cv2.COLOR_HSV2RGB)


def blur_image(image: np.ndarray, blur: int, truths: np.ndarray) -> np.ndarray:
    """blur == 1: 17x17 Gaussian on the background only (pixels inside the truth boxes stay sharp);
    blur > 1: the whole image with a (blur/2)*2+1 kernel."""
    if blur <= 0:
        return image
    ksize = BACKGROUND_BLUR_KERNEL if blur == 1 else (blur // 2) * 2 + 1
    blurred = cv2.GaussianBlur(image, (ksize, ksize), 0)
    if blur == 1:
        rows, cols = image.shape[:2]
        for bx, by, bw, bh in truths[:, :4].astype(np.float64):
            left, top = int((bx - bw / 2) * cols), int((by - bh / 2) * rows)
            width, height = int(bw * cols), int(bh * rows)
            x0, y0 = max(0, left), max(0, top)
            x1, y1 = min(cols, left + width), min(rows, top + height)
            if x1 > x0 and y1 > y0:
                blurred[y0:y1, x0:x1] = image[y0:y1, x0:x1]
    return blurred


def add_gaussian_noise(image: np.ndarray, sigma: int, rng: np.random.Generator) -> np.ndarray:
    """Darknet's gaussian_noise: cv::randn into a uint8 Mat (so negative noise saturates to 0: the noise only
    brightens), then a saturating add. sigma is clamped to 0..127."""
    sigma = min(max(int(sigma), 0), 127)
    if sigma == 0:
        return image
    noise = np.clip(np.rint(rng.normal(0.0, sigma, image.shape)), 0, 255).astype(np.uint8)
    return cv2.add(image, noise)



@dataclass
class AugmentedTile:
    image: np.ndarray  # uint8 (net_h, net_w, 3)
    truths: np.ndarray  # (K, 5) [x, y, w, h, class] (K, 6 with a track id)
    window: CropWindow
    flip: bool


def augment_tile(source: Source, net_w: int, net_h: int, config: AugmentConfig, draw: TileDraw,
                 rng: np.random.Generator, problems: Optional[DataProblems] = None,
                 tile: Optional[int] = None) -> AugmentedTile:
    """One image through load_data_detection's per-image steps and image_data_augmentation."""
    image, labels, label_file = source
    oh, ow = image.shape[:2]
    window = crop_window(ow, oh, net_w, net_h, config, draw, tile)
    truths, min_w_h = place_truths(labels, window, draw.flip, net_w, net_h, config, rng, problems, label_file)
    blur = draw.blur
    if blur > 1 and min_w_h // 8 < blur:
        blur = min_w_h // 8  # "disable blur if one of the objects is too small"
    pixels = crop_and_resize(image, window, net_w, net_h)
    if draw.flip:
        pixels = cv2.flip(pixels, 1)
    pixels = adjust_hsv(pixels, draw.dhue, draw.dsat, draw.dexp)
    pixels = blur_image(pixels, blur, truths)
    pixels = add_gaussian_noise(pixels, draw.gaussian_noise, rng)
    return AugmentedTile(pixels, truths, window, draw.flip)



class MosaicShifts(NamedTuple):
    left: int
    right: int
    top: int
    bottom: int


def mosaic_shifts(augmented: AugmentedTile, net_w: int, net_h: int, cut_x: int, cut_y: int) -> MosaicShifts:
    """How many network pixels of painted border each side of a tile has (capped by its quadrant), so that the
    quadrant is taken from the image content next to the mosaic's centre. A flipped tile swaps left and right."""
    window = augmented.window
    pleft, pright = (window.right, window.left) if augmented.flip else (window.left, window.right)
    return MosaicShifts(
        left=min(cut_x, max(0, (-pleft * net_w) // window.ow)),
        right=min(net_w - cut_x, max(0, (-pright * net_w) // window.ow)),
        top=min(cut_y, max(0, (-window.top * net_h) // window.oh)),
        bottom=min(net_h - cut_y, max(0, (-window.bottom * net_h) // window.oh)),
    )


def _quadrant_source(tile: int, net_w: int, net_h: int, cut_x: int, cut_y: int,
                     shifts: MosaicShifts) -> Tuple[int, int]:
    """Top-left corner, in the tile's augmented image, of the part copied into quadrant `tile`."""
    x0 = net_w - cut_x - shifts.right if tile in (0, 2) else shifts.left
    y0 = net_h - cut_y - shifts.bottom if tile in (0, 1) else shifts.top
    return x0, y0


def paste_mosaic_tile(canvas: np.ndarray, augmented: AugmentedTile, tile: int, cut_x: int, cut_y: int,
                      shifts: MosaicShifts) -> None:
    """Copy a tile's quadrant into the mosaic canvas (load_data_detection's memcpy loop)."""
    net_h, net_w = canvas.shape[:2]
    dst_x0, dst_x1 = (0, cut_x) if tile in (0, 2) else (cut_x, net_w)
    dst_y0, dst_y1 = (0, cut_y) if tile in (0, 1) else (cut_y, net_h)
    x0, y0 = _quadrant_source(tile, net_w, net_h, cut_x, cut_y, shifts)
    canvas[dst_y0:dst_y1, dst_x0:dst_x1] = augmented.image[y0:y0 + dst_y1 - dst_y0, x0:x0 + dst_x1 - dst_x0]


def mosaic_truths(existing: np.ndarray, tile_truths: np.ndarray, tile: int, net_w: int, net_h: int, cut_x: int,
                  cut_y: int, shifts: MosaicShifts, mosaic_bound: bool = False, max_boxes: int = 200) -> np.ndarray:
    """Darknet's blend_truth_mosaic: shift a tile's truths to its quadrant, fix the parts outside the image
    (or, with mosaic_bound, outside the quadrant) and append those that remain valid to `existing`."""
    room = max(0, max_boxes - len(existing))
    boxes = np.asarray(tile_truths, F32)[:room]
    if len(boxes) == 0:
        return existing
    w, h = F32(net_w), F32(net_h)
    x0, y0 = _quadrant_source(tile, net_w, net_h, cut_x, cut_y, shifts)
    dst_x0 = 0 if tile in (0, 2) else cut_x
    dst_y0 = 0 if tile in (0, 1) else cut_y
    xb = boxes[:, 0] + F32(dst_x0 - x0) / w
    yb = boxes[:, 1] + F32(dst_y0 - y0) / h
    wb, hb = boxes[:, 2].copy(), boxes[:, 3].copy()

    def sides():
        return (np.trunc((xb - wb / 2) * w), np.trunc((xb + wb / 2) * w),
                np.trunc((yb - hb / 2) * h), np.trunc((yb + hb / 2) * h))

    left, right, top, bot = sides()
    if mosaic_bound:
        bounds_x = (0, cut_x) if tile in (0, 2) else (cut_x, net_w)
        bounds_y = (0, cut_y) if tile in (0, 1) else (cut_y, net_h)
        left, right = np.maximum(left, bounds_x[0]), np.minimum(right, bounds_x[1])
        top, bot = np.maximum(top, bounds_y[0]), np.minimum(bot, bounds_y[1])
        xb, wb = ((right + left) / 2 / w).astype(F32), ((right - left) / w).astype(F32)
        yb, hb = ((bot + top) / 2 / h).astype(F32), ((bot - top) / h).astype(F32)
    else:
        # Cut the part outside the image, keeping the other edge where it was.
        diff = np.where(left < 0, left / w, 0).astype(F32)
        xb, wb = xb - diff / 2, wb + diff
        diff = np.where(right > w, (right - w) / w, 0).astype(F32)
        xb, wb = xb - diff / 2, wb - diff
        diff = np.where(top < 0, top / h, 0).astype(F32)
        yb, hb = yb - diff / 2, hb + diff
        diff = np.where(bot > h, (bot - h) / h, 0).astype(F32)
        yb, hb = yb - diff / 2, hb - diff
        left, right, top, bot = sides()
    valid = ((left >= 0) & (right <= w) & (top >= 0) & (bot <= h)
             & (wb > 0) & (wb < 1) & (hb > 0) & (hb < 1) & (xb > 0) & (xb < 1) & (yb > 0) & (yb < 1)
             & (wb > 1 / w) & (hb > 1 / h))
    shifted = np.concatenate([np.stack([xb, yb, wb, hb], axis=1), boxes[:, 4:]], axis=1)[valid].astype(F32)
    return np.concatenate([existing.reshape(-1, shifted.shape[1]).astype(F32), shifted], axis=0)


def make_mosaic(sources: Callable[[int], Source], net_w: int, net_h: int, config: AugmentConfig,
                rng: np.random.Generator, problems: Optional[DataProblems] = None,
                pair: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray]:
    """load_data_detection with mosaic (use_mixup == 3): four images `sources(0..3)`, each jittered on its own
    (half of them pushed towards the centre), cut at a random point in [0.2, 0.8] of the network size.
    Returns float32 (3, net_h, net_w) and truths (K, 5) [x, y, w, h, class]."""
    low, high = F32(MOSAIC_MIN_OFFSET), F32(1) - F32(MOSAIC_MIN_OFFSET)
    cut_x = int(rng.integers(int(F32(net_w) * low), int(F32(net_w) * high) + 1))  # rand_int: both ends included
    cut_y = int(rng.integers(int(F32(net_h) * low), int(F32(net_h) * high) + 1))
    canvas = np.zeros((net_h, net_w, 3), np.uint8)
    truths = np.zeros((0, 5), F32)  # (0, 6) once a tile brings track ids
    for tile in range(4):
        draw = draw_tile(rng, config, mosaic=True, pair=pair)
        augmented = augment_tile(sources(tile), net_w, net_h, config, draw, rng, problems, tile=tile)
        shifts = mosaic_shifts(augmented, net_w, net_h, cut_x, cut_y)
        paste_mosaic_tile(canvas, augmented, tile, cut_x, cut_y, shifts)
        truths = mosaic_truths(truths, augmented.truths, tile, net_w, net_h, cut_x, cut_y, shifts,
                               config.mosaic_bound, config.max_boxes)
    return to_float(canvas), truths



def make_training_sample(sources: Callable[[int], Source], net_w: int, net_h: int, config: AugmentConfig,
                         rng: np.random.Generator, problems: Optional[DataProblems] = None,
                         pair: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One network input as load_data_detection makes it: float32 (3, net_h, net_w) RGB in [0, 1] and truths
    (K, 5) [x, y, w, h, class], K <= max.

    `sources(k)` gives the k-th image of this sample: 0 is the sampled one, mosaic asks for 1..3 more and mixup
    for one more (Darknet draws those uniformly from the list as well). Mosaic and mixup are used in 50 % of
    the samples (Darknet decides once per loader call, i.e. per group of about batch/6 images).

    `pair` ([net] contrastive=1): the generator the two images of a contrastive pair share (the caller's
    `sources` draws the extra images from it too): they make the same mosaic/mixup choice and share the draws
    draw_tile says.
    """
    mode = config.mixup
    if mode != MIXUP_NONE and (pair or rng).integers(2) == 0:
        mode = MIXUP_NONE
    if mode == MIXUP_MOSAIC:
        return make_mosaic(sources, net_w, net_h, config, rng, problems, pair)
    first = augment_tile(sources(0), net_w, net_h, config, draw_tile(rng, config, pair=pair), rng, problems)
    image, truths = to_float(first.image), first.truths
    if mode == MIXUP_BLEND:  # blend_images_cv(new, 0.5, old, 0.5) and blend_truth: old truths, then new ones
        second = augment_tile(sources(1), net_w, net_h, config, draw_tile(rng, config, pair=pair), rng, problems)
        image = F32(0.5) * to_float(second.image) + F32(0.5) * image
        truths = np.concatenate([truths, second.truths], axis=0)[: config.max_boxes]
    return image, truths
