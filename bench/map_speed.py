"""Seconds for `darkpy map` over 100 images at 416x416 (yolov3-tiny, CPU by default), and pytorchyolo's
evaluation of the same list when `pytorchyolo` is importable. Run by hand; prints a table.

    python bench/map_speed.py [--images 100] [--batch 1 8] [--device cpu] [--shared ../shared]

The dataset is made in a temporary folder: the sample images of ../shared cycled to --images files in an
images/ folder, their labels in labels/ (the map-tiny3 labels for dog, horses and person; no objects for the
others), so both tools find the labels (darkpy through its images->labels fallback).
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Tuple

REPO = Path(__file__).resolve().parents[1]


def make_dataset(shared: Path, root: Path, count: int) -> Path:
    """images/NNN_name.ext + labels/NNN_name.txt + valid.txt + coco.names + bench.data; returns the .data."""
    sources = sorted((shared / "darknet" / "images").glob("*.jpg")) + sorted(
        p for p in (shared / "images").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    labels = shared / "oracle" / "map-tiny3"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    lines = []
    for index in range(count):
        source = sources[index % len(sources)]
        image = root / "images" / f"{index:03d}_{source.name}"
        shutil.copy(source, image)
        label = labels / f"{source.stem}.txt"
        (root / "labels" / f"{image.stem}.txt").write_text(label.read_text() if label.exists() else "")
        lines.append(str(image))
    (root / "valid.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(shared / "weights" / "coco.names", root / "coco.names")
    data = root / "bench.data"
    data.write_text(f"classes = 80\nvalid = {root / 'valid.txt'}\nnames = {root / 'coco.names'}\n")
    return data


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_darkpy(data: Path, cfg: Path, weights: Path, batch: int, device: str) -> Tuple[float, float]:
    """Wall and CPU seconds of the whole command (start-up, model load, inference, metrics), as a user runs
    it. CPU seconds are the steadier figure on a machine shared with other work."""
    command = [sys.executable, "-m", "darkpy", "map", "--data", str(data), "--cfg", str(cfg),
               "--weights", str(weights), "--batch", str(batch), "--device", device, "--no-progress"]
    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - start, _children_cpu_seconds() - cpu_start
    if done.returncode != 0:
        raise SystemExit(f"darkpy map failed:\n{done.stderr}")
    mean_ap = [line for line in done.stdout.splitlines() if "mean average precision" in line]
    print(f"  darkpy batch {batch}: {mean_ap[0].strip() if mean_ap else '?'}", file=sys.stderr)
    return elapsed, cpu


def time_breakdown(data: Path, cfg: Path, weights: Path, batch: int, device: str):
    """In one process: seconds of inference (image reading, network, decoding, NMS) and of darknet's map
    arithmetic (label reading, matching, ranking, AP for -points 0, 11 and 101)."""
    sys.path.insert(0, str(REPO))
    from argparse import Namespace

    from darkpy.data import DataProblems
    from darkpy.commands.common import build_detector
    from darkpy.evaluation.mapdata import accumulate_map, iterate_detections, load_map_dataset

    dataset = load_map_dataset(str(data))  # the in-process rows: wall seconds only
    _, detector = build_detector(Namespace(cfg=str(cfg), weights=str(weights), width=None, height=None,
                                           letter_box=False, device=device, batch=batch))
    problems = DataProblems()
    start = time.perf_counter()
    detected = list(iterate_detections(detector, dataset.image_paths, batch, problems, progress=False))
    inference = time.perf_counter() - start
    start = time.perf_counter()
    accumulator = accumulate_map(detected, dataset, 80, 0.5, 0.25, problems)
    for points in (0, 11, 101):
        accumulator.result(points)
    arithmetic = time.perf_counter() - start
    return inference, arithmetic


def time_pytorchyolo(data_root: Path, cfg: Path, weights: Path, batch: int):
    """pytorchyolo.test.evaluate_model_file on the same list (conf .005, NMS .45, IoU .5), or None."""
    try:
        from pytorchyolo.test import evaluate_model_file
    except ImportError:
        return None
    names = (data_root / "coco.names").read_text().splitlines()
    start = time.perf_counter()
    evaluate_model_file(str(cfg), str(weights), str(data_root / "valid.txt"), names, batch_size=batch,
                        img_size=416, n_cpu=2, iou_thres=0.5, conf_thres=0.005, nms_thres=0.45, verbose=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shared", default=str(REPO.parent / "shared"))
    args = parser.parse_args()
    shared = Path(args.shared)
    cfg = shared / "oracle" / "real-yolov3-tiny" / "cfg.cfg"  # yolov3-tiny at 416x416
    weights = shared / "weights" / "yolov3-tiny.weights"
    if not weights.exists():
        raise SystemExit(f"{weights}: not found (the benchmark needs ../shared)")

    rows = []
    with tempfile.TemporaryDirectory(prefix="darkpy-map-bench-") as tmp:
        data = make_dataset(shared, Path(tmp), args.images)
        for batch in args.batch:
            seconds, cpu = time_darkpy(data, cfg, weights, batch, args.device)
            rows.append((f"darkpy map (batch {batch}, {args.device})", seconds, cpu))
        inference, arithmetic = time_breakdown(data, cfg, weights, max(args.batch), args.device)
        rows.append(("  of which inference (in-process)", inference, None))
        rows.append(("  of which map arithmetic (3 AP kinds)", arithmetic, None))
        seconds = time_pytorchyolo(Path(tmp), cfg, weights, max(args.batch))
        pytorchyolo_note = None if seconds is not None else "pytorchyolo is not installed (pip install pytorchyolo)"
        if seconds is not None:
            rows.append((f"pytorchyolo test (batch {max(args.batch)}, in-process)", seconds, None))

    print(f"\nmap over {args.images} images, yolov3-tiny 416x416, {os.cpu_count()} CPU cores, "
          f"torch threads: {_torch_threads()}")
    print(f"| {'tool':<40} | {'seconds':>8} | {'images/s':>8} | {'CPU s':>8} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, seconds, cpu in rows:
        cpu_text = f"{cpu:8.1f}" if cpu is not None else f"{'':8}"
        print(f"| {name:<40} | {seconds:8.2f} | {args.images / seconds:8.1f} | {cpu_text} |")
    if pytorchyolo_note:
        print(pytorchyolo_note)
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
