"""Darknet's training chart (src/image_opencv.cpp draw_train_chart / draw_train_loss), drawn with OpenCV: the
average loss (blue dots) and mAP or a classifier's top-k accuracy (red line) against iterations, saved as chart.png every 100 iterations."""
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

import cv2
import numpy as np


@dataclass
class Chart:
    """Darknet's training chart: avg loss (blue dots) and mAP (red line) against iterations, 1000x1000."""

    max_batches: int
    max_loss: float = 20.0
    metric: str = "mAP%"  # the red line's name: mAP (-map) or top-k accuracy (-topk)
    losses: List[Tuple[int, float]] = field(default_factory=list)
    maps: List[Tuple[int, float]] = field(default_factory=list)
    size: int = 1000
    margin: int = 80

    def add_loss(self, iteration: int, avg_loss: float) -> None:
        if math.isfinite(avg_loss):  # a diverged (NaN/inf) loss is not drawn
            self.losses.append((iteration, avg_loss))

    def add_map(self, iteration: int, value: float) -> None:
        self.maps.append((iteration, value))

    def _xy(self, iteration: int, fraction: float) -> Tuple[int, int]:
        span = self.size - 2 * self.margin
        x = self.margin + int(span * iteration / max(self.max_batches, 1))
        y = self.size - self.margin - int(span * min(max(fraction, 0.0), 1.0))
        return x, y

    def draw(self, footer: str) -> np.ndarray:
        img = np.full((self.size, self.size, 3), 255, np.uint8)
        span = self.size - 2 * self.margin
        lo, hi = self.margin, self.size - self.margin
        for k in range(11):  # grid and axis labels
            y = hi - span * k // 10
            x = lo + span * k // 10
            cv2.line(img, (lo, y), (hi, y), (220, 220, 220), 1)
            cv2.line(img, (x, lo), (x, hi), (220, 220, 220), 1)
            cv2.putText(img, f"{self.max_loss * k / 10:.1f}", (8, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
            cv2.putText(img, f"{self.max_batches * k // 10}", (x - 18, hi + 22), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (0, 0, 0), 1)
        cv2.rectangle(img, (lo, lo), (hi, hi), (0, 0, 0), 1)
        cv2.putText(img, "Loss", (8, lo - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 0, 0), 2)
        cv2.putText(img, "Iteration number", (self.size // 2 - 80, hi + 50), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (0, 0, 0), 1)
        for iteration, loss in self.losses:  # blue (BGR) dots
            cv2.circle(img, self._xy(iteration, loss / self.max_loss), 1, (255, 0, 0), -1)
        if self.maps:
            cv2.putText(img, self.metric, (hi - 60, lo - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 2)
            points = [self._xy(i, m) for i, m in self.maps]
            for a, b in zip(points, points[1:]):
                cv2.line(img, a, b, (0, 0, 255), 2)
            for (i, m), p in zip(self.maps, points):
                cv2.circle(img, p, 3, (0, 0, 255), -1)
                cv2.putText(img, f"{m * 100:.0f}%", (p[0] - 10, p[1] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                            (0, 0, 255), 1)
        cv2.putText(img, footer, (lo, self.size - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        return img

    def save(self, paths: Sequence[Path], footer: str) -> None:
        """Write the chart to each path through a temporary file of a unique name (a fixed name could be a
        link planted in a shared folder); an OSError names the chart file that could not be written."""
        img = self.draw(footer)
        for path in paths:
            tmp = ""
            try:
                fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.png", dir=str(path.parent))
                os.close(fd)
                if not cv2.imwrite(tmp, img):
                    raise OSError("the image could not be written (a full disk?)")
                os.replace(tmp, path)
            except OSError as error:
                if tmp and os.path.exists(tmp):
                    os.unlink(tmp)
                raise OSError(f"{path}: cannot write the chart: {error.strerror or error}") from None
