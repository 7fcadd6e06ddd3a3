"""Structured pruning's unit scores and per-layer unit counts (pure tensor maths, no models).

A *unit* (an FFN neuron, a KV group or a query head) owns ``block`` consecutive input columns ``c`` of an
output projection ``W_out`` ``(hidden, cols)``; :func:`column_energy` scores each column, :func:`unit_importance`
sums a unit's columns, :func:`units_to_keep` keeps the best, and :func:`adaptive_removals` ranks all layers'
standardised scores globally (FLAP). Reconstruction-aware selection lives in :mod:`.reconstruction`.
"""

from __future__ import annotations

import logging
import math

import torch

from .allocation import apportion, increasing_fractions
from .masks import num_to_prune
from .statistics import InputStatistics

__all__ = ["column_energy", "unit_importance", "units_to_keep", "adaptive_removals", "layer_removals"]

logger = logging.getLogger(__name__)


def column_energy(importance: str, w_out: torch.Tensor, w_in: list[torch.Tensor],
                  stats: InputStatistics | None) -> torch.Tensor:
    """``(cols,)`` importance energy of each input column ``c`` of an output projection.

    Args:
        importance: 'magnitude', 'activation' or 'fluctuation'.
        w_out: ``(hidden, cols)`` output-projection weight.
        w_in: ``(cols, hidden)`` input-projection weights whose rows belong to the same columns.
        stats: the output projection's input statistics (for 'activation' / 'fluctuation').
    """
    out_energy = w_out.float().square().sum(0)
    if importance == "magnitude":
        return out_energy + sum(w.float().square().sum(1) for w in w_in)
    if importance == "activation":
        return out_energy * stats.sq_norms.to(out_energy.device)
    return out_energy * stats.variance.to(out_energy.device)


def unit_importance(energy: torch.Tensor, block: int, squared: bool = False) -> torch.Tensor:
    """``(units,)`` scores of units made of ``block`` consecutive columns: ``sqrt(sum energy)`` (or the sum)."""
    total = energy.view(-1, block).sum(1)
    return total if squared else total.sqrt()


def units_to_keep(scores: torch.Tensor, remove: int) -> torch.Tensor:
    """Sorted indices of the ``len(scores) - remove`` highest-scored units."""
    keep = len(scores) - remove
    return torch.topk(scores, keep, sorted=False).indices.sort().values


def adaptive_removals(scores: list[torch.Tensor], fraction: float, min_keep: float) -> list[int]:
    """Units to remove per layer from one global ranking of per-layer standardised scores.

    Args:
        scores: per layer, ``(units,)`` scores.
        fraction: share of all units to remove.
        min_keep: each layer keeps at least ``max(1, ceil(min_keep * units))``.
    Returns:
        Number of units to remove in each layer (summing to the budget, or to every layer's
        allowance when the floors leave less).
    """
    budget = num_to_prune(sum(len(s) for s in scores), fraction)
    caps = torch.tensor([len(s) - max(1, math.ceil(min_keep * len(s))) for s in scores])
    if budget > caps.sum():
        logger.warning("min_layer_keep=%s allows removing only %d of %d units requested", min_keep,
                       int(caps.sum()), budget)
    standard = torch.cat([(s.float() - s.float().mean()) / s.float().std().clamp_min(1e-12) if len(s) > 1
                          else torch.zeros(len(s)) for s in scores])
    layer_of = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    rank_in_layer = torch.cat([s.float().argsort().argsort() for s in scores])
    eligible = (rank_in_layer < caps[layer_of]).nonzero().squeeze(1)
    chosen = eligible[standard[eligible].argsort()[:budget]]
    return torch.bincount(layer_of[chosen], minlength=len(scores)).tolist()


def layer_removals(units: list[int], sparsity: float, spread: float | None = None) -> list[int]:
    """Units each layer loses, every layer keeping one: ``round(sparsity * units)`` (uniform; ``spread`` None),
    or the same total shared in proportion to :func:`~.allocation.increasing_fractions` (so both remove as many)."""
    uniform = [min(num_to_prune(count, sparsity), count - 1) for count in units]
    if spread is None:
        return uniform
    fractions = increasing_fractions(sparsity, len(units), spread)
    return apportion(sum(uniform), [f * count for f, count in zip(fractions, units)], [count - 1 for count in units])
