"""Evaluate models on identical data and report them side by side (JSON + markdown).

Entry points: :func:`evaluate_model` (one model), :func:`compare_models` (several, ratios against
the first), :func:`prune_and_compare` (dense -> prune -> pruned in one process, used by
``AutoPrunedModel.from_pretrained(..., evaluate=True)`` and ``pruning-hf prune --eval-text``).
All return an :class:`EvaluationReport`; ``save_pretrained`` of a pruned model writes it as
``evaluation_report.json``.

JSON schema (``"schema": "pruning_hf.evaluation/1"``)::

    {
      "schema": "pruning_hf.evaluation/1",
      "created": "2026-01-01T12:00:00Z",
      "versions": {"pruning_hf": ..., "torch": ..., "transformers": ..., "evaluate": ..., "datasets": ...,
                   "codecarbon": ..., "python": ...},
      "settings": {EvaluationConfig fields: "text", "text_column", "seq_len", "max_windows", "batch_size",
                   "keep_partial", "tasks", "task_limit", "samples", "efficiency", "energy", "country_iso_code", ...},
      "data": {"text": {"source", "tokens", "windows", "seq_len"},            # predicted tokens
               "tasks": {NAME: {"source", "kind", "examples"}}},
      "baseline": "dense",                                                     # name of models[0]
      "models": [{
          "name": "dense",
          "model": {"name_or_path", "model_type", "dtype", "device"},
          "pruning": null | PruningReport.to_dict() (config incl. calibration, per-layer sparsity, seconds),
          "perplexity": {"perplexity", "nll", "tokens", "windows", "seq_len"},
          "tasks": {NAME: {"acc", "acc_norm", "examples"} | {"acc", "perplexity", "examples"}},
          "samples": [{"prompt", "completion", "new_tokens"}] | null,
          "efficiency": null | {"device", "threads", "warmup", "repeats",
                                "parameters": {"total", "nonzero"}, "weights_bytes", "checkpoint_bytes",
                                "flops_per_token": {"linear", "attention", "total", "sparse_skippable", "seq_len"},
                                "prefill": {"batch", "seq_len", "median_seconds", "tokens_per_second"},
                                "decode": {"1": {"batch", "prompt_len", "new_tokens", "median_seconds",
                                                 "decode_seconds", "tokens_per_second"}, "8": {...}},
                                "memory": {"peak_rss_bytes", "rss_peak_reset", "peak_gpu_bytes"}},
          "energy": null | {PHASE: {"name", "seconds", "energy_kwh", "cpu_kwh", "gpu_kwh", "ram_kwh",
                                    "emissions_kg", "emissions_g", "generated_tokens",
                                    ["kwh_per_1k_tokens", "g_per_1k_tokens"]}}
                    # phases: "perplexity", "generation" (fixed workload), "pruning" (pruned models)
      }],
      "energy": null | {"country_iso_code", "codecarbon_version",
                        "tracking": {"tracking_mode", "cpu", "gpu", "ram", "measured", "summary"}},
      "ratios": {NAME: {METRIC: value / baseline value}}   # every model but the baseline
    }
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import platform
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

from ..calibration import DataSourceError, load_texts, tokenize_texts
from ..config import check_int
from . import load_metric
from .energy import DEFAULT_COUNTRY_ISO, EnergyTracker, PhaseEnergy, check_country_iso
from .generation import DEFAULT_PROMPTS, greedy_generate, greedy_samples, synthetic_prompts
from .loglikelihood import context_length
from .tasks import LAST_WORD, Task, load_tasks, parse_task_list, run_task

__all__ = ["EvaluationConfig", "EvaluationData", "EvaluationReport", "prepare_evaluation", "evaluate_model",
           "compare_models", "prune_and_compare", "check_seq_len", "model_config", "FULL_EVALUATION", "REPORT_FILE", "SCHEMA"]

SCHEMA = "pruning_hf.evaluation/1"
FULL_EVALUATION = {"efficiency": True, "energy": True}  # what ``from_pretrained(..., evaluate=True)`` adds
REPORT_FILE = "evaluation_report.json"


@dataclass
class EvaluationConfig:
    """What to measure, on which data. Validated when built (before any model is loaded)."""

    text: str = field(default="embedded@test", metadata={"help": "Text source for perplexity (see calibration)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text in datasets / JSONL."})
    seq_len: int = field(default=512, metadata={"help": "Tokens per perplexity window."})
    max_windows: int | None = field(default=40, metadata={"help": "Windows to score (None: all of the text)."})
    batch_size: int = field(default=4, metadata={"help": "Windows / task sequences per forward pass."})
    keep_partial: bool = field(default=False, metadata={"help": "Also score a last, shorter window."})
    tasks: list[str] = field(default_factory=list, metadata={"help": "Task names or NAME=FILE.jsonl (see tasks)."})
    task_limit: int | None = field(default=None, metadata={"help": "First N examples of each task (None: all)."})
    samples: bool = field(default=True, metadata={"help": "Greedy generations for the fixed prompt set."})
    sample_tokens: int = field(default=32, metadata={"help": "New tokens per sample."})
    efficiency: bool = field(default=False, metadata={"help": "Speed, memory, size and FLOPs."})
    repeats: int = field(default=5, metadata={"help": "Timed repeats per speed measurement (median)."})
    prefill_batch: int = field(default=1, metadata={"help": "Batch of the prefill timing."})
    decode_batches: list[int] = field(default_factory=lambda: [1, 8], metadata={"help": "Decode batch sizes."})
    new_tokens: int = field(default=32, metadata={"help": "Tokens generated per decode timing."})
    disk: bool = field(default=True, metadata={"help": "Measure checkpoint bytes (saves to a temporary folder)."})
    side_by_side: bool = field(default=False, metadata={"help": (
        "Keep every model in memory and alternate their speed and energy runs round by round: fair ratios "
        "on a busy machine, at the cost of memory for all models. Otherwise each model is timed after its "
        "quality evaluation.")})
    energy: bool = field(default=False, metadata={"help": "codecarbon energy and CO2e per phase."})
    country_iso_code: str = field(default=DEFAULT_COUNTRY_ISO, metadata={"help": "Grid for CO2e (ISO alpha-3)."})
    energy_batch: int = field(default=8, metadata={"help": "Batch of the fixed generation workload."})
    energy_new_tokens: int = field(default=64, metadata={"help": "Tokens per sequence of that workload."})
    energy_rounds: int = field(default=1, metadata={"help": "Times the workload runs per model (summed)."})
    energy_output_file: str | None = field(default=None, metadata={"help": "Also write codecarbon's CSV here."})
    progress: bool = field(default=True, metadata={"help": "Progress bars."})

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise DataSourceError(f"evaluation text source must be a non-empty string, got {self.text!r}")
        check_int("seq_len", self.seq_len, 2)
        for name in ("batch_size", "sample_tokens", "repeats", "prefill_batch", "energy_batch", "energy_rounds"):
            check_int(name, getattr(self, name), 1)
        check_int("new_tokens", self.new_tokens, 2)
        check_int("energy_new_tokens", self.energy_new_tokens, 1)
        for name in ("max_windows", "task_limit"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        self.decode_batches = [check_int("decode_batches[]", b, 1) for b in self.decode_batches]
        self.tasks = parse_task_list(self.tasks)
        if self.energy:
            self.country_iso_code = check_country_iso(self.country_iso_code)

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
            raise ValueError(f"evaluation settings must be True, a dict or an EvaluationConfig, got {value!r}")
        base.update(overrides)
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(base) - set(allowed))
        if unknown:
            raise ValueError(f"unknown evaluation setting(s) {unknown}; allowed: {allowed}")
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def full(cls, value: "EvaluationConfig | Mapping | bool") -> "EvaluationConfig":
        """Settings of ``from_pretrained(..., evaluate=value)``: efficiency and energy on unless turned off."""
        if isinstance(value, cls):
            return value
        if value is True:
            value = {}
        if not isinstance(value, Mapping):
            raise ValueError(f"evaluate must be True, a dict of evaluation settings or an EvaluationConfig, got {value!r}")
        return cls.coerce({**FULL_EVALUATION, **value})


@dataclass
class EvaluationData:
    """The data every evaluated model sees: loaded once, so all models are measured identically."""

    config: EvaluationConfig
    texts: list[str]
    tasks: list[Task]
    text_tokens: int


def check_seq_len(model_config, seq_len: int, name: str = "the model") -> None:
    """Raise ValueError when ``seq_len`` exceeds the model's context length."""
    limit = context_length(model_config)
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len={seq_len} is longer than the context of {name} ({limit} tokens); "
                         f"use --seq-len / seq_len <= {limit}")


def prepare_evaluation(config: EvaluationConfig, tokenizer, model_config=None) -> EvaluationData:
    """Load and check the text and the tasks, and ``seq_len`` against ``model_config`` when given.

    Raises before any model work: DataSourceError, TaskError, ValueError.
    """
    if model_config is not None:
        check_seq_len(model_config, config.seq_len)
    texts = load_texts(config.text, config.text_column)
    tokens = tokenize_texts(texts, tokenizer).numel()
    if tokens < config.seq_len:
        raise DataSourceError(f"evaluation text {config.text!r} has {tokens} tokens, fewer than one window of "
                              f"seq_len={config.seq_len}; use more text or a smaller seq_len")
    return EvaluationData(config, texts, load_tasks(config.tasks, config.task_limit), tokens)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    found = {"pruning_hf": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "evaluate", "datasets", "codecarbon", "accelerate"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _model_info(model) -> dict[str, Any]:
    from ..devices import execution_device

    return {"name_or_path": getattr(model.config, "name_or_path", None) or getattr(model, "name_or_path", None),
            "model_type": getattr(model.config, "model_type", None), "dtype": str(getattr(model, "dtype", "")),
            "device": str(execution_device(model.get_input_embeddings()))}


def _evaluate_entry(model, tokenizer, data: EvaluationData, name: str, energy: EnergyTracker | None) -> dict:
    """Quality of one in-memory model on prepared data -> one ``models[]`` entry (costs: :func:`_measure_costs`)."""
    config = data.config
    check_seq_len(model.config, config.seq_len, name)
    model.eval()
    report = getattr(model, "pruning_report", None)
    entry: dict[str, Any] = {"name": name, "model": _model_info(model), "pruning": report.to_dict() if report else None,
                             "tasks": {}, "samples": None, "efficiency": None, "energy": None}
    with energy.phase(f"{name}/perplexity") if energy is not None else nullcontext() as record:
        entry["perplexity"] = load_metric("perplexity").compute(
            texts=data.texts, model=model, tokenizer=tokenizer, seq_len=config.seq_len, max_windows=config.max_windows,
            batch_size=config.batch_size, keep_partial=config.keep_partial, progress=config.progress)
    if record is not None:
        entry["energy"] = {"perplexity": record.to_dict()}
    for task in data.tasks:
        entry["tasks"][task.name] = run_task(model, tokenizer, task, config.batch_size, config.progress)
    if config.samples:
        entry["samples"] = greedy_samples(model, tokenizer, DEFAULT_PROMPTS, config.sample_tokens)
    return entry


def _measure_costs(models: Mapping[str, Any], entries: Mapping[str, dict], config: EvaluationConfig,
                   energy: EnergyTracker | None) -> None:
    """Efficiency and the energy of the fixed generation workload, filled into ``entries``.

    With several models, their runs alternate round by round (see :func:`measure_efficiencies`).
    """
    if config.efficiency:
        from .efficiency import measure_efficiencies

        results = measure_efficiencies(models, prefill_batch=config.prefill_batch, prefill_seq_len=config.seq_len,
                                       decode_batches=config.decode_batches, new_tokens=config.new_tokens,
                                       repeats=config.repeats, disk=config.disk)
        for name, result in results.items():
            entries[name]["efficiency"] = result
    if energy is None:
        return
    tokens = config.energy_batch * config.energy_new_tokens
    workloads = {name: partial(greedy_generate, model, synthetic_prompts(model, config.energy_batch, 32),
                               config.energy_new_tokens, fixed_length=True) for name, model in models.items()}
    rounds: dict[str, list[PhaseEnergy]] = {name: [] for name in models}
    for index in range(config.energy_rounds):
        for name, run in workloads.items():
            with energy.phase(f"{name}/generation/{index}", tokens) as record:
                run()
            rounds[name].append(record)
    for name, records in rounds.items():
        entries[name]["energy"]["generation"] = PhaseEnergy.combined("generation", records).to_dict()


# --- the report --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Row:
    label: str
    get: Callable[[dict], float | None]
    fmt: str = "{:.4g}"
    kind: str = "ratio"  # "ratio": value / baseline; "delta": value - baseline (accuracies, in points)


def _path(*keys: str) -> Callable[[dict], float | None]:
    def get(entry: dict) -> float | None:
        value: Any = entry
        for key in keys:
            if not isinstance(value, dict) or value.get(key) is None:
                return None
            value = value[key]
        return value
    return get


def _scaled(getter: Callable[[dict], float | None], factor: float) -> Callable[[dict], float | None]:
    return lambda entry: None if getter(entry) is None else getter(entry) * factor


def _rows(report: "EvaluationReport") -> list[_Row]:
    rows = [_Row("perplexity", _path("perplexity", "perplexity"), "{:.3f}")]
    tasks = report.data.get("tasks", {})
    for name, info in tasks.items():
        rows.append(_Row(f"{name} acc (%)", _scaled(_path("tasks", name, "acc"), 100), "{:.1f}", "delta"))
        key = "perplexity" if info.get("kind") == LAST_WORD else "acc_norm"
        if key == "acc_norm":
            rows.append(_Row(f"{name} acc_norm (%)", _scaled(_path("tasks", name, key), 100), "{:.1f}", "delta"))
        else:
            rows.append(_Row(f"{name} perplexity", _path("tasks", name, key), "{:.3f}"))
    eff = ("efficiency",)
    rows += [
        _Row("non-zero parameters (M)", _scaled(_path(*eff, "parameters", "nonzero"), 1e-6), "{:.2f}"),
        _Row("checkpoint (MB)", _scaled(_path(*eff, "checkpoint_bytes"), 1e-6), "{:.1f}"),
        _Row("GFLOPs / token", _scaled(_path(*eff, "flops_per_token", "total"), 1e-9), "{:.3f}"),
        _Row("GFLOPs / token a sparse kernel could skip", _scaled(_path(*eff, "flops_per_token", "sparse_skippable"),
                                                                  1e-9), "{:.3f}"),
        _Row("prefill latency (ms)", _scaled(_path(*eff, "prefill", "median_seconds"), 1e3), "{:.1f}"),
    ]
    batches = sorted({b for entry in report.models for b in (entry.get("efficiency") or {}).get("decode", {})}, key=int)
    rows += [_Row(f"decode tokens/s, batch {b}", _path(*eff, "decode", b, "tokens_per_second"), "{:.1f}")
             for b in batches]
    rows += [
        _Row("peak RSS of the process (MB)", _scaled(_path(*eff, "memory", "peak_rss_bytes"), 1e-6), "{:.0f}"),
        _Row("peak GPU memory (MB)", _scaled(_path(*eff, "memory", "peak_gpu_bytes"), 1e-6), "{:.0f}"),
        _Row("energy, generation (Wh / 1k tokens)", _scaled(_path("energy", "generation", "kwh_per_1k_tokens"), 1e3)),
        _Row("CO2e, generation (g / 1k tokens)", _path("energy", "generation", "g_per_1k_tokens")),
        _Row("energy, pruning (Wh)", _scaled(_path("energy", "pruning", "energy_kwh"), 1e3)),
        _Row("CO2e, pruning (g)", _path("energy", "pruning", "emissions_g")),
        _Row("pruning time (s)", _path("pruning", "total_seconds"), "{:.1f}"),
        _Row("achieved sparsity (%)", _scaled(_path("pruning", "sparsity"), 100), "{:.1f}"),
    ]
    return [row for row in rows if any(row.get(entry) is not None for entry in report.models)]


@dataclass
class EvaluationReport:
    """One or more models measured on identical data (see the module docstring for the JSON schema)."""

    settings: dict[str, Any]
    data: dict[str, Any]
    models: list[dict[str, Any]]
    energy: dict[str, Any] | None = None
    versions: dict[str, Any] = field(default_factory=_versions)
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

    def ratios(self) -> dict[str, dict[str, float]]:
        """``{model: {row label: value / baseline}}`` (accuracy rows: difference in points)."""
        base = self.models[0]
        result = {}
        for entry in self.models[1:]:
            values = {}
            for row in _rows(self):
                ours, theirs = row.get(entry), row.get(base)
                if ours is None or theirs is None:
                    continue
                if row.kind == "delta":
                    values[row.label] = ours - theirs
                elif theirs:
                    values[row.label] = ours / theirs
            result[entry["name"]] = values
        return result

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "created": self.created, "versions": self.versions, "settings": self.settings,
                "data": self.data, "baseline": self.baseline, "models": self.models, "energy": self.energy,
                "ratios": self.ratios()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvaluationReport":
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a pruning_hf evaluation report (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        return cls(settings=data["settings"], data=data["data"], models=data["models"], energy=data.get("energy"),
                   versions=data.get("versions", {}), created=data.get("created", ""))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EvaluationReport":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self, samples: bool = True) -> str:
        """One table (metrics x models, ratio or difference against the first model), its context, samples."""
        names = [entry["name"] for entry in self.models]
        lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        base = self.models[0]
        for row in _rows(self):
            cells = []
            for index, entry in enumerate(self.models):
                value, reference = row.get(entry), row.get(base)
                if value is None:
                    cells.append("–")
                    continue
                cell = row.fmt.format(value)
                if index and reference is not None:
                    if row.kind == "delta":
                        cell += f" ({value - reference:+.1f})"
                    elif reference:
                        cell += f" ({value / reference:.2f}x)"
                cells.append(cell)
            lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
        lines += ["", self._caption()]
        if samples and any(entry.get("samples") for entry in self.models):
            lines += ["", "Greedy samples:", ""]
            prompts = [s["prompt"] for s in next(e["samples"] for e in self.models if e.get("samples"))]
            for i, prompt in enumerate(prompts):
                lines.append(f"- *{prompt}*")
                for entry in self.models:
                    if entry.get("samples"):
                        text = " ".join(entry["samples"][i]["completion"].split())
                        lines.append(f"  - {entry['name']}: {text}")
        return "\n".join(lines)

    def _caption(self) -> str:
        text = self.data.get("text", {})
        parts = [f"Perplexity: {_display_path(text.get('source'))}, {text.get('windows')} windows x {text.get('seq_len')} tokens "
                 f"({text.get('tokens'):,} predicted tokens)." if text.get("tokens") is not None else ""]
        for name, info in self.data.get("tasks", {}).items():
            parts.append(f"{name}: {info['examples']} examples from {_display_path(info['source'])}.")
        eff = next((e["efficiency"] for e in self.models if e.get("efficiency")), None)
        if eff:
            decode = next(iter(eff["decode"].values()))
            threads = f"{eff['threads']} thread{'s' if eff['threads'] != 1 else ''}"
            together = " (models timed side by side, round by round)" if eff.get("timed_with") else ""
            parts.append(f"Speed{together}: {eff['device']}, {threads}, median of {eff['repeats']} after "
                         f"{eff['warmup']} warm-up; prefill batch {eff['prefill']['batch']} x {eff['prefill']['seq_len']}, "
                         f"decode {decode['new_tokens']} new tokens after a {decode['prompt_len']}-token prompt.")
        if self.energy:
            parts.append(f"Energy: codecarbon {self.energy['codecarbon_version']}, "
                         f"{self.energy['tracking']['summary']}; grid {self.energy['country_iso_code']}; "
                         f"generation workload {self.settings.get('energy_batch')} x "
                         f"{self.settings.get('energy_new_tokens')} tokens x {self.settings.get('energy_rounds', 1)} "
                         "round(s) per model.")
        return " ".join(p for p in parts if p)

    def save(self, json_path: str | os.PathLike, markdown_path: str | os.PathLike | None = None) -> None:
        """Write JSON (and markdown); each file is written to a temporary name, then renamed."""
        for path, content in ((json_path, self.to_json()), (markdown_path, self.to_markdown())):
            if path is None:
                continue
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(content + "\n", encoding="utf-8")
            os.replace(tmp, path)


def _display_path(source: str | None) -> str | None:
    """A file path under the current folder is shown relative to it (shorter tables)."""
    if source and os.path.isabs(source) and Path(source).is_relative_to(Path.cwd()):
        return os.path.relpath(source)
    return source


def _data_summary(data: EvaluationData, entries: list[dict]) -> dict[str, Any]:
    ppl = entries[0]["perplexity"]
    return {"text": {"source": data.config.text, "tokens": ppl["tokens"], "windows": ppl["windows"],
                     "seq_len": ppl["seq_len"], "text_tokens": data.text_tokens},
            "tasks": {t.name: {"source": t.source, "kind": t.kind, "examples": len(t.examples)} for t in data.tasks}}


def _build(data: EvaluationData, entries: list[dict], energy: EnergyTracker | None) -> EvaluationReport:
    energy_info = None
    if energy is not None:
        energy_info = {k: v for k, v in energy.to_dict().items() if k != "phases"}
    return EvaluationReport(settings=data.config.to_dict(), data=_data_summary(data, entries), models=entries,
                            energy=energy_info)


def model_config(model_or_path, load_kwargs: Mapping[str, Any] | None = None):
    """A loaded model's config, or the config of a folder / Hub id read without loading weights."""
    if not isinstance(model_or_path, str):
        return model_or_path.config
    from transformers import AutoConfig

    from ..modeling import ModelLoadError

    try:
        return AutoConfig.from_pretrained(model_or_path, trust_remote_code=(load_kwargs or {}).get("trust_remote_code", False))
    except Exception as err:  # OSError, ValueError, HTTP errors ...
        raise ModelLoadError(f"cannot read the config of model {model_or_path!r}: {err}") from None


def _energy_tracker(config: EvaluationConfig) -> EnergyTracker | None:
    return EnergyTracker(config.country_iso_code, config.energy_output_file) if config.energy else None


def _prepared(config, tokenizer, overrides: dict) -> EvaluationData:
    if isinstance(config, EvaluationData):
        if overrides:
            raise ValueError("pass settings either in the prepared EvaluationData or as keywords, not both")
        return config
    return prepare_evaluation(EvaluationConfig.coerce(config, **overrides), tokenizer)


class _Session:
    """The entries of one report: each model's costs are measured right after its quality, or, with
    ``side_by_side``, for all kept models together at the end."""

    def __init__(self, data: EvaluationData, energy: EnergyTracker | None) -> None:
        self.data, self.energy = data, energy
        self.entries: dict[str, dict] = {}
        self.kept: dict[str, Any] = {}

    def add(self, name: str, model, tokenizer, keep_copy: bool = False) -> dict:
        """Evaluate ``model``; with ``keep_copy`` a side-by-side run keeps a copy (the caller changes it next)."""
        if name in self.entries:
            raise ValueError(f"two models are named {name!r}; names must be unique")
        self.entries[name] = _evaluate_entry(model, tokenizer, self.data, name, self.energy)
        if self.data.config.side_by_side:
            self.kept[name] = copy.deepcopy(model) if keep_copy else model
        else:
            _measure_costs({name: model}, self.entries, self.data.config, self.energy)
        return self.entries[name]

    def report(self) -> EvaluationReport:
        """Measure the kept models side by side (call while the energy tracker runs), then build the report."""
        if self.kept:
            _measure_costs(self.kept, self.entries, self.data.config, self.energy)
            self.kept.clear()
        return _build(self.data, list(self.entries.values()), self.energy)


def evaluate_model(model, tokenizer=None, config: EvaluationConfig | Mapping | EvaluationData | None = None, *,
                   name: str = "model", **settings: Any) -> EvaluationReport:
    """Measure one model. ``settings`` are :class:`EvaluationConfig` fields, e.g.::

        evaluate_model(model, tok, text="embedded", seq_len=512, max_windows=40,
                       tasks=["piqa", "arc_easy"], efficiency=True, energy=True)
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("evaluate_model needs the model's tokenizer (tokenizer=...)")
    data = _prepared(config, tokenizer, settings)
    check_seq_len(model.config, data.config.seq_len, name)
    energy = _energy_tracker(data.config)
    session = _Session(data, energy)
    with energy if energy is not None else nullcontext():
        session.add(name, model, tokenizer)
        return session.report()


def compare_models(models: Mapping[str, Any], tokenizer=None, config: EvaluationConfig | Mapping | EvaluationData | None = None,
                   *, load_kwargs: Mapping[str, Any] | None = None, **settings: Any) -> EvaluationReport:
    """Measure several models on identical data; the first is the baseline of every ratio.

    ``models`` maps a display name to a loaded model or to a model name / folder (loaded one at a
    time with :class:`~pruning_hf.AutoPrunedModel`, then released). ``tokenizer`` defaults to the
    first model's. Everything is validated (text, tasks, context lengths, country) before the
    first model is evaluated.
    """
    from ..modeling import AutoPrunedModel, load_tokenizer, resolve_name

    if not models:
        raise ValueError("compare_models needs at least one model")
    load_kwargs = dict(load_kwargs or {})
    items = [(name, resolve_name(value) if isinstance(value, (str, os.PathLike)) else value)
             for name, value in models.items()]
    if tokenizer is None:
        first = items[0][1]
        tokenizer = load_tokenizer(first, **load_kwargs) if isinstance(first, str) else getattr(first, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("pass tokenizer=...: the first model carries none")
    data = _prepared(config, tokenizer, settings)
    for name, value in items:
        check_seq_len(model_config(value, load_kwargs), data.config.seq_len, name)
    energy = _energy_tracker(data.config)
    session = _Session(data, energy)
    with energy if energy is not None else nullcontext():
        for name, value in items:
            model = AutoPrunedModel.from_pretrained(value, progress=data.config.progress, **load_kwargs) \
                if isinstance(value, str) else value
            session.add(name, model, tokenizer)
            del model
        return session.report()


def prune_and_compare(model, tokenizer, pruning, config: EvaluationConfig | Mapping | EvaluationData | None = None,
                      *, progress: bool | None = None, dense_name: str = "dense",
                      load_kwargs: Mapping[str, Any] | None = None, prune_options: Mapping[str, Any] | None = None,
                      **settings: Any) -> EvaluationReport:
    """Evaluate a model dense, prune it (energy tracked), evaluate it again: one process, identical data.

    Args:
        model: a loaded model, pruned in place (with several configs, all but the last prune a deep
            copy), or a model name / folder, loaded afresh for the dense run and for each pruning.
        pruning: a PruningConfig (or its dict / YAML path), or ``{display name: config}`` to compare
            several prunings of the same dense model.
        config / settings: evaluation settings (:class:`EvaluationConfig` fields) or prepared data.
        progress: progress bars while pruning (and evaluating, unless prepared data says otherwise);
            default: the evaluation settings' ``progress``.
        load_kwargs: passed to ``from_pretrained`` when ``model`` is a name.
        prune_options: keywords for :func:`pruning_hf.prune` (e.g. ``activation_storage``).

    Each pruned entry carries its pruning report and, with ``energy=True``, a ``pruning`` energy
    phase. With a single config and a loaded model, the report is also attached as
    ``model.evaluation_report`` (``save_pretrained`` writes it as ``evaluation_report.json``).
    """
    from ..modeling import AutoPrunedModel, _coerce_config, load_tokenizer, prune, resolve_name

    single = not isinstance(pruning, Mapping) or "method" in pruning
    runs = {None: _coerce_config(pruning)} if single else {name: _coerce_config(c) for name, c in pruning.items()}
    if not runs:
        raise ValueError("prune_and_compare needs at least one pruning config")
    load_kwargs = dict(load_kwargs or {})
    from_name = isinstance(model, (str, os.PathLike))
    if from_name:
        model = resolve_name(model)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model, **load_kwargs)
    if progress is not None and not isinstance(config, EvaluationData):
        settings["progress"] = progress
    data = _prepared(config, tokenizer, settings)
    progress = data.config.progress if progress is None else progress
    check_seq_len(model_config(model, load_kwargs), data.config.seq_len, dense_name)

    def fresh(last: bool):
        if from_name:
            return AutoPrunedModel.from_pretrained(model, progress=progress, **load_kwargs)
        return model if last else copy.deepcopy(model)

    energy = _energy_tracker(data.config)
    session = _Session(data, energy)
    with energy if energy is not None else nullcontext():
        session.add(dense_name, fresh(last=False) if from_name else model, tokenizer, keep_copy=not from_name)
        for index, (name, pruning_config) in enumerate(runs.items()):
            name = name or pruning_config.describe()
            target = fresh(last=index == len(runs) - 1)
            with energy.phase(f"{name}/pruning") if energy is not None else nullcontext() as pruning_energy:
                prune(target, pruning_config, tokenizer, progress=progress, **(prune_options or {}))
            entry = session.add(name, target, tokenizer)
            if pruning_energy is not None:
                entry["energy"]["pruning"] = pruning_energy.to_dict()
            del target
        report = session.report()
    if single and not from_name:
        model.evaluation_report = report
    return report
