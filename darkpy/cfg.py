"""Reading Darknet .cfg files (src/parser.c read_cfg, src/option_list.c) into Sections with typed, tracked options.

Darknet's rules: every space/tab/CR/LF in a line is deleted; lines starting with '#' or ';' are comments;
'[name]' opens a section; 'key=value' splits at the first '='; a duplicated key keeps its first value.
darkpy is stricter than Darknet where Darknet would silently misread: an unparsable value, an unknown
section or an index out of range raises CfgError naming the file, the line and the option.
"""
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

# Section names that Darknet accepts under another spelling (string_to_layer_type).
SECTION_ALIASES = {
    "conv": "convolutional",
    "network": "net",
    "conn": "connected",
    "max": "maxpool",
    "local_avg": "local_avgpool",
    "avg": "avgpool",
    "lrn": "normalization",
    "soft": "softmax",
    "silence": "empty",
}

# The [net] options Darknet's parse_net_options reads (src/parser.c): a fact of the cfg format, whoever interprets
# them (the model reads the size, training the rest). A [net] option outside this list is reported as unused.
NET_OPTIONS = (
    "batch", "subdivisions", "width", "height", "channels", "inputs", "max_batches", "learning_rate",
    "learning_rate_min", "momentum", "decay", "policy", "burn_in", "power", "step", "scale", "steps", "scales",
    "seq_scales", "gamma", "sgdr_cycle", "sgdr_mult", "time_steps", "track", "augment_speed",
    "sequential_subdivisions", "try_fix_nan", "weights_reject_freq", "equidistant_point",
    "badlabels_rejection_percentage", "num_sigmas_reject_badlabels", "ema_alpha", "use_cuda_graph", "loss_scale",
    "dynamic_minibatch", "optimized_memory", "workspace_size_limit_MB", "adam", "B1", "B2", "eps", "max_crop",
    "min_crop", "flip", "blur", "gaussian_noise", "mixup", "cutmix", "mosaic", "letter_box", "mosaic_bound",
    "contrastive", "contrastive_jit_flip", "contrastive_color", "unsupervised", "label_smooth_eps", "resize_step",
    "attention", "adversarial_lr", "max_chart_loss", "angle", "aspect", "saturation", "exposure", "hue",
    "show_receptive_field", "center", "min_lr", "rand_scale",
)


C_INT_MIN, C_INT_MAX = -2 ** 31, 2 ** 31 - 1
_C_INT = re.compile(r"[+-]?\d+")  # what atoi reads: an optional sign and decimal digits
# what atof (strtod) reads: a decimal or hexadecimal number with its exponent, inf/infinity, nan/nan(...)
_C_FLOAT = re.compile(r"[+-]?(?:0x(?:[0-9a-f]+\.?[0-9a-f]*|\.[0-9a-f]+)(?:p[+-]?\d+)?|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"
                      r"|inf(?:inity)?|nan(?:\([0-9a-z_]*\))?)", re.IGNORECASE)
_ZERO_FRACTION = re.compile(r"\.0*")


def _float_of(text: str) -> float:
    """The value of a _C_FLOAT match."""
    unsigned = text.lstrip("+-").lower()
    if unsigned.startswith("0x"):
        return float.fromhex(text)
    if unsigned.startswith("nan"):
        return math.nan
    return float(text)


class CfgError(ValueError):
    """A problem in a .cfg file, located by file, line and (when known) option."""

    def __init__(self, message: str, file: Optional[str] = None, line: Optional[int] = None,
                 option: Optional[str] = None):
        self.file, self.line, self.option, self.reason = file, line, option, message
        where = file if file is not None else "cfg"
        if line is not None:
            where += f":{line}"
        what = f" option '{option}'" if option else ""
        super().__init__(f"{where}:{what} {message}" if what else f"{where}: {message}")


class CfgWarning(UserWarning):
    """Something Darknet accepts but that may not be what the author meant (e.g. unused keys)."""


@dataclass
class Option:
    value: str
    line: int


@dataclass
class Section:
    """One [section] of a cfg: its type (aliases resolved), options with their line numbers, and which were read."""

    type: str
    file: str
    line: int
    options: Dict[str, Option] = field(default_factory=dict)
    used: set = field(default_factory=set)
    written_type: str = ""
    warned: set = field(default_factory=set)  # options whose left-over text was already reported

    # ---- locating errors -------------------------------------------------------------------------------------
    def error(self, message: str, key: Optional[str] = None) -> CfgError:
        line = self.options[key].line if key in self.options else self.line
        return CfgError(f"[{self.written_type or self.type}] {message}", self.file, line, key)

    # ---- raw access ------------------------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self.options

    def raw(self, key: str) -> Optional[str]:
        self.used.add(key)
        opt = self.options.get(key)
        return None if opt is None else _strip_inline_comment(opt.value)

    # ---- typed getters: Darknet's defaults are passed by the caller ---------------------------------------------
    def get_str(self, key: str, default: Optional[str] = None) -> Optional[str]:
        value = self.raw(key)
        return default if value is None or value == "" else value

    def get_int(self, key: str, default: Optional[int] = None) -> Optional[int]:
        value = self.raw(key)
        if value is None or value == "":
            return default
        return self._c_int(key, value, value)

    def get_float(self, key: str, default: Optional[float] = None) -> Optional[float]:
        value = self.raw(key)
        if value is None or value == "":
            return default
        return self._c_float(key, value, value)

    def get_int_list(self, key: str, default: Optional[List[int]] = None) -> Optional[List[int]]:
        return self._list(key, default, self._c_int)

    def get_float_list(self, key: str, default: Optional[List[float]] = None) -> Optional[List[float]]:
        return self._list(key, default, self._c_float)

    def _list(self, key, default, read):
        value = self.raw(key)
        if value is None or value == "":
            return default
        return [read(key, item, value) for item in value.split(",") if item != ""]  # a trailing comma is fine

    # ---- numbers as Darknet's atoi / atof read them --------------------------------------------------------------
    def _c_int(self, key: str, text: str, whole: str) -> int:
        """atoi: the leading integer of `text` ('1e2' -> 1, '.2' -> 0). Text with no number at all, and values
        outside C's int (Darknet would wrap them into nonsense), are errors."""
        match = _C_INT.match(text)
        if match is None:
            if _C_FLOAT.match(text) is None:
                raise self.error(f"'{whole}' is not an integer", key)
            self._note_left_over(key, whole, text, text, 0)  # '.5': a number, but atoi stops before it
            return 0
        number = int(match.group())
        if not C_INT_MIN <= number <= C_INT_MAX:
            raise self.error(f"'{whole}' is too large: Darknet reads integers as a C int ({C_INT_MIN} to "
                             f"{C_INT_MAX})", key)
        rest = text[match.end():]
        if rest and _ZERO_FRACTION.fullmatch(rest) is None:  # '1.0' means 1 to atoi and to the author alike
            self._note_left_over(key, whole, text, rest, number)
        return number

    def _c_float(self, key: str, text: str, whole: str) -> float:
        """atof: the leading number of `text` ('0.5x' -> 0.5); no number at all, and inf or nan, are errors."""
        match = _C_FLOAT.match(text)
        if match is None:
            raise self.error(f"'{whole}' is not a number", key)
        number = _float_of(match.group())
        if not math.isfinite(number):
            raise self.error(f"'{whole}' is not a finite number", key)
        if match.end() < len(text):
            self._note_left_over(key, whole, text, text[match.end():], number)
        return number

    def _note_left_over(self, key: str, whole: str, text: str, rest: str, number: Union[int, float]) -> None:
        """One CfgWarning per option whose text holds more than the number Darknet reads from it."""
        if key in self.warned:
            return
        self.warned.add(key)
        item = f" (in '{whole}')" if text != whole else ""
        warnings.warn(CfgWarning(f"{self.file}:{self.options[key].line}: [{self.written_type or self.type}] "
                                 f"option '{key}': Darknet reads '{text}'{item} as {number:g} (it stops at "
                                 f"'{rest}')"),
                      stacklevel=4)

    def unused(self) -> List[Tuple[str, Option]]:
        return [(k, o) for k, o in self.options.items() if k not in self.used]


def _strip_inline_comment(value: str) -> str:
    """Darknet reads numbers with atoi/atof and lists up to '#', so 'mask=0,1,2#small' means 0,1,2."""
    cut = value.find("#")
    return value if cut < 0 else value[:cut]


def parse_cfg(path: Union[str, Path]) -> List[Section]:
    """Parse a cfg file into sections; the first must be [net] (or [network])."""
    path = str(path)
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise CfgError(f"cannot read cfg file: {e.strerror}", path) from None
    return parse_cfg_text(text, path)


def parse_cfg_text(text: str, file: str = "<cfg>") -> List[Section]:
    sections: List[Section] = []
    text = text[1:] if text.startswith("\ufeff") else text  # a UTF-8 byte-order mark some editors write
    for number, original in enumerate(text.splitlines(), start=1):
        line = "".join(original.split())  # Darknet's strip(): every white-space character goes
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                raise CfgError(f"section header '{original.strip()}' has no closing ']'", file, number)
            written = line[1:-1]
            sections.append(Section(SECTION_ALIASES.get(written, written), file, number, written_type=written))
            continue
        if not sections:
            raise CfgError(f"option '{line}' appears before the first [section]", file, number)
        key, sep, value = line.partition("=")
        if not sep or not key or value == "":
            raise CfgError(f"cannot parse '{original.strip()}': expected key=value", file, number)
        # Darknet's option_find scans from the front, so the first occurrence of a key wins.
        sections[-1].options.setdefault(key, Option(value, number))
    if not sections:
        raise CfgError("the file has no sections", file, 1)
    if sections[0].type != "net":
        raise CfgError("the first section must be [net] or [network]", file, sections[0].line)
    return sections


def mark_net_options_read(net: "Section") -> None:
    """Mark every option parse_net_options knows as read, so that only unknown [net] keys are reported unused."""
    for key in NET_OPTIONS:
        net.raw(key)


def warn_unused(sections: Sequence[Section]) -> None:
    """One warning listing every key no layer read, like Darknet's 'Unused field' lines."""
    unused = [f"{s.file}:{o.line}: [{s.written_type}] {k} = {o.value}" for s in sections for k, o in s.unused()]
    if unused:
        warnings.warn("Unused fields (Darknet ignores them too):\n  " + "\n  ".join(unused), CfgWarning,
                      stacklevel=3)
