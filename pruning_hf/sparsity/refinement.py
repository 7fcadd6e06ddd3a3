"""Training-free mask refinement, a post-step after any method (in the spirit of DSnoT, Zhang et al. 2024).

For a Linear with dense weight ``W`` ``(out, in)``, pruned weight ``P`` (mask: ``P != 0``) and
calibration inputs ``X``, output row ``r`` has reconstruction error
``e_r = (w_r - p_r)^T H (w_r - p_r)`` with ``H = X^T X / tokens`` (mean squared output error).
With the gradient ``g_r = H (w_r - p_r)`` every move's effect on ``e_r`` is exact and cheap:

* growing pruned weight ``j`` to its best value ``p_j = g_j / H_jj`` lowers ``e_r`` by ``g_j^2 / H_jj``;
* pruning kept weight ``k`` (value ``b``) afterwards raises it by ``b^2 H_kk + 2 b g'_k``, with
  ``g' = g - p_j H[j]``.

Each round takes, in every row at once, the best grow and then the best prune given that grow,
inside the row (unstructured: the row keeps its count) or inside one group of ``M`` columns (N:M:
the group keeps its ``N``), and applies the swap only where ``e_r`` drops. After the swaps, a few
conjugate-gradient steps re-fit the kept weights of every row towards their least-squares optimum
for the final mask (SparseGPT's sequential updates stop short of it; Wanda makes none). Both
steps only ever lower ``e_r``: unlike DSnoT, which steers by the mean of the inputs, the exact
error is tracked. A final exact recomputation reverts any row where rounding says otherwise, so
no row's error ever increases. No gradient training, no data beyond the layer's ``X^T X``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .masks import Pattern

__all__ = ["reconstruction_error", "refine_weight", "refine_layer", "refit_kept", "RefinementResult",
           "REFIT_ITERATIONS"]

#: conjugate-gradient steps of the re-fit (near convergence on the layers measured; each costs one matmul)
REFIT_ITERATIONS = 8


@dataclass
class RefinementResult:
    weight: torch.Tensor  # (out, in) refined fp32 weight
    error_before: float   # sum over rows of e_r for the method's weight
    error_after: float    # the same for the refined weight
    swaps: int            # accepted swaps
    rounds: int           # rounds run (stops early when no row improves)


def reconstruction_error(dense: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """``(out,)`` per-row error ``(w - p)^T H (w - p)`` for weights ``(out, in)`` and ``H`` ``(in, in)``."""
    delta = dense - pruned
    return ((delta @ hessian) * delta).sum(1)


@torch.no_grad()
def refit_kept(dense: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor,
               iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Conjugate gradient on every row's kept weights toward its least-squares optimum, all rows at once.

    Minimises ``e_r`` over the weights where ``keep`` ``(out, in)`` is True (the others stay 0);
    each iteration costs one ``(out, in) @ (in, in)`` product. Updates ``weight`` and returns it with
    the ``(out,)`` errors ``e_r`` of the weight it started from (a by-product of the first product).
    """
    delta = dense - weight
    gradient = delta @ hessian
    start_error = (gradient * delta).sum(1)
    residual = gradient.mul_(keep)
    direction = residual.clone()
    norm = residual.square().sum(1)
    for _ in range(iterations):
        product = (direction @ hessian) * keep
        curvature = (direction * product).sum(1)
        step = torch.where(curvature > 0, norm / curvature.clamp_min(1e-30), torch.zeros_like(norm))
        weight += step.unsqueeze(1) * direction
        residual -= step.unsqueeze(1) * product
        new_norm = residual.square().sum(1)
        direction = residual + (new_norm / norm.clamp_min(1e-30)).unsqueeze(1) * direction
        norm = new_norm
    return weight, start_error


@torch.no_grad()
def refine_weight(dense: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor, pattern: Pattern,
                  rounds: int, refit_iterations: int = REFIT_ITERATIONS, rel_tol: float = 1e-6) -> RefinementResult:
    """Swap pruned and kept weights to lower each row's reconstruction error (see module docstring).

    Args:
        dense: ``(out, in)`` weight before pruning, fp32.
        pruned: ``(out, in)`` weight the method returned (zeros where pruned), fp32; not modified.
        hessian: ``(in, in)`` ``X^T X / tokens`` of the calibration inputs, fp32.
        pattern: unstructured or N:M (swaps stay inside groups of M columns).
        rounds: at most this many swap rounds, each with at most one swap per row.
        refit_iterations: conjugate-gradient steps re-fitting the kept weights after the swaps
            (:func:`refit_kept`); 0 leaves every weight but the swapped ones as it was.
        rel_tol: a swap must lower ``e_r`` by more than ``rel_tol * e_r``.
    """
    if pattern.is_block:
        raise ValueError("refinement swaps single weights and cannot keep a block pattern")
    out_features, in_features = dense.shape
    group = pattern.m if pattern.is_nm else in_features
    groups = in_features // group
    weight = pruned.clone()
    kept = (weight != 0).float()  # float masks: arithmetic is much faster than bool masked_fill on CPU
    diag = hessian.diagonal().clone()
    inv_diag = torch.where(diag > 0, 1.0 / diag, torch.zeros_like(diag))
    grow_scale = (1.0 - kept) * inv_diag  # 1 / H_jj where pruned, 0 where kept
    cut_penalty = torch.zeros_like(kept).masked_fill_(kept == 0, float("inf"))  # pruned: not a prune choice
    # row i of the diagonal (group x group) block of H that column i belongs to: (in, group)
    block_rows = hessian.reshape(groups, group, groups, group).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    block_rows = block_rows.reshape(in_features, group).contiguous()
    offsets = torch.arange(groups, device=dense.device) * group
    gradient = (dense - weight) @ hessian
    error_before = ((dense - weight) * gradient).sum(1)
    error = error_before.clone()
    swaps = done = 0
    active = None  # None: every row; else the rows that improved last round (the others cannot)
    for done in range(1, rounds + 1):
        pick = (lambda t: t) if active is None else (lambda t: t.index_select(0, active))
        g = pick(gradient).view(-1, groups, group)
        w = pick(weight).view(-1, groups, group)
        gain, grow = (g.square() * pick(grow_scale).view(-1, groups, group)).max(-1)  # (rows, groups)
        grow_col = grow + offsets  # column index in the full row
        value = g.gather(-1, grow.unsqueeze(-1)).squeeze(-1) * inv_diag[grow_col]
        h_rows = block_rows.index_select(0, grow_col.flatten()).view(-1, groups, group)
        g_after = torch.addcmul(g, value.unsqueeze(-1), h_rows, value=-1.0)
        cost = w * (w * diag.view(groups, group)).add_(g_after, alpha=2.0) + pick(cut_penalty).view(-1, groups, group)
        cost, cut = cost.min(-1)
        change, where = (cost - gain).masked_fill_(gain <= 0, float("inf")).min(-1)  # best group per row
        rows = torch.arange(out_features, device=dense.device) if active is None else active
        accept = change < -rel_tol * error.index_select(0, rows)
        if not accept.any():
            break
        local = accept.nonzero().squeeze(1)
        rows, where = rows[local], where[local]
        grown = grow_col[local, where]
        dropped = cut[local, where] + offsets[where]
        grown_value, dropped_value = value[local, where], weight[rows, dropped]
        weight[rows, grown], weight[rows, dropped] = grown_value, 0.0
        kept[rows, grown], kept[rows, dropped] = 1.0, 0.0
        grow_scale[rows, grown], grow_scale[rows, dropped] = 0.0, inv_diag[dropped]
        cut_penalty[rows, grown], cut_penalty[rows, dropped] = 0.0, float("inf")
        gradient[rows] -= (grown_value.unsqueeze(1) * hessian.index_select(0, grown)
                           - dropped_value.unsqueeze(1) * hessian.index_select(0, dropped))
        error[rows] += change[local]
        swaps += rows.numel()
        active = rows
    if refit_iterations:
        refit_kept(dense, weight, kept, hessian, refit_iterations)
    error_after = reconstruction_error(dense, weight, hessian)
    worse = error_after > error_before  # rounding only; revert those rows
    weight[worse] = pruned[worse]
    error_after = torch.where(worse, error_before, error_after)
    return RefinementResult(weight, float(error_before.sum()), float(error_after.sum()), swaps, done)


def refine_layer(dense: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], stats: dict, pattern: Pattern,
                 rounds: int, progress: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]]]:
    """Refine every pruned weight of one decoder layer (Linears reading the same input share one ``H``).

    Args:
        dense / weights: ``{name: (out, in) fp32}`` before and after the method.
        stats: ``{name: InputStatistics}`` collected with ``hessian=True``.
    Returns:
        ``({name: refined weight}, {name: {error_before, error_after, swaps}})``.
    """
    refined, info, hessians = {}, {}, {}
    bar = tqdm(weights.items(), desc="refining", unit="linear", leave=False, disable=not progress)
    for name, weight in bar:
        hessian = hessians.get(id(stats[name]))
        if hessian is None:
            hessian = hessians[id(stats[name])] = stats[name].hessian.to(weight.device)
        result = refine_weight(dense[name].to(weight.device), weight, hessian, pattern, rounds)
        refined[name] = result.weight
        info[name] = {"error_before": result.error_before, "error_after": result.error_after, "swaps": result.swaps}
        bar.set_postfix(error=f"{result.error_after / max(result.error_before, 1e-30) - 1:+.0%}")
    return refined, info
