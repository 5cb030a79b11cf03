"""How close `darkpy train` comes to C Darknet's training, case by case: the table behind docs/train.md.

Run by hand (it is not a test; tests/training/test_train_parity.py asserts the same comparisons):

    python bench/train_parity.py                                  # ../shared/oracle/train-steps
    DARKPY_TRAIN_ORACLE_DIR=/path/to/other/train-steps python bench/train_parity.py

For every case and k = 1, 2, 5 it runs `darkpy train` from the case's seeded weights and prints the largest
max|ours - darknet| / max|darknet - init| over the weight blocks (the tolerance is the case's rtol_k), the
relative difference of every printed loss from Darknet's, and `seen`.
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "training")]

from test_train_parity import (STEPS, case_dirs, prepare_case, read_blocks,  # noqa: E402
                               run_darkpy_train)


def largest_relative_error(ours, darknet, init) -> float:
    return max(np.abs(x - y).max() / max(np.abs(y - i).max(), 1e-30) for x, y, i in zip(ours, darknet, init))


def main() -> int:
    cases = case_dirs()
    if not cases:
        print("no train-steps cases found (DARKPY_TRAIN_ORACLE_DIR or ../shared/oracle/train-steps)")
        return 1
    print(f"{'case':22s} {'k':>2s} {'rtol':>6s} {'max err/change':>15s} {'largest loss rel diff':>22s} seen")
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            layout = prepare_case(case, workdir)
            _, init = read_blocks(workdir / "init.weights", layout)
            summary = json.loads((case / "summary.json").read_text())
            runs = json.loads((case / "train_log.json").read_text())["runs"]
            for k in STEPS:
                for old in (workdir / "backup").iterdir():
                    old.unlink()
                printed = run_darkpy_train(workdir, k)
                seen, ours = read_blocks(workdir / "backup" / "case_final.weights", layout)
                reference = np.load(case / f"weights_k{k}.npz")
                darknet = [reference[f"b{j:03d}"].astype(np.float64) for j in range(len(layout["blocks"]))]
                losses = [abs(p[1] - r["loss"]) / abs(r["loss"]) for p, r in zip(printed, runs[f"k{k}"]["iterations"])]
                print(f"{case.name:22s} {k:2d} {summary['recommended_rtol'][f'k{k}']:6.0e} "
                      f"{largest_relative_error(ours, darknet, init):15.2e} {max(losses):22.1e} "
                      f"{seen} (Darknet {runs[f'k{k}']['seen']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
