"""darkpy against onnxruntime at several threads, each engine in a process of its own. Run by hand; prints a table.

    python bench/latency_processes.py [--models yolov3-tiny yolov3-tiny-prn yolov4-tiny] [--threads 2]
                                      [--rounds 60] [--repeats 3] [--shared ../shared]

bench/latency.py times every engine in one process, call by call; at two threads that is unfair both ways:
PyTorch's OpenMP threads keep spinning for a while after each darkpy call (libgomp's default wait policy) and
take the cores onnxruntime's next call needs, and with OMP_WAIT_POLICY=PASSIVE they sleep between operators
instead. Here each engine runs alone: the commands' default with onnxruntime installed (`--backend auto`: the
cached export opened as `darkpy detect` opens it, OMP_WAIT_POLICY=PASSIVE as the command sets it), darkpy's torch
path (`--backend torch`, `prepare_for_inference`) once with OMP_WAIT_POLICY=PASSIVE — what the `darkpy` command
sets unless the user set it — and once with libgomp's default (spinning), and onnxruntime on darkpy's ONNX export
opened here. Median milliseconds per image of `rounds`
calls after 10 warm-up calls, batch 1, wall clock; the same weights as bench/latency.py.

With --busy, a process computing without pause runs beside every engine (one of the machine's cores taken, as
by a data loader or another job): what the engines' waiting threads cost when they share the cores.

A shared machine's speed drifts over seconds (another tenant's load), which moves a single process's median by
10-20 %. So the engines' processes take turns, `repeats` times each, and the table gives the median of each
engine's process medians, with the range of the per-turn ratios (the backend against the onnxruntime process of
the same turn) to show how far the drift went.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency  # noqa: E402  (bench/latency.py: the models, weights and engines)

BACKEND = "darkpy, onnxruntime backend (the commands' default)"
PASSIVE, SPINNING, ORT = "darkpy torch, PASSIVE", "darkpy torch, spinning", "onnxruntime"
SETTINGS = {BACKEND: ("backend", "PASSIVE"), PASSIVE: ("darkpy", "PASSIVE"), SPINNING: ("darkpy", None),
            ORT: ("onnxruntime", None)}  # (engine, OMP_WAIT_POLICY or None for libgomp's default)
WARMUP = 10


def worker(engine: str, cfg: Path, weights: Path, size: int, threads: int, rounds: int) -> float:
    """Median ms of one engine, in this process."""
    torch.set_num_threads(threads)
    image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    if engine == "onnxruntime":
        call = latency.onnxruntime_engine(cfg, weights, size, image, threads, Path(tempfile.mkdtemp()))
    elif engine == "backend":
        call = latency.backend_engine(cfg, weights, size, image)
    else:  # the torch path, as `darkpy detect --backend torch` runs it
        model = latency.prepare_for_inference(latency.load_model(cfg, weights, size, fuse=True), "cpu")
        call = latency.inference_call(model, torch.from_numpy(image).contiguous(memory_format=torch.channels_last))
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def in_process(engine: str, policy, cfg: Path, weights: Path, args) -> float:
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        environment["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, __file__, "--worker", engine, str(cfg), str(weights), str(args.size),
               str(args.threads), str(args.rounds)]
    return float(subprocess.run(command, env=environment, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        engine, cfg, weights, size, threads, rounds = sys.argv[2:8]
        print(worker(engine, Path(cfg), Path(weights), int(size), int(threads), int(rounds)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(latency.DEFAULT_MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="turns of the engines' processes per model")
    parser.add_argument("--shared", type=Path, default=latency.REPO.parent / "shared")
    parser.add_argument("--busy", action="store_true", help="a busy process beside the engines all along")
    args = parser.parse_args()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        run_table(args)
    finally:
        if busy is not None:
            busy.kill()


def run_table(args: argparse.Namespace) -> None:
    os.environ["DARKPY_CACHE_DIR"] = tempfile.mkdtemp(prefix="darkpy-latency-cache-")  # exported once per model
    import onnxruntime
    print(f"CPU, {args.threads} threads, batch 1, {args.size}x{args.size}, each engine in its own process: median "
          f"ms per image ({args.rounds} calls, median of {args.repeats} processes taking turns; torch "
          f"{torch.__version__}, onnxruntime {onnxruntime.__version__}; {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}{'; a busy process beside them' if args.busy else ''})")
    print("| model | " + " | ".join(SETTINGS) + " | darkpy / onnxruntime (backend; torch PASSIVE, spinning) "
          "| backend / onnxruntime per turn |")
    print("|---|" + "---|" * (len(SETTINGS) + 2))
    with tempfile.TemporaryDirectory(prefix="darkpy-latency-") as tmp:
        for name in args.models:
            cfg = latency.find_cfg(name, args.shared)
            weights = latency.find_real_weights(name, args.shared) if name == "yolov3-tiny" else None
            weights = weights or latency.random_weights(cfg, args.size, Path(tmp) / f"{name}.weights")
            turns = [{column: in_process(engine, policy, cfg, weights, args)
                      for column, (engine, policy) in SETTINGS.items()} for _ in range(max(1, args.repeats))]
            ms = {column: statistics.median(turn[column] for turn in turns) for column in SETTINGS}
            ratios = f"{ms[BACKEND] / ms[ORT]:.2f}x; {ms[PASSIVE] / ms[ORT]:.2f}x, {ms[SPINNING] / ms[ORT]:.2f}x"
            per_turn = [turn[BACKEND] / turn[ORT] for turn in turns]
            print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in ms.values()) + f" | {ratios} "
                  f"| {min(per_turn):.2f}-{max(per_turn):.2f}x |")


if __name__ == "__main__":
    main()
