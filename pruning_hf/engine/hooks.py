"""Forward hooks that fill :class:`~pruning_hf.sparsity.statistics.InputStatistics` while layers run.

Linears that read the very same input tensor (q/k/v projections, gate/up projections) share one
:class:`InputStatistics`, found by object identity on the first batch, so a Hessian is computed once
per distinct input rather than once per Linear.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..sparsity.statistics import InputStatistics

__all__ = ["collect_input_statistics"]


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
