"""Detection throughput: darkpy's pipeline against an OpenCV DNN pipeline on the same cfg and weights.

Run by hand (it is not a test):

    python bench/detect_throughput.py                      # yolov3-tiny at 416 on the CPU, 100 images
    python bench/detect_throughput.py --batch 1 4 8 --count 200 --device cuda:0

Both pipelines read every image from disk, run the network at --size and do their NMS; the images are the
files of --images cycled up to --count. darkpy: image reading and Darknet's resize in a background thread
(darkpy.evaluation.inference.iterate_frames), batched forward (--backend, as `darkpy detect`: onnxruntime when
installed, else torch), Darknet's decoding and do_nms_sort. OpenCV:
cv2.dnn.readNetFromDarknet, imread, blobFromImage (cv::resize, not Darknet's resize), forward, per-class
NMSBoxes. Prints a table with images/s and the ratio darkpy / OpenCV.
"""
import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Sequence

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from darkpy.evaluation.inference import (  # noqa: E402
    Detector,
    Source,
    batched,
    iterate_frames,
)
from darkpy.commands.common import add_backend, ready_for_inference  # noqa: E402
from darkpy.model import Darknet  # noqa: E402


def _image_paths(folder: str, count: int) -> List[str]:
    files = sorted(str(p) for p in Path(folder).iterdir()
                   if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})
    if not files:
        raise SystemExit(f"{folder}: no images")
    return [files[i % len(files)] for i in range(count)]


def run_darkpy(detector: Detector, paths: Sequence[str], thresh: float, nms: float) -> float:
    """Seconds for the whole darkpy pipeline over the paths."""
    start = time.perf_counter()
    frames = iterate_frames([Source("image", p) for p in paths], detector.preprocess)
    for batch in batched(frames, detector.batch_size):
        detector.detect_frames(batch, thresh, 0.5, nms)
    return time.perf_counter() - start


def _opencv_detect(net, out_names, image: np.ndarray, size: int, thresh: float, nms: float):
    blob = cv2.dnn.blobFromImage(image, 1 / 255.0, (size, size), swapRB=True, crop=False)
    net.setInput(blob)
    rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in net.forward(out_names)])
    scores = rows[:, 5:] * rows[:, 4:5]
    height, width = image.shape[:2]
    result = []
    for class_id in np.flatnonzero((scores > thresh).any(axis=0)):
        keep = np.flatnonzero(scores[:, class_id] > thresh)
        boxes = [[float((x - w / 2) * width), float((y - h / 2) * height), float(w * width), float(h * height)]
                 for x, y, w, h in rows[keep, :4]]
        for i in np.array(cv2.dnn.NMSBoxes(boxes, scores[keep, class_id].tolist(), thresh, nms)).reshape(-1):
            result.append((int(class_id), boxes[i]))
    return result


def run_opencv(cfg: str, weights: str, paths: Sequence[str], size: int, thresh: float, nms: float) -> float:
    net = cv2.dnn.readNetFromDarknet(cfg, weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    out_names = net.getUnconnectedOutLayersNames()
    _opencv_detect(net, out_names, cv2.imread(paths[0]), size, thresh, nms)  # warm-up
    start = time.perf_counter()
    for path in paths:
        _opencv_detect(net, out_names, cv2.imread(path), size, thresh, nms)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", default=str(REPO / "cfg" / "yolov3-tiny.cfg"))
    parser.add_argument("--weights", default=str(REPO / "weights" / "yolov3-tiny.weights"))
    parser.add_argument("--images", default=str(REPO / "data" / "images"))
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--device", default="cpu")
    add_backend(parser)  # as `darkpy detect`: onnxruntime by default when installed
    parser.add_argument("--thresh", type=float, default=0.25)
    parser.add_argument("--nms", type=float, default=0.45)
    args = parser.parse_args()
    for path in (args.cfg, args.weights):
        if not os.path.isfile(path):
            raise SystemExit(f"{path}: not found")
    paths = _image_paths(args.images, args.count)

    model = Darknet.from_cfg(args.cfg, width=args.size, height=args.size)
    model.load_weights(args.weights)
    runtime = ready_for_inference(model, args.device, backend=args.backend)  # as `darkpy detect` sets it up
    rows = []
    opencv_seconds = run_opencv(args.cfg, args.weights, paths, args.size, args.thresh, args.nms)
    rows.append(("OpenCV DNN", 1, opencv_seconds))
    for batch in args.batch:
        detector = Detector(model, device=None, batch_size=batch, runtime=runtime)
        run_darkpy(detector, paths[:batch], args.thresh, args.nms)  # warm-up
        rows.append(("darkpy", batch, run_darkpy(detector, paths, args.thresh, args.nms)))

    print(f"{len(paths)} images from {args.images}, {Path(args.cfg).name} at {args.size}x{args.size}, "
          f"darkpy on {'onnxruntime' if runtime else 'torch ' + torch.__version__} ({torch.get_num_threads()} "
          f"threads) on {args.device}, "
          f"OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads) on the CPU")
    print("| pipeline   | batch | seconds | images/s | vs OpenCV |")
    print("|------------|------:|--------:|---------:|----------:|")
    opencv_rate = len(paths) / opencv_seconds
    for name, batch, seconds in rows:
        rate = len(paths) / seconds
        print(f"| {name:<10} | {batch:>5} | {seconds:7.2f} | {rate:8.1f} | {rate / opencv_rate:8.2f}x |")


if __name__ == "__main__":
    main()
