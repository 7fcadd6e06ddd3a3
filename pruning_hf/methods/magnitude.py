"""Magnitude pruning: drop the weights with the smallest ``|W|``. Needs no calibration data."""

from __future__ import annotations

import torch

from ..models.architectures import weight_matrix
from ..sparsity.masks import (expand_blocks, global_threshold, mask_from_scores, pattern_unit_scores, threshold_mask,
                               zero_pruned_)
from .base import WeightPruner

__all__ = ["MagnitudePruner"]


class MagnitudePruner(WeightPruner):
    """``score = |W|``; scope 'layer' (per Linear), 'row' (per output row) or 'global' (one threshold).

    With a block pattern the units are whole blocks scored by their summed ``|W|``; 'row' then
    means per strip of block rows.
    """

    name = "magnitude"
    scopes = ("layer", "row", "global")

    def __init__(self, config, progress: bool = False) -> None:
        super().__init__(config, progress)
        self.threshold: float | None = None

    @property
    def inspects_all_weights(self) -> bool:
        return self.config.scope == "global" and not self.pattern.is_nm

    def prepare(self, targets) -> None:
        if self.inspects_all_weights:
            scores = [pattern_unit_scores(weight_matrix(module).detach().abs().float(), self.pattern)
                      for module in targets.values()]
            self.threshold = global_threshold(scores, self.config.sparsity)

    def prune_weight(self, name, weight, stats, sparsity) -> torch.Tensor:
        scores = weight.abs()
        if self.threshold is not None:
            keep = threshold_mask(pattern_unit_scores(scores, self.pattern), self.threshold)
            if self.pattern.is_block:
                keep = expand_blocks(keep, self.pattern.rows, self.pattern.cols)
        else:
            keep = mask_from_scores(scores, sparsity, self.pattern, per_row=self.config.scope == "row")
        return zero_pruned_(weight, keep)
