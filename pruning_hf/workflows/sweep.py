"""Pruning-level sweeps: every (method, pattern, level) point measured on the same data, the Pareto
front of quality vs size / latency / energy, and a recommendation under a user's budget.

Calibration windows and evaluation data are prepared once and shared by all points; the dense model
is measured once. Results are written after every point to ``OUTPUT/sweep.json`` (plus CSV,
markdown and PNG plots, :mod:`.sweep_output`), so an interrupted sweep resumes where it stopped and a
rerun with another budget or objective re-ranks without measuring again (:mod:`.pareto`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

from tqdm.auto import tqdm

from ..config import CalibrationConfig, PruningConfig
from ..evaluation.report import entry_metrics, is_metric, relative_metrics
from ..evaluation.session import EvaluationSession
from ..evaluation.settings import COMPACT, EvaluationConfig
from ..hf.files import SWEEP_FILE, SWEEP_PLOTS
from ..hf.loading import Preflight, preflight
from ..hf.pruning import prune
from ..sparsity.masks import parse_pattern
from .pareto import OBJECTIVES, Budget, SweepError, parse_levels, recommend
from .sweep_output import SweepResult, load_state, plot, write_tables

__all__ = ["sweep", "SweepResult", "SweepError", "Budget", "OBJECTIVES", "SWEEP_EVALUATION"]

#: a sweep's evaluation unless told otherwise: speed and energy on, compact (see EvaluationConfig)
SWEEP_EVALUATION = {**COMPACT, "efficiency": True, "energy": True}


def _point_key(config: PruningConfig) -> str:
    options = json.dumps(config.to_dict()["options"], sort_keys=True)
    return f"{config.method}|{config.pattern}|{config.sparsity:g}|{config.scope}|{options}"


def _label(config: PruningConfig) -> str:
    return f"{config.method} {config.pattern}" if parse_pattern(config.pattern).is_nm else \
        f"{config.method} {config.sparsity:.0%}"


def sweep(model: str, methods: Sequence[str] | str = ("magnitude", "wanda", "sparsegpt"),
          sparsities: Sequence[float] | str = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
          patterns: Sequence[str] | str = ("unstructured",), *, calibration: CalibrationConfig | dict | None = None,
          evaluation: EvaluationConfig | Mapping | None = None, method_options: dict[str, dict] | None = None,
          budget: str | None = "ppl_increase<=10%", objective: str = "smallest", output: str | os.PathLike = "sweep",
          save_best: str | os.PathLike | None = None, hf_kwargs: dict | None = None,
          progress: bool = True) -> SweepResult:
    """Prune ``model`` at every (method, pattern, level) point and measure each on the same data.

    Args:
        model: Hub id, local folder or ``embedded:NAME`` (reloaded fresh for every point).
        methods, sparsities, patterns: lists or comma-separated strings; N:M patterns are one point
            per method (their sparsity is implied); ``"0.1,0.2,...,0.7"`` expands.
        calibration: shared CalibrationConfig (windows are built once).
        evaluation: :class:`~pruning_hf.evaluation.EvaluationConfig` or a dict of its fields, over
            :data:`SWEEP_EVALUATION` (efficiency and energy on).
        method_options: ``{method: {option: value}}``.
        budget: e.g. ``"ppl_increase<=10%"``; objective: ``smallest``, ``fastest`` or ``lowest-energy``.
        output: folder for ``sweep.json`` / ``.csv`` / ``.md`` and the PNG plots; reruns resume from it.
        save_best: also save the recommended point as a checkpoint here (card with the sweep plots).
    """
    methods = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    patterns = [p.strip() for p in patterns.split(",")] if isinstance(patterns, str) else list(patterns)
    levels = parse_levels(sparsities)
    calibration = CalibrationConfig.coerce(calibration)
    settings = evaluation if isinstance(evaluation, EvaluationConfig) else \
        EvaluationConfig.coerce({**SWEEP_EVALUATION, **(evaluation or {})})
    if objective not in OBJECTIVES:
        raise SweepError(f"objective {objective!r} is not one of: {', '.join(OBJECTIVES)}")
    measured = settings.metric_names() + ["sparsity", "ppl_increase", "size_ratio", "pruning_seconds"]
    if OBJECTIVES[objective] not in measured:
        raise SweepError(f"objective {objective!r} needs {OBJECTIVES[objective]!r}, which these evaluation settings "
                         "do not measure (turn on efficiency / energy)")
    parsed_budget = Budget.parse(budget, measured)
    configs, skipped = {}, []
    for method in methods:
        for pattern in patterns:
            for level in ([None] if parse_pattern(pattern).is_nm else levels):
                try:
                    config = PruningConfig(method=method, sparsity=level, pattern=pattern, calibration=calibration,
                                           **(method_options or {}).get(method, {}))
                except ValueError as err:
                    skipped.append((f"{method} {pattern} {level if level is not None else ''}".strip(), str(err)))
                    continue
                configs[_point_key(config)] = config
    if not configs:
        raise SweepError("no valid sweep point: " + "; ".join(f"{label}: {why}" for label, why in skipped))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    hf_kwargs = {"dtype": "float32", **(hf_kwargs or {})}
    measuring = {k: v for k, v in settings.to_dict().items() if k != "progress"}  # progress bars do not change results
    setup = {"model": str(model), "calibration": dataclasses.asdict(calibration), "evaluation": measuring,
             "hf_kwargs": {k: str(v) for k, v in hf_kwargs.items()}}
    state = load_state(output / SWEEP_FILE, setup)
    todo = [key for key in configs if key not in state["points"]]
    needs_windows = any(configs[key].needs_calibration for key in todo) or (
        save_best is not None and any(config.needs_calibration for config in configs.values()))
    ready = preflight(model, hf_kwargs=hf_kwargs, calibration=calibration if needs_windows else None,
                      evaluation=settings)
    result = SweepResult(state["dense"], [], parsed_budget, objective, None, output, skipped)
    with EvaluationSession(ready.evaluation) as session:
        if state["dense"] is None or todo:  # the dense model is timed next to each point (when it fits in memory)
            session.add("dense", ready.load_model(), ready.tokenizer)
        bar = tqdm(list(configs.items()), desc="sweep", unit="point", disable=not progress)
        for key, config in bar:
            bar.set_postfix_str(_label(config))
            if key in state["points"]:
                result.reused += 1
                continue
            point_model = ready.load_model()
            prune(point_model, config, ready.tokenizer, progress=False, windows=ready.windows,
                  energy=settings.energy, country_iso_code=settings.country_iso_code)
            session.add(key, point_model, ready.tokenizer)
            del point_model
            session.measure_held(keep=("dense",))  # this point's costs, in rounds alternating with the dense model
            if state["dense"] is None:
                state["dense"] = {k: v for k, v in entry_metrics(session.entries["dense"]).items() if is_metric(k)}
                result.dense = state["dense"]
            metrics = {k: v for k, v in entry_metrics(session.entries[key]).items() if is_metric(k)}
            metrics.update(_speed_vs_dense(session, key))
            state["points"][key] = {"key": key, "label": _label(config), "method": config.method,
                                    "pattern": config.pattern, "config": config.to_dict(), **metrics,
                                    **relative_metrics(metrics, result.dense)}
            result.measured += 1
            result.rows = [state["points"][k] for k in configs if k in state["points"]]
            result.recommendation = recommend(result.rows, result.dense, parsed_budget, objective)
            write_tables(result, state)
    result.rows = [state["points"][k] for k in configs]
    result.recommendation = recommend(result.rows, result.dense, parsed_budget, objective)
    write_tables(result, state)
    plot(result)
    if save_best is not None and result.recommendation and result.recommendation["key"]:
        result.saved_best = _save_best(result, configs[result.recommendation["key"]], ready, Path(save_best),
                                       progress)
    return result


def _speed_vs_dense(session: EvaluationSession, key: str) -> dict[str, dict]:
    """``{METRIC_vs_dense: paired ratio}`` of a point timed in rounds alternating with the dense model."""
    if "dense" not in session.entries:
        return {}
    ratios = session.report(["dense", key]).timing_ratios(key).values()
    return {f"{r['metric']}_vs_dense": {k: r[k] for k in ("ratio", "q1", "q3", "measurable")}
            for r in ratios if r.get("metric")}


def _save_best(result: SweepResult, config: PruningConfig, ready: Preflight, target: Path, progress: bool) -> Path:
    """Prune the recommended point again, measure it next to the dense model, and save it with the sweep's
    table and plots next to its card."""
    with EvaluationSession(ready.evaluation) as session:
        session.add("dense", ready.load_model(), ready.tokenizer)
        model = ready.load_model()
        name = _label(config)
        settings = ready.evaluation.config
        prune(model, config, ready.tokenizer, progress=progress, windows=ready.windows, energy=settings.energy,
              country_iso_code=settings.country_iso_code)
        session.add(name, model, ready.tokenizer)
    model.evaluation_report = session.report()
    model.attachments = {SWEEP_FILE: (result.output / SWEEP_FILE).read_bytes(),
                         **{plot_file: (result.output / plot_file).read_bytes() for plot_file in SWEEP_PLOTS}}
    model.save_pretrained(target)
    return target
