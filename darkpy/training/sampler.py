"""Which images each training iteration uses, and at which network size (src/detector.c train_detector).

Every iteration draws `batch` images uniformly with replacement from the train list (`random_gen() % m`, no
epochs), and every 10 iterations multi-scale training picks a new network size (the last head's `random`).
Randomness comes from numpy Generators seeded by (seed, iteration, slot): a sample depends only on the seed and
its place in training, never on the number of loader workers or on which worker made it, and a resumed run
(start_iteration) draws the same images as an uninterrupted one. With several processes each `rank` draws its own
images, while the sizes are the same in every process.
"""
from __future__ import annotations

import math
from typing import Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
from torch.utils.data import Sampler

from darkpy.data import DataError
from darkpy.training.augment import F32, rand_scale

RANK_SEED_STEP = 7919  # a process's samples are seeded with seed + RANK_SEED_STEP * rank

def multiscale_coef(random: float) -> float:
    """The size factor of [yolo] random: 0 = off, 1 = Darknet's 1.4, any other value is the factor itself."""
    return 0.0 if random == 0 else (1.4 if random == 1 else float(random))


def _round_half_away(value: float) -> int:
    return int(math.floor(value + 0.5)) if value >= 0 else -int(math.floor(-value + 0.5))


def random_size(iteration: int, init_w: int, init_h: int, random: float, resize_step: int = 32, *,
                rng: np.random.Generator, start_iteration: int = 0,
                max_batches: Optional[int] = None) -> Optional[Tuple[int, int]]:
    """train_detector's multi-scale choice, or None when the size does not change at this iteration.

    Every 10 iterations of a run (counted from `start_iteration`): r = rand_scale(coef) and
    dim = round(r*init/resize_step + 1)*resize_step for width and height; a shrinking r that still gives a size
    above the initial one gives the initial size. The first resize of a run (Darknet: avg_loss < 0) and those
    in the last 100 iterations use the largest size round(coef*init/resize_step + 1)*resize_step. `random` is
    the [yolo] value (1 means a factor of 1.4); 0 disables multi-scale.
    """
    coef = multiscale_coef(random)
    if coef == 0 or (iteration - start_iteration) % 10 != 0:
        return None
    scale = F32(rand_scale(rng, coef))
    step = F32(resize_step)
    dim_w = _round_half_away(float(scale * F32(init_w) / step + 1)) * resize_step
    dim_h = _round_half_away(float(scale * F32(init_h) / step + 1)) * resize_step
    if scale < 1 and (dim_w > init_w or dim_h > init_h):
        dim_w, dim_h = init_w, init_h
    if iteration == start_iteration or (max_batches is not None and iteration > max_batches - 100):
        dim_w = _round_half_away(float(F32(coef) * F32(init_w) / step + 1)) * resize_step
        dim_h = _round_half_away(float(F32(coef) * F32(init_h) / step + 1)) * resize_step
    return max(dim_w, resize_step), max(dim_h, resize_step)



class SampleKey(NamedTuple):
    """What the sampler asks the dataset for: an image index, the network size, and where in training the
    sample sits (its random numbers are seeded from seed, iteration and slot)."""

    index: int
    width: int
    height: int
    seed: int = 0
    iteration: int = 0
    slot: int = 0

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([_unsigned(self.seed), self.iteration, self.slot, 2])

    def pair_rng(self) -> np.random.Generator:
        """The generator both images of a contrastive pair (slots 2k and 2k + 1) start from in the same state."""
        return np.random.default_rng([_unsigned(self.seed), self.iteration, self.slot - self.slot % 2, 3])


def _unsigned(seed: int) -> int:
    return int(seed) & 0xFFFFFFFFFFFFFFFF


class IterationSampler(Sampler):
    """A batch sampler: for each training iteration, `batch` keys of images drawn uniformly with replacement
    (train_detector: `random_gen() % m`), all at that iteration's network size (multi-scale when `random`).

    Iterations run from start_iteration to max_batches (exclusive). Use as DataLoader(batch_sampler=...). With
    `world` > 1 processes, process `rank` draws other images than the others (Darknet's -gpus: one loader per
    GPU) at the same sizes.
    """

    def __init__(self, num_images: int, batch: int, width: int, height: int, *, max_batches: int, seed: int = 0,
                 start_iteration: int = 0, random: float = 0.0, resize_step: int = 32, rank: int = 0,
                 world: int = 1, pairs: bool = False):
        if num_images <= 0:
            raise DataError("the training list has no images")
        if batch <= 0:
            raise ValueError(f"batch must be positive, got {batch}")
        self.num_images, self.batch = num_images, batch
        self.width, self.height = width, height
        self.max_batches, self.seed, self.start_iteration = max_batches, seed, start_iteration
        self.random, self.resize_step = random, resize_step
        self.rank, self.world = rank, world
        self.pairs = pairs  # [net] contrastive=1: get_random_paths_custom gives each odd slot its even neighbour's image

    def __len__(self) -> int:
        return max(0, self.max_batches - self.start_iteration)

    def sizes(self) -> Iterator[Tuple[int, int]]:
        """The network size of each iteration, start_iteration first (the same in every process)."""
        size = (self.width, self.height)
        for iteration in range(self.start_iteration, self.max_batches):
            rng = np.random.default_rng([_unsigned(self.seed), iteration, 1])
            size = random_size(iteration, self.width, self.height, self.random, self.resize_step, rng=rng,
                               start_iteration=self.start_iteration, max_batches=self.max_batches) or size
            yield size

    def _image_draws(self, iteration: int) -> np.random.Generator:
        """The generator of an iteration's image indices; one stream per process when there are several."""
        entropy = [_unsigned(self.seed), iteration, 0] + ([self.rank] if self.world > 1 else [])
        return np.random.default_rng(entropy)

    def __iter__(self) -> Iterator[List[SampleKey]]:
        sample_seed = self.seed + RANK_SEED_STEP * self.rank
        for iteration, (width, height) in zip(range(self.start_iteration, self.max_batches), self.sizes()):
            indices = self._image_draws(iteration).integers(0, self.num_images, self.batch)
            if self.pairs:
                indices[1::2] = indices[0::2][: self.batch // 2]
            yield [SampleKey(int(index), width, height, sample_seed, iteration, slot)
                   for slot, index in enumerate(indices)]
