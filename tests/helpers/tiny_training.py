"""A tiny darknet training setup for tests: a two-class dataset of squares and discs, a small PRN-free cfg, and
a Trainer built the way `darkpy train` builds it (one thread, no loader processes)."""
import io
import os
import re
import signal
import warnings
from pathlib import Path

import cv2
import numpy as np

from darkpy.training.settings import TrainOptions
from darkpy.training.trainer import Trainer

TINY_NET = """
[net]
batch=8
subdivisions=1
width=64
height=64
channels=3
momentum=0.9
decay=0.0005
learning_rate=0.01
burn_in=10
policy=steps
steps=150
scales=.1
max_batches=200
flip=1
"""

TINY_HEAD = """
[convolutional]
size=1
stride=1
pad=1
filters=14
activation=linear

[yolo]
mask=0,1
anchors=16,16, 28,28
classes=2
num=2
jitter=.1
ignore_thresh=.5
random=0
"""


def conv3x3(filters: int, stride: int) -> str:
    """A 3x3 leaky [convolutional]; `{bn}` (batch_normalize) is filled in by write_cfg."""
    return f"""
[convolutional]
batch_normalize={{bn}}
filters={filters}
size=3
stride={stride}
pad=1
activation=leaky
"""


MAXPOOL_2X2 = """
[maxpool]
size=2
stride=2
"""

TINY_CFG = (TINY_NET + conv3x3(16, 2) + MAXPOOL_2X2 + conv3x3(32, 1) + MAXPOOL_2X2 + conv3x3(32, 1)
            + TINY_HEAD)


def make_dataset(root: Path, images: int = 12, seed: int = 0, savelast: int = 100) -> Path:
    """Squares (class 0) and discs (class 1) on a dark background, darknet layout; returns the .data file."""
    rng = np.random.default_rng(seed)
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(images):
        img = np.full((64, 64, 3), 30, np.uint8)
        lines = []
        for cls in (0, 1):
            size = int(rng.integers(16, 26))
            cx = int(rng.integers(size // 2 + 1, 64 - size // 2 - 1)) if cls == 0 else 64 - 1 - int(
                rng.integers(size // 2 + 1, 30))
            cy = int(rng.integers(size // 2 + 1, 64 - size // 2 - 1))
            if cls == 0:
                cv2.rectangle(img, (cx - size // 2, cy - size // 2), (cx + size // 2, cy + size // 2),
                              (230, 230, 230), -1)
            else:
                cv2.circle(img, (cx, cy), size // 2, (230, 200, 60), -1)
            lines.append(f"{cls} {cx / 64:.6f} {cy / 64:.6f} {size / 64:.6f} {size / 64:.6f}")
        path = folder / f"{k:03d}.png"
        cv2.imwrite(str(path), img)
        (folder / f"{k:03d}.txt").write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    (root / "train.txt").write_text("\n".join(paths) + "\n")
    (root / "names.txt").write_text("square\ndisc\n")
    data = root / "tiny.data"
    data.write_text(f"classes=2\ntrain={root / 'train.txt'}\nvalid={root / 'train.txt'}\nnames={root / 'names.txt'}\n"
                    f"backup={root / 'backup'}\nsavelast={savelast}\n")
    return data


def write_cfg(root: Path, bn: int = 1, name: str = "tiny.cfg", **net) -> Path:
    text = TINY_CFG.format(bn=bn)
    for key, value in net.items():
        text = re.sub(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
    path = root / name
    path.write_text(text)
    return path


def trainer(data: Path, cfg: Path, **kw) -> Trainer:
    kw.setdefault("seed", 3)
    kw.setdefault("workers", 0)
    kw.setdefault("threads", 1)  # tiny tensors: one thread is several times faster than two
    kw.setdefault("progress", False)
    kw.setdefault("device", "cpu")
    out = kw.pop("out", io.StringIO())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Trainer(TrainOptions(data=str(data), cfg=str(cfg), out=out, **kw))


def run_trainer(t: Trainer) -> int:
    try:
        return t.train()
    finally:
        t.close()


def ctrl_c_after(t: Trainer, iterations: int) -> None:
    """Make `t` receive SIGINT (as from Ctrl-C) right after its iteration number `iterations`."""
    original = t.train_iteration

    def interrupting(images, truths, iteration):
        loss = original(images, truths, iteration)
        if iteration + 1 == iterations:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    t.train_iteration = interrupting
