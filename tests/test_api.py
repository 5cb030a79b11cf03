"""darkpy.load: the one-call Python API gives Darknet's lines, -out JSON and boxes (compared with what C Darknet
printed for the same images, tests/fixtures/darknet_cli), and never guesses an array's colour order."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ORACLE, REPO, SHARED, require

import darkpy
from helpers.recurrent import tiny_recurrent_detector

FIXTURES = REPO / "tests" / "fixtures" / "darknet_cli"
CFG = ORACLE / "real-yolov3-tiny" / "cfg.cfg"
WEIGHTS = SHARED / "weights" / "yolov3-tiny.weights"


@pytest.fixture(scope="module")
def net():
    return darkpy.load(require(CFG), require(WEIGHTS), names=require(SHARED / "weights" / "coco.names"),
                       device="cpu")


def _darknet_lines(image: str):
    """The lines C Darknet printed for one image of the stdin-list fixture."""
    lines, current = {}, None
    for line in (FIXTURES / "test_stdin_ext_output.stdout").read_text().splitlines():
        if "Predicted in" in line:
            current = line.split(":")[0]
            lines[current] = []
        elif current:
            lines[current].append(line)
    return lines[image]


def test_lines_and_boxes_are_darknets(net):
    result = net(require(SHARED / "images" / "grace_hopper.jpg"))
    assert result.lines() == _darknet_lines("images/grace_hopper.jpg")
    assert result.names == ["tie", "tie", "tie"] and len(result) == 3
    assert result.scores == pytest.approx([0.8607, 0.4713, 0.2641], abs=1e-4)
    height, width = result.image.shape[:2]
    # Darknet's -ext_output: left_x 216 top_y 415 width 76 height 124 for the first tie
    left, top, right, bottom = result.xyxy[0]
    assert (round(left), round(top), round(right - left), round(bottom - top)) == (216, 415, 76, 124)
    assert result.xywh[0] == pytest.approx(result.xywhn[0] * [width, height, width, height])
    record = json.loads(result.to_json())
    assert [o["name"] for o in record["objects"]] == ["tie", "tie", "tie"]


def test_arrays_must_say_their_colour_order(net):
    path = require(SHARED / "images" / "coffee.png")
    bgr = cv2.imread(str(path))
    with pytest.raises(ValueError, match="bgr=True"):
        net(bgr)
    from_bgr, from_rgb, from_path = net([bgr, bgr[:, :, ::-1].copy(), path], bgr=True)[0], \
        net(bgr[:, :, ::-1].copy(), bgr=False), net(path)
    assert from_bgr.lines() == from_rgb.lines() == from_path.lines() == _darknet_lines("images/coffee.png")
    assert from_bgr.path is None and from_path.path == str(path)


def test_plot_and_save(net, tmp_path):
    result = net(require(SHARED / "images" / "coffee.png"))
    picture = result.plot()
    assert picture.shape == result.image.shape and not np.array_equal(picture, result.image[:, :, ::-1])
    result.save(tmp_path / "out.jpg")
    assert cv2.imread(str(tmp_path / "out.jpg")).shape == picture.shape


def test_import_stays_cheap():
    code = "import sys, darkpy; assert 'torch' not in sys.modules and callable(darkpy.load)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_a_classifier_gives_darknets_top_classes(tmp_path):
    """A classifier cfg (darknet19, the oracle's seeded weights): the same call gives the top classes, printed
    as `darknet classifier predict` printed them (resize_min, centre crop, top_k)."""
    from oracle_utils import make_weights
    folder = require(ORACLE / "darknet19")
    weights = make_weights(ORACLE, folder, tmp_path / "darknet19.weights")
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class{i}\n" for i in range(1000)))
    classifier = darkpy.load(folder / "cfg.cfg", weights, names=names, device="cpu")
    printed = (FIXTURES / "classifier_predict_darknet19.txt").read_text().splitlines()
    images = [require(SHARED / "darknet" / "images" / "dog.jpg"), require(SHARED / "images" / "coffee.png")]
    for result, darknet in zip(classifier(images), (printed[:5], printed[5:])):
        assert [line.split(":")[0] for line in result.lines(5)] == [line.split(":")[0] for line in darknet]
        assert [p for _, p in result.top(5)] == pytest.approx([float(line.split()[1]) for line in darknet],
                                                               abs=1.5e-6)
    # a classifier's .data file names its classes with labels= when it has no names= (predict_classifier)
    data = tmp_path / "imagenet.data"
    data.write_text(f"classes=1000\nlabels={names}\n")
    by_labels = darkpy.load(folder / "cfg.cfg", weights, data=data, device="cpu")
    assert by_labels(images[0]).lines(5) == classifier(images[0]).lines(5)


def test_recurrent_network_carries_its_state_through_a_video_until_reset(tmp_path):
    cfg, weights = tiny_recurrent_detector(tmp_path)
    net = darkpy.load(cfg, weights, names=None, device="cpu", thresh=0.001, batch=2)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]

    def scores(results):  # each frame's objectness values, sorted (a batched convolution rounds differently)
        return [np.sort([d.objectness for d in r.detections]) for r in results]

    def same(a, b):
        return len(a) == len(b) and all(x.shape == y.shape and np.allclose(x, y, rtol=1e-5) for x, y in zip(a, b))

    together = scores(net(frames, bgr=False))  # batches of 2 then 1: still one video, in order
    net.reset_state()
    one_by_one = scores([net(frame, bgr=False) for frame in frames])
    net.reset_state()
    assert same(together, one_by_one) and same(scores([net(frames[0], bgr=False)]), one_by_one[:1])
    fresh = darkpy.load(cfg, weights, device="cpu", thresh=0.001)
    assert not same(scores([fresh(frames[1], bgr=False)]), one_by_one[1:2])  # without frame 0's state: differs
