"""The onnxruntime backend of detect, map and valid (`--backend`): the network's forward pass run by onnxruntime on
darkpy's own ONNX export (darkpy.export), decoded by darkpy's Darknet-exact numpy code as before.

Why: at two threads onnxruntime's thread pool gains more from the second core than PyTorch's OpenMP threads with
the passive waiting the `darkpy` command sets, and at one thread the torch path stayed a few percent behind
onnxruntime on a busy machine (docs/latency.md). The numbers are Darknet's within the oracle's tolerance, as the
torch path's are (tests/test_parity.py runs every oracle fixture through both).

`auto` (the default) takes onnxruntime when it is installed (`pip install darkpy[onnx]`), the device is the CPU
and the network is a detector that exports (not a recurrent one); otherwise torch. Exporting takes 1-2 s for a
tiny model, about 15 s for yolov4 (with its check), so each export is kept in a cache folder (DARKPY_CACHE_DIR,
else $XDG_CACHE_HOME/darkpy or ~/.cache/darkpy) under a hash of the cfg, the input size and every weight: the
next start-up only opens it (0.1 s for a tiny model, 1.0 s for yolov4, where torch's set-up takes 0.4 s). Each new export is checked against the torch model on a random image
before it is kept; the cache holds the CACHED_MODELS most recently used exports.
"""
import contextlib
import hashlib
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from torch import nn

from darkpy import __version__
from darkpy.export import (
    INPUT_NAME,
    INSTALL_HINT,
    ExportError,
    export_onnx,
    onnxruntime_or_none,
    onnxruntime_session,
    verify_onnx,
)

BACKENDS = ("auto", "torch", "onnxruntime")
CACHED_MODELS = 8  # exports kept; yolov4's is 245 MB, a tiny model's 20-35 MB


class BackendUnavailable(ValueError):
    """`--backend onnxruntime` was asked for and cannot run this network here; the message says why."""


class BackendWarning(UserWarning):
    """`--backend auto` fell back to torch for an unexpected reason (an export that failed or did not match)."""


class OnnxRuntimeForward:
    """The forward pass of a detector through onnxruntime: network inputs (B, 3, H, W) -> per head, float32
    (B, A, E, H, W), what Detector.forward returns on torch."""

    def __init__(self, session, path: Path):
        self.session = session
        self.path = path

    def __call__(self, inputs: np.ndarray) -> List[np.ndarray]:
        return self.session.run(None, {INPUT_NAME: np.ascontiguousarray(inputs, dtype=np.float32)})


def onnxruntime_forward(model: nn.Module, backend: str, device: torch.device) -> Optional[OnnxRuntimeForward]:
    """The onnxruntime forward pass for a folded detector in eval mode when `backend` picks onnxruntime, else None
    (torch runs it). An explicit `onnxruntime` that cannot run raises BackendUnavailable; `auto` falls back to
    torch, with a BackendWarning when the export itself failed."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"backend {backend}: not one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return None
    reason = _why_not_onnxruntime(model, device)
    if reason:
        if backend == "onnxruntime":
            raise BackendUnavailable(f"--backend onnxruntime: {reason}")
        return None
    try:
        return _cached_session(model)
    except (ExportError, OSError) as exc:
        if backend == "onnxruntime":
            raise BackendUnavailable(f"--backend onnxruntime: {exc}") from None
        warnings.warn(f"onnxruntime cannot run {model.cfg_path} ({exc}); running it on torch", BackendWarning)
        return None


def _why_not_onnxruntime(model: nn.Module, device: torch.device) -> str:
    """Why the onnxruntime backend cannot run this network, or '' when it can."""
    if onnxruntime_or_none() is None or importlib.util.find_spec("onnx") is None:  # onnx writes the export
        return f"onnxruntime and onnx are not both installed ({INSTALL_HINT})"
    if device.type != "cpu":  # (float16, --half, is for CUDA only)
        return f"darkpy runs onnxruntime on the CPU only, not on {device}"
    if not model.heads:
        return f"{model.cfg_path}: the network has no detection layer (classifiers run on torch)"
    recurrent = model.recurrent_layers()
    if recurrent:
        section = recurrent[0].section
        return f"{section.file}:{section.line}: [{section.written_type}] keeps a state from frame to frame"
    return ""


# ============================================================================ the cache

def cache_folder() -> Path:
    """DARKPY_CACHE_DIR, else $XDG_CACHE_HOME/darkpy, else ~/.cache/darkpy; with onnx/ below."""
    root = os.environ.get("DARKPY_CACHE_DIR") or \
        os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "darkpy")
    return Path(root) / "onnx"


def model_key(model: nn.Module) -> str:
    """What the exported graph depends on: darkpy's and torch's versions, the cfg's text, the input size and
    every parameter and buffer, hashed (0.02 s for yolov3-tiny, 0.15 s for yolov4's 257 MB)."""
    digest = hashlib.sha256(f"{__version__} {torch.__version__} {model.channels}x{model.width}x{model.height}"
                            .encode())
    cfg_path = Path(str(model.cfg_path))
    digest.update(cfg_path.read_bytes() if cfg_path.is_file() else repr(model).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().view(np.uint8).reshape(-1))
    return digest.hexdigest()[:32]


def _cached_session(model: nn.Module) -> OnnxRuntimeForward:
    """The cached export of this model opened in onnxruntime, exported (and checked) first when missing or
    unreadable. A cache folder that cannot be written only costs the export at every start."""
    folder = cache_folder()
    path = folder / f"{model_key(model)}.onnx"
    if path.is_file():
        session = _open_cached(path)
        if session is not None:
            _mark_used(path)
            return OnnxRuntimeForward(session, path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _export_checked(model, path)
    except OSError:
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "model.onnx"
            _export_checked(model, path)
            return OnnxRuntimeForward(_session(path), path)
    _forget_least_recently_used(folder)
    return OnnxRuntimeForward(_session(path), path)


def _export_checked(model: nn.Module, path: Path) -> None:
    """Export to a file beside `path`, check it against the torch model, then move it into place (a crash leaves
    no half-written cache entry)."""
    handle, partial = tempfile.mkstemp(suffix=".onnx.partial", dir=path.parent)
    os.close(handle)
    try:
        export_onnx(model, partial, dynamic_batch=True)
        verify_onnx(model, partial, explain=False)  # the layer-by-layer search would take minutes on a large net
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _session(path: Path):
    """An onnxruntime session on the file, with torch's thread count."""
    return onnxruntime_session(str(path), threads=torch.get_num_threads())


def _open_cached(path: Path):
    """The session of a cache entry; None for a damaged one, which is removed (and exported again)."""
    try:
        return _session(path)
    except ExportError:
        with contextlib.suppress(OSError):  # a read-only cache: exported again at every start
            path.unlink()
        return None


def _mark_used(path: Path) -> None:
    try:
        os.utime(path)  # the cache forgets the least recently used entries first
    except OSError:  # a read-only cache still serves its entries
        pass


def _forget_least_recently_used(folder: Path) -> None:
    with contextlib.suppress(OSError):  # another process removed one first: the next start tidies up
        entries = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in entries[CACHED_MODELS:]:
            stale.unlink(missing_ok=True)
