"""A tiny detector with a [crnn] layer and seeded random weights, for the tests of state across frames."""
from pathlib import Path
from typing import Tuple

import torch

from darkpy.model import Darknet

CFG = ("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=4\nsize=3\nstride=4\npad=1\nactivation=leaky\n"
       "[crnn]\nsize=3\npad=1\nhidden=4\noutput=12\nactivation=leaky\n"
       "[yolo]\nmask=0,1\nanchors=8,8,16,16\nclasses=1\nnum=2\n")


def tiny_recurrent_detector(folder: Path) -> Tuple[Path, Path]:
    """r.cfg and r.weights (torch seed 0) in `folder`."""
    cfg, weights = folder / "r.cfg", folder / "r.weights"
    cfg.write_text(CFG)
    torch.manual_seed(0)
    Darknet.from_cfg(cfg).save_weights(weights)
    return cfg, weights
