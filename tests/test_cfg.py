"""The cfg parser's Darknet rules, and clear load-time errors naming file, line and option."""
import warnings

import pytest
import torch

from darkpy.cfg import CfgError, CfgWarning, parse_cfg_text
from darkpy.model import Darknet

NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"


def build(text, tmp_path, name="t.cfg", **kw):
    path = tmp_path / name
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CfgWarning)
        return Darknet.from_cfg(path, **kw)


def error_of(text, tmp_path):
    with pytest.raises(CfgError) as info:
        build(text, tmp_path)
    return info.value


def test_whitespace_comments_aliases_and_first_key_wins():
    sections = parse_cfg_text("[network]\n width = 32 # w\n\n; c\n# c\n[conv]\nfilters = 4\nfilters=8\n"
                              "activation = leaky\n[max]\n[soft]\n[silence]\n", "x.cfg")
    assert [s.type for s in sections] == ["net", "convolutional", "maxpool", "softmax", "empty"]
    conv = sections[1]
    assert conv.get_int("filters") == 4  # the first occurrence wins, as option_find scans from the front
    assert conv.get_str("activation") == "leaky"
    assert sections[0].get_int("width") == 32  # inline comment cut, spaces stripped
    assert conv.options["filters"].line == 7


def test_negative_and_absolute_indices(tmp_path):
    text = NET + ("[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n" * 3 +
                  "[route]\nlayers=-1,0\n[shortcut]\nfrom=1\nactivation=linear\n")
    model = build(text, tmp_path)
    assert model.layers[3].inputs == [2, 0]
    assert model.layers[3].out_shape == (8, 32, 32)
    assert model.layers[4].inputs == [1]
    assert model.layers[4].out_shape == (8, 32, 32)  # PRN: keeps the previous layer's 8 channels, adds 4


def test_build_at_another_size(tmp_path):
    text = NET + "[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
    model = build(text, tmp_path, width=64, height=48)
    assert model.layers[0].out_shape == (4, 24, 32)
    assert model(torch.zeros(1, 3, 48, 64)).shape == (1, 4, 24, 32)


def test_unused_keys_warn_once_listing_them(tmp_path):
    path = tmp_path / "u.cfg"
    path.write_text(NET + "max_epochs=3\n[convolutional]\nfilters=4\nsizee=3\nactivation=leaky\n")
    with pytest.warns(CfgWarning) as record:
        Darknet.from_cfg(path)
    assert len(record) == 1
    message = str(record[0].message)
    assert f"{path}:5" in message and "max_epochs" in message and "sizee" in message and f"{path}:8" in message


@pytest.mark.parametrize("text, line, option, words", [
    (NET + "[convolutional]\nfilters=4\n[bogus]\n", 7, None, "unknown section"),
    (NET + "[convolutional]\nfilters=abc\n", 6, "filters", "not an integer"),
    (NET + "[convolutional]\nfilters=4\nactivation=leakyy\n", 7, "activation", "unknown activation"),
    (NET + "[convolutional]\nfilters=4\n[shortcut]\nfrom=-3\n", 8, "from", "refers to layer -3"),
    (NET + "[convolutional]\nfilters=4\n[route]\nlayers=5\n", 8, "layers", "refers to layer 5"),
    (NET + "[convolutional]\nfilters=4\nactivation=leaky\n[maxpool]\nsize=2\nstride=2\n[route]\nlayers=-1,-2\n",
     12, "layers", "different sizes"),
    (NET + "[convolutional]\nfilters=4\nactivation=leaky\n[maxpool]\nsize=2\nstride_x=2\nstride_y=1\n[shortcut]\n"
           "from=-2\n", 13, "from", "same whole ratio"),
    (NET + "[convolutional]\nfilters=20\nactivation=linear\n[yolo]\nclasses=80\nmask=0,1,2\nnum=3\n"
           "anchors=1,2,3,4,5,6\n", 9, "classes", "needs filters=255"),
    (NET + "[local]\nfilters=4\n", 5, None, "locally connected layers are not supported"),
    (NET + "[convolutional]\nfilters=4\nbinary=1\n", 7, "binary", "not supported"),
    ("[convolutional]\nfilters=4\n", 1, None, "first section must be [net]"),
    (NET + "[convolutional]\nfilters 4\n", 6, None, "expected key=value"),
])
def test_bad_cfg_errors_name_file_line_option(tmp_path, text, line, option, words):
    err = error_of(text, tmp_path)
    assert err.file == str(tmp_path / "t.cfg") and err.line == line and err.option == option
    assert words in str(err) and f"t.cfg:{line}" in str(err)


def test_missing_cfg_file(tmp_path):
    with pytest.raises(CfgError, match="cannot read cfg file"):
        Darknet.from_cfg(tmp_path / "absent.cfg")
