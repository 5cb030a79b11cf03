"""train_detector's set-up (src/detector.c), in one explicit order: processes and device, the network from the
one parsed cfg, the start weights, the settings, the training data, then the loss and the optimizer.

Each step uses only what the steps before it returned; `build_training` returns everything the loop needs.
"""
import ctypes
import dataclasses
import os
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from darkpy.cfg import Section, parse_cfg
from darkpy.data import DataConfig, DataProblems, read_data_config, read_image_list, resolve_path
from darkpy.evaluation.inference import resolve_device
from darkpy.training.classifier import ClassificationTrainSet, ClassifierAugment, ClassifierLoss
from darkpy.training.loss import DarknetLoss
from darkpy.model import Darknet
from darkpy.training.checkpoints import StartWeights, backup_folder, load_start_weights
from darkpy.training.dataset import DetectionTrainSet
from darkpy.training.distributed import Distributed
from darkpy.training.schedule import WeightsEma, build_optimizer
from darkpy.training.settings import (AugmentConfig, TrainError, TrainOptions, TrainSettings, TrainWarning,
                                      unimplemented_options)
from darkpy.training.tasks import (MapEvaluation, Task, TopKEvaluation, classifier_labels, classifier_line,
                                   detector_line)

DEFAULT_TRAIN_LIST = "data/train.txt"  # train_detector's option_find_str default
DEFAULT_CLASSIFIER_TRAIN_LIST = "data/train.list"  # train_classifier's
DEFAULT_CLASSIFIER_CLASSES = 2  # train_classifier: option_find_int(options, "classes", 2)
MAX_LOADER_WORKERS = 6  # Darknet runs 6 loader threads per GPU
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@dataclass
class TrainingSetup:
    """Everything the training loop works with, each piece made once."""

    device: torch.device
    memory_format: torch.memory_format  # of the model and its input batches
    workers: int  # loader processes
    threads_before: Optional[int]  # torch's CPU threads before training changed them (restored at the end)
    seed: int
    model: Darknet
    frozen_layers: int  # layers up to the last stopbackward=1: not trained
    start: StartWeights
    start_iteration: int
    settings: TrainSettings
    backup: Path
    task: Task
    train_set: Dataset
    save_every: int  # .data saveweights: <cfg>_N.weights
    save_last_every: int  # .data savelast: <cfg>_last.weights
    loss: object  # the task's loss: DarknetLoss or ClassifierLoss
    optimizer: torch.optim.Optimizer
    ema: Optional[WeightsEma]
    amp: bool
    scaler: torch.amp.GradScaler


def build_training(options: TrainOptions, dist: Distributed, say: Callable[[str], None],
                   echo: Optional[Callable[[str], None]]) -> TrainingSetup:
    """The set-up, in order; `say` prints Darknet's lines, `echo` reports data problems as they are met."""
    dist.start(options.device)
    device = _training_device(options.device, dist)
    workers, threads_before = _workers_and_threads(options, device, dist.world)
    if device.type == "cpu":
        keep_freed_memory()
    seed = dist.agreed_seed(options.seed, random.SystemRandom().randrange(2 ** 31))
    torch.manual_seed(seed)  # Darknet's random initialisation draws from here
    sections = parse_cfg(options.cfg)
    model, frozen_layers = _build_model(sections, options, device, dist.main)
    memory_format = training_memory_format(device)
    model.to(memory_format=memory_format)
    data = read_data_config(options.data)
    backup = backup_folder(data)
    start = load_start_weights(model, options, backup)
    dist.broadcast_model(model)
    net = sections[0]
    problems = DataProblems(echo=echo if dist.main else None)
    if options.task == "classifier":
        classes = data.get_positive_int("classes", DEFAULT_CLASSIFIER_CLASSES)
        settings = TrainSettings.read(net, ClassifierAugment.from_net(net, classes, model.width, model.height),
                                      options, dist.world)
        task = _classifier_task(data, settings, backup, model, options, dist.main, say, problems)
    else:
        augment = AugmentConfig.from_net_and_head(net, model.heads[-1])
        if model.contrastive_layers():  # its loss pairs objects by read_boxes' track ids
            augment = dataclasses.replace(augment, track_ids=True)
        settings = TrainSettings.read(net, augment, options, dist.world)
        task = _detector_task(data, settings, backup, model, options, dist.main, say, problems)
    _warn_unimplemented(net, model, settings, dist.main)
    optimizer = build_optimizer(model.layers, settings.optimizer)
    ema = WeightsEma(model.layers, settings.ema_alpha, settings.max_batches) if settings.ema_alpha else None
    amp = bool(device.type == "cuda" if options.amp is None else options.amp)
    if amp and device.type != "cuda":
        raise TrainError("--amp needs a CUDA device (mixed precision on the CPU is slower and not supported)")
    return TrainingSetup(
        device=device, memory_format=memory_format, workers=workers, threads_before=threads_before, seed=seed,
        model=model, frozen_layers=frozen_layers, start=start,
        start_iteration=start.seen // settings.images_per_iteration, settings=settings, backup=backup, task=task,
        train_set=task.train_set,
        save_every=data.get_positive_int("saveweights", task.save_every),
        save_last_every=data.get_positive_int("savelast", 100),
        loss=task.loss, optimizer=optimizer, ema=ema, amp=amp, scaler=torch.amp.GradScaler("cuda", enabled=amp))


def _training_device(requested: str, dist: Distributed) -> torch.device:
    resolved = resolve_device(dist.device_name(requested))
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    return resolved


def training_memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on the CPU: oneDNN's convolutions and torch's max-pool and batch norm then work on NHWC
    tensors without reordering them at every layer, which takes a third off a training iteration (docs/train.md).
    Training batch norm keeps float32-exact statistics in that layout (conv.ChannelsLastTrainingBatchNorm). CUDA
    keeps cuDNN's usual NCHW (not measured here)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def keep_freed_memory() -> None:
    """glibc gives every freed block over 32 MB back to the system and maps it again at the next allocation, so
    the activations of a large batch (16x16x224x224 floats: 51 MB) page-fault afresh at every iteration: about
    a quarter of a shapes-prn iteration on the CPU. Serving all blocks from the heap and keeping freed memory
    there (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB) reuses the same pages; the process keeps its peak memory
    instead of returning it between iterations. Nothing changes where the C library is not glibc or when the
    user set glibc's MALLOC_MMAP_MAX_ or MALLOC_TRIM_THRESHOLD_."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_MAX_" in os.environ \
            or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        return


def _workers_and_threads(options: TrainOptions, device: torch.device, processes: int) -> Tuple[int, Optional[int]]:
    """Loader processes (Darknet uses 6 loader threads per GPU) and, on the CPU, torch threads; returns the
    workers and the thread count before (None when unchanged).

    On the CPU the network work dominates (augmenting an image costs a few percent of training on it), so one
    loader process overlaps it and torch keeps every core; --threads/--workers override both."""
    cores = os.cpu_count() or 1
    workers = options.workers
    if workers is None:
        workers = max(0, min(MAX_LOADER_WORKERS, cores - 1)) if device.type == "cuda" else min(1, cores - 1)
    if workers < 0:
        raise TrainError(f"--workers must be 0 or more (got {workers})")
    if device.type != "cpu":
        return workers, None
    threads_before = torch.get_num_threads()
    torch.set_num_threads(options.threads or max(1, cores // processes))
    return workers, threads_before


def _build_model(sections: List[Section], options: TrainOptions, device: torch.device,
                 main: bool) -> Tuple[Darknet, int]:
    """The network in training mode on `device`, and how many of its first layers are frozen."""
    with warnings.catch_warnings():
        if not main:  # the cfg's warnings once, from the main process
            warnings.simplefilter("ignore")
        model = Darknet(sections, width=options.width, height=options.height)
    if options.task == "detector" and not model.heads:
        raise TrainError(f"{options.cfg}: the cfg has no [yolo] or [region] layer; to train a classifier use "
                         f"`darkpy classifier train DATA CFG`")
    if options.task == "classifier" and model.heads:
        raise TrainError(f"{options.cfg}: the cfg has detection layers; train it with `darkpy train`")
    recurrent = (model.recurrent_layers() or [None])[0]
    if recurrent is not None:  # Darknet trains them on sequences of video frames (track=1, time_steps)
        raise TrainError(f"{recurrent.section.file}:{recurrent.section.line}: [{recurrent.section.written_type}] "
                         f"darkpy runs recurrent layers but does not train them (Darknet trains them on sequences "
                         f"of video frames: [net] track=1, time_steps)")
    frozen_layers = _freeze_before_stopbackward(model)
    model.to(device)
    model.train()
    return model, frozen_layers


def _freeze_before_stopbackward(model: Darknet) -> int:
    """stopbackward=1: backward_network stops at the last such layer, so it and every layer before it get no
    gradient (parse_network_cfg_custom also builds those before it with train=0): they are not trained."""
    stops = [layer.index for layer in model.layers if getattr(layer, "stopbackward", 0) == 1]
    frozen = max(stops) + 1 if stops else 0
    for layer in list(model.layers)[:frozen]:
        for p in layer.parameters():
            p.requires_grad_(False)
    return frozen


def _detector_task(data: DataConfig, settings: TrainSettings, backup: Path, model: Darknet, options: TrainOptions,
                   main: bool, say: Callable[[str], None], problems: DataProblems) -> Task:
    classes = int(model.heads[-1].classes)
    if data.classes is not None and data.classes != classes:
        say(f" warning: {data.where('classes')}: classes={data.classes}, but the cfg's last layer has "
            f"classes={classes}; the labels are checked against the cfg's, as Darknet does")
    train_list, paths = _read_train_list(data, backup, main, say, DEFAULT_TRAIN_LIST)
    return Task("detector", DetectionTrainSet(paths, settings.augment, problems, list_file=train_list),
                DarknetLoss(model.heads, warn=main, contrastive=model.contrastive_layers()),
                MapEvaluation(options.data, problems),
                10000 if settings.max_batches >= 10000 else 1000, detector_line)


def _classifier_task(data: DataConfig, settings: TrainSettings, backup: Path, model: Darknet,
                     options: TrainOptions, main: bool, say: Callable[[str], None], problems: DataProblems) -> Task:
    """train_classifier's data: labels= names, the train list (default data/train.list), top-k on valid=."""
    classes = settings.augment.classes
    loss = ClassifierLoss(model.layers, classes)
    labels = classifier_labels(data, classes)
    train_list, paths = _read_train_list(data, backup, main, say, DEFAULT_CLASSIFIER_TRAIN_LIST)
    train_set = ClassificationTrainSet(paths, labels, settings.augment, problems, list_file=train_list)
    evaluation = TopKEvaluation(data, labels, classes) if options.calc_map else None
    return Task("classifier", train_set, loss, evaluation, 1000, classifier_line)


def _read_train_list(data: DataConfig, backup: Path, main: bool, say: Callable[[str], None],
                     default_list: str) -> Tuple[str, List[str]]:
    """The .data file's train list (its path and image paths); creates the backup folder."""
    train_value = data.options.get("train", default_list)
    train_list = resolve_path(train_value, data.path)
    if not os.path.exists(train_list):
        where = data.where("train") if "train" in data.options else data.path
        raise TrainError(f"{where}: the train list {train_value!r} does not exist")
    paths = read_image_list(train_list)
    if not paths:
        raise TrainError(f"{train_list}: the train list has no images")
    if main and not backup.is_dir():
        try:
            backup.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a file of that name, or a read-only parent
            where = data.where("backup") if "backup" in data.options else data.path
            raise TrainError(f"{where}: the backup folder {backup} cannot be made: "
                             f"{'a file has that name' if backup.exists() else error.strerror}") from None
        say(f" created the backup folder {backup}")
    return train_list, paths


def _warn_unimplemented(net: Section, model: Darknet, settings: TrainSettings, main: bool) -> None:
    """One warning naming every option that would make Darknet train differently from darkpy."""
    items = unimplemented_options(net, model.layers, settings.optimizer.adam)
    if items and main:
        warnings.warn("darkpy trains without these options:\n  " + "\n  ".join(items), TrainWarning, stacklevel=3)
