"""Structured width pruning: remove whole MLP neurons and attention heads, physically.

Units. An MLP *neuron* is one row of each input projection (OPT ``fc1``; Llama/Gemma ``gate_proj`` and
``up_proj``) with the matching column of the output projection (``fc2`` / ``down_proj``). An attention
unit is a *KV group*: one key/value head with all the query heads that read it (q/k/v rows and
``o_proj`` columns; in OPT's multi-head attention a group is one head). A layer with a single KV
group (multi-query attention, e.g. Gemma-3-270M: 4 query heads, 1 K/V head) cannot lose its group
without losing attention altogether, so there the unit is a *query head* (its q rows and o columns;
the shared K/V head stays). Either way a KV group is never split, every group keeps the same number
of query heads, ``head_dim`` is unchanged and every layer keeps at least one unit of each kind.

Importance of a unit, from the output projection's input columns ``c`` it owns (``W_out[:, c]``)
and, for activations, the calibration inputs ``X_c`` of that projection:

* ``magnitude``: ``sqrt(sum_c ||W_out[:, c]||^2 + ||W_in[c, :]||^2)`` (weights only);
* ``activation``: ``sqrt(sum_c ||W_out[:, c]||^2 ||X_c||^2)`` (Wanda's ``|W| ||X||``, per unit);
* ``fluctuation``: ``sum_c ||W_out[:, c]||^2 Var(X_c)`` (FLAP); the removed units' mean contribution
  ``W_out[:, removed] E[X_removed]`` is folded into the output projection's bias. OPT has that bias;
  Llama-family configs with ``mlp_bias`` / ``attention_bias`` get it switched on (zero biases on the
  other projections, still a stock config); families without such a switch (Gemma3's MLP, Mistral,
  Qwen2) cannot store it, so it is skipped with a warning;
* ``random``: seeded by ``calibration.seed`` (the baseline every criterion must beat).

Allocation. ``uniform``: every layer loses ``round(sparsity * units)``, layer by layer, each layer
scored on the outputs of the already-pruned layers before it. ``adaptive``: scores of all layers
(on the unpruned model) are standardised per layer and ranked globally, as FLAP does; each layer
keeps at least ``min_layer_keep`` of its units. ``sparsity`` is the fraction of units removed of each
targeted kind (for neurons and KV groups, also the fraction of those projections' weights).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.architectures import decoder_layers, get_architecture
from ..models.devices import is_offloaded
from ..models.shrink import (add_zero_bias, attention_geometry, attention_linears, bias_switch_works, block_indices,
                             keep_attention_heads, keep_mlp_neurons, layer_shape, mlp_linears, removed_units)
from ..sparsity.masks import num_to_prune
from ..sparsity.statistics import InputStatistics, StatisticsSpec
from ..utils.checks import check_choice, check_number
from .base import LayerUpdate, PruningMethod

__all__ = ["StructuredOptions", "StructuredPruner", "column_energy", "unit_importance", "units_to_keep",
           "adaptive_removals", "head_units"]

logger = logging.getLogger(__name__)
TARGETS = ("mlp", "heads", "both")
IMPORTANCES = ("magnitude", "activation", "fluctuation", "random")


@dataclass
class StructuredOptions:
    target: str = field(default="mlp", metadata={"help": (
        "What structured pruning removes: 'mlp' (FFN neurons), 'heads' (attention heads; whole KV groups "
        "in GQA models) or 'both'.")})
    importance: str = field(default="activation", metadata={"help": (
        "Unit score: 'magnitude' (weights only), 'activation' (Wanda-style |W|*||X|| per unit), 'fluctuation' "
        "(FLAP: input variance, mean folded into the output bias) or 'random'.")})
    min_layer_keep: float = field(default=0.1, metadata={"help": (
        "With allocation='adaptive': every layer keeps at least this fraction of its neurons / head units "
        "(and one).")})

    def __post_init__(self) -> None:
        check_choice("target", self.target, TARGETS)
        check_choice("importance", self.importance, IMPORTANCES)
        check_number("min_layer_keep", self.min_layer_keep, 0.0, 1.0, high_inclusive=True)


# --- pure scoring and allocation functions ---------------------------------------------------------
def column_energy(importance: str, w_out: torch.Tensor, w_in: list[torch.Tensor],
                  stats: InputStatistics | None) -> torch.Tensor:
    """``(cols,)`` importance energy of each input column ``c`` of an output projection.

    Args:
        importance: 'magnitude', 'activation' or 'fluctuation'.
        w_out: ``(hidden, cols)`` output-projection weight.
        w_in: ``(cols, hidden)`` input-projection weights whose rows belong to the same columns.
        stats: the output projection's input statistics (for 'activation' / 'fluctuation').
    """
    out_energy = w_out.float().square().sum(0)
    if importance == "magnitude":
        return out_energy + sum(w.float().square().sum(1) for w in w_in)
    if importance == "activation":
        return out_energy * stats.sq_norms.to(out_energy.device)
    return out_energy * stats.variance.to(out_energy.device)


def unit_importance(energy: torch.Tensor, block: int, squared: bool = False) -> torch.Tensor:
    """``(units,)`` scores of units made of ``block`` consecutive columns: ``sqrt(sum energy)`` (or the sum)."""
    total = energy.view(-1, block).sum(1)
    return total if squared else total.sqrt()


def units_to_keep(scores: torch.Tensor, remove: int) -> torch.Tensor:
    """Sorted indices of the ``len(scores) - remove`` highest-scored units."""
    keep = len(scores) - remove
    return torch.topk(scores, keep, sorted=False).indices.sort().values


def adaptive_removals(scores: list[torch.Tensor], fraction: float, min_keep: float) -> list[int]:
    """Units to remove per layer from one global ranking of per-layer standardised scores.

    Args:
        scores: per layer, ``(units,)`` scores.
        fraction: share of all units to remove.
        min_keep: each layer keeps at least ``max(1, ceil(min_keep * units))``.
    Returns:
        Number of units to remove in each layer (summing to the budget, or to every layer's
        allowance when the floors leave less).
    """
    budget = num_to_prune(sum(len(s) for s in scores), fraction)
    caps = torch.tensor([len(s) - max(1, math.ceil(min_keep * len(s))) for s in scores])
    if budget > caps.sum():
        logger.warning("min_layer_keep=%s allows removing only %d of %d units requested", min_keep,
                       int(caps.sum()), budget)
    standard = torch.cat([(s.float() - s.float().mean()) / s.float().std().clamp_min(1e-12) if len(s) > 1
                          else torch.zeros(len(s)) for s in scores])
    layer_of = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    rank_in_layer = torch.cat([s.float().argsort().argsort() for s in scores])
    eligible = (rank_in_layer < caps[layer_of]).nonzero().squeeze(1)
    chosen = eligible[standard[eligible].argsort()[:budget]]
    return torch.bincount(layer_of[chosen], minlength=len(scores)).tolist()


def head_units(num_q: int, num_kv: int, head_dim: int) -> tuple[int, int]:
    """``(units, columns per unit)`` of a layer's attention: KV groups, or query heads when one group."""
    if num_kv > 1:
        return num_kv, num_q // num_kv * head_dim
    return num_q, head_dim


def _head_indices(kept: torch.Tensor, num_q: int, num_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and K/V heads to keep for kept units (see :func:`head_units`)."""
    if num_kv > 1:
        return block_indices(kept, num_q // num_kv), kept
    return kept, torch.zeros(1, dtype=torch.long)


@dataclass
class _LayerScores:
    scores: torch.Tensor  # (units,)
    block: int  # output-projection columns per unit
    mean: torch.Tensor | None  # (cols,) input means, for bias compensation


class StructuredPruner(PruningMethod):
    """Remove FFN neurons and/or attention heads (KV groups): smaller Linears, real speed-ups."""

    name = "structured"
    Options = StructuredOptions
    #: "uniform": same fraction removed from every layer; "adaptive": global ranking of standardised
    #: scores, widths differ per layer (each keeps at least ``min_layer_keep``)
    allocations = ("uniform", "adaptive")

    changes_shapes = True

    def __init__(self, config, progress: bool = False) -> None:
        super().__init__(config, progress)
        self.kinds = ("mlp", "heads") if self.options.target == "both" else (self.options.target,)
        self.statistics = StatisticsSpec() if self.needs_calibration(config) else None
        self.generator = torch.Generator().manual_seed(config.calibration.seed)
        self.pending: dict[str, list[_LayerScores]] = {kind: [] for kind in self.kinds}
        self.compensate = {kind: False for kind in self.kinds}  # output bias available for compensation
        self.switch_on: set[str] = set()  # kinds whose config bias switch must be turned on

    @classmethod
    def validate_config(cls, config) -> None:
        if config.pattern_spec.is_nm:
            raise ValueError(f"pattern={config.pattern!r} does not apply to structured pruning (it removes whole "
                             "neurons and heads); leave pattern unset")
        if config.sparsity is None:
            raise ValueError("sparsity is required for method 'structured': the fraction of neurons / head units "
                             "to remove, in [0, 1), e.g. 0.3")
        for name in ("scope", "targets"):
            if getattr(config, name):
                raise ValueError(f"{name}={getattr(config, name)!r} does not apply to method 'structured'; "
                                 "choose what to remove with target='mlp' | 'heads' | 'both'")
        if config.ignore:
            raise ValueError(f"ignore={config.ignore!r} does not apply to method 'structured'")

    @classmethod
    def needs_calibration(cls, config) -> bool:
        return config.options.importance in ("activation", "fluctuation")

    @classmethod
    def describe(cls, config) -> str:
        options = config.options
        return f"structured {config.sparsity:.0%} {options.target} ({options.importance}, {config.allocation})"

    # --- engine hooks -----------------------------------------------------------------------------
    def setup(self, model: nn.Module) -> None:
        spec = get_architecture(model)
        wanted = {"mlp": spec.mlp, "heads": spec.attention}
        for kind in self.kinds:
            if wanted[kind] is None or spec.family in ("gpt2", "generic"):
                raise ValueError(f"structured pruning of {kind!r} is not available for model_type="
                                 f"{model.config.model_type!r}; supported families: OPT, Llama family, Gemma3")
        if any(is_offloaded(module) or param.device.type == "meta"
               for module in model.modules() for param in module.parameters(recurse=False)):
            raise ValueError("structured pruning replaces Linear layers and needs every weight in memory; load the "
                             "model without disk/CPU offload (no offload_folder / max_memory spill)")
        self.spec, self.model_config = spec, model.config
        self.layers = decoder_layers(model, spec)
        self.shapes_before = [layer_shape(layer, spec) for layer in self.layers]  # for the report's unit counts
        if self.options.importance == "fluctuation":
            self._check_bias(self.layers[0])

    def _check_bias(self, layer: nn.Module) -> None:
        spec = self.spec
        parts = {"mlp": (spec.mlp.path, spec.mlp.bias_switch, [*spec.mlp.inputs, spec.mlp.output]),
                 "heads": (spec.attention.path, spec.attention.bias_switch,
                           [spec.attention.q, spec.attention.k, spec.attention.v, spec.attention.o])}
        for kind in self.kinds:
            path, switch, names = parts[kind]
            qualified = [f"{path}.{name}" if path else name for name in names]
            if layer.get_submodule(qualified[-1]).bias is not None:
                self.compensate[kind] = True
            elif bias_switch_works(layer, self.model_config, switch, qualified):
                self.compensate[kind] = True
                self.switch_on.add(kind)
            else:
                logger.warning("%s has no output bias and no config switch for one: the fluctuation scores are used, "
                               "but the removed %s units' mean contribution cannot be stored and is dropped",
                               type(layer).__name__, kind)

    def _stats_name(self, layer_index: int, kind: str) -> str:
        path, name = ((self.spec.mlp.path, self.spec.mlp.output) if kind == "mlp"
                      else (self.spec.attention.path, self.spec.attention.o))
        return ".".join(part for part in (self.spec.layers_path, str(layer_index), path, name) if part)

    def _score(self, layer_index: int, kind: str, stats: dict[str, InputStatistics]) -> _LayerScores:
        layer = self.layers[layer_index]
        if kind == "mlp":
            inputs, output = mlp_linears(layer, self.spec)
            count, block = output.in_features, 1
        else:
            q, _, _, output = attention_linears(layer, self.spec)
            inputs = [q]
            count, block = head_units(*attention_geometry(layer, self.spec))
        importance = self.options.importance
        layer_stats = stats.get(self._stats_name(layer_index, kind))
        mean = layer_stats.mean if importance == "fluctuation" and self.compensate[kind] else None
        if importance == "random":
            return _LayerScores(torch.rand(count, generator=self.generator), block, None)
        energy = column_energy(importance, output.weight, [w.weight for w in inputs], layer_stats)
        return _LayerScores(unit_importance(energy, block, squared=importance == "fluctuation"), block, mean)

    def _shrink(self, layer_index: int, kind: str, scored: _LayerScores, remove: int) -> None:
        if remove == 0:
            return
        layer = self.layers[layer_index]
        kept = units_to_keep(scored.scores, remove)
        output = mlp_linears(layer, self.spec)[1] if kind == "mlp" else attention_linears(layer, self.spec)[3]
        correction = None
        if scored.mean is not None:  # fold the removed columns' mean contribution into the bias
            weight = output.weight.detach().float()
            removed = torch.ones(output.in_features, dtype=torch.bool, device=weight.device)
            removed[block_indices(kept, scored.block).to(weight.device)] = False
            correction = weight[:, removed] @ scored.mean.to(weight.device)[removed]
        if kind == "mlp":
            keep_mlp_neurons(layer, self.spec, kept)
            output = mlp_linears(layer, self.spec)[1]
        else:
            num_q, num_kv, _ = attention_geometry(layer, self.spec)
            keep_attention_heads(layer, self.spec, *_head_indices(kept, num_q, num_kv))
            output = attention_linears(layer, self.spec)[3]
        if correction is not None:
            add_zero_bias(output)
            with torch.no_grad():
                output.bias += correction.to(output.bias)

    def prune_layer(self, layer_index, targets, stats):
        for kind in self.kinds:
            scored = self._score(layer_index, kind, stats)
            if self.config.allocation == "adaptive":
                self.pending[kind].append(scored)
            else:
                remove = min(num_to_prune(len(scored.scores), self.config.sparsity), len(scored.scores) - 1)
                self._shrink(layer_index, kind, scored, remove)
        return LayerUpdate()

    def finalize(self, model: nn.Module) -> dict:
        for kind, scored in self.pending.items():
            if scored:
                removals = adaptive_removals([s.scores for s in scored], self.config.sparsity,
                                             self.options.min_layer_keep)
                for index, (layer_scores, remove) in enumerate(zip(scored, removals)):
                    self._shrink(index, kind, layer_scores, remove)
        for kind in self.switch_on:
            self._turn_on_biases(kind)
        shapes = [layer_shape(layer, self.spec) for layer in self.layers]
        return {"layer_shapes": shapes, "removed_units": removed_units(self.shapes_before, shapes, self.kinds)}

    def _turn_on_biases(self, kind: str) -> None:
        """Give every projection of this kind a bias (zeros where none) and set the config flag that builds them."""
        for layer in self.layers:
            if kind == "mlp":
                inputs, output = mlp_linears(layer, self.spec)
                linears = [*inputs, output]
            else:
                linears = list(attention_linears(layer, self.spec))
            for linear in linears:
                add_zero_bias(linear)
        switch = self.spec.mlp.bias_switch if kind == "mlp" else self.spec.attention.bias_switch
        setattr(self.model_config, switch, True)
