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

from .allocation import PREPASS_ALLOCATIONS
from .masks import Pattern, parse_pattern

__all__ = ["CalibrationConfig", "PruningConfig", "check_number", "check_int", "check_choice"]

OWL_M = 5.0  # OWL paper (Yin et al., 2024) defaults, as in their LLaMA scripts
OWL_LAMBDA = 0.08
REFINE_ITERATIONS = 16


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a ValueError naming both."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
    return value


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
        "'unstructured', 'N:M' (at most N non-zeros in each group of M consecutive input columns) or "
        "'block:RxC' / 'RxC' (whole blocks of R output rows x C input columns pruned together).")})
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
    allocation: str = field(default="uniform", metadata={"help": (
        "How the sparsity is spread over decoder layers. magnitude / wanda / sparsegpt: 'uniform' (all "
        "equal), 'owl' (outlier-weighted, Yin et al. 2024: layers with more outliers of the Wanda score "
        "|W|*||X|| on the dense model are pruned less), 'global' (one threshold of that score across all "
        "layers); the size-weighted mean over layers stays `sparsity`; needs calibration data; not with N:M. "
        "structured: 'uniform' or 'adaptive' (global ranking of standardised unit scores).")})
    owl_m: float = field(default=OWL_M, metadata={"help": (
        "OWL's M: a weight is an outlier when its Wanda score exceeds M x its layer's mean score (paper: 5).")})
    owl_lambda: float = field(default=OWL_LAMBDA, metadata={"help": (
        "OWL's lambda: every layer's sparsity stays within `sparsity` +- lambda (paper: 0.08).")})
    refine: bool = field(default=False, metadata={"help": (
        "Training-free mask refinement after each Linear is pruned (DSnoT-style): swap pruned and kept "
        "weights within each row (within each N:M group) while the Linear's reconstruction error "
        "||WX - W'X||^2 on its calibration inputs goes down, then re-fit the kept weights (a few "
        "conjugate-gradient steps); never increases that error. Needs calibration data and X^T X; not "
        "with block patterns.")})
    refine_iterations: int = field(default=REFINE_ITERATIONS, metadata={"help": (
        "Refinement swap rounds per Linear; each round makes at most one swap per row.")})

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
        allocation: str = "uniform",
        owl_m: float = OWL_M,
        owl_lambda: float = OWL_LAMBDA,
        refine: bool = False,
        refine_iterations: int = REFINE_ITERATIONS,
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
        self._set_beyond(allocation, owl_m, owl_lambda, refine, refine_iterations)

    def _set_beyond(self, allocation: Any, owl_m: Any, owl_lambda: Any, refine: Any, refine_iterations: Any) -> None:
        """Validate the layer-allocation and refinement fields against the method and pattern."""
        allowed = self.method_class.allocations
        if allocation not in allowed:
            raise ValueError(f"allocation={allocation!r} is not available with method {self.method!r}; "
                             f"choose one of: {', '.join(allowed)}")
        self.allocation = allocation
        self.owl_m = check_number("owl_m", owl_m, 0.0, 1e6, low_inclusive=False, high_inclusive=True)
        self.owl_lambda = check_number("owl_lambda", owl_lambda, 0.0, 0.5, high_inclusive=True)
        if not isinstance(refine, bool):
            raise ValueError(f"refine must be true or false, got {refine!r} ({type(refine).__name__})")
        self.refine = refine
        self.refine_iterations = check_int("refine_iterations", refine_iterations, 1)
        if allocation != "owl" and (self.owl_m != OWL_M or self.owl_lambda != OWL_LAMBDA):
            raise ValueError(f"owl_m / owl_lambda only apply with allocation='owl', not allocation={allocation!r}")
        if not refine and self.refine_iterations != REFINE_ITERATIONS:
            raise ValueError("refine_iterations only applies with refine=True")
        if refine and not self.method_class.refinable:
            raise ValueError(f"refine=True swaps single weights inside a Linear; method {self.method!r} removes "
                             "whole units, so it does not apply")
        if allocation in PREPASS_ALLOCATIONS:
            if self.pattern_spec.is_nm:
                raise ValueError(
                    f"allocation={allocation!r} gives layers different sparsities, which pattern={self.pattern!r} "
                    "(fixed at 1 - N/M) cannot express; use pattern='unstructured' or 'block:RxC', or "
                    "allocation='uniform'")
            if self.scope == "global":
                raise ValueError(f"scope='global' already sets each layer's sparsity from one threshold; "
                                 f"use allocation='uniform' with it, or scope='layer'/'row' with "
                                 f"allocation={allocation!r}")
        if refine and self.pattern_spec.is_block:
            raise ValueError(f"refine=True swaps single weights, which would break pattern={self.pattern!r}; "
                             "use it with 'unstructured' or N:M patterns")

    # --- derived views -------------------------------------------------------------------------
    @property
    def method_class(self):
        from .methods import get_method

        return get_method(self.method)

    @property
    def needs_calibration(self) -> bool:
        """The method's own needs, or a non-uniform allocation / refinement (both read calibration inputs)."""
        return self.method_class.needs_calibration(self) or self.allocation in PREPASS_ALLOCATIONS or self.refine

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
            "allocation": self.allocation,
            "owl_m": self.owl_m,
            "owl_lambda": self.owl_lambda,
            "refine": self.refine,
            "refine_iterations": self.refine_iterations,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a pruning config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        data.pop("pruning_hf_version", None)
        if "method" not in data:
            raise ValueError("pruning config is missing the required key 'method'")
        allowed = ["method", "sparsity", "pattern", "scope", "targets", "ignore", "calibration", "options",
                   "allocation", "owl_m", "owl_lambda", "refine", "refine_iterations"]
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
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:  # includes tags such as !!python/object, which the safe loader refuses
            raise ValueError(f"pruning config is not valid (safe) YAML: {' '.join(str(err).split())}") from None
        return cls.from_dict(data)

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``wanda 50% unstructured (row) +owl +refine`` (the method
        words the first part)."""
        extra = f" +{self.allocation}" if self.allocation in PREPASS_ALLOCATIONS else ""
        extra += " +refine" if self.refine else ""
        return self.method_class.describe(self) + extra
