"""Median milliseconds per image, batch 1, on the CPU: darkpy (with each inference optimisation in turn) against
OpenCV's Darknet importer (cv2.dnn) and, when installed, onnxruntime on darkpy's ONNX export, all in the same
run. Run by hand; prints a table (and, with a CUDA device, darkpy's CUDA figures at batch 1 and 64, fp16).

    python bench/latency.py [--models yolov3-tiny yolov3-tiny-prn yolov4-tiny] [--threads 2] [--size 416]
                            [--rounds 40] [--no-compile] [--shared ../shared] [--clock wall|thread]
                            [--statistic median|min]

With onnxruntime installed, `darkpy detect`, `map` and `valid` run the network through it by default
(`--backend auto`, darkpy/evaluation/onnx_backend.py): the column `backend` is that path, the cached export opened
as the commands open it. The last column is that default path over onnxruntime's time (onnxruntime on the same
export, opened here), then darkpy's torch path's (+packed: `--backend torch`) and the best torch variant's.

yolov3-tiny runs with the original COCO weights (weights/ or ../shared/weights); the others with random weights
(batch-norm statistics set to mean 0, variance 1 so that values stay finite), written to a temporary .weights
file that OpenCV reads too. Measurements are interleaved: each round times one forward pass of every engine in
turn, so a machine whose load changes during the run slows all engines alike.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from darkpy.evaluation.inference import prepare_for_inference  # noqa: E402
from darkpy.model import Darknet  # noqa: E402

DEFAULT_MODELS = ("yolov3-tiny", "yolov3-tiny-prn", "yolov4-tiny")
OPENCV_ELSEWHERE_MS = {"yolov3-tiny": 30.0, "yolov3-tiny-prn": 36.0, "yolov4-tiny": 45.0}  # from the issue
# darkpy variants, each adding one optimisation to the previous one (compile and TorchScript start from the best
# eager variant, channels_last).
# "+packed" (oneDNN weights reordered once, activation fused: prepare_for_inference) is darkpy's torch path, what
# `darkpy detect` and `darkpy map` run with `--backend torch` or without onnxruntime.
VARIANTS = ("eager", "+fuse", "+inference_mode", "+channels_last", "+packed", "torchscript", "compile")
DEFAULT_VARIANT = "+packed"  # the torch path of the commands (`--backend torch`)
BACKEND = "backend"  # the commands' default with onnxruntime installed (`--backend auto`)
STATISTICS = {"median": statistics.median, "min": min}


def find_cfg(name: str, shared: Path) -> Path:
    for folder in (REPO / "cfg", shared / "darknet" / "cfg"):
        if (folder / f"{name}.cfg").exists():
            return folder / f"{name}.cfg"
    raise SystemExit(f"{name}.cfg is neither in {REPO / 'cfg'} nor in {shared / 'darknet' / 'cfg'}")


def find_real_weights(name: str, shared: Path) -> Optional[Path]:
    for folder in (REPO / "weights", shared / "weights"):
        if (folder / f"{name}.weights").exists():
            return folder / f"{name}.weights"
    return None


def build_model(cfg: Path, size: int) -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet.from_cfg(cfg, width=size, height=size)


def random_weights(cfg: Path, size: int, out: Path) -> Path:
    """Darknet's random initialisation with finite batch-norm statistics, saved as a .weights file."""
    torch.manual_seed(0)
    model = build_model(cfg, size)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.fill_(1.0)
            elif name.endswith("running_mean"):
                buffer.zero_()
    model.save_weights(out)
    return out


# ============================================================================ engines: name -> one forward pass

def load_model(cfg: Path, weights: Path, size: int, fuse: bool, channels_last: bool = False) -> Darknet:
    """The network with its weights, in eval mode; batch norm folded and channels_last on request."""
    model = build_model(cfg, size)
    model.load_weights(weights)
    model.eval()
    if fuse:
        model.fuse()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def inference_call(model, inp: torch.Tensor) -> Callable[[], object]:
    def call():
        with torch.inference_mode():
            return model(inp)
    return call


def darkpy_engines(cfg: Path, weights: Path, size: int, image: np.ndarray, compile_too: bool,
                   log: Callable[[str], None]) -> Dict[str, Callable[[], object]]:
    """Each variant on its own model copy, so that they can be timed side by side."""
    x = torch.from_numpy(image)
    engines: Dict[str, Callable[[], object]] = {}

    def load(fuse: bool, channels_last: bool = False) -> Darknet:
        return load_model(cfg, weights, size, fuse, channels_last)

    def no_grad_call(model):
        def call():
            with torch.no_grad():
                return model(x)
        return call

    engines["eager"] = no_grad_call(load(fuse=False))
    engines["+fuse"] = no_grad_call(load(fuse=True))
    engines["+inference_mode"] = inference_call(load(fuse=True), x)
    x_last = x.contiguous(memory_format=torch.channels_last)
    best_eager = load(fuse=True, channels_last=True)
    engines["+channels_last"] = inference_call(best_eager, x_last)
    engines["+packed"] = inference_call(prepare_for_inference(load(fuse=True), "cpu"), x_last)

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on Python-level shape checks
            traced = torch.jit.trace(ListToTuple(best_eager), (x_last,), check_trace=False)
            # freeze inlines the weights; optimize_for_inference (MKLDNN layouts) was slower here (57 vs 34 ms)
            traced = torch.jit.freeze(traced.eval())
        engines["torchscript"] = inference_call(traced, x_last)
    except Exception as exc:  # report and go on: the other engines still make a table
        log(f"  torchscript failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

    if compile_too:
        try:
            # freezing: inductor folds the weights in as constants and prepacks them for oneDNN (fused convolution
            # and activation, as the packed path), then fuses the elementwise operators between the convolutions
            compiled = torch.compile(load(fuse=True, channels_last=True), options={"freezing": True})
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(x_last)
            log(f"  torch.compile: first call (compilation) {time.perf_counter() - start:.0f} s")
            engines["compile"] = inference_call(compiled, x_last)
        except Exception as exc:
            log(f"  torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return engines


class ListToTuple(torch.nn.Module):
    """The model with a tuple output (torch.jit.trace does not return lists)."""

    def __init__(self, model: Darknet):
        super().__init__()
        self.model = model

    def forward(self, x):
        return tuple(self.model(x))


def opencv_engine(cfg: Path, weights: Path, image: np.ndarray, threads: int) -> Callable[[], object]:
    import cv2

    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    names = net.getUnconnectedOutLayersNames()

    def call():
        net.setInput(image)
        return net.forward(names)
    return call


def onnxruntime_engine(cfg: Path, weights: Path, size: int, image: np.ndarray, threads: int,
                       folder: Path) -> Optional[Callable[[], object]]:
    try:
        import onnxruntime
    except ImportError:
        return None
    from darkpy.export import INPUT_NAME, export_onnx

    model = build_model(cfg, size)
    model.load_weights(weights)
    path = folder / f"{cfg.stem}.onnx"
    export_onnx(model, path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def call():
        return session.run(None, {INPUT_NAME: image})
    return call


def backend_engine(cfg: Path, weights: Path, size: int, image: np.ndarray) -> Callable[[], object]:
    """What `darkpy detect` runs with onnxruntime installed: the commands' set-up (ready_for_inference, --backend
    onnxruntime; the export cached in DARKPY_CACHE_DIR), then Detector.forward's call. Needs onnxruntime."""
    from darkpy.commands.common import ready_for_inference

    runtime = ready_for_inference(load_model(cfg, weights, size, fuse=False), "cpu", backend="onnxruntime")
    return lambda: runtime(image)


# ============================================================================ timing

def interleaved_medians(engines: Dict[str, Callable[[], object]], rounds: int, warmup: int,
                        clock: Callable[[], float] = time.perf_counter,
                        statistic: Callable[[List[float]], float] = statistics.median) -> Dict[str, float]:
    """Median (or `statistic`) milliseconds per call of each engine, timed one call each per round."""
    for call in engines.values():
        for _ in range(warmup):
            call()
    samples: Dict[str, List[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, call in engines.items():
            start = clock()
            call()
            samples[name].append((clock() - start) * 1e3)
    return {name: statistic(values) for name, values in samples.items()}


def cpu_table(models: List[str], args, log: Callable[[str], None]) -> List[Dict[str, float]]:
    rows = []
    rng = np.random.default_rng(0)
    image = rng.random((1, 3, args.size, args.size), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="darkpy-latency-") as tmp:
        for name in models:
            cfg = find_cfg(name, args.shared)
            weights = find_real_weights(name, args.shared) if name == "yolov3-tiny" else None
            weights = weights or random_weights(cfg, args.size, Path(tmp) / f"{name}.weights")
            log(f"{name}: {cfg} + {weights}")
            engines = {"OpenCV": opencv_engine(cfg, weights, image, args.threads)}
            engines.update(darkpy_engines(cfg, weights, args.size, image, not args.no_compile, log))
            ort = onnxruntime_engine(cfg, weights, args.size, image, args.threads, Path(tmp))
            if ort is not None:
                engines["onnxruntime"] = ort
                engines[BACKEND] = backend_engine(cfg, weights, args.size, image)
            clock = time.thread_time if args.clock == "thread" else time.perf_counter
            medians = interleaved_medians(engines, args.rounds, args.warmup, clock, STATISTICS[args.statistic])
            medians["model"] = name
            rows.append(medians)
    return rows


def print_cpu_table(rows: List[Dict[str, float]], args) -> None:
    columns = ["OpenCV"] + [v for v in VARIANTS if any(v in r for r in rows)]
    if any("onnxruntime" in r for r in rows):
        columns += ["onnxruntime", BACKEND]
    import cv2

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nCPU, {args.threads} threads, batch 1, {args.size}x{args.size}: {args.statistic} ms per image "
          f"({args.rounds} interleaved rounds; torch {torch.__version__}, OpenCV {cv2.__version__}{_ort_version()}; "
          f"{os.cpu_count()} CPUs, load average {load}; {args.clock} clock; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})")
    ratios = ["best darkpy / OpenCV"] + (["darkpy / onnxruntime"] if "onnxruntime" in columns else [])
    print(f"| model | {' | '.join(columns + ratios)} |")
    print("|" + "---|" * (len(columns) + len(ratios) + 1))
    for row in rows:
        cells = [f"{row[c]:.1f}" if c in row else "-" for c in columns]
        darkpy = {v: row[v] for v in VARIANTS if v in row}
        best = min(darkpy, key=darkpy.get)
        cells.append(f"{darkpy[best] / row['OpenCV']:.2f}x ({best})")
        if "onnxruntime" in row:  # the default path (detect, map), the torch path, the best torch variant
            cells.append(f"{row[BACKEND] / row['onnxruntime']:.2f}x ({BACKEND}), "
                         f"{row[DEFAULT_VARIANT] / row['onnxruntime']:.2f}x ({DEFAULT_VARIANT}), "
                         f"{darkpy[best] / row['onnxruntime']:.2f}x ({best})")
        print(f"| {row['model']} | {' | '.join(cells)} |")
    print("\nOpenCV measured elsewhere (issue): " +
          ", ".join(f"{k} {v:.0f} ms" for k, v in OPENCV_ELSEWHERE_MS.items()))


def _ort_version() -> str:
    try:
        import onnxruntime
    except ImportError:
        return ""
    return f", onnxruntime {onnxruntime.__version__}"


def cuda_table(models: List[str], args, log: Callable[[str], None]) -> None:
    """darkpy on the first CUDA device: fused, channels_last, float16; batch 1 and 64, ms per batch and per image."""
    device = torch.device("cuda:0")
    print(f"\nCUDA ({torch.cuda.get_device_name(device)}), {args.size}x{args.size}, fused, channels_last, fp16: "
          f"median ms")
    print("| model | batch 1 (ms) | batch 64 (ms per batch) | batch 64 (ms per image) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="darkpy-latency-") as tmp:
        for name in models:
            cfg = find_cfg(name, args.shared)
            weights = find_real_weights(name, args.shared) if name == "yolov3-tiny" else None
            weights = weights or random_weights(cfg, args.size, Path(tmp) / f"{name}.weights")
            model = build_model(cfg, args.size)
            model.load_weights(weights)
            model = model.eval().fuse().to(device).half().to(memory_format=torch.channels_last)
            figures = []
            for batch in (1, 64):
                x = torch.rand(batch, 3, args.size, args.size, device=device).half()
                x = x.contiguous(memory_format=torch.channels_last)
                figures.append(_cuda_median_ms(model, x, args.rounds, args.warmup))
            print(f"| {name} | {figures[0]:.2f} | {figures[1]:.1f} | {figures[1] / 64:.3f} |")


def _cuda_median_ms(model, x, rounds: int, warmup: int) -> float:
    samples = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        torch.cuda.synchronize()
        for _ in range(rounds):
            start = time.perf_counter()
            model(x)
            torch.cuda.synchronize()  # the kernels are asynchronous: wait for them before reading the clock
            samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--rounds", type=int, default=40, help="timed calls per engine")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per engine first")
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall",
                        help="thread: CPU time of the calling thread (with --threads 1 every engine computes in it), "
                             "which other processes on a busy machine do not inflate")
    parser.add_argument("--statistic", choices=sorted(STATISTICS), default="median",
                        help="min: the fastest of the rounds, each engine's time when the machine let it run "
                             "undisturbed (for a machine other work shares; with --threads 2 the wall clock "
                             "is the only clock)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA figures even with a GPU")
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("DARKPY_SHARED_DIR", REPO.parent / "shared")))
    args = parser.parse_args(argv)
    os.environ["DARKPY_CACHE_DIR"] = tempfile.mkdtemp(prefix="darkpy-latency-cache-")  # a fresh export each run
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread measures one thread: use it with --threads 1")

    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows = cpu_table(args.models, args, log)
    print_cpu_table(rows, args)
    if torch.cuda.is_available() and not args.no_cuda:
        cuda_table(args.models, args, log)
    elif not args.no_cuda:
        print("\nno CUDA device: CUDA figures not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
