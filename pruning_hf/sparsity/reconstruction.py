"""Pure tensor maths of structured pruning with reconstruction: no models, no hooks, no data loading.

Notation. A Linear ``y = W x`` has weight ``W`` ``(out, n)``; its calibration inputs ``X`` ``(tokens, n)``
give ``H = X^T X`` ``(n, n)`` (any positive scale: every result here is scale-free in ``H``). Structured
width pruning removes whole *units* of input columns of an output projection (one column per FFN
neuron; ``head_dim`` or a KV group's columns per attention unit) and keeps columns ``K``.

* :func:`refit_output`: least-squares re-fit of the kept columns, ``W' = W Hd[:, K] Hd[K, K]^-1`` with
  the dampened ``Hd = H + λI`` (:mod:`.hessian`: ``λ = dampening * mean diag H``, grown 10x per failed
  Cholesky). With ``λ = 0`` this is exactly ``argmin ||X_K W'^T - X W^T||``; ``λ > 0`` adds a ridge
  ``λ ||W' - W_K||^2`` that pulls the fit towards the original weights.
* :func:`obs_select_units`: grouped OBS (ZipLM / SlimGPT): units are removed in steps, each step the
  units whose removal costs least *after* the optimal update of the others, ``err_u = tr(W_u
  [Hinv]_uu^-1 W_u^T)``, then ``W`` and ``Hinv`` are updated for the removed set before the next step.
  The final weights of the kept set are the :func:`refit_output` solution (OBS updates compose to it).
* :func:`linear_replacement`: ReplaceMe's closed-form map ``T = argmin ||M T - R||^2 + λ ||T - I||^2``
  from accumulated ``M^T M`` and ``M^T R``; :func:`normalised_target` for a map behind an RMS norm.
* :func:`allocate_by_error`: units removed per layer from each layer's error-vs-removed curve, every
  layer keeping a floor (:func:`error_curve` turns OBS step errors into such a curve).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..utils.checks import all_finite
from .hessian import dampened_cholesky, fill_dead_inputs, try_cholesky, with_dampening

__all__ = ["refit_output", "augment_with_ones", "relative_output_error", "ObsSelection", "obs_select_units",
           "unit_errors", "removal_schedule", "error_curve", "linear_replacement", "normalised_target",
           "allocate_by_error"]


def refit_output(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor, dampening: float = 0.01,
                 retries: int = 6) -> torch.Tensor:
    """Least-squares re-fit of an output projection on its kept input columns.

    Args:
        weight: ``(out, n)`` weight (any float dtype; computed in fp32).
        hessian: ``(n, n)`` ``X^T X`` of the projection's inputs.
        keep: ``(k,)`` sorted indices of the kept input columns.
        dampening: ``λ`` as a fraction of the mean diagonal of ``H`` (0: the plain least squares).
        retries: failed Cholesky factorisations retried with 10x more dampening.
    Returns:
        ``(out, k)`` fp32 ``W Hd[:, K] Hd[K, K]^-1``, the weights minimising
        ``||X_K W'^T - X W^T||^2 + λ ||W' - W_K||^2``.
    """
    w = weight.float()
    keep = keep.to(w.device)
    h, _ = fill_dead_inputs(hessian.to(w.device))

    def attempt(hd: torch.Tensor, lam):
        lower = try_cholesky(hd[keep][:, keep])
        if lower is None:
            return None
        solution = torch.cholesky_solve(hd[keep] @ w.t(), lower).t()  # solve Hd[K,K] W'^T = Hd[K,:] W^T
        return solution.contiguous() if all_finite(solution) else None

    return with_dampening(h, dampening, retries, attempt, "H[K, K]")


def augment_with_ones(xtx: torch.Tensor, sums: torch.Tensor, count: int) -> torch.Tensor:
    """``(n + 1, n + 1)`` ``X1^T X1`` for ``X1 = [X, 1]`` (a bias as one more always-kept input column).

    Args:
        xtx: ``(n, n)`` ``X^T X``; sums: ``(n,)`` column sums of ``X``; count: number of tokens.
    """
    n = xtx.shape[0]
    out = torch.empty(n + 1, n + 1, dtype=torch.float32, device=xtx.device)
    out[:n, :n] = xtx
    out[:n, n] = out[n, :n] = sums.float().to(xtx.device)
    out[n, n] = float(count)
    return out


def relative_output_error(weight: torch.Tensor, new_weight: torch.Tensor, keep: torch.Tensor,
                          hessian: torch.Tensor) -> float:
    """``||X W^T - X_K W'^T||^2 / ||X W^T||^2`` on calibration inputs, from ``H = X^T X``.

    Args:
        weight: ``(out, n)`` before; new_weight: ``(out, k)`` after, on kept columns ``keep`` ``(k,)``.
        hessian: ``(n, n)`` ``X^T X``.
    """
    w = weight.float()
    delta = w.clone()
    delta[:, keep.to(w.device)] -= new_weight.float().to(w.device)
    h = hessian.float().to(w.device)
    energy = float(((w @ h) * w).sum())
    return float(((delta @ h) * delta).sum()) / max(energy, 1e-30)


def unit_errors(weight: torch.Tensor, hinv: torch.Tensor, block: int) -> torch.Tensor:
    """``(units,)`` OBS cost ``tr(W_u [Hinv]_uu^-1 W_u^T)`` of removing each unit of ``block`` columns alone.

    Args:
        weight: ``(out, units * block)`` current weight; hinv: ``(units * block,)^2`` current inverse Hessian.
    """
    return _unit_costs(weight.t().contiguous(), _diagonal_blocks(hinv, block), block)


def _diagonal_blocks(hinv: torch.Tensor, block: int) -> torch.Tensor:
    """``(n,)`` diagonal of ``hinv`` (``block == 1``), else its ``(units, block, block)`` diagonal blocks."""
    if block == 1:
        return hinv.diagonal().clone()
    idx = torch.arange(hinv.shape[0], device=hinv.device).view(-1, block)
    return hinv[idx.unsqueeze(2), idx.unsqueeze(1)]


def _unit_costs(weight_t: torch.Tensor, blocks: torch.Tensor, block: int) -> torch.Tensor:
    """:func:`unit_errors` from the transposed weight ``W^T`` ``(units * block, out)`` (one unit's columns are
    contiguous rows) and the inverse Hessian's diagonal (blocks) as :func:`_diagonal_blocks` gives them."""
    if block == 1:
        return torch.linalg.vector_norm(weight_t, dim=1).square_().div_(blocks.clamp_min(1e-20))
    per_unit = weight_t.view(-1, block, weight_t.shape[1])  # (units, block, out): W_u^T
    lower, _ = torch.linalg.cholesky_ex(blocks)
    return torch.linalg.solve_triangular(lower, per_unit, upper=False).square().sum((1, 2))  # ||L^-1 W_u^T||^2


def _inverse_root(matrix: torch.Tensor) -> torch.Tensor:
    """``R`` with ``R^T R = matrix^-1`` for a small symmetric ``matrix`` ``(k, k)``: ``L^-1`` of its Cholesky
    factor, or where it numerically lost definiteness (tiny steps late in a long run) the pseudo-inverse's root."""
    lower = try_cholesky(matrix)
    if lower is not None:
        eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
        return torch.linalg.solve_triangular(lower, eye, upper=False)
    values, vectors = torch.linalg.eigh(matrix)
    keep = values > values.abs().max() * matrix.shape[0] * torch.finfo(matrix.dtype).eps
    return vectors[:, keep].t() / values[keep].sqrt().unsqueeze(1)


def removal_schedule(remove: int, steps: int) -> list[int]:
    """Units removed at each of at most ``steps`` steps (as equal as possible, larger steps first)."""
    if remove <= 0:
        return []
    steps = max(1, min(steps, remove))
    base, extra = divmod(remove, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


@dataclass
class ObsSelection:
    """Result of :func:`obs_select_units`.

    Attributes:
        keep: ``(units - removed,)`` sorted indices of the kept units.
        order: ``(removed,)`` removed units in the order they went.
        errors: ``(steps + 1,)`` cumulative reconstruction error ``||X W^T - X W'^T||^2`` (in the units of
            the given ``H``) after each step, starting with 0.
        removed_per_step: units removed at each step.
        weight: ``(out, units * block)`` the OBS-updated weight (removed columns zero).
    """

    keep: torch.Tensor
    order: torch.Tensor
    errors: torch.Tensor
    removed_per_step: list[int]
    weight: torch.Tensor


def obs_select_units(weight: torch.Tensor, hessian: torch.Tensor, block: int, remove: int, steps: int = 32,
                     dampening: float = 0.01, retries: int = 6) -> ObsSelection:
    """Choose ``remove`` units of ``block`` consecutive input columns by grouped OBS, in steps.

    At each step every remaining unit's cost is measured on the current (already updated) weight and
    inverse Hessian, the cheapest units of that step are removed together, and the weight and inverse
    Hessian are updated for the removed set: ``W -= W_S Hinv_SS^-1 Hinv_S:``, ``Hinv -= Hinv_:S
    Hinv_SS^-1 Hinv_S:``. ``steps >= remove`` removes one unit per step (exact greedy OBS). The inverse
    Hessian is updated lazily, as ``Hinv_0 - V^T V`` with one row of ``V`` per removed column, so a step
    costs ``O(out n |S| + n |S| removed)`` rather than ``O(n^2 |S|)``: many small steps stay cheap.

    Args:
        weight: ``(out, units * block)`` output-projection weight.
        hessian: ``(units * block, units * block)`` ``X^T X`` of its inputs.
        block: columns per unit.
        remove: units to remove (``0 <= remove < units``).
        steps: at most this many update steps.
        dampening, retries: see :mod:`.hessian`.
    """
    w = weight.detach().float().t().contiguous()  # W^T (n, out): a unit's columns are contiguous rows
    units = w.shape[0] // block
    if w.shape[0] != units * block or not 0 <= remove < max(units, 1):
        raise ValueError(f"cannot remove {remove} of {units} units of {block} columns from a weight of {w.shape[0]} "
                         "columns")
    h, _ = fill_dead_inputs(hessian.to(w.device))
    hinv = torch.cholesky_inverse(dampened_cholesky(h, dampening, retries))
    # the current inverse Hessian is hinv - V^T V, V the rows of `factors` so far: each step reads only the rows of
    # the units it removes (n x removed flops) instead of updating all of it (n^2 x removed flops over a run)
    factors = torch.empty(remove * block, units * block, dtype=w.dtype, device=w.device)
    used = 0
    blocks = _diagonal_blocks(hinv, block)
    alive = torch.ones(units, dtype=torch.bool, device=w.device)
    live_columns = torch.ones(units * block, dtype=w.dtype, device=w.device)  # 0: removed, never updated again
    order, errors = [], [0.0]
    schedule = removal_schedule(remove, steps)
    cols = torch.arange(units * block, device=w.device).view(units, block)
    for count in schedule:
        cost = _unit_costs(w, blocks, block)
        cost[~alive] = float("inf")
        chosen = torch.topk(cost, count, largest=False).indices
        s = cols[chosen].reshape(-1)
        rows = hinv[s].addmm_(factors[:used, s].t(), factors[:used], alpha=-1.0)  # (|S|, n) current Hinv_S:
        root = _inverse_root(rows[:, s])  # R^T R = Hinv_SS^-1
        live_columns[s] = 0.0
        update = (root @ rows).mul_(live_columns)  # R Hinv_S:; Hinv -= Hinv_:S Hinv_SS^-1 Hinv_S: = update^T update
        scaled = root @ w[s]  # R W_S^T: W -= W_S Hinv_SS^-1 Hinv_S: = (W_S R^T)(R Hinv_S:)
        errors.append(errors[-1] + float(scaled.square().sum()))
        w.addmm_(update.t(), scaled, alpha=-1.0)
        w[s] = 0.0
        factors[used:used + len(update)] = update
        used += len(update)
        if block == 1:
            blocks.sub_(update.square().sum(0))
        else:
            per_unit = update.view(len(update), units, block)
            blocks.sub_(torch.einsum("kub,kuc->ubc", per_unit, per_unit))
        alive[chosen] = False
        order.append(chosen)
    order_t = torch.cat(order) if order else torch.zeros(0, dtype=torch.long, device=w.device)
    return ObsSelection(alive.nonzero().squeeze(1), order_t, torch.tensor(errors), schedule, w.t().contiguous())


def error_curve(selection: ObsSelection, cap: int) -> torch.Tensor:
    """``(cap + 1,)`` float64 error after removing ``0 .. cap`` units, linear between the OBS steps of
    ``selection`` (a run of :func:`obs_select_units` with ``remove = cap``)."""
    removed = torch.tensor([0, *selection.removed_per_step], dtype=torch.float64).cumsum(0)
    errors = selection.errors.double()
    if len(removed) == 1:
        return torch.zeros(cap + 1, dtype=torch.float64)
    grid = torch.arange(cap + 1, dtype=torch.float64)
    index = torch.searchsorted(removed, grid, right=True).clamp(1, len(removed) - 1)
    lo, hi = removed[index - 1], removed[index]
    frac = ((grid - lo) / (hi - lo).clamp_min(1)).clamp(0, 1)
    return errors[index - 1] + frac * (errors[index] - errors[index - 1])


def linear_replacement(gram: torch.Tensor, cross: torch.Tensor, dampening: float = 0.01,
                       retries: int = 6) -> torch.Tensor:
    """ReplaceMe's linear map ``T = argmin_T ||M T - R||^2 + λ ||T - I||^2 = (G + λI)^-1 (C + λI)``.

    Args:
        gram: ``(d, d)`` ``G = M^T M`` accumulated over calibration tokens (``M``: ``(tokens, d)``).
        cross: ``(d, d)`` ``C = M^T R`` (``R``: ``(tokens, d)``, what ``M T`` should become).
        dampening: ``λ`` as a fraction of the mean diagonal of ``G`` (0: plain least squares).
    Returns:
        ``(d, d)`` fp32 ``T``; the replaced computation is ``m -> m @ T`` for a row vector ``m``.
    """
    c = cross.double()
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)

    def attempt(g: torch.Tensor, lam):
        lower = try_cholesky(g)
        return None if lower is None else torch.cholesky_solve(c + lam * eye, lower).float()

    return with_dampening(gram.double(), dampening, retries, attempt, "M^T M")


def normalised_target(z: torch.Tensor, residual: torch.Tensor, gain: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(tokens, d)`` what a pre-norm output ``z`` should become so ``gain * n(z')`` points along ``residual``.

    ``z' = rms(z) * n(residual / gain)``, ``n(v) = v / rms(v)``: the direction of the wanted residual write
    (in the norm's unscaled space) at the scale of the current ``z``. ``z``, ``residual``: ``(tokens, d)``;
    ``gain``: ``(d,)``.
    """
    def rms(v: torch.Tensor) -> torch.Tensor:
        return v.square().mean(-1, keepdim=True).add(eps).sqrt()

    scaled = residual / gain
    return scaled / rms(scaled) * rms(z)


def allocate_by_error(curves: list[torch.Tensor], budget: int) -> list[int]:
    """Units to remove per layer so the summed error is small: the cheapest marginal removals overall.

    Args:
        curves: per layer, ``(cap + 1,)`` error after removing ``0 .. cap`` units (``cap``: what the
            layer's floor allows; ``curve[0]`` is 0). Marginal costs are made non-decreasing (a layer's
            r-th removal never looks cheaper than its (r-1)-th), then the ``budget`` smallest are taken.
        budget: total units to remove (capped at the sum of the caps).
    Returns:
        Number of units removed in each layer.
    """
    costs, owners = [], []
    for layer, curve in enumerate(curves):
        curve = curve.double().flatten()
        if curve.numel() <= 1:
            continue
        marginal = torch.cummax((curve[1:] - curve[:-1]).clamp_min(0.0), 0).values
        costs.append(marginal)
        owners.append(torch.full((marginal.numel(),), layer))
    removals = [0] * len(curves)
    if not costs or budget <= 0:
        return removals
    cost, owner = torch.cat(costs), torch.cat(owners)
    # stable sort: equal costs go to earlier entries first, so each layer's removals stay a prefix
    chosen = torch.sort(cost, stable=True).indices[:budget]
    for layer in owner[chosen].tolist():
        removals[layer] += 1
    return removals
