"""How a target sparsity is spread over decoder layers: uniform, OWL, one global threshold, or increasing.

``increasing`` (:func:`increasing_fractions`, structured pruning) needs no data: fractions grow with depth.
The two data-driven allocations read the Wanda score ``|W_ij| * ||X_j||_2`` of the **dense** model
(the engine's dense pre-pass feeds each layer the dense outputs of the one before), summarised per
decoder layer as it goes, so memory stays one layer's weights:

* ``owl`` (Yin et al., 2024, "Outlier Weighed Layerwise sparsity"): a layer's *outlier ratio* is
  the fraction of its scores above ``M`` times their mean. Layers with more outliers are pruned
  less: sparsities are a linear function of the ratios, centred on the target (size-weighted mean
  preserved) and spread to at most ``lambda`` either side.
* ``global``: one threshold on the score across all layers; each layer gets the fraction of its
  scores below it. Summarised by a fine log2 histogram per layer (bins of 1/128 octave), and the
  weights of the bin the threshold falls in are shared pro rata, so the size-weighted mean is
  exactly the target.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .scores import wanda_scores

__all__ = ["increasing_fractions", "apportion", "outlier_ratio", "score_histogram", "owl_sparsities", "global_sparsities", "layer_summary",
           "allocate", "MAX_LAYER_SPARSITY", "PREPASS_ALLOCATIONS"]

#: allocations the engine computes with a dense pre-pass (methods list what they accept in ``allocations``)
PREPASS_ALLOCATIONS = ("owl", "global")

#: OWL keeps every layer's sparsity at or below this, shrinking lambda if needed.
MAX_LAYER_SPARSITY = 0.99
_LOG2_LOW, _LOG2_HIGH, _BINS = -64.0, 64.0, 1 << 14


def increasing_fractions(target: float, num_layers: int, spread: float) -> list[float]:
    """Per-layer fractions that grow with depth like ``ln(1 + i)`` (SlimGPT's incremental pruning ratio: errors
    of early layers travel through every later one, so early layers lose less). Layer ``i`` of ``L`` gets
    ``target * (1 + spread * (ln(1 + i) - mean_j ln(1 + j)) / ln L)``, so the mean over layers is ``target``;
    ``spread=0`` is uniform; each fraction is clipped to ``[0, MAX_LAYER_SPARSITY]``."""
    if num_layers <= 1:
        return [target] * num_layers
    logs = [math.log1p(i) for i in range(num_layers)]
    mean = sum(logs) / num_layers
    return [min(max(target * (1.0 + spread * (x - mean) / math.log(num_layers)), 0.0), MAX_LAYER_SPARSITY)
            for x in logs]


def apportion(total: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """``total`` whole units shared over layers in proportion to ``weights``, each at most its cap: floors of
    the exact shares first, then one more to the largest remainders (Hamilton's method)."""
    total = min(total, sum(caps))
    weight_sum = sum(weights) or 1.0
    exact = [total * w / weight_sum for w in weights]
    counts = [min(math.floor(e), cap) for e, cap in zip(exact, caps)]
    order = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    while sum(counts) < total:
        for i in order:
            if sum(counts) < total and counts[i] < caps[i]:
                counts[i] += 1
    return counts


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """Fraction of all entries of ``scores`` (a layer's score tensors) above ``m`` x their common mean."""
    total = sum(s.numel() for s in scores)
    mean = sum(float(s.double().sum()) for s in scores) / total
    return sum(int((s > m * mean).sum()) for s in scores) / total


def score_histogram(scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(bins,)`` int64 counts of ``log2(score)`` over fixed bins (zeros fall in the first bin)."""
    counts = torch.zeros(_BINS, dtype=torch.long)
    scale = _BINS / (_LOG2_HIGH - _LOG2_LOW)
    for s in scores:
        index = ((s.float().log2() - _LOG2_LOW) * scale).floor().clamp(0, _BINS - 1).long()
        counts += torch.bincount(index.flatten(), minlength=_BINS).cpu()
    return counts


def owl_sparsities(ratios: Sequence[float], sizes: Sequence[int], target: float, lam: float) -> list[float]:
    """OWL layer sparsities: ``target - spread * (r - mean r) / max|r - mean r|``.

    Args:
        ratios: outlier ratio per layer.
        sizes: weights per layer (the mean is size-weighted, so the whole model hits ``target``).
        target: mean sparsity.
        lam: maximum deviation from ``target`` (shrunk so every layer stays in [0, 0.99]).
    Returns:
        One sparsity per layer; higher outlier ratio -> lower sparsity.
    """
    r = torch.tensor(ratios, dtype=torch.float64)
    n = torch.tensor(sizes, dtype=torch.float64)
    deviation = r - (r * n).sum() / n.sum()
    largest = deviation.abs().max()
    spread = max(0.0, min(lam, target, MAX_LAYER_SPARSITY - target))
    if largest == 0 or spread == 0:
        return [target] * len(ratios)
    return (target - spread * deviation / largest).tolist()


def global_sparsities(histograms: Sequence[torch.Tensor], target: float) -> list[float]:
    """Per-layer sparsity from one global score threshold, given each layer's :func:`score_histogram`."""
    counts = torch.stack(list(histograms)).double()  # (layers, bins)
    sizes = counts.sum(1)
    k = target * sizes.sum()
    cumulative = counts.sum(0).cumsum(0)
    crossing = int(torch.searchsorted(cumulative, k))
    crossing = min(crossing, counts.shape[1] - 1)
    below = counts[:, :crossing].sum(1)
    already = cumulative[crossing - 1] if crossing else torch.tensor(0.0, dtype=torch.float64)
    in_bin = counts[:, crossing]
    share = (k - already) / in_bin.sum() if in_bin.sum() > 0 else 0.0
    return ((below + share * in_bin) / sizes).clamp(0.0, 1.0).tolist()


def layer_summary(allocation: str, weights: Sequence[torch.Tensor], column_norms: Sequence[torch.Tensor],
                  m: float) -> float | torch.Tensor:
    """What an allocation keeps of one dense layer: OWL its outlier ratio, global a score histogram.

    Args:
        weights: the layer's target weights, ``(out, in)`` each.
        column_norms: ``(in,)`` input norms ``||X_j||`` of each weight (Wanda's score ``|W| * ||X||``).
    """
    scores = [wanda_scores(w.float(), norms) for w, norms in zip(weights, column_norms)]
    return outlier_ratio(scores, m) if allocation == "owl" else score_histogram(scores)


def allocate(allocation: str, summaries: Sequence, sizes: Sequence[int], target: float, lam: float) -> list[float]:
    """Layer sparsities from :func:`layer_summary` outputs (one per pruned decoder layer)."""
    if allocation == "owl":
        return owl_sparsities(summaries, sizes, target, lam)
    if allocation == "global":
        return global_sparsities(summaries, target)
    raise ValueError(f"allocation={allocation!r} has no per-layer summary (uniform needs none)")
