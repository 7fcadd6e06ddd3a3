"""The markdown table of an evaluation report: one row per measured quantity, one column per model.

Timing rows show each value with the range of its rounds, and each ratio from the paired rounds
(:func:`~.rounds.paired_ratio`): "no measurable difference" when its interquartile range overlaps
1.0 +- 3% (:data:`~.rounds.NOISE`).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Any, Callable

from .rounds import NOISE, paired_ratio
from .tasks import LAST_WORD

__all__ = ["table_rows", "markdown", "display_path", "timing_ratio"]


@dataclass(frozen=True)
class _Row:
    label: str
    get: Callable[[dict], float | None]
    fmt: str = "{:.4g}"
    kind: str = "ratio"  # "ratio": value / baseline; "delta": value - baseline (accuracies, in points)
    rounds: Callable[[dict], list | None] | None = None  # per-round seconds of a timing row
    rate: bool = False    # the value is per second: its ratio is the inverse of the time ratio
    metric: str | None = None  # its flat metric (evaluation.report.METRICS), for timing rows


def timing_ratio(row: _Row, entry: dict, base: dict) -> dict | None:
    """The paired-rounds ratio of a timing row (value / baseline value), or None if not paired."""
    ours, theirs = (row.rounds(entry), row.rounds(base)) if row.rounds else (None, None)
    together = base.get("name") in ((entry.get("efficiency") or {}).get("timing") or {}).get("with", ())
    if not ours or not theirs or not together:  # rounds of one model pair only with rounds run beside them
        return None
    return paired_ratio(theirs, ours) if row.rate else paired_ratio(ours, theirs)


def _timing_cell(row: _Row, entry: dict, base: dict | None, value: float) -> str:
    rounds = row.rounds(entry) if row.rounds else None
    cell = row.fmt.format(value)
    if rounds and len(rounds) > 1:
        middle = statistics.median(rounds)
        values = [value * (middle / r if row.rate else r / middle) for r in rounds]
        cell += f" [{row.fmt.format(min(values))}–{row.fmt.format(max(values))}]"
    if base is None:
        return cell
    ratio = timing_ratio(row, entry, base)
    if ratio is None and rounds:  # timed apart from the baseline: their times are from different moments
        return cell + " (timed apart: no ratio)"
    if ratio is None:  # a report written before timings kept their rounds: one median each
        reference = row.get(base)
        return cell + (f" ({value / reference:.2f}x, median only, no spread recorded)" if reference else "")
    spread = f"{ratio['q1']:.2f}–{ratio['q3']:.2f}x"
    if not ratio["measurable"]:
        return cell + f" (no measurable difference: {spread})"
    return cell + f" ({ratio['ratio']:.2f}x, {spread})"


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


def table_rows(report) -> list[_Row]:
    """The rows a report shows: those with a value for at least one model."""
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
        _Row("non-zero parameters (M)", _scaled(_path("size", "parameters", "nonzero"), 1e-6), "{:.2f}"),
        _Row("checkpoint (MB)", _scaled(_path(*eff, "checkpoint_bytes"), 1e-6), "{:.1f}"),
        _Row("GFLOPs / token", _scaled(_path(*eff, "flops_per_token", "total"), 1e-9), "{:.3f}"),
        _Row("GFLOPs / token a sparse kernel could skip", _scaled(_path(*eff, "flops_per_token", "sparse_skippable"),
                                                                  1e-9), "{:.3f}"),
        _Row("prefill latency (ms)", _scaled(_path(*eff, "prefill", "median_seconds"), 1e3), "{:.1f}",
             rounds=_path(*eff, "prefill", "rounds_seconds"), metric="prefill_ms"),
    ]
    batches = sorted({b for entry in report.models for b in (entry.get("efficiency") or {}).get("decode", {})}, key=int)
    rows += [_Row(f"decode tokens/s, batch {b}", _path(*eff, "decode", b, "tokens_per_second"), "{:.1f}",
                  rounds=_path(*eff, "decode", b, "rounds_decode_seconds"), rate=True,
                  metric="decode_tokens_per_s" if b == min(batches, key=int) else None)
             for b in batches]
    rows += [
        _Row("peak memory of the model (MB)", _scaled(_path(*eff, "memory", "peak_bytes"), 1e-6), "{:.0f}"),
        _Row("peak RSS of the process (MB)", _scaled(_path(*eff, "memory", "peak_rss_bytes"), 1e-6), "{:.0f}"),
        _Row("peak GPU memory of the model (MB)", _scaled(_path(*eff, "memory", "peak_gpu_bytes"), 1e-6), "{:.0f}"),
        _Row("energy, generation (Wh / 1k tokens)", _scaled(_path("energy", "generation", "kwh_per_1k_tokens"), 1e3)),
        _Row("CO2e, generation (g / 1k tokens)", _path("energy", "generation", "g_per_1k_tokens")),
        _Row("energy, pruning (Wh)", _scaled(_path("energy", "pruning", "energy_kwh"), 1e3)),
        _Row("CO2e, pruning (g)", _path("energy", "pruning", "emissions_g")),
        _Row("pruning time (s)", _path("pruning", "total_seconds"), "{:.1f}"),
        _Row("achieved sparsity (%)", _scaled(_path("pruning", "sparsity"), 100), "{:.1f}"),
    ]
    return [row for row in rows if any(row.get(entry) is not None for entry in report.models)]



def markdown(report, samples: bool = True) -> str:
    """One table (metrics x models, ratio or difference against the first model), its context, samples."""
    names = [entry["name"] for entry in report.models]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    base = report.models[0]
    for row in table_rows(report):
        cells = []
        for index, entry in enumerate(report.models):
            value, reference = row.get(entry), row.get(base)
            if value is None:
                cells.append("–")
                continue
            if row.rounds is not None:
                cells.append(_timing_cell(row, entry, base if index else None, value))
                continue
            cell = row.fmt.format(value)
            if index and reference is not None:
                if row.kind == "delta":
                    cell += f" ({value - reference:+.1f})"
                elif reference:
                    cell += f" ({value / reference:.2f}x)"
            cells.append(cell)
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    lines += ["", _caption(report)]
    if samples and any(entry.get("samples") for entry in report.models):
        lines += ["", "Greedy samples:", ""]
        prompts = [s["prompt"] for s in next(e["samples"] for e in report.models if e.get("samples"))]
        for i, prompt in enumerate(prompts):
            lines.append(f"- *{prompt}*")
            for entry in report.models:
                if entry.get("samples"):
                    text = " ".join(entry["samples"][i]["completion"].split())
                    lines.append(f"  - {entry['name']}: {text}")
    return "\n".join(lines)

def _caption(report) -> str:
    text = report.data.get("text", {})
    parts = [f"Perplexity: {display_path(text.get('source'))}, {text.get('windows')} windows x {text.get('seq_len')} tokens "
             f"({text.get('tokens'):,} predicted tokens)." if text.get("tokens") is not None else ""]
    for name, info in report.data.get("tasks", {}).items():
        parts.append(f"{name}: {info['examples']} examples from {display_path(info['source'])}.")
    eff = next((e["efficiency"] for e in report.models if e.get("efficiency")), None)
    if eff:
        parts.append(_speed_caption(report, eff))
    if report.energy and report.energy.get("error"):
        parts.append(f"Energy: not measured ({report.energy['error']}).")
    elif report.energy:
        country = report.energy.get("country") or report.energy.get("country_iso_code")
        generation = next((e["energy"]["generation"] for e in report.models
                           if (e.get("energy") or {}).get("generation")), None)
        workload = (f"; generation workload {generation.get('batch', report.settings.get('energy_batch'))} x "
                    f"{generation.get('new_tokens', report.settings.get('energy_new_tokens'))} tokens x "
                    f"{generation.get('rounds', 1)} round(s) per model ({generation.get('workload', 'its own runs')}"
                    f"{', alternating between the models' if generation.get('interleaved_with') else ''})"
                    if generation else "")
        parts.append(f"Energy: codecarbon {report.energy['codecarbon_version']}, "
                     f"{report.energy['tracking']['summary']}; grid: {country}"
                     f"{' (' + report.energy['country_source'] + ')' if report.energy.get('country_source') else ''}"
                     f"{workload}.")
    return " ".join(p for p in parts if p)


def _speed_caption(report, eff: dict) -> str:
    decode = next(iter(eff["decode"].values()))
    threads = f"{eff['threads']} thread{'s' if eff['threads'] != 1 else ''}"
    modes = {entry["name"]: (entry.get("efficiency") or {}).get("timing", {}).get("mode") for entry in report.models}
    if "rounds_seconds" not in eff["prefill"]:  # a report written before timings kept their rounds
        how = "models timed side by side, round by round" if eff.get("timed_with") else "models timed one by one"
    elif all(mode == "interleaved" for mode in modes.values()) and len(modes) > 1:
        how = "the models held in memory together, their runs alternating round by round"
    else:
        how = "; ".join(f"{name}: {mode or 'not timed'}" for name, mode in modes.items())
        if any(mode == "alone" for mode in modes.values()) and len(modes) > 1:
            how += " (a model timed alone ran at other moments than the others: its timings get no ratio)"
    memory = " Peak memory of a model: its weights + the peak its warm-up runs added." \
        if "peak_bytes" in (eff.get("memory") or {}) else ""
    return (f"Speed ({how}): {eff['device']}, {threads}, median [min–max] of {eff['repeats']} rounds after "
            f"{eff['warmup']} warm-up; ratios from the paired rounds, with their interquartile range, \"no "
            f"measurable difference\" when it overlaps 1.0 +- {NOISE:.0%}; prefill batch {eff['prefill']['batch']} x "
            f"{eff['prefill']['seq_len']}, decode {decode['new_tokens']} new tokens after a {decode['prompt_len']}-token "
            f"prompt.{memory}")


def display_path(source: str | None) -> str | None:
    """A file path as a reader should see it: relative to the current folder (no machine-specific prefix)."""
    if source and os.path.isabs(source) and os.path.exists(source):
        return os.path.relpath(source)
    return source

