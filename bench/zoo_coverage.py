"""Which cfgs of a folder darkpy builds, and why it refuses the others. Run by hand:

    python bench/zoo_coverage.py FOLDER [FOLDER ...]

For Darknet's own cfg/ folder (AlexeyAB/darknet, 87 cfgs) this measures the coverage figure README.md states.
Each cfg is built at its [net] size with random weights (nothing is run); unused-key warnings are silenced, as the
zoo cfgs carry keys Darknet itself ignores. Prints one line per cfg, `built` or `refused` with darkpy's one-line
reason (file:line: option ...), then the totals.
"""
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from darkpy.cfg import CfgError  # noqa: E402
from darkpy.model import Darknet  # noqa: E402


def refusal(cfg: Path) -> Optional[str]:
    """None when darkpy builds the cfg, else the reason it gives (a CfgError's message)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Darknet.from_cfg(cfg)
    except CfgError as error:
        return str(error)
    return None


def coverage(folder: Path) -> List[Tuple[Path, Optional[str]]]:
    """Every *.cfg of the folder, sorted by name, with its refusal (None: built)."""
    return [(cfg, refusal(cfg)) for cfg in sorted(Path(folder).glob("*.cfg"))]


def main(argv: List[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for folder in argv:
        outcomes = coverage(Path(folder))
        for cfg, reason in outcomes:
            print(f"built    {cfg.name}" if reason is None else f"refused  {cfg.name}: {reason}")
        built = sum(reason is None for _, reason in outcomes)
        print(f"{folder}: {built} of {len(outcomes)} cfgs built, {len(outcomes) - built} refused")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
