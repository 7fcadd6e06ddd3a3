"""Wanda (Sun et al., 2023): prune by ``|W_ij| * ||X_j||_2``, compared within each output row; no update."""

from __future__ import annotations

import torch

from ..masks import mask_from_scores
from .base import WeightPruner

__all__ = ["WandaPruner", "wanda_scores"]


def wanda_scores(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    """``(out, in)`` importance ``|W| * ||X_j||`` from weight ``(out, in)`` and input norms ``(in,)``."""
    return weight.abs() * column_norms.to(weight.device).unsqueeze(0)


class WandaPruner(WeightPruner):
    """Scope 'row' (per output, the paper's choice) or 'layer'."""

    name = "wanda"
    scopes = ("row", "layer")
    statistics = "norms"

    def prune_weight(self, name, weight, stats, sparsity) -> torch.Tensor:
        scores = wanda_scores(weight, stats.column_norms)
        keep = mask_from_scores(scores, sparsity, self.pattern, per_row=self.config.scope == "row")
        return weight.masked_fill_(~keep, 0.0)
