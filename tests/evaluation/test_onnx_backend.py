"""The onnxruntime backend of detect, map and valid (darkpy/evaluation/onnx_backend.py): the torch path's
detections, its export cache, and when it falls back to torch or refuses. Its agreement with C Darknet on every
oracle fixture is in tests/test_parity.py."""
import warnings

import numpy as np
import pytest
import torch

import darkpy
from conftest import REPO
from darkpy.commands.common import UsageError, ready_for_inference
from darkpy.evaluation import onnx_backend
from darkpy.export import ExportError, onnxruntime_or_none
from darkpy.image import load_image
from darkpy.model import Darknet
from helpers.recurrent import tiny_recurrent_detector
from helpers.tiny_training import write_cfg
from oracle_utils import close_to_darknet

pytestmark = pytest.mark.skipif(onnxruntime_or_none() is None,
                                reason="onnxruntime is not installed (pip install darkpy[onnx])")
PHOTOS = sorted(p for p in (REPO / "data" / "images").iterdir() if p.suffix in (".jpg", ".png"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """This test's own cache folder; returns where the exports go."""
    monkeypatch.setenv("DARKPY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def tiny_model(tmp_path, seed: int = 0, **net) -> Darknet:
    """A small detector with Darknet's random initialisation (torch seed `seed`)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet.from_cfg(write_cfg(tmp_path, name=f"tiny{seed}.cfg", **net))


def onnxruntime_of(model: Darknet) -> onnx_backend.OnnxRuntimeForward:
    return ready_for_inference(model, "cpu", backend="onnxruntime")


def inputs(batch: int = 2, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)


def test_the_detections_are_the_torch_paths():
    """yolov3-tiny's COCO weights on the project's photos: the same printed lines on both backends, head outputs
    within the oracle's tolerance of each other."""
    cfg, weights = REPO / "cfg" / "yolov3-tiny.cfg", REPO / "weights" / "yolov3-tiny.weights"
    on_torch = darkpy.load(cfg, weights, device="cpu", backend="torch")
    on_onnxruntime = darkpy.load(cfg, weights, device="cpu")  # auto
    assert on_torch.detector.runtime is None and on_onnxruntime.detector.runtime is not None
    lines = 0
    for photo in PHOTOS:
        expected = on_torch(photo).lines()
        assert on_onnxruntime(photo).lines() == expected, photo.name
        lines += len(expected)
    assert lines >= 3  # grace_hopper's tie and person, coffee's toilet at least
    batch = np.stack([on_torch.detector.preprocess(load_image(str(p))) for p in PHOTOS])
    for ours, reference in zip(on_onnxruntime.detector.forward(batch), on_torch.detector.forward(batch)):
        assert ours.shape == reference.shape and close_to_darknet(ours, reference)


def test_the_export_is_cached(tmp_path, cache, monkeypatch):
    first = onnxruntime_of(tiny_model(tmp_path))
    assert sorted(cache.iterdir()) == [first.path]  # no partial file left beside it

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")
    monkeypatch.setattr(onnx_backend, "export_onnx", no_export)
    again = onnxruntime_of(tiny_model(tmp_path))
    assert again.path == first.path
    for a, b in zip(first(inputs()), again(inputs())):
        np.testing.assert_array_equal(a, b)


def test_other_weights_or_sizes_are_other_entries(tmp_path, cache):
    paths = {onnxruntime_of(tiny_model(tmp_path, seed=0)).path, onnxruntime_of(tiny_model(tmp_path, seed=1)).path,
             onnxruntime_of(tiny_model(tmp_path, seed=0, width=96)).path}
    assert len(paths) == 3 and set(cache.iterdir()) == paths


def test_a_damaged_entry_is_exported_again(tmp_path):
    path = onnxruntime_of(tiny_model(tmp_path)).path
    expected = onnxruntime_of(tiny_model(tmp_path))(inputs())
    path.write_bytes(path.read_bytes()[:1000])  # cut short, as by a full disk
    runtime = onnxruntime_of(tiny_model(tmp_path))
    assert runtime.path == path and path.stat().st_size > 1000
    for a, b in zip(runtime(inputs()), expected):
        np.testing.assert_array_equal(a, b)


def test_an_unwritable_cache_folder_costs_only_the_export(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("DARKPY_CACHE_DIR", str(not_a_folder))
    model = tiny_model(tmp_path)
    outputs = onnxruntime_of(model)(inputs())
    with torch.inference_mode():
        expected = model(torch.from_numpy(inputs()))
    assert len(outputs) == len(expected) == 1 and close_to_darknet(outputs[0], expected[0].numpy())


def test_the_cache_forgets_the_least_recently_used(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(onnx_backend, "CACHED_MODELS", 2)
    oldest = onnxruntime_of(tiny_model(tmp_path, seed=0)).path
    used = onnxruntime_of(tiny_model(tmp_path, seed=1)).path
    newest = onnxruntime_of(tiny_model(tmp_path, seed=2)).path
    assert set(cache.iterdir()) == {used, newest} and not oldest.exists()


def test_without_onnxruntime_auto_runs_torch_and_an_explicit_request_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_backend, "onnxruntime_or_none", lambda: None)
    model = tiny_model(tmp_path)
    assert ready_for_inference(model, "cpu", backend="auto") is None
    assert next(model.parameters()).is_contiguous(memory_format=torch.channels_last)  # prepared for torch
    with pytest.raises(UsageError, match=r"--backend onnxruntime: onnxruntime and onnx are not both installed"):
        ready_for_inference(tiny_model(tmp_path), "cpu", backend="onnxruntime")


def test_a_recurrent_network_runs_on_torch(tmp_path):
    cfg, weights = tiny_recurrent_detector(tmp_path)
    model = Darknet.from_cfg(cfg)
    model.load_weights(weights)
    assert ready_for_inference(model, "cpu", backend="auto") is None
    with pytest.raises(UsageError, match=rf"{cfg}:\d+: \[crnn\] keeps a state"):
        ready_for_inference(Darknet.from_cfg(cfg), "cpu", backend="onnxruntime")


@pytest.mark.parametrize("step", ["export_onnx", "verify_onnx"])
def test_a_failed_export_falls_back_to_torch_with_a_warning(tmp_path, cache, monkeypatch, step):
    def fails(*args, **kwargs):
        raise ExportError("layer 3 [maxpool] (tiny0.cfg:40): no luck")
    monkeypatch.setattr(onnx_backend, step, fails)
    with pytest.warns(onnx_backend.BackendWarning, match="no luck.*running it on torch"):
        assert ready_for_inference(tiny_model(tmp_path), "cpu", backend="auto") is None
    with pytest.raises(UsageError, match="--backend onnxruntime: layer 3 .maxpool. .tiny0.cfg:40.: no luck"):
        ready_for_inference(tiny_model(tmp_path), "cpu", backend="onnxruntime")
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written is kept


@pytest.mark.parametrize("policy, spins", [("PASSIVE", "0"), ("passive", "0"), ("ACTIVE", "1"), (None, "1")])
def test_the_threads_wait_as_omp_wait_policy_says(tmp_path, monkeypatch, policy, spins):
    """PASSIVE (the darkpy command's default) makes onnxruntime's threads sleep between operators, as it makes
    PyTorch's; otherwise they spin, onnxruntime's default."""
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    options = onnxruntime_of(tiny_model(tmp_path)).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == spins
    assert options.intra_op_num_threads == torch.get_num_threads()
