"""What a sweep writes: the result table (markdown, CSV), ``sweep.json`` (which makes reruns resume) and plots.

Every file is replaced atomically after each measured point, so a killed sweep leaves complete files.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..evaluation.report import METRICS
from ..evaluation.tasks import TASK_SUFFIX
from ..hf.files import SWEEP_FILE, SWEEP_PLOTS
from ..utils.storage import atomic_file
from .pareto import Budget, SweepError, format_metric, pareto_front

__all__ = ["SweepResult", "write_tables", "plot", "load_state", "PARETO_AXES", "TABLE_COLUMNS"]

PARETO_AXES = (("size_ratio", "non-zero parameters / dense"), ("prefill_ms", "prefill latency (ms)"),
               ("energy_wh_per_1k_tokens", "energy per 1k tokens (Wh)"))
TABLE_COLUMNS = ("sparsity", "perplexity", "ppl_increase", "size_ratio", "prefill_ms", "decode_tokens_per_s",
                 "energy_wh_per_1k_tokens")


def _atomic_write(path: Path, data: str | bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@dataclass
class SweepResult:
    """All points (``rows``), the dense baseline, the recommendation and where files were written."""

    dense: dict
    rows: list[dict]
    budget: Budget
    objective: str
    recommendation: dict | None
    output: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)
    measured: int = 0
    reused: int = 0
    saved_best: Path | None = None

    @property
    def dense_row(self) -> dict:
        """The dense model as a row (a candidate of every Pareto front)."""
        return {**self.dense, "key": "dense", "label": "dense", "method": "dense", "pattern": "",
                "sparsity": 0.0, "ppl_increase": 0.0, "size_ratio": 1.0}

    def columns(self) -> list[str]:
        tasks = sorted({key for row in self.rows for key in row if key.endswith(TASK_SUFFIX)})
        return [c for c in TABLE_COLUMNS if any(c in row for row in self.rows)] + tasks

    def _speed(self, row: dict) -> str:
        """A point's speed against the dense model, from their paired rounds."""
        parts = [f"{label} {r['ratio']:.2f}x" for label, r in (("prefill", row.get("prefill_ms_vs_dense")),
                                                                 ("decode", row.get("decode_tokens_per_s_vs_dense")))
                 if r and r["measurable"]]
        if not any(key.endswith("_vs_dense") for key in row):
            return "-"
        return ", ".join(parts) or "no measurable difference"

    def table(self) -> str:
        """Markdown table: dense first, then every point; budget and Pareto (size) membership marked."""
        columns = self.columns()
        speed = any(key.endswith("_vs_dense") for row in self.rows for key in row)
        front = {r["key"] for r in pareto_front(self.rows + [self.dense_row], "size_ratio")}
        lines = ["| point | " + " | ".join(columns) + (" | speed vs dense" if speed else "") + " | budget | Pareto (size) |",
                 "|---|" + "---|" * (len(columns) + 2 + speed)]
        lines.append("| dense | " + " | ".join(format_metric(c, self.dense_row.get(c)) for c in columns)
                     + (" | " if speed else "") + f" | | {'yes' if 'dense' in front else ''} |")
        for row in self.rows:
            mark = "*" if self.recommendation and row["key"] == self.recommendation["key"] else ""
            lines.append(f"| {mark}{row['label']}{mark} | " + " | ".join(format_metric(c, row.get(c)) for c in columns)
                         + (f" | {self._speed(row)}" if speed else "")
                         + f" | {'yes' if row['within_budget'] else 'no'} | {'yes' if row['key'] in front else ''} |")
        return "\n".join(lines)


def plot(result: SweepResult) -> list[Path]:
    """``sweep_perplexity.png`` (perplexity vs sparsity per method) and ``sweep_pareto.png``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    methods = sorted({row["method"] for row in result.rows})
    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in methods:
        for pattern in sorted({r["pattern"] for r in result.rows if r["method"] == method}):
            points = sorted((r for r in result.rows if r["method"] == method and r["pattern"] == pattern),
                            key=lambda r: r["sparsity"])
            nm = pattern != "unstructured"
            ax.plot([r["sparsity"] for r in points], [r["perplexity"] for r in points],
                    marker="s" if nm else "o", linestyle="none" if nm else "-", color=colors[method],
                    label=f"{method} {pattern}" if nm else method)
    ax.axhline(result.dense["perplexity"], color="gray", linestyle="--", label="dense")
    ax.set(xlabel="sparsity", ylabel="perplexity (log scale)", yscale="log", title="Perplexity vs sparsity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [result.output / SWEEP_PLOTS[0]]
    with atomic_file(paths[0]) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

    axes = [(m, label) for m, label in PARETO_AXES if any(r.get(m) is not None for r in result.rows)]
    fig, grid = plt.subplots(1, len(axes), figsize=(5 * len(axes), 4.2), squeeze=False)
    dense = result.dense_row
    chosen = result.recommendation.get("key") if result.recommendation else None
    for ax, (metric, label) in zip(grid[0], axes):
        for method in methods:
            points = [r for r in result.rows if r["method"] == method]
            ax.scatter([r[metric] for r in points], [r["perplexity"] for r in points], color=colors[method],
                       label=method, s=28)
        front = pareto_front(result.rows + [dense], metric)
        ax.step([r[metric] for r in front], [r["perplexity"] for r in front], where="post", color="black",
                linewidth=1, label="Pareto front")
        ax.scatter([dense[metric]], [dense["perplexity"]], marker="*", s=160, color="gray", label="dense")
        for row in result.rows:
            if row["key"] == chosen:
                ax.scatter([row[metric]], [row["perplexity"]], s=220, facecolors="none", edgecolors="red",
                           linewidths=2, label="recommended")
        ax.set(xlabel=label, ylabel="perplexity (log scale)", yscale="log")
    grid[0][0].legend(fontsize=8)
    fig.suptitle(f"Quality vs cost ({result.budget}; objective: {result.objective})")
    fig.tight_layout()
    paths.append(result.output / SWEEP_PLOTS[1])
    with atomic_file(paths[1]) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return paths


def write_tables(result: SweepResult, state: dict) -> None:
    state["recommendation"] = result.recommendation
    state["budget"], state["objective"] = str(result.budget), result.objective
    _atomic_write(result.output / SWEEP_FILE, json.dumps(state, indent=2))
    tasks = sorted({key for row in result.rows for key in row if key.endswith(TASK_SUFFIX)})
    columns = ["label", "method", "pattern"] + [m for m in METRICS if any(m in r for r in result.rows)] + tasks \
        + ["within_budget"]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerow(result.dense_row)
    writer.writerows(result.rows)
    _atomic_write(result.output / "sweep.csv", table.getvalue())
    _atomic_write(result.output / "sweep.md", result.table() + "\n")


def load_state(path: Path, setup: dict) -> dict:
    if not path.is_file():
        return {"setup": setup, "dense": None, "points": {}}
    state = json.loads(path.read_text())
    if state.get("setup") != setup:
        differ = sorted(k for k in set(setup) | set(state.get("setup", {})) if setup.get(k) != state["setup"].get(k))
        raise SweepError(f"{path} holds a sweep with another setup (differs in: {', '.join(differ)}); its points "
                         "are not comparable. Choose another output folder, or delete the file to start over")
    return state
