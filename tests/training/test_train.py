"""darkpy train on a tiny synthetic dataset (seconds): the loss falls, mAP rises, hyperparameters take effect,
snapshots are atomic and exact, resume and Ctrl-C work, bad snapshots are refused with a clear message."""
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from darkpy.cli import main as cli_main
from darkpy.model import Darknet
from darkpy.training.checkpoints import basecfg
from darkpy.training.settings import TrainError, TrainOptions
from darkpy.training.trainer import Trainer
from darkpy.weights import WeightsError
from helpers.tiny_training import ctrl_c_after, make_dataset, write_cfg, trainer, run_trainer

def losses_of(out: io.StringIO):
    return [float(m.group(1)) for m in re.finditer(r"^ \d+: [\d.]+, ([\d.]+) avg loss", out.getvalue(), re.M)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run shared by several tests: 200 iterations of 8 images at 64x64 with --map."""
    root = tmp_path_factory.mktemp("tiny")
    data = make_dataset(root)
    cfg = write_cfg(root)
    out = io.StringIO()
    t = trainer(data, cfg, out=out, calc_map=True)
    before = float(t.task.evaluation.result(t.model, t.device).mean_ap)  # -map's figure before training
    code = run_trainer(t)
    return root, data, cfg, t, out, before, code


def test_loss_falls_and_map_rises(trained):
    root, data, cfg, t, out, map_before, code = trained
    assert code == 0
    avg = losses_of(out)
    assert len(avg) == 200
    assert avg[-1] < 0.25 * avg[0], f"avg loss {avg[0]:.2f} -> {avg[-1]:.2f}"
    assert t.last_map > map_before + 0.3, f"mAP {map_before:.3f} -> {t.last_map:.3f}"
    assert t.last_map > 0.5
    # Darknet's files: _final, _best (with --map), chart.png
    backup = root / "backup"
    assert (backup / "tiny_final.weights").exists() and (backup / "tiny_best.weights").exists()
    assert (backup / "chart.png").exists() and (backup / "chart_tiny.png").exists()
    assert "mean_average_precision (mAP@0.50)" in out.getvalue()


def test_snapshot_loads_back_bit_exact(trained):
    root, data, cfg, t, *_ = trained
    path = root / "backup" / "tiny_final.weights"
    fresh = Darknet.from_cfg(str(cfg))
    report = fresh.load_weights(str(path))
    assert report.complete and report.header.seen == 200 * 8
    for a, b in zip(t.model.layers, fresh.layers):
        for x, y in zip(a.darknet_arrays(), b.darknet_arrays()):
            assert torch.equal(x.detach().cpu(), y.detach())
    # saving again gives the same bytes
    again = root / "again.weights"
    fresh.save_weights(str(again))
    assert again.read_bytes() == path.read_bytes()
    assert not [p for p in (root / "backup").iterdir() if ".tmp" in p.name]


def test_snapshot_is_written_atomically(tmp_path, monkeypatch):
    data = make_dataset(tmp_path, images=4)
    t = trainer(data, write_cfg(tmp_path, max_batches=2))
    target = t.save("last", 1)
    original = target.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        t.save("last", 2)
    assert target.read_bytes() == original  # the old snapshot is untouched
    # no temporary file left (beside the snapshot: the run's options, for --resume)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name, "tiny_options.json"]
    t.close()


def test_hyperparameters_take_effect(tmp_path):
    data = make_dataset(tmp_path, images=4)
    cfg = write_cfg(tmp_path, batch=4, subdivisions=2, burn_in=4, steps="6", scales=".1", learning_rate=0.02,
                    decay=0.001, max_batches=8)
    t = trainer(data, cfg)
    assert (t.images_per_iteration, t.mini_batch, t.subdivisions) == (4, 2, 2)
    images, truths = next(iter(t._loader()))
    assert images.shape == (4, 3, 64, 64)
    lrs = []
    for iteration in range(8):
        t.train_iteration(images, truths, iteration)
        conv_weight_group = next(g for g in t.optimizer.param_groups if g["decayed"])
        lrs.append(conv_weight_group["lr"] * 4)  # the group holds lr/batch
    # Darknet's rate for iterations 1..8: (n/4)^4 * .02 during burn-in, then .02, then .002 from step 6
    expected = [0.02 * (1 / 4) ** 4, 0.02 * (2 / 4) ** 4, 0.02 * (3 / 4) ** 4, 0.02, 0.02, 0.002, 0.002, 0.002]
    np.testing.assert_allclose(lrs, expected, rtol=1e-9)
    # decay only on convolution weights, scaled by batch; biases and batch-norm scales have none
    for g in t.optimizer.param_groups:
        assert g["weight_decay"] == (pytest.approx(0.001 * 4) if g["decayed"] else 0.0)
    decayed = {id(p) for g in t.optimizer.param_groups if g["decayed"] for p in g["params"]}
    for layer in t.model.layers:
        if layer.type == "convolutional":
            assert id(layer.weight) in decayed and id(layer.bias) not in decayed
            if layer.batch_normalize:
                assert id(layer.bn_weight) not in decayed
    t.close()


def test_subdivisions_accumulate_to_one_big_batch(tmp_path):
    """Without batch norm (whose statistics are per mini-batch, in Darknet too) 4 mini-batches of 2 images
    give exactly the update of one batch of 8."""
    data = make_dataset(tmp_path, images=8)
    one = trainer(data, write_cfg(tmp_path, bn=0, name="one.cfg", batch=8, subdivisions=1, burn_in=0))
    four = trainer(data, write_cfg(tmp_path, bn=0, name="four.cfg", batch=8, subdivisions=4, burn_in=0))
    four.model.load_state_dict(one.model.state_dict())
    images, truths = next(iter(one._loader()))
    loss_one = one.train_iteration(images, truths, 0)
    loss_four = four.train_iteration(images, truths, 0)
    assert loss_four == pytest.approx(loss_one, rel=1e-5)
    for a, b in zip(one.model.parameters(), four.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    one.close()
    four.close()


def test_resume_continues_iteration_count_and_schedule(tmp_path):
    data = make_dataset(tmp_path, images=6, savelast=3)
    cfg = write_cfg(tmp_path, max_batches=7, batch=4)
    out = io.StringIO()
    first = trainer(data, cfg, out=out, max_batches=7)
    # stop after iteration 4 as Ctrl-C would: _last is written at 3 (savelast) and at the stop
    ctrl_c_after(first, 4)
    assert run_trainer(first) == 130
    last = tmp_path / "backup" / "tiny_last.weights"
    assert Darknet.from_cfg(str(cfg)).load_weights(str(last)).header.seen == 4 * 4
    assert "--resume" in out.getvalue()

    out2 = io.StringIO()
    second = trainer(data, cfg, out=out2, resume=True)
    assert second.start_iteration == 4
    assert run_trainer(second) == 0
    iterations = [int(m.group(1)) for m in re.finditer(r"^ (\d+): ", out2.getvalue(), re.M)]
    assert iterations == [5, 6, 7]
    rates = [float(m.group(1)) for m in re.finditer(r"avg loss, ([\d.]+) rate", out2.getvalue())]
    assert rates == pytest.approx([0.01 * (n / 10) ** 4 for n in (5, 6, 7)], abs=1e-6)  # burn_in=10
    final = Darknet.from_cfg(str(cfg)).load_weights(str(tmp_path / "backup" / "tiny_final.weights"))
    assert final.header.seen == 7 * 4


def test_weights_past_max_batches_say_so(tmp_path):
    data = make_dataset(tmp_path, images=4)
    cfg = write_cfg(tmp_path, max_batches=5)
    model = Darknet.from_cfg(str(cfg))
    weights = tmp_path / "done.weights"
    model.save_weights(str(weights), seen=5 * 8)
    out = io.StringIO()
    assert run_trainer(trainer(data, cfg, weights=str(weights), out=out)) == 0
    text = out.getvalue()
    assert "nothing to train" in text and "--clear" in text
    assert not re.search(r"^ \d+: ", text, re.M)
    cleared = trainer(data, cfg, weights=str(weights), clear=True)
    assert cleared.start_iteration == 0
    cleared.close()


def test_truncated_or_corrupt_snapshot_is_refused(tmp_path, capsys):
    data = make_dataset(tmp_path, images=4)
    cfg = write_cfg(tmp_path, max_batches=3)
    model = Darknet.from_cfg(str(cfg))
    good = tmp_path / "backup" / "tiny_last.weights"
    good.parent.mkdir(exist_ok=True)
    model.save_weights(str(good), seen=8)
    raw = good.read_bytes()
    # cut inside a layer, or inside a float
    good.write_bytes(raw[:-12])
    with pytest.raises(WeightsError, match="ends inside layer"):
        trainer(data, cfg, resume=True)
    good.write_bytes(raw[:-10])
    with pytest.raises(WeightsError, match="truncated"):
        trainer(data, cfg, resume=True)
    # cut exactly between two layers: a snapshot must hold every layer
    last_conv = model.layers[5]
    cut = sum(t.numel() for t in last_conv.darknet_arrays()) * 4
    good.write_bytes(raw[:-cut])
    with pytest.raises(TrainError, match="truncated"):
        trainer(data, cfg, resume=True)
    # a NaN in the floats
    broken = bytearray(raw)
    broken[40:44] = np.array([np.nan], "<f4").tobytes()
    good.write_bytes(bytes(broken))
    with pytest.raises(TrainError, match="NaN"):
        trainer(data, cfg, resume=True)
    # through the command: a clear message, exit code 1
    good.write_bytes(raw[:-cut])
    code = cli_main(["train", f"--data={data}", f"--cfg={cfg}", "--resume", "--device=cpu", "--workers=0",
                     "--no-progress"])
    assert code == 1
    assert "truncated" in capsys.readouterr().err


def test_partial_backbone_loads(tmp_path):
    data = make_dataset(tmp_path, images=4)
    cfg = write_cfg(tmp_path, max_batches=3)
    model = Darknet.from_cfg(str(cfg))
    backbone = tmp_path / "tiny.conv.2"
    model.save_weights(str(backbone), upto=3, seen=12345)
    out = io.StringIO()
    t = trainer(data, cfg, weights=str(backbone), out=out)
    assert "a partial file: 2 of 4 layers" in out.getvalue() or t.load_report.layers_loaded == 2
    torch.testing.assert_close(t.model.layers[0].weight.detach(), model.layers[0].weight.detach())
    t.close()


def test_multiscale_models_share_the_weights(tmp_path):
    data = make_dataset(tmp_path, images=4)
    t = trainer(data, write_cfg(tmp_path, max_batches=3))
    bigger = t.sized.at(96, 96)
    assert bigger is not t.model and (bigger.width, bigger.height) == (96, 96)
    assert bigger.layers[0].weight is t.model.layers[0].weight
    assert bigger.layers[0].running_mean is t.model.layers[0].running_mean
    images = torch.rand(8, 3, 96, 96)
    truths = torch.zeros(8, 200, 5)
    truths[:, 0] = torch.tensor([0.5, 0.5, 0.3, 0.3, 1.0])
    before = t.model.layers[0].weight.detach().clone()
    t.train_iteration(images, truths, 20)
    assert not torch.equal(before, t.model.layers[0].weight.detach())
    t.close()


def test_cpu_training_runs_in_channels_last(tmp_path, monkeypatch):
    """On the CPU the model and every batch it trains on are channels_last (docs/train.md: a third less time per
    iteration), the batch norm there being the float32-exact ChannelsLastTrainingBatchNorm."""
    data = make_dataset(tmp_path, images=4)
    t = trainer(data, write_cfg(tmp_path, max_batches=3))
    assert t.model.layers[0].weight.is_contiguous(memory_format=torch.channels_last)
    seen, outputs = [], type(t.loss).outputs
    monkeypatch.setattr(type(t.loss), "outputs", lambda self, model, x: seen.append(x) or outputs(self, model, x))
    truths = torch.zeros(8, 200, 5)
    truths[:, 0] = torch.tensor([0.5, 0.5, 0.3, 0.3, 1.0])
    t.train_iteration(torch.rand(8, 3, 96, 96), truths, 20)
    assert seen and all(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() for x in seen)
    t.close()


def test_basecfg_is_darknets():
    assert basecfg("cfg/yolov3-tiny.cfg") == "yolov3-tiny"
    assert basecfg("a/b.c/yolo.v3.cfg") == "yolo"


def test_unimplemented_options_give_one_warning(tmp_path):
    data = make_dataset(tmp_path, images=4)
    text = write_cfg(tmp_path, max_batches=3).read_text()
    text = text.replace("flip=1", "flip=1\ntry_fix_nan=1\nuse_cuda_graph=1")
    text = text.replace("[maxpool]\nsize=2", "[maxpool]\ndont_update=100\nsize=2", 1)
    text = text.replace("random=0", "random=0\nembedding_layer=5")
    cfg = tmp_path / "odd.cfg"
    cfg.write_text(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = Trainer(TrainOptions(data=str(data), cfg=str(cfg), out=io.StringIO(), workers=0, threads=1,
                                 device="cpu"))
    t.close()
    train_warnings = [str(w.message) for w in caught if "darkpy trains without" in str(w.message)]
    assert len(train_warnings) == 1
    assert "try_fix_nan=1" in train_warnings[0] and "dont_update=100" in train_warnings[0]
    assert "use_cuda_graph" in train_warnings[0]
    loss_warnings = [str(w.message) for w in caught if "loss ignores" in str(w.message)]
    assert len(loss_warnings) == 1 and "embedding_layer=5" in loss_warnings[0]


def test_sigkill_between_snapshots_then_resume(tmp_path):
    """A training process killed with SIGKILL resumes from its last `_last` snapshot."""
    import subprocess
    import sys
    import time

    data = make_dataset(tmp_path, images=4, savelast=2)
    cfg = write_cfg(tmp_path, batch=2, max_batches=100000)
    last = tmp_path / "backup" / "tiny_last.weights"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "darkpy", "train", f"--data={data}", f"--cfg={cfg}", "--device=cpu",
           "--workers=0", "--threads=1", "--no-progress", "--seed=1"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               cwd=str(Path(__file__).resolve().parents[2]))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (last.exists() and process.poll() is None):
            time.sleep(0.05)
        assert last.exists(), "no _last snapshot within 2 minutes"
        time.sleep(0.3)
    finally:
        process.kill()  # SIGKILL: no chance to save anything
        process.wait()
    seen = Darknet.from_cfg(str(cfg)).load_weights(str(last)).header.seen
    assert seen > 0 and seen % (2 * 2) == 0  # written at an even iteration (savelast=2), batch 2
    t = trainer(data, cfg, resume=True, max_batches=seen // 2 + 1)
    assert t.start_iteration == seen // 2
    assert run_trainer(t) == 0 and t.final_iteration == seen // 2 + 1


def test_stopbackward_freezes_that_layer_and_those_before(tmp_path):
    data = make_dataset(tmp_path, images=4)
    text = write_cfg(tmp_path, max_batches=3).read_text()
    text = text.replace("filters=32\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n[maxpool]",
                        "filters=32\nsize=3\nstride=1\npad=1\nactivation=leaky\nstopbackward=1\n\n[maxpool]", 1)
    cfg = tmp_path / "stop.cfg"
    cfg.write_text(text)
    t = trainer(data, cfg)
    assert t.frozen_layers == 3  # layers 0 (conv), 1 (maxpool), 2 (conv with stopbackward=1)
    frozen = [t.model.layers[0].weight, t.model.layers[2].weight]
    before = [p.detach().clone() for p in frozen]
    trained_before = t.model.layers[4].weight.detach().clone()
    optimized = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in optimized for p in frozen)
    images, truths = next(iter(t._loader()))
    t.train_iteration(images, truths, 50)
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, frozen))
    assert not torch.equal(t.model.layers[4].weight.detach(), trained_before)  # the layers after it train
    t.close()


def test_recurrent_network_is_refused_with_its_layer(tmp_path):
    data = make_dataset(tmp_path, images=4)
    cfg = write_cfg(tmp_path, max_batches=3)
    text = cfg.read_text().replace("[yolo]", "[crnn]\nsize=1\nhidden=2\noutput=14\nactivation=linear\n\n[yolo]", 1)
    cfg.write_text(text)
    line = text.splitlines().index("[crnn]") + 1
    with pytest.raises(TrainError, match=rf"tiny.cfg:{line}: \[crnn\] darkpy runs recurrent layers but does not "
                                         "train them"):
        trainer(data, cfg)
