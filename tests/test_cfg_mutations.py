"""Generated cfg mutations (issue #16) checked against the layer table C Darknet builds from the same text.

Three small base cfgs (a two-head detector, a classifier, a grouped-route classifier with [connected]) are mutated
by a fixed list of edits: a number set to 0, negative, huge, fractional or non-numeric text; a required option
deleted; `layers=`/`from=` out of range; `filters` not matching `[yolo]`; an unknown section, option or
activation; a stride larger than the input; and edits of the text itself (CRLF, blanks, comments, a BOM).

`tests/fixtures/cfg_mutations/darknet.json` holds what AlexeyAB Darknet 59596d78 (CPU, OPENCV=0) did with each
text, made by a small C program kept outside the repository: `parse_network_cfg_custom(cfg, 1, 1)` under an
8 GiB address-space limit and a 20 s timeout, then every layer's out_c/out_h/out_w and outputs. "built" gives
those numbers; "refused" (Darknet's own error exit) and "crashed" (a signal or a failed assert) give the last
message Darknet printed. Only Darknet's outputs are stored, never its files.

For each case darkpy must build the same per-layer shapes when Darknet builds, and raise a CfgError naming the cfg
file and line when Darknet refuses or crashes: never another exception, never a silently different network.
DARKPY_REFUSES and DARKPY_BUILDS list the cases where darkpy deliberately differs, each with its reason.

`python tests/test_cfg_mutations.py OUT_DIR` writes every case's text to OUT_DIR/<n>.cfg and the names in order
to OUT_DIR/names.json, the input of that C program; a case added here needs the fixture made again.
"""
import functools
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from darkpy.cfg import CfgError
from darkpy.model import Darknet

FIXTURE = Path(__file__).parent / "fixtures" / "cfg_mutations" / "darknet.json"

Options = List[Tuple[str, str]]
Cfg = List[Tuple[str, Options]]  # [(section name, [(key, value), ...]), ...]; index 0 is [net]

NET_64: Options = [("width", "64"), ("height", "64"), ("channels", "3")]
ANCHORS = "10,14,23,27,37,58,81,82,135,169,344,319"

# Two [yolo] heads fed by route, shortcut and upsample: sections are numbered from [net] = 0, so layer i is i + 1.
DETECTOR: Cfg = [
    ("net", NET_64),
    ("convolutional", [("batch_normalize", "1"), ("filters", "8"), ("size", "3"), ("stride", "1"), ("pad", "1"),
                       ("activation", "leaky")]),                                              # 1: 8x64x64
    ("maxpool", [("size", "2"), ("stride", "2")]),                                             # 2: 8x32x32
    ("convolutional", [("batch_normalize", "1"), ("filters", "16"), ("size", "3"), ("stride", "1"), ("pad", "1"),
                       ("activation", "leaky")]),                                              # 3: 16x32x32
    ("maxpool", [("size", "2"), ("stride", "2")]),                                             # 4: 16x16x16
    ("convolutional", [("filters", "16"), ("size", "3"), ("pad", "1"), ("activation", "leaky")]),  # 5
    ("shortcut", [("from", "-2"), ("activation", "linear")]),                                  # 6: + layer 3
    ("convolutional", [("filters", "21"), ("size", "1"), ("activation", "linear")]),           # 7: 3 * (2 + 5)
    ("yolo", [("mask", "3,4,5"), ("anchors", ANCHORS), ("classes", "2"), ("num", "6")]),       # 8
    ("route", [("layers", "-4")]),                                                             # 9: layer 4
    ("convolutional", [("filters", "8"), ("size", "1"), ("activation", "leaky")]),             # 10
    ("upsample", [("stride", "2")]),                                                           # 11: 8x32x32
    ("route", [("layers", "-1,2")]),                                                           # 12: 24x32x32
    ("convolutional", [("filters", "21"), ("size", "1"), ("activation", "linear")]),           # 13
    ("yolo", [("mask", "0,1,2"), ("anchors", ANCHORS), ("classes", "2"), ("num", "6")]),       # 14
]

CLASSIFIER: Cfg = [
    ("net", NET_64),
    ("convolutional", [("filters", "8"), ("size", "3"), ("stride", "2"), ("pad", "1"), ("activation", "leaky")]),
    ("maxpool", [("size", "2"), ("stride", "2")]),
    ("convolutional", [("filters", "10"), ("size", "1"), ("activation", "linear")]),
    ("avgpool", []),
    ("softmax", [("groups", "1")]),
]

# A grouped route (half of the channels), a fully connected layer and dropout.
GROUPED: Cfg = [
    ("net", [("width", "32"), ("height", "32"), ("channels", "3")]),
    ("convolutional", [("filters", "16"), ("size", "3"), ("stride", "2"), ("pad", "1"), ("activation", "mish")]),
    ("route", [("layers", "-1"), ("groups", "2"), ("group_id", "1")]),
    ("convolutional", [("filters", "4"), ("size", "3"), ("pad", "1"), ("activation", "relu")]),
    ("connected", [("output", "10"), ("activation", "linear")]),
    ("dropout", [("probability", "0.5")]),
    ("softmax", []),
]


# ---- editing a cfg -----------------------------------------------------------------------------------------------

def render(cfg: Cfg) -> str:
    """The cfg as Darknet cfg text, one blank line after each section."""
    return "".join(f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in options) + "\n" for name, options in cfg)


def set_option(cfg: Cfg, index: int, key: str, value: str) -> Cfg:
    """The cfg with `key=value` in section `index` (replacing the key's value, or appended)."""
    name, options = cfg[index]
    if any(k == key for k, _ in options):
        options = [(k, value if k == key else v) for k, v in options]
    else:
        options = options + [(key, value)]
    return cfg[:index] + [(name, options)] + cfg[index + 1:]


def delete_option(cfg: Cfg, index: int, key: str) -> Cfg:
    name, options = cfg[index]
    assert any(k == key for k, _ in options), (index, key)  # a typo in the case list would test nothing
    return cfg[:index] + [(name, [(k, v) for k, v in options if k != key])] + cfg[index + 1:]


def rename_section(cfg: Cfg, index: int, name: str) -> Cfg:
    return cfg[:index] + [(name, cfg[index][1])] + cfg[index + 1:]


# ---- the cases ---------------------------------------------------------------------------------------------------

# Values tried on a numeric option: C's atoi/atof read the leading part ('3.7' -> 3, '1e2' -> 1), 'abc' has none.
NUMBER_EDITS = ("0", "-1", "3.7", "1e2", "abc")


def _number_edits(prefix: str, cfg: Cfg, index: int, key: str, values=NUMBER_EDITS) -> Dict[str, Cfg]:
    return {f"{prefix}.{key}={value}": set_option(cfg, index, key, value) for value in values}


def detector_cases() -> Dict[str, Cfg]:
    d = DETECTOR
    cases = {"base": d}
    cases.update(_number_edits("conv1", d, 1, "filters", NUMBER_EDITS + ("99999999",)))
    cases.update(_number_edits("conv1", d, 1, "size", ("0", "-3", "4", "2.5", "100")))
    cases.update(_number_edits("conv1", d, 1, "stride", ("0", "-1", "128", "abc")))
    cases.update(_number_edits("conv1", d, 1, "pad", ("0", "x")))
    cases["conv1.delete-filters"] = delete_option(d, 1, "filters")
    cases["conv1.delete-size"] = delete_option(d, 1, "size")
    cases["conv1.activation=leakyy"] = set_option(d, 1, "activation", "leakyy")
    cases["conv1.unknown-option"] = set_option(d, 1, "sizee", "5")
    cases.update(_number_edits("maxpool2", d, 2, "size", ("0", "-2", "100")))
    cases.update(_number_edits("maxpool2", d, 2, "stride", ("0", "100", "1.5")))
    cases.update(_number_edits("shortcut6", d, 6, "from", ("-10", "5", "0", "abc")))
    cases["shortcut6.delete-from"] = delete_option(d, 6, "from")
    cases.update(_number_edits("conv7", d, 7, "filters", ("20", "18")))  # 20: not 3 * (classes + 5)
    cases.update(_number_edits("yolo8", d, 8, "classes", ("3", "0", "-1")))
    cases.update(_number_edits("yolo8", d, 8, "mask", ("3,4,9", "3,4")))
    cases.update(_number_edits("yolo8", d, 8, "num", ("2",)))
    cases["yolo8.delete-anchors"] = delete_option(d, 8, "anchors")
    cases.update(_number_edits("route9", d, 9, "layers", ("-20", "20", "-1,0", "abc", "8")))
    cases["route9.delete-layers"] = delete_option(d, 9, "layers")
    cases.update(_number_edits("upsample11", d, 11, "stride", ("0", "-2", "3")))
    cases["section11=[upsamplee]"] = rename_section(d, 11, "upsamplee")
    cases.update(_number_edits("net", d, 0, "width", ("0", "-64", "65", "abc")))
    cases.update(_number_edits("net", d, 0, "channels", ("0", "1")))
    cases["net.delete-width"] = delete_option(d, 0, "width")
    return cases


def classifier_cases() -> Dict[str, Cfg]:
    c = CLASSIFIER
    cases = {"base": c}
    # Without a route, a changed size reaches the end of the network: the shape arithmetic itself is compared.
    cases.update(_number_edits("conv1", c, 1, "filters", ("0", "-4")))
    cases.update(_number_edits("conv1", c, 1, "size", ("0", "-3", "4", "2.5", "100")))
    cases.update(_number_edits("conv1", c, 1, "stride", ("0", "-1", "1e2", "64", "65")))  # 64: the input's size
    cases.update(_number_edits("conv1", c, 1, "pad", ("0", "x")))
    cases.update(_number_edits("conv1", c, 1, "dilation", ("2", "0")))
    cases.update(_number_edits("maxpool2", c, 2, "size", ("5", "100")))
    cases.update(_number_edits("maxpool2", c, 2, "stride", ("3", "0", "-1")))
    cases.update(_number_edits("maxpool2", c, 2, "padding", ("3", "-1")))
    cases.update(_number_edits("net", c, 0, "height", ("48", "1e2", "7")))
    cases.update(_number_edits("softmax5", c, 5, "groups", ("0", "3", "abc")))
    cases.update(_number_edits("softmax5", c, 5, "temperature", ("0", "abc")))
    cases["section4=[foo]"] = rename_section(c, 4, "foo")
    cases["section4=[avg]"] = rename_section(c, 4, "avg")  # Darknet's own alias
    return cases


def grouped_cases() -> Dict[str, Cfg]:
    g = GROUPED
    cases = {"base": g}
    cases.update(_number_edits("route2", g, 2, "groups", ("0", "3", "-2")))
    cases.update(_number_edits("route2", g, 2, "group_id", ("2", "-1")))
    cases.update(_number_edits("connected4", g, 4, "output", ("0", "-5", "abc", "99999999")))
    cases.update(_number_edits("dropout5", g, 5, "probability", ("1.5", "-1", "abc")))
    return cases


def text_cases() -> Dict[str, str]:
    """Edits of the classifier's text itself: line endings, spacing, comments, a repeated key, a BOM."""
    text = render(CLASSIFIER)
    return {
        "crlf": text.replace("\n", "\r\n"),
        "spaces-and-tabs": text.replace("filters=8", " fil ters =\t8 "),  # Darknet deletes every blank
        "inline-comment": text.replace("filters=8", "filters=8#16"),
        "repeated-key": text.replace("filters=8", "filters=8\nfilters=16"),  # the first one wins
        "byte-order-mark": "\ufeff" + text,
        "no-closing-bracket": text.replace("[maxpool]", "[maxpool"),
        "option-without-value": text.replace("filters=8", "filters"),
    }


def mutation_cases() -> Dict[str, str]:
    """Every case's name ("base/edit") and cfg text, in a fixed order."""
    cases = {}
    for base, make in (("detector", detector_cases), ("classifier", classifier_cases), ("grouped", grouped_cases)):
        cases.update({f"{base}/{edit}": render(cfg) for edit, cfg in make().items()})
    cases.update({f"text/{edit}": text for edit, text in text_cases().items()})
    return cases


# ---- where darkpy deliberately differs from Darknet ----------------------------------------------------------------

# darkpy's parser reads numbers as atoi/atof do, but text holding no number at all is refused (darkpy/cfg.py):
# Darknet reads it as 0, which is never what the author wrote.
NO_NUMBER = "text with no number: Darknet reads 0, darkpy refuses (cfg.py's rule)"
# Darknet builds these by reading outside an array (anchors beyond num, channels outside the input layer):
# its numbers then depend on whatever memory lies there.
OUT_OF_RANGE = "Darknet reads memory outside an array"
# Layers Darknet builds although they compute nothing meaningful.
EMPTY_WINDOW = "a kernel or pooling window of size <= 0: Darknet builds a layer over no pixels"
NEGATIVE_STRIDE = "a negative stride: Darknet's layer table holds negative sizes"
NO_OUTPUTS = "a [connected] layer with 0 outputs: nothing after it can compute anything"
DROPOUT_RANGE = "a dropout probability outside [0, 1): Darknet's training scale 1 / (1 - p) is negative"

# Cases Darknet builds that darkpy refuses with a CfgError (file:line), and why.
DARKPY_REFUSES: Dict[str, str] = {
    "detector/conv1.activation=leakyy": "Darknet prints 'Couldn't find activation' and silently uses ReLU: a typo "
                                        "would change the network's numbers",
    "detector/maxpool2.size=0": EMPTY_WINDOW,
    "detector/maxpool2.size=-2": EMPTY_WINDOW,
    "detector/yolo8.mask=3,4,9": OUT_OF_RANGE,
    "detector/yolo8.num=2": OUT_OF_RANGE,
    "classifier/softmax5.temperature=abc": NO_NUMBER,
    "classifier/conv1.size=0": EMPTY_WINDOW,
    "classifier/conv1.size=-3": EMPTY_WINDOW,
    "classifier/conv1.stride=-1": NEGATIVE_STRIDE,
    "classifier/conv1.pad=x": NO_NUMBER,
    "classifier/conv1.dilation=0": "dilation=0 puts every tap of the kernel on one pixel; darkpy (PyTorch's "
                                   "convolution) has no such layer",
    "classifier/maxpool2.stride=-1": NEGATIVE_STRIDE,
    "classifier/section4=[foo]": "Darknet prints 'Type not recognized' and keeps an uninitialised layer",
    "grouped/route2.groups=3": "Darknet's layer contradicts itself: out_c = 16 / 3 = 5 channels (1280 floats), but "
                               "it copies 4096 / 3 = 1365 floats, splitting a channel",
    "grouped/route2.group_id=2": OUT_OF_RANGE,
    "grouped/route2.group_id=-1": OUT_OF_RANGE,
    "grouped/connected4.output=0": NO_OUTPUTS,
    "grouped/connected4.output=abc": NO_NUMBER,
    "grouped/dropout5.probability=1.5": DROPOUT_RANGE,
    "grouped/dropout5.probability=-1": DROPOUT_RANGE,
    "grouped/dropout5.probability=abc": NO_NUMBER,
    "text/option-without-value": "Darknet prints 'Config file error' and skips the line: the layer silently "
                                 "falls back to its defaults (1 filter)",
}

# Cases Darknet refuses that darkpy builds, and why.
DARKPY_BUILDS: Dict[str, str] = {
    "detector/shortcut6.from=0": "a [shortcut] from a map of another size: AlexeyAB asserts, darkpy matches the "
                                 "maps as pjreddie Darknet's shortcut_cpu does (the resnet zoo cfgs need it)",
    "classifier/net.height=1e2": "height 1: Darknet prints the same layer table darkpy builds, then divides by zero "
                                 "in its avg_outputs statistic (no layer is more than 1 pixel in both sides)",
    "text/byte-order-mark": "Darknet reads '\\ufeff[net]' as an option before any section and crashes; issue #16 "
                            "asks darkpy to parse it",
}


# ---- the test ----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def darknet_outcomes() -> Dict[str, dict]:
    """Case name -> what C Darknet did with it (see the module docstring)."""
    return json.loads(FIXTURE.read_text())


CASES = mutation_cases()


def test_fixture_covers_exactly_the_generated_cases():
    """The fixture was made from this very list: a case added or renamed here needs the C program run again."""
    assert sorted(darknet_outcomes()) == sorted(CASES)


def test_differences_are_real_differences():
    """Every listed difference is a case of the list, on the side Darknet actually took (else it is none)."""
    outcomes = darknet_outcomes()
    assert not set(DARKPY_REFUSES) & set(DARKPY_BUILDS)
    assert all(outcomes[name]["darknet"] == "built" for name in DARKPY_REFUSES)
    assert all(outcomes[name]["darknet"] != "built" for name in DARKPY_BUILDS)


def _same_table(darkpy_shapes, darknet) -> bool:
    """Layer by layer, darkpy's (c, h, w) equals Darknet's out_c/out_h/out_w; where Darknet leaves those 0 (its
    [softmax], [connected] set only `outputs`) darkpy's c * h * w equals Darknet's outputs."""
    if len(darkpy_shapes) != len(darknet["shapes"]):
        return False
    for (c, h, w), shape, outputs in zip(darkpy_shapes, darknet["shapes"], darknet["outputs"]):
        if shape == [0, 0, 0]:
            if c * h * w != outputs:
                return False
        elif [c, h, w] != shape or c * h * w != outputs:
            return False
    return True


def _darkpy_outcome(text: str, path: Path):
    """darkpy's per-layer (c, h, w) for this cfg text, or the CfgError it raised (any other exception fails)."""
    path.write_bytes(text.encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warnings are darkpy's extra words; the outcome is what is compared
        try:
            model = Darknet.from_cfg(str(path))
        except CfgError as error:
            return error
    return [list(layer.out_shape) for layer in model.layers]


@pytest.mark.parametrize("name", list(CASES))
def test_mutation_matches_darknet(name, tmp_path):
    """darkpy builds Darknet's layer table where Darknet builds, and refuses with CFG:LINE where Darknet stops."""
    darknet = darknet_outcomes()[name]
    path = tmp_path / "m.cfg"
    outcome = _darkpy_outcome(CASES[name], path)
    refuses = isinstance(outcome, CfgError)
    if name in DARKPY_BUILDS:
        assert not refuses, f"listed as built by darkpy, but refused: {outcome}"
        return
    if darknet["darknet"] == "built" and name not in DARKPY_REFUSES:
        assert not refuses, f"Darknet builds it; darkpy refused: {outcome}"
        assert _same_table(outcome, darknet), f"darkpy {outcome} differs from Darknet {darknet}"
        return
    assert refuses, f"Darknet: {darknet['darknet']} ({darknet.get('message')}); darkpy built {outcome}"
    assert re.search(re.escape(str(path)) + r":\d+", str(outcome)), f"no file:line in: {outcome}"


def write_cases(out_dir: Path) -> None:
    """Each case's text as OUT_DIR/<n>.cfg and the names in order as OUT_DIR/names.json, for the C program."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(CASES)
    for number, name in enumerate(names):
        (out_dir / f"{number}.cfg").write_bytes(CASES[name].encode())  # as written: no newline translation
    (out_dir / "names.json").write_text(json.dumps(names, indent=1))


if __name__ == "__main__":
    write_cases(Path(sys.argv[1]))
