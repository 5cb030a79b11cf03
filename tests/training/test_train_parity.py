"""Training equals C Darknet's, step by step: `darkpy train` from seeded weights, against the weights Darknet's
GPU training arithmetic reaches after k = 1, 2 and 5 iterations (oracle `train-steps`, read its README).

Each case folder holds a cfg, a one-image dataset, the initial weights' recipe (layout.json) and Darknet's
weights after k iterations. The test runs the `darkpy train` command itself (in-process, the same code path as
the command line) and compares, block by block, with the oracle's tolerance

    max|ours - darknet| <= rtol_k * max|darknet - init| + 4 * 2**-23 * max|darknet|

(rtol_k = the case's `recommended_rtol`: float rounding alone moves the k-step weights that far), the printed
loss, rate and image count of every iteration, and `seen`. On a failure it walks iteration 1 layer by layer
against the oracle's statistics and names the first layer whose output, delta or gradient departs.
"""
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import struct
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from conftest import ORACLE, require
from darkpy.cfg import CfgWarning
from darkpy.cli import main as cli_main
from darkpy.training.loss import DarknetLoss
from darkpy.model import Darknet

TRAIN_ORACLE = Path(os.environ.get("DARKPY_TRAIN_ORACLE_DIR", ORACLE / "train-steps"))
STEPS = (1, 2, 5)
ULP = 2.0 ** -23
CASE_FILES = ("case.cfg", "case.data", "case.names", "train.txt", "image.png", "image.txt")
# Darknet prints the loss with 6 decimals. Iteration 1 starts from identical weights: the README expects about
# 1e-6 relative (Darknet's CPU build sums batch-norm statistics sequentially in float32, which moves prn-mse's
# iteration-1 loss by 1.0e-6 from the exact value). Later iterations carry the weights' float-rounding drift.
LOSS_RTOL_FIRST = 2e-6
LOSS_RTOL_LATER = 1e-4

# A case whose reference, at some k, depends on a rounding decision that a float32 implementation makes one way or
# the other by chance: the steps it cannot be held to, and the evidence. The case still runs; its other steps must
# pass, and a pass at a listed step means the entry must go.
KNOWN_FRAGILE = {
    "prn-mse": ({5}, "k = 5: the trajectory passes near-tied max-pool windows (the oracle's summary.json "
                "fragile_points lists some at iterations 1, 2, 4 and 5). At iteration 2 the two largest inputs of"
                " layer 3 [maxpool] channel 14 window 801 are 1.9e-7 apart (3.0e-6 relative) in darkpy's "
                "arithmetic; decided the other way, the k = 5 departure drops from 7.8e-3 to 3.1e-3 of the change"
                " (rtol 3e-3), the rest coming from later near-ties. k = 1 itself hinges on a tie: layer 3 "
                "channel 8 window (25, 22), 2.7e-7 apart in exact arithmetic, is an exact float32 tie in darkpy's"
                " channels_last training arithmetic and goes to the first input, as Darknet's CPU build decided "
                "it (its sequential float32 batch-norm variance)."),
}


def case_dirs() -> List[Path]:
    if not TRAIN_ORACLE.is_dir():
        return []
    return sorted(p for p in TRAIN_ORACLE.iterdir() if (p / "layout.json").is_file())


def _make_weights_module():
    path = require(TRAIN_ORACLE.parent / "make_weights.py")
    spec = importlib.util.spec_from_file_location("make_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_case(case: Path, workdir: Path) -> Dict:
    """Copy the case's dataset into a writable folder and write its initial weights (the oracle's recipe)."""
    for name in CASE_FILES:
        shutil.copy(case / name, workdir / name)
    (workdir / "backup").mkdir()
    layout = json.loads((case / "layout.json").read_text())
    _make_weights_module().write_weights(layout, str(workdir / "init.weights"))
    return layout


def read_blocks(path: Path, layout: Dict):
    """seen and the float blocks of a .weights file, in layout.json's order."""
    raw = path.read_bytes()
    major, minor, _ = struct.unpack("<iii", raw[:12])
    wide = major * 10 + minor >= 2
    seen = struct.unpack("<Q" if wide else "<I", raw[12:20] if wide else raw[12:16])[0]
    values = np.frombuffer(raw[20 if wide else 16:], dtype="<f4").astype(np.float64)
    counts = [b["count"] for b in layout["blocks"]]
    assert values.size == sum(counts), f"{path}: {values.size} floats, the layout has {sum(counts)}"
    return seen, np.split(values, np.cumsum(counts)[:-1])


def weight_failures(ours, darknet, init, layout, rtol: float) -> Dict[int, str]:
    """The failing blocks, by layer (the first failing block of each)."""
    failures = {}
    for block, x, y, i in zip(layout["blocks"], ours, darknet, init):
        change = np.abs(y - i).max()
        error = np.abs(x - y).max()
        if not error <= rtol * change + 4 * ULP * np.abs(y).max():
            failures.setdefault(block["layer"], f"layer {block['layer']} {block['kind']}: max|ours - darknet| = "
                                f"{error:.3g} = {error / max(change, 1e-30):.3g} x its change {change:.3g} "
                                f"(rtol {rtol})")
    return failures


ITERATION_LINE = re.compile(r"^\s*(\d+): ([-\d.]+), ([-\d.]+) avg loss, ([\d.]+) rate, [\d.]+ seconds, (\d+) images",
                            re.M)


def run_darkpy_train(workdir: Path, k: int) -> List[tuple]:
    """`darkpy train --data case.data --cfg case.cfg --weights init.weights --max-batches K`: its iteration
    lines as (iteration, loss, avg_loss, rate, images)."""
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(workdir)  # case.data names its files relative to the folder, as Darknet reads them
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = cli_main(["train", "--data", "case.data", "--cfg", "case.cfg", "--weights", "init.weights",
                             "--max-batches", str(k)])
    finally:
        os.chdir(cwd)
    assert code == 0, out.getvalue()[-2000:]
    return [(int(m[1]), float(m[2]), float(m[3]), float(m[4]), int(m[5])) for m in ITERATION_LINE.finditer(
        out.getvalue().replace("\r", "\n"))]


def loss_failures(printed: List[tuple], reference: List[Dict]) -> List[str]:
    failures = []
    if [p[0] for p in printed] != [r["iteration"] for r in reference]:
        return [f"iterations printed {[p[0] for p in printed]}, Darknet {[r['iteration'] for r in reference]}"]
    for (n, loss, avg, rate, images), ref in zip(printed, reference):
        rtol = LOSS_RTOL_FIRST if n == 1 else LOSS_RTOL_LATER
        for what, ours, theirs in (("loss", loss, ref["loss"]), ("avg loss", avg, ref["avg_loss"])):
            if abs(ours - theirs) > rtol * abs(theirs) + 1e-6:
                failures.append(f"iteration {n}: {what} {ours:.6f}, Darknet {theirs:.6f} (rtol {rtol})")
        if f"{rate:.6f}" != f"{ref['rate']:.6f}" or images != ref["images"]:
            failures.append(f"iteration {n}: rate {rate:.6f} images {images}, Darknet {ref['rate']:.6f} "
                            f"{ref['images']}")
    return failures


# ---- iteration-1 walk: where does darkpy depart from Darknet? -------------------------------------------------
def _stat_departs(ours: torch.Tensor, reference: Dict, rtol: float = 1e-4) -> str:
    values = ours.detach().double()
    mine = {"abs_sum": values.abs().sum().item(), "std": values.std(unbiased=False).item()}
    bad = [f"{key} {mine[key]:.7g} vs {reference[key]:.7g}" for key in mine
           if key in reference and abs(mine[key] - reference[key]) > rtol * abs(reference[key]) + 1e-12]
    return ", ".join(bad)


def first_divergence(case: Path, workdir: Path) -> str:
    """Iteration 1 from Darknet's exact input: the first layer (forward order) whose output departs from
    iter1_layers.json, then the first (backward order) whose delta departs, then gradients."""
    stats = json.loads((case / "iter1_layers.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CfgWarning)
        model = Darknet.from_cfg(workdir / "case.cfg")
    model.load_weights(workdir / "init.weights")
    model.train()
    image = torch.from_numpy(np.load(case / "input.npy"))[None].repeat(stats["batch"], 1, 1, 1)
    labels = np.loadtxt(case / "image.txt", ndmin=2)
    truth = torch.from_numpy(np.concatenate([labels[:, 1:5], labels[:, :1]], axis=1).astype(np.float32))
    truths = truth[None].repeat(stats["batch"], 1, 1)
    outputs = model.forward_layers(image)
    for output in outputs:
        if output is not None and output.requires_grad:
            output.retain_grad()
    raw = [outputs[head.index] for head in model.heads]
    DarknetLoss(model.heads, warn=False)(raw, truths, model.width, model.height, stats["batch"]).surrogate.backward()
    layers = stats["layers"]
    shown = list(outputs)  # Darknet's training forward leaves a head's activated output in the layer
    for head in model.heads:
        shown[head.index] = head.activate(outputs[head.index])
    for entry in layers:
        bad = _stat_departs(shown[entry["index"]], entry["output"])
        if bad:
            return f"first output to depart: layer {entry['index']} [{entry['type']}]: {bad}"
    for entry in reversed(layers):
        grad = outputs[entry["index"]].grad
        bad = _stat_departs(grad, entry["delta"]) if grad is not None else ""
        if bad:
            return f"last delta to depart (backward starts there): layer {entry['index']} [{entry['type']}]: {bad}"
    for entry in layers:
        if "grad" in entry:
            layer = model.layers[entry["index"]]
            bad = _stat_departs(layer.weight.grad * stats["subdivisions"], entry["grad"]["weights"])
            if bad:
                return f"first weight gradient to depart: layer {entry['index']}: {bad}"
    return "iteration 1 agrees in every layer's statistics (the departure comes later)"


def check_k_steps(case: Path, workdir: Path, k: int, layout: Dict, init) -> tuple:
    """Train k iterations; (the layers whose weights fail, every problem as text)."""
    shutil.rmtree(workdir / "backup")
    (workdir / "backup").mkdir()
    printed = run_darkpy_train(workdir, k)
    seen, ours = read_blocks(workdir / "backup" / "case_final.weights", layout)
    reference = np.load(case / f"weights_k{k}.npz")
    darknet = [reference[f"b{j:03d}"].astype(np.float64) for j in range(len(layout["blocks"]))]
    rtol = json.loads((case / "summary.json").read_text())["recommended_rtol"][f"k{k}"]
    by_layer = weight_failures(ours, darknet, init, layout, rtol)
    run = json.loads((case / "train_log.json").read_text())["runs"][f"k{k}"]
    problems = list(by_layer.values()) + loss_failures(printed, run["iterations"])
    if seen != run["seen"]:
        problems.append(f"seen {seen}, Darknet {run['seen']}")
    return set(by_layer), problems


@pytest.mark.parametrize("case", case_dirs(), ids=lambda p: p.name)
def test_k_steps_equal_darknet(case: Path, tmp_path: Path):
    layout = prepare_case(case, tmp_path)
    _, init = read_blocks(tmp_path / "init.weights", layout)
    results = {k: check_k_steps(case, tmp_path, k, layout, init) for k in STEPS}
    fragile_steps, reason = KNOWN_FRAGILE.get(case.name, (set(), ""))
    report = [f"k={k}: {len(problems)} problems, first: " + "; ".join(problems[:3])
              for k, (_, problems) in results.items() if problems and k not in fragile_steps]
    if report:
        pytest.fail("\n".join(report) + "\n" + first_divergence(case, tmp_path))
    if fragile_steps:
        passing = sorted(k for k in fragile_steps if not results[k][1])
        assert not passing, f"{case.name} now passes at k = {passing}: remove it from KNOWN_FRAGILE"
        pytest.xfail(reason)


def test_the_oracle_is_there():
    """The parametrized test above collects nothing without the oracle: say so instead of passing silently."""
    require(TRAIN_ORACLE)
    assert case_dirs(), f"{TRAIN_ORACLE} holds no case folder (layout.json)"
