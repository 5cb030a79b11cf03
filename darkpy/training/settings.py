"""Training settings, read once from the one parsed [net] section and the model's last detection head.

src/parser.c `parse_net_options` reads [net] (batch, subdivisions, max_batches, the learning-rate and optimizer
keys, the augmentation keys); src/detector.c `train_detector` hands load_data_detection the augmentation
settings of [net] and of the last detection layer (`args.jitter = l.jitter`, `args.resize = l.resize`,
`args.num_boxes = l.max_boxes`, multi-scale from `l.random`). Command-line values override the cfg's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from darkpy.cfg import Section
from darkpy.training.schedule import LearningRatePolicy, OptimizerSettings

MIXUP_NONE, MIXUP_BLEND, MIXUP_MOSAIC = 0, 1, 3

# [net] keys that change Darknet's detector training but that darkpy does not implement.
NET_NOT_IMPLEMENTED = {
    "try_fix_nan": "NaN repair", "weights_reject_freq": "similar-weights rejection",
    "equidistant_point": "equidistant-point delta rejection",
    "badlabels_rejection_percentage": "bad-label rejection", "num_sigmas_reject_badlabels": "bad-label rejection",
    "dynamic_minibatch": "mini-batch resizing with multi-scale", "adversarial_lr": "adversarial training",
    "unsupervised": "unsupervised contrastive training",
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


@dataclass
class TrainOptions:
    """What `darkpy train` was asked to do (train_detector's arguments), before the cfg is read."""

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
    calc_map: bool = False  # evaluate during training: -map (detector), -topk (classifier)
    map_epochs: int = 4  # every this many epochs (Darknet: -mAP_epochs, 4; -topk: 2)
    task: str = "detector"  # or "classifier"
    amp: Optional[bool] = None
    progress: bool = True
    verbose: bool = False
    out: Optional[object] = None  # stream for Darknet's lines (default sys.stdout)


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation settings train_detector passes to load_data_detection.

    From [net]: flip, hue, saturation, exposure, blur, gaussian_noise, mixup/mosaic/cutmix (combined as Darknet's
    net.mixup), letter_box, mosaic_bound, resize_step, contrastive (with contrastive_jit_flip, contrastive_color). From the LAST detection layer: classes, jitter, resize,
    random, max (Darknet's `args.jitter = l.jitter`, `args.resize = l.resize`, `args.num_boxes = l.max_boxes`).
    """

    classes: int = 20
    jitter: float = 0.2
    resize: float = 1.0
    random: float = 0.0
    max_boxes: int = 200
    flip: bool = True
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    blur: int = 0
    gaussian_noise: int = 0
    mixup: int = MIXUP_NONE  # 0 none, 1 mixup (blend two images), 3 mosaic
    letter_box: bool = False
    mosaic_bound: bool = False
    resize_step: int = 32
    track_ids: bool = False  # truths carry read_boxes' track id (a [contrastive] loss needs it)
    contrastive: bool = False  # [net] contrastive=1: the batch is pairs of one image (slots 2k, 2k + 1)
    contrastive_jit_flip: bool = False  # ... whose crop offsets and flip are drawn for each (else shared)
    contrastive_color: bool = False  # ... whose colour changes are drawn for each (else shared)

    def __post_init__(self) -> None:
        if self.mixup not in (MIXUP_NONE, MIXUP_BLEND, MIXUP_MOSAIC):
            raise ValueError(f"mixup mode must be 0, 1 or 3, got {self.mixup}")
        if self.mixup == MIXUP_MOSAIC and self.letter_box:
            # load_data_detection: "Combination: letter_box=1 & mosaic=1 - isn't supported"
            raise ValueError("[net] letter_box=1 and mosaic=1 cannot be combined (Darknet refuses it too)")
        if self.classes <= 0 or self.max_boxes <= 0:
            raise ValueError(f"classes ({self.classes}) and max ({self.max_boxes}) must be positive")
        if self.resize <= 0 or self.jitter < 0:
            raise ValueError(f"resize ({self.resize}) must be positive and jitter ({self.jitter}) not negative")

    @property
    def mosaic(self) -> bool:
        return self.mixup == MIXUP_MOSAIC

    @classmethod
    def from_net_and_head(cls, net: Section, head) -> "AugmentConfig":
        """[net]'s augmentation keys and the detection head's classes, jitter, resize, random and max_boxes."""
        return cls(
            classes=int(head.classes), jitter=head.jitter, resize=head.resize, random=head.random,
            max_boxes=head.max_boxes,
            flip=bool(net.get_int("flip", 1)),
            hue=net.get_float("hue", 0.0),
            saturation=net.get_float("saturation", 1.0),
            exposure=net.get_float("exposure", 1.0),
            blur=net.get_int("blur", 0),
            gaussian_noise=net.get_int("gaussian_noise", 0),
            mixup=_detection_mixup_mode(net),
            letter_box=bool(net.get_int("letter_box", 0)),
            mosaic_bound=bool(net.get_int("mosaic_bound", 0)),
            resize_step=max(1, net.get_int("resize_step", 32)),
            contrastive=bool(net.get_int("contrastive", 0)),
            contrastive_jit_flip=bool(net.get_int("contrastive_jit_flip", 0)),
            contrastive_color=bool(net.get_int("contrastive_color", 0)),
        )


def net_mixup_mode(net: Section) -> int:
    """parse_net_options' net.mixup: mixup= as written (1: mixup), overridden by cutmix=1 (2), mosaic=1 (3) or
    both (4)."""
    mode = net.get_int("mixup", 0)
    cutmix, mosaic = net.get_int("cutmix", 0), net.get_int("mosaic", 0)
    if mosaic and cutmix:
        return 4
    if cutmix:
        return 2
    if mosaic:
        return 3
    return mode


def _detection_mixup_mode(net: Section) -> int:
    """load_data_detection drops cutmix from net.mixup (2 -> 0, 4 -> 3: "cutmix=1 - isn't supported for
    Detector")."""
    mode = net_mixup_mode(net)
    mode = {2: MIXUP_NONE, 4: MIXUP_MOSAIC}.get(mode, mode)
    if mode not in (MIXUP_NONE, MIXUP_BLEND, MIXUP_MOSAIC):
        raise net.error(f"mixup={mode} is not a mode Darknet's detector loader knows (0, 1, or mosaic=1)", "mixup")
    return mode


def _positive(value: int, what: str) -> int:
    if value is None or value < 1:
        raise TrainError(f"{what} must be a positive integer (got {value})")
    return int(value)


@dataclass
class TrainSettings:
    """train_detector's settings: parse_net_options' batch, subdivisions, max_batches, learning-rate policy,
    optimizer, ema_alpha and max_chart_loss, and the augmentation settings."""

    batch: int  # [net] batch (or --batch): images per iteration before Darknet divides it by subdivisions
    subdivisions: int
    max_batches: int
    policy: LearningRatePolicy
    optimizer: OptimizerSettings  # decay multiplied by the number of processes
    cfg_decay: float  # [net] decay as written (printed)
    ema_alpha: float
    max_chart_loss: float
    augment: AugmentConfig  # or a classifier's ClassifierAugment

    @property
    def mini_batch(self) -> int:
        return self.batch // self.subdivisions

    @property
    def images_per_iteration(self) -> int:
        """Darknet's net.batch*net.subdivisions."""
        return self.mini_batch * self.subdivisions

    @classmethod
    def read(cls, net: Section, augment, options: TrainOptions, processes: int = 1) -> "TrainSettings":
        """From [net] (command-line values first) and the task's augmentation settings (AugmentConfig, from [net]
        and the last detection head, or a classifier's); TrainError for values Darknet refuses to train with."""
        batch = _positive(options.batch if options.batch is not None else net.get_int("batch", 1), "batch")
        subdivisions = _positive(options.subdivisions if options.subdivisions is not None
                                 else net.get_int("subdivisions", 1), "subdivisions")
        if batch // subdivisions < 1:
            raise TrainError(f"batch={batch} is smaller than subdivisions={subdivisions}: each mini-batch "
                             f"would have batch/subdivisions = 0 images")
        if (batch // subdivisions) * subdivisions == 1:
            raise TrainError("batch=1: Darknet refuses to train with one image per iteration (\"You set incorrect "
                             "value batch=1 for Training!\"); use e.g. batch=64 subdivisions=16")
        if net.get_int("contrastive", 0) and batch // subdivisions < 2:
            raise TrainError(f"{net.file}:{net.options['contrastive'].line}: [net] contrastive=1 needs pairs of "
                             f"images in each mini-batch, but batch/subdivisions = {batch // subdivisions} (Darknet "
                             f"stops too: \"mini_batch size (batch/subdivisions) should be higher than 1\")")
        max_batches = options.max_batches if options.max_batches is not None else net.get_int("max_batches", 0)
        if max_batches < 1:
            raise TrainError(f"{options.cfg}: [net] max_batches is {max_batches}: set it (or --max-batches)")
        policy = LearningRatePolicy.from_net(net, options.learning_rate, max_batches)
        optimizer = OptimizerSettings.from_net(net, (batch // subdivisions) * subdivisions)
        cfg_decay = optimizer.decay
        # summed gradients over N processes: decay as Darknet's N averaged nets apply it
        optimizer.decay *= processes
        return cls(batch, subdivisions, max_batches, policy, optimizer, cfg_decay,
                   ema_alpha=net.get_float("ema_alpha", 0.0), max_chart_loss=net.get_float("max_chart_loss", 20.0),
                   augment=augment)


def _is_set(section: Section, key: str) -> bool:
    return section.has(key) and str(section.raw(key)).strip() not in ("0", "0.0", "")


def unimplemented_options(net: Section, layers: Sequence, adam: bool) -> List[str]:
    """Every option that would make Darknet train differently from darkpy, as 'file:line: [section] key=value
    (what)' lines."""
    items = []
    for key, what in NET_NOT_IMPLEMENTED.items():
        if _is_set(net, key):
            items.append(f"{net.file}:{net.options[key].line}: [net] {key}={net.raw(key)} ({what})")
    for key in NET_NO_EFFECT:
        if net.has(key):
            items.append(f"{net.file}:{net.options[key].line}: [net] {key}={net.raw(key)} (Darknet GPU memory/"
                         "speed setting, no effect in darkpy)")
    if net.has("time_steps") and net.get_int("time_steps", 1) != 1:
        items.append(f"{net.file}:{net.options['time_steps'].line}: [net] time_steps (recurrent training)")
    for layer in layers:
        section = layer.section
        for key in LAYER_NOT_IMPLEMENTED:
            if _is_set(section, key):
                items.append(f"{section.file}:{section.options[key].line}: [{section.written_type}] {key}="
                             f"{section.raw(key)} (Darknet GPU update option)")
        if getattr(layer, "stopbackward", 0) > 1:
            items.append(f"{section.file}:{section.options['stopbackward'].line}: [{section.written_type}] "
                         f"stopbackward={layer.stopbackward} (Darknet GPU: frozen until that iteration); darkpy "
                         "does not freeze")
    if adam:
        items.append(f"{net.file}: [net] adam=1 follows Darknet's GPU Adam (its CPU build ignores adam)")
    return items
