"""The training list as a torch Dataset, and the DataLoader that feeds the trainer.

src/detector.c train_detector / src/data.c load_data_detection: images loaded and augmented ahead of the training
step by loader threads (here processes); unreadable images replaced by other random ones; label problems counted
and reported once (darkpy.data.DataProblems), handed back from worker processes with their batches.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from darkpy.data import DataError, DataProblems, label_path, read_labels, report_missing_image, resolve_path
from darkpy.image import ImageError, load_image
from darkpy.training.augment import Source, make_training_sample
from darkpy.training.sampler import IterationSampler, SampleKey
from darkpy.training.settings import AugmentConfig

MAX_IMAGE_TRIES = 100  # unreadable images are replaced by other random ones; give up after this many

class ProblemLog:
    """DataProblems' warn() interface, recording (kind, message) pairs to be replayed in the main process."""

    def __init__(self) -> None:
        self.items: List[Tuple[str, str]] = []

    def warn(self, kind: str, message: str) -> None:
        self.items.append((kind, message))


class TrainImages(Dataset):
    """A training list's images (detector or classifier): paths resolved as Darknet opens them, an image that
    cannot be read reported once and replaced by another randomly drawn one, problems handed back from loader
    processes with their batches."""

    def __init__(self, image_paths: Sequence[str], problems: Optional[DataProblems], list_file: Optional[str]):
        self.list_file = list_file
        self.written_paths = list(image_paths)  # as the list writes them (a classifier's labels come from them)
        self.image_paths = [resolve_path(p, list_file) if list_file else p for p in image_paths]
        if not self.image_paths:
            raise DataError(f"{list_file or 'training list'}: the list has no images")
        self.problems = problems if problems is not None else DataProblems()
        self._unreadable: set = set()

    def __len__(self) -> int:
        return len(self.image_paths)

    def read_image(self, index: int, rng: np.random.Generator, problems) -> Tuple[int, np.ndarray]:
        """(index, image): image `index`, or when it cannot be read another one drawn at random."""
        for _ in range(MAX_IMAGE_TRIES):
            if index not in self._unreadable:
                path = self.image_paths[index]
                try:
                    return index, load_image(path)
                except ImageError as error:
                    report_missing_image(problems, path, image_error_reason(error, path))
                    self._unreadable.add(index)
            index = int(rng.integers(len(self)))
        raise DataError(f"{self.list_file or 'training list'}: no readable image in {MAX_IMAGE_TRIES} random draws "
                        f"({len(self._unreadable)} of {len(self)} images failed to load)")

    def __getstate__(self) -> dict:
        # Workers report problems back with their batches; the collector (which may hold an echo function that
        # cannot be pickled) stays in the main process.
        state = dict(self.__dict__)
        state["problems"] = None
        return state


class DetectionTrainSet(TrainImages):
    """A training list as Darknet's detector loader reads it; items are (image, truths, problems).

    `dataset[SampleKey(...)]` gives a float32 tensor (3, h, w) RGB in [0, 1], a truths tensor (max, 5)
    [x, y, w, h, class] padded with zeros (Darknet: a truth with x == 0 ends the list), and the data problems
    met while making it (already recorded in `problems` when not in a loader worker). Unreadable images are
    replaced by other randomly drawn ones and reported; missing/bad label lines are reported and skipped; an
    empty label file is a negative image. Labels are read once per process and kept.
    """

    def __init__(self, image_paths: Sequence[str], config: AugmentConfig, problems: Optional[DataProblems] = None,
                 list_file: Optional[str] = None):
        super().__init__(image_paths, problems, list_file)
        self.config = config
        self._labels: dict = {}

    def __getitem__(self, key: SampleKey) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[str, str]]]:
        if not isinstance(key, SampleKey):
            raise TypeError("index the training set with SampleKey(index, width, height, ...) from IterationSampler")
        log = ProblemLog()
        rng = key.rng()
        pair = key.pair_rng() if self.config.contrastive else None
        image, truths = self.sample(key.index, key.width, key.height, rng, log, pair)
        padded = torch.zeros((self.config.max_boxes, 6 if self.config.track_ids else 5), dtype=torch.float32)
        padded[: len(truths), : truths.shape[1]] = torch.from_numpy(truths)
        return torch.from_numpy(np.ascontiguousarray(image)), padded, hand_over(self, log)

    def sample(self, index: int, net_w: int, net_h: int, rng: np.random.Generator,
               problems: Optional[DataProblems] = None,
               pair: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray]:
        """make_training_sample for image `index` (more images for mosaic/mixup drawn at random, from the pair's
        generator for the two images of a contrastive pair: Darknet gives them the same extra images)."""
        problems = problems if problems is not None else self.problems

        def sources(k: int) -> Source:
            chosen = index if k == 0 else int((pair or rng).integers(len(self)))
            return self.load(chosen, rng, problems)

        return make_training_sample(sources, net_w, net_h, self.config, rng, problems, pair)

    def load(self, index: int, rng: np.random.Generator, problems: Optional[DataProblems] = None) -> Source:
        """Image `index` and its labels; an unreadable image is reported once and another one drawn instead."""
        index, image = self.read_image(index, rng, problems)
        labels_file = label_path(self.image_paths[index])
        return image, self.labels(index, labels_file, problems), labels_file

    def labels(self, index: int, labels_file: str, problems: Optional[DataProblems]) -> np.ndarray:
        if index not in self._labels:
            labels = read_labels(labels_file, self.config.classes, problems)
            if self.config.track_ids:
                labels = np.concatenate([labels, track_ids(labels_file, len(labels))[:, None]], axis=1)
            self._labels[index] = labels
        return self._labels[index]


def hand_over(dataset, log: ProblemLog) -> List[Tuple[str, str]]:
    """In the main process record a sample's problems in `dataset.problems` at once; from a loader worker send
    them back with the batch (TrainBatches records them)."""
    if get_worker_info() is None:
        for kind, message in log.items:
            dataset.problems.warn(kind, message)
        return []
    return log.items


def track_ids(labels_file: str, count: int) -> np.ndarray:
    """read_boxes' track ids: the box's place in its label file plus a hash of the file name (djb2 over C's signed
    chars, in a 64-bit unsigned long), (hash % 4000) * 4000. The same image in one mini-batch (a contrastive
    pair) gives its objects the same ids; below 2^24, they are exact as float truth values."""
    value = 5381
    for byte in os.fsencode(labels_file):
        value = (value * 33 + (byte - 256 if byte > 127 else byte)) % 2 ** 64
    return ((value % 4000) * 4000 + np.arange(count)).astype(np.float32)


def image_error_reason(error: ImageError, path: str) -> str:
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def collate_detections(items: Sequence[Tuple[torch.Tensor, torch.Tensor, List[Tuple[str, str]]]]
                       ) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[str, str]]]:
    """Stack a batch: images (B, 3, h, w), truths (B, max, 5) (a classifier's: (B, classes)), and the problems of
    all its samples."""
    images = torch.stack([item[0] for item in items])
    truths = torch.stack([item[1] for item in items])
    problems = [problem for item in items for problem in item[2]]
    return images, truths, problems


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: one OpenCV/torch thread per worker (workers already run in parallel).

    No global random state needs seeding: every sample seeds its own generator from its SampleKey."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


class TrainBatches:
    """Iterates a DataLoader of collate_detections batches, yielding (images, truths) and recording the problems
    reported by worker processes in `problems` (DataProblems counts each distinct message once)."""

    def __init__(self, loader: DataLoader, problems: DataProblems):
        self.loader, self.problems = loader, problems

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        batches = _without_asynchronous_worker_checks(self.loader)
        while True:
            try:
                images, truths, problems = next(batches)
            except StopIteration:
                return
            except Exception as error:  # a loading process died (RuntimeError, EOFError...) or raised its own error
                raise LoaderFailure(_first_line(error)) from error
            for kind, message in problems:
                self.problems.warn(kind, message)
            yield images, truths


class LoaderFailure(Exception):
    """A batch could not be made: a data-loading process died or raised. The message is one line."""


def _without_asynchronous_worker_checks(loader: DataLoader) -> Iterator:
    """The loader's iterator, with the SIGCHLD handler PyTorch installs (once per process) when it starts its
    first loading processes taken away again: that handler raises about a dead process wherever the main process
    happens to be, inside a snapshot write as well. Without it the death is noticed where the next batch is
    fetched (PyTorch checks its processes when a batch does not come)."""
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        return iter(loader)
    previous = signal.getsignal(signal.SIGCHLD)
    batches = iter(loader)
    signal.signal(signal.SIGCHLD, previous)
    return batches


def _first_line(error: BaseException) -> str:
    """PyTorch passes a loading process's error on with its whole traceback in the message: the first line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def make_train_loader(dataset: DetectionTrainSet, sampler: IterationSampler, num_workers: int = 0,
                      prefetch_factor: int = 2, multiprocessing_context: str = "spawn") -> TrainBatches:
    """Batches of `sampler.batch` images per iteration (Darknet's batch, before subdivisions), loaded by
    `num_workers` processes ahead of the training step as Darknet's loader thread does.

    Workers are started with "spawn" by default: a forked child inherits the parent's locks and thread pools
    (OpenMP, OpenCV, a watchdog thread) in whatever state they were in, which can hang it. Spawning costs a
    second or two per worker, once per run (the sampler is a single pass over all iterations).
    """
    extra = {}
    if num_workers > 0:
        extra = {"prefetch_factor": prefetch_factor, "worker_init_fn": seed_worker,
                 "multiprocessing_context": multiprocessing_context}
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_detections,
                        **extra)
    return TrainBatches(loader, dataset.problems)
