"""The dampened Hessian ``X^T X + λI`` that second-order solvers share (SparseGPT, ADMM, structured re-fits, OBS),
and the dense-target weight that turns "fit the dense model's output" into the usual reconstruction problem.

``λ = dampening * mean(diag H)`` (SparseGPT's recipe); a factorisation that fails (not positive definite,
or non-finite) is retried with ``λ`` 10x larger, :class:`HessianError` after the last retry.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

from ..utils.checks import all_finite

__all__ = ["HessianError", "with_dampening", "fill_dead_inputs", "try_cholesky", "dampened_cholesky",
           "inverse_hessian_factor", "dense_target_weight"]

T = TypeVar("T")


class HessianError(RuntimeError):
    """The dampened Hessian stayed not positive definite after every retry."""


def with_dampening(hessian: torch.Tensor, dampening: float, retries: int,
                   attempt: Callable[[torch.Tensor, torch.Tensor], T | None], what: str = "the Hessian") -> T:
    """``attempt(H + λI, λ)`` for ``λ = fraction * mean(diag H)``, ``fraction`` starting at ``dampening`` and
    growing 10x (from 1e-6 when 0) each time ``attempt`` returns None; ``(n, n)`` ``hessian`` of any float dtype."""
    mean_diag = hessian.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    fraction = dampening
    for _ in range(retries + 1):
        lam = fraction * mean_diag
        result = attempt(hessian + lam * eye, lam)
        if result is not None:
            return result
        fraction = fraction * 10.0 if fraction > 0 else 1e-6
    raise HessianError(
        f"{what} is not positive definite even with dampening {fraction / 10:g} x mean diagonal; "
        "use more or more varied calibration data, or raise `dampening`")


def fill_dead_inputs(hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H', dead)``: a float32 copy of ``(n, n)`` ``H`` whose always-zero inputs (``H_jj == 0``, ``dead``
    ``(n,)`` bool) get a unit diagonal, so the matrix stays invertible (their weights do nothing)."""
    h = hessian.float().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    return h, dead


def try_cholesky(matrix: torch.Tensor, upper: bool = False) -> torch.Tensor | None:
    """Cholesky factor of ``(n, n)`` ``matrix`` (lower, or ``upper``), or None when it is not positive definite."""
    factor, info = torch.linalg.cholesky_ex(matrix, upper=upper)
    return factor if info.item() == 0 and all_finite(factor) else None


def dampened_cholesky(hessian: torch.Tensor, dampening: float, retries: int = 6) -> torch.Tensor:
    """``(n, n)`` lower Cholesky factor ``L`` of ``H + λI`` (``L L^T = H + λI``)."""
    return with_dampening(hessian, dampening, retries, lambda h, lam: try_cholesky(h))


def inverse_hessian_factor(hessian: torch.Tensor, dampening: float, retries: int) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(H + λI)^-1`` (so ``(H + λI)^-1 = U^T U``).

    Returns ``(U, dampening fraction used)``; raises :class:`HessianError` at the end.
    """
    mean_diag = hessian.diagonal().mean().clamp_min(1e-12)

    def attempt(h: torch.Tensor, lam: torch.Tensor):
        lower = try_cholesky(h)
        upper = None if lower is None else try_cholesky(torch.cholesky_inverse(lower), upper=True)
        return None if upper is None else (upper, float(lam / mean_diag))

    return with_dampening(hessian, dampening, retries, attempt)


def dense_target_weight(weight: torch.Tensor, hessian: torch.Tensor, dense_products: torch.Tensor, dampening: float,
                        retries: int = 6) -> torch.Tensor:
    """The weight ``W*`` that best reproduces the dense model's output from this model's inputs.

    With ``X`` ``(tokens, in)`` this Linear's inputs in the model being pruned and ``X_d`` the dense
    model's inputs of the same tokens, ``H = X^T X / n`` (``hessian``) and ``C = X^T X_d / n``, dense
    targets minimise, per output row ``w``, ``||X_d w - X w'||^2 / n + λ ||w' - w||^2`` over the
    pruned row ``w'``. Completing the square, that equals ``(w' - w*)^T (H + λI) (w' - w*)`` + a constant,
    with ``w* = (H + λI)^-1 (C + λI) w``: so fitting the dense targets is the usual reconstruction
    problem (SparseGPT's, ADMM's, refinement's) with dampened ``H`` and ``W*`` in place of the dense weight.
    ``λ = dampening * mean(diag H)``; where ``X = X_d``, ``W* = W`` exactly in exact arithmetic.
    ``weight`` ``(out, in)`` fp32 and ``dense_products`` ``(in, out)`` ``C W^T``
    (:meth:`~pruning_hf.sparsity.statistics.InputStatistics.dense_products`); returns ``W*`` ``(out, in)`` fp32.
    """
    def attempt(h: torch.Tensor, lam: torch.Tensor) -> torch.Tensor | None:
        lower = try_cholesky(h)
        if lower is None:
            return None
        rhs = torch.add(dense_products, weight.t(), alpha=float(lam))  # (C + λI) W^T
        return torch.cholesky_solve(rhs, lower).t().contiguous()

    return with_dampening(hessian, dampening, retries, attempt, what="the dense-target Hessian")
