"""A small detection dataset in Darknet's format, made from scratch (`darkpy make-dataset shapes OUT` writes it).

Filled shapes (circle, square, triangle, cross, star) in random colours, sizes, rotations and positions are painted
on random crops of the photos in the repository's data/images. Each image gets a YOLO label file beside it
(`<class> <x_center> <y_center> <width> <height>`, relative to the image: the layout AlexeyAB darknet reads, see
src/utils.c `replace_image_to_label`), and OUT gets train.txt / valid.txt, shapes.names, shapes.data and an empty
backup/ folder, so that `darkpy train --data OUT/shapes.data` (or `darknet detector train`) runs on it at once.
The classification variant (`shapes-cls`) paints one large shape per image and names the image after its class.
A label box is the extent of the shape's pixels that are at least half covered, so labels match the pixels to within a
pixel. The output depends only on the options and --seed.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from tqdm import tqdm

from darkpy.image import ImageError, load_image

SHAPE_NAMES = ("circle", "square", "triangle", "cross", "star")
MIN_CLASSES, MAX_CLASSES = 3, len(SHAPE_NAMES)
DEFAULT_BACKGROUNDS = Path(__file__).resolve().parents[1] / "data" / "images"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

# Shape size: the diameter of the circle the shape fits in, as a fraction of the image side.
MIN_SHAPE_FRACTION, MAX_SHAPE_FRACTION = 0.12, 0.42
CLASSIFICATION_SHAPE_FRACTIONS = (0.4, 0.8)  # shapes-cls: one large shape per image
MIN_CROP_FRACTION = 0.35  # background crops cover 35..100 % of the photo's shorter side
PLACEMENT_TRIES = 50
MIN_COLOUR_DISTANCE = 120  # sum over R, G, B between the shape's colour and the mean photo colour under it
COVERAGE_THRESHOLD = 128  # a pixel belongs to the shape (and its box) when the anti-aliased mask is >= 50 %
SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point precision
SUPERSAMPLE = 4  # coverage is measured on a 4x finer grid
JPEG_QUALITY = 92


@dataclass
class ShapesSummary:
    """What make_shapes_dataset wrote."""

    out_dir: Path
    data_file: Path
    train_images: int
    valid_images: int
    objects: int
    classes: List[str]


# ------------------------------------------------------------------------------------------------ geometry

def shape_outline(kind: str, radius: float, aspect: float, angle: float, centre: Tuple[float, float]) -> np.ndarray:
    """The shape's polygon (K, 2) in pixels: unit outline scaled to `radius`, stretched in x by `aspect`,
    rotated by `angle` (radians) and moved to `centre`."""
    points = _unit_outline(kind)
    points = points * np.array([aspect, 1.0]) * radius
    cos, sin = math.cos(angle), math.sin(angle)
    rotated = points @ np.array([[cos, sin], [-sin, cos]])
    return rotated + np.asarray(centre, dtype=np.float64)


def _unit_outline(kind: str) -> np.ndarray:
    if kind == "circle":
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if kind == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) / math.sqrt(2)
    if kind == "triangle":
        t = np.radians([-90, 30, 150])
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if kind == "cross":
        a, b = 1.0, 0.32  # arm length and half thickness
        return np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b],
                         [-a, -b], [-b, -b]], dtype=np.float64)
    if kind == "star":
        t = np.radians(-90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    raise ValueError(f"unknown shape {kind!r}; known: {', '.join(SHAPE_NAMES)}")


def coverage_mask(outline: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 mask (0..255) of how much of each pixel a polygon covers (pixel (i, j) spans [i, i+1) x [j, j+1)).

    The polygon is filled without anti-aliasing at SUPERSAMPLE times the resolution and averaged down
    (cv2's own LINE_AA fill spreads about half a pixel beyond the outline, which would bias the labels).
    """
    big = np.zeros((height * SUPERSAMPLE, width * SUPERSAMPLE), np.uint8)
    # cv2 puts integer coordinates at pixel centres: shift by half a (big) pixel so that 0 is the corner.
    fixed = np.round((outline * SUPERSAMPLE - 0.5) * (1 << SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(big, [fixed], 255, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
    return cv2.resize(big, (width, height), interpolation=cv2.INTER_AREA)


def mask_box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """(left, top, right, bottom) in pixels, right/bottom exclusive, of the pixels at least half covered."""
    ys, xs = np.nonzero(mask >= COVERAGE_THRESHOLD)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# ------------------------------------------------------------------------------------------------ one image

def load_backgrounds(folder: Union[str, Path]) -> List[np.ndarray]:
    """Every readable photo of a folder, as uint8 RGB."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: background photo folder not found (pass --backgrounds DIR)")
    photos = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            try:
                photos.append(load_image(path))
            except ImageError as error:
                print(f"warning: {error}; photo skipped", file=sys.stderr)
    if not photos:
        raise FileNotFoundError(f"{folder}: no readable .jpg/.png/.bmp photos to use as backgrounds")
    return photos


def random_background(photos: Sequence[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of a random photo, resized to size x size, flipped half of the time."""
    photo = photos[int(rng.integers(len(photos)))]
    height, width = photo.shape[:2]
    side = int(round(min(height, width) * rng.uniform(MIN_CROP_FRACTION, 1.0)))
    top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    crop = photo[top:top + side, left:left + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    image = cv2.resize(crop, (size, size), interpolation=interpolation)
    return np.ascontiguousarray(image[:, ::-1]) if rng.integers(2) else image


def _overlaps(box: Tuple[int, int, int, int], others: Sequence[Tuple[int, int, int, int]], gap: int = 2) -> bool:
    left, top, right, bottom = box
    return any(left < o[2] + gap and o[0] < right + gap and top < o[3] + gap and o[1] < bottom + gap for o in others)


def _contrasting_colour(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour far enough from the photo's mean colour under the shape to be seen."""
    under = image[mask >= COVERAGE_THRESHOLD].mean(axis=0)
    colour = rng.integers(0, 256, 3)
    for _ in range(20):
        if np.abs(colour - under).sum() >= MIN_COLOUR_DISTANCE:
            break
        colour = rng.integers(0, 256, 3)
    return colour.astype(np.float32)


def paint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Blend a colour into the image through an anti-aliased mask, in place."""
    alpha = mask.astype(np.float32)[..., None] / 255.0
    blended = image.astype(np.float32) * (1 - alpha) + colour * alpha
    image[:] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def render_shapes_image(background: np.ndarray, classes: int, objects: int,
                        rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Paint up to `objects` non-overlapping shapes of the first `classes` kinds on a copy of the background.

    Returns the image and its labels (K, 5) float [class, x_center, y_center, width, height] relative to the
    image. Every shape lies wholly inside the image; a shape that finds no free place is left out.
    """
    image = background.copy()
    height, width = image.shape[:2]
    boxes: List[Tuple[int, int, int, int]] = []
    labels: List[Tuple[float, float, float, float, float]] = []
    for _ in range(objects):
        class_id = int(rng.integers(classes))
        placed = _place_shape(SHAPE_NAMES[class_id], image, boxes, rng)
        if placed is None:
            continue
        mask, box = placed
        paint(image, mask, _contrasting_colour(image, mask, rng))
        boxes.append(box)
        left, top, right, bottom = box
        labels.append((class_id, (left + right) / 2 / width, (top + bottom) / 2 / height,
                       (right - left) / width, (bottom - top) / height))
    return image, np.asarray(labels, dtype=np.float64).reshape(-1, 5)


def _place_shape(kind: str, image: np.ndarray, taken: Sequence[Tuple[int, int, int, int]],
                 rng: np.random.Generator, fractions: Tuple[float, float] = (MIN_SHAPE_FRACTION, MAX_SHAPE_FRACTION)
                 ) -> Optional[Tuple[np.ndarray, Tuple[int, int, int, int]]]:
    height, width = image.shape[:2]
    side = min(height, width)
    for _ in range(PLACEMENT_TRIES):
        aspect = rng.uniform(0.8, 1.25)
        # the outline stays within `reach` of its centre: the shape is at most 2*reach wide and high
        reach = rng.uniform(*fractions) * side / 2
        radius = reach / max(aspect, 1.0)
        angle = rng.uniform(0, 2 * math.pi)
        reach += 2  # keep off the border by two pixels
        if 2 * reach >= side:
            continue
        centre = (rng.uniform(reach, width - reach), rng.uniform(reach, height - reach))
        mask = coverage_mask(shape_outline(kind, radius, aspect, angle, centre), height, width)
        box = mask_box(mask)
        if box is not None and not _overlaps(box, taken):
            return mask, box
    return None


# ------------------------------------------------------------------------------------------------ dataset

def render_classification_image(background: np.ndarray, class_id: int,
                                rng: np.random.Generator) -> np.ndarray:
    """One shape of SHAPE_NAMES[class_id], large (CLASSIFICATION_SHAPE_FRACTIONS of the side), on the background."""
    image = background.copy()
    placed = None
    while placed is None:  # a shape of at most 80 % of the side always fits; the loop ends at once in practice
        placed = _place_shape(SHAPE_NAMES[class_id], image, [], rng, CLASSIFICATION_SHAPE_FRACTIONS)
    mask, _ = placed
    paint(image, mask, _contrasting_colour(image, mask, rng))
    return image


def make_shapes_classification_dataset(out_dir: Union[str, Path], images: int = 1000, size: int = 64,
                                       classes: int = 5, seed: int = 0, valid_fraction: float = 0.2,
                                       backgrounds: Union[str, Path, None] = None, relative_paths: bool = False,
                                       force: bool = False, progress: bool = False) -> ShapesSummary:
    """Write the classification variant (`darkpy make-dataset shapes-cls OUT`): one shape per image, its class
    name in the file name (`train/000123_star.jpg`), as Darknet's classifier reads labels from paths; train.list,
    valid.list, shapes.labels and shapes-cls.data (classes, train, valid, labels, names, backup, top=2)."""
    _check_options(images, size, classes, valid_fraction, 1, 0.0)
    out = _output_folder(out_dir, force)
    names = list(SHAPE_NAMES[:classes])
    clash = [name for name in names if name in str(out)]
    if clash and not relative_paths:
        raise ValueError(f"{out}: the folder's path contains the class name {clash[0]!r}; Darknet takes an image's "
                         f"class from the first class name found anywhere in its path, so every image would be "
                         f"{clash[0]!r}. Choose another folder, or --relative")
    photos = load_backgrounds(backgrounds if backgrounds is not None else DEFAULT_BACKGROUNDS)
    rng = np.random.default_rng(seed)
    valid_count = int(round(images * valid_fraction))
    splits = {"train": [], "valid": []}
    indices = tqdm(range(images), desc="shapes-cls", unit="image") if progress else range(images)
    for i in indices:
        split = "valid" if i < valid_count else "train"
        class_id = i % classes  # balanced classes
        image = render_classification_image(random_background(photos, size, rng), class_id, rng)
        image_path = out / split / f"{i:06d}_{names[class_id]}.jpg"
        _write_image(image_path, image)
        splits[split].append(os.path.relpath(image_path, out) if relative_paths else str(image_path))
    _write_lines(out / "train.list", splits["train"])
    _write_lines(out / "valid.list", splits["valid"])
    _write_lines(out / "shapes.labels", names)
    (out / "backup").mkdir(exist_ok=True)
    data_file = out / "shapes-cls.data"
    where = (lambda name: name) if relative_paths else (lambda name: str(out / name))
    lines = [f"classes = {classes}", f"train = {where('train.list')}", f"valid = {where('valid.list')}",
             f"labels = {where('shapes.labels')}", f"names = {where('shapes.labels')}",
             f"backup = {where('backup')}", "top = 2"]
    _write_lines(data_file, lines)
    return ShapesSummary(out, data_file, len(splits["train"]), len(splits["valid"]), images, names)


def _output_folder(out_dir: Union[str, Path], force: bool) -> Path:
    out = Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out}: the folder is not empty (use --force to write into it anyway)")
    return out


def make_shapes_dataset(out_dir: Union[str, Path], images: int = 500, size: int = 224, classes: int = 5,
                        seed: int = 0, valid_fraction: float = 0.2, max_objects: int = 4,
                        negative_fraction: float = 0.05, backgrounds: Union[str, Path, None] = None,
                        relative_paths: bool = False, force: bool = False,
                        progress: bool = False) -> ShapesSummary:
    """Write the shapes dataset to out_dir; see the module docstring for the layout."""
    _check_options(images, size, classes, valid_fraction, max_objects, negative_fraction)
    out = _output_folder(out_dir, force)
    photos = load_backgrounds(backgrounds if backgrounds is not None else DEFAULT_BACKGROUNDS)
    rng = np.random.default_rng(seed)
    names = list(SHAPE_NAMES[:classes])
    valid_count = int(round(images * valid_fraction))
    splits = {"train": [], "valid": []}
    objects = 0
    indices = range(images)
    if progress:
        indices = tqdm(indices, desc="shapes", unit="image")
    for i in indices:
        split = "valid" if i < valid_count else "train"
        count = 0 if rng.random() < negative_fraction else int(rng.integers(1, max_objects + 1))
        image, labels = render_shapes_image(random_background(photos, size, rng), classes, count, rng)
        image_path = out / split / f"{i:06d}.jpg"
        _write_image(image_path, image)
        _write_labels(image_path.with_suffix(".txt"), labels)
        splits[split].append(os.path.relpath(image_path, out) if relative_paths else str(image_path))
        objects += len(labels)
    _write_lines(out / "train.txt", splits["train"])
    _write_lines(out / "valid.txt", splits["valid"])
    _write_lines(out / "shapes.names", names)
    (out / "backup").mkdir(exist_ok=True)
    data_file = out / "shapes.data"
    _write_data_file(data_file, out, classes, relative_paths)
    return ShapesSummary(out, data_file, len(splits["train"]), len(splits["valid"]), objects, names)


def _check_options(images: int, size: int, classes: int, valid_fraction: float, max_objects: int,
                   negative_fraction: float) -> None:
    if images < 1:
        raise ValueError(f"--images must be at least 1, got {images}")
    if size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {size}")
    if not MIN_CLASSES <= classes <= MAX_CLASSES:
        raise ValueError(f"--classes must be {MIN_CLASSES}..{MAX_CLASSES} ({', '.join(SHAPE_NAMES)}), got {classes}")
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")
    if max_objects < 1:
        raise ValueError(f"--max-objects must be at least 1, got {max_objects}")
    if not 0 <= negative_fraction <= 1:
        raise ValueError(f"--negative-fraction must be in [0, 1], got {negative_fraction}")


def _write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the image")
    path.write_bytes(encoded.tobytes())


def _write_labels(path: Path, labels: np.ndarray) -> None:
    lines = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
    path.write_text("".join(line + "\n" for line in lines))


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def _write_data_file(path: Path, out: Path, classes: int, relative_paths: bool) -> None:
    def where(name: str) -> str:
        return name if relative_paths else str(out / name)

    path.write_text(f"classes = {classes}\n"
                    f"train = {where('train.txt')}\n"
                    f"valid = {where('valid.txt')}\n"
                    f"names = {where('shapes.names')}\n"
                    f"backup = {where('backup')}\n")
