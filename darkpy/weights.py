"""Darknet's .weights format (src/parser.c load_weights_upto / save_weights_upto).

Header: int32 major, minor, revision; then `seen` (images trained on) as uint64 when major*10+minor >= 2, else
uint32. Connected-layer weights are stored transposed when major or minor > 1000. Then float32 arrays, layer by
layer in cfg order, in the order each layer's `darknet_arrays()` lists them.

A file that ends exactly between two layers is a partial file (`*.conv.N`): loading stops there and reports
how many layers were filled. A file that ends inside a layer, or that has floats left over, is an error. The
report also names the first layer holding NaN or infinite values: Darknet loads them silently, and the network
then answers nonsense. Whether a partial or non-finite file is acceptable is the caller's rule (`refuse_unusable`
is inference's; training accepts a partial backbone).
"""
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

DEFAULT_VERSION = (0, 2, 5)  # what this Darknet writes (src/version.h)


class WeightsError(ValueError):
    """A .weights file that does not fit its cfg (named with both files and the counts)."""


@dataclass
class WeightsHeader:
    major: int
    minor: int
    revision: int
    seen: int

    @property
    def seen_is_64bit(self) -> bool:
        return self.major * 10 + self.minor >= 2

    @property
    def transpose(self) -> bool:
        return self.major > 1000 or self.minor > 1000

    @property
    def size(self) -> int:
        return 12 + (8 if self.seen_is_64bit else 4)

    def pack(self) -> bytes:
        fmt = "<iiiQ" if self.seen_is_64bit else "<iiiI"
        return struct.pack(fmt, self.major, self.minor, self.revision, self.seen)


@dataclass
class LoadReport:
    """What load_weights filled: `layers_loaded` of the `layers_with_weights` layers that have arrays."""

    path: str
    header: WeightsHeader
    layers_loaded: int
    layers_with_weights: int
    last_layer: int  # index of the last layer filled, -1 if none
    floats: int
    nonfinite_layer: Optional[str] = None  # "layer 3 ([convolutional], a.cfg:12)": the first holding NaN or inf

    @property
    def complete(self) -> bool:
        return self.layers_loaded == self.layers_with_weights

    def nonfinite_message(self) -> Optional[str]:
        """What is wrong when a layer holds NaN or infinite values; None when every value is finite."""
        if self.nonfinite_layer is None:
            return None
        return (f"{self.path}: {self.nonfinite_layer} holds NaN or infinite values: the file is corrupt (or "
                f"training diverged when it was written)")

    def refuse_unusable(self, allow_partial: bool = False) -> None:
        """Inference's rule: weights with NaN or infinite values are refused, and so is a partial file (its
        remaining layers would keep their random initialisation and detect nonsense) unless allow_partial."""
        message = self.nonfinite_message()
        if message is not None:
            raise WeightsError(message)
        if not self.complete and not allow_partial:
            raise WeightsError(
                f"{self.path}: a partial weights file: it fills {self.layers_loaded} of the {self.layers_with_weights}"
                f" layers with weights (the file ends after layer {self.last_layer}); the others would keep their "
                f"random initialisation. Use the full weights, or --allow-partial to run anyway")

    @property
    def seen(self) -> int:
        """Images the network had trained on, from the header (the model keeps it as `seen`)."""
        return self.header.seen

    @property
    def version(self) -> Tuple[int, int, int]:
        """major, minor, revision of the header (saving keeps it, so load -> save is byte-identical)."""
        return self.header.major, self.header.minor, self.header.revision


def read_header(data: bytes, path: str) -> WeightsHeader:
    if len(data) < 16:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a Darknet weights header")
    major, minor, revision = struct.unpack_from("<iii", data, 0)
    header = WeightsHeader(major, minor, revision, 0)
    if header.seen_is_64bit:
        if len(data) < 20:
            raise WeightsError(f"{path}: {len(data)} bytes is too short for a version {major}.{minor} header")
        header.seen = struct.unpack_from("<Q", data, 12)[0]
    else:
        header.seen = struct.unpack_from("<I", data, 12)[0]
    return header


def _is_transposed_connected(layer, tensor) -> bool:
    """A [connected] weight array (of a [connected] layer or of a recurrent layer's connected sub-layers)."""
    return any(tensor is weight for weight in getattr(layer, "connected_weights", list)())


def count_floats(layers: Sequence[Any]) -> int:
    """Floats a .weights file holds for these layers (their `darknet_arrays()`, batch-norm statistics included)."""
    return sum(t.numel() for layer in layers for t in layer.darknet_arrays())


def _location(layer: Any) -> str:
    return f"{layer.section.file}:{layer.section.line}"


def load_weights(layers: Sequence[Any], path: Union[str, Path], partial: bool = False) -> LoadReport:
    """Fill `layers` (a network's layers in cfg order, or its first N for a partial load) from a Darknet .weights
    file, as load_weights_upto does; see the module docstring for the rules. With `partial`, floats left over
    after the last layer are not an error (`darknet partial` reads only the first N layers of a full file)."""
    path = str(path)
    if Path(path).exists() and not Path(path).is_file():  # /dev/zero would be read until memory runs out
        raise WeightsError(f"{path}: not a regular file")
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read weights file: {e.strerror}") from None
    header = read_header(data, path)
    payload = len(data) - header.size
    if payload % 4:
        raise WeightsError(f"{path}: {payload} bytes after the header is not a whole number of float32 values "
                           f"(the file is truncated or not a Darknet weights file)")
    floats = np.frombuffer(data, dtype="<f4", offset=header.size)
    offset, loaded, last, nonfinite = 0, 0, -1, None
    with_weights = [layer for layer in layers if layer.darknet_arrays() and not layer.dontload]
    for layer in with_weights:
        if offset == len(floats):
            break  # a partial file (*.conv.N) stops between two layers
        start = offset
        offset = _fill_layer(layer, floats, offset, header.transpose, path, layers)
        if nonfinite is None and not np.isfinite(floats[start:offset]).all():
            nonfinite = f"layer {layer.index} ([{layer.type}], {_location(layer)})"
        loaded += 1
        last = layer.index
    if offset < len(floats) and not partial:
        cfg_path = layers[0].section.file if len(layers) else "?"
        raise WeightsError(f"{path}: {len(floats) - offset} floats are left over: the cfg "
                           f"{cfg_path} needs {offset} floats, the file has {len(floats)} (wrong cfg for these "
                           f"weights, or wrong classes/filters?)")
    return LoadReport(path, header, loaded, len(with_weights), last, offset, nonfinite)


def _fill_layer(layer: Any, floats: np.ndarray, offset: int, transpose: bool, path: str,
                layers: Sequence[Any]) -> int:
    """Copy one layer's arrays from `floats` at `offset`; returns the offset after them."""
    for tensor in layer.darknet_arrays():
        count = tensor.numel()
        if offset + count > len(floats):
            raise WeightsError(
                f"{path}: the file ends inside layer {layer.index} ([{layer.type}], {_location(layer)}):"
                f" it needs {count} floats at float {offset}, only {len(floats) - offset} are left "
                f"(the cfg needs {count_floats(layers)} floats in all, the file has {len(floats)})")
        values = torch.from_numpy(floats[offset:offset + count].copy())
        if transpose and _is_transposed_connected(layer, tensor):
            values = values.view(tensor.shape[1], tensor.shape[0]).t()
        with torch.no_grad():
            tensor.copy_(values.reshape(tensor.shape))
        offset += count
    return offset


def _ordinary_file_mode() -> int:
    """The mode open() gives a new file: 0666 less the process's umask (read by setting it and back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def save_weights(layers: Sequence[Any], path: Union[str, Path], seen: int = 0,
                 version: Optional[Tuple[int, int, int]] = None) -> None:
    """Write these layers' arrays as a .weights file Darknet reads (save_weights_upto), atomically (a temp file
    in the same folder, then a rename).

    The header keeps `version` (the one the weights were loaded with) when it has a 64-bit `seen` (so
    load -> save is byte-identical), else Darknet's current 0.2.5.
    """
    header = WeightsHeader(*(version or DEFAULT_VERSION), seen=seen)
    if not header.seen_is_64bit or header.transpose:
        header = WeightsHeader(*DEFAULT_VERSION, seen=header.seen)
    path = Path(path)
    # the writer's process id in the name tells a killed write's leftover from one still being written
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=str(path.parent) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.pack())
            for layer in layers:
                for tensor in layer.darknet_arrays():
                    f.write(tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _ordinary_file_mode())  # mkstemp makes the file 0600; Darknet's fopen gives 0666 & ~umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_TEMPORARY_NAME = re.compile(r"\.weights\.(\d+)\.[^.]+\.tmp$")  # save_weights' temporary files: NAME.PID.RANDOM.tmp


def remove_orphaned_temporaries(folder: Union[str, Path]) -> List[Path]:
    """Delete the temporary files that save_weights calls killed mid-write left in `folder` (those whose writing
    process no longer runs here; on POSIX only, where that can be asked); returns the files removed."""
    if os.name != "posix" or not Path(folder).is_dir():
        return []
    removed = []
    for candidate in Path(folder).iterdir():
        match = _TEMPORARY_NAME.search(candidate.name)
        if match and candidate.is_file() and not _process_runs(int(match.group(1))):
            try:
                candidate.unlink()
                removed.append(candidate)
            except OSError:
                pass  # removed by someone else meanwhile, or not ours to remove
    return removed


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
