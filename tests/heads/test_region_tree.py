"""[region] with YOLO9000's softmax tree (tree=) and class map (map=) in training: C Darknet's
forward_region_layer delta and cost (tests/fixtures/region-tree-loss, made with a small C program calling it on
the stored raw values and truths), and the map file's checks."""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from conftest import LOCAL_FIXTURES
from darkpy.cfg import CfgError
from darkpy.model import Darknet

FIXTURE = LOCAL_FIXTURES / "region-tree-loss"


def _head(tmp_path, cfg_text):
    for name in ("tree-small.tree", "small.map"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    path = tmp_path / "r.cfg"
    path.write_text(cfg_text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet.from_cfg(path).heads[0]


@pytest.mark.parametrize("case", range(3))
def test_tree_and_map_deltas_equal_darknets(tmp_path, case):
    """Cases: the tree with labels on inner and leaf classes (seen past 12800, and at 0 with the anchor-prior
    term), and the tree with map= turning label classes 0..2 into tree classes 3, 5, 2."""
    fixture = json.loads((FIXTURE / "darknet.json").read_text())["cases"][case]
    head = _head(tmp_path, fixture["cfg"])
    assert head.tree is not None and (head.class_map is not None) == (case == 2)
    raw = torch.tensor(fixture["raw"]).view(2, 3, 11, 3, 3)
    truths = np.array(fixture["truths"], np.float32)
    delta, stats = head.deltas(head.activate(raw).numpy(), truths, (3, 3), fixture["seen"])
    np.testing.assert_allclose(delta, np.array(fixture["delta"], np.float32), atol=1e-6)
    assert stats.cost == pytest.approx(fixture["cost"], rel=1e-6)
    assert stats.count == 5 and stats.wrong_labels == 0


def test_the_tree_changes_the_class_delta(tmp_path):
    """Guard of the test above: without the tree's groups the same labels give another delta."""
    fixture = json.loads((FIXTURE / "darknet.json").read_text())["cases"][0]
    head = _head(tmp_path, fixture["cfg"].replace("tree=tree-small.tree", ""))
    raw = torch.tensor(fixture["raw"]).view(2, 3, 11, 3, 3)
    delta, _ = head.deltas(head.activate(raw).numpy(), np.array(fixture["truths"], np.float32), (3, 3), 100000)
    assert np.abs(delta - np.array(fixture["delta"], np.float32)).max() > 0.1


def test_a_label_the_map_does_not_list_is_counted(tmp_path):
    fixture = json.loads((FIXTURE / "darknet.json").read_text())["cases"][2]
    head = _head(tmp_path, fixture["cfg"])
    truths = np.array(fixture["truths"], np.float32)
    truths[0, 0, 4] = 4  # small.map has 3 lines
    _, stats = head.deltas(head.activate(torch.tensor(fixture["raw"]).view(2, 3, 11, 3, 3)).numpy(), truths,
                           (3, 3), 100000)
    assert stats.wrong_labels == 1 and stats.count == 4


@pytest.mark.parametrize("map_text, message", [("3\n7\n", "r.cfg:25: option 'map'"), ("3\nfive\n", "small.map:2"),
                                               ("", "the class map is empty")])
def test_bad_map_files_name_the_line(tmp_path, map_text, message):
    fixture = json.loads((FIXTURE / "darknet.json").read_text())["cases"][2]
    shutil.copy(FIXTURE / "tree-small.tree", tmp_path / "tree-small.tree")
    (tmp_path / "small.map").write_text(map_text)
    path = tmp_path / "r.cfg"
    path.write_text(fixture["cfg"])
    with pytest.raises(CfgError, match=message):
        Darknet.from_cfg(path)
