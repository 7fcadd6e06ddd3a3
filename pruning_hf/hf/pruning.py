"""Pruning Hugging Face models: :func:`prune` (the engine plus the bookkeeping a checkpoint needs, and
the run's energy), :func:`prune_and_compare` (dense -> prune -> pruned, measured on the same data), and
the attributes and methods a pruned model carries (``pruning_config``, ``pruning_report``,
``pruning_energy``, ``save_pretrained``, ``push_to_hub``).
"""

from __future__ import annotations

import copy
import os
import types
from contextlib import nullcontext
from typing import Any, Mapping

from ..config import PruningConfig
from ..data.text import calibration_windows
from ..engine import check_targets, prune_model
from ..engine.report import PruningReport
from ..engine.resume import check_resumable
from ..evaluation.energy import check_country_iso, tracked
from ..evaluation.report import EvaluationReport
from ..evaluation.session import EvaluationData, EvaluationSession, check_seq_len, prepared
from ..evaluation.settings import EvaluationConfig
from ..models.architectures import context_length
from ..models.embedded import public_model_name
from .checkpoint import read_attachments, read_evaluation, read_pruning_energy, read_pruning_report, save_checkpoint
from .hub import push_model
from .loading import coerce_config, load_model, load_tokenizer, model_config, resolve_name
from .quantizer import store_layer_shapes

__all__ = ["prune", "prune_and_compare", "attach", "load_pretrained", "stored_pruning_config"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pruning-hf")
    except PackageNotFoundError:
        return "unknown"


def stored_pruning_config(model) -> PruningConfig | None:
    """The PruningConfig recorded in a model's config (``None`` for a dense model)."""
    data = getattr(model.config, "pruning_config", None)
    return PruningConfig.from_dict(data) if data else None


def attach(model, config: PruningConfig | None, report: PruningReport | None, tokenizer,
           evaluation: EvaluationReport | None = None, energy: dict | None = None):
    """Give a loaded model pruning_hf's attributes and its atomic ``save_pretrained`` / ``push_to_hub``."""
    model.pruning_config = config
    model.pruning_report = report
    model.pruning_energy = energy
    model.evaluation_report = evaluation
    model.tokenizer = tokenizer
    model.save_pretrained = types.MethodType(save_checkpoint, model)
    model.push_to_hub = types.MethodType(push_model, model)
    return model


def load_pretrained(name: str, tokenizer, **hf_kwargs: Any):
    """Load a (possibly pruned) checkpoint as it is: its recorded config, reports and attachments come along."""
    model = load_model(name, **hf_kwargs)
    attach(model, stored_pruning_config(model), read_pruning_report(name), tokenizer, read_evaluation(name),
           read_pruning_energy(name))
    model.attachments = read_attachments(name)
    return model


def prune(model, config: PruningConfig | dict | str, tokenizer=None, progress: bool = True, windows=None,
          activation_storage: str = "cpu", resume_dir: str | os.PathLike | None = None, *, energy: bool = True,
          country_iso_code: str | None = None) -> PruningReport:
    """Prune an already-loaded causal LM in place; returns the :class:`~pruning_hf.engine.report.PruningReport`.

    Calibration windows are built from ``config.calibration`` with ``tokenizer`` unless given.
    The model's config records the PruningConfig (and new layer shapes), so a saved checkpoint says
    how it was made and reloads with stock ``from_pretrained``. ``activation_storage``: where
    calibration activations wait between layers ("cpu", a device, or "disk"). ``resume_dir``: a
    folder for a checkpoint after every decoder layer; rerun with it to continue an interrupted run.

    ``energy`` (default on): the run (calibration windows included) is tracked with codecarbon's
    offline tracker (a tracker already open in the process is reused); the result, or why it is
    missing, is ``model.pruning_energy``, saved in ``pruning_report.json`` and the model card.
    ``country_iso_code``: the grid of its CO2e (default: codecarbon's configuration, else the world
    average).
    """
    config = coerce_config(config)
    check_targets(model, config)  # an unsupported model or a typo in targets fails before calibration
    country_iso_code = check_country_iso(country_iso_code)
    if resume_dir is not None:
        check_resumable(config, resume_dir)
    with tracked("pruning", country_iso_code) if energy else nullcontext() as measured:
        if windows is None and config.needs_calibration:
            if tokenizer is None:
                raise ValueError(f"method {config.method!r} needs calibration data: pass tokenizer= (or windows=)")
            windows = calibration_windows(config.calibration, tokenizer, context_length(model.config))
        if windows is not None and config.needs_calibration:
            config = config.as_used(windows)  # seq_len capped at the model's context: record what ran
        report = prune_model(model, config, windows=windows, progress=progress, activation_storage=activation_storage,
                             resume_dir=resume_dir)
        if config.method_class.changes_shapes:
            store_layer_shapes(model)  # stock config fields, or the pruning_hf quantization config per layer
    model.config.pruning_config = {**config.to_dict(), "pruning_hf_version": _version()}
    if not getattr(model.config, "pruned_from", None):  # a card's base_model; kept when pruned again
        model.config.pruned_from = public_model_name(model.name_or_path)
    # a pruned model's earlier evaluation, recipe and sweep files describe the model before this pruning
    attach(model, config, report, tokenizer if tokenizer is not None else getattr(model, "tokenizer", None),
           energy=measured or None)
    model.attachments = {}
    return report


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
        config / settings: evaluation settings (:class:`~pruning_hf.evaluation.EvaluationConfig` fields)
            or prepared data.
        progress: progress bars while pruning (and evaluating, unless prepared data says otherwise);
            default: the evaluation settings' ``progress``.
        load_kwargs: passed to ``from_pretrained`` when ``model`` is a name.
        prune_options: keywords for :func:`prune` (``windows``, ``activation_storage``, ``resume_dir``,
            ``energy``, ``country_iso_code``; the country defaults to the evaluation's).

    Each pruned entry carries its pruning report and its ``pruning`` energy phase (unless
    ``prune_options={"energy": False}``). With a single config and a loaded model, the report is also
    attached as ``model.evaluation_report`` (``save_pretrained`` writes it as ``evaluation_report.json``).
    """
    single = not isinstance(pruning, Mapping) or "method" in pruning
    runs = {None: coerce_config(pruning)} if single else {name: coerce_config(c) for name, c in pruning.items()}
    if not runs:
        raise ValueError("prune_and_compare needs at least one pruning config")
    load_kwargs = dict(load_kwargs or {})
    from_name = isinstance(model, (str, os.PathLike))
    if from_name:
        model = resolve_name(model)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model, **load_kwargs)
    if progress is not None and not isinstance(config, EvaluationData):
        settings["progress"] = progress
    data = prepared(config, tokenizer, settings)
    progress = data.config.progress if progress is None else progress
    check_seq_len(model_config(model, load_kwargs) if from_name else model.config, data.config.seq_len, dense_name)

    def fresh(last: bool):
        if from_name:
            return load_pretrained(model, tokenizer, **load_kwargs)
        return model if last else copy.deepcopy(model)

    prune_options = {"country_iso_code": data.config.country_iso_code, **(prune_options or {})}
    with EvaluationSession(data) as session:
        session.add(dense_name, fresh(last=False) if from_name else model, tokenizer, keep_copy=not from_name,
                    reload=(lambda: fresh(last=False)) if from_name else None)
        for index, (name, pruning_config) in enumerate(runs.items()):
            name = name or pruning_config.describe()
            target = fresh(last=index == len(runs) - 1)
            prune(target, pruning_config, tokenizer, progress=progress, **prune_options)  # tracks its energy
            session.add(name, target, tokenizer)
            del target
    report = session.report()
    if single and not from_name:
        model.evaluation_report = report
    return report

