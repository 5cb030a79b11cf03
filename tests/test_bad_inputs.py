"""Bad input and faults (issue #16): every case ends with a message naming the file and what is wrong, the other
inputs still processed, no partial output left behind and a non-zero exit code; never a traceback, a silently
wrong answer or lost work. docs/bad_input.md lists the cases and their outcomes."""
import os
import stat
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from darkpy.cli import main as cli_main
from darkpy.model import Darknet

# Three layers with weights (2 + 1 + 1 arrays), one [yolo] head: built and run in milliseconds.
TINY_DETECTOR = """[net]
batch=2
subdivisions=1
width=32
height=32
channels=3
max_batches=4
learning_rate=0.001
burn_in=0
[convolutional]
batch_normalize=1
filters=4
size=3
stride=2
pad=1
activation=leaky
[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
filters=14
size=1
activation=linear
[yolo]
mask=0,1
anchors=8,8, 16,16
classes=2
num=2
"""
LAYERS_WITH_WEIGHTS = 3


class World:
    """A cfg, its full weights, two images with labels, names, lists and a .data file in one folder."""

    def __init__(self, root):
        self.root = root
        self.cfg = root / "tiny.cfg"
        self.cfg.write_text(TINY_DETECTOR)
        torch.manual_seed(0)
        self.model = Darknet.from_cfg(str(self.cfg))
        self.weights = root / "tiny.weights"
        self.model.save_weights(str(self.weights))
        self.names = root / "obj.names"
        self.names.write_text("a\nb\n")
        rng = np.random.default_rng(0)
        self.images = []
        for i in range(2):
            image = root / f"img{i}.png"
            cv2.imwrite(str(image), rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
            image.with_suffix(".txt").write_text("0 0.5 0.5 0.4 0.3\n")
            self.images.append(image)
        self.list = root / "list.txt"
        self.list.write_text("".join(f"{p}\n" for p in self.images))
        self.backup = root / "backup"
        self.backup.mkdir()
        self.data = root / "obj.data"
        self.data.write_text(f"classes=2\ntrain={self.list}\nvalid={self.list}\nnames={self.names}\n"
                             f"backup={self.backup}\n")

    def weights_upto(self, layers: int):
        """A partial file holding the first `layers` layers with weights (0: the header only)."""
        path = self.root / f"tiny.conv.{layers}"
        # the layer indices of the convolutions are 0, 1, 2: upto=k keeps k of them
        self.model.save_weights(str(path), upto=layers)
        return path

    def command(self, name: str, weights, *extra):
        """argv of `name` on this world with these weights."""
        common = [f"--cfg={self.cfg}", f"--weights={weights}"]
        if name == "detect":
            return ["detect", *common, "--device=cpu", f"--names={self.names}", f"--save-dir={self.root / 'runs'}",
                    *map(str, self.images), *extra]
        if name == "map":
            return ["map", *common, "--device=cpu", f"--data={self.data}", "--no-progress", *extra]
        return ["export", *common, f"--output={self.root / 'tiny.onnx'}", "--no-verify", *extra]


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def run(argv, capsys):
    """The command's exit code and its stderr (a traceback would escape as an exception and fail the test)."""
    code = cli_main([str(a) for a in argv])
    return code, capsys.readouterr().err


# ============================================================================ item 1: weights inference refuses

INFERENCE = ["detect", "map", "export"]


@pytest.mark.parametrize("command", INFERENCE)
@pytest.mark.parametrize("filled", range(LAYERS_WITH_WEIGHTS))
def test_inference_refuses_a_partial_weights_file(world, capsys, command, filled):
    """Weights ending between two layers (`*.conv.N`, a header-only file) given to detect, map or export → refused
    (exit 1; detect 2): `FILE: a partial weights file: it fills K of the N layers with weights ... --allow-partial
    to run anyway`"""
    partial = world.weights_upto(filled)
    code, err = run(world.command(command, partial), capsys)
    assert code != 0
    assert f"{partial}: a partial weights file: it fills {filled} of the {LAYERS_WITH_WEIGHTS} layers" in err
    assert "--allow-partial" in err


@pytest.mark.parametrize("command", INFERENCE)
def test_allow_partial_runs_a_partial_file(world, capsys, command):
    """The same with `--allow-partial` → runs; the layers the file does not fill keep their random initialisation"""
    code, err = run(world.command(command, world.weights_upto(2), "--allow-partial"), capsys)
    assert code == 0, err


@pytest.mark.parametrize("command", INFERENCE)
def test_inference_refuses_non_finite_weights_naming_the_layer(world, capsys, command):
    """NaN or infinite values in the weights (detect, map, export, train) → refused: `FILE: layer K ([convolutional],
    CFG:LINE) holds NaN or infinite values`"""
    raw = bytearray(world.weights.read_bytes())
    header, first_layer = 20, 4 * sum(t.numel() for t in world.model.layers[0].darknet_arrays())
    at = header + first_layer + 8  # inside layer 1's biases
    raw[at:at + 4] = np.array([np.inf], "<f4").tobytes()
    world.weights.write_bytes(bytes(raw))
    code, err = run(world.command(command, world.weights, "--allow-partial"), capsys)
    assert code != 0
    assert f"{world.weights}: layer 1 ([convolutional], {world.cfg}:" in err and "NaN or infinite" in err


@pytest.mark.parametrize("command", INFERENCE)
@pytest.mark.parametrize("layer", range(LAYERS_WITH_WEIGHTS))
def test_weights_ending_inside_a_layer_are_refused(world, capsys, command, layer):
    """Weights ending inside a layer → refused: `FILE: the file ends inside layer K ([type], CFG:LINE): it needs ...
    floats`"""
    before = sum(t.numel() for lay in world.model.layers[:layer] for t in lay.darknet_arrays())
    cut = world.root / "cut.weights"
    cut.write_bytes(world.weights.read_bytes()[:20 + 4 * (before + 1)])  # one float into the layer
    code, err = run(world.command(command, cut, "--allow-partial"), capsys)
    assert code != 0 and f"{cut}: the file ends inside layer {layer} ([convolutional], {world.cfg}:" in err


def test_inference_accepts_the_full_file(world, capsys):
    """The complete weights file → runs, exit 0"""
    code, err = run(world.command("detect", world.weights), capsys)
    assert code == 0, err


# ============================================================================ item 2: detect's outputs

def test_save_dir_that_is_a_file_is_refused_before_running(world, capsys):
    """detect `--save-dir` naming a file → refused before any image is processed, exit 1: `PATH: cannot write: ...`"""
    blocker = world.root / "runs"
    blocker.write_text("not a folder")
    code, err = run(world.command("detect", world.weights), capsys)
    assert code == 1
    assert f"{blocker}: cannot write" in err
    assert "Predicted" not in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_save_dir_is_refused_before_running(world, capsys):
    """detect `--save-dir` read-only (not as root) → refused before any image is processed, exit 1"""
    folder = world.root / "runs"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    code, err = run(world.command("detect", world.weights), capsys)
    assert code == 1 and f"{folder}: cannot write" in err


def test_out_naming_a_folder_is_refused_before_running(world, capsys):
    """detect `--out` naming a folder → refused before running, exit 1: `PATH: cannot write: Is a directory`"""
    code, err = run(world.command("detect", world.weights, f"--out={world.root}"), capsys)
    assert code == 1 and f"{world.root}: cannot write" in err


def test_each_failed_write_is_named_and_the_other_images_still_written(world, capsys):
    """An annotated image or `--save-txt` label that cannot be written → each named (`PATH: cannot write...`), the
    other images still processed and written, partial files removed, exit 1"""
    labels = world.root / "runs" / "labels"
    (world.root / "runs" / "img0.jpg").mkdir(parents=True)  # cv2.imwrite fails on it (returns False)
    (labels / "img1.txt").mkdir(parents=True)  # and write_text on this one
    code = cli_main([str(a) for a in world.command("detect", world.weights, "--save-txt")])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{world.root / 'runs' / 'img0.jpg'}: cannot write" in captured.err
    assert f"{labels / 'img1.txt'}: cannot write" in captured.err
    assert (world.root / "runs" / "img1.jpg").is_file() and (labels / "img0.txt").is_file()
    assert "2 image(s)" in captured.out and "2 output(s) could not be written" in captured.out


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_out_on_a_full_disk_is_named_and_the_images_still_written(world, capsys):
    """`--out` on a full disk (`/dev/full`) → `PATH: cannot write: No space left on device`, the incomplete JSON
    removed (never a device), the images still written, exit 1"""
    code, err = run(world.command("detect", world.weights, "--out=/dev/full"), capsys)
    assert code == 1
    assert "/dev/full: cannot write: No space left on device" in err
    assert (world.root / "runs" / "img0.jpg").is_file() and (world.root / "runs" / "img1.jpg").is_file()
    assert os.path.exists("/dev/full")  # the partial output removed is a file's, never a device's


# ============================================================================ item 4: one unreadable image

@pytest.fixture
def unreadable(monkeypatch):
    """Make an image unreadable: mode 000, and for root (who reads it anyway) reading it fails as it would."""
    def make(path):
        path.chmod(0)
        real = np.fromfile

        def fromfile(file, *args, **kwargs):
            if str(file) == str(path):
                raise PermissionError(13, "Permission denied", str(file))
            return real(file, *args, **kwargs)
        monkeypatch.setattr(np, "fromfile", fromfile)
        return path
    return make


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (OpenCV refuses more than 2^30 before allocating)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("content", [_png_claiming(60000, 60000), b"\x89PNG\r\n\x1a\n truncated", b""],
                         ids=["huge", "corrupt", "empty"])
def test_detect_goes_on_after_a_huge_corrupt_or_empty_image(world, capsys, content):
    """A huge (60000x60000 header), corrupt or empty image → `PATH: cannot decode the file as an image, skipped`; the
    other images processed, exit 0"""
    bad = world.images[0]
    bad.write_bytes(content)
    code = cli_main([str(a) for a in world.command("detect", world.weights)])
    captured = capsys.readouterr()
    assert code == 0
    assert f"{bad}: cannot decode the file as an image, skipped" in captured.err
    assert "img1.png: Predicted in" in captured.out


def test_detect_goes_on_after_an_unreadable_image(world, capsys, unreadable):
    """An unreadable image in detect → `PATH: cannot read the image file: Permission denied, skipped`; the others
    processed, exit 0"""
    bad = unreadable(world.images[0])
    code = cli_main([str(a) for a in world.command("detect", world.weights)])
    captured = capsys.readouterr()
    assert code == 0
    assert f"{bad}: cannot read the image file: Permission denied" in captured.err
    assert "img1.png: Predicted in" in captured.out and "1 input(s) skipped" in captured.out


def test_map_goes_on_after_an_unreadable_image(world, capsys, unreadable):
    """An unreadable image in map → reported with the data problems, the others evaluated, exit 0"""
    bad = unreadable(world.images[0])
    code = cli_main([str(a) for a in world.command("map", world.weights)])
    captured = capsys.readouterr()
    assert code == 0
    assert str(bad) in captured.out + captured.err and "Permission denied" in captured.out + captured.err


def test_train_goes_on_after_an_unreadable_image(world, capsys, unreadable):
    """An unreadable image in train → reported once, another image drawn instead (as Darknet), training completes"""
    bad = unreadable(world.images[0])
    # 2 x 8 draws with replacement from the 2 images: the bad one is missed with probability 2^-16 only
    code = cli_main(["train", f"--data={world.data}", f"--cfg={world.cfg}", "--device=cpu", "--workers=0",
                     "--no-progress", "--max-batches=2", "--batch=8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert str(bad) in captured.out + captured.err
    assert (world.backup / "tiny_final.weights").is_file()


# ============================================================================ item 3: training keeps its work

def _trainer(world, **overrides):
    from darkpy.training.settings import TrainOptions
    from darkpy.training.trainer import Trainer
    options = dict(data=str(world.data), cfg=str(world.cfg), device="cpu", workers=0, progress=False,
                   max_batches=50, seed=1)
    options.update(overrides)
    return Trainer(TrainOptions(**options))


def _act_at(trainer, iteration, action):
    """Run `action` after the training iteration `iteration` (counted from 1)."""
    original = trainer.train_iteration

    def hooked(images, truths, number):
        loss = original(images, truths, number)
        if number + 1 == iteration:
            action()
        return loss
    trainer.train_iteration = hooked


def _last_seen(world):
    last = world.backup / "tiny_last.weights"
    return Darknet.from_cfg(str(world.cfg)).load_weights(str(last)).header.seen


@pytest.mark.parametrize("signal_name, code", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_a_stop_signal_saves_last_and_resume_continues(world, signal_name, code):
    """SIGINT, SIGTERM or SIGHUP during training → the iteration finishes, `_last` saved, exit 130 / 143 / 129;
    `--resume` continues at that iteration"""
    import signal
    trainer = _trainer(world)
    _act_at(trainer, 3, lambda: os.kill(os.getpid(), getattr(signal, signal_name)))
    try:
        assert trainer.train() == code
    finally:
        trainer.close()
    assert _last_seen(world) == 3 * 2  # iteration 3 of batch=2
    resumed = _trainer(world, resume=True, max_batches=4)
    try:
        assert resumed.start_iteration == 3
        assert resumed.train() == 0
    finally:
        resumed.close()


def test_a_killed_loading_process_saves_last_and_exits_1(world, capsys):
    """A data-loading process killed → one line `darkpy train: error: data loading failed at iteration K ...`, `_last`
    saved, exit 1"""
    import multiprocessing
    import signal
    trainer = _trainer(world, workers=1, max_batches=200)

    def kill_workers():
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)
    _act_at(trainer, 2, kill_workers)
    try:
        assert trainer.train() == 1
    finally:
        trainer.close()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "data loading failed" in line]
    assert len(lines) == 1 and "at iteration" in lines[0]
    assert _last_seen(world) >= 2 * 2


def test_a_second_stop_signal_quits_at_once_with_a_message(world, capsys, monkeypatch):
    """A second stop signal → quits at once: `darkpy train: interrupted twice: stopped without saving`, exit 130"""
    import signal
    from darkpy.training.trainer import Trainer
    original = Trainer.train_iteration

    def twice_at_two(self, images, truths, number):
        loss = original(self, images, truths, number)
        if number + 1 == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        return loss
    monkeypatch.setattr(Trainer, "train_iteration", twice_at_two)
    code = cli_main(["train", f"--data={world.data}", f"--cfg={world.cfg}", "--device=cpu", "--workers=0",
                     "--no-progress", "--max-batches=50"])
    assert code == 130
    assert "interrupted twice: stopped without saving" in capsys.readouterr().err


def _dead_pid():
    import subprocess
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.skipif(os.name != "posix", reason="process ids are checked on POSIX only")
def test_an_unfinished_snapshot_of_a_killed_run_is_removed_at_the_next_start(world):
    """The temporary file of a snapshot write whose process was killed → removed when training next starts (one of a
    running process is kept)"""
    orphan = world.backup / f"tiny_last.weights.{_dead_pid()}.abcd1234.tmp"
    orphan.write_bytes(b"half a snapshot")
    being_written = world.backup / f"tiny_last.weights.{os.getpid()}.efgh5678.tmp"
    being_written.write_bytes(b"another run's write in progress")
    trainer = _trainer(world)
    trainer.close()
    assert not orphan.exists() and being_written.exists()


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_sigkill_during_a_snapshot_write_keeps_the_previous_snapshot(world):
    """SIGKILL during a snapshot write → the previous `_last` intact; `--resume` continues from it"""
    import signal
    import subprocess
    import sys
    import time
    last = world.backup / "tiny_last.weights"
    world.model.save_weights(str(last), seen=3 * 2)  # the previous snapshot: iteration 3
    # a process that stops inside its write of a new _last (before the rename), then is killed
    script = ("import os, sys, time; from darkpy.model import Darknet; os.fsync = lambda fd: time.sleep(60); "
              f"Darknet.from_cfg({str(world.cfg)!r}).save_weights({str(last)!r}, seen=999)")
    writer = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.time() + 60
    while not list(world.backup.glob("*.tmp")) and time.time() < deadline:
        time.sleep(0.1)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert list(world.backup.glob("*.tmp"))  # the killed write's leftover
    resumed = _trainer(world, resume=True, max_batches=4)
    try:
        assert resumed.start_iteration == 3 and not list(world.backup.glob("*.tmp"))
        assert resumed.train() == 0
    finally:
        resumed.close()


# ============================================================================ item 5: numbers as Darknet reads them

CONV = "[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nsize=1\nactivation=linear\n"


def _built(tmp_path, text, name="n.cfg"):
    """The network of this cfg text and the CfgWarning messages it gave."""
    import warnings
    from darkpy.cfg import CfgWarning
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = Darknet.from_cfg(str(path))
    return model, [str(w.message) for w in caught if issubclass(w.category, CfgWarning)]


@pytest.mark.parametrize("written, filters", [("1e2", 1), ("1_6", 1), ("16", 16), ("4.0", 4), ("3.7", 3),
                                              ("7abc", 7)])
def test_integers_are_read_as_atoi_reads_them(tmp_path, written, filters):
    """`filters=1e2`, `1_6`, `3.7`, `7abc` → read as C's atoi reads them (1, 1, 3, 7; Darknet builds the same) with one
    CfgWarning `CFG:LINE: [section] option 'filters': Darknet reads '1e2' as 1 (it stops at 'e2')`; `4.0` → 4
    without a warning"""
    model, warned = _built(tmp_path, CONV + f"filters={written}\n")
    assert model.layers[0].out_shape[0] == filters  # C Darknet 59596d78: filters=1e2 builds 1 filter
    left_over = written != str(filters) and written != f"{filters}.0"
    assert len(warned) == left_over
    if left_over:
        assert f"n.cfg:8: [convolutional] option 'filters': Darknet reads '{written}' as {filters}" in warned[0]


def test_a_fraction_read_as_an_integer_is_zero(tmp_path):
    """An integer option written `.2` → 0 (atoi), with the warning"""
    from darkpy.cfg import parse_cfg_text
    section = parse_cfg_text(CONV + "stride=.2\n", "n.cfg")[1]
    with pytest.warns(UserWarning, match=r"n.cfg:8: .* Darknet reads '.2' as 0"):
        assert section.get_int("stride") == 0


def test_floats_read_their_leading_number_with_a_warning(tmp_path):
    """A float option with text after the number (`0.9x`) → the leading number (atof), with the warning; lists item by
    item"""
    from darkpy.cfg import parse_cfg_text
    section = parse_cfg_text("[net]\nwidth=32\nheight=32\nmomentum=0.9x\nanchors=1,2.5e1,3\n", "n.cfg")[0]
    with pytest.warns(UserWarning, match=r"n.cfg:4: .* 'momentum': Darknet reads '0.9x' as 0.9"):
        assert section.get_float("momentum") == pytest.approx(0.9)
    assert section.get_float_list("anchors") == [1.0, 25.0, 3.0]


@pytest.mark.parametrize("text, line, words", [
    (CONV + "filters=99999999999999999999\n", 8, "too large: Darknet reads integers as a C int"),
    (CONV + "filters=abc\n", 8, "not an integer"),
    (CONV + "filters=4\nlearning_rate=inf\n", 9, "not a finite number"),
    (CONV + "filters=4\nlearning_rate=nan\n", 9, "not a finite number"),
    (CONV + "filters=4\nlearning_rate=1e999\n", 9, "not a finite number"),
    # 2e9 x 3072 floats: 24 TB, which no allocator grants
    ("[net]\nwidth=32\nheight=32\nchannels=3\n[connected]\noutput=2000000000\n", 5,
     "cannot be built: its arrays need more memory than there is (24576.0 GB)"),
])
def test_numbers_that_cannot_be_built_are_refused_with_file_and_line(tmp_path, capsys, text, line, words):
    """An integer beyond C's int, `abc`, `inf`, `nan`, `1e999`, or a layer no allocator can hold (24 TB) → refused with
    `CFG:LINE` and why, exit 1"""
    path = tmp_path / "n.cfg"
    path.write_text(text)
    code, err = run(["summary", path], capsys)
    assert code == 1
    assert f"{path}:{line}:" in err and words in err


def test_a_cfg_with_a_utf8_byte_order_mark_parses(tmp_path):
    """A cfg starting with a UTF-8 byte-order mark → parses"""
    model, warned = _built(tmp_path, b"\xef\xbb\xbf" + (CONV + "filters=4\n").encode())
    assert model.layers[0].out_shape == (4, 32, 32) and warned == []


# ============================================================================ item 7: labels a hair outside [0,1]

def test_a_label_a_hair_outside_is_kept_as_darknet_keeps_it(tmp_path):
    """A label coordinate outside [0,1] (`1.0000001`) → reported and kept, as Darknet keeps it: training clips it, map
    uses it as it is (a non-finite one is skipped)"""
    from darkpy.data import BAD_COORDINATES, DataProblems, read_labels
    from darkpy.training.augment import CropWindow, place_truths
    from darkpy.training.settings import AugmentConfig
    path = tmp_path / "a.txt"
    path.write_text("0 0.5 0.5 1.0000001 0.4\n")
    problems = DataProblems()
    labels = read_labels(str(path), 1, problems)
    assert labels.tolist() == [[0, 0.5, 0.5, np.float32(1.0000001), np.float32(0.4)]]  # map: as it is
    assert "kept, as Darknet keeps it" in problems.messages[BAD_COORDINATES][0]
    truths, _ = place_truths(labels, CropWindow(100, 100, 0, 0, 0, 0), False, 64, 64, AugmentConfig(classes=1))
    assert truths[0, 2] == 1.0  # training: clipped to the image, as correct_boxes does


def test_save_txt_never_writes_a_label_outside_the_image():
    """A detection crossing the image border → `--save-txt` writes it cut to the image, never outside [0,1]"""
    from darkpy.boxes import Detection
    from darkpy.api import label_lines
    crossing = Detection(x=0.95, y=0.5, w=0.2, h=1.1, probs=np.float32([0.9]), objectness=0.9)
    (line,) = label_lines([crossing], 0.25)
    values = [float(v) for v in line.split()[1:5]]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == pytest.approx([0.925, 0.5, 0.15, 1.0])


# ============================================================================ items 6 and 8: messages, not tracebacks

def _data_file(world, name, **changes):
    options = {"classes": "2", "train": str(world.list), "valid": str(world.list), "names": str(world.names),
               "backup": str(world.backup), **changes}
    path = world.root / name
    path.write_text("".join(f"{key}={value}\n" for key, value in options.items()))
    return path


def _cases(world):
    """(argv, exit code, words of the message) for bad arguments and files."""
    (world.root / "empty.txt").write_text("")
    a_file = world.root / "a_file"
    a_file.write_text("x")
    detect = world.command("detect", world.weights)
    train = ["train", f"--cfg={world.cfg}", "--workers=0", "--no-progress", "--max-batches=2", "--device=cpu"]
    map_ = ["map", f"--cfg={world.cfg}", f"--weights={world.weights}", "--device=cpu"]
    return {
        "detect --device foo": (detect + ["--device=foo"], 2, "device foo: not a device name"),
        "map --device foo": (map_ + [f"--data={world.data}", "--device=foo"], 1, "device foo: not a device name"),
        "train --device foo": (train + [f"--data={world.data}", "--device=foo"], 1, "device foo: not a device name"),
        "detect --width 100000": (detect + ["--width=100000", "--height=100000"], 2,
                                  "tiny.cfg:4: option 'width' [net] a 100000x100000x3 input has more values"),
        "detect --thresh nan": (detect + ["--thresh=nan"], 2, "argument --thresh: 'nan' is not a finite number"),
        "detect --nms nan": (detect + ["--nms=nan"], 2, "argument --nms: 'nan' is not a finite number"),
        "detect --thresh abc": (detect + ["--thresh=abc"], 2, "argument --thresh: 'abc' is not a number"),
        "map --iou-thresh nan": (map_ + [f"--data={world.data}", "--iou-thresh=nan"], 2, "not a finite number"),
        "train --learning-rate nan": (train + [f"--data={world.data}", "--learning-rate=nan"], 2,
                                      "'nan' is not a finite number"),
        "train --learning-rate -1": (train + [f"--data={world.data}", "--learning-rate=-1"], 2, "'-1' is not above 0"),
        "train on an empty list": (train + [f"--data={_data_file(world, 'et.data', train=world.root / 'empty.txt')}"],
                                   1, "empty.txt: the train list has no images"),
        "map on an empty list": (map_ + [f"--data={_data_file(world, 'ev.data', valid=world.root / 'empty.txt')}"],
                                 1, "empty.txt: the valid list has no images"),
        "savelast=abc": (train + [f"--data={_data_file(world, 's.data', savelast='abc')}"], 1,
                         "s.data:6: savelast must be a positive integer, got 'abc'"),
        "a backup folder that is a file": (train + [f"--data={_data_file(world, 'b.data', backup=a_file)}"], 1,
                                           f"b.data:5: the backup folder {a_file} cannot be made: a file has"),
        "/dev/zero as weights": (train + [f"--data={world.data}", "--weights=/dev/zero"], 1,
                                 "/dev/zero: not a regular file"),
        "/dev/zero as a list": (train + [f"--data={_data_file(world, 'z.data', train='/dev/zero')}"], 1,
                                "/dev/zero: cannot open the image list file (not a regular file)"),
    }


CASE_NAMES = ["detect --device foo", "map --device foo", "train --device foo", "detect --width 100000",
              "detect --thresh nan", "detect --nms nan", "map --iou-thresh nan", "train --learning-rate nan",
              "train --learning-rate -1", "train on an empty list", "map on an empty list", "savelast=abc",
              "a backup folder that is a file", "/dev/zero as weights", "/dev/zero as a list"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_arguments_and_files_get_a_message(world, capsys, case):
    """The argument and file cases in the table below → a message, never a traceback"""
    argv, expected_code, words = _cases(world)[case]
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own check
        code = exit_.code
    assert code == expected_code
    assert words in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stdout_on_a_full_disk_is_a_message(world):
    """stdout on a full disk → `darkpy COMMAND: error: cannot write to the standard output: No space left on device`,
    exit 1"""
    import subprocess
    import sys
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "darkpy", "summary", str(world.cfg)], stdout=full,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 1
    assert done.stderr.strip() == "darkpy summary: error: cannot write to the standard output: No space left on device"


def test_the_chart_never_writes_through_a_planted_link(tmp_path):
    """A link planted at the chart's old fixed temporary name → untouched (the temporary name is unique)"""
    from darkpy.training.chart import Chart
    target = tmp_path / "precious"
    target.write_text("keep me")
    (tmp_path / "chart.png.tmp.png").symlink_to(target)  # the old fixed temporary name
    Chart(10, 20.0).save([tmp_path / "chart.png"], "footer")
    assert target.read_text() == "keep me" and (tmp_path / "chart.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chart.png", "chart.png.tmp.png", "precious"]


def test_a_chart_that_cannot_be_written_names_the_chart_and_training_goes_on(world, capsys, monkeypatch):
    """A chart that cannot be written → one warning naming `chart.png`, training goes on"""
    import darkpy.training.chart as chart
    monkeypatch.setattr(chart.cv2, "imwrite", lambda path, image: False)
    code = cli_main(["train", f"--data={world.data}", f"--cfg={world.cfg}", "--device=cpu", "--workers=0",
                     "--no-progress", "--max-batches=2"])
    err = capsys.readouterr().err
    assert code == 0
    assert f"darkpy train: warning: {world.backup / 'chart.png'}: cannot write the chart" in err
    assert err.count("cannot write the chart") == 1 and not list(world.backup.glob("*.tmp.png"))


@pytest.mark.parametrize("command", ["detect", "map"])
def test_an_onnxruntime_backend_that_cannot_run_is_a_message(world, capsys, monkeypatch, command):
    """`--backend onnxruntime` (detect, map) where onnxruntime is not installed → `--backend onnxruntime:
    onnxruntime and onnx are not both installed (pip install darkpy[onnx])`, exit 2; the default, `--backend
    auto`, runs on torch"""
    from darkpy.evaluation import onnx_backend
    monkeypatch.setattr(onnx_backend, "onnxruntime_or_none", lambda: None)
    code, err = run(world.command(command, world.weights, "--backend=onnxruntime"), capsys)
    assert code == 2
    assert "--backend onnxruntime: onnxruntime and onnx are not both installed (pip install darkpy[onnx])" in err
    code, err = run(world.command(command, world.weights), capsys)
    assert code == 0, err


# ============================================================================ docs/bad_input.md, generated from here

PAGE = Path(__file__).resolve().parents[1] / "docs" / "bad_input.md"
GENERATED = "<!-- The tables below are generated by `python tests/test_bad_inputs.py` from the tests' docstrings. -->"


def page_tables() -> str:
    """The page's tables: each test's docstring ("case → outcome"), in file order, then the argument cases."""
    tests = sorted((f for name, f in globals().items() if name.startswith("test_") and callable(f)),
                   key=lambda f: f.__code__.co_firstlineno)
    rows = ["| case | outcome | test |", "|---|---|---|"]
    for test in tests:
        if test.__doc__ and " → " in test.__doc__:
            case, outcome = " ".join(test.__doc__.split()).split(" → ", 1)
            rows.append(f"| {case} | {outcome} | `{test.__name__}` |")
    with tempfile.TemporaryDirectory() as folder:
        cases = _cases(World(Path(folder)))
        rows += ["", "Arguments and files (`test_bad_arguments_and_files_get_a_message`):", "",
                 "| case | exit code | message (part) |", "|---|---|---|"]
        rows += [f"| {name} | {code} | `{words.replace(folder, 'DIR')}` |" for name, (_, code, words) in
                 ((name, cases[name]) for name in CASE_NAMES)]
    return "\n".join(rows) + "\n"


def test_the_page_is_generated_from_this_suite():
    assert PAGE.read_text().split(GENERATED + "\n", 1)[1] == page_tables()


if __name__ == "__main__":  # rewrites the page's tables
    PAGE.write_text(PAGE.read_text().split(GENERATED + "\n", 1)[0] + GENERATED + "\n" + page_tables())
