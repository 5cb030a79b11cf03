"""Training speed: images per second of one Darknet training iteration (forward, loss, backward, update).

Run by hand (it is not a test):

    python bench/train_speed.py                         # yolov3-tiny at 416, batch 16, CPU
    python bench/train_speed.py --device cuda:0 --amp --iterations 20
    python bench/train_speed.py --data /tmp/shapes/shapes.data --cfg cfg/shapes-prn.cfg --size 224

The images are random tensors with three random boxes each, so the figure is the network and loss work only;
with --data it also times darkpy's data pipeline (Darknet's augmentation of `batch` images of the train list,
in the training process) on its own. A pytorchyolo (eriklindernoren/PyTorch-YOLOv3) column is added when that
package is importable: same cfg, its own loss, SGD.
"""
import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from darkpy.training.loss import DarknetLoss  # noqa: E402
from darkpy.model import Darknet  # noqa: E402
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
    settings = OptimizerSettings.from_net(model.net_section, batch)
    optimizer = build_optimizer(model.layers, settings)
    images, truths = synthetic_batch(batch, size, int(model.heads[-1].classes))
    images = images.to(device)
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
    dataset = DetectionTrainSet(read_image_list(list_file), AugmentConfig.from_cfg(cfg), list_file=list_file)
    sampler = IterationSampler(len(dataset), batch, size, size, max_batches=iterations + 1, seed=0)
    start = None
    for k, _ in enumerate(make_train_loader(dataset, sampler, num_workers=0)):
        if k == 0:
            start = time.perf_counter()  # the first batch also reads the label files
    return (time.perf_counter() - start) / iterations


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
    args = parser.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
