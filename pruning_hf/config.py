"""PruningConfig: what to prune, how much, how, and with which calibration data.

The dataclass fields are the single source of truth: their ``metadata["help"]`` is the help text,
and the CLI flags (:meth:`PruningConfig.cli_fields`), serialisation (``to_dict`` / ``from_dict`` /
JSON / YAML) and the model card's reproduce command (:meth:`PruningConfig.to_cli_args`) are all
derived from them. A config is validated when it is built, so a typo costs a second, not an hour of
pruning, and it is stored in the saved checkpoint's ``config.json`` under ``pruning_config``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .methods import METHODS, get_method, option_owners
from .sparsity.allocation import PREPASS_ALLOCATIONS
from .sparsity.masks import Pattern, parse_pattern
from .utils.checks import (YamlAnchorError, check_choice, check_int, check_number, check_str, name_list,
                           reject_unknown, safe_yaml_load, shown)
from .utils.cli_fields import CliField, dataclass_cli_fields, flag_words, merged_field

__all__ = ["CalibrationConfig", "PruningConfig", "CliField"]

OWL_M = 5.0  # OWL paper (Yin et al., 2024) defaults, as in their LLaMA scripts
OWL_LAMBDA = 0.08
REFINE_ITERATIONS = 16
SCHEDULES = ("auto", "sublayer", "layer")
DENSE_PRECISIONS = ("auto", "bfloat16", "model")


@dataclass
class CalibrationConfig:
    """Where calibration text comes from and how it is cut into token windows."""

    source: str = field(default="embedded", metadata={"flag": "--calibration", "help": (
        "'embedded' (Python docs prose shipped with CPython), a local .txt/.jsonl file, a folder of "
        "them, or a Hub dataset 'ID[:CONFIG][@SPLIT]' loaded with `datasets`.")})
    num_samples: int = field(default=128, metadata={"help": "Number of random token windows."})
    seq_len: int = field(default=2048, metadata={"help": "Tokens per window (capped at the model's context)."})
    seed: int = field(default=0, metadata={"help": "Seed for window sampling."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text in datasets / JSONL."})
    batch_size: int = field(default=8, metadata={"help": "Windows per forward pass through a decoder layer."})

    def __post_init__(self) -> None:
        check_str("calibration.source", self.source)
        self.num_samples = check_int("calibration.num_samples", self.num_samples, 1)
        self.seq_len = check_int("calibration.seq_len", self.seq_len, 2)
        self.seed = check_int("calibration.seed", self.seed, 0)
        check_str("calibration.text_column", self.text_column)
        self.batch_size = check_int("calibration.batch_size", self.batch_size, 1)

    @classmethod
    def coerce(cls, value: "CalibrationConfig | dict | None") -> "CalibrationConfig":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"calibration must be a dict or CalibrationConfig, got {shown(value)}")
        reject_unknown("calibration key", value, [f.name for f in dataclasses.fields(cls)])
        return cls(**value)


@dataclass(init=False)
class PruningConfig:
    """How to prune a model.

    Build with keywords: ``PruningConfig(method="sparsegpt", sparsity=0.5, dampening=0.02)``. Keywords
    that are not fields below are the method's own options (validated against its ``Options``
    dataclass, see ``pruning_hf/methods/``); they may also be given as ``options={...}``.
    """

    method: str = field(metadata={"help": "Pruning method (see `pruning-hf methods`)."})
    sparsity: float | None = field(default=None, metadata={"help": (
        "Fraction of targeted weights (structured: units) to remove, in [0, 1). Implied by N:M patterns.")})
    pattern: str = field(default="unstructured", metadata={"help": (
        "'unstructured', 'N:M' (at most N non-zeros in each group of M consecutive input columns, e.g. 2:4) or "
        "'block:RxC' (whole blocks of R output rows x C input columns pruned together).")})
    scope: str | None = field(default=None, metadata={"help": (
        "Where weights compete: 'layer' (per Linear), 'row' (per output row), 'global' (all targets). "
        "Default depends on the method.")})
    targets: list[str] | None = field(default=None, metadata={"help": (
        "Module-name patterns to prune, fnmatch-ed against the full name or any dotted suffix of it "
        "('q_proj', 'mlp.*', 'layers.1[0-9].*'). Default: every Linear inside the decoder layers; "
        "'lm_head' only when listed.")})
    ignore: list[str] = field(default_factory=list, metadata={"help": "Module-name patterns excluded from targets."})
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig, metadata={"help": (
        "Calibration data; unused by methods that need none (magnitude).")})
    options: Any = field(default=None, metadata={"help": "Method-specific options (validated dataclass)."})
    allocation: str = field(default="uniform", metadata={"help": (
        "How the sparsity is spread over decoder layers. magnitude / wanda / sparsegpt: 'uniform', 'owl' "
        "(outlier-weighted, Yin et al. 2024: layers with more outliers of the Wanda score |W|*||X|| on the "
        "dense model are pruned less) or 'global' (one threshold of that score across all layers); the "
        "size-weighted mean stays `sparsity`; needs calibration data; not with N:M. structured: 'uniform' (a "
        "stock config: every layer the same width), 'increasing' (fractions growing with depth, SlimGPT) or "
        "'adaptive' (global ranking of standardised unit scores; with importance='obs', of each layer's "
        "reconstruction error); the last two give per-layer widths, which need pruning_hf to reload.")})
    owl_m: float = field(default=OWL_M, metadata={"help": (
        "OWL's M: a weight is an outlier when its Wanda score exceeds M x its layer's mean score (paper: 5).")})
    owl_lambda: float = field(default=OWL_LAMBDA, metadata={"help": (
        "OWL's lambda: every layer's sparsity stays within `sparsity` +- lambda (paper: 0.08).")})
    refine: bool = field(default=False, metadata={"help": (
        "Training-free mask refinement after each Linear is pruned (DSnoT-style): swap pruned and kept "
        "weights within each row (within each N:M group) while the Linear's reconstruction error "
        "||WX - W'X||^2 on its calibration inputs goes down, then re-fit the kept weights (a few "
        "conjugate-gradient steps); never increases that error. Needs calibration data; not with block patterns.")})
    refine_iterations: int = field(default=REFINE_ITERATIONS, metadata={"help": (
        "Refinement swap rounds per Linear; each round makes at most one swap per row.")})
    schedule: str = field(default="auto", metadata={"help": (
        "How each decoder layer meets the calibration data. 'sublayer': its attention sub-block, then its MLP "
        "sub-block, every matmul once and with pruned weights, so each Linear's statistics come from the inputs "
        "it will really see (o_proj / down_proj after q/k/v / gate/up are pruned: SparseGPT's 'true sequential'); "
        "about half the forward passes. 'layer': the whole layer twice (statistics with its dense weights, then "
        "its pruned outputs). 'auto': 'sublayer' where the family's layout is known (OPT, Llama family, Gemma, "
        "GPT-2) and the method prunes Linear by Linear (magnitude, wanda, sparsegpt), else 'layer'.")})
    dense_targets: bool = field(default=False, metadata={"help": (
        "Fit each pruned Linear to the dense model's output on the dense model's input, min ||W X_dense - W' X||, "
        "so errors of earlier layers are corrected instead of carried forward (asymmetric calibration, as GPTAQ). "
        "Carries the dense model's activations beside the pruned ones (2x activation memory) and one more "
        "X^T X_dense per input, and runs each layer once more with dense weights. Methods: sparsegpt, admm.")})
    dense_precision: str = field(default="auto", metadata={"help": (
        "Precision of the dense model's stream with dense_targets: 'bfloat16' runs its matmuls in bf16 (autocast), "
        "so the targets are what the model computes in bf16, 2-3x faster where bf16 is native (CUDA GPUs, CPUs "
        "with AVX512-BF16 or AMX) and slower elsewhere; 'model': the model's own dtype; 'auto': 'bfloat16' for a "
        "float32 model on such a device, else 'model'. The pruned stream and all statistics keep their precision.")})

    def __init__(self, method: str, **values: Any) -> None:
        method_cls = get_method(method)
        names = [f.name for f in dataclasses.fields(PruningConfig)]
        given = {key: value for key, value in values.items() if key in names}
        keyword_options = {key: value for key, value in values.items() if key not in names}
        for f in dataclasses.fields(PruningConfig)[1:]:
            if f.name not in given:
                given[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        options = given.pop("options")
        if dataclasses.is_dataclass(options):
            options = dataclasses.asdict(options)
        if not isinstance(options, (dict, type(None))):
            raise ValueError(f"options must be a dict of method options, got {shown(options)}")
        clash = sorted(set(options or {}) & set(keyword_options))
        if clash:
            raise ValueError(f"option(s) {clash} given both as keywords and in options=")
        merged = {**(options or {}), **keyword_options}
        for key in merged:
            if key not in method_cls.option_names():
                takes = f"it takes: {method_cls.option_names()}" if method_cls.option_names() else "it takes no options"
                owners = option_owners(key)
                belongs = f"; {key!r} is an option of: {', '.join(owners)}" if owners else ""
                raise ValueError(f"unknown option {key!r} for method {method_cls.name!r} ({takes}){belongs}")
        self.method = method_cls.name
        self.pattern_spec: Pattern = parse_pattern(given["pattern"])
        self.pattern = str(self.pattern_spec)
        self.sparsity = None if given["sparsity"] is None else check_number("sparsity", given["sparsity"], 0.0, 1.0)
        self.scope = given["scope"]
        self.targets = name_list("targets", given["targets"])
        self.ignore = name_list("ignore", given["ignore"]) or []
        self.calibration = CalibrationConfig.coerce(given["calibration"])
        self.options = method_cls.make_options(merged)
        method_cls.validate_config(self)
        self._check_allocation_and_refinement(given)
        self._check_schedule(given)

    def _check_schedule(self, given: dict[str, Any]) -> None:
        """Validate the schedule and dense-target fields against the method."""
        self.schedule = check_choice("schedule", given["schedule"], SCHEDULES)
        if self.schedule == "sublayer" and not self.method_class.sub_blocks:
            raise ValueError(f"schedule='sublayer' prunes a layer in sub-blocks; method {self.method!r} needs the "
                             "whole layer at once: use schedule='layer' (or 'auto')")
        if not isinstance(given["dense_targets"], bool):
            raise ValueError(f"dense_targets must be true or false, got {shown(given['dense_targets'])}")
        self.dense_targets = given["dense_targets"]
        self.dense_precision = check_choice("dense_precision", given["dense_precision"], DENSE_PRECISIONS)
        if self.dense_precision != "auto" and not self.dense_targets:
            raise ValueError(f"dense_precision={self.dense_precision!r} only applies with dense_targets=True")
        if self.dense_targets and not self.method_class.fits_dense_targets:
            owners = [name for name, cls in METHODS.items() if cls.fits_dense_targets]
            raise ValueError(f"dense_targets=True re-fits kept weights to the dense model's outputs; method "
                             f"{self.method!r} does not update weights that way (methods that do: {', '.join(owners)})")

    def _check_allocation_and_refinement(self, given: dict[str, Any]) -> None:
        """Validate the layer-allocation and refinement fields against the method and pattern."""
        allocation, refine = given["allocation"], given["refine"]
        allowed = self.method_class.allocations
        if allocation not in allowed:
            raise ValueError(f"allocation={shown(allocation)} is not available with method {self.method!r}; "
                             f"choose one of: {', '.join(allowed)}")
        self.allocation = allocation
        self.owl_m = check_number("owl_m", given["owl_m"], 0.0, 1e6, low_inclusive=False, high_inclusive=True)
        self.owl_lambda = check_number("owl_lambda", given["owl_lambda"], 0.0, 0.5, high_inclusive=True)
        if not isinstance(refine, bool):
            raise ValueError(f"refine must be true or false, got {shown(refine)} ({type(refine).__name__})")
        self.refine = refine
        self.refine_iterations = check_int("refine_iterations", given["refine_iterations"], 1)
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
        return get_method(self.method)

    @property
    def needs_calibration(self) -> bool:
        """The method's own needs, or a non-uniform allocation / refinement (both read calibration inputs)."""
        return self.method_class.needs_calibration(self) or self.allocation in PREPASS_ALLOCATIONS or self.refine

    # --- serialisation (from the fields) --------------------------------------------------------
    def to_dict(self, applicable_only: bool = False) -> dict[str, Any]:
        """All fields, or with ``applicable_only`` those that say something for the method (see
        ``PruningMethod.applies``; ``from_dict`` restores the others as they were)."""
        data = {}
        for f in dataclasses.fields(self):
            if applicable_only and not self.method_class.applies(f.name, self):
                continue
            value = getattr(self, f.name)
            data[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else (
                list(value) if isinstance(value, list) else value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a pruning config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        data.pop("pruning_hf_version", None)
        if "method" not in data:
            raise ValueError("pruning config is missing the required key 'method'")
        method_cls = get_method(data["method"])
        reject_unknown("pruning config key", data, [f.name for f in dataclasses.fields(cls)] + method_cls.option_names())
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
            data = safe_yaml_load(text)
        except YamlAnchorError as err:
            raise ValueError(f"pruning config: {err}") from None
        except yaml.YAMLError as err:  # includes tags such as !!python/object, which the safe loader refuses
            raise ValueError(f"pruning config is not valid (safe) YAML: {' '.join(str(err).split())}") from None
        return cls.from_dict(data)

    # --- command line (from the fields) ---------------------------------------------------------
    @staticmethod
    def cli_fields(include: tuple[str, ...] = ("config", "calibration", "options")) -> list[CliField]:
        """The command-line flags of the config: its own fields (``config``), the calibration fields and
        every registered method's options (one flag serves all methods that share an option name)."""
        from .methods import METHODS

        found: list[CliField] = []
        if "config" in include:
            found += dataclass_cli_fields(PruningConfig, (), True, skip=("calibration", "options"))
        if "calibration" in include:
            found += dataclass_cli_fields(CalibrationConfig, ("calibration",), True)
        if "options" in include:
            shared: dict[str, list[tuple[str, CliField]]] = {}
            for name, method in METHODS.items():
                for cli_field in dataclass_cli_fields(method.Options, ("options",), False):
                    shared.setdefault(cli_field.flag, []).append((name, cli_field))
            for entries in shared.values():
                found.append(entries[0][1] if len({(f.help, repr(f.default)) for _, f in entries}) == 1
                             else merged_field(entries))
        return found

    @classmethod
    def from_cli_values(cls, values: dict[tuple[str, ...], Any]) -> "PruningConfig":
        """Build from ``{CliField.path: value}`` of the flags that were given (others keep their defaults)."""
        top = {path[0]: value for path, value in values.items() if len(path) == 1}
        calibration = {path[1]: value for path, value in values.items() if path[0] == "calibration"}
        options = {path[1]: value for path, value in values.items() if path[0] == "options"}
        return cls(**top, calibration=calibration or None, **options)

    def to_cli_args(self) -> list[str]:
        """Flags that rebuild this config with ``pruning-hf prune`` (values that differ from the defaults;
        the calibration source, samples, length and seed always, so the command says what data it used)."""
        defaults = {f.path: f.default for f in self.cli_fields(("config", "calibration"))}
        always = {("method",), ("calibration", "source"), ("calibration", "num_samples"), ("calibration", "seq_len"),
                  ("calibration", "seed")}
        args = []
        for cli_field in self.cli_fields(("config", "calibration")):
            value = getattr(self, cli_field.path[0]) if len(cli_field.path) == 1 else \
                getattr(getattr(self, cli_field.path[0]), cli_field.path[1])
            if cli_field.path == ("sparsity",) and self.pattern_spec.is_nm:
                continue  # implied by the pattern
            if cli_field.path not in always and value == defaults[cli_field.path]:
                continue
            args += flag_words(cli_field, value)
        option_fields = {f.path[1]: f for f in self.cli_fields(("options",))}
        defaults = {f.name: f.default for f in dataclasses.fields(self.options)}
        for name, value in dataclasses.asdict(self.options).items():
            if value != defaults[name]:
                args += flag_words(option_fields[name], value)
        return args

    def as_used(self, windows) -> "PruningConfig":
        """This config with the calibration window count and length of ``windows`` ``(num, seq_len)``, the ones
        that ran (``seq_len`` is capped at the model's context; given windows may differ), so the checkpoint,
        the report and the card record what was used."""
        used = {"num_samples": int(windows.shape[0]), "seq_len": int(windows.shape[1])}
        if used == {"num_samples": self.calibration.num_samples, "seq_len": self.calibration.seq_len}:
            return self
        data = self.to_dict()
        return PruningConfig.from_dict({**data, "calibration": {**data["calibration"], **used}})

    def check_iterative(self) -> None:
        """Raise ValueError unless this config can be pruned in rising steps (``iterative_prune``).

        A step over budget is undone by writing the previous weights back, which cannot bring back what a
        method that ``changes_shapes`` removed (neurons, heads, layers: the modules themselves are replaced,
        and each step's fraction would apply to the already-shrunk widths). N:M patterns fix the sparsity.
        """
        if self.method_class.changes_shapes:
            usable = [name for name, method in METHODS.items() if not method.changes_shapes]
            raise ValueError(f"iterative pruning undoes a step over budget by restoring weights, but method "
                             f"{self.method!r} removes whole neurons, heads or layers, which restoring cannot undo; "
                             f"use {', '.join(usable[:-1])} or {usable[-1]}, or run `pruning-hf prune` once per "
                             "level (or `pruning-hf sweep`) and keep the best")
        if self.pattern_spec.is_nm:
            raise ValueError(f"pattern={self.pattern!r} fixes the sparsity at {self.sparsity:g}; iterative pruning "
                             "needs 'unstructured' or a block pattern")

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``wanda 50% unstructured (row) +owl +refine`` (the method
        words the first part)."""
        extra = f" +{self.allocation}" if self.allocation in PREPASS_ALLOCATIONS else ""
        extra += " +refine" if self.refine else ""
        extra += " +dense-targets" if self.dense_targets else ""
        return self.method_class.describe(self) + extra


PruningConfig.__init__.__signature__ = inspect.Signature(  # help() and IDEs show the fields
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD if i == 0 else inspect.Parameter.KEYWORD_ONLY,
                         **({} if i == 0 else {"default": None if f.name in ("options", "calibration") else (
                             f.default if f.default is not dataclasses.MISSING else f.default_factory())}))
       for i, f in enumerate(dataclasses.fields(PruningConfig))]
    + [inspect.Parameter("method_options", inspect.Parameter.VAR_KEYWORD)])
