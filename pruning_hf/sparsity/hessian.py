"""The dampened inverse Hessian ``(X^T X + λI)^-1`` that second-order solvers share (SparseGPT, re-fits)."""

from __future__ import annotations

import torch

__all__ = ["HessianError", "inverse_hessian_factor"]


class HessianError(RuntimeError):
    """The dampened Hessian stayed not positive definite after every retry."""


def inverse_hessian_factor(hessian: torch.Tensor, dampening: float, retries: int) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(H + λI)^-1`` (so ``(H + λI)^-1 = U^T U``).

    ``λ = dampening * mean(diag H)``; on failure (not positive definite, or non-finite) ``λ`` grows
    10x per retry. Returns ``(U, dampening fraction used)``; raises :class:`HessianError` at the end.
    """
    mean_diag = hessian.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    fraction = dampening
    for _ in range(retries + 1):
        lower, info = torch.linalg.cholesky_ex(hessian + fraction * mean_diag * eye)
        if info.item() == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if info.item() == 0 and torch.isfinite(upper).all():
                return upper, fraction
        fraction *= 10.0
    raise HessianError(
        f"the Hessian is not positive definite even with dampening {fraction / 10:g} x mean diagonal; "
        "use more or more varied calibration data, or raise `dampening`")
