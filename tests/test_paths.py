"""`darkpy paths`: gradient timestamps, sources and combinations against the counts the PRN and gradient-path
papers state (Wang et al. 2019, 2022), on small cfgs written here, and the figures of zoo cfgs."""
import json
import warnings
from types import SimpleNamespace

import cv2
import pytest

from darkpy.cfg import parse_cfg_text
from darkpy.model import Darknet
from darkpy.commands.paths import run
from darkpy.paths import PathReport, analyze, compress
from conftest import SHARED, require

NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"


def conv(filters: int, size: int = 1) -> str:
    return f"\n[convolutional]\nfilters={filters}\nsize={size}\npad=1\nactivation=leaky\n"


def shortcut(source: int) -> str:
    return f"\n[shortcut]\nfrom={source}\n"


def route(*layers: int, groups: int = 1, group_id: int = 0) -> str:
    return f"\n[route]\nlayers={','.join(map(str, layers))}\ngroups={groups}\ngroup_id={group_id}\n"


def paths_of(text: str) -> PathReport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analyze(Darknet(parse_cfg_text(text, "<test>")))


def layer(report: PathReport, index: int):
    return next(item for item in report.layers if item.index == index)


def loss(index: int) -> int:
    return -index - 1  # how a loss at layer `index` is named as a source


# ---- PRN paper, Fig. 5: a 5-layer residual network ------------------------------------------------------------
RESIDUAL_5 = NET + conv(8, 3) + conv(8, 3) + conv(8, 3) + shortcut(-3) + conv(8, 3) + conv(8, 3) + shortcut(-3)


def test_plain_residual_stack_receives_the_five_combinations_of_the_prn_paper():
    report = paths_of(RESIDUAL_5)
    # layers 1..5 of the paper are the convolutions 0, 1, 2, 4, 5; the final [shortcut] (6) is the loss.
    timestamps = {index: layer(report, index).timestamps for index in (0, 1, 2, 4, 5)}
    assert timestamps == {5: [1], 4: [2], 2: [1, 3], 1: [2, 4], 0: [1, 3, 5]}  # G1, G2, G1+G3, G2+G4, G1+G3+G5
    assert report.combinations == 5 and report.timestamp_sets == 5
    # The first layer's G3 arrives twice: through the identity after layer 4, and from layer 2 (its source).
    first = layer(report, 0).groups[0]
    assert {(t, s) for t, s, _ in first.terms} == {(1, loss(6)), (3, 4), (3, 1), (5, 1)}
    assert report.longest_path == 5 and report.max_shortest_path == 2
    assert all(len(item.groups) == 1 and item.channels_without_gradient == 0 for item in report.layers)


# ---- PRN paper, section 4.2: PRN-shrink / -expand / -bottleneck ---------------------------------------------------
def prn_stack(widths) -> PathReport:
    """k layers with weights; every layer but the first adds a partial residual from the previous output (the
    first one's would come from the image, which has no weights). Darknet adds the channels both have."""
    text = NET + conv(widths[0])
    for width in widths[1:]:
        text += conv(width) + shortcut(-2)
    return paths_of(text)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_prn_shrink_gives_k_k_plus_1_over_2_combinations_and_sources(k):
    report = prn_stack([4 * (k - i) + 4 for i in range(k)])
    assert report.combinations == k * (k + 1) // 2
    assert report.sources == k * (k + 1) // 2
    # channel-aware: the l-th layer (from the input) splits into k - l + 1 channel groups, by how far the
    # identity carries each channel
    convs = [item for item in report.layers if item.type == "convolutional"]
    assert [len(item.groups) for item in convs] == list(range(k, 0, -1))
    # Timestamps alone merge groups that get the same timestamps from different sources: 2k - 1 sets.
    assert report.timestamp_sets == 2 * k - 1


@pytest.mark.parametrize("k", [2, 4, 6])
def test_prn_expand_gives_k_combinations_and_k_k_plus_1_over_2_sources(k):
    report = prn_stack([4 * i + 4 for i in range(k)])
    assert report.combinations == k
    assert report.sources == k * (k + 1) // 2


@pytest.mark.parametrize("k", [2, 4, 6, 8])
def test_prn_bottleneck_counts(k):
    half = k // 2
    report = prn_stack([4 * (half - i) + 4 for i in range(half)] + [4 * i + 8 for i in range(half)])
    assert report.combinations == ((1 + half) * half + k) // 2
    assert report.sources == (1 + half) * half


def test_partial_shortcut_splits_channels_by_timestamp():
    report = prn_stack([12, 8, 4])
    first = layer(report, 0)
    assert [(g.start, g.stop, g.timestamps) for g in first.groups] == [(0, 4, [1, 2, 3]), (4, 8, [2, 3]),
                                                                        (8, 12, [2, 3])]
    # same timestamps on 4-8 and 8-12, but 4-8 also gets the gradient of layer 3 through the identity
    assert first.groups[1].sources == [1, 3] and first.groups[2].sources == [1]


# ---- gradient sources: addition shares the gradient, concatenation splits it (gradient-path paper, Fig. 8) --------
TWO_BRANCHES = NET + conv(8, 3) + conv(8, 3) + route(-2) + conv(8, 3)


def test_addition_gives_both_addends_the_same_combination():
    report = paths_of(TWO_BRANCHES + shortcut(-3))
    a, b = layer(report, 1), layer(report, 3)
    assert a.groups[0].terms == b.groups[0].terms == {(1, loss(4), (0, 8))}
    assert report.combinations == 2  # the two addends share one; the input conv has its own


def test_concatenation_gives_each_input_its_own_piece_of_the_gradient():
    report = paths_of(TWO_BRANCHES + route(-1, -3) + conv(8))
    a, b = layer(report, 1), layer(report, 3)
    assert a.timestamps == b.timestamps == [2]
    assert b.groups[0].terms == {(2, 5, (0, 8))} and a.groups[0].terms == {(2, 5, (8, 16))}
    assert report.combinations == 4


def test_route_groups_send_the_gradient_only_into_their_slice():
    """A CSP block as yolov4-tiny writes it: split off the second half of A, work on it, join with all of A."""
    text = (NET + conv(16, 3) + route(-1, groups=2, group_id=1) + conv(8, 3) + conv(8, 3) + route(-1, -2)
            + conv(16) + route(-6, -1) + conv(8))
    report = paths_of(text)
    a = layer(report, 0)
    assert [(g.start, g.stop, g.timestamps, g.sources) for g in a.groups] == [
        (0, 8, [2], [7]), (8, 16, [2, 4, 5], [2, 7])]
    assert layer(report, 2).timestamps == [3, 4]


def test_a_channel_no_layer_reads_gets_no_gradient():
    report = paths_of(NET + conv(16, 3) + route(-1, groups=2, group_id=1) + conv(8))
    assert layer(report, 0).channels_without_gradient == 8
    assert [(g.start, g.stop) for g in layer(report, 0).groups] == [(8, 16)]


# ---- gradient-path paper, section 2.4: OSA stacking vs residual stacking ----------------------------------------
def osa_stack(blocks: int) -> PathReport:
    """VoVNet's OSA module: three convs, one concatenation of the block input and all three, a transition."""
    text = NET + conv(8, 3)
    for _ in range(blocks):
        text += conv(8, 3) + conv(8, 3) + conv(8, 3) + route(-4, -3, -2, -1) + conv(8)
    return paths_of(text)


def residual_stack(blocks: int) -> PathReport:
    text = NET + conv(8, 3)
    for _ in range(blocks):
        text += conv(8) + conv(8, 3) + shortcut(-3)
    return paths_of(text)


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_each_osa_block_lengthens_every_shortest_path_by_one(blocks):
    before, after = osa_stack(blocks), osa_stack(blocks + 1)
    assert all(layer(after, item.index).shortest == item.shortest + 1 for item in before.layers)
    assert after.max_shortest_path == before.max_shortest_path + 1 == blocks + 2


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_residual_blocks_leave_shortest_paths_alone_and_lengthen_the_longest(blocks):
    before, after = residual_stack(blocks), residual_stack(blocks + 1)
    assert all(layer(after, item.index).shortest == item.shortest for item in before.layers)
    assert after.max_shortest_path == before.max_shortest_path == 2
    assert after.longest_path == before.longest_path + 2 == 2 * blocks + 3


def test_stopbackward_freezes_the_layers_before_it():
    text = NET + conv(8, 3) + conv(8, 3) + "stopbackward=1\n" + conv(8, 3) + conv(8, 3)
    report = paths_of(text)
    assert report.frozen_through == 1
    assert [item.index for item in report.trained] == [2, 3]
    assert not layer(report, 0).receives_gradient and not layer(report, 1).receives_gradient


def test_heads_and_the_final_layer_are_the_losses():
    head = ("\n[convolutional]\nfilters=18\nsize=1\nactivation=linear\n"
            "\n[yolo]\nmask=0,1,2\nanchors=1,1,2,2,3,3\nclasses=1\nnum=3\n")
    report = paths_of(NET + conv(8, 3) + head + route(-3) + conv(8, 3) + conv(8, 3))
    assert report.losses == [2, 5]
    assert layer(report, 0).sources == [1, 4] and layer(report, 1).sources == [loss(2)]
    assert layer(report, 5).timestamps == [1] and layer(report, 5).sources == [loss(5)]


def test_compress():
    assert compress([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"
    assert compress([]) == ""


# ---- the zoo --------------------------------------------------------------------------------------------------
# (layers with weights, longest path, largest shortest path, combinations, distinct timestamp sets, sources)
ZOO = {
    # 13 convolutions. Longest: the 7 backbone convs, 13, 18, 21, 22; shortest of layer 0: 0-8, then 21, 22.
    "yolov3-tiny": (13, 11, 7, 13, 11, 15),
    # PRN head: the partial shortcuts from layer 8 split its 256 channels into two groups (0-127: identity).
    "yolov3-tiny-prn": (13, 12, 6, 14, 13, 15),
    # 52 convolutions + the 1000-class one; every conv is on the longest path; layer 0's shortest path goes
    # through the stem, the 5 downsampling convs and the classifier (residual blocks add nothing).
    "darknet53": (53, 53, 7, 53, 53, 53),
    "csdarknet53-omega": (73, 68, 17, 73, 68, 78),
    "yolov7-tiny": (58, 43, 11, 58, 43, 96),
    "yolov4-tiny": (21, 19, 9, 24, 20, 32),
    "yolov4x-mish": (137, 122, 14, 137, 122, 155),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_figures(name):
    cfg = require(SHARED / "darknet" / "cfg" / f"{name}.cfg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = analyze(Darknet.from_cfg(cfg))
    figures = (len(report.layers), report.longest_path, report.max_shortest_path, report.combinations,
               report.timestamp_sets, report.sources)
    assert figures == ZOO[name]


def test_prn_splits_layer_8_of_yolov3_tiny_prn():
    cfg = require(SHARED / "darknet" / "cfg" / "yolov3-tiny-prn.cfg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = analyze(Darknet.from_cfg(cfg))
    groups = layer(report, 8).groups
    assert [(g.start, g.stop, g.shortest, g.longest) for g in groups] == [(0, 128, 2, 8), (128, 256, 4, 8)]
    assert groups[0].sources == [10, 23, 26] and groups[1].sources == [10]


# ---- the command ----------------------------------------------------------------------------------------------
def test_command_writes_table_json_and_plot(tmp_path, capsys):
    cfg = tmp_path / "res5.cfg"
    cfg.write_text(RESIDUAL_5)
    out_json, out_png = tmp_path / "paths.json", tmp_path / "paths.png"
    args = SimpleNamespace(cfg=str(cfg), json=str(out_json), plot=str(out_png), channels=True, width=None,
                           height=None)
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "longest gradient path:           5 (layer 0)" in printed
    assert "largest shortest gradient path:  2 (layer 1)" in printed
    data = json.loads(out_json.read_text())
    assert data["network"]["combinations"] == 5 and data["losses"] == [6]
    assert [item["timestamps"] for item in data["layers"]] == [[1, 3, 5], [2, 4], [1, 3], [2], [1]]
    assert data["layers"][0]["sources"] == [1, 4, "loss@6"]
    image = cv2.imread(str(out_png))
    assert image is not None and image.shape == (480, 720, 3)


def test_command_reports_a_bad_cfg(tmp_path, capsys):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(NET + conv(8) + shortcut(-5))
    args = SimpleNamespace(cfg=str(cfg), json=None, plot=None, channels=False, width=None, height=None)
    assert run(args) == 1
    error = capsys.readouterr().err
    assert "bad.cfg:" in error and "from" in error
    args.cfg = str(tmp_path / "missing.cfg")
    assert run(args) == 1
    assert "missing.cfg" in capsys.readouterr().err


def test_command_reports_an_unwritable_plot(tmp_path, capsys):
    cfg = tmp_path / "res5.cfg"
    cfg.write_text(RESIDUAL_5)
    args = SimpleNamespace(cfg=str(cfg), json=None, plot=str(tmp_path / "plot.txt"), channels=False, width=None,
                           height=None)
    assert run(args) == 1
    assert "cannot write the plot" in capsys.readouterr().err
