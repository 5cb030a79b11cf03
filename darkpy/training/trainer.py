"""Darknet's `detector train` and `classifier train` loop (src/detector.c train_detector, src/classifier.c
train_classifier, src/network.c train_network); what differs between the two is a Task (darkpy.training.tasks).

One iteration = `batch` images drawn with replacement from the train list, fed as `subdivisions` mini-batches whose
gradients are summed, then one update (darkpy.training.schedule) at the learning rate of the iteration number;
training stops at `max_batches`. The loss is Darknet's (darkpy.training.loss). Snapshots (darkpy.training.checkpoints):
`<cfg>_last.weights` every `savelast` (100) iterations, `<cfg>_<N>.weights` every `saveweights` (1000, or 10000
when max_batches >= 10000), `<cfg>_best.weights` with --map, `<cfg>_final.weights` at the end. Ctrl-C, SIGTERM
and SIGHUP save `_last` and stop, and so does a failure of data loading. Multi-scale training follows the last head's `random` (a new size every 10 iterations).

Several processes (`torchrun --nproc_per_node N -m darkpy train ...`) act like Darknet's `-gpus`
(darkpy.training.distributed): keep the cfg's learning_rate.
"""
from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

import torch
from tqdm import tqdm

from darkpy.training.build import build_training
from darkpy.training.chart import Chart
from darkpy.training.checkpoints import Snapshots, basecfg, restore_run_options, save_run_options
from darkpy.training.dataset import LoaderFailure, TrainBatches, make_train_loader
from darkpy.training.distributed import Distributed
from darkpy.training.sampler import IterationSampler, multiscale_coef
from darkpy.training.schedule import set_learning_rate
from darkpy.training.settings import TrainOptions
from darkpy.training.tasks import Schedule

CHART_EVERY = 100  # chart.png every 100 iterations


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
    warned_chart: bool = False

    @classmethod
    def starting_at(cls, iteration: int) -> "RunState":
        return cls(iteration, iteration, iteration, iteration)


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


# The signals that ask training to stop: Ctrl-C, SIGTERM (what cluster schedulers send before they kill) and
# SIGHUP (the terminal closed). SIGHUP does not exist on Windows.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopRequest:
    """A stop signal: the first asks to stop after this iteration (saving `_last`), a second stops at once."""

    def __init__(self, announce: bool):
        self.signum: Optional[int] = None
        self.announce = announce
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            try:
                sys.stderr.write(f"\n {name}: saving the last weights after this iteration (press Ctrl-C to quit "
                                 f"without saving)\n")
            except OSError:
                pass  # SIGHUP: the terminal may be gone; saving matters more than saying so

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                return

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process its signal ended (130 for Ctrl-C); 130 when
        another process of a distributed run was the one asked to stop."""
        return 128 + (self.signum or signal.SIGINT)


class Trainer:
    """Darknet's train_detector loop; construct with TrainOptions (the set-up: darkpy.training.build), then
    train()."""

    def __init__(self, options: TrainOptions):
        restored: List[str] = []
        if options.resume:
            options, restored = restore_run_options(options)
        self.options = options
        self.out = options.out or sys.stdout
        self.dist = Distributed.from_env()
        if restored:
            self._print(f" --resume: the run's own options restored: {' '.join(restored)}")
        self.stop = StopRequest(announce=self.dist.main)
        self.state: Optional[RunState] = None  # the loop's state, from train() on
        setup = build_training(options, self.dist, self._print, self._echo if self.dist.main else None)
        self.device, self.workers, self.seed = setup.device, setup.workers, setup.seed
        self.memory_format = setup.memory_format
        self._threads_before = setup.threads_before
        self.model, self.frozen_layers, self.start = setup.model, setup.frozen_layers, setup.start
        self.settings, self.start_iteration = setup.settings, setup.start_iteration
        self.task = setup.task
        self.train_set, self.problems = setup.train_set, setup.train_set.problems
        self.backup, self.save_every, self.save_last_every = setup.backup, setup.save_every, setup.save_last_every
        self.loss, self.optimizer, self.ema = setup.loss, setup.optimizer, setup.ema
        self.amp, self.scaler = setup.amp, setup.scaler
        self.cfg_base = basecfg(options.cfg)
        self.snapshots = Snapshots(self.model, self.backup, self.cfg_base, self.images_per_iteration, self.ema,
                                   self.dist.main, self._print)
        self.sized = SizedModels(self.model)
        if self.dist.main:
            save_run_options(options, self.seed)

    # Darknet's names for the settings and the loop's results
    subdivisions = property(lambda self: self.settings.subdivisions)
    mini_batch = property(lambda self: self.settings.mini_batch)
    images_per_iteration = property(lambda self: self.settings.images_per_iteration)
    max_batches = property(lambda self: self.settings.max_batches)
    load_report = property(lambda self: self.start.report)
    final_iteration = property(lambda self: self.state.iteration if self.state else None)
    best_map = property(lambda self: self.state.best_map if self.state else -1.0)
    last_map = property(lambda self: self.state.last_map if self.state else -1.0)

    def _echo(self, text: str) -> None:
        tqdm.write(text, file=sys.stderr)

    def _print(self, text: str) -> None:
        if self.dist.main:
            tqdm.write(text, file=self.out)

    def save(self, suffix: str, iteration: int):
        return self.snapshots.save(suffix, iteration)

    def _loader(self) -> TrainBatches:
        sampler = IterationSampler(len(self.train_set), self.images_per_iteration, self.model.width,
                                   self.model.height, max_batches=self.max_batches, seed=self.seed,
                                   start_iteration=self.start_iteration, random=self.settings.augment.random,
                                   resize_step=self.settings.augment.resize_step, rank=self.dist.rank,
                                   world=self.dist.world, pairs=self.settings.augment.contrastive)
        return make_train_loader(self.train_set, sampler, num_workers=self.workers)

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
            x = x.contiguous(memory_format=self.memory_format)
            t = truths[s * mb:(s + 1) * mb]
            seen += mb  # train_network_datum: seen grows before the forward pass
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                raw = self.loss.outputs(model, x)
            result = self.loss(raw, t, width, height, seen)
            self.scaler.scale(result.surrogate).backward()
            cost_sum += result.cost
            if self.options.verbose:
                for head, stats in zip(self.model.heads, result.heads):
                    self._print(head.loss_line(stats, head.index))
                for cost in result.contrastive_costs:
                    self._print(f" contrastive loss = {cost:f} \n")
        self.dist.sum_gradients(self.model)
        cost_sum = self.dist.mean_loss(cost_sum, self.device)
        number = iteration + 1  # Darknet's cur_iteration is incremented before update_network
        set_learning_rate(self.optimizer, self.settings.policy.rate(number), self.settings.optimizer, number)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.dist.sync_buffers(self.model, number)
        if self.ema is not None:
            message = self.ema.after_update(number)
            if message and self.options.verbose:
                self._print(f" {message} ")
        return cost_sum / (self.subdivisions * mb)

    def close(self) -> None:
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None
        self.stop.restore()
        self.dist.stop()

    def _describe_start(self) -> None:
        settings, start = self.settings, self.start
        self._print(f"{self.cfg_base}")
        self._print(f"Learning Rate: {settings.policy.learning_rate:g}, Momentum: {settings.optimizer.momentum:g}, "
                    f"Decay: {settings.cfg_decay:g}")
        self._print(f" batch = {self.images_per_iteration} (mini_batch = {self.mini_batch}, subdivisions = "
                    f"{self.subdivisions}), max_batches = {self.max_batches}, network {self.model.width}x"
                    f"{self.model.height}, device {self.device}{' with AMP' if self.amp else ''}"
                    + (f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else "")
                    + f", {self.workers} loader processes, seed {self.seed}"
                    + (f", {self.dist.world} processes" if self.dist.enabled else ""))
        if start.report is not None:
            r = start.report
            kind = "all" if r.complete else "a partial file:"
            self._print(f" Loaded {kind} {r.layers_loaded} of {r.layers_with_weights} layers with weights from "
                        f"{start.path}; seen {r.header.seen} images"
                        + (" (reset by --clear)" if self.options.clear else f", iteration {self.start_iteration}"))
        else:
            self._print(" No weights: Darknet's random initialisation")
        if self.images_per_iteration < 8:
            self._print(f"\n Warning: You set batch={self.images_per_iteration} lower than 64! It is recommended to "
                        "set batch=64 subdivision=64 ")
        self._print(f"Weights are saved after: {self.save_every} iterations. Last weights (*_last.weight) are stored "
                    f"every {self.save_last_every} iterations. ")

    def train(self) -> int:
        """The train_detector loop; returns 0 (done), 128 + the signal's number when a stop signal ended it (130 for
        Ctrl-C, 143 for SIGTERM, 129 for SIGHUP; `_last` saved), or 1 when data loading failed (`_last` saved)."""
        self._describe_start()
        if self.start_iteration >= self.max_batches:
            return self._nothing_to_train()
        state = self.state = RunState.starting_at(self.start_iteration)
        chart = Chart(self.max_batches, self.settings.max_chart_loss,
                      metric=self.task.evaluation.label if self.task.evaluation else "mAP%")
        bar = self._progress_bar(state.iteration)
        self.stop.install()
        interrupted = False
        load_start = time.time()
        try:
            for images, truths in self._loader():
                load_time = time.time() - load_start
                self._resize_line(state.iteration, images.shape[-1], images.shape[-2])
                start = time.time()
                loss = self.train_iteration(images, truths, state.iteration)
                state.iteration += 1
                self._report(state, loss, time.time() - start, load_time, chart, bar)
                if self.options.calc_map:
                    self._map_if_due(state, chart)
                self._snapshots_if_due(state, chart)
                if self.dist.any_stops(self.stop.requested, self.device):
                    interrupted = True
                    break
                load_start = time.time()
        except LoaderFailure as failure:
            return self._loader_failed(state.iteration, str(failure))
        finally:
            if bar is not None:
                bar.close()
        return self._finish(state.iteration, interrupted)

    def _loader_failed(self, iteration: int, failure: str) -> int:
        """Data loading broke (a loading process killed, or one that raised): the weights so far are kept."""
        if self.dist.main:
            self._echo(f"darkpy train: error: data loading failed at iteration {iteration} (a loading process died "
                       f"or raised): {failure}")
        self.save("last", iteration)
        self.snapshots.save_ema(iteration)
        self._print(f" continue with: {self.task.resume_command(self.options.data, self.options.cfg)}")
        return 1

    def _resize_line(self, iteration: int, width: int, height: int) -> None:
        """random=1: Darknet's lines each time it picks a new network size (every 10 iterations of the run)."""
        random = self.settings.augment.random
        if random and (iteration - self.start_iteration) % 10 == 0:
            self._print(f"Resizing, random_coef = {multiscale_coef(random):.2f} \n\n {width} x {height} ")

    def _nothing_to_train(self) -> int:
        """Weights already at or past max_batches: Darknet writes _final at once; darkpy also says why."""
        self._print(f"\n The weights {self.start.path} were trained for {self.start_iteration} iterations (seen "
                    f"{self.start.seen} images), which is not below max_batches = {self.max_batches}: there is "
                    f"nothing to train. Darknet writes only _final in this case, and so does darkpy. Use --clear to "
                    f"restart the count from 0, or raise --max-batches.")
        self.save("final", self.start_iteration)
        return 0

    def _report(self, state: RunState, loss: float, seconds: float, load_time: float, chart: Chart, bar) -> None:
        """avg loss (0.9/0.1, restarted after NaN), Darknet's main line, the chart point and the progress bar."""
        if not math.isfinite(loss) and not state.warned_divergence:
            state.warned_divergence = True
            self._print(f" warning: the loss is {loss} at iteration {state.iteration}: training diverged (Darknet "
                        f"goes on, and so does darkpy); a lower learning_rate or a longer burn_in may help")
        if state.avg_loss < 0 or state.avg_loss != state.avg_loss:
            state.avg_loss = loss
        state.avg_loss = state.avg_loss * 0.9 + loss * 0.1
        iteration = state.iteration
        rate = self.settings.policy.rate(iteration)
        images_done = iteration * self.images_per_iteration * self.dist.world
        # Darknet prints the time left known before this iteration (-1 at first), then updates it
        epoch = images_done / len(self.train_set)
        self._print(self.task.line(iteration, epoch, loss, state.avg_loss, rate, seconds, images_done,
                                   state.avg_time))
        remaining = (self.max_batches - iteration) * (seconds + load_time) / 3600
        state.avg_time = remaining if state.avg_time < 0 else 0.01 * remaining + 0.99 * state.avg_time
        chart.add_loss(iteration, state.avg_loss)
        if bar is not None:
            speed = self.images_per_iteration * self.dist.world / max(seconds + load_time, 1e-9)
            bar.set_postfix_str(f"loss {loss:.3f} avg {state.avg_loss:.3f} lr {rate:.2e} {speed:.1f} img/s"
                                + (f" mAP {state.last_map * 100:.1f}%" if state.last_map >= 0 else ""),
                                refresh=False)
            bar.update(1)

    def _map_if_due(self, state: RunState, chart: Chart) -> None:
        """-map (every max(map_epochs epochs, 100) iterations, not before burn_in) or -topk (every map_epochs
        epochs, not before burn_in nor iteration 100), and at max_batches."""
        evaluation = self.task.evaluation
        when = Schedule(self.images_per_iteration, len(self.train_set), self.settings.policy.burn_in,
                        self.options.map_epochs)
        if state.iteration < evaluation.next_due(state.iter_map, when) and state.iteration != self.max_batches:
            return
        state.iter_map = state.iteration
        state.last_map, lines = evaluation.measure(self.model, self.device) if self.dist.main else (0.0, [])
        for line in lines:
            self._print(line)
        chart.add_map(state.iteration, state.last_map)
        if evaluation.keeps_best and state.last_map >= state.best_map:
            state.best_map = state.last_map
            self._print("New best mAP!")
            self.save("best", state.iteration)

    def _snapshots_if_due(self, state: RunState, chart: Chart) -> None:
        """The chart every 100 iterations; _N every saveweights, _last (and _ema) every savelast."""
        iteration = state.iteration
        if self.dist.main and (iteration % CHART_EVERY == 0 or iteration >= self.max_batches - 1):
            self._save_chart(state, chart)
        if iteration >= state.iter_save + self.save_every or iteration % self.save_every == 0:
            state.iter_save = iteration
            self.save(str(iteration), iteration)
        if self.save_every > self.save_last_every and (
                iteration >= state.iter_save_last + self.save_last_every
                or (iteration % self.save_last_every == 0 and iteration > 1)):
            state.iter_save_last = iteration
            self.save("last", iteration)
            self.snapshots.save_ema(iteration)

    def _save_chart(self, state: RunState, chart: Chart) -> None:
        """chart.png and chart_<cfg>.png; a chart that cannot be written is reported once, training goes on."""
        try:
            chart.save([self.backup / "chart.png", self.backup / f"chart_{self.cfg_base}.png"],
                       f"current avg loss = {state.avg_loss:2.4f}    iteration = {state.iteration}    "
                       f"approx. time left = {state.avg_time:2.2f} hours")
        except OSError as error:
            if not state.warned_chart:
                state.warned_chart = True
                self._echo(f"darkpy train: warning: {error}; training goes on")

    def _finish(self, iteration: int, interrupted: bool) -> int:
        opts = self.options
        if interrupted:
            self.save("last", iteration)
            self.snapshots.save_ema(iteration)
            self._print(f"\n Stopped at iteration {iteration}; continue with: "
                        f"{self.task.resume_command(opts.data, opts.cfg)}")
            self._print_problems()
            return self.stop.exit_code()
        self.save("final", iteration)
        self._print("If you want to train from the beginning, then use flag in the end of training command: -clear ")
        self._print_problems()
        return 0

    def _progress_bar(self, start: int) -> Optional[tqdm]:
        if not (self.options.progress and self.dist.main):
            return None
        return tqdm(total=self.max_batches, initial=start, unit="it", desc="train", file=sys.stderr,
                    dynamic_ncols=True)

    def _print_problems(self) -> None:
        for line in self.problems.summary():
            self._print(line)
