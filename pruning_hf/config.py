"""PruningConfig: what to prune, how much, how, and with which calibration data.

A config is validated when it is built, so a typo costs a second, not an hour of pruning. It is
serialisable (dict / JSON / YAML) and stored in the saved checkpoint's ``config.json`` under
``pruning_config`` so every checkpoint says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .masks import Pattern, parse_pattern

__all__ = ["CalibrationConfig", "PruningConfig", "check_number", "check_int"]


def check_number(name: str, value: Any, low: float, high: float, *, high_inclusive: bool = False,
                 low_inclusive: bool = True) -> float:
    """Return ``value`` as float if it is a real number in the interval, else raise a ValueError naming it."""
    interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r} ({type(value).__name__})")
    above = value >= low if low_inclusive else value > low
    below = value <= high if high_inclusive else value < high
    if not (above and below):
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int >= minimum, else raise a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _check_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _name_list(name: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{name} must be a list of module-name patterns, got {value!r}")
    return [_check_str(f"{name}[{i}]", item) for i, item in enumerate(items)]


def _reject_unknown(where: str, given: dict, allowed: list[str]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {where} key(s) {unknown}; allowed: {sorted(allowed)}")


@dataclass
class CalibrationConfig:
    """Where calibration text comes from and how it is cut into token windows."""

    source: str = field(default="embedded", metadata={"help": (
        "'embedded' (Python docs prose shipped with CPython), a local .txt/.jsonl file, a folder of "
        "them, or a Hub dataset 'ID[:CONFIG][@SPLIT]' loaded with `datasets`.")})
    num_samples: int = field(default=128, metadata={"help": "Number of random token windows."})
    seq_len: int = field(default=2048, metadata={"help": "Tokens per window (capped at the model's context)."})
    seed: int = field(default=0, metadata={"help": "Seed for window sampling."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text in datasets / JSONL."})
    batch_size: int = field(default=8, metadata={"help": "Windows per forward pass through a decoder layer."})

    def __post_init__(self) -> None:
        _check_str("calibration.source", self.source)
        check_int("calibration.num_samples", self.num_samples, 1)
        check_int("calibration.seq_len", self.seq_len, 2)
        check_int("calibration.seed", self.seed, 0)
        _check_str("calibration.text_column", self.text_column)
        check_int("calibration.batch_size", self.batch_size, 1)

    @classmethod
    def coerce(cls, value: "CalibrationConfig | dict | None") -> "CalibrationConfig":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"calibration must be a dict or CalibrationConfig, got {value!r}")
        _reject_unknown("calibration", value, [f.name for f in dataclasses.fields(cls)])
        return cls(**value)


@dataclass(init=False)
class PruningConfig:
    """How to prune a model.

    Method-specific options may be given as keywords (``PruningConfig(method="sparsegpt",
    sparsity=0.5, dampening=0.02)``) or as ``options={...}``; they are validated against the
    method's own ``Options`` dataclass (see ``pruning_hf/methods/``).
    """

    method: str = field(metadata={"help": "Pruning method; see `pruning_hf.available_methods()`."})
    sparsity: float | None = field(default=None, metadata={"help": (
        "Fraction of targeted weights to remove, in [0, 1). Implied by N:M patterns.")})
    pattern: str = field(default="unstructured", metadata={"help": (
        "'unstructured' or 'N:M' (at most N non-zeros in each group of M consecutive input columns).")})
    scope: str | None = field(default=None, metadata={"help": (
        "Where weights compete: 'layer' (per Linear), 'row' (per output row), 'global' (all targets). "
        "Default depends on the method.")})
    targets: list[str] | None = field(default=None, metadata={"help": (
        "Module-name patterns to prune, fnmatch-ed against the full name or any dotted suffix of it "
        "('q_proj', 'mlp.*', 'layers.1[0-9].*'). Default: every Linear inside the decoder layers; "
        "'lm_head' only when listed.")})
    ignore: list[str] = field(default_factory=list, metadata={"help": "Patterns excluded from targets."})
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig, metadata={"help": (
        "Calibration data; unused by methods that need none (magnitude).")})
    options: Any = field(default=None, metadata={"help": "Method-specific options (validated dataclass)."})

    def __init__(
        self,
        method: str,
        sparsity: float | None = None,
        pattern: str = "unstructured",
        scope: str | None = None,
        targets: list[str] | str | None = None,
        ignore: list[str] | str | None = None,
        calibration: CalibrationConfig | dict | None = None,
        options: dict | None = None,
        **method_options: Any,
    ) -> None:
        from .methods import get_method

        method_cls = get_method(method)
        self.method = method_cls.name
        self.pattern_spec: Pattern = parse_pattern(pattern)
        self.pattern = str(self.pattern_spec)
        self.sparsity = None if sparsity is None else check_number("sparsity", sparsity, 0.0, 1.0)
        self.scope = scope
        self.targets = _name_list("targets", targets)
        self.ignore = _name_list("ignore", ignore) or []
        self.calibration = CalibrationConfig.coerce(calibration)
        if dataclasses.is_dataclass(options):
            options = dataclasses.asdict(options)
        if not isinstance(options, (dict, type(None))):
            raise ValueError(f"options must be a dict of method options, got {options!r}")
        merged = dict(options or {})
        clash = sorted(set(merged) & set(method_options))
        if clash:
            raise ValueError(f"option(s) {clash} given both as keywords and in options=")
        merged.update(method_options)
        self.options = method_cls.make_options(merged)
        method_cls.validate_config(self)

    # --- derived views -------------------------------------------------------------------------
    @property
    def method_class(self):
        from .methods import get_method

        return get_method(self.method)

    @property
    def needs_calibration(self) -> bool:
        return self.method_class.needs_calibration(self)

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "pattern": self.pattern,
            "scope": self.scope,
            "targets": list(self.targets) if self.targets is not None else None,
            "ignore": list(self.ignore),
            "calibration": dataclasses.asdict(self.calibration),
            "options": dataclasses.asdict(self.options),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a pruning config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        data.pop("pruning_hf_version", None)
        if "method" not in data:
            raise ValueError("pruning config is missing the required key 'method'")
        allowed = ["method", "sparsity", "pattern", "scope", "targets", "ignore", "calibration", "options"]
        from .methods import get_method

        method_cls = get_method(data["method"])
        option_names = [f.name for f in dataclasses.fields(method_cls.Options)]
        _reject_unknown("pruning config", data, allowed + option_names)
        return cls(**data)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "PruningConfig":
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "PruningConfig":
        """Load from a YAML file path or a YAML string (safe loader only)."""
        text = str(path_or_text)
        candidate = Path(text)
        if "\n" not in text and candidate.suffix in {".yaml", ".yml"}:
            if not candidate.is_file():
                raise FileNotFoundError(f"pruning config file {text!r} does not exist")
            text = candidate.read_text(encoding="utf-8")
        return cls.from_dict(yaml.safe_load(text))

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``wanda 50% unstructured (row)`` (the method words it)."""
        return self.method_class.describe(self)
