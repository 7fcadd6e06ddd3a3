"""Iterative pruning with validation checks: raise sparsity in steps, keep the last model within budget.

Each step prunes the model *as it stands* (the previous step's zeros score lowest, so they stay
pruned for score-based methods) up to the step's total sparsity, then measures perplexity on a
validation slice. The first step whose perplexity exceeds ``(1 + max_increase) x`` the dense
perplexity is undone (weights restored from a CPU copy) and the search stops: the model left is
the last one that met the budget, or the dense model if none did.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from ..config import PruningConfig
from ..data.text import calibration_windows, consecutive_windows, load_texts, tokenize_texts
from ..engine import PruningReport, select_targets
from ..evaluation.energy import tracked
from ..evaluation.perplexity import window_nll
from ..hf.pruning import prune
from ..models.architectures import context_length, weight_matrix
from ..models.devices import onloaded, write_weight
from ..utils.checks import check_number

__all__ = ["iterative_prune", "IterativeResult", "IterationStep", "sparsity_steps"]

logger = logging.getLogger(__name__)


@dataclass
class IterationStep:
    sparsity: float          # target sparsity of this step (fraction of all targeted weights)
    perplexity: float        # on the validation windows after this step
    increase: float          # perplexity / dense perplexity - 1
    accepted: bool           # within budget (kept, unless a later step is kept instead)
    prune_seconds: float
    eval_seconds: float


@dataclass
class IterativeResult:
    """Outcome of :func:`iterative_prune`; ``sparsity`` is the kept step's (0.0: dense model kept)."""

    sparsity: float
    dense_perplexity: float
    max_increase: float
    validation_tokens: int
    steps: list[IterationStep] = field(default_factory=list)
    report: PruningReport | None = None  # the kept step's pruning report

    @property
    def perplexity(self) -> float:
        """Validation perplexity of the model that was kept."""
        kept = [step for step in self.steps if step.accepted]
        return kept[-1].perplexity if kept else self.dense_perplexity

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["report"] = self.report.to_dict() if self.report is not None else None
        data["perplexity"] = self.perplexity
        return data


def sparsity_steps(final: float, step: float) -> list[float]:
    """``step, 2 step, ...`` up to and including ``final`` (the last step may be shorter)."""
    check_number("sparsity", final, 0.0, 1.0, low_inclusive=False)
    check_number("step", step, 0.0, 1.0, low_inclusive=False)
    count = math.ceil(final / step - 1e-9)
    return [round(min(final, step * (i + 1)), 6) for i in range(count)]


def _check_steps(steps: Sequence[float]) -> list[float]:
    values = [check_number(f"steps[{i}]", s, 0.0, 1.0, low_inclusive=False) for i, s in enumerate(steps)]
    if not values:
        raise ValueError("steps must hold at least one sparsity in (0, 1)")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"steps must increase strictly, got {list(steps)}")
    return values


def _validation_windows(validation, tokenizer, seq_len: int, max_windows: int | None) -> list[torch.Tensor]:
    if isinstance(validation, str):
        if tokenizer is None:
            raise ValueError(f"validation={validation!r} is a text source: pass tokenizer= to tokenize it")
        tokens = tokenize_texts(load_texts(validation), tokenizer)
        windows = consecutive_windows(tokens, seq_len, max_windows)
        if not windows:
            raise ValueError(f"validation text {validation!r} has {tokens.numel()} tokens, fewer than one "
                             f"window of {seq_len}")
        return windows
    if isinstance(validation, torch.Tensor):
        validation = list(validation) if validation.dim() == 2 else [validation]
    windows = list(validation)
    if not windows or any(not isinstance(w, torch.Tensor) or w.dim() != 1 or w.numel() < 2 for w in windows):
        raise ValueError("validation must be a text source, a (num, seq_len) tensor of token ids or a list of "
                         "1-D token tensors with at least 2 tokens each")
    return windows


def _snapshot(targets: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """CPU copies of the targets' ``(out, in)`` weights."""
    with onloaded(targets.values()):
        return {name: weight_matrix(module).detach().to("cpu", copy=True) for name, module in targets.items()}


def _restore(targets: dict[str, torch.nn.Module], saved: dict[str, torch.Tensor]) -> None:
    with onloaded(targets.values()):
        for name, module in targets.items():
            write_weight(module, saved[name])


def iterative_prune(model, config: PruningConfig, validation, *, tokenizer=None, steps: Sequence[float] | None = None,
                    step: float = 0.1, max_increase: float = 0.10, windows: torch.Tensor | None = None,
                    validation_seq_len: int = 512, validation_windows: int | None = 16, batch_size: int = 4,
                    progress: bool = True, energy: bool = True, country_iso_code: str | None = None) -> IterativeResult:
    """Prune ``model`` in place in rising sparsity steps; keep the last step within the perplexity budget.

    Args:
        model: a loaded causal LM.
        config: how to prune; its ``sparsity`` is the last step unless ``steps`` is given. A method that
            zeroes weights (magnitude, wanda, sparsegpt), not N:M (see ``PruningConfig.check_iterative``).
        validation: text source (``"embedded@test"``, a file, ...; needs ``tokenizer``), a
            ``(num, seq_len)`` tensor of token ids or a list of 1-D token tensors.
        steps: explicit increasing total sparsities; default ``step, 2 step, ..., config.sparsity``.
        max_increase: budget, relative perplexity increase over the dense model (0.10 = +10%).
        windows: calibration windows (built once from ``config.calibration`` with ``tokenizer`` if
            omitted and needed) shared by every step.
        validation_seq_len / validation_windows: how a text source is cut (consecutive windows).
        energy / country_iso_code: track the whole search (every step and validation) as the kept
            model's pruning energy (see :func:`~pruning_hf.hf.pruning.prune`).
    Returns:
        :class:`IterativeResult`; the model holds the kept step's weights, ``pruning_config`` and
        ``pruning_report`` (or its dense weights if no step met the budget).
    """
    if not isinstance(config, PruningConfig):
        raise ValueError(f"config must be a PruningConfig, got {type(config).__name__}")
    config.check_iterative()
    check_number("max_increase", max_increase, 0.0, 1e9)
    steps = _check_steps(steps) if steps is not None else sparsity_steps(config.sparsity, step)
    val = _validation_windows(validation, tokenizer, validation_seq_len, validation_windows)
    if windows is None and config.needs_calibration:
        if tokenizer is None:
            raise ValueError(f"{config.describe()!r} needs calibration data: pass tokenizer= or windows=")
        windows = calibration_windows(config.calibration, tokenizer, context_length(model.config))
    per_layer, head = select_targets(model, config)
    targets = {name: module for layer in per_layer for name, module in layer.items()} | head

    def validation_perplexity() -> tuple[float, int]:
        nll, count = window_nll(model, val, batch_size)
        return math.exp(nll / count), count

    with tracked("pruning", country_iso_code) if energy else nullcontext() as measured:
        result = _search(model, config, tokenizer, steps, max_increase, windows, targets, validation_perplexity,
                         progress)
    if result.report is not None and measured:
        model.pruning_energy = measured
    return result


def _search(model, config, tokenizer, steps, max_increase, windows, targets, validation_perplexity,
            progress) -> IterativeResult:
    dense_perplexity, tokens = validation_perplexity()
    result = IterativeResult(0.0, dense_perplexity, max_increase, tokens)
    kept_state = (getattr(model, "pruning_config", None), getattr(model, "pruning_report", None),
                  getattr(model.config, "pruning_config", None), getattr(model, "pruning_energy", None))
    saved = _snapshot(targets)
    budget = dense_perplexity * (1.0 + max_increase)
    for sparsity in steps:
        step_config = PruningConfig.from_dict({**config.to_dict(), "sparsity": sparsity})
        start = time.perf_counter()
        report = prune(model, step_config, tokenizer, progress=progress, windows=windows, energy=False)
        pruned_at = time.perf_counter()
        perplexity, _ = validation_perplexity()
        accepted = perplexity <= budget
        result.steps.append(IterationStep(sparsity, perplexity, perplexity / dense_perplexity - 1.0, accepted,
                                          pruned_at - start, time.perf_counter() - pruned_at))
        logger.info("iterative pruning: sparsity %.3f -> perplexity %.3f (%+.1f%%, budget %+.1f%%): %s", sparsity,
                    perplexity, 100 * (perplexity / dense_perplexity - 1), 100 * max_increase,
                    "kept" if accepted else "over budget, undone")
        if not accepted:
            _restore(targets, saved)
            model.pruning_config, model.pruning_report, model.config.pruning_config, model.pruning_energy = kept_state
            break
        result.sparsity, result.report = sparsity, report
        kept_state = (model.pruning_config, model.pruning_report, model.config.pruning_config, None)
        if sparsity != steps[-1]:
            saved = _snapshot(targets)
    return result
