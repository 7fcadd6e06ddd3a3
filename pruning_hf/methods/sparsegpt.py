"""SparseGPT (Frantar & Alistarh, 2023): pick the mask with second-order saliency ``w^2 / [H^-1]_jj^2``
and update the kept weights with OBS corrections so the layer output ``W X`` changes as little as
possible. ``H = X^T X`` from calibration inputs (fp32), dampened by a fraction of its mean diagonal;
columns are processed in blocks, and errors of each block are spread over the remaining columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..sparsity.hessian import fill_dead_inputs, inverse_hessian_factor
from ..sparsity.masks import Pattern, mask_from_scores, nm_mask, zero_pruned_
from ..sparsity.statistics import StatisticsSpec
from ..utils.checks import check_int, check_number
from .base import WeightPruner

__all__ = ["SparseGPTOptions", "SparseGPTPruner", "sparsegpt_prune"]


@dataclass
class SparseGPTOptions:
    dampening: float = field(default=0.01, metadata={"help": (
        "Added to the Hessian diagonal as a fraction of its mean (the paper's 1%).")})
    block_size: int = field(default=128, metadata={"help": "Columns pruned together before the lazy update."})
    dampening_retries: int = field(default=6, metadata={"help": (
        "If the Cholesky factorisation fails, retry with 10x more dampening this many times.")})

    def __post_init__(self) -> None:
        check_number("dampening", self.dampening, 0.0, 10.0, low_inclusive=False, high_inclusive=True)
        check_int("block_size", self.block_size, 1)
        check_int("dampening_retries", self.dampening_retries, 0)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, pattern: Pattern,
                    block_size: int = 128, dampening: float = 0.01, retries: int = 6,
                    row_groups: Sequence[int] | None = None) -> torch.Tensor:
    """Prune ``weight`` ``(out, in)`` in place with OBS updates; ``hessian`` is ``(in, in)`` fp32.

    Unstructured: each block of ``block_size`` columns loses ``sparsity`` of its weights (lowest
    ``w^2 / d^2`` across the block); block patterns likewise lose whole tiles, scored by their
    summed saliency (``block_size`` must be a multiple of the tile width). N:M: each group of ``m``
    columns keeps its ``n`` best weights, chosen after the updates from earlier columns. Rows are
    independent given ``H``, so Linears that share an input can be stacked and pruned in one pass:
    ``row_groups`` (row counts summing to ``out``) makes each stacked matrix choose its unstructured
    mask on its own. Returns ``weight``.
    """
    row_groups = list(row_groups) if row_groups else [weight.shape[0]]
    hessian, dead = fill_dead_inputs(hessian)  # inputs that are always zero: their weights do nothing
    if not pattern.is_block:  # zero them (a block pattern keeps or drops whole tiles, dead columns included)
        weight[:, dead] = 0.0
    hinv, _ = inverse_hessian_factor(hessian, dampening, retries)
    columns = weight.shape[1]
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block = weight[:, start:end].clone()
        block_hinv = hinv[start:end, start:end]
        diag = block_hinv.diagonal()
        errors = torch.zeros_like(block)
        keep = torch.ones_like(block, dtype=torch.bool)
        if not pattern.is_nm:
            saliency = block.square() / diag.square().unsqueeze(0)
            keep = torch.cat([mask_from_scores(part, sparsity, pattern) for part in saliency.split(row_groups)])
        for i in range(end - start):
            if pattern.is_nm and i % pattern.m == 0:
                group = slice(i, i + pattern.m)
                keep[:, group] = nm_mask(block[:, group].square() / diag[group].square(), pattern.n, pattern.m)
            column = block[:, i]
            error = column * (~keep[:, i]) / diag[i]  # (w - q) / d, q = column with pruned entries zeroed
            block[:, i:].addr_(error, block_hinv[i, i:], alpha=-1.0)
            errors[:, i] = error
        weight[:, start:end] = zero_pruned_(block, keep)
        weight[:, end:] -= errors @ hinv[start:end, end:]
    return weight


class SparseGPTPruner(WeightPruner):
    """Second-order pruning with weight reconstruction; scope is fixed (per column block)."""

    name = "sparsegpt"
    Options = SparseGPTOptions
    statistics = StatisticsSpec(hessian=True)
    fits_dense_targets = True
    stacks_shared_inputs = True

    @classmethod
    def validate_config(cls, config) -> None:
        super().validate_config(config)
        pattern, block_size = config.pattern_spec, config.options.block_size
        width = f"M={pattern.m}" if pattern.is_nm else f"the block width C={pattern.cols}"
        if block_size % (pattern.m if pattern.is_nm else pattern.cols):
            raise ValueError(
                f"block_size={block_size} must be a multiple of {width} for pattern={config.pattern!r} "
                "so no group of columns straddles two blocks")

    def prune_weight(self, name, weight, stats, sparsity, row_groups=None) -> torch.Tensor:
        return sparsegpt_prune(weight, stats.hessian.to(weight.device), sparsity, self.pattern,
                               self.options.block_size, self.options.dampening, self.options.dampening_retries,
                               row_groups)
