"""One evaluation result schema: :class:`EvaluationReport` (JSON + markdown) and the flat metrics
sweeps, recipes and model cards use (:data:`METRICS`, :func:`entry_metrics`).

A checkpoint saved after an evaluation holds it as ``evaluation_report.json``. JSON schema
(``"schema": "pruning_hf.evaluation/3"``; older reports still load and render: version 2 kept one
median per timing, without its rounds, and the process's peak RSS as ``memory.peak_rss_bytes``; version 1
also kept the parameter counts under ``efficiency``)::

    {
      "schema": "pruning_hf.evaluation/3",
      "created": "2026-01-01T12:00:00Z",
      "versions": {"pruning_hf": ..., "torch": ..., "transformers": ..., "evaluate": ..., "datasets": ...,
                   "codecarbon": ..., "accelerate": ..., "python": ...},
      "settings": {EvaluationConfig fields},
      "data": {"text": {"source", "tokens", "windows", "seq_len", "text_tokens"},   # predicted tokens
               "tasks": {NAME: {"source", "kind", "examples"}}},
      "baseline": "dense",                                                     # name of models[0]
      "models": [{
          "name": "dense",
          "model": {"name_or_path", "model_type", "dtype", "device"},
          "pruning": null | PruningReport.to_dict() (config incl. calibration, per-layer sparsity, seconds),
          "size": {"parameters": {"total", "nonzero"}, "weights_bytes"},
          "perplexity": {"perplexity", "nll", "tokens", "windows", "seq_len"},
          "tasks": {NAME: {"acc", "acc_norm", "examples"} | {"acc", "perplexity", "examples"}},
          "samples": [{"prompt", "completion", "new_tokens"}] | null,
          "efficiency": null | {"device", "threads", "warmup", "repeats", "checkpoint_bytes",
                                "flops_per_token": {"linear", "attention", "total", "sparse_skippable", "seq_len"},
                                "prefill": {"batch", "seq_len", "median_seconds", "min_seconds", "max_seconds",
                                            "q1_seconds", "q3_seconds", "rounds_seconds", "tokens_per_second"},
                                "decode": {"1": {"batch", "prompt_len", "new_tokens", "median_seconds",
                                                 "decode_seconds", "rounds_decode_seconds", "tokens_per_second"},
                                           "8": {...}},
                                "memory": {"peak_bytes" (the model's own: weights + what its runs added),
                                           "weights_bytes", "run_peak_increase_bytes", "process_peak_rss_bytes",
                                           "rss_peak_reset", "peak_gpu_bytes"},
                                "timing": {"mode" ("interleaved" | "interleaved, reloaded every round ..." |
                                           "alone"), "with", "held", "fits", "model_bytes", "available_bytes",
                                           "needed_bytes"}, "timed_with"},
          "energy": null | {PHASE: {"name", "seconds", "energy_kwh", "cpu_kwh", "gpu_kwh", "ram_kwh",
                                    "emissions_kg", "emissions_g", "generated_tokens",
                                    ["kwh_per_1k_tokens", "g_per_1k_tokens"]} | {"name", "seconds", "error"}}
                    # phases: "perplexity", "generation" (fixed workload; + "rounds", "interleaved_with"),
                    # "pruning" (the pruning run, as in pruning_report.json: + country, tracking, "source")
      }],
      "energy": null | {"country_iso_code" (null: codecarbon's default), "country", "country_source",
                        "codecarbon_version",
                        "tracking": {"tracking_mode", "cpu", "gpu", "ram", "hardware", "measured", "summary"}}
                | {"error"},                                            # codecarbon could not run: why
      "ratios": {NAME: {ROW: value / baseline value}},   # every model but the baseline
      "timing_ratios": {NAME: {ROW: {"ratio", "min", "max", "q1", "q3", "rounds", "measurable", "metric"}}}
                            # timing rows: per-round ratios of the paired rounds; measurable = IQR excludes 1.0
    }
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.storage import atomic_file
from .energy import describe_source
from .rows import markdown, table_rows, timing_ratio
from .tasks import TASK_SUFFIX

__all__ = ["EvaluationReport", "METRICS", "SCHEMA", "is_metric", "entry_metrics", "relative_metrics"]

SCHEMA = "pruning_hf.evaluation/3"
_OLD_SCHEMAS = ("pruning_hf.evaluation/1", "pruning_hf.evaluation/2")

#: flat metric name -> (description, unit): sweep columns, recipe expectations, model-card rows
METRICS: dict[str, tuple[str, str]] = {
    "perplexity": ("perplexity on the evaluation text", ""),
    "ppl_increase": ("perplexity increase over the dense model", "fraction"),
    "sparsity": ("achieved sparsity of the pruned (targeted) weights", "fraction"),
    "params_total": ("parameters (shared ones counted once)", "count"),
    "params_nonzero": ("non-zero parameters", "count"),
    "size_ratio": ("non-zero parameters relative to the dense model", "fraction"),
    "weight_bytes": ("bytes of the weights as stored densely (safetensors)", "bytes"),
    "prefill_ms": ("median latency of one forward pass, prefill batch x eval seq_len", "ms"),
    "decode_tokens_per_s": ("greedy decode speed at batch 1", "tokens/s"),
    "energy_kwh": ("energy of the perplexity workload (codecarbon)", "kWh"),
    "emissions_g": ("CO2-equivalent of the perplexity workload (codecarbon)", "g"),
    "energy_wh_per_1k_tokens": ("energy per 1000 evaluated tokens", "Wh"),
    "generation_wh_per_1k_tokens": ("energy per 1000 generated tokens (fixed greedy workload, interleaved rounds)", "Wh"),
    "generation_g_per_1k_tokens": ("CO2-equivalent per 1000 generated tokens (same workload)", "g"),
    "pruning_seconds": ("wall time of the pruning run", "s"),
    "pruning_energy_kwh": ("energy of the pruning run (codecarbon)", "kWh"),
    "pruning_emissions_g": ("CO2-equivalent of the pruning run (codecarbon)", "g"),
}


def is_metric(name: str) -> bool:
    """A metric of :data:`METRICS` or a task accuracy (``<task>_acc``)."""
    return name in METRICS or name.endswith(TASK_SUFFIX)


def entry_metrics(entry: dict) -> dict[str, float]:
    """One model of a report as flat :data:`METRICS` (those it measured), plus ``eval_tokens`` / ``eval_windows``."""
    quality, size = entry.get("perplexity") or {}, entry.get("size") or {}
    metrics = {"perplexity": quality.get("perplexity"), "eval_tokens": quality.get("tokens"),
               "eval_windows": quality.get("windows"),
               "params_total": (size.get("parameters") or {}).get("total"),
               "params_nonzero": (size.get("parameters") or {}).get("nonzero"), "weight_bytes": size.get("weights_bytes")}
    for task, result in (entry.get("tasks") or {}).items():
        metrics[f"{task}{TASK_SUFFIX}"] = result["acc"]
    efficiency = entry.get("efficiency") or {}
    if efficiency:
        metrics["prefill_ms"] = efficiency["prefill"]["median_seconds"] * 1000
        decode = efficiency["decode"].get("1") or next(iter(efficiency["decode"].values()), None)
        metrics["decode_tokens_per_s"] = decode["tokens_per_second"] if decode else None
    phases = {name: phase for name, phase in (entry.get("energy") or {}).items() if "energy_kwh" in phase}  # measured
    if phases.get("perplexity") and quality.get("tokens"):
        phase = phases["perplexity"]
        metrics.update(energy_kwh=phase["energy_kwh"], emissions_g=phase["emissions_g"],
                       energy_wh_per_1k_tokens=phase["energy_kwh"] * 1e6 / quality["tokens"])
    if phases.get("generation", {}).get("kwh_per_1k_tokens") is not None:
        metrics.update(generation_wh_per_1k_tokens=phases["generation"]["kwh_per_1k_tokens"] * 1e3,
                       generation_g_per_1k_tokens=phases["generation"]["g_per_1k_tokens"])
    pruning = entry.get("pruning")
    if pruning:
        metrics.update(sparsity=pruning.get("sparsity"), pruning_seconds=pruning.get("total_seconds"))
    if phases.get("pruning"):
        metrics.update(pruning_energy_kwh=phases["pruning"]["energy_kwh"],
                       pruning_emissions_g=phases["pruning"]["emissions_g"])
    return {key: value for key, value in metrics.items() if value is not None}


def relative_metrics(pruned: dict, dense: dict) -> dict[str, float]:
    """``ppl_increase`` and ``size_ratio`` of a pruned model's flat metrics against the dense model's."""
    return {"ppl_increase": pruned["perplexity"] / dense["perplexity"] - 1.0,
            "size_ratio": pruned["params_nonzero"] / dense["params_nonzero"]}


def _upgrade(entry: dict) -> dict:
    """A version-1 model entry (parameter counts under ``efficiency``) in the current schema."""
    efficiency = entry.get("efficiency") or {}
    if "size" not in entry and "parameters" in efficiency:
        entry = {**entry, "size": {"parameters": efficiency["parameters"], "weights_bytes": efficiency["weights_bytes"]}}
    return entry


@dataclass
class EvaluationReport:
    """One or more models measured on identical data (see the module docstring for the JSON schema)."""

    settings: dict[str, Any]
    data: dict[str, Any]
    models: list[dict[str, Any]]
    energy: dict[str, Any] | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
                         .strftime("%Y-%m-%dT%H:%M:%SZ"))

    @property
    def baseline(self) -> str:
        return self.models[0]["name"]

    def __getitem__(self, name: str) -> dict[str, Any]:
        for entry in self.models:
            if entry["name"] == name:
                return entry
        raise KeyError(f"no model named {name!r} in this report; models: {[e['name'] for e in self.models]}")

    def metrics(self, name: str | None = None) -> dict[str, float]:
        """Flat :data:`METRICS` of model ``name`` (default: the last one, e.g. the pruned model)."""
        return entry_metrics(self[name] if name is not None else self.models[-1])

    def energy_source(self) -> str | None:
        """What codecarbon measured or estimated (one line), when energy was measured."""
        return describe_source(self.energy) if self.energy else None

    def ratios(self) -> dict[str, dict[str, float]]:
        """``{model: {row label: value / baseline}}`` (accuracy rows: difference in points; timing rows: the
        median of the paired rounds' ratios, see :meth:`timing_ratios`)."""
        base = self.models[0]
        result = {}
        for entry in self.models[1:]:
            values = {}
            for row in table_rows(self):
                ours, theirs = row.get(entry), row.get(base)
                paired = timing_ratio(row, entry, base)
                if ours is None or theirs is None or (paired is None and row.rounds and row.rounds(entry)):
                    continue  # (timing rows of models timed apart have no ratio)
                if paired is not None:
                    values[row.label] = paired["ratio"]
                elif row.kind == "delta":
                    values[row.label] = ours - theirs
                elif theirs:
                    values[row.label] = ours / theirs
            result[entry["name"]] = values
        return result

    def timing_ratios(self, name: str | None = None) -> dict[str, dict[str, Any]]:
        """``{row label: paired ratio}`` of model ``name`` (default: the last) against the baseline, for the
        timing rows timed in the same rounds: ``{"ratio", "min", "max", "q1", "q3", "rounds", "measurable",
        "metric"}`` (see :func:`~pruning_hf.evaluation.rounds.paired_ratio`)."""
        entry, base = self[name] if name is not None else self.models[-1], self.models[0]
        result = {}
        for row in table_rows(self):
            paired = timing_ratio(row, entry, base) if entry is not base else None
            if paired is not None:
                result[row.label] = {**paired, "metric": row.metric}
        return result

    def timed_apart(self, name: str | None = None) -> list[str]:
        """The flat metrics of the timing rows of model ``name`` (default: the last) that were not timed in
        rounds alternating with the baseline, so they have no ratio (e.g. ``side_by_side=False``)."""
        entry, base = self[name] if name is not None else self.models[-1], self.models[0]
        return [row.metric for row in table_rows(self) if row.metric and entry is not base and row.rounds(entry)
                and timing_ratio(row, entry, base) is None]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "created": self.created, "versions": self.versions, "settings": self.settings,
                "data": self.data, "baseline": self.baseline, "models": self.models, "energy": self.energy,
                "ratios": self.ratios(),
                "timing_ratios": {entry["name"]: self.timing_ratios(entry["name"]) for entry in self.models[1:]}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvaluationReport":
        if data.get("schema") not in (SCHEMA, *_OLD_SCHEMAS):
            raise ValueError(f"not a pruning_hf evaluation report (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        return cls(settings=data["settings"], data=data["data"], models=[_upgrade(m) for m in data["models"]],
                   energy=data.get("energy"), versions=data.get("versions", {}), created=data.get("created", ""))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EvaluationReport":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self, samples: bool = True) -> str:
        """One table (metrics x models, ratio or difference against the first model), its context, samples."""
        return markdown(self, samples)

    def save(self, json_path: str | os.PathLike, markdown_path: str | os.PathLike | None = None) -> None:
        """Write JSON (and markdown), each atomically (flushed, then renamed over the target)."""
        for path, content in ((json_path, self.to_json()), (markdown_path, self.to_markdown())):
            if path is None:
                continue
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as tmp:
                tmp.write_text(content + "\n", encoding="utf-8")
