"""What every pruning method shares: options handling, config checks, and the per-Linear loop.

A method is one class in one file of this package, registered by name in ``methods/__init__.py``.
Methods never load models or data: the engine hands them a decoder layer's target Linear modules and
the input statistics it collected for them, and writes back the weights they return.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..statistics import InputStatistics

__all__ = ["NoOptions", "PruningMethod", "WeightPruner", "weight_matrix"]


@dataclass
class NoOptions:
    """The method takes no options."""


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as an ``(out_features, in_features)`` view (GPT-2's Conv1D stores it transposed)."""
    weight = module.weight
    return weight if isinstance(module, nn.Linear) else weight.t()


class PruningMethod:
    """Base class: subclasses set ``name`` and, as needed, ``Options``, ``scopes`` and ``statistics``."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    #: values allowed for ``PruningConfig.scope``; the first is the default. Empty: scope not used.
    scopes: ClassVar[tuple[str, ...]] = ()
    #: input statistics the engine collects per target Linear: None, "norms" or "hessian".
    statistics: ClassVar[str | None] = None
    #: values allowed for ``PruningConfig.allocation`` (how sparsity is spread over layers)
    allocations: ClassVar[tuple[str, ...]] = ("uniform",)
    #: whether ``PruningConfig.refine`` (mask refinement after each Linear) applies
    refinable: ClassVar[bool] = False

    def __init__(self, config) -> None:
        self.config = config
        self.options = config.options
        self.pattern = config.pattern_spec
        #: per-decoder-layer sparsity set by the engine for non-uniform allocations (None: uniform)
        self.layer_sparsity: list[float | None] | None = None

    # --- configuration --------------------------------------------------------------------------
    @classmethod
    def make_options(cls, values: dict[str, Any]):
        """Build the method's Options dataclass, rejecting options it does not take."""
        known = {f.name for f in dataclasses.fields(cls.Options)}
        for key in values:
            if key not in known:
                from . import METHODS

                owners = sorted(name for name, other in METHODS.items()
                                if key in {f.name for f in dataclasses.fields(other.Options)})
                takes = f"it takes: {sorted(known)}" if known else "it takes no options"
                belongs = f"; {key!r} is an option of: {', '.join(owners)}" if owners else ""
                raise ValueError(f"unknown option {key!r} for method {cls.name!r} ({takes}){belongs}")
        return cls.Options(**values)

    @classmethod
    def validate_config(cls, config) -> None:
        """Check sparsity / pattern / scope together. Raises ValueError naming the field."""
        pattern = config.pattern_spec
        if pattern.is_nm:
            implied = pattern.implied_sparsity
            if config.sparsity is None:
                config.sparsity = implied
            elif abs(config.sparsity - implied) > 1e-9:
                raise ValueError(
                    f"sparsity={config.sparsity} conflicts with pattern={config.pattern!r}, which implies "
                    f"sparsity {implied:g}; leave sparsity unset for N:M patterns")
            if config.scope is not None:
                raise ValueError(
                    f"scope={config.scope!r} has no meaning with pattern={config.pattern!r}: every group "
                    f"of {pattern.m} weights is pruned on its own; leave scope unset")
            return
        if config.sparsity is None:
            raise ValueError(f"sparsity is required for pattern={config.pattern!r} (a number in [0, 1), e.g. 0.5)")
        if config.scope is None:
            config.scope = cls.scopes[0] if cls.scopes else None
        elif config.scope not in cls.scopes:
            allowed = f"allowed: {', '.join(cls.scopes)}" if cls.scopes else "this method takes no scope"
            raise ValueError(f"scope={config.scope!r} is not available for method {cls.name!r}; {allowed}")

    @classmethod
    def needs_calibration(cls, config) -> bool:
        return cls.statistics is not None

    @classmethod
    def describe(cls, config) -> str:
        """One line for logs and reports, e.g. ``wanda 50% unstructured (row)``."""
        amount = f"{config.sparsity:.0%}" if config.sparsity is not None else ""
        extra = f" ({config.scope})" if config.scope else ""
        return " ".join(part for part in (config.method, amount, config.pattern) if part) + extra

    # --- pruning --------------------------------------------------------------------------------
    def setup(self, model: nn.Module) -> None:
        """Optional look at the whole model before calibration (structured methods find layers, check sizes)."""

    def prepare(self, targets: dict[str, nn.Module]) -> None:
        """Optional look at every target before the layer loop (e.g. a global threshold)."""

    def observe_layer(self, layer_index: int, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """Optional look at a layer's calibration inputs and its (pruned) outputs, ``(batch, seq, hidden)`` each."""

    def finalize(self, model: nn.Module) -> dict[str, Any]:
        """Optional last step after the layer loop (drop layers, global allocation, config update).

        Returns details for the :class:`~pruning_hf.engine.PruningReport` (e.g. which layers were removed).
        """
        return {}

    def prune_layer(self, layer_index: int, targets: dict[str, nn.Module],
                    stats: dict[str, InputStatistics]) -> dict[str, torch.Tensor]:
        """Prune one decoder layer. Return ``{name: new (out, in) weight}`` for the engine to write."""
        raise NotImplementedError

    def sparsity_for(self, layer_index: int, name: str) -> float:
        """Target sparsity of one Linear: its layer's allocation when the engine set one, else uniform."""
        allocated = self.layer_sparsity[layer_index] if self.layer_sparsity and layer_index < len(
            self.layer_sparsity) else None
        return self.config.sparsity if allocated is None else allocated


class WeightPruner(PruningMethod):
    """A method that prunes each target Linear on its own (magnitude, Wanda, SparseGPT)."""

    allocations = ("uniform", "owl", "global")
    refinable = True

    def prune_layer(self, layer_index, targets, stats):
        new_weights = {}
        for name, module in targets.items():
            weight = weight_matrix(module).detach().float()
            new_weights[name] = self.prune_weight(
                name, weight, stats.get(name), self.sparsity_for(layer_index, name))
        return new_weights

    def prune_weight(self, name: str, weight: torch.Tensor, stats: InputStatistics | None,
                     sparsity: float) -> torch.Tensor:
        """Return the pruned fp32 ``(out, in)`` weight (zeros where pruned). ``weight`` may be modified."""
        raise NotImplementedError
