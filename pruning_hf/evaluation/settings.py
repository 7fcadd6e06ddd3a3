"""EvaluationConfig: what to measure, on which data. The one settings class of every evaluation.

``prune --eval-*``, ``from_pretrained(evaluate=...)``, ``eval``, sweeps, recipes and ``iterative`` all
build one; each entry point only changes defaults (e.g. :data:`FULL_EVALUATION` for
``evaluate=True``, :data:`COMPACT` for sweep points and recipes, which measure many models).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..data.text import DataSourceError
from ..utils.checks import check_int, reject_unknown, shown
from .energy import DEFAULT_COUNTRY_ISO, check_country_iso
from .tasks import TASK_SUFFIX, parse_task_list, task_names

__all__ = ["EvaluationConfig", "FULL_EVALUATION", "COMPACT"]

#: what ``from_pretrained(..., evaluate=True)`` adds to the defaults (energy is on by default)
FULL_EVALUATION = {"efficiency": True, "energy": True}
#: settings of sweep points and recipes: no greedy samples, decode speed at batch 1 only
COMPACT = {"samples": False, "decode_batches": [1]}


@dataclass
class EvaluationConfig:
    """What to measure, on which data. Validated when built (before any model is loaded)."""

    text: str = field(default="embedded@test", metadata={"help": "Text source for perplexity (see data.text)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text in datasets / JSONL."})
    seq_len: int = field(default=512, metadata={"help": "Tokens per perplexity window."})
    max_windows: int | None = field(default=40, metadata={"help": "Windows to score (None: all of the text)."})
    batch_size: int | None = field(default=None, metadata={"help": (
        "Windows / task sequences per forward pass (None: sized to the device's free memory, at most 8 on CPU, "
        "32 on GPU).")})
    keep_partial: bool = field(default=False, metadata={"help": "Also score a last, shorter window."})
    tasks: list[str] = field(default_factory=list, metadata={"help": (
        "Accuracy tasks (piqa, arc_easy, ... or NAME=FILE.jsonl, see evaluation.tasks); each adds a metric "
        "<name>_acc.")})
    task_limit: int | None = field(default=None, metadata={"help": "First N examples of each task (None: all)."})
    samples: bool = field(default=True, metadata={"help": "Greedy generations for the fixed prompt set."})
    sample_tokens: int = field(default=32, metadata={"help": "New tokens per sample."})
    efficiency: bool = field(default=False, metadata={"help": "Speed, memory, size and FLOPs."})
    repeats: int = field(default=5, metadata={"help": (
        "Timed rounds per speed measurement (median and spread; models alternate round by round).")})
    prefill_batch: int = field(default=1, metadata={"help": "Batch of the prefill timing."})
    decode_batches: list[int] = field(default_factory=lambda: [1, 8], metadata={"help": "Decode batch sizes."})
    new_tokens: int = field(default=8, metadata={"help": "Tokens generated per decode timing (after an 8-token prompt)."})
    disk: bool = field(default=True, metadata={"help": (
        "Checkpoint bytes (the loaded folder's files, else computed from the tensors; nothing is written).")})
    side_by_side: bool | None = field(default=None, metadata={"help": (
        "Keep the models in memory and alternate their speed and energy runs round by round (fair ratios on "
        "a busy machine). None: when they fit in memory (checked and reported); False: time each model "
        "alone, right after its quality evaluation.")})
    energy: bool = field(default=True, metadata={"help": "codecarbon energy and CO2e per phase (offline)."})
    country_iso_code: str | None = field(default=DEFAULT_COUNTRY_ISO, metadata={"help": (
        "ISO 3166-1 alpha-3 country whose grid carbon intensity converts kWh to CO2e (None: codecarbon's "
        "configuration, else the world average).")})
    energy_batch: int = field(default=8, metadata={"help": "Batch of the fixed generation workload."})
    energy_new_tokens: int = field(default=8, metadata={"help": (
        "Tokens per sequence of that workload (with efficiency, the decode timing of the same batch and length "
        "is that workload).")})
    energy_rounds: int = field(default=3, metadata={"help": (
        "Rounds of the generation workload per model (summed; models alternate round by round); 0: none.")})
    energy_output_file: str | None = field(default=None, metadata={"help": "Also write codecarbon's CSV here."})
    progress: bool = field(default=True, metadata={"help": "Progress bars."})

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise DataSourceError(f"evaluation text source must be a non-empty string, got {shown(self.text)}")
        check_int("seq_len", self.seq_len, 2)
        for name in ("sample_tokens", "repeats", "prefill_batch", "energy_batch"):
            check_int(name, getattr(self, name), 1)
        check_int("energy_rounds", self.energy_rounds, 0)
        check_int("new_tokens", self.new_tokens, 2)
        check_int("energy_new_tokens", self.energy_new_tokens, 1)
        for name in ("max_windows", "task_limit", "batch_size"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        self.decode_batches = [check_int("decode_batches[]", b, 1) for b in self.decode_batches]
        self.tasks = parse_task_list(self.tasks)
        self.country_iso_code = check_country_iso(self.country_iso_code)  # also the pruning run's grid

    @classmethod
    def coerce(cls, value: "EvaluationConfig | Mapping | bool | None" = None, **overrides: Any) -> "EvaluationConfig":
        """``None``/``True`` -> defaults; a dict -> validated config; keyword overrides win."""
        if isinstance(value, cls):
            base = dataclasses.asdict(value)
        elif value is None or value is True:
            base = {}
        elif isinstance(value, Mapping):
            base = dict(value)
        else:
            raise ValueError(f"evaluation settings must be True, a dict or an EvaluationConfig, got {shown(value)}")
        base.update(overrides)
        reject_unknown("evaluation setting", base, [f.name for f in dataclasses.fields(cls)])
        return cls(**base)

    @classmethod
    def full(cls, value: "EvaluationConfig | Mapping | bool") -> "EvaluationConfig":
        """Settings of ``from_pretrained(..., evaluate=value)``: efficiency and energy on unless turned off."""
        if isinstance(value, cls):
            return value
        if value is True:
            value = {}
        if not isinstance(value, Mapping):
            raise ValueError(f"evaluate must be True, a dict of evaluation settings or an EvaluationConfig, "
                             f"got {shown(value)}")
        return cls.coerce({**FULL_EVALUATION, **value})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def metric_names(self) -> list[str]:
        """The flat metrics (:data:`pruning_hf.evaluation.report.METRICS`) every evaluated model gets."""
        names = ["perplexity", "params_total", "params_nonzero", "weight_bytes"]
        names += [f"{name}{TASK_SUFFIX}" for name in task_names(self.tasks)]
        if self.efficiency:
            names += ["prefill_ms", "decode_tokens_per_s"]
        if self.energy:
            names += ["energy_kwh", "emissions_g", "energy_wh_per_1k_tokens"]
            if self.energy_rounds:
                names += ["generation_wh_per_1k_tokens", "generation_g_per_1k_tokens"]
        return names
