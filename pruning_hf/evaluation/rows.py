"""The markdown table of an evaluation report: one row per measured quantity, one column per model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from .tasks import LAST_WORD

__all__ = ["table_rows", "markdown", "display_path"]


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
        decode = next(iter(eff["decode"].values()))
        threads = f"{eff['threads']} thread{'s' if eff['threads'] != 1 else ''}"
        together = " (models timed side by side, round by round)" if eff.get("timed_with") else ""
        parts.append(f"Speed{together}: {eff['device']}, {threads}, median of {eff['repeats']} after "
                     f"{eff['warmup']} warm-up; prefill batch {eff['prefill']['batch']} x {eff['prefill']['seq_len']}, "
                     f"decode {decode['new_tokens']} new tokens after a {decode['prompt_len']}-token prompt.")
    if report.energy:
        parts.append(f"Energy: codecarbon {report.energy['codecarbon_version']}, "
                     f"{report.energy['tracking']['summary']}; grid {report.energy['country_iso_code']}; "
                     f"generation workload {report.settings.get('energy_batch')} x "
                     f"{report.settings.get('energy_new_tokens')} tokens x {report.settings.get('energy_rounds', 1)} "
                     "round(s) per model.")
    return " ".join(p for p in parts if p)


def display_path(source: str | None) -> str | None:
    """A file path as a reader should see it: relative to the current folder (no machine-specific prefix)."""
    if source and os.path.isabs(source) and os.path.exists(source):
        return os.path.relpath(source)
    return source

