"""Darknet dataset files: `.data` option files, `.names`, image lists and YOLO label files.

Reproduces AlexeyAB darknet's readers (src/option_list.c `read_data_cfg`, src/data.c `get_paths`,
src/utils.c `replace_image_to_label`, src/data.c `read_boxes`), with friendlier handling of bad input:
a bad label line is reported with its file and line and skipped instead of silently stopping the read.
"""
from __future__ import annotations

import math
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "DataError",
    "DataConfig",
    "read_data_config",
    "resolve_path",
    "read_names",
    "check_names_count",
    "read_image_list",
    "darknet_label_path",
    "label_path",
    "DataProblems",
    "read_labels",
    "report_missing_image",
    "labels_in_path",
    "true_class",
]

# Kinds of data problems, as counted in DataProblems.summary().
MISSING_LABEL_FILE = "missing label file"
MISSING_IMAGE = "missing image"
BAD_CLASS_ID = "class id out of range"
BAD_COORDINATES = "coordinates outside [0,1]"
BAD_COLUMN_COUNT = "wrong column count"
UNPARSABLE = "unparsable number"
NO_LABEL_IN_PATH = "image path with no label name"
SEVERAL_LABELS_IN_PATH = "image path with several label names"


class DataError(ValueError):
    """Bad dataset input (missing file, malformed .data line...); the message names the file (and line)."""


# --------------------------------------------------------------------------------------------- .data files

@dataclass
class DataConfig:
    """A darknet `.data` file. Absent keys are None (train/valid/names/classes) or darknet's default."""

    path: str
    classes: Optional[int]
    train: Optional[str]
    valid: Optional[str]
    names: Optional[str]
    backup: str = "/backup/"
    eval: str = "voc"
    options: Dict[str, str] = field(default_factory=dict)  # every key as written (first occurrence wins)
    lines: Dict[str, int] = field(default_factory=dict)  # key -> line number, for error messages

    def where(self, key: str) -> str:
        """`file:line` of a key, for messages."""
        line = self.lines.get(key)
        return f"{self.path}:{line}" if line else self.path

    def get_positive_int(self, key: str, default: int) -> int:
        """An integer option (savelast=, saveweights=) as darknet's atoi reads it; anything but a positive
        number is a DataError naming the file and line."""
        if key not in self.options:
            return default
        value = atoi(self.options[key])
        if value is None or value <= 0:
            raise DataError(f"{self.where(key)}: {key} must be a positive integer, got {self.options[key]!r}")
        return value

    def resolve(self, key: str) -> Optional[str]:
        """The path a key names, resolved as darknet opens it (see resolve_path); None if the key is absent."""
        value = self.options.get(key)
        return None if value is None else resolve_path(value, self.path)

    def existing_file(self, key: str, default: Optional[str]) -> Optional[str]:
        """The file a key names (Darknet's default when the key is absent), resolved as darknet opens it; a
        DataError naming the line when it does not exist; None when absent without a default."""
        value = self.options.get(key, default)
        if value is None:
            return None
        path = resolve_path(value, self.path)
        if not os.path.exists(path):
            where = self.where(key) if key in self.options else f"{self.path} (no `{key}` line; darknet's default)"
            raise DataError(f"{where}: {key} file {value!r} does not exist")
        return path


def _strip_all_whitespace(line: str) -> str:
    # darknet's utils.c `strip` deletes every space, tab, CR and LF anywhere in the line, not only at the ends.
    return "".join(ch for ch in line if ch not in " \t\r\n")


def atoi(text: str) -> Optional[int]:
    """C atoi: optional sign and leading digits; None when there are no digits at all."""
    digits = ""
    for i, ch in enumerate(text):
        if ch.isdigit() or (i == 0 and ch in "+-"):
            digits += ch
        else:
            break
    try:
        return int(digits)
    except ValueError:
        return None


def read_option_lines(path: str) -> Tuple["OrderedDict[str, str]", Dict[str, int]]:
    """Key/value lines of a darknet option file (src/option_list.c `read_data_cfg` / `read_option`).

    Whitespace is removed everywhere in a line; empty lines and lines starting with `#` or `;` are skipped;
    a line is split at its first `=`; a line ending with `=` is reported and ignored (darknet: "Config file
    error line");
    a line without `=` is kept as a key with an empty value; duplicate keys: the first one wins.
    """
    raw_lines = _read_text(path, ".data file", newline=None).splitlines()
    options: "OrderedDict[str, str]" = OrderedDict()
    line_numbers: Dict[str, int] = {}
    for number, raw in enumerate(raw_lines, start=1):
        line = _strip_all_whitespace(raw)
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if sep and not value:
            # darknet prints "Config file error line N, could parse: ..." and goes on without the line.
            print(f"warning: {path}:{number}: option without a value, line ignored: {raw.strip()!r}",
                  file=sys.stderr)
            continue
        if key not in options:
            options[key] = value
            line_numbers[key] = number
    return options, line_numbers


def read_data_config(path: str) -> DataConfig:
    """Read a darknet `.data` file (src/option_list.c `read_data_cfg`)."""
    options, lines = read_option_lines(path)
    classes: Optional[int] = None
    if "classes" in options:
        classes = atoi(options["classes"])
        if classes is None or classes <= 0:
            raise DataError(f"{path}:{lines['classes']}: classes must be a positive integer, got "
                            f"{options['classes']!r}")
    # `labels` is darknet's alias of `names` in get_metadata.
    names = options.get("names", options.get("labels"))
    return DataConfig(
        path=str(path),
        classes=classes,
        train=options.get("train"),
        valid=options.get("valid"),
        names=names,
        backup=options.get("backup", "/backup/"),
        eval=options.get("eval", "voc"),
        options=dict(options),
        lines=lines,
    )


def resolve_path(p: str, relative_to_file: str) -> str:
    """Resolve a path written in a dataset file.

    Darknet opens paths relative to the current directory. When that does not exist, fall back to the folder
    of the file that named it (so `darkpy map --data some/dir/x.data` works from anywhere). When neither
    exists, return the path unchanged so that the error names what darknet would have opened.
    """
    if os.path.isabs(p) or os.path.exists(p):
        return p
    candidate = os.path.join(os.path.dirname(os.path.abspath(relative_to_file)), p)
    return candidate if os.path.exists(candidate) else p


# --------------------------------------------------------------------------------------------- names, lists

def _read_text(path: str, what: str, newline: Optional[str]) -> str:
    """The text of a dataset file; a device or a pipe (/dev/zero would be read forever) is refused."""
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise DataError(f"{path}: cannot open the {what} (not a regular file)")
    try:
        with open(path, "r", encoding="utf-8", errors="replace", newline=newline) as handle:
            return handle.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot open the {what} ({exc.strerror})") from None


def _read_text_lines(path: str, what: str) -> List[str]:
    text = _read_text(path, what, newline="")
    # darknet's fgetl strips the LF and a CR before it; split on LF only so that nothing else is trimmed.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_names(path: str) -> List[str]:
    """Class names, one per line (src/data.c `get_labels_custom`).

    A blank line inside the file is a (blank) name, as in darknet, so that class ids keep their positions;
    blank lines at the end of the file are dropped (darknet would count them as extra classes).
    """
    names = _read_text_lines(path, "names file")
    while names and not names[-1].strip():
        names.pop()
    return names


def check_names_count(names: List[str], names_path: str, classes: int, cfg_path: str) -> None:
    """Darknet's check that the names file has one name per class of the cfg's last layer (fatal in map)."""
    if len(names) != classes:
        raise DataError(f"Error: in the file {names_path} number of names {len(names)} that isn't equal to "
                        f"classes={classes} in the file {cfg_path}")


def read_image_list(path: str) -> List[str]:
    """Image paths of a list file, one per line (src/data.c `get_paths`).

    CR/LF are stripped and nothing else (darknet does no other trimming); blank lines are skipped.
    """
    return [line for line in _read_text_lines(path, "image list file") if line.strip()]


# --------------------------------------------------------------------------------------------- label paths

# AlexeyAB src/utils.c `replace_image_to_label`: plain substring replacements, first occurrence only, in this
# order. The generic /images/ -> /labels/ rule is commented out there.
_DARKNET_FOLDER_RULES = [
    ("/images/train2017/", "/labels/train2017/"),
    ("/images/val2017/", "/labels/val2017/"),
    ("/JPEGImages/", "/labels/"),
    ("\\images\\train2017\\", "\\labels\\train2017\\"),
    ("\\images\\val2017\\", "\\labels\\val2017\\"),
    ("\\images\\train2014\\", "\\labels\\train2014\\"),
    ("\\images\\val2014\\", "\\labels\\val2014\\"),
    ("/images/train2014/", "/labels/train2014/"),
    ("/images/val2014/", "/labels/val2014/"),
    ("\\JPEGImages\\", "\\labels\\"),
]
_DARKNET_IMAGE_EXTENSIONS = [".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG",
                             ".bmp", ".BMP", ".ppm", ".PPM", ".tiff", ".TIFF"]


def darknet_label_path(image_path: str) -> Optional[str]:
    """The label path darknet derives from an image path, or None where darknet fails to infer one.

    Folder rewrites (COCO's images/{train,val}{2014,2017}, VOC's JPEGImages -> labels), then spaces/tabs
    trimmed at both ends, then a known image extension at the end replaced by `.txt`.
    """
    path = image_path
    for old, new in _DARKNET_FOLDER_RULES:
        path = path.replace(old, new, 1)
    path = path.strip(" \t")
    for extension in _DARKNET_IMAGE_EXTENSIONS:
        if path.endswith(extension):
            path = path[: -len(extension)] + ".txt"
    # darknet: "Failed to infer label file name (check image extension is supported)"
    return path if len(path) > 4 and path.endswith(".txt") else None


def _images_to_labels_path(image_path: str) -> str:
    """The common `.../images/...` -> `.../labels/...` layout (last `images` folder), extension -> .txt."""
    for sep in {os.sep, "/"}:
        marker = f"{sep}images{sep}"
        if marker in image_path:
            head, tail = image_path.rsplit(marker, 1)
            image_path = f"{head}{sep}labels{sep}{tail}"
            break
    return os.path.splitext(image_path)[0] + ".txt"


def label_path(image_path: str) -> str:
    """Where the labels of an image are: darknet's path if that file exists, else the images->labels layout.

    When neither exists, darknet's path is returned (or the images->labels one where darknet cannot infer a
    path), so that a "missing label file" message names the file darknet would have read.
    """
    darknet_path = darknet_label_path(image_path)
    if darknet_path is not None and os.path.exists(darknet_path):
        return darknet_path
    fallback = _images_to_labels_path(image_path)
    if os.path.exists(fallback) or darknet_path is None:
        return fallback
    return darknet_path


# --------------------------------------------------------------------------------------------- problems

def labels_in_path(path: str, labels: Sequence[str]) -> List[int]:
    """The indices of every label name that occurs in the path string (Darknet's classifier reads an image's
    class from its path: data.c fill_truth, `strstr(path, labels[i])`)."""
    return [i for i, label in enumerate(labels) if label in path]


def true_class(path: str, labels: Sequence[str]) -> int:
    """validate_classifier_single: the first label (in the labels file's order) found in the path, -1 if none."""
    found = labels_in_path(path, labels)
    return found[0] if found else -1


class DataProblems:
    """Collects dataset warnings (`file:line: message`), each distinct message once, counted by kind.

    `echo` (e.g. `tqdm.write`) is called with each new message as it happens; `summary()` gives the counts
    (and, when nothing was echoed, the first messages of each kind) for the end of a run.
    """

    def __init__(self, echo: Optional[Callable[[str], None]] = None, listed_per_kind: int = 10):
        self.echo = echo
        self.listed_per_kind = listed_per_kind
        self.messages: Dict[str, List[str]] = OrderedDict()
        self._seen: set = set()

    def warn(self, kind: str, message: str) -> None:
        """Record one problem; a message already recorded (same file read again) is not counted twice."""
        if (kind, message) in self._seen:
            return
        self._seen.add((kind, message))
        self.messages.setdefault(kind, []).append(message)
        if self.echo is not None:
            self.echo(f"warning: {message}")

    def counts(self) -> Dict[str, int]:
        return {kind: len(messages) for kind, messages in self.messages.items()}

    def count(self, kind: str) -> int:
        return len(self.messages.get(kind, []))

    def __len__(self) -> int:
        return sum(len(messages) for messages in self.messages.values())

    def __bool__(self) -> bool:
        return len(self) > 0

    def summary(self) -> List[str]:
        """Lines for the end of a run: one count per kind, and the messages themselves if not echoed."""
        if not self:
            return ["data problems: none"]
        lines = [f"data problems: {len(self)}"]
        for kind, messages in self.messages.items():
            lines.append(f"  {len(messages):6d}  {kind}")
            if self.echo is None:
                for message in messages[: self.listed_per_kind]:
                    lines.append(f"            {message}")
                if len(messages) > self.listed_per_kind:
                    lines.append(f"            ... and {len(messages) - self.listed_per_kind} more")
        return lines


# --------------------------------------------------------------------------------------------- labels

def _parse_label_line(fields: List[str]) -> Tuple[Optional[Tuple[int, float, float, float, float]], str, str]:
    """(box, kind, reason): box is None when the line is bad; kind/reason describe why."""
    if len(fields) != 5:
        return None, BAD_COLUMN_COUNT, f"expected 5 columns (class x_center y_center width height), got {len(fields)}"
    try:
        class_id = int(fields[0])
    except ValueError:
        return None, UNPARSABLE, f"class id {fields[0]!r} is not an integer"
    try:
        x, y, w, h = (float(value) for value in fields[1:])
    except ValueError:
        return None, UNPARSABLE, f"coordinates {' '.join(fields[1:])!r} are not all numbers"
    return (class_id, x, y, w, h), "", ""


def read_labels(path: str, classes: Optional[int], problems: Optional[DataProblems] = None) -> np.ndarray:
    """Boxes of a YOLO label file as a float32 (N, 5) array [class, x_center, y_center, width, height].

    Darknet's `read_boxes` reads `%d %f %f %f %f` until a line fails to parse. Here every line is checked:
    a line with a wrong column count, an unparsable or non-finite number, or a class id outside [0, classes) is
    reported (file:line) to `problems` and that box skipped; empty lines are ignored. A coordinate outside
    [0, 1] is reported too but the box is kept, as Darknet keeps it: training clips it to the image (or drops
    it when it lies wholly outside; darkpy.training.augment.place_truths), map uses it as it is. A missing file
    gives no boxes and one "missing label file" problem (darknet: "Can't open label file").
    """
    boxes: List[Tuple[int, float, float, float, float]] = []
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        if problems is not None:
            problems.warn(MISSING_LABEL_FILE, f"{path}: missing label file, the image has no truths")
        return np.zeros((0, 5), dtype=np.float32)
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        box, kind, reason = _parse_label_line(fields)
        keep = box is not None
        if box is not None:
            kind, reason, keep = _check_box(box, classes)
        if kind and problems is not None:
            outcome = "kept, as Darknet keeps it" if keep else "box skipped"
            problems.warn(kind, f"{path}:{number}: {reason}; {outcome}")
        if keep:
            boxes.append(box)  # type: ignore[arg-type]
    if not boxes:
        return np.zeros((0, 5), dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 5)


def _check_box(box: Tuple[int, float, float, float, float], classes: Optional[int]) -> Tuple[str, str, bool]:
    """The problem kind and reason of a parsed box ("" when none), and whether the box is kept."""
    class_id, x, y, w, h = box
    if class_id < 0 or (classes is not None and class_id >= classes):
        upper = f"0..{classes - 1}" if classes is not None else "0 or more"
        return BAD_CLASS_ID, f"class id {class_id} is outside {upper}", False
    coordinates = dict(zip(("x_center", "y_center", "width", "height"), (x, y, w, h)))
    described = f"(x={x:g} y={y:g} w={w:g} h={h:g}; label coordinates are relative to the image)"
    infinite = [name for name, value in coordinates.items() if not math.isfinite(value)]
    if infinite:
        return BAD_COORDINATES, f"{', '.join(infinite)} not a finite number {described}", False
    outside = [name for name, value in coordinates.items() if not 0.0 <= value <= 1.0]
    if outside:
        return BAD_COORDINATES, f"{', '.join(outside)} outside [0,1] {described}", True
    return "", "", True


def report_missing_image(problems: Optional[DataProblems], image_path: str, reason: str = "cannot be read") -> None:
    """Record an image of a list that could not be loaded (it is skipped): `path: reason, skipped`."""
    message = f"{image_path}: {reason}, skipped"
    if problems is not None:
        problems.warn(MISSING_IMAGE, message)
    else:  # pragma: no cover - callers normally pass a collector
        print(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------- softmax trees

@dataclass
class SoftmaxTree:
    """A class hierarchy (src/tree.c read_tree): one line per class, `name parent` (parent -1 at the top).

    Consecutive lines with the same parent form a group, the set one softmax runs over (softmax_tree)."""

    names: List[str]
    parent: np.ndarray  # (classes,) int64, -1 for a root
    group_offset: np.ndarray  # (groups,) first class of each group
    group_size: np.ndarray  # (groups,)

    @property
    def group_of(self) -> np.ndarray:
        """(classes,) the group of every class."""
        return np.repeat(np.arange(len(self.group_size)), self.group_size)


def read_tree(path: str) -> SoftmaxTree:
    """read_tree: `name parent` lines (sscanf "%s %d": a missing parent is -1); groups are the runs of equal
    parents, in file order."""
    names, parents = [], []
    for line in _read_text_lines(path, "tree file"):
        fields = line.split()
        if not fields:
            raise DataError(f"{path}:{len(names) + 1}: an empty line; a tree file has `name parent` on each line")
        names.append(fields[0])
        parents.append(atoi(fields[1]) if len(fields) > 1 and atoi(fields[1]) is not None else -1)
    if not names:
        raise DataError(f"{path}: the tree file lists no classes")
    parent = np.asarray(parents, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, parent[1:] != parent[:-1]])
    sizes = np.diff(np.r_[starts, len(parent)])
    bad = np.flatnonzero(parent >= len(parent))
    if bad.size:
        raise DataError(f"{path}:{bad[0] + 1}: parent {parent[bad[0]]} is not a line of the file ({len(parent)} classes)")
    return SoftmaxTree(names, parent, starts, sizes)


def read_class_map(path: str, classes: int) -> np.ndarray:
    """read_map (src/utils.c): one class number a line — a [region]'s `map=`, which turns a label's class into
    the network's (coco9k.map: COCO's 80 classes to YOLO9000's 9418). Each must be a class of the network."""
    mapped = []
    for number, line in enumerate(_read_text_lines(path, "class map"), 1):
        value = atoi(line.strip())
        if value is None or not 0 <= value < classes:
            raise DataError(f"{path}:{number}: {line.strip()!r} is not a class number from 0 to {classes - 1}")
        mapped.append(value)
    if not mapped:
        raise DataError(f"{path}: the class map is empty")
    return np.asarray(mapped, dtype=np.int64)
