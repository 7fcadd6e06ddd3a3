"""Magnitude pruning: drop the weights with the smallest ``|W|``. Needs no calibration data."""

from __future__ import annotations

import torch

from ..masks import expand_blocks, global_threshold, mask_from_scores, threshold_mask, unit_scores
from .base import WeightPruner, weight_matrix

__all__ = ["MagnitudePruner"]


class MagnitudePruner(WeightPruner):
    """``score = |W|``; scope 'layer' (per Linear), 'row' (per output row) or 'global' (one threshold).

    With a block pattern the units are whole blocks scored by their summed ``|W|``; 'row' then
    means per strip of block rows.
    """

    name = "magnitude"
    scopes = ("layer", "row", "global")

    def __init__(self, config) -> None:
        super().__init__(config)
        self.threshold: float | None = None

    def prepare(self, targets) -> None:
        if self.config.scope == "global" and not self.pattern.is_nm:
            scores = [unit_scores(weight_matrix(module).detach().abs().float(), self.pattern)
                      for module in targets.values()]
            self.threshold = global_threshold(scores, self.config.sparsity)

    def prune_weight(self, name, weight, stats, sparsity) -> torch.Tensor:
        scores = weight.abs()
        if self.threshold is not None:
            keep = threshold_mask(unit_scores(scores, self.pattern), self.threshold)
            if self.pattern.is_block:
                keep = expand_blocks(keep, self.pattern.rows, self.pattern.cols)
        else:
            keep = mask_from_scores(scores, sparsity, self.pattern, per_row=self.config.scope == "row")
        return weight.masked_fill_(~keep, 0.0)
