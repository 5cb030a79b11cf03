"""Training: Darknet's `detector train` (src/detector.c train_detector) on PyTorch.

`settings` (from the one parsed [net]), `augment` (pure pixel / geometry / mosaic operations), `sampler` (which
images each iteration uses, rank-aware, multi-scale sizes), `dataset` (the Dataset and its loader), `schedule`
(learning-rate policies, optimizer, EMA), `chart`, `checkpoints` (start weights and snapshots), `distributed`,
`build` (the set-up, in order) and `trainer` (the loop). The data pipeline's names are re-exported here.
"""
from darkpy.training.augment import (CropWindow, TileDraw, add_gaussian_noise, adjust_hsv, augment_tile,
                                     blur_image, crop_and_resize, crop_window, draw_tile, make_mosaic,
                                     make_training_sample, mosaic_shifts, mosaic_truths, paste_mosaic_tile,
                                     place_truths)
from darkpy.training.dataset import (DetectionTrainSet, TrainBatches, collate_detections, make_train_loader,
                                     seed_worker)
from darkpy.training.sampler import IterationSampler, SampleKey, multiscale_coef, random_size
from darkpy.training.settings import AugmentConfig

__all__ = [
    "AugmentConfig", "TileDraw", "CropWindow", "draw_tile", "crop_window", "place_truths", "crop_and_resize",
    "adjust_hsv", "blur_image", "add_gaussian_noise", "augment_tile", "mosaic_shifts", "paste_mosaic_tile",
    "mosaic_truths", "make_mosaic", "make_training_sample", "multiscale_coef", "random_size", "SampleKey",
    "IterationSampler", "DetectionTrainSet", "collate_detections", "seed_worker", "TrainBatches",
    "make_train_loader",
]
