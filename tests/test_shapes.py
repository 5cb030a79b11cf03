"""darkpy.shapes (`darkpy make-dataset shapes`): a consistent darknet-format dataset."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, SHARED, require
from darkpy import shapes
from darkpy.training import AugmentConfig, DetectionTrainSet, SampleKey
from darkpy.cli import main
from darkpy.data import DataProblems, label_path, read_data_config, read_image_list, read_labels, read_names, \
    resolve_path
from darkpy.image import load_image


@pytest.fixture(scope="module")
def backgrounds() -> Path:
    """The repository's data/images (the command's default), or ../shared/images before it is copied in."""
    repo_images = REPO / "data" / "images"
    if repo_images.is_dir() and any(p.suffix in (".png", ".jpg") for p in repo_images.iterdir()):
        return repo_images
    return require(SHARED / "images")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, backgrounds):
    out = tmp_path_factory.mktemp("shapes") / "out"
    code = main(["make-dataset", "shapes", str(out), "--images", "40", "--size", "160", "--classes", "4",
                 "--seed", "3", "--valid-fraction", "0.25", "--backgrounds", str(backgrounds)])
    assert code == 0
    return out


def classify(mask: np.ndarray) -> str:
    """Name a shape from its pixels alone: solidity (area / convex hull area, which stretching and rotation do
    not change) separates star (0.56 for a perfect one), cross (0.70) and the convex shapes; the corners of the
    hull separate triangle, square and circle."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    solidity = mask.sum() / cv2.contourArea(hull)
    if solidity < 0.705:
        return "star"
    if solidity < 0.9:
        return "cross"
    corners = len(cv2.approxPolyDP(hull, 0.04 * cv2.arcLength(hull, True), True))
    return {3: "triangle", 4: "square"}.get(corners, "circle" if corners >= 6 else "?")


def test_labels_match_the_painted_shapes():
    rng = np.random.default_rng(0)
    size = 224
    seen = {name: 0 for name in shapes.SHAPE_NAMES}
    for _ in range(60):
        image, labels = shapes.render_shapes_image(np.zeros((size, size, 3), np.uint8), 5, 4, rng)
        strength = image.max(axis=2).astype(int)  # black background: any paint shows
        covered = np.zeros((size, size), bool)
        for class_id, x, y, w, h in labels:
            left, top = int(round((x - w / 2) * size)), int(round((y - h / 2) * size))
            right, bottom = int(round((x + w / 2) * size)), int(round((y + h / 2) * size))
            # shapes are at least 2 px apart, so a 2 px margin around a box holds only its own shape
            y0, x0 = max(0, top - 2), max(0, left - 2)
            window = strength[y0:bottom + 2, x0:right + 2]
            mask = window >= window.max() / 2  # at least half covered, as the labels are made
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose([xs.min() + x0, ys.min() + y0, xs.max() + 1 + x0, ys.max() + 1 + y0],
                                       [left, top, right, bottom], atol=1)
            name = shapes.SHAPE_NAMES[int(class_id)]
            assert classify(mask) == name
            seen[name] += 1
            # the box holds the pixels at least half covered; fainter edge pixels (the tip of a star's point
            # can fade out over two pixels) lie in a 2-pixel rim around it
            covered[max(0, top - 2):bottom + 2, max(0, left - 2):right + 2] = True
            # sizes: within a circle of 12..42 % of the image side, the whole shape inside the image
            assert 0.06 <= max(w, h) <= 0.42 + 1 / size and 0 <= left and right <= size and 0 <= top and bottom <= size
        # nothing painted outside the boxes and their anti-aliased rim
        assert strength[~covered].max(initial=0) == 0
    assert min(seen.values()) > 20


def test_dataset_files_are_consistent(dataset):
    data = read_data_config(str(dataset / "shapes.data"))
    assert data.classes == 4
    assert data.train == str(dataset / "train.txt") and data.valid == str(dataset / "valid.txt")
    assert data.backup == str(dataset / "backup") and (dataset / "backup").is_dir()
    assert read_names(data.names) == ["circle", "square", "triangle", "cross"]
    train, valid = read_image_list(data.train), read_image_list(data.valid)
    assert (len(train), len(valid)) == (30, 10) and not set(train) & set(valid)
    problems = DataProblems()
    boxes = 0
    for path in train + valid:
        assert os.path.isabs(path) and path.endswith(".jpg")
        image = load_image(path)
        assert image.shape == (160, 160, 3)
        labels_file = label_path(path)
        assert labels_file == path[:-4] + ".txt"  # beside the image, where AlexeyAB darknet looks
        labels = read_labels(labels_file, 4, problems)
        boxes += len(labels)
        assert len(labels) <= 4 and set(labels[:, 0].astype(int)) <= {0, 1, 2, 3}
        # the box edges fall on whole pixels of the 160x160 image (written with 6 decimals)
        edges = np.concatenate([labels[:, 1:3] - labels[:, 3:5] / 2, labels[:, 1:3] + labels[:, 3:5] / 2]) * 160
        np.testing.assert_allclose(edges, np.round(edges), atol=1e-3)
    assert not problems and boxes >= 40


def test_same_seed_same_dataset(dataset, backgrounds, tmp_path):
    out = tmp_path / "again"
    assert main(["make-dataset", "shapes", str(out), "--images", "40", "--size", "160", "--classes", "4",
                 "--seed", "3", "--valid-fraction", "0.25", "--backgrounds", str(backgrounds)]) == 0
    for name in ("train/000010.jpg", "train/000010.txt", "valid/000003.txt", "shapes.names"):
        assert (out / name).read_bytes() == (dataset / name).read_bytes()
    other = tmp_path / "other"
    shapes.make_shapes_dataset(other, images=40, size=160, classes=4, seed=4, valid_fraction=0.25,
                               backgrounds=backgrounds)
    assert (other / "train/000010.jpg").read_bytes() != (dataset / "train/000010.jpg").read_bytes()


def test_relative_dataset_works_from_any_folder(backgrounds, tmp_path, monkeypatch):
    out = tmp_path / "rel"
    shapes.make_shapes_dataset(out, images=6, size=96, classes=3, seed=1, valid_fraction=0.5,
                               backgrounds=backgrounds, relative_paths=True)
    assert (out / "train.txt").read_text().splitlines()[0] == os.path.join("train", "000003.jpg")
    assert "train = train.txt" in (out / "shapes.data").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = read_data_config(str(out / "shapes.data"))
    train_list = data.resolve("train")
    assert train_list == str(out / "train.txt")
    config = AugmentConfig(classes=3)
    train = DetectionTrainSet(read_image_list(train_list), config, DataProblems(), list_file=train_list)
    image, truths, _ = train[SampleKey(0, 96, 96)]
    assert image.shape == (3, 96, 96) and not train.problems
    assert os.path.exists(resolve_path(read_image_list(train_list)[0], train_list))


def test_negatives_have_empty_label_files(backgrounds, tmp_path):
    out = tmp_path / "neg"
    summary = shapes.make_shapes_dataset(out, images=8, size=64, classes=3, seed=2, negative_fraction=1.0,
                                         backgrounds=backgrounds)
    assert summary.objects == 0
    assert all(p.read_text() == "" for p in (out / "train").glob("*.txt"))


def test_command_errors_are_messages(backgrounds, tmp_path, capsys, dataset):
    assert main(["make-dataset", "shapes", str(dataset), "--backgrounds", str(backgrounds)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["make-dataset", "shapes", str(tmp_path / "x"), "--classes", "6",
                 "--backgrounds", str(backgrounds)]) == 2
    assert "--classes must be 3..5" in capsys.readouterr().err
    assert main(["make-dataset", "shapes", str(tmp_path / "y"), "--backgrounds", str(tmp_path / "none")]) == 2
    assert "background photo folder not found" in capsys.readouterr().err


def test_default_backgrounds_are_the_repository_photos():
    assert shapes.DEFAULT_BACKGROUNDS == REPO / "data" / "images"


def test_classification_dataset(backgrounds, tmp_path, capsys):
    """shapes-cls: one shape per image, the class name in the file name, a .data Darknet's classifier reads; the
    training set gives every image the truth of its name."""
    out = tmp_path / "cls"
    assert main(["make-dataset", "shapes-cls", str(out), "--images", "12", "--size", "48", "--seed", "4",
                 "--backgrounds", str(backgrounds)]) == 0
    assert "train with: darkpy classifier train" in capsys.readouterr().out
    data = read_data_config(str(out / "shapes-cls.data"))
    assert data.options["top"] == "2" and data.classes == 5
    labels = read_names(data.existing_file("labels", None))
    assert labels == list(shapes.SHAPE_NAMES)
    train = read_image_list(data.existing_file("train", None))
    valid = read_image_list(data.existing_file("valid", None))
    assert (len(train), len(valid)) == (10, 2)
    for path in train + valid:
        found = [name for name in labels if name in path]
        assert len(found) == 1 and Path(path).name.endswith(f"_{found[0]}.jpg")
        assert load_image(path).shape == (48, 48, 3)
    # the same seed writes the same files
    again = tmp_path / "again"
    main(["make-dataset", "shapes-cls", str(again), "--images", "12", "--size", "48", "--seed", "4",
          "--backgrounds", str(backgrounds)])
    assert (out / "train" / Path(train[0]).name).read_bytes() == (again / "train" / Path(train[0]).name).read_bytes()


def test_classification_dataset_refuses_a_folder_named_like_a_class(backgrounds, tmp_path, capsys):
    code = main(["make-dataset", "shapes-cls", str(tmp_path / "star-data"), "--images", "5", "--size", "32",
                 "--backgrounds", str(backgrounds)])
    assert code == 2 and "contains the class name 'star'" in capsys.readouterr().err
