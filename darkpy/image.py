"""Images as Darknet feeds them to a network (src/image.c, src/image_opencv.cpp).

Darknet reads an image with OpenCV, converts it to RGB floats in [0, 1] (`mat_to_image`: byte / 255.0f), and
then either resizes it with its *own* bilinear `resize_image` (not cv::resize) or, with letter_box, with
`letterbox_image` (the same resize to fit the aspect ratio, centred on 0.5 grey). Everything here is float32 and
follows the C operation order, so the network input equals Darknet's bit for bit (up to libm's last ulp).
"""
from pathlib import Path
from typing import Tuple, Union

import cv2
import numpy as np

PAD_VALUE = 0.5  # letterbox_image fills the canvas with fill_image(boxed, .5)


class ImageError(ValueError):
    """An image file that cannot be read (missing, not an image, or a format OpenCV cannot decode)."""


def load_image(path: Union[str, Path]) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB, as Darknet's load_image_cv does (cv::imread IMREAD_COLOR + BGR->RGB).

    IMREAD_COLOR turns grey images into three equal channels and drops an alpha channel (it does not blend
    it), 16-bit images are scaled to 8 bits: exactly what Darknet gets from OpenCV.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    # np.fromfile + imdecode also reads paths that cv2.imread cannot (non-ASCII names on some platforms).
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:  # no read permission, an I/O error: one image, never the whole run
        raise ImageError(f"{path}: cannot read the image file: {error.strerror or error}") from None
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:  # OpenCV refuses some images outright (e.g. more pixels than its limit) instead of None
        bgr = None
    if bgr is None:
        raise ImageError(f"{path}: cannot decode the file as an image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 HxWxC -> float32 CxHxW in [0, 1], as mat_to_image (byte / 255.0f)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)


def _source_positions(size_in: int, size_out: int) -> Tuple[np.ndarray, np.ndarray]:
    """Integer source index and float32 fraction for each output position (resize_image's sx = c*w_scale).

    Darknet computes the scale as float (in-1)/(out-1) and the position in float; a 1-pixel output would
    divide by zero in C, here it simply samples position 0.
    """
    if size_out == 1:
        return np.zeros(1, np.int64), np.zeros(1, np.float32)
    scale = np.float32(size_in - 1) / np.float32(size_out - 1)
    position = np.arange(size_out, dtype=np.float32) * scale
    index = position.astype(np.int64)  # C's (int) truncation; positions are >= 0
    return index, position - index.astype(np.float32)


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Darknet's resize_image on a float32 CxHxW image: two-pass separable bilinear, align-corners style.

    Pass 1 (columns): part[:, :, c] = (1-dx)*im[ix] + dx*im[ix+1]; the last column (or every column of a
    1-pixel-wide image) copies the input's last column. Pass 2 (rows): out[r] = (1-dy)*part[iy], then
    += dy*part[iy+1] except on the last row (or when the input has one row). Note the last row is
    (1-dy)*part[iy] with the float position of that row, as in C (not a plain copy).
    """
    channels, in_h, in_w = image.shape
    if in_w == width and in_h == height:
        return image.astype(np.float32, copy=True)
    image = image.astype(np.float32, copy=False)

    part = np.empty((channels, in_h, width), np.float32)
    if in_w == 1:
        part[:] = image[:, :, :1]
    else:
        ix, dx = _source_positions(in_w, width)
        inner = slice(0, width - 1)
        left = image[:, :, ix[inner]]
        right = image[:, :, ix[inner] + 1]
        part[:, :, inner] = (np.float32(1) - dx[inner]) * left + dx[inner] * right
        part[:, :, width - 1] = image[:, :, in_w - 1]

    iy, dy = _source_positions(in_h, height)
    dy_col = dy[:, None]
    out = (np.float32(1) - dy_col) * part[:, iy, :]
    if in_h != 1:
        rows = slice(0, height - 1)  # the last row gets no second term
        out[:, rows, :] += dy_col[rows] * part[:, iy[rows] + 1, :]
    return out


def letterbox_size(image_w: int, image_h: int, net_w: int, net_h: int) -> Tuple[int, int]:
    """The size the image is resized to inside the network input (letterbox_image / correct_yolo_boxes).

    Darknet compares the float ratios and computes the other side with integer arithmetic.
    """
    if np.float32(net_w) / np.float32(image_w) < np.float32(net_h) / np.float32(image_h):
        return net_w, (image_h * net_w) // image_w
    return (image_w * net_h) // image_h, net_h


def letterbox_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Darknet's letterbox_image on float32 CxHxW: resize_image to fit, centred on a 0.5 grey canvas."""
    channels, in_h, in_w = image.shape
    new_w, new_h = letterbox_size(in_w, in_h, width, height)
    resized = resize_image(image, new_w, new_h)
    boxed = np.full((channels, height, width), PAD_VALUE, np.float32)
    left, top = (width - new_w) // 2, (height - new_h) // 2
    boxed[:, top:top + new_h, left:left + new_w] = resized
    return boxed


def resize_min(image: np.ndarray, size: int) -> np.ndarray:
    """image.c resize_min on float32 CxHxW: the shorter side becomes `size`, the other keeps the aspect ratio
    (integer arithmetic, truncated); an image already that size is returned as it is."""
    _, h, w = image.shape
    if w < h:
        new_w, new_h = size, (h * size) // w
    else:
        new_w, new_h = (w * size) // h, size
    if (new_w, new_h) == (w, h):
        return image
    return resize_image(image, new_w, new_h)


def crop_image(image: np.ndarray, dx: int, dy: int, width: int, height: int) -> np.ndarray:
    """image.c crop_image: the width x height window at (dx, dy); rows and columns outside the image take the
    nearest edge (Darknet clamps the coordinates before it reads)."""
    _, h, w = image.shape
    rows = np.clip(np.arange(height) + dy, 0, h - 1)
    cols = np.clip(np.arange(width) + dx, 0, w - 1)
    return np.ascontiguousarray(image[:, rows][:, :, cols])


def classifier_input(image: np.ndarray, net_w: int, net_h: int) -> np.ndarray:
    """HxWx3 uint8 RGB -> float32 (3, net_h, net_w) as predict_classifier feeds it: resize_min to the network
    width, then crop_image's centre crop (edge pixels repeat where the crop passes the image)."""
    resized = resize_min(to_float(image), net_w)
    _, h, w = resized.shape
    # C's integer division truncates towards 0 (a network taller than the resized image gives a negative offset)
    return crop_image(resized, int((w - net_w) / 2), int((h - net_h) / 2), net_w, net_h)


def network_input(image: np.ndarray, net_w: int, net_h: int, letter_box: bool = False) -> np.ndarray:
    """HxWx3 uint8 RGB -> float32 (3, net_h, net_w): what test_detector feeds the network."""
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWxC uint8 image, got {image.dtype} of shape {image.shape}")
    chw = to_float(image)
    if letter_box:
        return letterbox_image(chw, net_w, net_h)
    return resize_image(chw, net_w, net_h)
