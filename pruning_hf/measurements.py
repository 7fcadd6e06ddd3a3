"""What sweeps, recipes and model cards measure on a model: quality, size, speed, energy.

:func:`measure_model` is the one adapter between those features and the measuring code: every
number in a sweep table, a recipe check or a card's dense-vs-pruned table comes from it, under the
metric names in :data:`METRICS`. Energy comes from codecarbon's offline tracker (no network; on a
machine without RAPL it *estimates* CPU power from load, which :func:`energy_meter` reports as
``tracking_mode`` / ``source`` so nobody mistakes it for a meter reading).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

import torch

from .calibration import load_texts, tokenize_texts
from .config import check_int
from .evaluation.efficiency import measure_efficiency, parameter_counts
from .evaluation.energy import DEFAULT_COUNTRY_ISO as DEFAULT_COUNTRY
from .evaluation.energy import EnergyTracker, check_country_iso, country_name, describe_source
from .evaluation.perplexity import perplexity
from .evaluation.tasks import TASK_SUFFIX, load_tasks, parse_task_list, run_task, task_names

__all__ = ["METRICS", "TASK_SUFFIX", "is_metric", "MeasureSettings", "evaluation_tokens", "measure_model", "energy_meter",
           "prune_measured", "relative_metrics", "DEFAULT_COUNTRY"]


#: metric name -> (description, unit); the columns of sweep tables and the keys recipes may expect.
METRICS: dict[str, tuple[str, str]] = {
    "perplexity": ("perplexity on the evaluation text", ""),
    "ppl_increase": ("perplexity increase over the dense model", "fraction"),
    "sparsity": ("achieved sparsity of the pruned (targeted) weights", "fraction"),
    "params_total": ("parameters (shared ones counted once)", "count"),
    "params_nonzero": ("non-zero parameters", "count"),
    "size_ratio": ("non-zero parameters relative to the dense model", "fraction"),
    "weight_bytes": ("bytes of the weights as stored densely (safetensors)", "bytes"),
    "prefill_ms": ("median latency of one forward pass, batch 1 x eval seq_len", "ms"),
    "decode_tokens_per_s": ("greedy decode speed at batch 1", "tokens/s"),
    "energy_kwh": ("energy of the perplexity workload (codecarbon)", "kWh"),
    "emissions_g": ("CO2-equivalent of the perplexity workload (codecarbon)", "g"),
    "energy_wh_per_1k_tokens": ("energy per 1000 evaluated tokens", "Wh"),
    "pruning_seconds": ("wall time of the pruning run", "s"),
    "pruning_energy_kwh": ("energy of the pruning run (codecarbon)", "kWh"),
    "pruning_emissions_g": ("CO2-equivalent of the pruning run (codecarbon)", "g"),
}
def is_metric(name: str) -> bool:
    """A metric of :data:`METRICS` or a task accuracy (``<task>_acc``)."""
    return name in METRICS or name.endswith(TASK_SUFFIX)


@dataclass
class MeasureSettings:
    """How a model is measured; the same settings for every model compared."""

    text: str = field(default="embedded@test", metadata={"help": "Evaluation text source (see calibration)."})
    seq_len: int = field(default=512, metadata={"help": "Tokens per evaluation window."})
    max_windows: int | None = field(default=40, metadata={"help": "Windows evaluated (None: the whole text)."})
    text_column: str = field(default="text", metadata={"help": "Text column of datasets / JSONL."})
    batch_size: int = field(default=4, metadata={"help": "Windows per forward pass."})
    efficiency: bool = field(default=False, metadata={"help": "Measure prefill latency and decode tokens/s."})
    energy: bool = field(default=False, metadata={"help": "Measure energy and CO2e with codecarbon."})
    country_iso_code: str = field(default=DEFAULT_COUNTRY, metadata={"help": (
        "ISO 3166-1 alpha-3 country whose grid carbon intensity codecarbon uses.")})
    tasks: list[str] = field(default_factory=list, metadata={"help": (
        "Accuracy tasks (piqa, arc_easy, ... or NAME=FILE.jsonl, see pruning_hf.evaluation.tasks); each adds "
        "a metric <name>_acc.")})
    task_limit: int | None = field(default=None, metadata={"help": "First N examples of each task (None: all)."})
    repeats: int = field(default=5, metadata={"help": "Timed repeats (median) for latency."})
    decode_tokens: int = field(default=32, metadata={"help": "Tokens generated for the decode speed."})

    def __post_init__(self) -> None:
        check_int("seq_len", self.seq_len, 2)
        if self.max_windows is not None:
            check_int("max_windows", self.max_windows, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("repeats", self.repeats, 1)
        check_int("decode_tokens", self.decode_tokens, 1)
        self.tasks = parse_task_list(self.tasks)
        if self.task_limit is not None:
            check_int("task_limit", self.task_limit, 1)
        if self.energy:
            self.country_iso_code = check_country_iso(self.country_iso_code)

    def to_dict(self) -> dict:
        return asdict(self)

    def metric_names(self) -> list[str]:
        """The metrics :func:`measure_model` returns under these settings."""
        names = ["perplexity", "params_total", "params_nonzero", "weight_bytes"]
        names += [f"{name}{TASK_SUFFIX}" for name in task_names(self.tasks)]
        if self.efficiency:
            names += ["prefill_ms", "decode_tokens_per_s"]
        if self.energy:
            names += ["energy_kwh", "emissions_g", "energy_wh_per_1k_tokens"]
        return names


def evaluation_tokens(settings: MeasureSettings, tokenizer) -> torch.Tensor:
    """The evaluation text as one 1-D token tensor (tokenize once, measure many models on it)."""
    return tokenize_texts(load_texts(settings.text, settings.text_column), tokenizer)


@functools.lru_cache(maxsize=8)
def _tasks(specs: tuple[str, ...], limit: int | None) -> list:
    """Tasks loaded once per process (every point of a sweep is scored on the same examples)."""
    return load_tasks(list(specs), limit)


def _parameter_counts(model) -> dict[str, int]:
    counts = parameter_counts(model)
    return {"params_total": counts["total"], "params_nonzero": counts["nonzero"], "weight_bytes": counts["bytes"]}


def _speed(model, settings: MeasureSettings) -> dict[str, float]:
    """Prefill latency (batch 1 x ``seq_len``) and batch-1 decode speed, from the evaluation package."""
    measured = measure_efficiency(model, prefill_seq_len=settings.seq_len, decode_batches=(1,),
                                  new_tokens=settings.decode_tokens, repeats=settings.repeats, disk=False)
    return {"prefill_ms": measured["prefill"]["median_seconds"] * 1000,
            "decode_tokens_per_s": measured["decode"]["1"]["tokens_per_second"]}


@contextmanager
def energy_meter(country_iso_code: str = DEFAULT_COUNTRY) -> Iterator[dict]:
    """Measure the energy of the ``with`` block with :class:`~pruning_hf.evaluation.EnergyTracker`.

    Yields a dict filled on exit: ``energy_kwh``, ``emissions_g`` (grams; codecarbon reports kg),
    ``duration_s``, ``country_iso_code``, ``hardware``, ``tracking_mode`` and ``source`` (what was
    measured and what estimated).
    """
    result: dict = {}
    with EnergyTracker(country_iso_code) as tracker:
        with tracker.phase("workload") as phase:
            yield result
    tracking = tracker.tracking or {}
    result.update(energy_kwh=phase.energy_kwh, emissions_g=phase.emissions_g, duration_s=phase.seconds,
                  country=country_name(tracker.country_iso_code), country_iso_code=tracker.country_iso_code,
                  hardware=tracking.get("hardware", "?"), tracking_mode=tracking.get("tracking_mode"),
                  source=describe_source(tracker.to_dict()))


def measure_model(model, tokenizer, tokens: torch.Tensor, settings: MeasureSettings) -> dict[str, float]:
    """Measure one model on pre-tokenized evaluation ``tokens`` (see :func:`evaluation_tokens`).

    Returns the metrics of ``settings.metric_names()`` (see :data:`METRICS`), plus ``eval_tokens``,
    ``eval_windows`` and, with energy on, ``energy_info`` (how the energy was measured).
    """
    model.eval()
    if settings.energy:
        with energy_meter(settings.country_iso_code) as energy:
            quality = perplexity(model, tokens, settings.seq_len, settings.max_windows, settings.batch_size)
    else:
        quality, energy = perplexity(model, tokens, settings.seq_len, settings.max_windows, settings.batch_size), None
    result: dict = {"perplexity": quality["perplexity"], "eval_tokens": quality["tokens"],
                    "eval_windows": quality["windows"], **_parameter_counts(model)}
    for task in _tasks(tuple(settings.tasks), settings.task_limit):
        result[f"{task.name}{TASK_SUFFIX}"] = run_task(model, tokenizer, task, settings.batch_size)["acc"]
    if settings.efficiency:
        result.update(_speed(model, settings))
    if energy is not None:
        result.update(energy_kwh=energy["energy_kwh"], emissions_g=energy["emissions_g"],
                      energy_wh_per_1k_tokens=energy["energy_kwh"] * 1e6 / quality["tokens"],
                      energy_info={k: energy[k] for k in ("country", "hardware", "tracking_mode", "source")})
    return result


def prune_measured(model, config, tokenizer, windows, settings: MeasureSettings, progress: bool = True) -> dict:
    """Prune ``model`` in place (under an energy meter when ``settings.energy``).

    Returns ``{"report": PruningReport, "metrics": {sparsity, pruning_seconds[, pruning_energy_kwh,
    pruning_emissions_g]}, "energy": energy_meter dict or None}``.
    """
    from .modeling import prune

    energy = None
    if settings.energy:
        with energy_meter(settings.country_iso_code) as energy:
            report = prune(model, config, tokenizer, progress=progress, windows=windows)
    else:
        report = prune(model, config, tokenizer, progress=progress, windows=windows)
    metrics = {"sparsity": report.sparsity, "pruning_seconds": report.total_seconds}
    if energy is not None:
        metrics.update(pruning_energy_kwh=energy["energy_kwh"], pruning_emissions_g=energy["emissions_g"])
    return {"report": report, "metrics": metrics, "energy": energy}


def relative_metrics(pruned: dict, dense: dict) -> dict[str, float]:
    """``ppl_increase`` and ``size_ratio`` of a pruned model against the dense one."""
    return {"ppl_increase": pruned["perplexity"] / dense["perplexity"] - 1.0,
            "size_ratio": pruned["params_nonzero"] / dense["params_nonzero"]}
