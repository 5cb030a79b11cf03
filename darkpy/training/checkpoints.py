"""The weights training starts from and the snapshots it writes (src/detector.c train_detector, src/parser.c
load_weights / save_weights).

`seen` in the weights header is iteration*batch, so a loaded snapshot continues its iteration count and
learning-rate schedule (`--clear` restarts at 0). Snapshots go to the .data `backup` folder under Darknet's names:
`<cfg>_last.weights`, `<cfg>_<N>.weights`, `<cfg>_best.weights`, `<cfg>_final.weights` (and `<cfg>_ema.weights`);
each is written to a temporary file and renamed.
"""
import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple


from darkpy.data import DataConfig, read_data_config, resolve_path
from darkpy.training.schedule import WeightsEma
from darkpy.training.settings import TrainError, TrainOptions
from darkpy.weights import LoadReport, remove_orphaned_temporaries

DEFAULT_BACKUP = "/backup/"  # train_detector's option_find_str default
SNAPSHOT_NAME = re.compile(r"_(last|final|best|ema|\d+)\.weights$")


def basecfg(cfg_path: str) -> str:
    """Darknet's basecfg: the file name up to its first '.' (yolov3-tiny.cfg -> yolov3-tiny)."""
    name = re.split(r"[\\/]", str(cfg_path))[-1]
    return name.split(".", 1)[0]


def backup_folder(data: DataConfig) -> Path:
    """The .data file's `backup` folder, relative to the .data file."""
    return Path(resolve_path(data.options.get("backup", DEFAULT_BACKUP), data.path))


# The options that change what a run computes, stored beside its snapshots so that --resume continues the same
# run (where and how fast it runs — device, workers, threads — may change).
RUN_OPTIONS = ("max_batches", "batch", "subdivisions", "width", "height", "learning_rate", "seed", "calc_map",
               "map_epochs")


def run_options_path(options: TrainOptions) -> Path:
    """`<backup>/<cfg>_options.json`."""
    return backup_folder(read_data_config(options.data)) / f"{basecfg(options.cfg)}_options.json"


def save_run_options(options: TrainOptions, seed: int) -> None:
    """Store the run's RUN_OPTIONS (the seed it drew when none was given) beside its snapshots."""
    stored = {name: getattr(options, name) for name in RUN_OPTIONS}
    stored["seed"] = seed
    path = run_options_path(options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=1) + "\n")


def restore_run_options(options: TrainOptions) -> Tuple[TrainOptions, List[str]]:
    """--resume: the stored options of the run, where this command line leaves them at their defaults; returns
    the options and the restored ones as `--name value` words."""
    path = run_options_path(options)
    if not path.is_file():
        return options, []
    stored = json.loads(path.read_text())
    defaults = {field.name: field.default for field in dataclasses.fields(TrainOptions)}
    restored = {name: stored[name] for name in RUN_OPTIONS
                if name in stored and getattr(options, name) == defaults[name] and stored[name] != defaults[name]}
    words = [f"--{name.replace('_', '-')} {value}" for name, value in restored.items()]
    return dataclasses.replace(options, **restored), words


@dataclass
class StartWeights:
    """What training starts from: the weights file (None: Darknet's random initialisation), what loading it
    filled, and the images it had seen (0 with --clear)."""

    path: Optional[str] = None
    report: Optional[LoadReport] = None
    seen: int = 0


def load_start_weights(model, options: TrainOptions, backup: Path) -> StartWeights:
    """--weights, or with --resume `<backup>/<cfg>_last.weights`; a snapshot must be complete and finite."""
    path = options.weights
    if options.resume and options.clear:
        raise TrainError("--resume continues the iteration count and --clear resets it: use one of them")
    if options.resume and path is None:
        path = str(backup / f"{basecfg(options.cfg)}_last.weights")
        if not os.path.exists(path):
            raise TrainError(f"--resume: {path} does not exist (no snapshot of {options.cfg} in the backup folder "
                             f"yet); start without --resume")
    if path is None:
        return StartWeights()
    report = model.load_weights(path)
    is_snapshot = options.resume or bool(SNAPSHOT_NAME.search(os.path.basename(path)))
    if not report.complete and is_snapshot:
        raise TrainError(
            f"{path}: the snapshot is truncated: it holds {report.layers_loaded} of the "
            f"{report.layers_with_weights} layers with weights of {options.cfg} ({report.floats} floats). "
            f"A snapshot written by darkpy or Darknet holds them all; use an earlier snapshot")
    nonfinite = report.nonfinite_message()
    if nonfinite is not None:
        raise TrainError(nonfinite)
    return StartWeights(path, report, 0 if options.clear else int(report.header.seen))


class Snapshots:
    """Darknet's save_weights into the backup folder: seen = iteration * batch (images per iteration of one
    process). Only the main process writes; `say` prints Darknet's lines."""

    def __init__(self, model, backup: Path, cfg_base: str, images_per_iteration: int, ema: Optional[WeightsEma],
                 writes: bool, say: Callable[[str], None]):
        self.model, self.backup, self.cfg_base = model, backup, cfg_base
        self.images_per_iteration, self.ema, self.writes, self.say = images_per_iteration, ema, writes, say
        if writes:  # a run killed while it wrote a snapshot left its temporary file behind
            for leftover in remove_orphaned_temporaries(backup):
                say(f" Removed {leftover}: an unfinished snapshot of a run that was killed while writing it")

    def path(self, suffix: str) -> Path:
        return self.backup / f"{self.cfg_base}_{suffix}.weights"

    def save(self, suffix: str, iteration: int) -> Path:
        path = self.path(suffix)
        if self.writes:
            self.model.save_weights(path, seen=iteration * self.images_per_iteration)
            self.say(f"Saving weights to {path}")
        return path

    def save_ema(self, iteration: int) -> None:
        """`<cfg>_ema.weights`: the EMA values saved in place of the weights."""
        if self.ema is None or not self.ema.initialized or not self.writes:
            return
        path = self.path("ema")
        with self.ema.swapped_in():
            self.model.save_weights(path, seen=iteration * self.images_per_iteration)
        self.say(f" EMA weights are saved to the file: {path} ")
