"""`darkpy classifier predict|valid` against C Darknet's `classifier predict|valid` (AlexeyAB 59596d78 built with
OPENCV=1, so that it decodes the JPEGs as darkpy does). Darknet's printed lines are stored in
tests/fixtures/classifier/*_darknet.txt (timings replaced by X, image folders removed); the printed
probabilities may differ by one in their last digit (float rounding of the softmax), nothing else may.

Networks: a small non-square classifier (tiny.cfg, 40x56, weights drawn below) whose output depends strongly on
the image, so that resize_min and the clamped centre crop are checked; darknet19 and darknet53 of the zoo with
the oracle's seeded weights (make_weights.py), 1000 classes named class_000 ... class_999.
"""
import contextlib
import importlib.util
import io
import json
import re
import shutil
import struct
from pathlib import Path
from typing import List

import numpy as np
import pytest

from conftest import ORACLE, SHARED, require
from darkpy.cli import main
from darkpy.evaluation.classify import top_k
from darkpy.image import crop_image, resize_min

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "classifier"
IMAGES = ("dog", "eagle", "giraffe", "horses", "person", "scream")
TINY_NAMES = ("dog", "eagle", "horse", "person", "giraffe", "scream", "cat")
NUMBER = re.compile(r"\d+\.\d{6}")


def tiny_weights(path: Path) -> None:
    """The fixture's weights: Darknet's load order (conv 0: biases, scales, rolling mean and variance, weights;
    conv 1: biases, weights), drawn from numpy's PCG64(7)."""
    rng = np.random.default_rng(7)
    blocks = [rng.uniform(-0.5, 0.5, 8), rng.uniform(0.5, 1.5, 8), rng.uniform(-0.2, 0.2, 8),
              rng.uniform(0.01, 0.05, 8), rng.uniform(-1, 1, 8 * 3 * 3 * 3), rng.uniform(-0.5, 0.5, 7),
              rng.uniform(-1, 1, 7 * 8) * 3]
    with open(path, "wb") as f:
        f.write(struct.pack("<iiiQ", 0, 2, 5, 0))
        for block in blocks:
            f.write(block.astype("<f4").tobytes())


def copy_images(folder: Path) -> List[Path]:
    """The sample images under plain names (the valid labels are found in the path, so no other folder name
    may contain one)."""
    source = require(SHARED / "darknet" / "images")
    paths = []
    for name in IMAGES:
        shutil.copy(source / f"{name}.jpg", folder / f"{name}.jpg")
        paths.append(folder / f"{name}.jpg")
    return paths


def run_cli(argv: List[str]) -> List[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    text = re.sub(r"Predicted in [\d.]+ milli-seconds", "Predicted in X milli-seconds", out.getvalue())
    return [line for line in text.splitlines() if line]


def assert_same_lines(ours: List[str], theirs: List[str], folder: Path) -> None:
    """Equal lines, except that a printed probability may differ by one in its sixth decimal."""
    ours = [line.replace(f"{folder}/", "") for line in ours]
    assert len(ours) == len(theirs), "\n".join(ours)
    for mine, darknet in zip(ours, theirs):
        assert NUMBER.sub("#", mine) == NUMBER.sub("#", darknet), (mine, darknet)
        for a, b in zip(NUMBER.findall(mine), NUMBER.findall(darknet)):
            assert abs(float(a) - float(b)) <= 1.000001e-6, (mine, darknet)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    shutil.copy(FIXTURES / "tiny.cfg", tmp_path / "tiny.cfg")
    tiny_weights(tmp_path / "tiny.weights")
    (tmp_path / "tiny.names").write_text("".join(f"{n}\n" for n in TINY_NAMES))
    images = copy_images(tmp_path)
    (tmp_path / "valid.txt").write_text("".join(f"{p}\n" for p in images))
    (tmp_path / "tiny.data").write_text(f"classes=7\nnames={tmp_path}/tiny.names\nlabels={tmp_path}/tiny.names\n"
                                        f"top=3\nvalid={tmp_path}/valid.txt\n")
    return tmp_path


def test_predict_prints_darknets_lines(tiny: Path):
    lines = []
    for name in IMAGES:
        lines += run_cli(["classifier", "predict", str(tiny / "tiny.data"), str(tiny / "tiny.cfg"),
                          str(tiny / "tiny.weights"), str(tiny / f"{name}.jpg")])
    assert_same_lines(lines, (FIXTURES / "predict_darknet.txt").read_text().splitlines(), tiny)


def test_valid_prints_darknets_running_accuracy(tiny: Path):
    lines = run_cli(["classifier", "valid", str(tiny / "tiny.data"), str(tiny / "tiny.cfg"), str(tiny / "tiny.weights")])
    assert lines == (FIXTURES / "valid_darknet.txt").read_text().splitlines()


@pytest.mark.parametrize("network", ["darknet19", "darknet53"])
def test_zoo_classifiers_top5_as_darknet(network: str, tmp_path: Path):
    oracle = require(ORACLE / network)
    spec = importlib.util.spec_from_file_location("make_weights", require(ORACLE / "make_weights.py"))
    make_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_weights)
    make_weights.write_weights(json.loads((oracle / "layout.json").read_text()), str(tmp_path / "net.weights"))
    (tmp_path / "names.list").write_text("".join(f"class_{i:03d}\n" for i in range(1000)))
    (tmp_path / "net.data").write_text(f"classes=1000\nnames={tmp_path}/names.list\ntop=5\n")
    copy_images(tmp_path)
    lines = []
    for name in ("dog", "eagle"):
        lines += run_cli(["classifier", "predict", str(tmp_path / "net.data"), str(oracle / "cfg.cfg"),
                          str(tmp_path / "net.weights"), str(tmp_path / f"{name}.jpg")])
    assert_same_lines(lines, (FIXTURES / f"predict_{network}_darknet.txt").read_text().splitlines(), tmp_path)


def test_resize_min_and_clamped_crop():
    image = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)  # C, H=4, W=6
    assert resize_min(image, 4) is image  # the shorter side is already 4
    assert resize_min(image, 2).shape == (2, 2, 3)  # 6 * 2 // 4 = 3
    crop = crop_image(image, -1, 2, 3, 3)  # reaches past the left and bottom edges
    assert crop.shape == (2, 3, 3)
    np.testing.assert_array_equal(crop[0, 0], [image[0, 2, 0], image[0, 2, 0], image[0, 2, 1]])
    np.testing.assert_array_equal(crop[0, 2], crop[0, 1])  # row 4 is clamped to row 3


def test_top_k_keeps_the_earlier_of_equal_scores():
    assert top_k(np.array([0.1, 0.3, 0.3, 0.2]), 3) == [1, 2, 3]


def test_mismatched_classes_and_detector_cfgs_are_errors(tiny: Path, capsys):
    (tiny / "bad.data").write_text(f"classes=5\nnames={tiny}/tiny.names\n")
    code = main(["classifier", "predict", str(tiny / "bad.data"), str(tiny / "tiny.cfg"), str(tiny / "tiny.weights"),
                 str(tiny / "dog.jpg")])
    assert code == 2 and "classes=5" in capsys.readouterr().err
    detector_cfg = Path(__file__).resolve().parents[2] / "cfg" / "yolov3-tiny.cfg"
    code = main(["classifier", "predict", str(tiny / "tiny.data"), str(detector_cfg)])
    assert code == 1 and "detection layers" in capsys.readouterr().err


# ---- valid10, validmulti, validfull ------------------------------------------------------------------------------

VALID_MODES_FIXTURE = FIXTURES / "valid_modes_darknet.json"


@pytest.mark.parametrize("case", ["valid10", "valid10-nosoftmax", "validmulti-nosoftmax", "validfull-nosoftmax"])
def test_valid_modes_print_darknets_lines_from_darknets_scores(tiny: Path, case: str):
    """Darknet's running lines, and per image the summed scores its copy printed: ten crops of the image 32 px
    larger (valid10), five shorter sides with mirror images on the resized network (validmulti), the whole image
    at the network's width (validfull). validmulti/validfull ran on the cfg without [softmax], which Darknet's
    resize_network cannot resize (darkpy can: tested below)."""
    from darkpy.commands.common import load_model
    from darkpy.evaluation.classify import VALID_MODES, Classifier
    from darkpy.image import load_image
    expected = json.loads(VALID_MODES_FIXTURE.read_text())[case]
    mode, _, variant = case.partition("-")
    cfg = tiny / "tiny.cfg"
    if variant:
        cfg = tiny / "tiny-nosoftmax.cfg"
        shutil.copy(FIXTURES / "tiny-nosoftmax.cfg", cfg)
    lines = run_cli(["classifier", mode, str(tiny / "tiny.data"), str(cfg), str(tiny / "tiny.weights")])
    assert lines == expected["lines"]
    classifier = Classifier(load_model(str(cfg), str(tiny / "tiny.weights")).eval())
    for name, darknet_scores in zip(IMAGES, expected["scores"]):
        scores = VALID_MODES[mode](classifier, load_image(tiny / f"{name}.jpg"))
        np.testing.assert_allclose(scores, darknet_scores, rtol=2e-6, atol=2e-6 * np.abs(darknet_scores).max())


def test_validmulti_runs_a_softmax_classifier(tiny: Path, capsys):
    """Darknet's validmulti and validfull stop on a [softmax] network ('Cannot resize this type of layer');
    darkpy resizes it: probabilities summed over the ten views add up to 10."""
    from darkpy.commands.common import load_model
    from darkpy.evaluation.classify import VALID_MODES, Classifier
    from darkpy.image import load_image
    classifier = Classifier(load_model(str(tiny / "tiny.cfg"), str(tiny / "tiny.weights")).eval())
    scores = VALID_MODES["validmulti"](classifier, load_image(tiny / "dog.jpg"))
    assert scores.shape == (7,) and abs(float(scores.sum()) - 10) < 1e-4
    assert len(run_cli(["classifier", "validfull", str(tiny / "tiny.data"), str(tiny / "tiny.cfg"),
                        str(tiny / "tiny.weights")])) == len(IMAGES)
