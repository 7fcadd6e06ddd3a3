"""What sweeps, recipes and model cards measure on a model: quality, size, speed, energy.

:func:`measure_model` is the one adapter between those features and the measuring code: every
number in a sweep table, a recipe check or a card's dense-vs-pruned table comes from it, under the
metric names in :data:`METRICS`. Energy comes from codecarbon's offline tracker (no network; on a
machine without RAPL it *estimates* CPU power from load, which :func:`energy_meter` reports as
``tracking_mode`` / ``source`` so nobody mistakes it for a meter reading).
"""

from __future__ import annotations

import logging
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

import torch

from .calibration import load_texts, tokenize_texts
from .config import check_int
from .devices import execution_device
from .evaluation.perplexity import perplexity

__all__ = ["METRICS", "MeasureSettings", "evaluation_tokens", "measure_model", "energy_meter",
           "check_country", "prune_measured", "relative_metrics", "DEFAULT_COUNTRY"]

DEFAULT_COUNTRY = "USA"

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
    repeats: int = field(default=5, metadata={"help": "Timed repeats (median) for latency."})
    decode_tokens: int = field(default=32, metadata={"help": "Tokens generated for the decode speed."})

    def __post_init__(self) -> None:
        check_int("seq_len", self.seq_len, 2)
        if self.max_windows is not None:
            check_int("max_windows", self.max_windows, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("repeats", self.repeats, 1)
        check_int("decode_tokens", self.decode_tokens, 1)
        if self.energy:
            self.country_iso_code = check_country(self.country_iso_code)

    def to_dict(self) -> dict:
        return asdict(self)

    def metric_names(self) -> list[str]:
        """The metrics :func:`measure_model` returns under these settings."""
        names = ["perplexity", "params_total", "params_nonzero", "weight_bytes"]
        if self.efficiency:
            names += ["prefill_ms", "decode_tokens_per_s"]
        if self.energy:
            names += ["energy_kwh", "emissions_g", "energy_wh_per_1k_tokens"]
        return names


def evaluation_tokens(settings: MeasureSettings, tokenizer) -> torch.Tensor:
    """The evaluation text as one 1-D token tensor (tokenize once, measure many models on it)."""
    return tokenize_texts(load_texts(settings.text, settings.text_column), tokenizer)


def _parameter_counts(model) -> dict[str, int]:
    total = nonzero = weight_bytes = 0
    for param in model.parameters():  # shared (tied) parameters are yielded once
        total += param.numel()
        weight_bytes += param.numel() * param.element_size()
        if param.device.type != "meta":
            nonzero += int(torch.count_nonzero(param.detach()))
    return {"params_total": total, "params_nonzero": nonzero, "weight_bytes": weight_bytes}


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def _speed(model, tokens: torch.Tensor, settings: MeasureSettings) -> dict[str, float]:
    device = execution_device(model.get_input_embeddings())
    prompt = tokens[: settings.seq_len].unsqueeze(0).to(device)
    prefill = _median_seconds(lambda: model(input_ids=prompt, use_cache=False), settings.repeats)
    short = prompt[:, : min(32, prompt.shape[1])]
    new = settings.decode_tokens

    def decode():
        model.generate(short, attention_mask=torch.ones_like(short), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0)

    decode_seconds = _median_seconds(decode, max(1, settings.repeats // 2))
    return {"prefill_ms": prefill * 1000, "decode_tokens_per_s": new / decode_seconds}


def check_country(code: str) -> str:
    """``code`` if codecarbon knows its grid carbon intensity, else a ValueError listing examples."""
    from codecarbon.input import DataSource

    known = DataSource().get_global_energy_mix_data()
    if not isinstance(code, str) or code.upper() not in known:
        raise ValueError(f"country_iso_code={code!r} is not a country codecarbon knows; give an ISO 3166-1 "
                         f"alpha-3 code such as USA, FRA, DEU, GBR, CAN ({len(known)} are known)")
    return code.upper()


def _cpu_measurement(tracker) -> str:
    modes = {getattr(h, "_mode", None) for h in getattr(tracker, "_hardware", [])}
    if "intel_rapl" in modes or "intel_power_gadget" in modes:
        return "CPU energy read from RAPL counters"
    return "CPU power estimated from CPU load and TDP (no RAPL)"


@contextmanager
def energy_meter(country_iso_code: str = DEFAULT_COUNTRY) -> Iterator[dict]:
    """Measure the energy of the ``with`` block with codecarbon's offline tracker (no network, no file).

    Yields a dict filled on exit: ``energy_kwh``, ``emissions_g`` (grams; codecarbon reports kg),
    ``duration_s``, ``country``, ``hardware``, ``tracking_mode`` and ``source`` (what was measured).
    """
    from codecarbon import OfflineEmissionsTracker

    country = check_country(country_iso_code)
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    tracker = OfflineEmissionsTracker(country_iso_code=country, output_methods=[], log_level="error")
    result: dict = {}
    tracker.start()
    try:
        yield result
    finally:
        tracker.stop()
        data = tracker.final_emissions_data
        hardware = f"{data.cpu_model or 'CPU'} ({data.cpu_count} CPU threads)"
        if data.gpu_count:
            hardware += f", {data.gpu_count} x {data.gpu_model}"
        result.update(energy_kwh=float(data.energy_consumed), emissions_g=float(data.emissions) * 1000.0,
                      duration_s=float(data.duration), country=data.country_name or country,
                      country_iso_code=country, hardware=hardware, tracking_mode=data.tracking_mode,
                      source=f"codecarbon {data.codecarbon_version}: {_cpu_measurement(tracker)}, RAM model"
                             + (", GPU from NVML" if data.gpu_count else ""))


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
    if settings.efficiency:
        result.update(_speed(model, tokens, settings))
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
