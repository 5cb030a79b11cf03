"""Training a detector with a [contrastive] loss: track ids from the label files, the loss applied to the embedding
layer, and the smoke run of the trainer."""
import json
import warnings

import numpy as np
import pytest
import torch

from conftest import LOCAL_FIXTURES
from darkpy.training import augment as A
from darkpy.training.augment import CropWindow
from darkpy.training.dataset import DetectionTrainSet, track_ids
from darkpy.training.sampler import SampleKey
from darkpy.training.settings import AugmentConfig, TrainOptions
from darkpy.training.trainer import Trainer
from helpers.tiny_training import TINY_HEAD, make_dataset, run_trainer, trainer, write_cfg

# an embedding branch (2 anchors x 4 values) that only the [contrastive] layer reads: it learns from that loss alone
CONTRASTIVE_HEAD = """
[convolutional]
size=1
stride=1
pad=1
filters=8
activation=linear

[route]
layers=-2

""" + TINY_HEAD + """embedding_layer=-3

[route]
layers=-4

[contrastive]
classes=1
yolo_layer=-2
temperature=0.5
"""


def test_track_ids_hash_the_label_file_as_darknet():
    """read_boxes: (custom_hash(label file) % 4000) * 4000 + the box's place; the values C Darknet's custom_hash
    gives for these paths (stored in the fixture)."""
    expected = json.loads((LOCAL_FIXTURES / "contrastive-loss" / "darknet.json").read_text())["track_id_base"]
    for path, base in expected.items():
        np.testing.assert_array_equal(track_ids(path, 3), [base, base + 1, base + 2])


def test_truths_carry_the_track_id_through_crop_flip_and_mosaic():
    config = AugmentConfig(classes=2, max_boxes=10)
    labels = np.array([[0, 0.3, 0.3, 0.2, 0.2, 500], [1, 0.7, 0.6, 0.3, 0.3, 501]], np.float32)
    truths, _ = A.place_truths(labels, CropWindow(100, 100, 0, 0, 0, 0), True, 64, 64, config,
                               np.random.default_rng(0))
    assert truths.shape == (2, 6)
    np.testing.assert_array_equal(truths[np.argsort(truths[:, 5]), 4:], [[0, 500], [1, 501]])
    rng = np.random.default_rng(1)
    image = np.zeros((80, 80, 3), np.uint8)
    _, mosaic = A.make_mosaic(lambda k: (image, labels + [0, 0, 0, 0, 0, 10 * k], "x.txt"), 64, 64, config, rng)
    assert mosaic.shape[1] == 6 and set(mosaic[:, 5]) <= {500, 501, 510, 511, 520, 521, 530, 531}


def test_the_dataset_gives_track_ids_only_when_asked(tmp_path):
    data = make_dataset(tmp_path, images=2)
    paths = (tmp_path / "train.txt").read_text().split()
    for track, width in ((False, 5), (True, 6)):
        dataset = DetectionTrainSet(paths, AugmentConfig(classes=2, max_boxes=4, track_ids=track))
        _, truths, _ = dataset[SampleKey(1, 64, 64)]
        assert truths.shape == (4, width)
    expected = track_ids(str(tmp_path / "images" / "001.txt"), 2)
    assert sorted(truths[:2, 5].tolist()) == expected.tolist()


def test_training_moves_the_embedding_layer_through_the_contrastive_loss(tmp_path):
    """Two images drawn 8 times per batch: each object is seen several times, so the loss is not zero; the
    embedding branch changes only through it. `darkpy train` runs (a few iterations) and prints Darknet's line."""
    data = make_dataset(tmp_path, images=2)
    cfg = write_cfg(tmp_path, max_batches=2)
    cfg.write_text(cfg.read_text().replace(TINY_HEAD, CONTRASTIVE_HEAD))
    t = trainer(data, cfg, verbose=True)
    embedding = t.model.layers[5]
    assert embedding.type == "convolutional" and t.model.layers[8].embeddings_trained
    before = embedding.weight.detach().clone()
    assert run_trainer(t) == 0
    lines = t.options.out.getvalue()
    costs = [float(line.split("=")[1]) for line in lines.splitlines() if "contrastive loss =" in line]
    assert len(costs) == 2 and all(c > 0 for c in costs)
    assert not torch.equal(before, embedding.weight.detach())


def test_a_contrastive_loss_without_yolo_layer_is_refused(tmp_path):
    data = make_dataset(tmp_path, images=2)
    cfg = write_cfg(tmp_path, max_batches=2)
    cfg.write_text(cfg.read_text().replace(TINY_HEAD, TINY_HEAD + "\n[contrastive]\nclasses=2\n"))
    line = cfg.read_text().splitlines().index("[contrastive]") + 1
    with pytest.raises(Exception, match=rf"tiny.cfg:{line}: \[contrastive\] without yolo_layer is a classifier"):
        trainer(data, cfg)


def test_net_contrastive_makes_pairs_of_one_image(tmp_path):
    """[net] contrastive=1: slots 2k and 2k + 1 hold the same image (get_random_paths_custom); without
    contrastive_jit_flip and contrastive_color the second keeps the first's crop, flip and colours (one picture),
    with contrastive_jit_flip its own crop and flip; in both the same objects, with the same track ids."""
    from darkpy.training.sampler import IterationSampler
    indices = [k.index for k in next(iter(IterationSampler(1000, 8, 64, 64, max_batches=1, pairs=True)))]
    assert indices[1::2] == indices[0::2] and len(set(indices)) == 4
    keys = next(iter(IterationSampler(2, 8, 64, 64, max_batches=1, seed=4, pairs=True)))
    make_dataset(tmp_path, images=2)
    paths = (tmp_path / "train.txt").read_text().split()
    base = dict(classes=2, max_boxes=4, track_ids=True, jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5,
                contrastive=True)
    for jit_flip in (False, True):
        dataset = DetectionTrainSet(paths, AugmentConfig(contrastive_jit_flip=jit_flip, **base))
        first, second = (dataset[keys[slot]] for slot in (2, 3))
        assert torch.equal(first[0], second[0]) != jit_flip
        assert sorted(first[1][:, 5].tolist()) == sorted(second[1][:, 5].tolist())
    alone = DetectionTrainSet(paths, AugmentConfig(**{**base, "contrastive": False}))
    assert not torch.equal(alone[keys[2]][0], alone[keys[3]][0])


def test_net_contrastive_needs_two_images_per_mini_batch(tmp_path):
    data = make_dataset(tmp_path, images=2)
    cfg = write_cfg(tmp_path, max_batches=2)
    cfg.write_text(cfg.read_text().replace(TINY_HEAD, CONTRASTIVE_HEAD).replace("flip=1", "flip=1\ncontrastive=1"))
    line = cfg.read_text().splitlines().index("contrastive=1") + 1
    with pytest.raises(Exception, match=rf"tiny.cfg:{line}: \[net\] contrastive=1 needs pairs"):
        trainer(data, cfg, subdivisions=8)
    t = trainer(data, cfg, verbose=True)
    assert run_trainer(t) == 0 and "contrastive loss = " in t.options.out.getvalue()
