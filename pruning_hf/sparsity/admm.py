"""Layer-wise pruning by ADMM with a growing penalty and an optional gradual mask (pure tensor maths).

The problem, for one Linear with weight ``W`` ``(out, in)`` and calibration inputs ``X`` ``(tokens, in)``:

    min_P  ||X W^T - X P^T||^2 + lam ||W - P||^2     subject to: P obeys the sparsity pattern

(``lam``: dampening, a fraction of the mean of ``diag H``). Row ``r`` of it is the quadratic
``p^T H_lam p - 2 p^T b_r + const`` with ``H = X^T X`` (any positive scale, e.g. ``/ tokens``),
``H_lam = H + lam I`` and ``b = W H_lam``. Targets from the dense model only change ``W`` (see
:func:`~pruning_hf.sparsity.hessian.dense_target_weight`).

**ADMM** (Boza 2024, "Fast and effective weight update for pruned large language models"; ALPS,
Meng et al. 2024) keeps a copy ``Y`` that carries the quadratic and a copy ``Z`` that carries the
pattern, joined by a dual ``V`` and a penalty ``rho``::

    Y <- (b - V + rho Z) (H_lam + rho I)^-1        one (out, in) x (in, in) product per iteration
    Z <- project(Y + V / rho)                       keep the largest entries the pattern allows
    V <- V + rho (Y - Z)

``rho`` grows geometrically (``rho_growth`` every ``rho_every`` iterations): while it is small the
mask moves freely towards where the least-squares weights want to be, as it grows the mask settles.
``(H_lam + rho I)`` is factored once per value of ``rho`` and shared by all rows (and all Linears
stacked on the same input). Optionally the pruned fraction itself grows over the first
``gradual_iterations`` on a cubic schedule ``s_t = s (1 - (1 - t/T)^3)`` (Boza's gradual mask).
Everything runs in coordinates scaled by ``d = sqrt(diag H_lam)``, where the Hessian has a unit
diagonal: magnitudes there are Wanda-like importances ``|W_ij| ||X_j||``, ``rho`` is relative to the
data, and the projection is the exact Euclidean one of those coordinates. A final conjugate-gradient
re-fit (ALPS' post-processing, :func:`~pruning_hf.sparsity.refinement.refit_kept`) moves the kept
weights towards the least-squares optimum of the final support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..utils.checks import all_finite
from .hessian import HessianError
from .masks import Pattern, block_scores, expand_blocks, nm_mask, num_to_prune, topk_mask
from .refinement import reconstruction_error, refit_kept

__all__ = ["ADMMResult", "admm_prune", "cubic_sparsity"]

#: entries (strided) on which intermediate iterations place a per-matrix threshold; the last projection is exact
_THRESHOLD_SAMPLES = 1 << 14


@dataclass
class ADMMResult:
    weight: torch.Tensor          # (out, in) pruned fp32 weight: exact zeros where pruned, obeys the pattern
    #: final reconstruction error sum_r (w - p)^T H (w - p) (undampened, H as given)
    objective: float
    #: with ``track=True``: the objective of the projected iterate ``Z`` after every iteration, then of the result
    history: list[float] = field(default_factory=list)
    #: with ``track=True``: how many entries entered or left the support at every iteration
    support_changes: list[int] = field(default_factory=list)
    iterations: int = 0           # ADMM iterations run
    rho: float = 0.0              # final penalty
    dampening: float = 0.0        # dampening fraction used (more than asked after a retry)


def cubic_sparsity(step: int, steps: int, sparsity: float) -> float:
    """Gradual schedule ``s (1 - (1 - step/steps)^3)`` for ``step`` in ``1..steps``; ``sparsity`` after."""
    if steps <= 0 or step >= steps:
        return sparsity
    return sparsity * (1.0 - (1.0 - step / steps) ** 3)


# --- projections (float masks: 1 kept, 0 pruned; float arithmetic is several times faster than bool on CPU) ---

def _top2of4(scores: torch.Tensor) -> torch.Tensor:
    """Float mask ``(out, in)`` of the 2 largest of every 4 consecutive columns, by a sorting network (ties may keep 3)."""
    groups = scores.reshape(-1, 4)
    a, b, c, d = groups.unbind(1)
    high1, low1, high2, low2 = torch.maximum(a, b), torch.minimum(a, b), torch.maximum(c, d), torch.minimum(c, d)
    second = torch.maximum(torch.minimum(high1, high2), torch.maximum(low1, low2))
    return torch.ge(groups, second.unsqueeze(1), out=torch.empty_like(groups)).view_as(scores)


def _nm_ranks(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Float mask ``(out, in)`` of the ``n`` largest of every ``m`` consecutive columns (ties: the lower column wins)."""
    columns = [column.contiguous() for column in scores.reshape(-1, m).unbind(1)]
    beaten = torch.zeros(m, columns[0].numel(), dtype=scores.dtype, device=scores.device)
    scratch = torch.empty_like(columns[0])
    for i, mine in enumerate(columns):
        for j, other in enumerate(columns):
            if j != i:
                beaten[i].add_((torch.ge if j < i else torch.gt)(other, mine, out=scratch))
    return torch.lt(beaten, n, out=torch.empty_like(beaten)).t().reshape(scores.shape)


def _nm_keep(scores: torch.Tensor, pattern: Pattern, exact: bool) -> torch.Tensor:
    if exact:
        return nm_mask(scores, pattern.n, pattern.m).to(scores.dtype)
    if (pattern.n, pattern.m) == (2, 4):
        return _top2of4(scores)
    return _nm_ranks(scores, pattern.n, pattern.m)


def _largest(scores: torch.Tensor, sparsity: float, exact: bool) -> torch.Tensor:
    """Float mask ``(out, in)`` pruning ``sparsity`` of a matrix's entries, the lowest ``scores``.

    ``exact``: exactly ``round(sparsity * numel)`` pruned (top-k). Otherwise a threshold placed on a
    fixed strided sample of the entries (a stride coprime to the row length, so every column is
    visited; about 10x faster, off by a fraction of a percent).
    """
    if num_to_prune(scores.numel(), sparsity) == 0:
        return torch.ones_like(scores)
    flat = scores.reshape(-1)
    if exact or flat.numel() <= 8 * _THRESHOLD_SAMPLES:
        return topk_mask(scores, sparsity).to(scores.dtype)
    stride = flat.numel() // _THRESHOLD_SAMPLES
    while math.gcd(stride, scores.shape[-1]) != 1:  # walk across all columns, not a few of them
        stride -= 1
    sample = flat[::stride]
    rank = min(max(1, round(sparsity * sample.numel())), sample.numel())
    return torch.gt(scores, sample.kthvalue(rank).values, out=torch.empty_like(scores))


def _project(values: torch.Tensor, sparsity: float, pattern: Pattern, row_groups: Sequence[int], per_row: bool,
             exact: bool) -> torch.Tensor:
    """Float keep-mask ``(out, in)`` of the pattern-feasible point nearest to ``values`` ``(out, in)`` at ``sparsity``.

    Unstructured: the largest ``|v|`` per matrix of ``row_groups`` (or per row). Blocks: the tiles
    with the largest ``sum v^2``. N:M: the ``n`` largest of each group; at a ``sparsity`` below
    ``1 - n/m`` (a gradual step) the largest others across the matrix fill up the remainder.
    """
    masks = []
    for part in values.split(list(row_groups)):
        if pattern.is_block:
            tiles = block_scores(part.square(), pattern.rows, pattern.cols)
            keep = topk_mask(tiles, sparsity, dim=-1 if per_row else None)
            masks.append(expand_blocks(keep, pattern.rows, pattern.cols).to(part.dtype))
            continue
        scores = part.abs()
        base = None
        if pattern.is_nm:
            base = _nm_keep(scores, pattern, exact)
            if sparsity >= pattern.implied_sparsity - 1e-12:
                masks.append(base)
                continue
            scores = scores.masked_fill_(base.bool(), float("inf"))  # the group's best always stay
        keep = topk_mask(scores, sparsity, dim=-1).to(part.dtype) if per_row else _largest(scores, sparsity, exact)
        masks.append(keep if base is None else torch.maximum(keep, base))
    return torch.cat(masks) if len(masks) > 1 else masks[0]


def _apply_inverse(rhs: torch.Tensor, lower: torch.Tensor, inverse: torch.Tensor | None) -> torch.Tensor:
    """``rhs (L L^T)^-1`` for ``rhs`` ``(out, in)``: by the explicit inverse when given, else two triangular solves."""
    if inverse is not None:
        return rhs @ inverse
    half = torch.linalg.solve_triangular(lower.t(), rhs, upper=True, left=False)  # rhs L^-T
    return torch.linalg.solve_triangular(lower, half, upper=False, left=False)


# --- the solver -------------------------------------------------------------------------------------------

def admm_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float | None, pattern: Pattern, *,
               iterations: int = 20, rho: float = 0.1, rho_growth: float = 1.3, rho_every: int = 2,
               rho_max: float = 1e4, gradual_iterations: int = 0, refit_iterations: int = 5,
               dampening: float = 0.02, retries: int = 6, per_row: bool = False,
               row_groups: Sequence[int] | None = None, track: bool = False) -> ADMMResult:
    """Prune ``weight`` ``(out, in)`` to ``sparsity`` / ``pattern``, minimising the layer's output error.

    Args:
        weight: dense ``(out, in)`` weight (not modified); computed in fp32.
        hessian: ``(in, in)`` ``X^T X`` of the inputs the pruned Linear will see (any positive scale).
        sparsity: fraction pruned per matrix (or per row); ignored for N:M, whose ``1 - n/m`` is implied.
        pattern: unstructured, N:M or block.
        iterations: ADMM iterations (each one product of the weight with an ``(in, in)`` matrix).
        rho, rho_growth, rho_every, rho_max: the penalty starts at ``rho`` (relative to the unit
            diagonal of the scaled Hessian) and is multiplied by ``rho_growth`` every ``rho_every``
            iterations, up to ``rho_max``; each new value costs one Cholesky factorisation.
        gradual_iterations: the pruned fraction follows :func:`cubic_sparsity` over this many
            iterations (0: the full sparsity from the start).
        refit_iterations: conjugate-gradient steps re-fitting the kept weights on the final support (0: none).
        dampening / retries: ``lam = dampening * mean(diag H)``; if a factorisation fails or the result
            is not finite, the whole solve is retried with 10x the dampening, ``retries`` times.
        per_row: every output row loses the same fraction (else each matrix of ``row_groups`` as a whole).
        row_groups: row counts of Linears stacked in ``weight`` (they share one input and Hessian); each
            chooses its mask on its own. Default: one matrix.
        track: record the objective and the support changes after every iteration (one more product each).
    Returns:
        :class:`ADMMResult`. Deterministic: the same inputs give the same bits.
    Raises:
        ValueError for inconsistent shapes or a non-finite weight;
        :class:`~pruning_hf.sparsity.hessian.HessianError` when no dampening makes the Hessian usable.
    """
    if weight.dim() != 2 or tuple(hessian.shape) != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"weight must be (out, in) and hessian (in, in); got {tuple(weight.shape)} and "
                         f"{tuple(hessian.shape)}")
    if not all_finite(weight):
        raise ValueError("weight holds NaN/Inf values; ADMM cannot prune it")
    if pattern.is_nm or pattern.is_block:
        pattern.check_shape("weight", tuple(weight.shape))
    if pattern.is_nm:
        sparsity = pattern.implied_sparsity
    elif sparsity is None or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    groups = list(row_groups) if row_groups else [weight.shape[0]]
    if sum(groups) != weight.shape[0] or min(groups) < 1:
        raise ValueError(f"row_groups {groups} must be positive and add up to the {weight.shape[0]} rows of weight")
    if iterations < 1 or rho <= 0 or rho_growth < 1 or rho_every < 1 or refit_iterations < 0 or dampening < 0:
        raise ValueError("need iterations >= 1, rho > 0, rho_growth >= 1, rho_every >= 1, refit_iterations >= 0 "
                         "and dampening >= 0")
    schedule = dict(iterations=iterations, rho=rho, rho_growth=rho_growth, rho_every=rho_every, rho_max=rho_max,
                    gradual_iterations=gradual_iterations, refit_iterations=refit_iterations)
    fraction = dampening if dampening > 0 else 1e-6
    for _ in range(retries + 1):
        result = _solve(weight.float(), hessian.float(), sparsity, pattern, groups, per_row, fraction, track,
                        **schedule)
        if result is not None:
            result.dampening = fraction
            return result
        fraction *= 10.0
    raise HessianError(f"the Hessian is not usable even with dampening {fraction / 10:g} x its mean diagonal; "
                       "use more or more varied calibration data, or raise `dampening`")


@torch.no_grad()
def _solve(weight, hessian, sparsity, pattern, groups, per_row, fraction, track, *, iterations, rho,
           rho_growth, rho_every, rho_max, gradual_iterations, refit_iterations) -> ADMMResult | None:
    """One solve at one dampening; None when a factorisation fails or anything turns non-finite."""
    columns = hessian.shape[0]
    lam = fraction * float(hessian.diagonal().mean().clamp_min(1e-12))
    scale = (hessian.diagonal().clamp_min(0.0) + lam).sqrt()  # d
    inv_scale = 1.0 / scale
    h_scaled = hessian * inv_scale.unsqueeze(1) * inv_scale.unsqueeze(0)  # D^-1 H D^-1, undampened
    system = h_scaled + torch.diag(lam * inv_scale.square())  # D^-1 H_lam D^-1: unit diagonal
    w_scaled = weight * scale
    target = w_scaled @ system  # b D^-1
    if not (all_finite(system) and all_finite(target)):
        return None
    history, changes = [], []
    eye = torch.eye(columns, dtype=system.dtype, device=system.device)
    explicit = weight.shape[0] > columns  # tall: one inverse per rho, then products; wide: triangular solves
    keep = _project(w_scaled, cubic_sparsity(1, gradual_iterations, sparsity), pattern, groups, per_row,
                    exact=iterations == 1)
    z = w_scaled * keep
    dual = torch.zeros_like(z)
    penalty, lower, inverse = None, None, None
    for step in range(1, iterations + 1):
        value = min(rho * rho_growth ** ((step - 1) // rho_every), rho_max)
        if value != penalty:
            penalty = value
            lower, info = torch.linalg.cholesky_ex(system + penalty * eye)
            if info.item() != 0:
                return None
            inverse = torch.cholesky_inverse(lower) if explicit else None
        y = _apply_inverse(torch.add(target, z, alpha=penalty).sub_(dual), lower, inverse)
        point = torch.add(y, dual, alpha=1.0 / penalty)  # Y + V / rho
        new_keep = _project(point, cubic_sparsity(step, gradual_iterations, sparsity), pattern, groups, per_row,
                            exact=step == iterations)  # the last projection is exact, earlier ones sampled
        if track:
            changes.append(int((new_keep - keep).abs_().sum()))
        keep = new_keep
        z = point.mul_(keep)
        dual.add_(y.sub_(z), alpha=penalty)
        if track:
            history.append(float(reconstruction_error(w_scaled, z, h_scaled).sum(dtype=torch.float64)))
    if not all_finite(z):
        return None
    if refit_iterations:  # CG lowers every row's dampened objective; keep a row only where rounding agrees
        fitted, before = refit_kept(w_scaled, z.clone(), keep, system, refit_iterations)
        after = reconstruction_error(w_scaled, fitted, system)
        better = after <= before
        z = torch.where(better.unsqueeze(1), fitted, z)
        dampened = torch.where(better, after, before)
    else:
        dampened = reconstruction_error(w_scaled, z, system)
    z.mul_(keep)  # exact zeros off the support
    pruned = z * inv_scale
    if not all_finite(pruned):
        return None
    ridge = lam * inv_scale.square()  # system = h_scaled + diag(ridge): the undampened objective without a product
    final = float((dampened.double() - ((w_scaled - z).square() @ ridge).double()).sum())
    if track:
        history.append(final)
    return ADMMResult(weight=pruned, objective=final, history=history, support_changes=changes,
                      iterations=iterations, rho=penalty, dampening=fraction)
