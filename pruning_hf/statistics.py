"""Running statistics of the inputs of Linear layers, collected by forward hooks.

Linears that read the very same input tensor (q/k/v projections, gate/up projections) share one
:class:`InputStatistics`, found by object identity on the first batch, so a Hessian is computed once
per distinct input rather than once per Linear.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["InputStatistics", "collect_input_statistics"]


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


@contextmanager
def collect_input_statistics(modules: dict[str, nn.Module], hessian: bool) -> Iterator[dict[str, InputStatistics]]:
    """Hook ``modules`` while the caller runs forward passes; yields ``{name: InputStatistics}``.

    The dict fills as inputs arrive; read it after the forward passes, inside or after the block.
    """
    stats: dict[str, InputStatistics] = {}
    first_inputs: dict[str, torch.Tensor] = {}  # held during the first batch so identity is meaningful
    followers: set[str] = set()

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if name in followers:
                return
            if name not in stats:
                leader = next((n for n, seen in first_inputs.items() if seen is x), None)
                if leader is not None:
                    stats[name] = stats[leader]
                    followers.add(name)
                    return
                stats[name] = InputStatistics(x.shape[-1], hessian, x.device)
                first_inputs[name] = x
            elif first_inputs:
                first_inputs.clear()  # a second batch has started: identities are settled
            stats[name].update(x)
        return hook

    handles = [module.register_forward_pre_hook(make_hook(name)) for name, module in modules.items()]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
        first_inputs.clear()
