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
    ``X^T X`` (``in x in``, fp32) only with ``hessian=True``."""

    hessian: bool = False


class InputStatistics:
    """Sums over all calibration tokens of a Linear's input ``X`` (tokens, in_features), in fp32.

    Attributes:
        num_tokens: tokens seen.
        sums: ``(in,)`` sum per input column (for means and variances).
        sq_norms: ``(in,)`` sum of squares per input column, ``||X_j||_2^2``.
        xtx: ``(in, in)`` ``X^T X`` when ``hessian=True`` (SparseGPT's Hessian up to a factor).
    """

    def __init__(self, in_features: int, hessian: bool, device: torch.device) -> None:
        self.num_tokens = 0
        self.sums = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.sq_norms = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.xtx = torch.zeros(in_features, in_features, dtype=torch.float32, device=device) if hessian else None

    def update(self, inputs: torch.Tensor) -> None:
        x = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        self.num_tokens += x.shape[0]
        self.sums += x.sum(0)
        self.sq_norms += x.square().sum(0)
        if self.xtx is not None:
            self.xtx.addmm_(x.t(), x)

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
        return self.sq_norms.nbytes + (self.xtx.nbytes if self.xtx is not None else 0)

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
