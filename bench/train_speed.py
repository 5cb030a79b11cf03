"""Training speed: images per second of one Darknet training iteration (forward, loss, backward, update).

Run by hand (it is not a test):

    python bench/train_speed.py                         # yolov3-tiny at 416, batch 16, CPU
    python bench/train_speed.py --device cuda:0 --amp --iterations 20
    python bench/train_speed.py --data /tmp/shapes/shapes.data --cfg cfg/shapes-prn.cfg --size 224
    python bench/train_speed.py --data /tmp/shapes/shapes.data --cfg cfg/shapes-prn.cfg --size 224 \
                                --darknet /tmp/darknet-avx/darknet

The images are random tensors with three random boxes each, so the figure is the network and loss work only;
with --data it also times darkpy's data pipeline (Darknet's augmentation of `batch` images of the train list,
in the training process) on its own. A pytorchyolo (eriklindernoren/PyTorch-YOLOv3) column is added when that
package is importable: same cfg, its own loss, SGD.

With --darknet (and --data) both trainers run whole: `darknet detector train` and `darkpy train`, each as its own
process on the same cfg (a copy with max_batches set) and data, taking turns round after round. Each runs a short
and a long count of iterations; the difference between the two runs gives the seconds per iteration with data
loading and without start-up, in wall time and in CPU time of the process and its children (the CPU time is what
other processes on a busy machine do not inflate). The step time each trainer prints per iteration is shown too.
"""
import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from darkpy.training.loss import DarknetLoss  # noqa: E402
from darkpy.model import Darknet  # noqa: E402
from darkpy.training.build import keep_freed_memory, training_memory_format  # noqa: E402
from darkpy.training.schedule import OptimizerSettings, build_optimizer, set_learning_rate  # noqa: E402


def _default_cfg() -> str:
    for candidate in (REPO / "cfg" / "yolov3-tiny.cfg", REPO.parent / "shared" / "darknet" / "cfg" / "yolov3-tiny.cfg"):
        if candidate.exists():
            return str(candidate)
    raise SystemExit("no yolov3-tiny.cfg found; pass --cfg")


def synthetic_batch(batch: int, size: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g)
    truths = torch.zeros(batch, 200, 5)
    for b in range(batch):
        for t in range(3):
            w, h = (0.05 + 0.4 * torch.rand(2, generator=g)).tolist()
            x, y = (0.3 + 0.4 * torch.rand(2, generator=g)).tolist()
            truths[b, t] = torch.tensor([x, y, w, h, float(torch.randint(classes, (1,), generator=g))])
    return images, truths


def time_steps(step: Callable[[], None], iterations: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of step(), after warm-up calls."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iterations


def darkpy_step(cfg: str, size: int, batch: int, device: torch.device, amp: bool) -> Callable[[], None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet.from_cfg(cfg, width=size, height=size).to(device).train()
        loss = DarknetLoss(model.heads, warn=False)
    if device.type == "cpu":  # what `darkpy train` sets up on the CPU (darkpy/training/build.py)
        keep_freed_memory()
    memory_format = training_memory_format(device)
    model.to(memory_format=memory_format)
    settings = OptimizerSettings.from_net(model.net_section, batch)
    optimizer = build_optimizer(model.layers, settings)
    images, truths = synthetic_batch(batch, size, int(model.heads[-1].classes))
    images = images.to(device).contiguous(memory_format=memory_format)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            raw = model(images)
        scaler.scale(loss(raw, truths, size, size).surrogate).backward()
        set_learning_rate(optimizer, 0.001, settings, 1000)
        scaler.step(optimizer)
        scaler.update()

    return step


def pytorchyolo_step(cfg: str, size: int, batch: int, device: torch.device) -> Optional[Callable[[], None]]:
    try:
        from pytorchyolo.models import Darknet as PyYoloDarknet
        from pytorchyolo.utils.loss import compute_loss
    except ImportError:
        return None
    model = PyYoloDarknet(cfg, img_size=size).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0001, momentum=0.9)
    images, truths = synthetic_batch(batch, size, 80)
    targets = []
    for b in range(batch):
        for row in truths[b]:
            if row[0] == 0:
                break
            targets.append([b, row[4], row[0], row[1], row[2], row[3]])
    targets = torch.tensor(targets, device=device)
    images = images.to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = compute_loss(model(images), targets, model)
        loss.backward()
        optimizer.step()

    return step


def loader_seconds(data: str, cfg: str, size: int, batch: int, iterations: int) -> float:
    from darkpy.training import AugmentConfig, DetectionTrainSet, IterationSampler, make_train_loader
    from darkpy.data import read_data_config, read_image_list, resolve_path

    config = read_data_config(data)
    list_file = resolve_path(config.options.get("train", "data/train.txt"), config.path)
    from darkpy.cfg import parse_cfg
    sections = parse_cfg(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = Darknet(sections, width=size, height=size).heads[-1]
    augment = AugmentConfig.from_net_and_head(sections[0], head)
    dataset = DetectionTrainSet(read_image_list(list_file), augment, list_file=list_file)
    sampler = IterationSampler(len(dataset), batch, size, size, max_batches=iterations + 1, seed=0)
    start = None
    for k, _ in enumerate(make_train_loader(dataset, sampler, num_workers=0)):
        if k == 0:
            start = time.perf_counter()  # the first batch also reads the label files
    return (time.perf_counter() - start) / iterations


# ============================================================================ whole trainers, side by side

# Darknet's (and darkpy's) line per iteration: " 12: 801.3, 812.9 avg loss, 0.000000 rate, 1.52 seconds, ..."
ITERATION_LINE = re.compile(r"^\s*\d+: \S+, \S+ avg loss, \S+ rate, ([0-9.]+) seconds", re.MULTILINE)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_trainer(command: List[str], cwd: str) -> Tuple[float, float, List[float]]:
    """Run one training command: its wall seconds, CPU seconds (it and its children) and printed step times."""
    cpu_before, start = _children_cpu(), time.perf_counter()
    # `python -m darkpy` imports this checkout's darkpy, as the bench itself does. Both trainers wait for their
    # OpenMP threads the same way: the darkpy command's own default (PASSIVE, darkpy/cli.py) unless the caller's
    # environment sets one; libgomp's default spins, which counts as CPU time.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    done = subprocess.run(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", env=env)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu_before
    steps = [float(seconds) for seconds in ITERATION_LINE.findall(done.stdout)]
    if done.returncode != 0 or not steps:
        tail = "\n".join(done.stdout.splitlines()[-15:])
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}, {len(steps)} iterations):\n{tail}")
    return wall, cpu, steps


def trainer_commands(darknet: str, data: str, cfg: str, threads: Optional[int]) -> Dict[str, Callable]:
    """name -> (iterations, folder) -> the command training `iterations` iterations from scratch there."""
    def setup(iterations: int, folder: str) -> Tuple[str, str]:
        text = Path(cfg).read_text()
        text = re.sub(r"^\s*max_batches\s*=.*$", f"max_batches={iterations}", text, flags=re.MULTILINE)
        Path(folder, "bench.cfg").write_text(text)
        lines = [line for line in Path(data).read_text().splitlines() if not line.strip().startswith("backup")]
        Path(folder, "bench.data").write_text("\n".join(lines + [f"backup = {folder}/backup", ""]))
        os.makedirs(Path(folder, "backup"), exist_ok=True)
        return str(Path(folder, "bench.data")), str(Path(folder, "bench.cfg"))

    def darknet_command(iterations: int, folder: str) -> List[str]:
        data_file, cfg_file = setup(iterations, folder)
        return [darknet, "detector", "train", data_file, cfg_file, "-dont_show"]

    def darkpy_command(iterations: int, folder: str) -> List[str]:
        data_file, cfg_file = setup(iterations, folder)
        return [sys.executable, "-m", "darkpy", "train", "--data", data_file, "--cfg", cfg_file, "--no-progress",
                "--seed", "1"] + (["--threads", str(threads)] if threads else [])

    return {"darkpy": darkpy_command, "C Darknet": darknet_command}


def compare_trainers(args, cfg: str) -> None:
    """Rounds of: each trainer a short and a long run; per-iteration figures from the difference."""
    commands = trainer_commands(args.darknet, args.data, cfg, args.threads)
    short, long = args.short, args.short + args.iterations
    figures: Dict[str, Dict[str, List[float]]] = {name: {"wall": [], "cpu": [], "step": []} for name in commands}
    env_note = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
                f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}")
    for round_index in range(args.rounds):
        for name, command in commands.items():
            runs = {}
            for iterations in (short, long):
                with tempfile.TemporaryDirectory(prefix="darkpy-train-speed-") as folder:
                    runs[iterations] = run_trainer(command(iterations, folder), folder)
            (wall_s, cpu_s, _), (wall_l, cpu_l, steps) = runs[short], runs[long]
            figures[name]["wall"].append((wall_l - wall_s) / (long - short))
            figures[name]["cpu"].append((cpu_l - cpu_s) / (long - short))
            figures[name]["step"].extend(steps[short:])
            print(f"  round {round_index + 1} {name}: {figures[name]['wall'][-1]:.3f} s wall, "
                  f"{figures[name]['cpu'][-1]:.3f} s CPU per iteration", file=sys.stderr, flush=True)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nwhole trainers, {Path(cfg).name} on {Path(args.data).name}: seconds per iteration (median of "
          f"{args.rounds} rounds of {short} and {long} iterations; {os.cpu_count()} CPUs, load average {load} "
          f"at the end; {env_note})")
    print("| trainer | wall s/iteration | CPU s/iteration | printed step s (median) | images/s (wall) |")
    print("|---|---|---|---|---|")
    medians = {name: {k: statistics.median(v) for k, v in f.items()} for name, f in figures.items()}
    batch_line = re.search(r"^\s*batch\s*=\s*(\d+)", Path(cfg).read_text(), re.MULTILINE)  # the cfg's, not --batch
    batch = int(batch_line.group(1)) if batch_line else args.batch
    for name, m in medians.items():
        print(f"| {name} | {m['wall']:.3f} | {m['cpu']:.3f} | {m['step']:.3f} | {batch / m['wall']:.1f} |")
    d, c = medians["darkpy"], medians["C Darknet"]
    print(f"darkpy is {c['wall'] / d['wall']:.2f}x as fast as C Darknet in wall time, {c['cpu'] / d['cpu']:.2f}x in "
          f"CPU time, {c['step'] / d['step']:.2f}x in printed step time")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", default=None, help="cfg (default: yolov3-tiny.cfg)")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--data", default=None, help="a .data file: also time the data pipeline")
    parser.add_argument("--darknet", default=None,
                        help="a C Darknet binary: also time `darknet detector train` and `darkpy train` whole, "
                             "side by side, on --cfg and --data")
    parser.add_argument("--rounds", type=int, default=2, help="with --darknet: rounds of runs")
    parser.add_argument("--short", type=int, default=3, help="with --darknet: iterations of the short runs "
                                                             "(the long ones add --iterations)")
    args = parser.parse_args(argv)
    if args.darknet and not args.data:
        parser.error("--darknet needs --data (both trainers read the same dataset)")
    cfg = args.cfg or _default_cfg()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    where = f"{device}" + (f" ({torch.get_num_threads()} threads, {os.cpu_count()} cores)" if device.type == "cpu"
                           else f" ({torch.cuda.get_device_name(device)})")
    print(f"training step: {Path(cfg).name} at {args.size}x{args.size}, batch {args.batch}, {where}"
          + (", AMP" if args.amp else ""))
    print(f"{'implementation':<16}{'images/s':>10}{'s/iteration':>14}")
    seconds = time_steps(darkpy_step(cfg, args.size, args.batch, device, args.amp), args.iterations, args.warmup,
                         device)
    print(f"{'darkpy':<16}{args.batch / seconds:>10.1f}{seconds:>14.3f}")
    other = pytorchyolo_step(cfg, args.size, args.batch, device)
    if other is None:
        print(f"{'pytorchyolo':<16}{'(not installed)':>24}")
    else:
        seconds = time_steps(other, args.iterations, args.warmup, device)
        print(f"{'pytorchyolo':<16}{args.batch / seconds:>10.1f}{seconds:>14.3f}")
    if args.data:
        seconds = loader_seconds(args.data, cfg, args.size, args.batch, args.iterations)
        print(f"{'darkpy data':<16}{args.batch / seconds:>10.1f}{seconds:>14.3f}   (augmentation only, 1 process)")
    if args.darknet:
        compare_trainers(args, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
