"""Running sums over the calibration inputs of a Linear: what methods read (norms, means, X^T X).

The engine fills them with forward hooks (:mod:`pruning_hf.engine.hooks`); methods only read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["InputStatistics", "StatisticsSpec"]


@dataclass(frozen=True)
class StatisticsSpec:
    """What a method needs collected for each target Linear's input: sums and squared norms always,
    ``X^T X`` (``in x in``, fp32) only with ``hessian=True``, and with ``cross=True`` also the cross
    term ``X^T X_dense`` with the dense model's input of the same Linear (dense targets)."""

    hessian: bool = False
    cross: bool = False


class InputStatistics:
    """Sums over all calibration tokens of a Linear's input ``X`` (tokens, in_features), in fp32.

    Attributes:
        num_tokens: tokens seen.
        sums: ``(in,)`` sum per input column (for means and variances).
        sq_norms: ``(in,)`` sum of squares per input column, ``||X_j||_2^2``.
        xtx: ``(in, in)`` ``X^T X`` when ``hessian=True`` (SparseGPT's Hessian up to a factor).
        xtd: ``(in, in)`` ``X^T X_dense`` when ``cross=True``: ``X`` against the dense model's input
            ``X_dense`` of the same Linear on the same tokens.
    """

    def __init__(self, in_features: int, hessian: bool, device: torch.device, cross: bool = False) -> None:
        self.num_tokens = 0
        self.sums = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.sq_norms = torch.zeros(in_features, dtype=torch.float32, device=device)
        square = (in_features, in_features)
        self.xtx = torch.zeros(square, dtype=torch.float32, device=device) if hessian or cross else None
        self.xtd = torch.zeros(square, dtype=torch.float32, device=device) if cross else None

    def update(self, inputs: torch.Tensor, dense: torch.Tensor | None = None) -> None:
        """Add a batch of inputs (``dense``: the dense model's inputs of the same tokens, with ``cross``)."""
        x = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        self.num_tokens += x.shape[0]
        self.sums += x.sum(0)
        self.sq_norms += x.square().sum(0)
        if self.xtx is not None:
            self.xtx.addmm_(x.t(), x)
        if self.xtd is not None:
            if dense is None:
                raise ValueError("these statistics hold a cross term: pass the dense inputs too")
            self.xtd.addmm_(x.t(), dense.detach().reshape(x.shape).to(x.device, torch.float32))

    def to(self, device: torch.device | str) -> InputStatistics:
        """A copy on ``device`` (what a method keeps past its layer goes to the CPU)."""
        copy = InputStatistics.__new__(InputStatistics)
        copy.num_tokens = self.num_tokens
        copy.sums, copy.sq_norms = self.sums.to(device), self.sq_norms.to(device)
        copy.xtx = self.xtx.to(device) if self.xtx is not None else None
        return copy

    @property
    def nbytes(self) -> int:
        """Memory held by these statistics."""
        return self.sq_norms.nbytes + sum(m.nbytes for m in (self.xtx, self.xtd) if m is not None)

    @property
    def cross_hessian(self) -> torch.Tensor | None:
        """``(in, in)`` mean ``X^T X_dense / num_tokens`` (None without ``cross``)."""
        return None if self.xtd is None else self.xtd / max(self.num_tokens, 1)

    @property
    def column_norms(self) -> torch.Tensor:
        """``(in,)`` L2 norm of each input feature over all tokens (Wanda's ``||X_j||_2``)."""
        return self.sq_norms.sqrt()

    @property
    def mean(self) -> torch.Tensor:
        """``(in,)`` mean of each input feature over all tokens."""
        return self.sums / max(self.num_tokens, 1)

    @property
    def variance(self) -> torch.Tensor:
        """``(in,)`` variance of each input feature over all tokens (population, clamped at 0)."""
        return (self.sq_norms / max(self.num_tokens, 1) - self.mean.square()).clamp_min(0.0)

    @property
    def hessian(self) -> torch.Tensor:
        """``(in, in)`` mean ``X^T X / num_tokens``."""
        if self.xtx is None:
            raise RuntimeError("these statistics were collected without hessian=True")
        return self.xtx / max(self.num_tokens, 1)
