"""ADMM (Boza 2024; ALPS, Meng et al. 2024): choose the mask and the kept weights together by minimising
each Linear's output error ``||X W^T - X P^T||^2`` on its calibration inputs with the alternating
direction method of multipliers, under a growing penalty (the mask moves early and settles late), then
re-fit the kept weights on the final support. Needs the same Hessian ``X^T X`` as SparseGPT; the maths
is in :mod:`pruning_hf.sparsity.admm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..sparsity.admm import admm_prune
from ..sparsity.statistics import StatisticsSpec
from ..utils.checks import check_int, check_number
from .base import WeightPruner

__all__ = ["ADMMOptions", "ADMMPruner"]


@dataclass
class ADMMOptions:
    admm_iterations: int = field(default=20, metadata={"help": (
        "ADMM iterations per Linear (each costs one weight x Hessian product).")})
    rho: float = field(default=0.1, metadata={"help": (
        "Starting ADMM penalty, relative to the unit diagonal of the scaled Hessian: small lets the mask "
        "move, large freezes it.")})
    rho_growth: float = field(default=1.3, metadata={"help": (
        "Factor the penalty grows by every `rho_every` iterations (1: constant penalty).")})
    rho_every: int = field(default=2, metadata={"help": (
        "Iterations between penalty increases (each new penalty costs one Cholesky factorisation).")})
    gradual_iterations: int = field(default=0, metadata={"help": (
        "Grow the pruned fraction over this many first iterations on a cubic schedule (Boza's gradual "
        "mask); 0: the full sparsity from the first iteration.")})
    refit_iterations: int = field(default=5, metadata={"help": (
        "Conjugate-gradient steps re-fitting the kept weights to the least-squares optimum of the final "
        "mask (ALPS' post-processing); 0: none.")})
    dampening: float = field(default=0.02, metadata={"help": (
        "Added to the Hessian diagonal as a fraction of its mean; it also pulls the weights towards the "
        "dense ones.")})
    dampening_retries: int = field(default=6, metadata={"help": (
        "If the Cholesky factorisation fails, retry with 10x more dampening this many times.")})

    def __post_init__(self) -> None:
        check_int("admm_iterations", self.admm_iterations, 1)
        check_number("rho", self.rho, 0.0, 1e6, low_inclusive=False, high_inclusive=True)
        check_number("rho_growth", self.rho_growth, 1.0, 100.0, high_inclusive=True)
        check_int("rho_every", self.rho_every, 1)
        check_int("gradual_iterations", self.gradual_iterations, 0)
        if self.gradual_iterations > self.admm_iterations:
            raise ValueError(f"gradual_iterations={self.gradual_iterations} must not exceed "
                             f"admm_iterations={self.admm_iterations}")
        check_int("refit_iterations", self.refit_iterations, 0)
        check_number("dampening", self.dampening, 0.0, 10.0, low_inclusive=False, high_inclusive=True)
        check_int("dampening_retries", self.dampening_retries, 0)


class ADMMPruner(WeightPruner):
    """Mask and weights solved together by ADMM on the layer's output error; scope 'layer' (per Linear) or 'row'."""

    name = "admm"
    Options = ADMMOptions
    statistics = StatisticsSpec(hessian=True)
    scopes = ("layer", "row")
    stacks_shared_inputs = True
    fits_dense_targets = True

    def prune_weight(self, name, weight, stats, sparsity, row_groups=None) -> torch.Tensor:
        options = self.options
        result = admm_prune(weight, stats.hessian.to(weight.device), sparsity, self.pattern,
                            iterations=options.admm_iterations, rho=options.rho, rho_growth=options.rho_growth,
                            rho_every=options.rho_every, gradual_iterations=options.gradual_iterations,
                            refit_iterations=options.refit_iterations, dampening=options.dampening,
                            retries=options.dampening_retries, per_row=self.config.scope == "row",
                            row_groups=row_groups)
        return result.weight
