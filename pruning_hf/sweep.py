"""Pruning-level sweeps: every (method, pattern, level) point measured on the same data, the Pareto
front of quality vs size / latency / energy, and a recommendation under a user's budget.

Calibration windows and evaluation tokens are built once and shared by all points; the dense model
is measured once. Results are written after every point to ``OUTPUT/sweep.json`` (plus CSV,
markdown and PNG plots), so an interrupted sweep resumes where it stopped and a rerun with another
budget or objective re-ranks without measuring again.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from tqdm.auto import tqdm

from .cards import EVALUATION_FILE, SWEEP_FILE, SWEEP_PLOTS
from .config import CalibrationConfig, PruningConfig
from .masks import parse_pattern
from .measurements import METRICS, TASK_SUFFIX, MeasureSettings, is_metric
from .storage import atomic_file

__all__ = ["sweep", "SweepResult", "SweepError", "Budget", "OBJECTIVES", "pareto_front", "parse_levels"]

RESULTS_FILE = SWEEP_FILE
#: objective -> (metric to minimise, what it needs measured)
OBJECTIVES = {"smallest": "params_nonzero", "fastest": "prefill_ms", "lowest-energy": "energy_wh_per_1k_tokens"}
PARETO_AXES = (("size_ratio", "non-zero parameters / dense"), ("prefill_ms", "prefill latency (ms)"),
               ("energy_wh_per_1k_tokens", "energy per 1k tokens (Wh)"))
TABLE_COLUMNS = ("sparsity", "perplexity", "ppl_increase", "size_ratio", "prefill_ms", "decode_tokens_per_s",
                 "energy_wh_per_1k_tokens")
_ALIASES = {"ppl": "perplexity"}
_FRACTIONS = {"ppl_increase", "sparsity", "size_ratio"}


class SweepError(ValueError):
    """A sweep cannot run as asked (bad levels, budget, or an output folder holding another sweep)."""


def parse_levels(text: str | Sequence[float]) -> list[float]:
    """``"0.1,0.2,...,0.7"`` -> ``[0.1, ..., 0.7]`` (``...`` continues the step of the two before it)."""
    if not isinstance(text, str):
        return [float(v) for v in text]
    items = [item.strip() for item in text.split(",") if item.strip()]
    levels: list[float] = []
    for index, item in enumerate(items):
        if item != "...":
            try:
                levels.append(float(item))
            except ValueError:
                raise SweepError(f"sparsity level {item!r} is not a number (give e.g. 0.1,0.2,...,0.7)") from None
            continue
        if len(levels) < 2 or index + 1 >= len(items) or items[index + 1] == "...":
            raise SweepError(f"'...' in {text!r} needs two levels before it and one after it")
        step, stop = levels[-1] - levels[-2], float(items[index + 1])
        if step <= 0:
            raise SweepError(f"'...' in {text!r} needs increasing levels before it")
        count = int(math.floor((stop - levels[-1]) / step + 1e-9))
        levels += [round(levels[-1] + step * (i + 1), 10) for i in range(count - 1)]
    return levels


@dataclass
class Constraint:
    metric: str
    op: str
    value: float
    relative: bool  # value is a multiple of the dense model's metric ("0.9x")
    text: str

    def threshold(self, dense: dict) -> float:
        return self.value * dense[self.metric] if self.relative else self.value

    def holds(self, row: dict, dense: dict) -> bool:
        measured, limit = row.get(self.metric), self.threshold(dense)
        if measured is None:
            return False
        return {"<=": measured <= limit, "<": measured < limit, ">=": measured >= limit, ">": measured > limit}[self.op]

    def violation(self, row: dict, dense: dict) -> float:
        """How far outside (relative to the limit); 0 when it holds."""
        measured, limit = row.get(self.metric, math.inf), self.threshold(dense)
        gap = measured - limit if self.op.startswith("<") else limit - measured
        return max(gap, 0.0) / max(abs(limit), 1e-12)


_CONSTRAINT = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*(%|x)?\s*$")


@dataclass
class Budget:
    """Constraints a recommended point must meet, e.g. ``"ppl_increase<=10%, decode_tokens_per_s>=0.9x"``.

    ``%`` divides by 100 (for fractions such as ``ppl_increase``); ``x`` is relative to the dense model.
    """

    constraints: list[Constraint] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None, measured: Iterable[str]) -> "Budget":
        measured = list(measured)
        constraints = []
        for part in (text or "").split(","):
            if not part.strip():
                continue
            match = _CONSTRAINT.match(part)
            if not match:
                raise SweepError(f"budget term {part.strip()!r} is not METRIC<=VALUE (ops <=, <, >=, >; "
                                 "suffix % or x), e.g. 'ppl_increase<=10%'")
            metric, op, number, suffix = match.groups()
            metric = _ALIASES.get(metric, metric)
            if metric not in measured:
                raise SweepError(f"budget metric {metric!r} is not measured by this sweep; measured: "
                                 f"{', '.join(measured)}")
            value = float(number) / 100 if suffix == "%" else float(number)
            if suffix == "%" and metric not in _FRACTIONS and not metric.endswith(TASK_SUFFIX):
                raise SweepError(f"budget term {part.strip()!r}: % applies to fractions "
                                 f"({', '.join(sorted(_FRACTIONS))}, task accuracies *{TASK_SUFFIX})")
            constraints.append(Constraint(metric, op, value, suffix == "x", part.strip()))
        return cls(constraints)

    def __str__(self) -> str:
        return ", ".join(c.text for c in self.constraints) or "no budget"


def pareto_front(rows: Sequence[dict], x: str, y: str = "perplexity") -> list[dict]:
    """Rows not dominated in (``x``, ``y``), both lower-is-better, sorted by ``x``."""
    usable = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    front = [r for r in usable
             if not any(o[x] <= r[x] and o[y] <= r[y] and (o[x] < r[x] or o[y] < r[y]) for o in usable)]
    return sorted(front, key=lambda r: (r[x], r[y]))


def _point_key(config: PruningConfig) -> str:
    options = json.dumps(config.to_dict()["options"], sort_keys=True)
    return f"{config.method}|{config.pattern}|{config.sparsity:g}|{config.scope}|{options}"


def _label(config: PruningConfig) -> str:
    return f"{config.method} {config.pattern}" if parse_pattern(config.pattern).is_nm else \
        f"{config.method} {config.sparsity:.0%}"


def _atomic_write(path: Path, data: str | bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def _fmt(metric: str, value: Any) -> str:
    if value is None:
        return "-"
    if metric in _FRACTIONS or metric.endswith(TASK_SUFFIX):
        return f"{value:+.1%}" if metric == "ppl_increase" else f"{value:.1%}"
    return f"{value:.4g}"


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

    def table(self) -> str:
        """Markdown table: dense first, then every point; budget and Pareto (size) membership marked."""
        columns = self.columns()
        front = {r["key"] for r in pareto_front(self.rows + [self.dense_row], "size_ratio")}
        lines = ["| point | " + " | ".join(columns) + " | budget | Pareto (size) |",
                 "|---|" + "---|" * (len(columns) + 2)]
        lines.append("| dense | " + " | ".join(_fmt(c, self.dense_row.get(c)) for c in columns)
                     + f" | | {'yes' if 'dense' in front else ''} |")
        for row in self.rows:
            mark = "*" if self.recommendation and row["key"] == self.recommendation["key"] else ""
            lines.append(f"| {mark}{row['label']}{mark} | " + " | ".join(_fmt(c, row.get(c)) for c in columns)
                         + f" | {'yes' if row['within_budget'] else 'no'} | {'yes' if row['key'] in front else ''} |")
        return "\n".join(lines)


def _recommend(rows: list[dict], dense: dict, budget: Budget, objective: str) -> dict | None:
    metric = OBJECTIVES[objective]
    for row in rows:
        row["within_budget"] = all(c.holds(row, dense) for c in budget.constraints)
    ok = [r for r in rows if r["within_budget"] and r.get(metric) is not None]
    if not rows:
        return None
    if not ok:
        closest = min(rows, key=lambda r: sum(c.violation(r, dense) for c in budget.constraints))
        measured = ", ".join(f"{c.metric} {_fmt(c.metric, closest.get(c.metric))}" for c in budget.constraints)
        return {"key": None, "label": None, "reason": (
            f"no point meets the budget ({budget}); the closest is {closest['label']} ({measured}). "
            "Relax the budget or add lower sparsity levels.")}
    best = min(ok, key=lambda r: (r[metric], r["perplexity"]))
    ratio = best[metric] / dense[metric] if dense.get(metric) else None
    held = ", ".join(f"{c.metric} {_fmt(c.metric, best.get(c.metric))}" for c in budget.constraints)
    among = f"the only one of {len(rows)} points" if len(ok) == 1 else \
        f"the {objective} of the {len(ok)} of {len(rows)} points"
    reason = (f"{best['label']} ({best['pattern']}) is {among} within budget ({budget}): {metric} {best[metric]:.4g}"
              + (f" = {ratio:.1%} of dense" if ratio is not None else "")
              + (f"; {held}" if held else "") + f"; perplexity {best['perplexity']:.3f} vs dense "
              f"{dense['perplexity']:.3f}.")
    if len([r for r in ok if r[metric] == best[metric]]) > 1:
        reason += " Ties on the objective are broken by the lower perplexity."
    return {"key": best["key"], "label": best["label"], "reason": reason}


def _plot(result: SweepResult) -> list[Path]:
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


def _write_tables(result: SweepResult, state: dict) -> None:
    state["recommendation"] = result.recommendation
    state["budget"], state["objective"] = str(result.budget), result.objective
    _atomic_write(result.output / RESULTS_FILE, json.dumps(state, indent=2))
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


def _load_state(path: Path, setup: dict) -> dict:
    if not path.is_file():
        return {"setup": setup, "dense": None, "points": {}}
    state = json.loads(path.read_text())
    if state.get("setup") != setup:
        differ = sorted(k for k in set(setup) | set(state.get("setup", {})) if setup.get(k) != state["setup"].get(k))
        raise SweepError(f"{path} holds a sweep with another setup (differs in: {', '.join(differ)}); its points "
                         "are not comparable. Choose another output folder, or delete the file to start over")
    return state


def sweep(model: str, methods: Sequence[str] | str = ("magnitude", "wanda", "sparsegpt"),
          sparsities: Sequence[float] | str = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
          patterns: Sequence[str] | str = ("unstructured",), *, calibration: CalibrationConfig | dict | None = None,
          evaluation: MeasureSettings | dict | None = None, method_options: dict[str, dict] | None = None,
          budget: str | None = "ppl_increase<=10%", objective: str = "smallest", output: str | os.PathLike = "sweep",
          save_best: str | os.PathLike | None = None, hf_kwargs: dict | None = None,
          progress: bool = True) -> SweepResult:
    """Prune ``model`` at every (method, pattern, level) point and measure each on the same data.

    Args:
        model: Hub id, local folder or ``embedded:NAME`` (reloaded fresh for every point).
        methods, sparsities, patterns: lists or comma-separated strings; N:M patterns are one point
            per method (their sparsity is implied); ``"0.1,0.2,...,0.7"`` expands.
        calibration: shared CalibrationConfig (windows are built once).
        evaluation: :class:`~pruning_hf.measurements.MeasureSettings` (default: efficiency and energy on).
        method_options: ``{method: {option: value}}``.
        budget: e.g. ``"ppl_increase<=10%"``; objective: ``smallest``, ``fastest`` or ``lowest-energy``.
        output: folder for ``sweep.json`` / ``.csv`` / ``.md`` and the PNG plots; reruns resume from it.
        save_best: also save the recommended point as a checkpoint here (card with the sweep plots).
    """
    from .calibration import calibration_windows, load_texts
    from .evaluation.report import model_config
    from .measurements import evaluation_tokens, measure_model, prune_measured, relative_metrics
    from .modeling import load_model, load_tokenizer, resolve_name

    methods = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    patterns = [p.strip() for p in patterns.split(",")] if isinstance(patterns, str) else list(patterns)
    levels = parse_levels(sparsities)
    calibration = CalibrationConfig.coerce(calibration)
    if isinstance(evaluation, dict):
        evaluation = MeasureSettings(**{"efficiency": True, "energy": True, **evaluation})
    settings = evaluation or MeasureSettings(efficiency=True, energy=True)
    if objective not in OBJECTIVES:
        raise SweepError(f"objective {objective!r} is not one of: {', '.join(OBJECTIVES)}")
    measured = settings.metric_names() + ["sparsity", "ppl_increase", "size_ratio", "pruning_seconds"]
    if OBJECTIVES[objective] not in measured:
        raise SweepError(f"objective {objective!r} needs {OBJECTIVES[objective]!r}, which these evaluation settings "
                         "do not measure (turn on efficiency / energy)")
    parsed_budget = Budget.parse(budget, measured)
    method_options = method_options or {}
    configs, skipped = {}, []
    for method in methods:
        for pattern in patterns:
            for level in ([None] if parse_pattern(pattern).is_nm else levels):
                try:
                    config = PruningConfig(method=method, sparsity=level, pattern=pattern, calibration=calibration,
                                           **method_options.get(method, {}))
                except ValueError as err:
                    skipped.append((f"{method} {pattern} {level if level is not None else ''}".strip(), str(err)))
                    continue
                configs[_point_key(config)] = config
    if not configs:
        raise SweepError("no valid sweep point: " + "; ".join(f"{label}: {why}" for label, why in skipped))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    hf_kwargs = {"dtype": "float32", **(hf_kwargs or {})}
    setup = {"model": str(model), "calibration": dataclasses.asdict(calibration), "evaluation": settings.to_dict(),
             "hf_kwargs": {k: str(v) for k, v in hf_kwargs.items()}}
    state = _load_state(output / RESULTS_FILE, setup)
    todo = [key for key in configs if key not in state["points"]]
    load_texts(settings.text, settings.text_column)
    needs_windows = any(configs[key].needs_calibration for key in todo)
    if needs_windows:
        load_texts(calibration.source, calibration.text_column)

    name = resolve_name(model)
    tokenizer = load_tokenizer(name, **hf_kwargs)
    tokens = evaluation_tokens(settings, tokenizer)
    windows = None
    if needs_windows:  # before any model loads: too little text fails in seconds
        windows = calibration_windows(calibration, tokenizer,
                                      getattr(model_config(name, hf_kwargs), "max_position_embeddings", None))
    if state["dense"] is None:
        dense_model = load_model(name, **hf_kwargs)
        state["dense"] = {k: v for k, v in measure_model(dense_model, tokenizer, tokens, settings).items()
                          if is_metric(k)}
        del dense_model
    dense = state["dense"]
    result = SweepResult(dense, [], parsed_budget, objective, None, output, skipped)
    bar = tqdm(list(configs.items()), desc="sweep", unit="point", disable=not progress)
    for key, config in bar:
        bar.set_postfix_str(_label(config))
        if key in state["points"]:
            result.reused += 1
            continue
        point_model = load_model(name, **hf_kwargs)
        pruning = prune_measured(point_model, config, tokenizer, windows, settings, progress=False)
        metrics = measure_model(point_model, tokenizer, tokens, settings)
        del point_model
        state["points"][key] = {"key": key, "label": _label(config), "method": config.method,
                                "pattern": config.pattern, "config": config.to_dict(),
                                **{k: v for k, v in metrics.items() if is_metric(k)}, **pruning["metrics"],
                                **relative_metrics(metrics, dense)}
        result.measured += 1
        result.rows = [state["points"][k] for k in configs if k in state["points"]]
        result.recommendation = _recommend(result.rows, dense, parsed_budget, objective)
        _write_tables(result, state)
    result.rows = [state["points"][k] for k in configs]
    result.recommendation = _recommend(result.rows, dense, parsed_budget, objective)
    _write_tables(result, state)
    _plot(result)
    if save_best is not None and result.recommendation and result.recommendation["key"]:
        result.saved_best = _save_best(result, configs[result.recommendation["key"]], name, tokenizer, tokens,
                                       windows, settings, hf_kwargs, Path(save_best), progress)
    return result


def _save_best(result: SweepResult, config: PruningConfig, name: str, tokenizer, tokens, windows,
               settings: MeasureSettings, hf_kwargs: dict, target: Path, progress: bool) -> Path:
    """Prune the recommended point again and save it with the sweep's table and plots next to its card."""
    from .calibration import calibration_windows
    from .measurements import measure_model, prune_measured
    from .modeling import load_model

    model = load_model(name, **hf_kwargs)
    if windows is None and config.needs_calibration:
        windows = calibration_windows(config.calibration, tokenizer,
                                      getattr(model.config, "max_position_embeddings", None))
    pruning = prune_measured(model, config, tokenizer, windows, settings, progress=progress)
    pruned = measure_model(model, tokenizer, tokens, settings)
    evaluation = {"settings": settings.to_dict(), "dense": result.dense, "pruned": pruned,
                  "pruning_energy": pruning["energy"]}
    model.attachments = {EVALUATION_FILE: json.dumps(evaluation, indent=2),
                         RESULTS_FILE: (result.output / RESULTS_FILE).read_bytes(),
                         **{plot: (result.output / plot).read_bytes() for plot in SWEEP_PLOTS}}
    model.save_pretrained(target)
    return target

