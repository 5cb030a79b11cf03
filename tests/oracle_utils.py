"""Helpers for comparing darkpy with the C Darknet fixtures in ../shared/oracle (see its README)."""
import importlib.util
import json
from pathlib import Path

import numpy as np


def fixture_dirs(oracle: Path):
    """Every zoo fixture folder: one with cfg.cfg, layout.json and input.npy."""
    return sorted(p for p in oracle.iterdir() if (p / "layout.json").exists() and (p / "input.npy").exists())


def make_weights(oracle: Path, fixture: Path, out: Path) -> Path:
    """Write the fixture's seeded weights with the oracle's own make_weights.py (its recipe may evolve)."""
    spec = importlib.util.spec_from_file_location("oracle_make_weights", oracle / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_weights(json.loads((fixture / "layout.json").read_text()), str(out))
    return out


def close_to_darknet(ours: np.ndarray, darknet: np.ndarray) -> bool:
    """The oracle's tolerance: max|ours - darknet| <= 1e-4 * max|darknet| + 1e-6 (Darknet fuses batch norm)."""
    return float(np.abs(ours - darknet).max()) <= 1e-4 * float(np.abs(darknet).max()) + 1e-6


def layer_stats_close(ours: np.ndarray, expected: dict) -> bool:
    """Compare one layer's output with layers.json statistics (mean, std, min, max, abs_sum)."""
    scale = max(abs(expected["max"]), abs(expected["min"]), 1e-6)
    checks = [
        abs(float(ours.mean()) - expected["mean"]) <= 1e-4 * scale + 1e-6,
        abs(float(ours.max()) - expected["max"]) <= 1e-4 * scale + 1e-6,
        abs(float(ours.min()) - expected["min"]) <= 1e-4 * scale + 1e-6,
        abs(float(np.abs(ours).sum()) - expected["abs_sum"]) <= 1e-4 * max(expected["abs_sum"], 1e-6) + 1e-6,
    ]
    return all(checks)
