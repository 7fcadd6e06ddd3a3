"""What every pruning method shares: options handling, config checks, and the per-Linear loop.

A method is one class in one file of this package, registered by name in ``methods/__init__.py``.
Methods never load models or data: the engine hands them a decoder layer's target Linear modules and
the input statistics it collected for them (what the method declares in ``statistics``), and writes
back the weights they return. A method declares what the engine must do for it through class
attributes (``statistics``, ``resumable``, ``changes_shapes``); the engine never asks which method it runs.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..models.architectures import weight_matrix
from ..sparsity.hessian import dense_target_weight
from ..sparsity.refinement import refine_layer
from ..sparsity.statistics import InputStatistics, StatisticsSpec
from ..utils.checks import plain_scalar

__all__ = ["NoOptions", "LayerUpdate", "PruningMethod", "WeightPruner", "dense_target_weights", "shared_inputs"]

#: dampening of the dense-target solve for methods without a ``dampening`` option (fraction of mean diag H)
DENSE_TARGET_DAMPENING = 0.01
#: dense targets fit ``in`` unknowns per row from the calibration tokens: fewer than this many tokens per
#: input feature over-fit them (SmolLM2 at 8 x 256 tokens: perplexity 53 -> 91, benchmarks/prune_speed.py)
DENSE_TARGET_TOKENS_PER_FEATURE = 8


def shared_inputs(weights: dict[str, torch.Tensor], stats: dict[str, InputStatistics]) -> list[list[str]]:
    """Names grouped by the statistics object they share: one group per distinct input (q/k/v, gate/up)."""
    groups: dict[int, list[str]] = {}
    for name in weights:
        groups.setdefault(id(stats[name]) if stats.get(name) is not None else id(name), []).append(name)
    return list(groups.values())


def dense_target_weights(weights: dict[str, torch.Tensor], stats: dict[str, InputStatistics],
                         dampening: float) -> dict[str, torch.Tensor]:
    """``{name: W*}`` (:func:`~pruning_hf.sparsity.hessian.dense_target_weight`) from statistics with a cross
    term; Linears sharing an input share one factorisation."""
    targets = {}
    for names in shared_inputs(weights, stats):
        shared = stats[names[0]]
        features = shared.sums.numel()
        if shared.num_tokens < DENSE_TARGET_TOKENS_PER_FEATURE * features:
            warnings.warn(f"dense targets are fitted from {shared.num_tokens} calibration tokens for "
                          f"{features} input features (fewer than {DENSE_TARGET_TOKENS_PER_FEATURE} per feature): "
                          "they over-fit and can make the model much worse; use more calibration windows "
                          "(num_samples x seq_len) or dense_targets=False", RuntimeWarning, stacklevel=2)
        stacked = torch.cat([weights[name] for name in names])
        fitted = dense_target_weight(stacked, shared.hessian.to(stacked.device), shared.dense_products(stacked),
                                     dampening)
        targets |= dict(zip(names, fitted.split([weights[name].shape[0] for name in names])))
    return targets


@dataclass
class NoOptions:
    """The method takes no options."""


@dataclass
class LayerUpdate:
    """What a method did to one decoder layer.

    ``weights``: ``{name: new (out, in) fp32 weight}`` for the engine to write back (empty when the
    method changed the modules itself, as structured pruning does); ``linears``: per-Linear details for
    the report (refinement errors, swaps); ``refine_seconds``: time spent refining.
    """

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    linears: dict[str, dict[str, float]] = field(default_factory=dict)
    refine_seconds: float = 0.0


class PruningMethod:
    """Base class: subclasses set ``name`` and, as needed, ``Options``, ``scopes`` and ``statistics``."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    #: values allowed for ``PruningConfig.scope``; the first is the default. Empty: scope not used.
    scopes: ClassVar[tuple[str, ...]] = ()
    #: input statistics the engine collects per target Linear (None: the method reads no calibration data)
    statistics: ClassVar[StatisticsSpec | None] = None
    #: values allowed for ``PruningConfig.allocation`` (how sparsity is spread over layers)
    allocations: ClassVar[tuple[str, ...]] = ("uniform",)
    #: whether ``PruningConfig.refine`` (mask refinement after each Linear) applies
    refinable: ClassVar[bool] = False
    #: whether a run can continue from per-layer checkpoints (the method only rewrites weights, layer by layer)
    resumable: ClassVar[bool] = False
    #: whether layers get smaller or fewer (the model's config must then be told their shapes)
    changes_shapes: ClassVar[bool] = False
    #: whether the engine may prune a decoder layer sub-block by sub-block (``PruningConfig.schedule``):
    #: the method prunes each Linear from its own input statistics and needs no whole-layer view
    sub_blocks: ClassVar[bool] = False
    #: whether the method can fit pruned Linears to the dense model's outputs (``PruningConfig.dense_targets``)
    fits_dense_targets: ClassVar[bool] = False
    #: keywords of a small valid config of this method (``PruningConfig(method=name, **example)``): the
    #: registry contract tests prune a tiny model with it, so a new method is tested without a new test
    example: ClassVar[dict[str, Any]] = {"sparsity": 0.5}

    def __init__(self, config, progress: bool = False) -> None:
        self.config = config
        self.progress = progress  # inner progress bars (refinement per Linear)
        self.options = config.options
        self.pattern = config.pattern_spec
        #: per-decoder-layer sparsity set by the engine for non-uniform allocations (None: uniform)
        self.layer_sparsity: list[float | None] | None = None

    # --- configuration --------------------------------------------------------------------------
    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Options)]

    @classmethod
    def make_options(cls, values: dict[str, Any]):
        """Build the method's Options dataclass, rejecting options it does not take; numpy / torch scalars
        become the plain Python numbers they hold (options are serialised to JSON and YAML)."""
        unknown = sorted(set(values) - set(cls.option_names()))
        if unknown:
            takes = f"it takes: {cls.option_names()}" if cls.option_names() else "it takes no options"
            raise ValueError(f"unknown option {unknown[0]!r} for method {cls.name!r} ({takes})")
        return cls.Options(**{key: plain_scalar(value) for key, value in values.items()})

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
    def layer_targets(cls, config, model: nn.Module) -> set[str] | None:
        """Names (relative to a decoder layer) of the Linears of ``model`` the engine hands to
        :meth:`prune_layer` and collects statistics for; None: every Linear, narrowed by ``targets`` /
        ``ignore``. Raises ValueError when the method cannot prune this model's family."""
        return None

    @classmethod
    def applies(cls, field_name: str, config) -> bool:
        """Whether a PruningConfig field says something for this method with ``config``'s values (what a
        model card lists): unset fields do not, nor fields the method ignores at their defaults (``pattern``
        for methods that remove whole units, ``scope`` without ``scopes``, a single allocation, OWL's
        knobs without OWL, refinement where it cannot refine or is off)."""
        value = getattr(config, field_name)
        if value is None or value == [] or (field_name == "options" and not dataclasses.asdict(value)):
            return False
        if field_name == "pattern":
            return not cls.changes_shapes or value != "unstructured"
        if field_name == "scope":
            return bool(cls.scopes)
        if field_name == "allocation":
            return len(cls.allocations) > 1 or value != cls.allocations[0]
        if field_name in ("owl_m", "owl_lambda"):
            return config.allocation == "owl"
        if field_name == "dense_precision":
            return config.dense_targets
        if field_name in ("refine", "refine_iterations"):
            return cls.refinable and (field_name == "refine" or config.refine)
        return True

    def input_statistics(self) -> StatisticsSpec | None:
        """What the engine collects for each target Linear of a layer before :meth:`prune_layer`
        (refinement needs ``X^T X`` whatever the method reads)."""
        spec = self.statistics
        if self.config.refine:
            spec = StatisticsSpec(hessian=True)
        if spec is not None and self.config.dense_targets:
            spec = StatisticsSpec(hessian=True, cross=True)
        return spec

    @property
    def inspects_all_weights(self) -> bool:
        """Whether :meth:`prepare` must see every target's weights before the layer loop (costly offloaded)."""
        return False

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
        """Look at every target before the layer loop, when :attr:`inspects_all_weights` (a global threshold)."""

    def observe_layer(self, layer_index: int, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """Optional look at a layer's calibration inputs and its (pruned) outputs, ``(batch, seq, hidden)`` each."""

    def finalize(self, model: nn.Module) -> dict[str, Any]:
        """Optional last step after the layer loop (drop layers, global allocation, config update).

        Returns details for the :class:`~pruning_hf.engine.report.PruningReport` (e.g. which layers were removed).
        """
        return {}

    def prune_layer(self, layer_index: int, targets: dict[str, nn.Module],
                    stats: dict[str, InputStatistics]) -> LayerUpdate:
        """Prune one decoder layer (its target Linears are on their compute device)."""
        raise NotImplementedError

    def sparsity_for(self, layer_index: int, name: str) -> float:
        """Target sparsity of one Linear: its layer's allocation when the engine set one, else uniform."""
        allocated = self.layer_sparsity[layer_index] if self.layer_sparsity and layer_index < len(
            self.layer_sparsity) else None
        return self.config.sparsity if allocated is None else allocated


class WeightPruner(PruningMethod):
    """A method that zeroes weights of each target Linear (magnitude, Wanda, SparseGPT), then refines
    the masks when ``config.refine``."""

    allocations = ("uniform", "owl", "global")
    refinable = True
    resumable = True
    sub_blocks = True
    #: Linears reading the same input (q/k/v, gate/up) share one Hessian: prune them as one stacked
    #: ``(sum out, in)`` matrix, ``prune_weight(..., row_groups=[rows of each])`` (SparseGPT, ADMM)
    stacks_shared_inputs: ClassVar[bool] = False

    def prune_layer(self, layer_index, targets, stats) -> LayerUpdate:
        weights = {n: weight_matrix(m).detach().float() for n, m in targets.items()}
        if self.config.dense_targets:  # fit the dense model's outputs: the usual problem with W* for W
            weights = dense_target_weights(weights, stats, getattr(self.options, "dampening", DENSE_TARGET_DAMPENING))
        dense = {n: w.clone() for n, w in weights.items()} if self.config.refine else {}
        update = LayerUpdate(self.prune_weights(layer_index, weights, stats))
        if self.config.refine:
            start = time.perf_counter()
            update.weights, update.linears = refine_layer(dense, update.weights, stats, self.pattern,
                                                          self.config.refine_iterations, self.progress)
            update.refine_seconds = time.perf_counter() - start
        return update

    def prune_weights(self, layer_index: int, weights: dict[str, torch.Tensor],
                      stats: dict[str, InputStatistics]) -> dict[str, torch.Tensor]:
        """``{name: pruned (out, in) fp32 weight}`` from ``{name: (out, in) fp32 weight}`` (the targets' weights,
        or their dense targets; may be modified in place): each target on its own, or with
        :attr:`stacks_shared_inputs` the Linears of one input stacked when their sparsities agree."""
        groups = shared_inputs(weights, stats) if self.stacks_shared_inputs else [[name] for name in weights]
        new_weights = {}
        for names in groups:
            sparsities = {self.sparsity_for(layer_index, name) for name in names}
            if len(names) == 1 or len(sparsities) > 1:  # per-Linear sparsities differ: one by one
                new_weights |= {name: self.prune_weight(name, weights[name], stats.get(name),
                                                        self.sparsity_for(layer_index, name)) for name in names}
                continue
            rows = [weights[name].shape[0] for name in names]
            stacked = self.prune_weight(names[0], torch.cat([weights[name] for name in names]), stats[names[0]],
                                        sparsities.pop(), row_groups=rows)
            new_weights |= dict(zip(names, stacked.split(rows)))
        return new_weights

    def prune_weight(self, name: str, weight: torch.Tensor, stats: InputStatistics | None,
                     sparsity: float) -> torch.Tensor:
        """Return the pruned fp32 ``(out, in)`` weight (zeros where pruned). ``weight`` may be modified."""
        raise NotImplementedError
