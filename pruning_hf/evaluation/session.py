"""Measuring in-memory models on identical data: one :class:`EvaluationSession` per report.

The session loads nothing: callers hand it models (the ``hf`` and ``workflows`` layers load and prune
them). Each :meth:`EvaluationSession.add` measures one model's quality right away; its costs
(efficiency, generation energy) are measured for all held models together when the session closes
(or at :meth:`EvaluationSession.measure_held`), round by round, so a busy spell slows every model
alike. A model is held when ``side_by_side`` says so or, by default, when it fits in memory
(:func:`~pruning_hf.utils.memory.available_bytes`, checked and reported under ``efficiency.timing``);
otherwise, when the caller says how to load it again (``add(..., reload=)``), it takes part in the
rounds loaded afresh for each (weaker, and the report says so), else it is timed alone right after
its quality and its timings get no ratio. Energy phases
share one codecarbon tracker, open while the session is; a pruning run's own energy
(``model.pruning_energy``, recorded by ``prune``) becomes the model's ``pruning`` phase.
"""

from __future__ import annotations

import copy
import platform
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Mapping

from ..data.text import DataSourceError, load_texts, tokenize_texts
from ..models.architectures import context_length
from ..models.devices import execution_device
from ..models.embedded import public_model_name
from ..utils.memory import available_bytes
from .efficiency import SpeedProbe, parameter_counts
from .energy import EnergyTracker, PhaseEnergy
from .rounds import Reload, run_rounds
from .generation import DEFAULT_PROMPTS, WORKLOAD_PROMPT_LEN, greedy_generate, greedy_samples, synthetic_prompts
from .modules import load_metric
from .report import EvaluationReport
from .settings import EvaluationConfig
from .tasks import Task, load_tasks, run_task

__all__ = ["EvaluationData", "EvaluationSession", "prepare_evaluation", "check_seq_len", "evaluate_model"]


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

    found = {"python": platform.python_version()}
    for package in ("pruning-hf", "torch", "transformers", "evaluate", "datasets", "codecarbon", "accelerate"):
        try:
            found[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            found[package.replace("-", "_")] = None
    return found


def _model_info(model) -> dict[str, Any]:
    name = getattr(model.config, "name_or_path", None) or getattr(model, "name_or_path", None)
    return {"name_or_path": public_model_name(name) if name else name,  # embedded:NAME, not a cache path
            "model_type": getattr(model.config, "model_type", None), "dtype": str(getattr(model, "dtype", "")),
            "device": str(execution_device(model.get_input_embeddings()))}


class EvaluationSession:
    """Measure several models on the same prepared data; ``with`` it to track energy (when asked).

    Example::

        with EvaluationSession(data) as session:
            session.add("dense", model, tokenizer, keep_copy=True)
            prune(model, config, tokenizer)        # its energy joins the session's tracker
            session.add("pruned", model, tokenizer)
        report = session.report()
    """

    def __init__(self, data: EvaluationData) -> None:
        self.data, self.config = data, data.config
        self.energy = EnergyTracker(self.config.country_iso_code, self.config.energy_output_file) \
            if self.config.energy else None
        self.entries: dict[str, dict] = {}
        self.held: dict[str, Any] = {}
        self._timing: dict[str, dict] = {}
        self._measured: set[str] = set()  # models whose costs are measured
        self._phases: dict[str, dict[str, dict]] = {}

    def __enter__(self) -> "EvaluationSession":
        if self.energy is not None:
            self.energy.start()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None and any(name not in self._measured for name in self.held):
            self.measure_held()
        self.held.clear()
        if self.energy is not None:
            self.energy.stop()

    @contextmanager
    def phase(self, name: str, phase: str) -> Iterator[PhaseEnergy | None]:
        """Track the energy of a block as ``phase`` of model ``name`` (e.g. its pruning); None without energy."""
        if self.energy is None:
            yield None
            return
        with self.energy.phase(f"{name}/{phase}") as record:
            yield record
        self._phases.setdefault(name, {})[phase] = record.to_dict()

    def add(self, name: str, model, tokenizer, keep_copy: bool = False,
            reload: Callable[[], Any] | None = None) -> dict:
        """Evaluate ``model`` as ``name``; returns the model's report entry.

        ``keep_copy``: a held model is kept as a copy (the caller changes the model next). ``reload``:
        how to load the model again, so that a model that does not fit next to the others still takes
        part in the interleaved rounds, loaded afresh for each (weaker; the report says so).
        """
        if name in self.entries:
            raise ValueError(f"two models are named {name!r}; names must be unique")
        self.entries[name] = self._quality(model, tokenizer, name)
        if self._hold(name, model, keep_copy):
            self.held[name] = copy.deepcopy(model) if keep_copy else model
        elif reload is not None and self._has_costs():
            self.held[name] = Reload(reload)
            self._timing[name]["mode"] = "interleaved, reloaded every round (it does not fit next to the others)"
        elif self._has_costs():
            self._measure_costs({name: model})
        return self.entries[name]

    def measure_held(self, keep: tuple[str, ...] = ()) -> None:
        """Measure the costs of the held models now, round by round; then release all but ``keep``."""
        if self.held:
            self._measure_costs(dict(self.held))
        self.held = {name: model for name, model in self.held.items() if name in keep}

    def _has_costs(self) -> bool:
        return self.config.efficiency or (self.energy is not None and self.config.energy_rounds > 0)

    def _hold(self, name: str, model, keep_copy: bool) -> bool:
        """Whether ``model`` waits for the interleaved cost rounds (see the module docstring)."""
        if not self._has_costs():
            return False
        size = self.entries[name]["size"]["weights_bytes"]
        device = execution_device(model.get_input_embeddings())
        free = available_bytes(device)
        # room for this model's copy (or the next model's load) and activations, beyond what is held already
        needed = 2 * size + (1 << 30)
        fits = free is None or free >= needed
        held = self.config.side_by_side if self.config.side_by_side is not None else fits
        self._timing[name] = {"held": held, "asked": self.config.side_by_side, "fits": fits, "model_bytes": size,
                              "available_bytes": free, "needed_bytes": needed}
        return held

    def report(self, names: list[str] | None = None) -> EvaluationReport:
        """The report of the models added so far (``names``: a subset, in that order)."""
        if any(name not in self._measured for name in self.held):
            raise RuntimeError("the session measures the costs of held models when it closes; call report() after "
                               "the `with` block")
        entries = [self.entries[name] for name in (names or list(self.entries))]
        energy_info = self.energy.info() if self.energy is not None else None
        ppl = entries[0]["perplexity"]
        data = {"text": {"source": self.config.text, "tokens": ppl["tokens"], "windows": ppl["windows"],
                         "seq_len": ppl["seq_len"], "text_tokens": self.data.text_tokens},
                "tasks": {t.name: {"source": t.source, "kind": t.kind, "examples": len(t.examples)}
                          for t in self.data.tasks}}
        return EvaluationReport(settings=self.config.to_dict(), data=data, models=entries, energy=energy_info,
                                versions=_versions())

    # --- measuring ---------------------------------------------------------------------------
    def _quality(self, model, tokenizer, name: str) -> dict:
        config = self.config
        check_seq_len(model.config, config.seq_len, name)
        model.eval()
        report = getattr(model, "pruning_report", None)
        counts = parameter_counts(model)
        phases = dict(self._phases.get(name, {}))
        if getattr(model, "pruning_energy", None) and "pruning" not in phases:
            phases["pruning"] = model.pruning_energy  # recorded by prune(), or read from the checkpoint
        entry: dict[str, Any] = {
            "name": name, "model": _model_info(model), "pruning": report.to_dict() if report else None,
            "size": {"parameters": {"total": counts["total"], "nonzero": counts["nonzero"]},
                     "weights_bytes": counts["bytes"]},
            "tasks": {}, "samples": None, "efficiency": None,
            "energy": phases if self.energy is not None or phases else None}
        label = (lambda phase: f"{name}: {phase}") if config.progress else (lambda phase: False)
        with self.energy.phase(f"{name}/perplexity") if self.energy is not None else nullcontext() as record:
            entry["perplexity"] = load_metric("perplexity").compute(
                texts=self.data.texts, model=model, tokenizer=tokenizer, seq_len=config.seq_len,
                max_windows=config.max_windows, batch_size=config.batch_size, keep_partial=config.keep_partial,
                progress=label("perplexity"))
        if record is not None:
            entry["energy"]["perplexity"] = record.to_dict()
        for task in self.data.tasks:
            entry["tasks"][task.name] = run_task(model, tokenizer, task, config.batch_size or 8, label(task.name))
        if config.samples:
            entry["samples"] = greedy_samples(model, tokenizer, DEFAULT_PROMPTS, config.sample_tokens,
                                              progress=label("greedy samples"))
        return entry

    def _measure_costs(self, models: Mapping[str, Any]) -> None:
        """Efficiency and the energy of the fixed generation workload, in rounds alternating between ``models``.

        The generation workload is the decode timing of the same batch and length when efficiency is
        measured too (its runs are tracked), else its own run; it runs in the first ``energy_rounds`` rounds.
        """
        config = self.config
        self._measured.update(models)
        probe = SpeedProbe(prefill_batch=config.prefill_batch, prefill_seq_len=config.seq_len,
                           decode_batches=config.decode_batches, new_tokens=config.new_tokens, repeats=config.repeats,
                           disk=config.disk) if config.efficiency else None
        energy_rounds = config.energy_rounds if self.energy is not None else 0
        shared = probe is not None and config.energy_batch in config.decode_batches and \
            config.energy_new_tokens == config.new_tokens
        generation = f"decode/{config.energy_batch}" if shared else "generation"
        records: dict[str, list[PhaseEnergy]] = {name: [] for name in models}

        def workloads(name: str, model) -> dict:
            own = probe.workloads(name, model) if probe is not None else {}
            if energy_rounds and generation not in own:
                own[generation] = partial(greedy_generate, model, synthetic_prompts(model, config.energy_batch, WORKLOAD_PROMPT_LEN),
                                          config.energy_new_tokens, fixed_length=True)
            return own

        def warmup(name: str, model, own: dict) -> None:
            (probe.warmup if probe is not None else lambda *_: [fn() for fn in own.values()])(name, model, own)

        def only(key, index: int) -> bool:
            return index < (energy_rounds if key == generation and not shared else config.repeats) or \
                (key == generation and index < energy_rounds)

        @contextmanager
        def tracked(name: str, key, index: int):
            if key != generation or index >= energy_rounds:
                yield
                return
            with self.energy.phase(f"{name}/generation/{len(self.energy.phases)}",
                                   config.energy_batch * config.energy_new_tokens) as record:
                yield
            records[name].append(record)

        rounds = max(config.repeats if probe is not None else 0, energy_rounds)
        times = run_rounds(models, workloads, rounds, warmup=warmup, around=tracked, only=only,
                           progress=config.progress, label="speed and energy" if energy_rounds else "speed")
        timing = {name: {**self._timing.get(name, {}), "with": [n for n in models if n != name]} for name in models}
        for name in models:
            timing[name].setdefault("mode", "interleaved" if len(models) > 1 else "alone")
        if probe is not None:
            for name, result in probe.results(times, timing).items():
                result["timed_with"] = timing[name]["with"]
                self.entries[name]["efficiency"] = result
        for name, own in records.items():
            if own:
                self.entries[name]["energy"]["generation"] = {
                    **PhaseEnergy.combined("generation", own).to_dict(), "rounds": len(own),
                    "batch": config.energy_batch, "new_tokens": config.energy_new_tokens,
                    "workload": "the decode timing runs" if shared else "its own runs",
                    "interleaved_with": timing[name]["with"]}


def prepared(config: EvaluationConfig | Mapping | EvaluationData | None, tokenizer, overrides: dict) -> EvaluationData:
    """``config`` as :class:`EvaluationData` (prepared data passes through; settings are prepared now)."""
    if isinstance(config, EvaluationData):
        if overrides:
            raise ValueError("pass settings either in the prepared EvaluationData or as keywords, not both")
        return config
    return prepare_evaluation(EvaluationConfig.coerce(config, **overrides), tokenizer)


def evaluate_model(model, tokenizer=None, config: EvaluationConfig | Mapping | EvaluationData | None = None, *,
                   name: str = "model", **settings: Any) -> EvaluationReport:
    """Measure one model. ``settings`` are :class:`EvaluationConfig` fields, e.g.::

        evaluate_model(model, tok, text="embedded", seq_len=512, max_windows=40,
                       tasks=["piqa", "arc_easy"], efficiency=True, energy=True)
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("evaluate_model needs the model's tokenizer (tokenizer=...)")
    data = prepared(config, tokenizer, settings)
    check_seq_len(model.config, data.config.seq_len, name)
    with EvaluationSession(data) as session:
        session.add(name, model, tokenizer)
    return session.report()
