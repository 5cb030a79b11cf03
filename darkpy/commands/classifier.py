"""`darkpy classifier predict|valid DATA CFG WEIGHTS [IMAGE]`: Darknet's `classifier predict` and `classifier
valid` (src/classifier.c predict_classifier, validate_classifier_single; also `valid10`, `validmulti`, `validfull`),
printing exactly what they print; and
`darkpy classifier train DATA CFG [WEIGHTS]` (train_classifier: the training loop of `darkpy train`, with the
classifier's data and loss, darkpy.training.classifier).

predict: the top k classes of each image (`-t N`/`--top N`, else the .data file's `top=`, else 1), with the
names of the .data file's `names=` (or `labels=`); without an image, paths are read from standard input, one a
line, after Darknet's `Enter Image Path: ` prompt. valid: top-1 and top-k accuracy over the `valid=` list, the
true class of an image being the first of the `labels=` names that occurs in its path, as Darknet finds it.
Both load the network as Darknet does for inference (batch 1, batch norm folded).
"""
import argparse
import sys
import time
from typing import Iterator, Optional, Sequence

from darkpy.commands.common import INPUT_ERRORS, UsageError, fail, load_model
from darkpy.commands.train import add_training_arguments, options_from_args, run_training
from darkpy.data import DataConfig, read_data_config, read_names
from darkpy.evaluation.classify import VALID_MODES, Accuracy, Classifier, measure_accuracy, top_k
from darkpy.image import ImageError, load_image

DEFAULT_LABELS = "data/labels.list"  # option_find_str(options, "labels", "data/labels.list")
DEFAULT_VALID = "data/train.list"
DEFAULT_CLASSES = 2
VALID_ACTIONS = tuple(VALID_MODES)  # valid, valid10, validmulti, validfull
ACTIONS = ("predict", *VALID_ACTIONS, "train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS,
                        help="predict: top classes of images; valid: accuracy (valid10: of ten crops, validmulti: of "
                             "five scales and their mirror images, validfull: of the whole image); train: Darknet's "
                             "classifier training")
    parser.add_argument("data", help="darknet .data file (classes, names or labels, top, valid)")
    parser.add_argument("cfg", help="the classifier's .cfg")
    parser.add_argument("weights", nargs="?", help="its .weights (without it: the cfg's random initialisation)")
    parser.add_argument("image", nargs="?", help="predict: an image (without it: paths from standard input)")
    parser.add_argument("-t", "--top", type=int, default=0, help="predict: how many classes (default: .data top=)")
    parser.add_argument("--topk", "-topk", action="store_true",
                        help="train: top-k accuracy on the valid list (k: .data top=, default 5) every --topk-epochs "
                             "epochs, in the output and the chart (Darknet's -topk)")
    parser.add_argument("--topk-epochs", type=int, default=2, help="train: with --topk, every this many epochs "
                                                                    "(Darknet: 2; not before iteration 100)")
    add_training_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.action == "train":
        if args.image is not None:
            print(f"darkpy classifier: error: train takes DATA CFG [WEIGHTS], not {args.image!r}", file=sys.stderr)
            return 2
        return run_training(options_from_args(args, "classifier", args.topk, args.topk_epochs), "classifier train",
                            args.gpus)
    try:
        data = read_data_config(args.data)
        model = load_model(args.cfg, args.weights, cfg_warnings="ignore", command="classifier")
        model.eval()
        if args.action in ("predict", "valid"):  # as predict_classifier and validate_classifier_single load it
            model.fuse()
        classifier = Classifier(model)
        if args.action == "predict":
            return predict(classifier, data, args.image, args.top)
        return validate(classifier, data, args.action)
    except INPUT_ERRORS as error:
        return fail("classifier", error)


def _check_outputs(classifier: Classifier, classes: int, data: DataConfig) -> None:
    """predict_classifier stops when a [softmax]/[cost] network's outputs differ from the .data classes."""
    last = classifier.model.layers[-1]
    if last.type in ("softmax", "cost") and classes != classifier.classes:
        raise UsageError(f"{data.where('classes')}: classes={classes}, but the cfg's last layer has "
                         f"{classifier.classes} outputs (Darknet: 'num of filters ... doesn't match to classes')")


def _darknet_layer_c(layer) -> int:
    """The `l.c` predict_classifier prints for the last layer: its input channels; a [connected] layer keeps
    its input count there, a [cost] layer nothing (0)."""
    if layer.type == "cost":
        return 0
    c, h, w = layer.in_shape
    return c * h * w if layer.type == "connected" else c


def _image_paths(image: Optional[str]) -> Iterator[str]:
    """The one image given, or paths read from standard input after Darknet's prompt."""
    if image is not None:
        yield image
        return
    while True:
        print("Enter Image Path: ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        yield line.rstrip("\n")


def predict(classifier: Classifier, data: DataConfig, image: Optional[str], top: int) -> int:
    classes = data.get_positive_int("classes", DEFAULT_CLASSES)
    names_path = data.existing_file("names", None) or data.existing_file("labels", DEFAULT_LABELS)
    names = read_names(names_path)
    print(f" classes = {classes}, output in cfg = {_darknet_layer_c(classifier.model.layers[-1])} ")
    _check_outputs(classifier, classes, data)
    top = min(top or data.get_positive_int("top", 1), classes)
    failed = 0
    for path in _image_paths(image):
        try:
            picture = load_image(path)
        except ImageError as error:
            failed += 1
            print(f"darkpy classifier: error: {error}", file=sys.stderr)
            continue
        print(f"{classifier.model.width} {classifier.model.height}")
        started = time.perf_counter()
        scores = classifier.predict(picture)
        print(f"{path}: Predicted in {(time.perf_counter() - started) * 1000:f} milli-seconds.")
        for index in top_k(scores, top):
            print(f"{_name(names, index)}: {scores[index]:f}")
    return 1 if failed else 0


def _name(names: Sequence[str], index: int) -> str:
    return names[index] if index < len(names) else f"class {index}"


def validate(classifier: Classifier, data: DataConfig, mode: str = "valid") -> int:
    """validate_classifier_single (`valid`: after " TOP calculation...", each running line starts with a newline)
    or validate_classifier_10/multi/full (each running line ends with one)."""
    labels = read_names(data.existing_file("labels", DEFAULT_LABELS))
    list_path = data.existing_file("valid", DEFAULT_VALID)
    classes = data.get_positive_int("classes", DEFAULT_CLASSES)
    topk = min(data.get_positive_int("top", 1), classes)
    single = mode == "valid"
    if single:
        print(" TOP calculation...")

    def running_line(i: int, accuracy: Accuracy) -> None:
        line = f"{i}: top 1: {accuracy.top1 / (i + 1):f}, top {topk}: {accuracy.topk / (i + 1):f}"
        print(f"\n{line}" if single else line, end="" if single else "\n")

    accuracy = measure_accuracy(classifier, list_path, labels, classes, topk, running_line,
                                lambda message: print(f"darkpy classifier: error: {message}", file=sys.stderr), mode)
    if single:
        print()
    if accuracy.unlabelled:
        print(f"darkpy classifier: warning: {len(accuracy.unlabelled)} image path(s) contain no label name (counted "
              f"as wrong, as Darknet counts them), e.g. {accuracy.unlabelled[0]}", file=sys.stderr)
    return 0
