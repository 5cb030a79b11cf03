"""Reading Darknet .cfg files (src/parser.c read_cfg, src/option_list.c) into Sections with typed, tracked options.

Darknet's rules: every space/tab/CR/LF in a line is deleted; lines starting with '#' or ';' are comments;
'[name]' opens a section; 'key=value' splits at the first '='; a duplicated key keeps its first value.
darkpy is stricter than Darknet where Darknet would silently misread: an unparsable value, an unknown
section or an index out of range raises CfgError naming the file, the line and the option.
"""
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
        try:
            return int(value)
        except ValueError:
            try:  # Darknet reads ints with atoi; "1.0" is written in some cfgs and means 1
                as_float = float(value)
            except ValueError:
                raise self.error(f"'{value}' is not an integer", key) from None
            if as_float != int(as_float):
                raise self.error(f"'{value}' is not an integer", key)
            return int(as_float)

    def get_float(self, key: str, default: Optional[float] = None) -> Optional[float]:
        value = self.raw(key)
        if value is None or value == "":
            return default
        try:
            return float(value)
        except ValueError:
            raise self.error(f"'{value}' is not a number", key) from None

    def get_int_list(self, key: str, default: Optional[List[int]] = None) -> Optional[List[int]]:
        return self._list(key, default, int, "integers")

    def get_float_list(self, key: str, default: Optional[List[float]] = None) -> Optional[List[float]]:
        return self._list(key, default, float, "numbers")

    def _list(self, key, default, convert, what):
        value = self.raw(key)
        if value is None or value == "":
            return default
        items = [v for v in value.split(",") if v != ""]  # Darknet tolerates a trailing comma
        try:
            return [convert(v) for v in items]
        except ValueError:
            raise self.error(f"'{value}' is not a comma-separated list of {what}", key) from None

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
