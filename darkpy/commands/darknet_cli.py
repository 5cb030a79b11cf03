"""Darknet's own command lines, as a second front end on darkpy's commands.

`darkpy detector test DATA CFG WEIGHTS IMAGE -thresh .5 -ext_output` is translated, word for word, into
`darkpy detect --data DATA --cfg CFG --weights WEIGHTS IMAGE --thresh .5 --ext-output`, which then runs as
any darkpy command line does: nothing is implemented twice. The grammar is src/darknet.c's and
src/detector.c's `run_detector`: flags may stand anywhere and are taken out first (find_arg, find_int_arg...),
the words left are `detector MODE DATA CFG [WEIGHTS] [IMAGE]`; `detect CFG WEIGHTS [IMAGE]` is Darknet's
shortcut for coco.data with thresh .24; `partial CFG WEIGHTS OUT N` is darkpy's own grammar already.

Where darkpy differs from Darknet it says so rather than guess: a flag Darknet knows but darkpy does not
implement is accepted with one warning line, one that Darknet does not know is an error naming it (Darknet
silently ignores a typo), and a flag the mode does not use is noted as ignored, as Darknet ignores it.
docs/darknet_commands.md is the table of every command and flag.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple


class DarknetUsageError(ValueError):
    """A Darknet command line darkpy cannot run: the message names the word or flag."""


@dataclass(frozen=True)
class Flag:
    """One of Darknet's single-dash flags: whether a value follows it, and why darkpy does not implement it
    (empty when it does)."""

    takes_value: bool
    not_implemented: str = ""


# Every flag Darknet's `detector`, `detect` and `classifier` read (src/darknet.c main, src/detector.c
# run_detector, src/classifier.c run_classifier).
FLAGS: Dict[str, Flag] = {
    "-i": Flag(True), "-gpus": Flag(True), "-thresh": Flag(True), "-hier": Flag(True), "-iou_thresh": Flag(True),
    "-points": Flag(True), "-letter_box": Flag(False), "-ext_output": Flag(False), "-dont_show": Flag(False),
    "-save_labels": Flag(False), "-out": Flag(True), "-map": Flag(False), "-clear": Flag(False),
    "-mAP_epochs": Flag(True), "-width": Flag(True), "-height": Flag(True), "-num_of_clusters": Flag(True),
    "-c": Flag(True), "-out_filename": Flag(True),
    "-benchmark": Flag(False, "no benchmark mode (darkpy detect prints each image's time and the images/s)"),
    "-benchmark_layers": Flag(False, "no per-layer timing"),
    "-show": Flag(False, "darkpy opens no windows (calc_anchors' cloud of points is not drawn)"),
    "-show_imgs": Flag(False, "darkpy opens no windows"),
    "-mjpeg_port": Flag(True, "no MJPEG stream server"),
    "-json_port": Flag(True, "no JSON stream server"),
    "-http_post_host": Flag(True, "no HTTP posting of detections"),
    "-avgframes": Flag(True, "no averaging of video frames' detections"),
    "-dontdraw_bbox": Flag(False, "darkpy draws the boxes of videos it saves"),
    "-time_limit_sec": Flag(True, "no time limit for demo"),
    "-json_file_output": Flag(True, "no per-frame JSON file for demo (use detector test -out)"),
    "-prefix": Flag(True, "no per-frame image files for demo"),
    "-s": Flag(True, "no frame skipping"),
    "-chart": Flag(True, "the chart is written as chart.png and chart_<cfg>.png"),
    "-cuda_debug_sync": Flag(False, "a CUDA debugging switch of Darknet's GPU build"),
    # src/classifier.c run_classifier
    "-t": Flag(True), "-topk": Flag(False), "-dontuse_opencv": Flag(False, "darkpy always reads images with OpenCV"),
}

# What `darkpy detect` / `map` / `train` option each flag becomes, per mode; a known flag missing from a mode's
# table does nothing there, as in Darknet.
_DETECT_FLAGS = {"-thresh": "--thresh", "-hier": "--hier", "-ext_output": "--ext-output", "-out": "--out",
                 "-save_labels": "--save-labels", "-letter_box": "--letter-box", "-i": "--device",
                 "-dont_show": None}
_DEMO_FLAGS = {"-thresh": "--thresh", "-hier": "--hier", "-ext_output": "--ext-output",
               "-letter_box": "--letter-box", "-i": "--device", "-dont_show": None, "-c": None,
               "-out_filename": None}
_MAP_FLAGS = {"-thresh": "--thresh", "-iou_thresh": "--iou-thresh", "-points": "--points",
              "-letter_box": "--letter-box", "-i": "--device"}
_VALID_FLAGS = {"-out": "--out", "-i": "--device"}
_CALC_ANCHORS_FLAGS = {"-num_of_clusters": "--num-of-clusters", "-width": "--width", "-height": "--height"}
_TRAIN_FLAGS = {"-map": "--map", "-clear": "--clear", "-mAP_epochs": "--map-epochs", "-i": "--device",
                "-gpus": None, "-dont_show": None}

# Darknet's default where it differs from darkpy's: `darknet detect` uses thresh .24 (detector test: .25).
_COCO_SHORTCUT_THRESH = "0.24"
IMAGENET_DATA = "cfg/imagenet1k.data"  # `darknet classify`'s .data file


@dataclass
class Translation:
    """The darkpy command line a Darknet one becomes, and the warnings to print before it runs."""

    argv: List[str]
    warnings: List[str]


# Darknet's other top-level commands: recognised, and refused with the reason (docs/darknet_commands.md).
REFUSED_COMMANDS = {
    "imtest": "not implemented (Darknet's image-augmentation viewer)",
    "visualize": "not implemented (Darknet's weights viewer window)",
    "rescale": "not implemented", "reset": "not implemented", "normalize": "not implemented",
    "denormalize": "not implemented (darkpy fuses batch norm itself when it loads a network)",
    "statistics": "not implemented", "ops": "use `darkpy summary CFG` (layer table and BFLOPs)",
    "oneoff": "not implemented", "average": "not implemented",
    "rnn": "not implemented (Darknet's RNN demos)", "nightmare": "not implemented", "speed": "not implemented",
}


def is_darknet_command_line(argv: Sequence[str]) -> bool:
    """`detector ...`, one of Darknet's other commands, or `detect CFG WEIGHTS ...` (darkpy's own detect takes
    images, never a .cfg first)."""
    if not argv:
        return False
    if argv[0] in ("detector", "classifier", "classify") or argv[0] in REFUSED_COMMANDS:
        return True
    if argv[0] != "detect":
        return False
    i = 1
    while i < len(argv) and argv[i] in FLAGS:  # Darknet's flags may come first
        i += 1 + FLAGS[argv[i]].takes_value
    return i < len(argv) and not argv[i].startswith("-") and argv[i].lower().endswith(".cfg")


def split_flags(words: Sequence[str]) -> Tuple[List[str], Dict[str, Optional[str]]]:
    """Darknet's find_arg family: flags (with their values) taken out from anywhere, the other words in order.
    An unknown flag is an error naming it; a flag given twice keeps its first value, as find_*_arg does."""
    positional: List[str] = []
    flags: Dict[str, Optional[str]] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("-") or word == "-" or _is_number(word):
            positional.append(word)
            i += 1
            continue
        if word not in FLAGS:
            raise DarknetUsageError(f"unknown flag {word} (Darknet would silently ignore it; "
                                    f"docs/darknet_commands.md lists the flags)")
        if FLAGS[word].takes_value:
            if i + 1 >= len(words):
                raise DarknetUsageError(f"{word} needs a value")
            flags.setdefault(word, words[i + 1])
            i += 2
        else:
            flags.setdefault(word, None)
            i += 1
    return positional, flags


def _own_options(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """darkpy classifier's own `--options` (with the value of those that take one), and the other words."""
    import argparse
    from darkpy.commands import classifier  # only here: it imports training

    parser = argparse.ArgumentParser()
    classifier.add_arguments(parser)
    takes_value = {option for action in parser._actions for option in action.option_strings if action.nargs != 0}
    own: List[str] = []
    rest: List[str] = []
    words = iter(argv)
    for word in words:
        if not word.startswith("--"):
            rest.append(word)
            continue
        own.append(word)
        if word in takes_value:
            own.append(next(words, ""))
    return own, rest


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def translate(argv: Sequence[str]) -> Translation:
    """The darkpy command line for a Darknet one (`detector MODE ...` or `detect CFG WEIGHTS [IMAGE]`)."""
    if argv[0] in REFUSED_COMMANDS:
        raise DarknetUsageError(f"{argv[0]}: {REFUSED_COMMANDS[argv[0]]}")
    own: List[str] = []
    if argv[0] == "classifier":  # darkpy's own classifier command: its --options pass through
        own, argv = _own_options(argv)
    positional, flags = split_flags(argv[1:])
    warnings = [f"{flag}: not implemented in darkpy ({FLAGS[flag].not_implemented}); ignored"
                for flag in flags if FLAGS[flag].not_implemented]
    if argv[0] == "detect":
        return _coco_shortcut(positional, flags, warnings)
    if argv[0] in ("classifier", "classify"):
        translation = _classifier(argv[0], positional, flags, warnings)
        return Translation(translation.argv + own, translation.warnings)
    if not positional:
        raise DarknetUsageError("usage: darkpy detector [test/map/train/valid/demo/calc_anchors] DATA CFG "
                                "[WEIGHTS]")
    mode, files = positional[0], positional[1:]
    if mode not in _MODES:
        raise DarknetUsageError(f"detector {mode}: " + (_NOT_YET.get(mode) or "there is no such Darknet command"))
    handler, needed, usage = _MODES[mode]
    if len(files) < needed:
        raise DarknetUsageError(f"usage: darkpy detector {mode} {usage}")
    return handler(files, flags, warnings)


def _mapped_flags(flags: Dict[str, Optional[str]], table: Dict[str, Optional[str]], where: str,
                  warnings: List[str]) -> List[str]:
    """The darkpy options of a mode's flags; a Darknet flag the mode does not use is noted as ignored."""
    options: List[str] = []
    for flag, value in flags.items():
        if FLAGS[flag].not_implemented:
            continue
        if flag not in table:
            warnings.append(f"{flag}: not used by {where}, ignored (as Darknet does)")
            continue
        option = table[flag]
        if option is not None:
            options += [option] if value is None else [option, value]
    return options


def _weights(files: Sequence[str]) -> List[str]:
    """--weights for Darknet's optional WEIGHTS word (its trailing CR stripped, as run_detector does)."""
    return ["--weights", files[0].rstrip("\r")] if files and files[0] else []


def _test(files: Sequence[str], flags: Dict[str, Optional[str]], warnings: List[str]) -> Translation:
    """detector test DATA CFG [WEIGHTS] [IMAGE]: without IMAGE, the paths on standard input."""
    data, cfg, rest = files[0], files[1], list(files[2:])
    image = rest[1] if len(rest) > 1 else "-"
    argv = ["detect", "--data", data, "--cfg", cfg] + _weights(rest) + ["--batch", "1"]
    argv += _mapped_flags(flags, _DETECT_FLAGS, "detector test", warnings)
    return Translation(argv + ["--", image], warnings)


def _demo(files: Sequence[str], flags: Dict[str, Optional[str]], warnings: List[str]) -> Translation:
    """detector demo DATA CFG WEIGHTS [VIDEO]: without VIDEO, camera -c (default 0); -out_filename is the
    saved video's folder."""
    data, cfg, rest = files[0], files[1], list(files[2:])
    video = rest[1] if len(rest) > 1 else (flags.get("-c") or "0")
    argv = ["detect", "--data", data, "--cfg", cfg] + _weights(rest)
    argv += _mapped_flags(flags, _DEMO_FLAGS, "detector demo", warnings)
    if "-out_filename" in flags:
        warnings.append("-out_filename: darkpy writes the annotated video into runs/detect/")
    return Translation(argv + ["--", video], warnings)


def _map(files: Sequence[str], flags: Dict[str, Optional[str]], warnings: List[str]) -> Translation:
    argv = ["map", "--data", files[0], "--cfg", files[1]] + _weights(files[2:])
    return Translation(argv + _mapped_flags(flags, _MAP_FLAGS, "detector map", warnings), warnings)


def _valid(files: Sequence[str], flags: Dict[str, Optional[str]], warnings: List[str]) -> Translation:
    """detector valid DATA CFG [WEIGHTS] [-out NAME]."""
    argv = ["valid", "--data", files[0], "--cfg", files[1]] + _weights(files[2:])
    return Translation(argv + _mapped_flags(flags, _VALID_FLAGS, "detector valid", warnings), warnings)


def _calc_anchors(files: Sequence[str], flags: Dict[str, Optional[str]], warnings: List[str]) -> Translation:
    """detector calc_anchors DATA -num_of_clusters K -width W -height H (a cfg after DATA is not read)."""
    argv = ["calc-anchors", "--data", files[0]]
    return Translation(argv + _mapped_flags(flags, _CALC_ANCHORS_FLAGS, "detector calc_anchors", warnings), warnings)


def _train(files: Sequence[str], flags: Dict[str, Optional[str]], warnings: List[str]) -> Translation:
    """detector train DATA CFG [WEIGHTS]; -gpus 0,1 is --gpus (one training process per GPU)."""
    argv = ["train", "--data", files[0], "--cfg", files[1]] + _weights(files[2:])
    argv += _mapped_flags(flags, _TRAIN_FLAGS, "detector train", warnings)
    return Translation(argv + _gpus(flags), warnings)


def _gpus(flags: Dict[str, Optional[str]]) -> List[str]:
    """-gpus 0,1: --gpus (one GPU: that device; several: one training process per GPU)."""
    return [] if flags.get("-gpus") is None else ["--gpus", flags["-gpus"]]


def _coco_shortcut(positional: Sequence[str], flags: Dict[str, Optional[str]],
                   warnings: List[str]) -> Translation:
    """`detect CFG WEIGHTS [IMAGE]`: Darknet's detector test with cfg/coco.data and thresh .24; the names are
    darkpy detect's (coco.names for an 80-class network, else `class N`)."""
    if len(positional) < 2:
        raise DarknetUsageError("usage: darkpy detect CFG WEIGHTS [IMAGE]")
    cfg, weights, rest = positional[0], positional[1], list(positional[2:])
    flags = {"-thresh": _COCO_SHORTCUT_THRESH, **flags}
    argv = ["detect", "--cfg", cfg] + _weights([weights]) + ["--batch", "1"]
    argv += _mapped_flags(flags, {"-thresh": "--thresh", "-ext_output": "--ext-output", "-i": "--device"},
                          "detect", warnings)
    return Translation(argv + ["--", rest[0] if rest else "-"], warnings)


# mode -> (translation, the words it needs after the mode, its usage)
def _classifier(command: str, positional: Sequence[str], flags: Dict[str, Optional[str]],
                warnings: List[str]) -> Translation:
    """`classifier predict|valid|valid10|validmulti|validfull DATA CFG WEIGHTS [IMAGE] [-t N]` (darkpy's `classifier` command takes
    Darknet's words as they are), and `classify CFG WEIGHTS [IMAGE]` (Darknet's shortcut for
    cfg/imagenet1k.data, top 5); the classifier's other modes are refused."""
    if command == "classify":
        positional = ["predict", IMAGENET_DATA] + list(positional)
        flags = {"-t": "5", **flags}
    mode = positional[0] if positional else ""
    if mode == "validcrop":
        raise DarknetUsageError("classifier validcrop: not implemented (Darknet's validate_classifier_crop divides "
                                "by zero on a list of fewer than 1000 images; `classifier valid` gives the centre "
                                "crop's accuracy, `valid10` ten crops)")
    if mode not in ("predict", "valid", "valid10", "validmulti", "validfull", "train"):
        raise DarknetUsageError(f"classifier {mode}: not implemented (darkpy runs `classifier predict`, "
                                f"`valid`, `valid10`, `validmulti`, `validfull` and `train`)")
    if mode == "train":
        return _classifier_train(positional[1:], flags, warnings)
    if len(positional) < 3:
        raise DarknetUsageError(f"usage: darkpy classifier {mode} DATA CFG [WEIGHTS] [IMAGE] [-t TOP]")
    argv = ["classifier"] + [word.rstrip("\r") for word in positional[:5]]
    argv += _mapped_flags(flags, {"-t": "--top", "-i": None, "-dont_show": None}, f"classifier {mode}", warnings)
    return Translation(argv, warnings)


def _classifier_train(files: Sequence[str], flags: Dict[str, Optional[str]], warnings: List[str]) -> Translation:
    """classifier train DATA CFG [WEIGHTS] [-topk] [-clear] [-gpus 0,1], as detector train."""
    if len(files) < 2:
        raise DarknetUsageError("usage: darkpy classifier train DATA CFG [WEIGHTS] [-topk] [-clear]")
    argv = ["classifier", "train"] + [word.rstrip("\r") for word in files[:3]]
    argv += _mapped_flags(flags, {"-topk": "--topk", "-clear": "--clear", "-i": "--device", "-gpus": None,
                                  "-dont_show": None}, "classifier train", warnings)
    return Translation(argv + _gpus(flags), warnings)


_MODES: Dict[str, Tuple[Callable[[Sequence[str], Dict[str, Optional[str]], List[str]], Translation], int, str]] = {
    "test": (_test, 2, "DATA CFG [WEIGHTS] [IMAGE]"),
    "demo": (_demo, 2, "DATA CFG [WEIGHTS] [VIDEO]"),
    "map": (_map, 2, "DATA CFG [WEIGHTS]"),
    "train": (_train, 2, "DATA CFG [WEIGHTS]"),
    "valid": (_valid, 2, "DATA CFG [WEIGHTS]"),
    "calc_anchors": (_calc_anchors, 1, "DATA -num_of_clusters 9 -width 416 -height 416"),
}
_NOT_YET = {
    "recall": "not implemented (Darknet's old recall table; darkpy map prints precision, recall and F1)",
    "draw": "not implemented (Darknet's interactive drawing window)",
}
