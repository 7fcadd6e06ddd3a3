"""Running sums over the calibration inputs of a Linear: what methods read (norms, means, X^T X).

The engine fills them with forward hooks (:mod:`pruning_hf.engine.hooks`); methods only read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["InputStatistics", "StatisticsSpec", "add_gram_upper"]

#: columns per block of the blocked ``X^T X`` update (:func:`add_gram_upper`)
GRAM_BLOCK = 256


def add_gram_upper(gram: torch.Tensor, x: torch.Tensor, block: int = GRAM_BLOCK) -> None:
    """``gram += X^T X`` on and above the diagonal blocks only, for ``x`` ``(tokens, n)``, ``gram`` ``(n, n)``.

    The columns are cut into ``ceil(n / block)`` (at most 8) equal strips; strip ``i`` adds ``X_i^T X[:, i:]``,
    so about ``(1 + 1/strips) / 2`` of the full product's flops (``0.58x`` at 6 strips); below the diagonal
    blocks ``gram`` is left as it was. ``gram.triu()`` holds the upper triangle of ``X^T X`` after the update.
    """
    n = x.shape[1]
    strips = min(8, max(1, -(-n // block)))
    edges = [round(i * n / strips) for i in range(strips + 1)]
    for start, stop in zip(edges, edges[1:]):
        gram[start:stop, start:].addmm_(x[:, start:stop].t(), x[:, start:])


@dataclass(frozen=True)
class StatisticsSpec:
    """What a method needs collected for each target Linear's input: sums and squared norms always,
    ``X^T X`` (``in x in``, fp32) only with ``hessian=True``, and with ``cross=True`` also the cross
    term with the dense model's input of the same Linear (dense targets): ``X^T X_dense``, or for a
    Linear with fewer outputs than inputs the cheaper ``X^T Y_dense`` with its dense outputs."""

    hessian: bool = False
    cross: bool = False


class InputStatistics:
    """Sums over all calibration tokens of a Linear's input ``X`` (tokens, in_features), in fp32.

    Attributes:
        num_tokens: tokens seen.
        sums: ``(in,)`` sum per input column (for means and variances).
        sq_norms: ``(in,)`` sum of squares per input column, ``||X_j||_2^2``.
        xtx: ``(in, in)`` ``X^T X`` when ``hessian=True`` (SparseGPT's Hessian up to a factor); accumulated
            in its upper triangle (:func:`add_gram_upper`) and made symmetric when read.
        xtd: ``(in, in)`` ``X^T X_dense`` when ``cross=True``: ``X`` against the dense model's input
            ``X_dense`` of the same Linear on the same tokens.
        xty: ``(in, out)`` ``X^T Y_dense`` instead of ``xtd`` when ``cross_outputs=out``: ``X`` against the
            dense model's output ``Y_dense = X_dense W^T`` (no bias) of the one Linear that reads ``X``;
            ``2 tokens in out`` flops per batch instead of ``2 tokens in^2`` (``down_proj``: ``out < in``).
    """

    def __init__(self, in_features: int, hessian: bool, device: torch.device, cross: bool = False,
                 cross_outputs: int | None = None) -> None:
        self.num_tokens = 0
        self.sums = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.sq_norms = torch.zeros(in_features, dtype=torch.float32, device=device)
        square = (in_features, in_features)
        self._xtx = torch.zeros(square, dtype=torch.float32, device=device) if hessian or cross else None
        self._symmetric = True  # whether the lower triangle of _xtx mirrors the upper one
        by_outputs = cross and cross_outputs is not None
        self.xtd = torch.zeros(square, dtype=torch.float32, device=device) if cross and not by_outputs else None
        self.xty = (torch.zeros(in_features, cross_outputs, dtype=torch.float32, device=device) if by_outputs
                    else None)

    def update(self, inputs: torch.Tensor, dense: torch.Tensor | None = None) -> None:
        """Add a batch of inputs (``dense``, with ``cross``: the dense model's inputs of the same tokens, or its
        outputs ``(..., out)`` without bias for statistics made with ``cross_outputs``)."""
        x = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        self.num_tokens += x.shape[0]
        self.sums += x.sum(0)
        self.sq_norms += x.square().sum(0)
        if self._xtx is not None:
            add_gram_upper(self._xtx, x)
            self._symmetric = False
        cross = self.xtd if self.xtd is not None else self.xty
        if cross is not None:
            if dense is None:
                raise ValueError("these statistics hold a cross term: pass the dense inputs (or outputs) too")
            cross.addmm_(x.t(), dense.detach().reshape(x.shape[0], -1).to(x.device, torch.float32))

    def to(self, device: torch.device | str) -> InputStatistics:
        """A copy on ``device`` (what a method keeps past its layer goes to the CPU)."""
        copy = InputStatistics.__new__(InputStatistics)
        copy.num_tokens = self.num_tokens
        copy.sums, copy.sq_norms = self.sums.to(device), self.sq_norms.to(device)
        copy._xtx = self.xtx.to(device) if self._xtx is not None else None
        copy._symmetric = True
        return copy

    @property
    def xtx(self) -> torch.Tensor | None:
        """``(in, in)`` ``X^T X`` (None without ``hessian`` or ``cross``)."""
        if self._xtx is not None and not self._symmetric:
            upper = self._xtx.triu()
            self._xtx.copy_(upper.add_(self._xtx.triu(1).mT))
            self._symmetric = True
        return self._xtx

    @property
    def nbytes(self) -> int:
        """Memory held by these statistics."""
        return self.sq_norms.nbytes + sum(m.nbytes for m in (self._xtx, self.xtd, self.xty) if m is not None)

    def dense_products(self, weight: torch.Tensor) -> torch.Tensor:
        """``(in, out)`` mean ``X^T X_dense W^T / num_tokens`` for the dense ``weight`` ``(out, in)`` of the
        Linear(s) reading this input, from whichever cross term was collected (``xty`` already holds it)."""
        if self.xty is not None:
            if self.xty.shape[1] != weight.shape[0]:
                raise ValueError(f"the cross term was collected for {self.xty.shape[1]} outputs, not "
                                 f"{weight.shape[0]}")
            return self.xty.to(weight.device) / max(self.num_tokens, 1)
        if self.xtd is None:
            raise RuntimeError("these statistics were collected without cross=True")
        return self.xtd.to(weight.device) @ weight.t() / max(self.num_tokens, 1)

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
