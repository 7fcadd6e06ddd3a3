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

__all__ = [
    "Pattern",
    "parse_pattern",
    "num_to_prune",
    "topk_mask",
    "nm_mask",
    "threshold_mask",
    "mask_from_scores",
    "global_threshold",
    "check_nm",
]

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Pattern:
    """A sparsity layout.

    ``kind == "unstructured"``: any weight may be pruned.
    ``kind == "nm"``: at most ``n`` non-zero weights in every group of ``m`` consecutive input
    columns of each output row (``2:4`` keeps 2 of 4, the layout GPU sparse tensor cores use).
    """

    kind: str
    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.kind == "nm"

    @property
    def implied_sparsity(self) -> float | None:
        """Sparsity fixed by the pattern itself (``1 - n/m`` for N:M), else ``None``."""
        return 1.0 - self.n / self.m if self.is_nm else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else self.kind


def parse_pattern(text: str) -> Pattern:
    """Parse ``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``); raise ``ValueError`` naming the problem."""
    if not isinstance(text, str):
        raise ValueError(f"pattern must be a string such as 'unstructured' or '2:4', got {text!r}")
    if text.strip().lower() == "unstructured":
        return Pattern("unstructured")
    match = _NM_RE.match(text)
    if match is None:
        raise ValueError(
            f"pattern={text!r} is not a sparsity pattern; use 'unstructured' or 'N:M' "
            "(keep N of every M consecutive weights), e.g. '2:4' or '4:8'"
        )
    n, m = int(match.group(1)), int(match.group(2))
    if m < 2 or n < 1 or n >= m:
        raise ValueError(
            f"pattern={text!r} keeps N={n} of every M={m} weights: need 1 <= N < M and M >= 2 "
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


def threshold_mask(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep entries whose score is strictly above ``threshold``."""
    return scores > threshold


def mask_from_scores(
    scores: torch.Tensor, sparsity: float, pattern: Pattern, per_row: bool = False
) -> torch.Tensor:
    """Choose a keep-mask from scores for a pattern: N:M groups, else per-row or per-tensor top-k."""
    if pattern.is_nm:
        return nm_mask(scores, pattern.n, pattern.m)
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
