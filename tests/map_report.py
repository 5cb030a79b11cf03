"""Reading a printed map report (C Darknet's `detector map` stdout or darkpy's) back into numbers, for the tests
that compare the two line by line."""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class ParsedMapReport:
    """The numbers of a printed map report (darknet's stdout or `format_map_report`'s lines)."""

    ap_percent: Dict[int, float] = field(default_factory=dict)  # class id -> ap as printed (%)
    tp: Dict[int, int] = field(default_factory=dict)  # class id -> TP at thresh
    fp: Dict[int, int] = field(default_factory=dict)
    names: Dict[int, str] = field(default_factory=dict)
    precision: Optional[float] = None
    recall: Optional[float] = None
    f1: Optional[float] = None
    total_tp: Optional[int] = None
    total_fp: Optional[int] = None
    total_fn: Optional[int] = None
    average_iou_percent: Optional[float] = None
    iou_thresh: Optional[float] = None
    mean_ap: Optional[float] = None  # 0..1, as printed with %f
    report_lines: List[str] = field(default_factory=list)  # the report part, from detections_count to mAP


_CLASS_LINE = re.compile(r"^class_id = (\d+), name = (.*), ap = ([\d.]+)%   \t \(TP = (\d+), FP = (\d+)\) $")
_PRF_LINE = re.compile(r"^ for conf_thresh = [\d.]+, precision = (\S+), recall = (\S+), F1-score = (\S+) $")
_COUNTS_LINE = re.compile(r"^ for conf_thresh = [\d.]+, TP = (\d+), FP = (\d+), FN = (\d+), average IoU = (\S+) % $")
_MAP_LINE = re.compile(r"^ mean average precision \(mAP@([\d.]+)\) = ([\d.]+), or [\d.]+ % $")


def _number(text: str) -> float:
    return float("nan") if "nan" in text else float(text)


def parse_map_report(text: str) -> ParsedMapReport:
    """Parse the report printed by `darknet detector map` (or by darkpy). Darknet ends its progress lines
    (` rank = ... \\r`) with a carriage return, so each line is taken after its last CR."""
    parsed = ParsedMapReport()
    lines = [line.split("\r")[-1] for line in text.split("\n")]
    start = next((i for i, line in enumerate(lines) if line.startswith(" detections_count")), 0)
    for line in lines[start:]:
        if line.startswith(" rank = "):
            continue
        parsed.report_lines.append(line)
        class_match, prf_match = _CLASS_LINE.match(line), _PRF_LINE.match(line)
        counts_match, map_match = _COUNTS_LINE.match(line), _MAP_LINE.match(line)
        if class_match:
            class_id, name, ap, tp, fp = class_match.groups()
            parsed.names[int(class_id)] = name
            parsed.ap_percent[int(class_id)] = float(ap)
            parsed.tp[int(class_id)], parsed.fp[int(class_id)] = int(tp), int(fp)
        elif prf_match:
            parsed.precision, parsed.recall, parsed.f1 = (_number(v) for v in prf_match.groups())
        elif counts_match:
            tp, fp, fn, iou = counts_match.groups()
            parsed.total_tp, parsed.total_fp, parsed.total_fn = int(tp), int(fp), int(fn)
            parsed.average_iou_percent = _number(iou)
        elif map_match:
            parsed.iou_thresh, parsed.mean_ap = float(map_match.group(1)), float(map_match.group(2))
            break
    return parsed
