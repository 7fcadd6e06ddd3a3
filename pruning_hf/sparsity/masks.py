"""Sparsity patterns and masks as small pure tensor functions.

Convention: a *mask* is a boolean tensor shaped like the weight, ``True`` where the weight is **kept**.
*Scores* are non-negative importances shaped like the weight ``(out_features, in_features)``; the
lowest-scored weights are pruned. Every function here is deterministic and side-effect free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch

from ..utils.checks import shown

__all__ = [
    "Pattern",
    "parse_pattern",
    "num_to_prune",
    "topk_mask",
    "zero_pruned_",
    "nm_mask",
    "block_scores",
    "expand_blocks",
    "block_mask",
    "pattern_unit_scores",
    "threshold_mask",
    "mask_from_scores",
    "global_threshold",
    "check_nm",
]

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK_RE = re.compile(r"^\s*(?:block\s*:\s*)?(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Pattern:
    """A sparsity layout.

    ``kind == "unstructured"``: any weight may be pruned.
    ``kind == "nm"``: at most ``n`` non-zero weights in every group of ``m`` consecutive input
    columns of each output row (``2:4`` keeps 2 of 4, the layout GPU sparse tensor cores use).
    ``kind == "block"``: the ``(out, in)`` weight is tiled into ``rows x cols`` blocks (``rows``
    consecutive output rows by ``cols`` consecutive input columns); each block is kept or pruned
    as a whole, by the sum of its weights' scores.
    """

    kind: str
    n: int = 0
    m: int = 0
    rows: int = 1
    cols: int = 1

    @property
    def is_nm(self) -> bool:
        return self.kind == "nm"

    @property
    def is_block(self) -> bool:
        return self.kind == "block"

    @property
    def implied_sparsity(self) -> float | None:
        """Sparsity fixed by the pattern itself (``1 - n/m`` for N:M), else ``None``."""
        return 1.0 - self.n / self.m if self.is_nm else None

    def __str__(self) -> str:
        if self.is_block:
            return f"block:{self.rows}x{self.cols}"
        return f"{self.n}:{self.m}" if self.is_nm else self.kind

    def check_shape(self, name: str, shape: tuple[int, int]) -> None:
        """Raise ValueError when an ``(out, in)`` weight cannot hold this pattern (tiles must fit exactly)."""
        out_features, in_features = shape
        if self.is_nm and in_features % self.m:
            raise ValueError(f"pattern={str(self)!r} needs input widths divisible by M={self.m}, but {name} "
                             f"has shape {tuple(shape)}; exclude it with ignore=[...] or pick another M")
        if self.is_block and (out_features % self.rows or in_features % self.cols):
            raise ValueError(f"pattern={str(self)!r} needs {self.rows} | out_features and {self.cols} | in_features, "
                             f"but {name} has shape (out={out_features}, in={in_features}); exclude it with "
                             "ignore=[...] or pick a block size that divides both")


def parse_pattern(text: str) -> Pattern:
    """Parse ``"unstructured"``, ``"N:M"`` (e.g. ``"2:4"``) or blocks ``"RxC"`` / ``"block:RxC"``
    (e.g. ``"4x4"``); raise ``ValueError`` naming the problem."""
    if not isinstance(text, str):
        raise ValueError(f"pattern must be a string such as 'unstructured', '2:4' or 'block:4x4', got {shown(text)}")
    if text.strip().lower() == "unstructured":
        return Pattern("unstructured")
    block = _BLOCK_RE.match(text)
    if block is not None:
        rows, cols = int(block.group(1)), int(block.group(2))
        if rows < 1 or cols < 1 or rows * cols < 2:
            raise ValueError(f"pattern={shown(text)}: blocks need rows >= 1, cols >= 1 and at least 2 weights "
                             "(e.g. 'block:4x4' or 'block:1x8')")
        return Pattern("block", rows=rows, cols=cols)
    match = _NM_RE.match(text)
    if match is None:
        raise ValueError(
            f"pattern={shown(text)} is not a sparsity pattern; use 'unstructured', 'N:M' "
            "(keep N of every M consecutive weights, e.g. '2:4') or 'block:RxC' "
            "(whole R-row x C-column blocks, e.g. 'block:4x4')"
        )
    n, m = int(match.group(1)), int(match.group(2))
    if m < 2 or n < 1 or n >= m:
        raise ValueError(
            f"pattern={shown(text)} keeps N={n} of every M={m} weights: need 1 <= N < M and M >= 2 "
            "(e.g. '2:4' keeps 2 of 4 = 50% sparsity)"
        )
    return Pattern("nm", n, m)


def num_to_prune(count: int, sparsity: float) -> int:
    """How many of ``count`` weights to prune for a target ``sparsity`` (rounded to nearest)."""
    return min(count, max(0, int(round(count * sparsity))))


def topk_mask(scores: torch.Tensor, sparsity: float, dim: int | None = None) -> torch.Tensor:
    """Keep the highest scores, pruning ``round(sparsity * n)`` entries.

    Args:
        scores: ``(out, in)`` importances.
        sparsity: fraction to prune, in [0, 1).
        dim: ``None`` compares all entries of the tensor (per-layer); ``-1``/``1`` compares within
            each row (per output neuron, as Wanda does).
    Returns:
        Bool mask shaped like ``scores``, exactly ``round(sparsity * n)`` False per comparison group.
    """
    if dim is None:
        flat = scores.reshape(-1)
        k = num_to_prune(flat.numel(), sparsity)
        keep = torch.ones_like(flat, dtype=torch.bool)
        if k:
            keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
        return keep.view_as(scores)
    k = num_to_prune(scores.shape[dim], sparsity)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        keep.scatter_(dim, torch.topk(scores, k, dim=dim, largest=False, sorted=False).indices, False)
    return keep


def zero_pruned_(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``weight`` with the entries where the bool ``keep`` (same shape) is False set to +0.0, in place.

    A multiply by the mask, then ``+ 0.0`` so that pruned negative weights give +0.0, not -0.0 (what
    ``masked_fill_(~keep, 0)`` gives, at about a quarter of its CPU time).
    """
    return weight.mul_(keep).add_(0.0)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive columns of each row.

    Args:
        scores: ``(out, in)`` with ``in % m == 0``.
    Returns:
        Bool mask ``(out, in)`` with exactly ``n`` True per group.
    """
    out_features, in_features = scores.shape
    if in_features % m:
        raise ValueError(
            f"an {n}:{m} pattern needs the input width to be a multiple of {m}, got {in_features}"
        )
    groups = scores.reshape(out_features, in_features // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, torch.topk(groups, n, dim=-1, sorted=False).indices, True)
    return keep.view(out_features, in_features)


def block_scores(scores: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Sum of ``scores`` ``(out, in)`` over each ``rows x cols`` block -> ``(out // rows, in // cols)``."""
    out_features, in_features = scores.shape
    if out_features % rows or in_features % cols:
        raise ValueError(f"a {rows}x{cols} block pattern needs the weight shape to be divisible by it, "
                         f"got {tuple(scores.shape)}")
    return scores.reshape(out_features // rows, rows, in_features // cols, cols).sum(dim=(1, 3))


def expand_blocks(block_keep: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Per-block mask ``(out // rows, in // cols)`` -> per-weight mask ``(out, in)``."""
    return block_keep.repeat_interleave(rows, dim=0).repeat_interleave(cols, dim=1)


def block_mask(scores: torch.Tensor, sparsity: float, rows: int, cols: int, per_row: bool = False) -> torch.Tensor:
    """Prune ``round(sparsity * blocks)`` whole ``rows x cols`` blocks with the lowest summed scores.

    Args:
        scores: ``(out, in)`` importances, ``out % rows == in % cols == 0``.
        per_row: compare blocks within each strip of ``rows`` output rows (each strip loses the
            same fraction) instead of across the whole tensor.
    Returns:
        Bool mask ``(out, in)``, constant on every block.
    """
    keep = topk_mask(block_scores(scores, rows, cols), sparsity, dim=-1 if per_row else None)
    return expand_blocks(keep, rows, cols)


def pattern_unit_scores(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Scores of the units a pattern prunes: whole blocks for block patterns, else single weights."""
    return block_scores(scores, pattern.rows, pattern.cols) if pattern.is_block else scores


def threshold_mask(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep entries whose score is strictly above ``threshold``."""
    return scores > threshold


def mask_from_scores(
    scores: torch.Tensor, sparsity: float, pattern: Pattern, per_row: bool = False
) -> torch.Tensor:
    """Choose a keep-mask from scores for a pattern: N:M groups, blocks, else per-row or per-tensor top-k."""
    if pattern.is_nm:
        return nm_mask(scores, pattern.n, pattern.m)
    if pattern.is_block:
        return block_mask(scores, sparsity, pattern.rows, pattern.cols, per_row)
    return topk_mask(scores, sparsity, dim=-1 if per_row else None)


def global_threshold(score_tensors: Iterable[torch.Tensor], sparsity: float) -> float:
    """The score below or at which ``sparsity`` of all scores across several tensors fall.

    Exact k-th smallest value over the union without concatenating the tensors: a binary search on
    the float32 bit patterns (monotonic for non-negative floats), 31 counting passes, so memory stays
    bounded by one tensor even for billions of weights.

    Args:
        score_tensors: non-negative score tensors (re-iterated once per pass; pass a list).
        sparsity: fraction of all entries to prune.
    Returns:
        Threshold ``t``: pruning ``score <= t`` prunes ``round(sparsity * total)`` entries (plus ties).
    """
    tensors = list(score_tensors)
    total = sum(t.numel() for t in tensors)
    k = num_to_prune(total, sparsity)
    if k == 0:
        return -1.0
    lo, hi = 0, 0x7F800000  # bit patterns of 0.0 and +inf
    while lo < hi:
        mid = (lo + hi) // 2
        value = torch.tensor(mid, dtype=torch.int32).view(torch.float32).item()
        count = sum(int((t.float() <= value).sum()) for t in tensors)
        if count >= k:
            hi = mid
        else:
            lo = mid + 1
    return torch.tensor(lo, dtype=torch.int32).view(torch.float32).item()


def check_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive columns of each row holds at most ``n`` non-zeros."""
    out_features, in_features = weight.shape
    if in_features % m:
        return False
    groups = (weight != 0).reshape(out_features, in_features // m, m).sum(-1)
    return bool((groups <= n).all())
