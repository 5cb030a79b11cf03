"""`darkpy train`: Darknet's `detector train` (src/detector.c train_detector); the loop is
darkpy.training.trainer. Its options and error handling serve `darkpy classifier train` too."""
import argparse
import os
import sys
from typing import List, Optional

from darkpy.cfg import CfgError
from darkpy.commands.common import positive_float
from darkpy.data import DataError
from darkpy.training.loss import LossError
from darkpy.training.schedule import ScheduleError
from darkpy.training.distributed import launch
from darkpy.training.settings import TrainError, TrainOptions
from darkpy.training.trainer import Trainer
from darkpy.weights import WeightsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="darknet .data file (train, valid, names, backup)")
    parser.add_argument("--cfg", required=True, help="network .cfg")
    parser.add_argument("--weights", help="initial weights: a full .weights (continues its iteration count), a "
                                           "partial backbone *.conv.N, or none for Darknet's random initialisation")
    parser.add_argument("--map", action="store_true",
                        help="compute mAP@0.5 on the valid list during training (Darknet's -map) and keep "
                             "<cfg>_best.weights")
    parser.add_argument("--map-epochs", type=int, default=4,
                        help="with --map: compute it every this many epochs of the train list, at least every "
                             "100 iterations (Darknet's -mAP_epochs, default 4)")
    add_training_arguments(parser)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `darkpy train` and `darkpy classifier train` share."""
    parser.add_argument("--clear", "-clear", action="store_true",
                        help="reset the iteration count (seen) of the weights to 0 (Darknet's -clear)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <backup>/<cfg>_last.weights (or --weights) at its iteration")
    parser.add_argument("--max-batches", type=int, help="override [net] max_batches")
    parser.add_argument("--batch", type=int, help="override [net] batch (images per iteration)")
    parser.add_argument("--subdivisions", type=int, help="override [net] subdivisions")
    parser.add_argument("--width", type=int, help="override [net] width")
    parser.add_argument("--height", type=int, help="override [net] height")
    parser.add_argument("--learning-rate", type=positive_float, help="override [net] learning_rate")
    parser.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--gpus", type=gpu_list, default=None, metavar="0,1,...",
                        help="Darknet's -gpus: train on these GPUs, one process each (launched here, as torchrun "
                             "would); one GPU is --device cuda:N")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loading processes (default: 1 on the CPU, min(6, CPU count - 1) with CUDA; "
                             "0 loads in the training process)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU training: torch threads (default: one per core)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument("--amp", dest="amp", action="store_true", default=None,
                        help="mixed precision (default: on with CUDA)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true",
                        help="also print Darknet's per-layer loss lines for every mini-batch")


def gpu_list(text: str) -> List[int]:
    """argparse type of --gpus: GPU indices separated by commas, each once."""
    try:
        gpus = [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of GPU numbers such as 0,1") from None
    if min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"{text!r}: GPU numbers are 0 or more, each given once")
    return gpus


def options_from_args(args: argparse.Namespace, task: str = "detector", evaluate: bool = False,
                      epochs: int = 4) -> TrainOptions:
    """TrainOptions from the parsed arguments (args.data, args.cfg, args.weights and add_training_arguments')."""
    return TrainOptions(data=args.data, cfg=args.cfg, weights=args.weights, clear=args.clear, resume=args.resume,
                        max_batches=args.max_batches, batch=args.batch, subdivisions=args.subdivisions,
                        width=args.width, height=args.height, learning_rate=args.learning_rate, device=args.device,
                        workers=args.workers, threads=args.threads, seed=args.seed, calc_map=evaluate,
                        map_epochs=epochs, amp=args.amp, progress=not args.no_progress,
                        verbose=args.verbose, task=task)


def run(args: argparse.Namespace) -> int:
    """`darkpy train`: 0 when max_batches is reached, 128 + the signal's number after Ctrl-C, SIGTERM or SIGHUP
    (with _last saved), 1 on bad input or when data loading failed (with _last saved). With several --gpus, the
    same in one process per GPU, the first failure's code."""
    return run_training(options_from_args(args, evaluate=args.map, epochs=args.map_epochs), "train", args.gpus)


def run_training(options: TrainOptions, command: str, gpus: Optional[List[int]] = None) -> int:
    """Train (detector or classifier, options.task) here, or on several GPUs in one process each; `command`
    names the command in messages."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # a worker of torchrun or of launch
        _exit_worker(_train(options, command))
    if gpus is None:
        return _train(options, command)
    if len(gpus) == 1:
        options.device = f"cuda:{gpus[0]}"
        return _train(options, command)
    problem = _multi_gpu_problem(gpus, options.device)
    if problem:
        print(f"darkpy {command}: error: --gpus {','.join(map(str, gpus))}: {problem}", file=sys.stderr)
        return 2
    options.device = "cuda"  # each worker takes the GPU of its LOCAL_RANK among CUDA_VISIBLE_DEVICES
    return launch(train_worker, (options, command), len(gpus), cuda_devices=gpus)


def _multi_gpu_problem(gpus: List[int], device: str) -> Optional[str]:
    """Why these GPUs cannot be trained on from here, or None."""
    import torch
    if device not in ("auto", "cuda"):
        return f"cannot be combined with --device {device}"
    available = torch.cuda.device_count()
    if available == 0:
        return "no CUDA device on this machine"
    if max(gpus) >= available:
        return f"this machine has {available} CUDA device(s), numbered from 0"
    return None


def train_worker(options: TrainOptions, command: str = "train") -> None:
    """One process of a run launched with several --gpus (distributed.launch): exits with the training's code."""
    _exit_worker(_train(options, command))


def _exit_worker(code: int) -> None:
    """End a distributed worker once its snapshots are written and its output flushed, without the interpreter's
    shutdown: there, a C++ thread of the process group's library can still be joinable and abort the process
    ("terminate called without an active exception", exit 134), as seen now and then on the CPU with gloo."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _train(options: TrainOptions, command: str) -> int:
    try:
        trainer = Trainer(options)
    except (TrainError, CfgError, DataError, WeightsError, LossError, ScheduleError, OSError, ValueError) as error:
        print(f"darkpy {command}: error: {error}", file=sys.stderr)
        return 1
    try:
        return trainer.train()
    except (DataError, WeightsError, OSError) as error:
        print(f"darkpy {command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ndarkpy {command}: interrupted twice: stopped without saving", file=sys.stderr)
        return 130
    finally:
        trainer.close()
