"""The detection pipeline with the real yolov3-tiny weights against what C Darknet printed
(`detector test -ext_output`, oracle real-yolov3-tiny), the `darkpy detect` command and its bad-input handling."""
import argparse
import json
import math
import re
import shutil

import cv2
import numpy as np
import pytest

from conftest import ORACLE, REPO, SHARED, require
from darkpy.commands import detect
from darkpy.boxes import detection_lines

F = np.float32
REAL = ORACLE / "real-yolov3-tiny"
FOLDERS = ["dog", "eagle", "giraffe", "horses", "person", "scream", "astronaut", "chelsea", "coffee",
           "grace_hopper", "rocket", "dog_letterbox"]
PNG = {"astronaut", "chelsea", "coffee"}
NUMBER = re.compile(r"-?\d+")


@pytest.fixture(scope="module")
def model():
    from darkpy.model import Darknet
    net = Darknet.from_cfg(require(REAL / "cfg.cfg"))
    net.load_weights(require(SHARED / "weights" / "yolov3-tiny.weights"))
    return net.fuse().eval()


@pytest.fixture(scope="module")
def names():
    return require(SHARED / "weights" / "coco.names").read_text().splitlines()


def _meta(folder: str, file: str = "detections.json") -> dict:
    return json.loads(require(REAL / folder / file).read_text())


def _unrounded(detection, width: int, height: int, percent: float):
    """The values a printed line rounds: percentage, left, top, width, height (in C's float arithmetic)."""
    x, y, w, h = F(detection.x), F(detection.y), F(detection.w), F(detection.h)
    return [float(F(percent) * F(100)), float((x - w / F(2)) * F(width)), float((y - h / F(2)) * F(height)),
            float(w * F(width)), float(h * F(height))]


def _near_half(value: float, margin: float) -> bool:
    return abs(abs(value - math.floor(value)) - 0.5) <= margin


def assert_lines_match(ours, darknet, unrounded_values, margin=0.01):
    """Lines equal Darknet's; a number may differ by 1 only where our unrounded value lies within `margin`
    (pixels or percent) of a rounding boundary, i.e. where float rounding in the network decides."""
    assert len(ours) == len(darknet), (ours, darknet)
    for line, expected, values in zip(ours, darknet, unrounded_values):
        if line == expected:
            continue
        assert line.split(":")[0] == expected.split(":")[0], (line, expected)
        ours_numbers = [int(n) for n in NUMBER.findall(line.split(":", 1)[1])]
        darknet_numbers = [int(n) for n in NUMBER.findall(expected.split(":", 1)[1])]
        for a, b, value in zip(ours_numbers, darknet_numbers, values):
            assert a == b or (abs(a - b) == 1 and _near_half(value, margin)), (line, expected, value)


def _lines_with_values(detections, names, width, height, thresh):
    """detection_lines plus, for each line, the unrounded numbers behind it (same order as draw_detections_v3)."""
    lines = detection_lines(detections, names, width, height, thresh, ext_output=True)
    values = []
    for det in sorted(detections, key=lambda d: float(F(d.x) - F(d.w) / F(2))):
        shown = [j for j in np.flatnonzero(det.probs > F(thresh))]
        if not shown:
            continue
        best = int(np.argmax(det.probs))
        for j in [best] + [j for j in shown if j != best]:
            values.append(_unrounded(det, width, height, det.probs[j]))
    assert len(values) == len(lines)
    return lines, values


# ============================================================================ Darknet's input -> Darknet's lines

def test_lines_from_darknets_network_input_equal_darknet(model, names):
    """With Darknet's own network input (input.npy) the model, decoding, NMS and printing give Darknet's lines,
    at thresh 0.25 (the console) and 0.005 (the boxes `detector map` ranks), for all 12 images."""
    from darkpy.evaluation.inference import Detector
    plain, boxed = Detector(model), Detector(model, letter_box=True)
    inputs = np.stack([np.load(require(REAL / folder / "input.npy")) for folder in FOLDERS])
    outputs = plain.forward(inputs)  # one batch: the letterbox only matters to decoding
    for index, folder in enumerate(FOLDERS):
        meta = _meta(folder)
        detector = boxed if meta["letter_box"] else plain
        width, height = meta["orig_image_wh"]
        heads = [o[index] for o in outputs]
        detections = detector.postprocess(heads, (width, height), 0.25, 0.5, 0.45)
        lines, values = _lines_with_values(detections, names, width, height, 0.25)
        assert_lines_match(lines, meta["cli_ext_output_lines"], values)
        if (REAL / folder / "detections_map.json").exists():
            meta_map = _meta(folder, "detections_map.json")
            detections = detector.postprocess(heads, (width, height), 0.005, 0.0, 0.45)
            assert len(detections) == len(meta_map["post_nms"])
            lines, values = _lines_with_values(detections, names, width, height, 0.005)
            assert_lines_match(lines, meta_map["cli_ext_output_lines"], values)


def test_tolerance_helper_is_narrow():
    darknet = ["car: 71%\t(left_x:  465   top_y:   83   width:  222   height:   89)"]
    ours = ["car: 71%\t(left_x:  466   top_y:   83   width:  222   height:   89)"]
    assert_lines_match(ours, darknet, [[71.0, 465.499, 83.0, 222.0, 89.0]])
    with pytest.raises(AssertionError):
        assert_lines_match(ours, darknet, [[71.0, 465.41, 83.0, 222.0, 89.0]])


# ============================================================================ the command, from image files

def _args(*argv):
    parser = argparse.ArgumentParser()
    detect.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def _oracle_model_args(tmp_path, *argv):
    return _args("--cfg", require(REAL / "cfg.cfg"), "--weights", require(SHARED / "weights" / "yolov3-tiny.weights"),
                 "--names", require(SHARED / "weights" / "coco.names"), "--device", "cpu",
                 "--save-dir", tmp_path / "runs", *argv)


def _printed(stdout: str) -> dict:
    """{image stem: [lines]} from the command's output."""
    result, current = {}, None
    for line in stdout.splitlines():
        match = re.match(r"(.*): Predicted in [0-9.]+ milli-seconds\.$", line)
        if match:
            current = match.group(1).replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
            result[current] = []
        elif current is not None and "\t(left_x:" in line:
            result[current].append(line)
    return result


def _assert_jpeg_lines_close(ours, darknet):
    """OpenCV's JPEG decoder differs from the one Darknet's OpenCV used by a grey level on some pixels (see
    test_image.py), which moves a box edge or a percentage across a rounding boundary now and then: same
    lines, same classes, numbers within 1."""
    assert len(ours) == len(darknet), (ours, darknet)
    for line, expected in zip(ours, darknet):
        assert line.split(":")[0] == expected.split(":")[0]
        a = [int(n) for n in NUMBER.findall(line.split(":", 1)[1])]
        b = [int(n) for n in NUMBER.findall(expected.split(":", 1)[1])]
        assert len(a) == len(b) == 5 and all(abs(x - y) <= 1 for x, y in zip(a, b)), (line, expected)


def test_command_on_image_files(tmp_path, capsys):
    """`darkpy detect --ext-output` on Darknet's six sample images and the five photos: PNG photos print exactly
    Darknet's lines (astronaut, chelsea and rocket print none); JPEGs up to the decoder; writes the images."""
    sources = [require(SHARED / "darknet" / "images"), require(SHARED / "images")]
    out = tmp_path / "result.json"
    code = detect.run(_oracle_model_args(tmp_path, *sources, "--ext-output", "--out", out, "--save-txt"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = _printed(captured.out)
    assert sorted(printed) == sorted(f for f in FOLDERS if f != "dog_letterbox")
    for stem, lines in printed.items():
        expected = _meta(stem)["cli_ext_output_lines"]
        if stem in PNG:
            assert lines == expected
        else:
            _assert_jpeg_lines_close(lines, expected)
    assert printed["astronaut"] == printed["chelsea"] == printed["rocket"] == []
    assert "11 image(s)" in captured.out and "images/s" in captured.out
    saved = cv2.imread(str(tmp_path / "runs" / "dog.jpg"))
    assert saved is not None and saved.shape == (576, 768, 3)

    # darknet's -out JSON: one record per image, every class above thresh of every kept box
    records = json.loads(out.read_text())
    assert [r["frame_id"] for r in records] == list(range(1, 12))
    coffee = next(r for r in records if r["filename"].endswith("coffee.png"))
    assert [(o["name"], round(o["confidence"], 2)) for o in coffee["objects"]] == [("toilet", 0.40)]
    dog = next(r for r in records if r["filename"].endswith("dog.jpg"))
    assert sorted(o["name"] for o in dog["objects"]) == ["bicycle", "car", "car", "dog", "truck", "truck"]
    # --save-txt: class x y w h confidence, best class per box
    label = (tmp_path / "runs" / "labels" / "coffee.txt").read_text().split()
    assert label[0] == "61" and len(label) == 6 and abs(float(label[5]) - 0.40) < 0.01


def test_command_letterbox(tmp_path, capsys):
    dog = require(SHARED / "darknet" / "images" / "dog.jpg")
    code = detect.run(_oracle_model_args(tmp_path, dog, "--ext-output", "--letter-box", "--no-save"))
    assert code == 0
    _assert_jpeg_lines_close(_printed(capsys.readouterr().out)["dog"], _meta("dog_letterbox")["cli_ext_output_lines"])


def test_bad_inputs_are_reported_and_skipped(tmp_path, capsys):
    good = tmp_path / "chelsea.png"
    shutil.copy(require(SHARED / "images" / "chelsea.png"), good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    missing = tmp_path / "missing.jpg"
    code = detect.run(_oracle_model_args(tmp_path, missing, broken, empty, good, "--no-save"))
    captured = capsys.readouterr()
    assert code == 0  # something was processed
    for name in ("missing.jpg", "broken.jpg", "empty_folder"):
        assert name in captured.err
    assert "chelsea.png: Predicted in" in captured.out and "1 image(s)" in captured.out

    code = detect.run(_oracle_model_args(tmp_path, missing, broken, empty, "--no-save"))
    assert code == 1  # nothing could be processed
    assert "missing.jpg" in capsys.readouterr().err


def test_the_command_is_the_python_api(tmp_path, capsys, monkeypatch):
    """darkpy detect loads its network with darkpy.load and prints and writes what its Results give: the same
    lines as `darkpy.load(...)(image).lines()`, the same label file as `.label_lines()`."""
    import darkpy
    loaded = []
    monkeypatch.setattr(detect, "load", lambda *a, **k: loaded.append(darkpy.load(*a, **k)) or loaded[-1])
    photo = tmp_path / "coffee.png"
    shutil.copy(require(SHARED / "images" / "coffee.png"), photo)
    code = detect.run(_oracle_model_args(tmp_path, photo, "--ext-output", "--save-labels"))
    assert code == 0 and len(loaded) == 1
    result = loaded[0](photo)
    assert _printed(capsys.readouterr().out)["coffee"] == result.lines() != []
    assert (tmp_path / "coffee.txt").read_text() == "".join(line + "\n" for line in result.label_lines())


def test_a_classifier_cfg_is_not_a_detector(tmp_path, capsys):
    code = detect.run(_args("--cfg", require(ORACLE / "darknet19" / "cfg.cfg"), "--weights", "", "--device", "cpu",
                            "--no-save", require(SHARED / "images" / "coffee.png")))
    assert code == 2 and "it is a classifier (darkpy classifier predict" in capsys.readouterr().err


def test_setup_errors_are_messages(tmp_path, capsys):
    code = detect.run(_args("--cfg", tmp_path / "nope.cfg", "--weights", tmp_path / "nope.weights", "--names",
                            require(SHARED / "weights" / "coco.names"), tmp_path))
    assert code == 2 and "nope.cfg" in capsys.readouterr().err


# ============================================================================ sources and Detector

def test_sources_lists_globs_videos(tmp_path):
    from darkpy.evaluation.inference import count_frames, expand_sources, iterate_frames
    photo = require(SHARED / "images" / "chelsea.png")
    shutil.copy(photo, tmp_path / "a.png")
    shutil.copy(photo, tmp_path / "b.png")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'b.png'}\n{tmp_path / 'gone.png'}\n")
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    (tmp_path / "bad.mp4").write_bytes(b"not a video")

    sources, errors = expand_sources([str(tmp_path / "*.png"), str(tmp_path / "list.txt"), str(video),
                                      str(tmp_path / "bad.mp4"), "0", str(tmp_path / "*.gif")])
    assert [s.kind for s in sources] == ["image", "image", "image", "image", "video", "video", "camera"]
    assert errors == [f"{tmp_path / '*.gif'}: no file matches this pattern"]
    assert count_frames(sources[:5]) == 7 and count_frames(sources) is None

    frames = list(iterate_frames(sources[:6], preprocess=lambda im: im.shape))
    assert [f.name.rsplit("/", 1)[-1] for f in frames] == ["a.png", "b.png", "b.png", "gone.png", "clip.avi#0",
                                                            "clip.avi#1", "clip.avi#2", "bad.mp4"]
    assert frames[3].error and "gone.png" in frames[3].error
    assert frames[-1].error and "bad.mp4" in frames[-1].error
    assert frames[4].input == (48, 64, 3) and frames[0].input == (300, 451, 3)


def test_detect_arrays_batches_and_keeps_training_state(model, names):
    """detect_arrays (the map command's entry) equals the per-image path, for images of different sizes in one
    batch; a model in train() comes back in train()."""
    from darkpy.image import load_image
    from darkpy.evaluation.inference import Detector
    images = [load_image(require(SHARED / "images" / f"{n}.png")) for n in ("coffee", "chelsea", "astronaut")]
    detector = Detector(model, batch_size=2)
    model.train()
    try:
        batched = detector.detect_arrays(images, thresh=0.005, hier=0, nms=0.45)
        assert model.training
    finally:
        model.eval()
    for image, detections, stem in zip(images, batched, ("coffee", "chelsea", "astronaut")):
        assert len(detections) == len(_meta(stem, "detections_map.json")["post_nms"])
        lines = detection_lines(detections, names, image.shape[1], image.shape[0], 0.005)
        assert lines == _meta(stem, "detections_map.json")["cli_ext_output_lines"]


def test_detector_never_changes_the_model_it_is_handed(model):
    """A model being trained can be evaluated: the Detector leaves its parameters (memory format, device,
    dtype) alone; a device or dtype the model does not have is served by a converted copy."""
    from darkpy.evaluation.inference import Detector
    weight = model.layers[0].weight
    before = (weight.stride(), weight.device, weight.dtype)
    detector = Detector(model, device="cpu")
    detector.forward(np.zeros((1, 3, model.height, model.width), np.float32))
    assert detector.model is model and not detector.channels_last
    assert model.layers[0].weight is weight and (weight.stride(), weight.device, weight.dtype) == before


def test_default_run_uses_the_bundled_files(tmp_path, capsys, monkeypatch):
    """`python detect.py` with no arguments: the project's cfg, weights, names and data/images."""
    for path in (detect.DEFAULT_CFG, detect.DEFAULT_WEIGHTS, detect.DEFAULT_NAMES, detect.DEFAULT_SOURCE):
        if not (REPO / path).exists():
            pytest.skip(f"{path} is not in this checkout")
    monkeypatch.chdir(tmp_path)  # defaults fall back to the checkout when the current folder lacks them
    code = detect.run(_args("--save-dir", tmp_path / "out"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    stems = re.findall(r"([\w.-]+)\.(?:png|jpg): Predicted in", captured.out)
    assert stems == ["astronaut", "chelsea", "coffee", "grace_hopper", "rocket"]
    classes = re.findall(r"^(\w+): \d+%$", captured.out, flags=re.MULTILINE)
    assert classes == ["toilet", "tie", "tie", "tie"]  # coffee, grace_hopper; the others print nothing
    assert "toilet: 40%" in captured.out.splitlines()
    assert (tmp_path / "out" / "coffee.jpg").exists()


def test_recurrent_network_starts_each_video_from_zero_state(tmp_path, capsys):
    """A [crnn] detector carries its state from frame to frame, and each video starts again from zeros (a new
    `darknet detector demo`): two copies of one video give the same detections, frame for frame."""
    from helpers.recurrent import tiny_recurrent_detector
    cfg, weights = tiny_recurrent_detector(tmp_path)
    (tmp_path / "one.names").write_text("thing\n")
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    for name in ("a.avi", "b.avi"):
        writer = cv2.VideoWriter(str(tmp_path / name), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
        for picture in pictures:
            writer.write(picture)
        writer.release()
    out = tmp_path / "r.json"
    code = detect.run(_args("--cfg", cfg, "--weights", weights, "--names", tmp_path / "one.names",
                            "--device", "cpu", "--thresh", "0.001", "--batch", "2", "--no-save", "--out", out,
                            tmp_path / "a.avi", tmp_path / "b.avi"))
    assert code == 0, capsys.readouterr().err
    records = [r["objects"] for r in json.loads(out.read_text())]
    assert len(records) == 6 and records[:3] == records[3:]
    assert records[0] != records[1]


def test_both_backends_print_the_same_lines(tmp_path, capsys):
    """`--backend onnxruntime` (what `auto` picks with onnxruntime installed) and `--backend torch` print the same
    lines for Darknet's sample images and the photos."""
    pytest.importorskip("onnxruntime")
    sources = [require(SHARED / "darknet" / "images"), require(SHARED / "images")]
    printed = {}
    for backend in ("torch", "onnxruntime"):
        code = detect.run(_oracle_model_args(tmp_path, *sources, "--ext-output", "--no-save", "--backend", backend))
        captured = capsys.readouterr()
        assert code == 0, captured.err
        printed[backend] = _printed(captured.out)
    assert printed["onnxruntime"] == printed["torch"]
    assert sum(len(lines) for lines in printed["torch"].values()) >= 20


def test_an_explicit_backend_that_cannot_run_is_a_message(tmp_path, capsys):
    from helpers.recurrent import tiny_recurrent_detector
    pytest.importorskip("onnxruntime")
    cfg, weights = tiny_recurrent_detector(tmp_path)
    code = detect.run(_args("--cfg", cfg, "--weights", weights, "--device", "cpu", "--no-save", "--backend",
                            "onnxruntime", require(SHARED / "images" / "coffee.png")))
    error = capsys.readouterr().err
    assert code == 2 and f"--backend onnxruntime: {cfg}:" in error and "[crnn] keeps a state" in error
    assert "Traceback" not in error
