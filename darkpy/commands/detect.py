"""`darkpy detect`: Darknet's `detector test` (and `demo` for videos and cameras) on PyTorch.

Per image it prints what src/detector.c `test_detector` prints — `<path>: Predicted in %f milli-seconds.`
followed by draw_detections_v3's lines (`-ext_output` adds the box in pixels) — and writes the image with its
boxes to --save-dir. `--out` writes Darknet's `-out` JSON, `--save-txt` YOLO-format predictions with their
confidences. Images are read and resized in a background thread while the network runs, in batches.

With no arguments it runs the project's yolov3-tiny cfg and weights on the photos in data/images.
"""
import argparse
import os
import stat
import sys
import tempfile
import time
from itertools import groupby
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO

import cv2
import numpy as np
from tqdm import tqdm

from darkpy.api import DEFAULT_NAMES, Classifier, Network, Results, load, project_file
from darkpy.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    INPUT_ERRORS,
    UsageError,
    add_allow_partial,
    add_backend,
    fail,
    finite_float,
)
from darkpy.data import darknet_label_path
from darkpy.evaluation.inference import (
    LIST_EXTENSIONS,
    Frame,
    Source,
    batched,
    count_frames,
    expand_sources,
    iterate_frames,
)

DEFAULT_CFG = "cfg/yolov3-tiny.cfg"
DEFAULT_WEIGHTS = "weights/yolov3-tiny.weights"
DEFAULT_SOURCE = "data/images"
NETWORK_FILE_SUFFIXES = (".cfg", ".weights")  # never an image: a misplaced --cfg / --weights
STDIN_SOURCE = "-"  # image paths read from standard input, one a line (Darknet's `detector test ... < list.txt`)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="*",
                        help="images, folders, list files (one path per line), glob patterns, videos, camera "
                             "indices, or - for paths read from standard input (default: the paths on standard "
                             f"input when it is a file or a pipe, as darknet's `< list.txt`, else {DEFAULT_SOURCE})")
    parser.add_argument("--cfg", default=DEFAULT_CFG, help=f"network cfg (default: {DEFAULT_CFG})")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help=f"darknet weights (default: {DEFAULT_WEIGHTS})")
    add_allow_partial(parser)
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--names", default=None, help=f"class names, one per line (default: {DEFAULT_NAMES})")
    names.add_argument("--data", default=None, help="a darknet .data file; its names= gives the class names")
    parser.add_argument("--thresh", type=finite_float, default=0.25, help="probability threshold (default: 0.25)")
    parser.add_argument("--hier", type=finite_float, default=0.5,
                        help="hierarchy threshold, [region] softmax trees only (default: 0.5)")
    parser.add_argument("--nms", type=finite_float, default=0.45, help="NMS threshold, 0 to disable (default: 0.45)")
    parser.add_argument("--letter-box", action="store_true",
                        help="letterbox the image into the network input (also on when [net] letter_box=1)")
    parser.add_argument("--width", type=int, default=None, help="network width (default: the cfg's)")
    parser.add_argument("--height", type=int, default=None, help="network height (default: the cfg's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N (default: auto)")
    parser.add_argument("--half", action="store_true", help="float16 inference (CUDA only)")
    add_backend(parser)
    parser.add_argument("--batch", type=int, default=4, help="images per forward pass (default: 4)")
    parser.add_argument("--save-dir", default="runs/detect",
                        help="folder for the annotated images/videos (default: runs/detect)")
    parser.add_argument("--no-save", action="store_true", help="do not write annotated images")
    parser.add_argument("--ext-output", action="store_true", help="print the boxes in pixels (darknet -ext_output)")
    parser.add_argument("--out", default=None, metavar="JSON", help="write darknet's -out JSON to this file")
    parser.add_argument("--save-txt", action="store_true",
                        help="write <save-dir>/labels/<image>.txt: class x y w h confidence (relative)")
    parser.add_argument("--save-labels", action="store_true",
                        help="write each image's YOLO label file beside it (class x y w h, relative), where "
                             "training and map read labels (darknet -save_labels)")


# ============================================================================ setup

def _load_network(args: argparse.Namespace) -> Network:
    """darkpy.load with the command's options, the default files found in the project checkout too."""
    cfg = project_file(args.cfg, args.cfg == DEFAULT_CFG)
    weights = project_file(args.weights, args.weights == DEFAULT_WEIGHTS) if args.weights else None
    network = load(cfg, weights, names=args.names, data=args.data, device=args.device, thresh=args.thresh,
                   hier=args.hier, nms=args.nms, letter_box=args.letter_box, batch=args.batch, width=args.width,
                   height=args.height, half=args.half, allow_partial=args.allow_partial,
                   backend=args.backend)
    if isinstance(network, Classifier):
        raise UsageError(f"{args.cfg}: the network has no [yolo], [Gaussian_yolo], [region] or [detection] layer, "
                         f"so it cannot detect objects: it is a classifier (darkpy classifier predict DATA CFG "
                         f"WEIGHTS IMAGE)")
    if args.half and not network.detector.half:
        print(f"warning: --half needs a CUDA device; running in float32 on {network.detector.device}",
              file=sys.stderr)
    return network


# ============================================================================ outputs

def _unwritable(path: Path, error: OSError) -> OSError:
    """An OSError whose message names the file first and then the reason (OSError's own puts the path last)."""
    return OSError(f"{path}: cannot write: {error.strerror or error}")


def _writable_folder(folder: Path) -> Path:
    """Create the folder and check that a file can be written there, before any image is processed."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise _unwritable(folder, error) from None
    return folder


def _remove_partial(path: Path) -> None:
    """Remove what a failed write left; only a plain file (never a device such as /dev/full, or a folder)."""
    try:
        if path.is_file():
            path.unlink()
    except OSError:
        pass  # not removable: the failure itself is already reported


class OutputWriter:
    """Annotated images / videos, label files and the JSON file of one run. The folders and the JSON file are
    checked when the writer is made (an OSError naming the path); a write that fails later is reported by name,
    its partial file removed, and the run goes on (`failures` counts them for the exit code)."""

    def __init__(self, args):
        self.save_dir = Path(args.save_dir)
        self.save_images = not args.no_save
        self.save_txt = args.save_txt
        self.save_labels = args.save_labels
        self.used_names: Dict[str, int] = {}
        self.stream_stems: Dict[str, str] = {}
        self.videos: Dict[str, cv2.VideoWriter] = {}
        self.json_path = Path(args.out) if args.out else None
        self.json_file: Optional[TextIO] = None
        self.frames_written = 0
        self.failures = 0
        if self.save_images or self.save_txt:
            _writable_folder(self.save_dir)
        if self.save_txt:
            _writable_folder(self.save_dir / "labels")
        if self.json_path is not None:
            try:
                self.json_path.parent.mkdir(parents=True, exist_ok=True)
                self.json_file = open(self.json_path, "w", encoding="utf-8")
                self.json_file.write("[\n")
            except OSError as error:
                raise _unwritable(self.json_path, error) from None

    def _failed(self, error: OSError, partial: Optional[Path]) -> None:
        self.failures += 1
        print(f"darkpy detect: error: {error}", file=sys.stderr)
        if partial is not None:
            _remove_partial(partial)

    def _unique_stem(self, source_path: str) -> str:
        """Output file stem for a source; a second source with the same stem gets _2, _3..."""
        stem = Path(source_path).stem if not source_path.isdigit() else f"camera{source_path}"
        count = self.used_names.get(stem, 0) + 1
        self.used_names[stem] = count
        return stem if count == 1 else f"{stem}_{count}"

    def write(self, frame: Frame, results: Results) -> None:
        stem = self._stem_for(frame)
        if self.save_images:
            self._write_picture(frame, stem, results)
        if self.save_txt:
            name = stem if frame.source.kind == "image" else f"{stem}_{frame.frame_index:06d}"
            self._write_labels(self.save_dir / "labels" / f"{name}.txt", results.label_lines(confidence=True))
        if self.save_labels and frame.source.kind == "image":
            self._save_label(frame.source.path, results)
        if self.json_file is not None:
            self._write_json(results.to_json(self.frames_written + 1))
        self.frames_written += 1

    def _save_label(self, image_path: str, results: Results) -> None:
        """-save_labels: the label file where Darknet's training looks for the image's labels (beside it)."""
        path = darknet_label_path(image_path)
        if path is None:
            print(f"darkpy detect: error: {image_path}: no label path for this extension, label not saved",
                  file=sys.stderr)
            return
        self._write_labels(Path(path), results.label_lines())

    def _write_labels(self, path: Path, lines: Sequence[str]) -> None:
        try:
            path.write_text("".join(line + "\n" for line in lines))
        except OSError as error:
            self._failed(_unwritable(path, error), path)

    def _write_picture(self, frame: Frame, stem: str, results: Results) -> None:
        if frame.source.kind == "image":
            path = self.save_dir / f"{stem}.jpg"
            try:
                results.save(path)
            except OSError as error:
                self._failed(error, path)
            return
        annotated = results.plot()
        video = self._video_writer(frame, stem, annotated)
        if video is not None:
            video.write(annotated)

    def _write_json(self, record: str) -> None:
        """One frame's record; after a failed write the JSON file is incomplete: removed, and no more written."""
        try:
            self.json_file.write((", \n" if self.frames_written else "") + record)
        except OSError as error:
            self._abandon_json(error)

    def _abandon_json(self, error: OSError) -> None:
        try:
            self.json_file.close()
        except OSError:
            pass  # the same failure again, as the buffer is flushed
        self.json_file = None
        self._failed(_unwritable(self.json_path, error), self.json_path)

    def _stem_for(self, frame) -> str:
        """Images get one stem each; all frames of a video or camera share theirs."""
        if frame.source.kind == "image":
            return self._unique_stem(frame.source.path)
        key = f"{frame.source.kind}:{frame.source.path}"
        if key not in self.stream_stems:
            self.stream_stems[key] = self._unique_stem(frame.source.path)
        return self.stream_stems[key]

    def _video_writer(self, frame, stem: str, annotated: np.ndarray) -> Optional[cv2.VideoWriter]:
        """The stream's video writer; None (reported once) when it cannot be opened."""
        key = f"{frame.source.kind}:{frame.source.path}"
        if key not in self.videos:
            height, width = annotated.shape[:2]
            path = self.save_dir / f"{stem}.mp4"
            self.videos[key] = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), frame.fps or 25.0,
                                               (width, height))
            if not self.videos[key].isOpened():
                self._failed(OSError(f"{path}: cannot write the annotated video"), path)
        return self.videos[key] if self.videos[key].isOpened() else None

    def close(self) -> None:
        for writer in self.videos.values():
            writer.release()
        if self.json_file is not None:
            try:
                self.json_file.write("\n]\n")
                self.json_file.close()
            except OSError as error:
                self._abandon_json(error)


# ============================================================================ the run

def _report(results: Results, milliseconds: float, ext_output: bool, echo: Callable[[str], None]) -> None:
    """test_detector's lines for one image: the timing, then draw_detections_v3's lines."""
    echo(f"{results.path}: Predicted in {milliseconds:f} milli-seconds.")
    for line in results.lines(ext_output):
        echo(line)


def _progress_bar(sources: Sequence[Source], frame_total: Optional[int], specs: Sequence[str]) -> Any:
    """A tqdm bar when the input is a folder, list, pattern, video or camera; plain output for single images."""
    many = any(s.kind != "image" for s in sources) or any(
        os.path.isdir(p) or Path(p).suffix.lower() in LIST_EXTENSIONS or not os.path.exists(p) and "*" in p
        for p in specs)
    if not many:
        return None
    return tqdm(total=frame_total, unit="img", file=sys.stderr, dynamic_ncols=True)


def _process_batch(network: Network, batch: List[Frame], args: argparse.Namespace, writer: OutputWriter,
                   echo: Callable[[str], None]) -> None:
    start = time.perf_counter()
    results = network.detect_frames(batch)
    per_image_ms = (time.perf_counter() - start) * 1000 / len(batch)
    for frame, result in zip(batch, results):
        _report(result, per_image_ms, args.ext_output, echo)
        writer.write(frame, result)


def _stdin_is_redirected() -> bool:
    """Standard input is a file or a pipe (`darkpy detect < list.txt`), not a terminal or /dev/null."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, OSError, ValueError):  # no stdin, or a stand-in without a file (pytest's)
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _source_specs(sources: Optional[Sequence[str]]) -> List[str]:
    """The command line's sources (none: standard input's paths when redirected, else the default folder,
    found in the checkout too), `-` replaced by the paths on standard input (one a line); a .cfg or .weights
    among them is an error, not an image to skip."""
    specs: List[str] = []
    for spec in sources or [STDIN_SOURCE if _stdin_is_redirected() else DEFAULT_SOURCE]:
        if spec == STDIN_SOURCE:
            listed = [line.strip() for line in sys.stdin if line.strip()]
            if not listed:
                raise UsageError("no image paths on standard input (give images, folders or list files)")
            specs.extend(listed)
        else:
            specs.append(project_file(spec, spec == DEFAULT_SOURCE))
    misplaced = [spec for spec in specs if spec.lower().endswith(NETWORK_FILE_SUFFIXES)]
    if misplaced:
        raise UsageError(f"{misplaced[0]} is a network file, not an image: give it with --cfg / --weights, or "
                         f"use Darknet's form `darkpy detect CFG WEIGHTS IMAGE`")
    return specs


class _Counts:
    """Frames processed and frames that could not be read, for the closing line and the exit code."""

    def __init__(self) -> None:
        self.processed = self.failed = 0


def _readable(frames: Iterator[Frame], counts: _Counts) -> Iterator[Frame]:
    """The frames that could be read; the others are reported on stderr and skipped, as darknet skips them."""
    for frame in frames:
        if frame.error is not None:
            counts.failed += 1
            print(f"darkpy detect: error: {frame.error}, skipped", file=sys.stderr)
            continue
        yield frame


def _detect_all(network: Network, sources: List[Source], args: argparse.Namespace, writer: OutputWriter, bar: Any,
                counts: _Counts) -> None:
    echo = bar.write if bar is not None else print
    # a camera is processed frame by frame (latency matters more than throughput)
    batch_size = 1 if any(s.kind == "camera" for s in sources) else network.detector.batch_size
    frames = _readable(iterate_frames(sources, network.detector.preprocess), counts)
    # a recurrent network carries its state from frame to frame (images included, as `detector test` does) but
    # starts each video from zeros, as a new `darknet detector demo` does
    recurrent = bool(network.model.recurrent_layers())
    for source, run in groupby(frames, key=lambda frame: frame.source) if recurrent else [(None, frames)]:
        if source is not None and source.kind != "image":
            network.reset_state()
        for batch in batched(run, batch_size):
            _process_batch(network, batch, args, writer, echo)
            counts.processed += len(batch)
            if bar is not None:
                bar.update(len(batch))


def run(args: argparse.Namespace) -> int:
    """`darkpy detect`: 0 when at least one image was processed and every output written, 1 when none could be
    processed or an output could not be written, 2 when the network or the class names cannot be set up (see
    darkpy.commands.common)."""
    try:
        specs = _source_specs(args.sources)
        network = _load_network(args)
    except INPUT_ERRORS as error:
        return fail("detect", error, EXIT_USAGE)  # tests/commands/test_detect.py asserts 2 for a missing cfg
    try:
        writer = OutputWriter(args)
    except OSError as error:  # --save-dir or --out cannot be written: nothing is run
        return fail("detect", error)
    sources, errors = expand_sources(specs)
    for message in errors:
        print(f"darkpy detect: error: {message}, skipped", file=sys.stderr)
    bar = _progress_bar(sources, count_frames(sources), specs)
    counts = _Counts()
    start = time.perf_counter()
    try:
        _detect_all(network, sources, args, writer, bar, counts)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    rate = counts.processed / elapsed if elapsed > 0 else 0.0
    skipped = counts.failed + len(errors)
    print(f"{counts.processed} image(s) in {elapsed:.2f} s: {rate:.2f} images/s"
          + (f"; {skipped} input(s) skipped" if skipped else "")
          + (f"; {writer.failures} output(s) could not be written" if writer.failures else ""))
    if counts.processed and not args.no_save:
        print(f"annotated results in {writer.save_dir}")
    return EXIT_OK if counts.processed and not writer.failures else EXIT_FAILED
