"""darkpy.data: darknet .data/.names/list files, label paths and label files with bad lines."""
import os

import numpy as np
import pytest

from conftest import ORACLE, require
from darkpy.data import (
    read_tree,
    BAD_CLASS_ID,
    BAD_COLUMN_COUNT,
    BAD_COORDINATES,
    MISSING_LABEL_FILE,
    UNPARSABLE,
    DataError,
    DataProblems,
    check_names_count,
    darknet_label_path,
    label_path,
    read_data_config,
    read_image_list,
    read_labels,
    read_names,
    resolve_path,
)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return str(path)


# --------------------------------------------------------------------------------------------- .data

def test_data_file_darknet_rules(tmp_path, capsys):
    path = write(tmp_path / "x.data", (
        "# a comment\n"
        "; another\n"
        "classes = 3\r\n"
        "  train  = data/my train.txt\n"  # darknet deletes every space, also inside the value
        "valid=data/valid.txt\n"
        "valid=ignored.txt\n"  # the first occurrence wins
        "names = x.names\n"
        "eval=\n"  # a line ending with '=' is reported and skipped, like darknet's "Config file error line"
        "difficult = d.txt\n"
    ))
    config = read_data_config(path)
    assert config.classes == 3
    assert config.train == "data/mytrain.txt"
    assert config.valid == "data/valid.txt"
    assert config.names == "x.names"
    assert config.backup == "/backup/" and config.eval == "voc"  # darknet's defaults
    assert config.options["difficult"] == "d.txt"
    assert config.where("valid") == f"{path}:5"
    assert f"{path}:8" in capsys.readouterr().err


def test_data_file_errors(tmp_path):
    with pytest.raises(DataError, match="nothere.data"):
        read_data_config(str(tmp_path / "nothere.data"))
    bad = write(tmp_path / "bad.data", "classes = many\n")
    with pytest.raises(DataError, match=r"bad.data:1: classes"):
        read_data_config(bad)


def test_tiny3_data_file():
    config = read_data_config(str(require(ORACLE / "map-tiny3" / "tiny3.data")))
    assert (config.classes, config.valid, config.names, config.backup) == (80, "valid.txt", "coco.names", "backup/")


def test_resolve_path(tmp_path, monkeypatch):
    data = write(tmp_path / "set" / "x.data", "valid = list.txt\n")
    write(tmp_path / "set" / "list.txt", "a.jpg\n")
    monkeypatch.chdir(tmp_path)
    # not in the current directory: the folder of the .data file
    assert resolve_path("list.txt", data) == str(tmp_path / "set" / "list.txt")
    # in the current directory: darknet's own lookup wins
    write(tmp_path / "list.txt", "b.jpg\n")
    assert resolve_path("list.txt", data) == "list.txt"
    # nowhere: unchanged, so the error names the path darknet would open
    assert resolve_path("none.txt", data) == "none.txt"
    assert resolve_path(str(tmp_path / "abs.txt"), data) == str(tmp_path / "abs.txt")


# --------------------------------------------------------------------------------------------- names, lists

def test_names_and_count_check(tmp_path):
    path = write(tmp_path / "x.names", "person\r\nbig car\n\nlast\n\n\n")
    names = read_names(path)
    assert names == ["person", "big car", "", "last"]  # a blank name inside keeps the ids, trailing ones dropped
    check_names_count(names, path, 4, "y.cfg")
    with pytest.raises(DataError) as error:
        check_names_count(names, path, 80, "y.cfg")
    assert str(error.value) == (f"Error: in the file {path} number of names 4 that isn't equal to classes=80 "
                                f"in the file y.cfg")
    assert len(read_names(str(require(ORACLE / "map-tiny3" / "coco.names")))) == 80


def test_image_list(tmp_path):
    path = write(tmp_path / "list.txt", "a.jpg\r\n\n  \nsub dir/b.png\nc.jpg")
    assert read_image_list(path) == ["a.jpg", "sub dir/b.png", "c.jpg"]
    with pytest.raises(DataError, match="missing.txt"):
        read_image_list(str(tmp_path / "missing.txt"))


# --------------------------------------------------------------------------------------------- label paths

@pytest.mark.parametrize("image, label", [
    ("data/dog.jpg", "data/dog.txt"),
    ("/d/VOC2007/JPEGImages/0001.jpg", "/d/VOC2007/labels/0001.txt"),
    ("/coco/images/train2017/01.jpg", "/coco/labels/train2017/01.txt"),
    ("/coco/images/val2014/COCO_val2014_01.JPEG", "/coco/labels/val2014/COCO_val2014_01.txt"),
    ("C:\\coco\\images\\val2017\\01.png", "C:\\coco\\labels\\val2017\\01.txt"),
    ("/my/images/train/a.jpg", "/my/images/train/a.txt"),  # the generic images->labels rule is off in darknet
    ("/a/JPEGImages/b/JPEGImages/c.bmp", "/a/labels/b/JPEGImages/c.txt"),  # first occurrence only
    (" x.tiff ", "x.txt"),  # spaces/tabs trimmed before the extension
    ("photo.jpg.png", "photo.jpg.txt"),  # only the extension at the end
])
def test_darknet_label_path(image, label):
    assert darknet_label_path(image) == label


def test_darknet_label_path_unknown_extension():
    assert darknet_label_path("a/b.webp") is None  # darknet: "Failed to infer label file name"


def test_label_path_lookup_order(tmp_path):
    image = write(tmp_path / "set" / "images" / "train" / "a.jpg", "")
    beside = tmp_path / "set" / "images" / "train" / "a.txt"
    convention = tmp_path / "set" / "labels" / "train" / "a.txt"
    assert label_path(image) == str(beside)  # neither exists: darknet's path
    write(convention, "0 0.5 0.5 0.1 0.1\n")
    assert label_path(image) == str(convention)  # images -> labels convention
    write(beside, "0 0.5 0.5 0.1 0.1\n")
    assert label_path(image) == str(beside)  # darknet's own path first
    webp = write(tmp_path / "set" / "images" / "train" / "b.webp", "")
    assert label_path(webp) == str(tmp_path / "set" / "labels" / "train" / "b.txt")


# --------------------------------------------------------------------------------------------- labels

def test_labels_good_file():
    labels = read_labels(str(require(ORACLE / "map-tiny3" / "horses.txt")), 80)
    assert labels.dtype == np.float32 and labels.shape == (5, 5)
    assert labels[0].tolist() == pytest.approx([17, 0.203752, 0.592773, 0.407503, 0.416016])


def test_bad_labels_are_reported_and_skipped(tmp_path):
    path = write(tmp_path / "a.txt", (
        "0 0.5 0.5 0.2 0.2\r\n"  # 1 good (CRLF)
        "\n"  # 2 empty: ignored
        "3 0.5 0.5 0.2 0.2\n"  # 3 class id >= classes
        "-1 0.5 0.5 0.2 0.2\n"  # 4 negative class id
        "1 1.5 0.5 0.2 0.2\n"  # 5 x outside [0,1]
        "1 0.5 0.5 0.2 -0.1\n"  # 6 h outside [0,1]
        "1 0.5 0.5 0.2\n"  # 7 four columns
        "1 0.5 0.5 0.2 0.2 0.9\n"  # 8 six columns
        "x 0.5 0.5 0.2 0.2\n"  # 9 class not a number
        "1 0.5 abc 0.2 0.2\n"  # 10 coordinate not a number
        "   \t \n"  # 11 blank: ignored
        "2 1 0 1 1\n"  # 12 good, on the borders
    ))
    problems = DataProblems()
    labels = read_labels(path, 3, problems)
    # lines 5 and 6 (coordinates outside [0,1]) are reported but kept, as Darknet's read_boxes keeps them (#16)
    np.testing.assert_array_equal(labels, np.float32([[0, 0.5, 0.5, 0.2, 0.2], [1, 1.5, 0.5, 0.2, 0.2],
                                                      [1, 0.5, 0.5, 0.2, -0.1], [2, 1, 0, 1, 1]]))
    assert problems.counts() == {BAD_CLASS_ID: 2, BAD_COORDINATES: 2, BAD_COLUMN_COUNT: 2, UNPARSABLE: 2}
    lines = [message.split(": ")[0] for messages in problems.messages.values() for message in messages]
    assert sorted(int(line.rsplit(":", 1)[1]) for line in lines) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert all(line.rsplit(":", 1)[0] == path for line in lines)
    assert "class id 3 is outside 0..2" in problems.messages[BAD_CLASS_ID][0]
    summary = "\n".join(problems.summary())
    assert "data problems: 8" in summary and f"{path}:7:" in summary


def test_missing_label_file_counted_once(tmp_path):
    problems = DataProblems()
    missing = str(tmp_path / "none.txt")
    for _ in range(3):  # e.g. once per epoch
        labels = read_labels(missing, 80, problems)
        assert labels.shape == (0, 5)
    assert problems.counts() == {MISSING_LABEL_FILE: 1}
    assert missing in problems.messages[MISSING_LABEL_FILE][0]


def test_empty_label_file_is_not_a_problem(tmp_path):
    problems = DataProblems()
    assert read_labels(write(tmp_path / "e.txt", "\n\n"), 80, problems).shape == (0, 5)
    assert not problems and problems.summary() == ["data problems: none"]


def test_problems_echo(tmp_path):
    echoed = []
    problems = DataProblems(echo=echoed.append)
    read_labels(write(tmp_path / "b.txt", "9 0.5 0.5 0.1 0.1\n"), 2, problems)
    assert echoed == [f"warning: {tmp_path / 'b.txt'}:1: class id 9 is outside 0..1; box skipped"]
    assert problems.summary() == ["data problems: 1", f"       1  {BAD_CLASS_ID}"]


def test_classes_unknown_accepts_any_nonnegative_id(tmp_path):
    labels = read_labels(write(tmp_path / "c.txt", "150 0.5 0.5 0.1 0.1\n"), None)
    assert labels[:, 0].tolist() == [150]


def test_relative_paths_follow_the_data_file(tmp_path, monkeypatch):
    """`darkpy map --data some/dir/tiny3.data` from elsewhere: list and names resolve beside the .data."""
    monkeypatch.chdir(tmp_path)
    config = read_data_config(str(require(ORACLE / "map-tiny3" / "tiny3.data")))
    valid = config.resolve("valid")
    assert os.path.samefile(valid, ORACLE / "map-tiny3" / "valid.txt")
    assert read_image_list(valid) == ["dog.jpg", "person.jpg", "horses.jpg"]


def test_read_tree_groups_runs_of_siblings(tmp_path):
    # src/tree.c read_tree: `name parent` lines; consecutive lines with the same parent are one softmax group.
    path = tmp_path / "t.tree"
    path.write_text("animal -1\nvehicle -1\ndog 0\ncat 0\ncar 1\nbike 1\npuppy 2\n")
    tree = read_tree(str(path))
    assert tree.names[2] == "dog" and tree.parent.tolist() == [-1, -1, 0, 0, 1, 1, 2]
    assert tree.group_offset.tolist() == [0, 2, 4, 6] and tree.group_size.tolist() == [2, 2, 2, 1]
    assert tree.group_of.tolist() == [0, 0, 1, 1, 2, 2, 3]
    path.write_text("animal -1\ndog 7\n")
    with pytest.raises(DataError, match="parent 7"):
        read_tree(str(path))
