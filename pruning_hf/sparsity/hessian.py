"""The dampened inverse Hessian ``(X^T X + λI)^-1`` that second-order solvers share (SparseGPT, re-fits), and
the dense-target weight that turns "fit the dense model's output" into the usual reconstruction problem."""

from __future__ import annotations

from typing import Iterator

import torch

__all__ = ["HessianError", "inverse_hessian_factor", "dense_target_weight"]


class HessianError(RuntimeError):
    """The dampened Hessian stayed not positive definite after every retry."""


def _dampened(hessian: torch.Tensor, dampening: float, retries: int) -> Iterator[tuple[torch.Tensor, float, float]]:
    """``(H + λI, fraction, λ)`` with ``λ = fraction * mean(diag H)``, the fraction starting at ``dampening``
    and growing 10x per try (``retries + 1`` tries); the caller stops at the first that factorises."""
    mean_diag = hessian.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for attempt in range(retries + 1):
        fraction = dampening * 10.0 ** attempt
        yield hessian + fraction * mean_diag * eye, fraction, float(fraction * mean_diag)
    raise HessianError(
        f"the Hessian is not positive definite even with dampening {fraction:g} x mean diagonal; "
        "use more or more varied calibration data, or raise `dampening`")


def dense_target_weight(weight: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor, dampening: float,
                        retries: int = 6) -> torch.Tensor:
    """The weight ``W*`` that best reproduces the dense model's output from this model's inputs.

    With ``X`` ``(tokens, in)`` this Linear's inputs in the model being pruned and ``X_d`` the dense
    model's inputs of the same tokens, ``H = X^T X / n`` (``hessian``) and ``C = X^T X_d / n`` (``cross``),
    dense targets minimise, per output row ``w``, ``||X_d w - X w'||^2 / n + λ ||w' - w||^2`` over the
    pruned row ``w'``. Completing the square, that equals ``(w' - w*)^T (H + λI) (w' - w*)`` + a constant,
    with ``w* = (H + λI)^-1 (C + λI) w``: so fitting the dense targets is the usual reconstruction
    problem (SparseGPT's, refinement's) with dampened ``H`` and ``W*`` in place of the dense weight.
    ``λ = dampening * mean(diag H)`` (the solvers' own dampening); where ``X = X_d``, ``W* = W`` exactly
    in exact arithmetic. ``weight`` ``(out, in)`` fp32; returns ``W*`` ``(out, in)`` fp32.
    """
    for dampened, _, damp in _dampened(hessian, dampening, retries):
        lower, info = torch.linalg.cholesky_ex(dampened)
        if info.item() == 0 and torch.isfinite(lower).all():
            rhs = torch.addmm(weight.t(), cross, weight.t(), alpha=1.0, beta=damp)  # (C + λI) W^T
            return torch.cholesky_solve(rhs, lower).t().contiguous()
    raise AssertionError("unreachable: _dampened raises when every try fails")


def inverse_hessian_factor(hessian: torch.Tensor, dampening: float, retries: int) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(H + λI)^-1`` (so ``(H + λI)^-1 = U^T U``).

    ``λ = dampening * mean(diag H)``; on failure (not positive definite, or non-finite) ``λ`` grows
    10x per retry. Returns ``(U, dampening fraction used)``; raises :class:`HessianError` at the end.
    """
    for dampened, fraction, _ in _dampened(hessian, dampening, retries):
        lower, info = torch.linalg.cholesky_ex(dampened)
        if info.item() == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if info.item() == 0 and torch.isfinite(upper).all():
                return upper, fraction
    raise AssertionError("unreachable: _dampened raises when every try fails")
