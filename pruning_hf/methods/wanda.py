"""Wanda (Sun et al., 2023): prune by ``|W_ij| * ||X_j||_2``, compared within each output row; no update."""

from __future__ import annotations

import torch

from ..sparsity.masks import mask_from_scores, zero_pruned_
from ..sparsity.scores import wanda_scores
from ..sparsity.statistics import StatisticsSpec
from .base import WeightPruner

__all__ = ["WandaPruner"]


class WandaPruner(WeightPruner):
    """Scope 'row' (per output, the paper's choice) or 'layer'."""

    name = "wanda"
    scopes = ("row", "layer")
    statistics = StatisticsSpec()

    def prune_weight(self, name, weight, stats, sparsity) -> torch.Tensor:
        scores = wanda_scores(weight, stats.column_norms)
        keep = mask_from_scores(scores, sparsity, self.pattern, per_row=self.config.scope == "row")
        return zero_pruned_(weight, keep)
