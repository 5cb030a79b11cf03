"""`darkpy summary`: the layer table and totals equal what C Darknet prints (oracle summary.json figures)."""
import json
import re
import warnings

import pytest

from conftest import ORACLE, REPO, SHARED, require
from darkpy.cli import main
from darkpy.model import Darknet
from darkpy.summary import comparison_lines, layer_row, summary_lines, totals

SUMMARY_FIXTURES = sorted(p for p in ORACLE.iterdir() if (p / "summary.json").exists()) if ORACLE.is_dir() else []
ROW_BFLOPS = re.compile(r" (\d+\.\d{3}) BF$")


def build(path, **size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zoo cfgs carry keys Darknet itself ignores
        return Darknet.from_cfg(path, **size)


@pytest.mark.skipif(not SUMMARY_FIXTURES, reason=f"no oracle fixtures in {ORACLE}")
@pytest.mark.parametrize("fixture", SUMMARY_FIXTURES, ids=[f.name for f in SUMMARY_FIXTURES])
def test_table_totals_equal_darknet(fixture):
    expected = json.loads((fixture / "summary.json").read_text())
    model = build(fixture / "cfg.cfg")
    lines = summary_lines(model)
    rows = lines[1:-2]
    assert len(rows) == expected["n_layers"]
    assert [int(row.split()[0]) for row in rows] == list(range(expected["n_layers"]))
    # Darknet prints "Total BFLOPS %5.3f"; summary.json holds that figure.
    assert lines[-2] == f"Total BFLOPS {expected['total_bflops']:5.3f}"
    assert f"{expected['n_weights_floats']:,} floats" in lines[-1]
    w, h, c = expected["input"]
    assert f"{w:4d} x{h:4d} x{c:4d} ->" in rows[0]
    # The per-layer figures add up to the total (each row is rounded to 0.001).
    row_sum = sum(float(m.group(1)) for m in map(ROW_BFLOPS.search, rows) if m)
    assert abs(row_sum - expected["total_bflops"]) <= 0.0005 * len(rows) + 0.0005


def test_yolov3_tiny_rows_read_like_darknet():
    model = build(REPO / "cfg" / "yolov3-tiny.cfg")
    rows = [layer_row(layer) for layer in model.layers]
    # Darknet: "   0 conv     16       3 x 3/ 1    416 x 416 x   3 ->  416 x 416 x  16 0.150 BF"
    assert rows[0].split() == "0 conv 16 3 x 3/ 1 416 x 416 x 3 -> 416 x 416 x 16 0.150 BF".split()
    assert rows[0].endswith(" 416 x 416 x   3 ->  416 x 416 x  16 0.150 BF")
    assert rows[11].split() == "11 max 2x 2/ 1 13 x 13 x 512 -> 13 x 13 x 512 0.000 BF".split()
    assert rows[12].endswith("1.595 BF")  # the 1024-filter layer: 29 % of the network's BFLOPs
    assert rows[20].split() == "20 route 19 8 -> 26 x 26 x 384".split()
    assert rows[19].split() == "19 upsample x 2 13 x 13 x 128 -> 26 x 26 x 128".split()
    assert rows[23].split()[:2] == ["23", "yolo"]


def test_prn_saving_against_yolov3_tiny(capsys):
    code = main(["summary", str(REPO / "cfg" / "yolov3-tiny-prn.cfg"), "--compare",
                 str(REPO / "cfg" / "yolov3-tiny.cfg")])
    assert code == 0
    out = capsys.readouterr().out
    assert "Total BFLOPS 3.467" in out
    assert "Parameters 4,935,182 (4.94M); 4,939,758 floats" in out
    bflops = next(line for line in out.splitlines() if line.startswith("BFLOPs"))
    assert bflops.split() == ["BFLOPs", "3.467", "5.571", "-37.8", "%"]
    floats = next(line for line in out.splitlines() if line.startswith("weight floats"))
    assert floats.split() == ["weight", "floats", "4,939,758", "8,858,734", "-44.2", "%"]


def test_comparison_lines_arithmetic():
    prn = totals(build(REPO / "cfg" / "yolov3-tiny-prn.cfg"))
    tiny = totals(build(REPO / "cfg" / "yolov3-tiny.cfg"))
    assert (f"{tiny.bflops:.3f}", tiny.weight_floats, tiny.parameters) == ("5.571", 8_858_734, 8_852_366)
    lines = comparison_lines("prn", prn, "tiny", tiny)
    assert lines[4].split() == ["parameters", "4,935,182", "8,852,366", "-44.3", "%"]


def test_size_override_matches_darknet_at_another_size(capsys):
    # The yolov3 fixture ran the zoo cfg at 320x320; --width/--height on the 416 cfg must give its figure.
    fixture = require(ORACLE / "yolov3")
    expected = json.loads((fixture / "summary.json").read_text())
    cfg = require(SHARED / "darknet" / "cfg" / "yolov3.cfg")
    assert main(["summary", str(cfg), "--width", "320", "--height", "320"]) == 0
    out = capsys.readouterr().out
    assert f"Total BFLOPS {expected['total_bflops']:5.3f}" in out
    assert "320 x 320 x 3 input, 107 layers" in out


def test_bad_input_is_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["summary", str(tmp_path / "missing.cfg")]) == 1
    assert "missing.cfg: no such cfg file" in capsys.readouterr().err
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=x\n")
    assert main(["summary", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.cfg:6" in err and "filters" in err
