"""`darkpy train`: Darknet's `detector train` (src/detector.c train_detector, src/network.c train_network).

One iteration = `batch` images drawn with replacement from the train list, fed as `subdivisions` mini-batches whose
gradients are summed, then one update (darkpy.schedule) at the learning rate of the iteration number; training
stops at `max_batches`. The loss is Darknet's (darkpy.loss). `seen` in the weights header is iteration*batch, so a
loaded snapshot continues its iteration count and learning-rate schedule (`--clear` restarts at 0). Snapshots go to
the .data `backup` folder under Darknet's names: `<cfg>_last.weights` every `savelast` (100) iterations,
`<cfg>_<N>.weights` every `saveweights` (1000, or 10000 when max_batches >= 10000), `<cfg>_best.weights` with
--map, `<cfg>_final.weights` at the end; each is written to a temporary file and renamed. Ctrl-C saves
`_last` and stops. Multi-scale training follows the last [yolo]'s `random` (a new size every 10 iterations).

Several processes (`torchrun --nproc_per_node N -m darkpy train ...`) act like Darknet's `-gpus`: each process
trains `batch` images per iteration and the gradients are summed, which equals Darknet's N nets with
learning_rate*N whose weights are averaged, so keep the cfg's learning_rate.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import re
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from darkpy.cfg import CfgError, parse_cfg
from darkpy.data import DataConfig, DataError, DataProblems, read_data_config, read_image_list, resolve_path
from darkpy.loss import DarknetLoss, LossError, format_head_line
from darkpy.schedule import (LearningRatePolicy, OptimizerSettings, ScheduleError, WeightsEma, build_optimizer,
                             set_learning_rate)
from darkpy.weights import WeightsError

DEFAULT_TRAIN_LIST = "data/train.txt"  # train_detector's option_find_str default
DEFAULT_BACKUP = "/backup/"
SNAPSHOT_NAME = re.compile(r"_(last|final|best|ema|\d+)\.weights$")

# [net] keys that change Darknet's detector training but that darkpy does not implement.
NET_NOT_IMPLEMENTED = {
    "try_fix_nan": "NaN repair", "weights_reject_freq": "similar-weights rejection",
    "equidistant_point": "equidistant-point delta rejection",
    "badlabels_rejection_percentage": "bad-label rejection", "num_sigmas_reject_badlabels": "bad-label rejection",
    "dynamic_minibatch": "mini-batch resizing with multi-scale", "adversarial_lr": "adversarial training",
    "contrastive": "contrastive loss", "unsupervised": "unsupervised contrastive training",
    "track": "video tracking training", "sequential_subdivisions": "sequential subdivisions (tracking)",
    "attention": "attention training", "seq_scales": "sequence scales (tracking)",
}
# [net] keys that only tune Darknet's GPU memory or speed: no effect on the result.
NET_NO_EFFECT = ("use_cuda_graph", "optimized_memory", "workspace_size_limit_MB", "loss_scale")
# per-layer keys of Darknet's GPU update path that darkpy does not implement
LAYER_NOT_IMPLEMENTED = ("onlyforward", "dont_update", "burnin_update", "train_only_bn", "clip")


class TrainError(Exception):
    """A problem that stops training before it starts (bad arguments, files, or weights), with a clear message."""


class TrainWarning(UserWarning):
    """An option darkpy reads but does not implement for training."""


# ---------------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="darknet .data file (train, valid, names, backup)")
    parser.add_argument("--cfg", required=True, help="network .cfg")
    parser.add_argument("--weights", help="initial weights: a full .weights (continues its iteration count), a "
                                           "partial backbone *.conv.N, or none for Darknet's random initialisation")
    parser.add_argument("--clear", action="store_true", help="reset the iteration count (seen) of the weights to 0")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <backup>/<cfg>_last.weights (or --weights) at its iteration")
    parser.add_argument("--max-batches", type=int, help="override [net] max_batches")
    parser.add_argument("--batch", type=int, help="override [net] batch (images per iteration)")
    parser.add_argument("--subdivisions", type=int, help="override [net] subdivisions")
    parser.add_argument("--width", type=int, help="override [net] width")
    parser.add_argument("--height", type=int, help="override [net] height")
    parser.add_argument("--learning-rate", type=float, help="override [net] learning_rate")
    parser.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loading processes (default: 1 on the CPU, min(6, CPU count - 1) with CUDA; "
                             "0 loads in the training process)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU training: torch threads (default: one per core)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument("--map", action="store_true",
                        help="compute mAP@0.5 on the valid list during training (Darknet's -map) and keep "
                             "<cfg>_best.weights")
    parser.add_argument("--map-epochs", type=int, default=4,
                        help="with --map: compute it every this many epochs of the train list, at least every "
                             "100 iterations (Darknet's -mAP_epochs, default 4)")
    parser.add_argument("--amp", dest="amp", action="store_true", default=None,
                        help="mixed precision (default: on with CUDA)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true",
                        help="also print Darknet's per-layer loss lines for every mini-batch")


def run(args: argparse.Namespace) -> int:
    """`darkpy train`: 0 when max_batches is reached, 130 after Ctrl-C (with _last saved), 1 on bad input."""
    try:
        trainer = Trainer(TrainOptions.from_args(args))
    except (TrainError, CfgError, DataError, WeightsError, LossError, ScheduleError, OSError, ValueError) as error:
        print(f"darkpy train: error: {error}", file=sys.stderr)
        return 1
    try:
        return trainer.train()
    except (DataError, WeightsError, OSError) as error:
        print(f"darkpy train: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndarkpy train: interrupted twice: stopped without saving", file=sys.stderr)
        return 130
    finally:
        trainer.close()


# ---------------------------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class TrainOptions:
    """What `darkpy train` was asked to do (command line), before the cfg is read."""

    data: str
    cfg: str
    weights: Optional[str] = None
    clear: bool = False
    resume: bool = False
    max_batches: Optional[int] = None
    batch: Optional[int] = None
    subdivisions: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    learning_rate: Optional[float] = None
    device: str = "auto"
    workers: Optional[int] = None
    threads: Optional[int] = None
    seed: Optional[int] = None
    calc_map: bool = False
    map_epochs: int = 4
    amp: Optional[bool] = None
    progress: bool = True
    verbose: bool = False
    out: Optional[object] = None  # stream for Darknet's lines (default sys.stdout)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainOptions":
        return cls(data=args.data, cfg=args.cfg, weights=args.weights, clear=args.clear, resume=args.resume,
                   max_batches=args.max_batches, batch=args.batch, subdivisions=args.subdivisions,
                   width=args.width, height=args.height, learning_rate=args.learning_rate, device=args.device,
                   workers=args.workers, threads=args.threads, seed=args.seed, calc_map=args.map,
                   map_epochs=args.map_epochs,
                   amp=args.amp, progress=not args.no_progress, verbose=args.verbose)


def basecfg(cfg_path: str) -> str:
    """Darknet's basecfg: the file name up to its first '.' (yolov3-tiny.cfg -> yolov3-tiny)."""
    name = re.split(r"[\\/]", str(cfg_path))[-1]
    return name.split(".", 1)[0]


def _positive(value: int, what: str) -> int:
    if value is None or value < 1:
        raise TrainError(f"{what} must be a positive integer (got {value})")
    return int(value)


@dataclass
class Distributed:
    """torchrun's environment: rank, world size, local rank."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Distributed":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------------------------------------------------------------
# models at other input sizes (multi-scale) sharing one set of parameters
# ---------------------------------------------------------------------------------------------------------------------

class SizedModels:
    """Darknet's resize_network: the network at each multi-scale size, all sharing the base model's weights."""

    def __init__(self, base):
        self.base = base
        self.models = {(base.width, base.height): base}

    def at(self, width: int, height: int):
        key = (width, height)
        if key not in self.models:
            self.models[key] = self.base.resized(width, height)
        model = self.models[key]
        model.train(self.base.training)
        return model


# ---------------------------------------------------------------------------------------------------------------------
# loss chart (Darknet's chart.png, drawn with OpenCV)
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class Chart:
    """Darknet's training chart: avg loss (blue dots) and mAP (red line) against iterations, 1000x1000."""

    max_batches: int
    max_loss: float = 20.0
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
        import cv2

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
            cv2.putText(img, "mAP%", (hi - 60, lo - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 2)
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
        import cv2

        img = self.draw(footer)
        for path in paths:
            tmp = path.with_name(path.name + ".tmp.png")
            cv2.imwrite(str(tmp), img)
            os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class RunState:
    """train_detector's loop variables."""

    iteration: int
    iter_save: int
    iter_save_last: int
    iter_map: int
    avg_loss: float = -1.0
    avg_time: float = -1.0
    best_map: float = -1.0
    last_map: float = -1.0
    warned_divergence: bool = False

    @classmethod
    def starting_at(cls, iteration: int) -> "RunState":
        return cls(iteration, iteration, iteration, iteration)


class Trainer:
    """Darknet's train_detector loop; construct with TrainOptions, then train()."""

    def __init__(self, options: TrainOptions):
        self.options = options
        self.out = options.out or sys.stdout
        self.dist = Distributed.from_env()
        self._stop = False
        self._old_sigint = None
        self._map_dataset = None
        self._threads_before = None
        self.final_iteration: Optional[int] = None
        self.best_map = self.last_map = -1.0
        self._setup_distributed()
        self.device = self._device()
        self.workers = self._workers_and_threads()
        self._build_model()
        self._load_weights()
        self._broadcast_weights()
        self._read_settings()
        self._read_data()
        self._warn_unimplemented()
        self.loss = DarknetLoss(self.model.heads, warn=self.dist.main)
        self.optimizer = build_optimizer(self.model.layers, self.opt_settings)
        self.ema = WeightsEma(self.model.layers, self.ema_alpha, self.max_batches) if self.ema_alpha else None
        self.amp = bool(self.device.type == "cuda" if options.amp is None else options.amp)
        if self.amp and self.device.type != "cuda":
            raise TrainError("--amp needs a CUDA device (mixed precision on the CPU is slower and not supported)")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.sized = SizedModels(self.model)

    # ---- setup ------------------------------------------------------------------------------------------------
    def _setup_distributed(self) -> None:
        if self.dist.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and self.options.device != "cpu" else "gloo"
            torch.distributed.init_process_group(backend)

    def _device(self) -> torch.device:
        from darkpy.inference import resolve_device

        device = self.options.device
        if self.dist.enabled and torch.cuda.is_available() and device in ("auto", "cuda"):
            device = f"cuda:{self.dist.local_rank}"
        resolved = resolve_device(device)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        return resolved

    def _workers_and_threads(self) -> int:
        """Loader processes (Darknet uses 6 loader threads per GPU) and, on the CPU, torch threads.

        On the CPU the network work dominates (augmenting an image costs a few percent of training on it), so one
        loader process overlaps it and torch keeps every core; --threads/--workers override both."""
        cores = os.cpu_count() or 1
        workers = self.options.workers
        if workers is None:
            workers = max(0, min(6, cores - 1)) if self.device.type == "cuda" else min(1, cores - 1)
        if workers < 0:
            raise TrainError(f"--workers must be 0 or more (got {workers})")
        if self.device.type == "cpu":
            threads = self.options.threads or max(1, cores // self.dist.world)
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)
        return workers

    def _build_model(self) -> None:
        from darkpy.model import Darknet

        opts = self.options
        if opts.seed is None:
            opts.seed = random.SystemRandom().randrange(2 ** 31)
            if self.dist.enabled:  # every process must use rank 0's seed
                seed = torch.tensor([opts.seed if self.dist.main else 0], dtype=torch.int64)
                torch.distributed.broadcast(seed, 0)
                opts.seed = int(seed.item())
        torch.manual_seed(opts.seed)  # Darknet's random initialisation draws from here
        self.sections = parse_cfg(opts.cfg)
        with warnings.catch_warnings():
            if not self.dist.main:
                warnings.simplefilter("ignore")
            self.model = Darknet.from_cfg(opts.cfg, width=opts.width, height=opts.height)
        if not self.model.heads:
            raise TrainError(f"{opts.cfg}: the cfg has no [yolo] or [region] layer; darkpy trains detectors only")
        self._freeze_before_stopbackward()
        self.model.to(self.device)
        self.model.train()

    def _freeze_before_stopbackward(self) -> None:
        """stopbackward=1: backward_network stops at the last such layer, so it and every layer before it get no
        gradient (parse_network_cfg_custom also builds those before it with train=0): they are not trained."""
        stops = [layer.index for layer in self.model.layers if getattr(layer, "stopbackward", 0) == 1]
        self.frozen_layers = max(stops) + 1 if stops else 0
        for layer in list(self.model.layers)[:self.frozen_layers]:
            for p in layer.parameters():
                p.requires_grad_(False)

    def _load_weights(self) -> None:
        opts = self.options
        self.cfg_base = basecfg(opts.cfg)
        path = opts.weights
        if opts.resume and opts.clear:
            raise TrainError("--resume continues the iteration count and --clear resets it: use one of them")
        if opts.resume and path is None:
            path = str(self._backup_dir_from_data() / f"{self.cfg_base}_last.weights")
            if not os.path.exists(path):
                raise TrainError(f"--resume: {path} does not exist (no snapshot of {opts.cfg} in the backup folder "
                                 f"yet); start without --resume")
        self.weights_path = path
        self.start_seen = 0
        self.load_report = None
        if path is None:
            return
        report = self.model.load_weights(path)
        self.load_report = report
        is_snapshot = opts.resume or bool(SNAPSHOT_NAME.search(os.path.basename(path)))
        if not report.complete and is_snapshot:
            raise TrainError(
                f"{path}: the snapshot is truncated: it holds {report.layers_loaded} of the "
                f"{report.layers_with_weights} layers with weights of {opts.cfg} ({report.floats} floats). "
                f"A snapshot written by darkpy or Darknet holds them all; use an earlier snapshot")
        self._check_finite(path)
        self.start_seen = 0 if opts.clear else int(report.header.seen)

    def _broadcast_weights(self) -> None:
        """All processes start from rank 0's weights and statistics."""
        if not self.dist.enabled:
            return
        with torch.no_grad():
            for tensor in list(self.model.parameters()) + list(self.model.buffers()):
                torch.distributed.broadcast(tensor.data, 0)

    def _check_finite(self, path: str) -> None:
        for layer in self.model.layers:
            for tensor in layer.darknet_arrays():
                if not torch.isfinite(tensor).all():
                    raise TrainError(f"{path}: layer {layer.index} ([{layer.type}]) holds NaN or infinite values: "
                                     f"the file is corrupt (or training diverged when it was written)")

    def _read_settings(self) -> None:
        opts, net = self.options, self.model.net_section
        self.batch = _positive(opts.batch if opts.batch is not None else net.get_int("batch", 1), "batch")
        self.subdivisions = _positive(opts.subdivisions if opts.subdivisions is not None
                                      else net.get_int("subdivisions", 1), "subdivisions")
        self.mini_batch = self.batch // self.subdivisions
        if self.mini_batch < 1:
            raise TrainError(f"batch={self.batch} is smaller than subdivisions={self.subdivisions}: each mini-batch "
                             f"would have batch/subdivisions = 0 images")
        self.images_per_iteration = self.mini_batch * self.subdivisions  # Darknet's net.batch*net.subdivisions
        if self.images_per_iteration == 1:
            raise TrainError("batch=1: Darknet refuses to train with one image per iteration (\"You set incorrect "
                             "value batch=1 for Training!\"); use e.g. batch=64 subdivisions=16")
        self.max_batches = (opts.max_batches if opts.max_batches is not None
                            else net.get_int("max_batches", 0))
        if self.max_batches < 1:
            raise TrainError(f"{opts.cfg}: [net] max_batches is {self.max_batches}: set it (or --max-batches)")
        self.policy = LearningRatePolicy.from_net(net, opts.learning_rate, self.max_batches)
        self.opt_settings = OptimizerSettings.from_net(net, self.images_per_iteration)
        self.cfg_decay = self.opt_settings.decay
        if self.dist.enabled:  # summed gradients over N processes: decay as Darknet's N averaged nets apply it
            self.opt_settings.decay *= self.dist.world
        self.ema_alpha = net.get_float("ema_alpha", 0.0)
        self.start_iteration = self.start_seen // self.images_per_iteration
        self.max_chart_loss = net.get_float("max_chart_loss", 20.0)

    def _backup_dir_from_data(self) -> Path:
        config = read_data_config(self.options.data)
        value = config.options.get("backup", DEFAULT_BACKUP)
        return Path(resolve_path(value, config.path))

    def _read_data(self) -> None:
        from darkpy.augment import AugmentConfig, DetectionTrainSet

        opts = self.options
        self.data: DataConfig = read_data_config(opts.data)
        train_value = self.data.options.get("train", DEFAULT_TRAIN_LIST)
        self.train_list = resolve_path(train_value, self.data.path)
        if not os.path.exists(self.train_list):
            where = self.data.where("train") if "train" in self.data.options else self.data.path
            raise TrainError(f"{where}: the train list {train_value!r} does not exist")
        paths = read_image_list(self.train_list)
        if not paths:
            raise TrainError(f"{self.train_list}: the train list has no images")
        self.backup = self._backup_dir_from_data()
        if self.dist.main and not self.backup.is_dir():
            self.backup.mkdir(parents=True, exist_ok=True)
            self._print(f" created the backup folder {self.backup}")
        classes = int(self.model.heads[-1].classes)
        if self.data.classes is not None and self.data.classes != classes:
            self._print(f" warning: {self.data.where('classes')}: classes={self.data.classes}, but the cfg's last "
                        f"layer has classes={classes}; the labels are checked against the cfg's, as Darknet does")
        self.augment = AugmentConfig.from_sections(self.sections)
        if opts.width or opts.height:
            pass  # the network size comes from the model; AugmentConfig holds no size
        echo = self._echo if self.dist.main else None
        self.problems = DataProblems(echo=echo)
        self.train_set = DetectionTrainSet(paths, self.augment, self.problems, list_file=self.train_list)
        opts_data = self.data.options
        self.save_every = int(opts_data.get("saveweights", 10000 if self.max_batches >= 10000 else 1000))
        self.save_last_every = int(opts_data.get("savelast", 100))

    def _warn_unimplemented(self) -> None:
        """One warning naming every option that would make Darknet train differently from darkpy."""
        net = self.sections[0]
        items = []
        for key, what in NET_NOT_IMPLEMENTED.items():
            if net.has(key) and str(net.raw(key)).strip() not in ("0", "0.0", ""):
                items.append(f"{net.file}:{net.options[key].line}: [net] {key}={net.raw(key)} ({what})")
        for key in NET_NO_EFFECT:
            if net.has(key):
                items.append(f"{net.file}:{net.options[key].line}: [net] {key}={net.raw(key)} (Darknet GPU memory/"
                             "speed setting, no effect in darkpy)")
        if net.has("time_steps") and net.get_int("time_steps", 1) != 1:
            items.append(f"{net.file}:{net.options['time_steps'].line}: [net] time_steps (recurrent training)")
        for layer in self.model.layers:
            section = layer.section
            for key in LAYER_NOT_IMPLEMENTED:
                if section.has(key) and str(section.raw(key)).strip() not in ("0", "0.0", ""):
                    items.append(f"{section.file}:{section.options[key].line}: [{section.written_type}] {key}="
                                 f"{section.raw(key)} (Darknet GPU update option)")
            if getattr(layer, "stopbackward", 0) > 1:
                items.append(f"{section.file}:{section.options['stopbackward'].line}: [{section.written_type}] "
                             f"stopbackward={layer.stopbackward} (Darknet GPU: frozen until that iteration); darkpy "
                             "does not freeze")
        if self.opt_settings.adam:
            items.append(f"{net.file}: [net] adam=1 follows Darknet's GPU Adam (its CPU build ignores adam)")
        if items and self.dist.main:
            warnings.warn("darkpy trains without these options:\n  " + "\n  ".join(items), TrainWarning,
                          stacklevel=2)

    # ---- output -----------------------------------------------------------------------------------------------
    def _echo(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)

    def _print(self, text: str) -> None:
        if not self.dist.main:
            return
        from tqdm import tqdm

        tqdm.write(text, file=self.out)

    # ---- snapshots --------------------------------------------------------------------------------------------
    def snapshot_path(self, suffix: str) -> Path:
        return self.backup / f"{self.cfg_base}_{suffix}.weights"

    def save(self, suffix: str, iteration: int) -> Path:
        """Darknet's save_weights: seen = iteration * batch (images per iteration of one process)."""
        path = self.snapshot_path(suffix)
        if self.dist.main:
            self.model.save_weights(path, seen=iteration * self.images_per_iteration)
            self._print(f"Saving weights to {path}")
        return path

    def save_ema(self, iteration: int) -> None:
        if self.ema is None or not self.ema.initialized or not self.dist.main:
            return
        path = self.snapshot_path("ema")
        with self.ema.swapped_in():
            self.model.save_weights(path, seen=iteration * self.images_per_iteration)
        self._print(f" EMA weights are saved to the file: {path} ")

    # ---- data -------------------------------------------------------------------------------------------------
    def _loader(self):
        from darkpy.augment import IterationSampler, make_train_loader

        workers = self.workers
        last = self.model.heads[-1]
        random_factor = float(last.options.get("random", 0.0) or 0.0)
        seed = self.options.seed
        sampler_cls = IterationSampler if not self.dist.enabled else _rank_sampler(self.dist.rank)
        sampler = sampler_cls(len(self.train_set), self.images_per_iteration, self.model.width, self.model.height,
                              max_batches=self.max_batches, seed=seed, start_iteration=self.start_iteration,
                              random=random_factor, resize_step=self.augment.resize_step)
        return make_train_loader(self.train_set, sampler, num_workers=workers)

    # ---- one iteration ----------------------------------------------------------------------------------------
    def train_iteration(self, images: torch.Tensor, truths: torch.Tensor, iteration: int) -> float:
        """train_network: subdivisions forward/backward passes, then one update; returns Darknet's loss."""
        height, width = images.shape[-2:]
        model = self.sized.at(width, height)
        self.optimizer.zero_grad(set_to_none=True)
        cost_sum = 0.0
        seen = iteration * self.images_per_iteration
        mb = self.mini_batch
        for s in range(self.subdivisions):
            x = images[s * mb:(s + 1) * mb].to(self.device, non_blocking=True)
            t = truths[s * mb:(s + 1) * mb]
            seen += mb  # train_network_datum: seen grows before the forward pass
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                raw = model(x)
            result = self.loss(raw, t, width, height, seen)
            self.scaler.scale(result.surrogate).backward()
            cost_sum += result.cost
            if self.options.verbose:
                for head, opt, stats in zip(self.model.heads, self.loss.options, result.heads):
                    self._print(format_head_line(opt, stats, head.index))
        if self.dist.enabled:
            self._all_reduce_gradients()
            total = torch.tensor([cost_sum], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(total)  # train_networks: the mean of the processes' losses
            cost_sum = float(total.item()) / self.dist.world
        number = iteration + 1  # Darknet's cur_iteration is incremented before update_network
        rate = self.policy.rate(number)
        set_learning_rate(self.optimizer, rate, self.opt_settings, number)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.dist.enabled and number % 4 == 0:
            self._average_buffers()  # Darknet's sync_nets every 4 iterations (rolling BN statistics)
        if self.ema is not None:
            message = self.ema.after_update(number)
            if message and self.options.verbose:
                self._print(f" {message} ")
        return cost_sum / (self.subdivisions * mb)

    def _all_reduce_gradients(self) -> None:
        for p in self.model.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)

    def _average_buffers(self) -> None:
        for b in self.model.buffers():
            if b.dtype.is_floating_point:
                torch.distributed.all_reduce(b)
                b.div_(self.dist.world)

    # ---- mAP --------------------------------------------------------------------------------------------------
    def compute_map(self) -> float:
        """validate_detector_map on the valid list at the initial network size (AUC, IoU .5)."""
        from darkpy.evaluate import add_to_accumulator, iterate_detections, load_map_dataset
        from darkpy.inference import Detector
        from darkpy.metrics import MapAccumulator

        dataset = self._map_dataset or load_map_dataset(self.options.data)
        self._map_dataset = dataset
        detector = Detector(self.model, self.device, letter_box=self.model.letter_box)
        classes = int(self.model.heads[-1].classes)
        accumulator = MapAccumulator(classes, 0.5, 0.25)
        for item in iterate_detections(detector, dataset.image_paths, 8, self.problems, progress=False):
            add_to_accumulator(accumulator, item, dataset, classes, self.problems)
        self.model.train()
        return float(accumulator.result(0).mean_ap)

    # ---- the loop ---------------------------------------------------------------------------------------------
    def _install_sigint(self) -> None:
        def handler(signum, frame):
            if self._stop:  # a second Ctrl-C: stop at once
                raise KeyboardInterrupt
            self._stop = True
            if self.dist.main:
                sys.stderr.write("\n Ctrl-C: saving the last weights after this iteration (press again to quit "
                                 "without saving)\n")

        try:
            self._old_sigint = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            self._old_sigint = None

    def close(self) -> None:
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None
        if self._old_sigint is not None:
            signal.signal(signal.SIGINT, self._old_sigint)
            self._old_sigint = None
        if self.dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _stop_agreed(self) -> bool:
        if not self.dist.enabled:
            return self._stop
        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.device)
        torch.distributed.all_reduce(flag)
        return bool(flag.item() > 0)

    def _describe_start(self) -> None:
        opts = self.options
        self._print(f"{self.cfg_base}")
        self._print(f"Learning Rate: {self.policy.learning_rate:g}, Momentum: {self.opt_settings.momentum:g}, "
                    f"Decay: {self.cfg_decay:g}")
        self._print(f" batch = {self.images_per_iteration} (mini_batch = {self.mini_batch}, subdivisions = "
                    f"{self.subdivisions}), max_batches = {self.max_batches}, network {self.model.width}x"
                    f"{self.model.height}, device {self.device}{' with AMP' if self.amp else ''}"
                    + (f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else "")
                    + f", {self.workers} loader processes, seed {opts.seed}"
                    + (f", {self.dist.world} processes" if self.dist.enabled else ""))
        if self.load_report is not None:
            r = self.load_report
            kind = "all" if r.complete else "a partial file:"
            self._print(f" Loaded {kind} {r.layers_loaded} of {r.layers_with_weights} layers with weights from "
                        f"{self.weights_path}; seen {r.header.seen} images"
                        + (" (reset by --clear)" if opts.clear else f", iteration {self.start_iteration}"))
        else:
            self._print(" No weights: Darknet's random initialisation")
        if self.images_per_iteration < 8:
            self._print(f"\n Warning: You set batch={self.images_per_iteration} lower than 64! It is recommended to "
                        "set batch=64 subdivision=64 ")
        self._print(f"Weights are saved after: {self.save_every} iterations. Last weights (*_last.weight) are stored "
                    f"every {self.save_last_every} iterations. ")

    def train(self) -> int:
        """The train_detector loop; returns 0 (done) or 130 (stopped with Ctrl-C, `_last` saved)."""
        self._describe_start()
        if self.start_iteration >= self.max_batches:
            return self._nothing_to_train()
        state = RunState.starting_at(self.start_iteration)
        chart = Chart(self.max_batches, self.max_chart_loss)
        bar = self._progress_bar(state.iteration)
        self._install_sigint()
        interrupted = False
        load_start = time.time()
        for images, truths in self._loader():
            load_time = time.time() - load_start
            start = time.time()
            loss = self.train_iteration(images, truths, state.iteration)
            state.iteration += 1
            self._report(state, loss, time.time() - start, load_time, chart, bar)
            if self.options.calc_map:
                self._map_if_due(state, chart)
            self._snapshots_if_due(state, chart)
            if self._stop_agreed():
                interrupted = True
                break
            load_start = time.time()
        if bar is not None:
            bar.close()
        self.final_iteration, self.best_map, self.last_map = state.iteration, state.best_map, state.last_map
        return self._finish(state.iteration, interrupted)

    def _nothing_to_train(self) -> int:
        """Weights already at or past max_batches: Darknet writes _final at once; darkpy also says why."""
        self._print(f"\n The weights {self.weights_path} were trained for {self.start_iteration} iterations (seen "
                    f"{self.start_seen} images), which is not below max_batches = {self.max_batches}: there is "
                    f"nothing to train. Darknet writes only _final in this case, and so does darkpy. Use --clear to "
                    f"restart the count from 0, or raise --max-batches.")
        self.save("final", self.start_iteration)
        return 0

    def _report(self, state: "RunState", loss: float, seconds: float, load_time: float, chart: Chart, bar) -> None:
        """avg loss (0.9/0.1, restarted after NaN), Darknet's main line, the chart point and the progress bar."""
        if not math.isfinite(loss) and not state.warned_divergence:
            state.warned_divergence = True
            self._print(f" warning: the loss is {loss} at iteration {state.iteration}: training diverged (Darknet "
                        f"goes on, and so does darkpy); a lower learning_rate or a longer burn_in may help")
        if state.avg_loss < 0 or state.avg_loss != state.avg_loss:
            state.avg_loss = loss
        state.avg_loss = state.avg_loss * 0.9 + loss * 0.1
        iteration = state.iteration
        rate = self.policy.rate(iteration)
        images_done = iteration * self.images_per_iteration * self.dist.world
        # Darknet prints the time left known before this iteration (-1 at first), then updates it
        self._print(f" {iteration}: {loss:f}, {state.avg_loss:f} avg loss, {rate:f} rate, {seconds:f} seconds, "
                    f"{images_done} images, {state.avg_time:f} hours left")
        remaining = (self.max_batches - iteration) * (seconds + load_time) / 3600
        state.avg_time = remaining if state.avg_time < 0 else 0.01 * remaining + 0.99 * state.avg_time
        chart.add_loss(iteration, state.avg_loss)
        if bar is not None:
            speed = self.images_per_iteration * self.dist.world / max(seconds + load_time, 1e-9)
            bar.set_postfix_str(f"loss {loss:.3f} avg {state.avg_loss:.3f} lr {rate:.2e} {speed:.1f} img/s"
                                + (f" mAP {state.last_map * 100:.1f}%" if state.last_map >= 0 else ""),
                                refresh=False)
            bar.update(1)

    def _map_if_due(self, state: "RunState", chart: Chart) -> None:
        """-map: every max(map_epochs epochs, 100) iterations (not before burn_in) and at max_batches."""
        each = max(self.options.map_epochs * len(self.train_set) // self.images_per_iteration, 100)
        due = max(state.iter_map + each, self.policy.burn_in)
        if state.iteration < due and state.iteration != self.max_batches:
            return
        state.iter_map = state.iteration
        state.last_map = self.compute_map() if self.dist.main else 0.0
        self._print(f"\n mean_average_precision (mAP@0.50) = {state.last_map:f} ")
        chart.add_map(state.iteration, state.last_map)
        if state.last_map >= state.best_map:
            state.best_map = state.last_map
            self._print("New best mAP!")
            self.save("best", state.iteration)

    def _snapshots_if_due(self, state: "RunState", chart: Chart) -> None:
        """The chart every 100 iterations; _N every saveweights, _last (and _ema) every savelast."""
        iteration = state.iteration
        if self.dist.main and (iteration % 100 == 0 or iteration >= self.max_batches - 1):
            chart.save([self.backup / "chart.png", self.backup / f"chart_{self.cfg_base}.png"],
                       f"current avg loss = {state.avg_loss:2.4f}    iteration = {iteration}    "
                       f"approx. time left = {state.avg_time:2.2f} hours")
        if iteration >= state.iter_save + self.save_every or iteration % self.save_every == 0:
            state.iter_save = iteration
            self.save(str(iteration), iteration)
        if self.save_every > self.save_last_every and (
                iteration >= state.iter_save_last + self.save_last_every
                or (iteration % self.save_last_every == 0 and iteration > 1)):
            state.iter_save_last = iteration
            self.save("last", iteration)
            self.save_ema(iteration)

    def _finish(self, iteration: int, interrupted: bool) -> int:
        opts = self.options
        if interrupted:
            self.save("last", iteration)
            self.save_ema(iteration)
            self._print(f"\n Stopped at iteration {iteration}; continue with: darkpy train --data {opts.data} --cfg "
                        f"{opts.cfg} --resume")
            self._print_problems()
            return 130
        self.save("final", iteration)
        self._print("If you want to train from the beginning, then use flag in the end of training command: -clear ")
        self._print_problems()
        return 0

    def _progress_bar(self, start: int):
        if not (self.options.progress and self.dist.main):
            return None
        from tqdm import tqdm

        return tqdm(total=self.max_batches, initial=start, unit="it", desc="train", file=sys.stderr,
                    dynamic_ncols=True)

    def _print_problems(self) -> None:
        for line in self.problems.summary():
            self._print(line)


def _rank_sampler(rank: int):
    """IterationSampler whose images differ per process but whose multi-scale sizes are the same everywhere."""
    from darkpy.augment import IterationSampler, SampleKey

    class RankSampler(IterationSampler):
        def __iter__(self):
            for iteration, (width, height) in zip(range(self.start_iteration, self.max_batches), self.sizes()):
                rng = np.random.default_rng([self.seed & 0xFFFFFFFFFFFFFFFF, iteration, 0, rank])
                indices = rng.integers(0, self.num_images, self.batch)
                yield [SampleKey(int(index), width, height, self.seed + 7919 * rank, iteration, slot)
                       for slot, index in enumerate(indices)]

    return RankSampler
