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
* ``fluctuation``: ``sum_c ||W_out[:, c]||^2 Var(X_c)`` (FLAP, usually with ``update="bias"``);
* ``random``: seeded by ``calibration.seed`` (the baseline every criterion must beat);
* ``obs`` (ZipLM / SlimGPT): grouped OBS on the inverse Hessian of the output projection's inputs: units
  are removed in up to ``obs_steps`` steps, each step those whose removal costs least *after* the optimal
  update of the kept columns, with the weight and inverse Hessian updated between steps.

Update of what is kept (``update``), after the units are chosen (maths in :mod:`~pruning_hf.sparsity.reconstruction`):

* ``none``: cut only;
* ``bias`` (FLAP): the removed units' mean contribution ``W_out[:, removed] E[X_removed]`` is folded
  into the output projection's bias: OPT has one; Llama-family configs get ``mlp_bias`` / ``attention_bias``
  switched on (still a stock config); where no switch exists (Gemma3's MLP, Mistral, Qwen2) it is skipped
  with a warning;
* ``lstsq``: the output projection is re-fitted on the kept columns by least squares on calibration
  inputs, ``W' = W Hd[:, K] Hd[K, K]^-1`` (``Hd = X^T X + λI``, SparseGPT's dampening), so the layer's
  output stays as close as possible to the unpruned one; works for every family (no bias needed), and
  where the output projection has a bias (OPT) the mean term is fitted too.

Allocation. ``uniform``: every layer loses ``round(sparsity * units)``, layer by layer, each scored on
the outputs of the already-pruned layers before it. ``increasing`` (SlimGPT): as many units, shared out in
proportion to fractions growing with depth like ``ln(1 + i)`` (option ``spread``): early layers, whose errors
every later layer carries, lose less. ``adaptive``: scores of all layers (on the unpruned model),
standardised per layer, ranked globally (FLAP); with ``importance="obs"`` each layer's error-vs-removed
curve (error added to the residual stream after the OBS update, relative to its energy), cheapest removals
first, each layer keeping ``min_layer_keep`` of its units; the ``X^T X`` wait on the CPU until the loop ends.

Schedule. The engine hands the method only the output projections (``o_proj`` / ``down_proj``, whose inputs
choose and re-fit the units), so it runs the sub-block schedule: each sub-block once per calibration batch,
the MLP's statistics on the output of the already-pruned attention. In the loop the removed units' output
columns are set to zero, so the layer computes exactly what it will once cut; every layer is cut to its new
shape after the loop.
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
                             head_indices, head_units, keep_attention_heads, keep_mlp_neurons, layer_shape,
                             mlp_linears, output_norm, removed_units, turn_on_biases)
from ..sparsity.masks import num_to_prune
from ..sparsity.reconstruction import (allocate_by_error, augment_with_ones, error_curve, obs_select_units,
                                       refit_output, relative_output_error)
from ..sparsity.statistics import InputStatistics, StatisticsSpec
from ..sparsity.units import adaptive_removals, column_energy, layer_removals, unit_importance, units_to_keep
from ..utils.checks import check_choice, check_int, check_number
from .base import LayerUpdate, PruningMethod

__all__ = ["StructuredOptions", "StructuredPruner", "column_energy", "unit_importance", "units_to_keep",
           "adaptive_removals", "head_units"]

logger = logging.getLogger(__name__)
TARGETS = ("mlp", "heads", "both")
IMPORTANCES = ("obs", "activation", "magnitude", "fluctuation", "random")
UPDATES = ("lstsq", "bias", "none")


@dataclass
class StructuredOptions:
    target: str = field(default="mlp", metadata={"help": (
        "What structured pruning removes: 'mlp' (FFN neurons), 'heads' (attention heads; whole KV groups "
        "in GQA models) or 'both'.")})
    importance: str = field(default="obs", metadata={"help": (
        "How units are chosen: 'obs' (grouped OBS: the error each unit's removal causes after the optimal "
        "update, removed in steps; ZipLM/SlimGPT), 'activation' (Wanda-style |W|*||X|| per unit), 'magnitude' "
        "(weights only), 'fluctuation' (FLAP's input variance) or 'random'. Default 'obs' with update='lstsq': "
        "the best measured (benchmarks/structured_quality.py).")})
    update: str = field(default="lstsq", metadata={"help": (
        "What compensates for the removed units: 'lstsq' (least-squares re-fit of the output projection on the "
        "kept units, from calibration X^T X; every family; use more calibration tokens than the projection has "
        "inputs), 'bias' (FLAP: the removed units' mean folded into the output bias, where the family can store "
        "one) or 'none' (cut only).")})
    dampening: float = field(default=0.001, metadata={"help": (
        "update='lstsq' / importance='obs': added to the diagonal of X^T X as a fraction of its mean "
        "(0.1%: lower perplexity than SparseGPT's 1% in benchmarks/structured_quality.py); retried 10x larger "
        "if the Cholesky factorisation fails.")})
    obs_steps: int = field(default=512, metadata={"help": (
        "importance='obs': units are removed in at most this many steps, the weight and inverse Hessian "
        "updated between steps; 512: one unit per step (exact greedy OBS) up to 512 removals per layer, which "
        "measured best (benchmarks/structured_quality.py); fewer steps are faster on very wide layers.")})
    spread: float = field(default=0.5, metadata={"help": (
        "With allocation='increasing': how fast the fraction removed grows with depth: the units uniform would "
        "remove are shared in proportion to sparsity x (1 + spread x (ln(1+i) - mean) / ln L) for layer i of L "
        "(SlimGPT's incremental ratio; 0: uniform; 0.5: the first layer loses ~0.63x and the last ~1.13x the "
        "mean on a 30-layer model).")})
    min_layer_keep: float = field(default=0.1, metadata={"help": (
        "With allocation='adaptive': every layer keeps at least this fraction of its neurons / head units "
        "(and one).")})

    def __post_init__(self) -> None:
        check_choice("target", self.target, TARGETS)
        check_choice("importance", self.importance, IMPORTANCES)
        check_choice("update", self.update, UPDATES)
        check_number("dampening", self.dampening, 0.0, 10.0, high_inclusive=True)
        check_int("obs_steps", self.obs_steps, 1)
        check_number("spread", self.spread, 0.0, 1.0, high_inclusive=True)
        check_number("min_layer_keep", self.min_layer_keep, 0.0, 1.0, high_inclusive=True)


@dataclass
class _LayerPlan:
    """What pruning one kind of unit of one layer needs once the number of units to remove is known."""

    block: int  # output-projection columns per unit
    scores: torch.Tensor | None = None  # (units,) for score-based importances
    mean: torch.Tensor | None = None  # (cols,) input means, for update='bias'
    stats: InputStatistics | None = None  # the output projection's input statistics (X^T X for lstsq / obs)
    curve: torch.Tensor | None = None  # adaptive + obs: (cap + 1,) residual-stream error after removing 0..cap units


class StructuredPruner(PruningMethod):
    """Remove FFN neurons and/or attention heads (KV groups): smaller Linears, real speed-ups."""

    name = "structured"
    Options = StructuredOptions
    #: "uniform": the same fraction removed from every layer (a stock config); "increasing": as many units,
    #: shared by fractions growing with depth (:func:`~pruning_hf.sparsity.units.layer_removals`); "adaptive":
    #: global ranking of standardised scores (with importance='obs': of reconstruction errors), each layer
    #: keeping at least ``min_layer_keep``
    allocations = ("uniform", "increasing", "adaptive")

    changes_shapes = True
    #: a sub-block's units are chosen and re-fitted from its output projection's inputs alone (the engine
    #: hands it only o_proj / down_proj, see :meth:`layer_targets`), so the sub-block schedule runs it once
    sub_blocks = True

    def __init__(self, config, progress: bool = False) -> None:
        super().__init__(config, progress)
        options = self.options
        self.kinds = ("mlp", "heads") if options.target == "both" else (options.target,)
        self.uses_hessian = options.importance == "obs" or options.update == "lstsq"
        self.statistics = StatisticsSpec(hessian=self.uses_hessian) if self.needs_calibration(config) else None
        self.generator = torch.Generator().manual_seed(config.calibration.seed)
        self.pending: dict[str, list[_LayerPlan]] = {kind: [] for kind in self.kinds}
        self.compensate = {kind: False for kind in self.kinds}  # output bias available for compensation
        self.switch_on: set[str] = set()  # kinds whose config bias switch must be turned on
        self.errors: dict[str, list[float | None]] = {kind: [] for kind in self.kinds}
        self.residual_energy: dict[int, float] = {}  # adaptive + obs: mean ||h||^2 per token at each layer's input
        self.kept: dict[str, dict[int, torch.Tensor]] = {kind: {} for kind in self.kinds}  # units per layer, cut at finalize

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
        options = config.options
        return options.importance in ("activation", "fluctuation", "obs") or options.update in ("bias", "lstsq")

    @classmethod
    def layer_targets(cls, config, model: nn.Module) -> set[str]:
        """The output projections of the targeted kinds: their inputs choose and re-fit the units; the input
        projections lose the same units when :meth:`finalize` cuts."""
        kinds = ("mlp", "heads") if config.options.target == "both" else (config.options.target,)
        spec, names = get_architecture(model), set()
        for kind in kinds:
            part, output = (spec.mlp, "output") if kind == "mlp" else (spec.attention, "o")
            if part is None or spec.family in ("gpt2", "generic"):
                raise ValueError(f"structured pruning of {kind!r} is not available for model_type="
                                 f"{model.config.model_type!r}; supported families: OPT, Llama family, Gemma3")
            names.add(".".join(p for p in (part.path, getattr(part, output)) if p))
        return names

    @classmethod
    def describe(cls, config) -> str:
        options = config.options
        return (f"structured {config.sparsity:.0%} {options.target} ({options.importance}, update {options.update}, "
                f"{config.allocation})")

    # --- engine hooks -----------------------------------------------------------------------------
    def setup(self, model: nn.Module) -> None:
        spec = get_architecture(model)  # the family was checked by layer_targets
        if any(is_offloaded(module) or param.device.type == "meta"
               for module in model.modules() for param in module.parameters(recurse=False)):
            raise ValueError("structured pruning replaces Linear layers and needs every weight in memory; load the "
                             "model without disk/CPU offload (no offload_folder / max_memory spill)")
        self.spec, self.model_config = spec, model.config
        self.layers = decoder_layers(model, spec)
        self.shapes_before = [layer_shape(layer, spec) for layer in self.layers]  # for the report's unit counts
        self.errors = {kind: [None] * len(self.layers) for kind in self.kinds}
        self.removals = {kind: self._removals(kind) for kind in self.kinds}  # units each layer loses (not adaptive)
        if self.options.update == "bias":
            self._check_bias(self.layers[0])

    def _removals(self, kind: str) -> list[int]:
        spread = self.options.spread if self.config.allocation == "increasing" else None
        return layer_removals([self._linears(i, kind)[2] for i in range(len(self.layers))], self.config.sparsity, spread)

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
                logger.warning("%s has no output bias and no config switch for one: update='bias' cannot store the "
                               "removed %s units' mean contribution, so it is dropped (update='lstsq' needs no bias)",
                               type(layer).__name__, kind)

    def _stats_name(self, layer_index: int, kind: str) -> str:
        path, name = ((self.spec.mlp.path, self.spec.mlp.output) if kind == "mlp"
                      else (self.spec.attention.path, self.spec.attention.o))
        return ".".join(part for part in (self.spec.layers_path, str(layer_index), path, name) if part)

    def _linears(self, layer_index: int, kind: str) -> tuple[list[nn.Linear], nn.Linear, int, int]:
        """``(input projections, output projection, units, columns per unit)`` of one kind in a layer."""
        layer = self.layers[layer_index]
        if kind == "mlp":
            inputs, output = mlp_linears(layer, self.spec)
            return inputs, output, output.in_features, 1
        q, _, _, output = attention_linears(layer, self.spec)
        return [q], output, *head_units(*attention_geometry(layer, self.spec))

    def _plan(self, layer_index: int, kind: str, stats: dict[str, InputStatistics]) -> _LayerPlan:
        inputs, output, count, block = self._linears(layer_index, kind)
        options = self.options
        layer_stats = stats.get(self._stats_name(layer_index, kind))
        plan = _LayerPlan(block=block, stats=layer_stats if self.uses_hessian else None)
        if options.update == "bias" and self.compensate[kind]:
            plan.mean = layer_stats.mean
        if options.importance == "random":
            plan.scores = torch.rand(count, generator=self.generator)
        elif options.importance != "obs":
            energy = column_energy(options.importance, output.weight, [w.weight for w in inputs], layer_stats)
            plan.scores = unit_importance(energy, block, squared=options.importance == "fluctuation")
        return plan

    def _cap(self, units: int) -> int:
        return units - max(1, math.ceil(self.options.min_layer_keep * units))

    def _error_curve(self, layer_index: int, kind: str, plan: _LayerPlan) -> torch.Tensor:
        """``(cap + 1,)`` error the layer adds to the residual stream per token, after the OBS update, for
        0 .. cap units removed; divided by the residual stream's energy at finalize. Behind a post-norm
        (Gemma) the output's relative error times the norm's ``sum g^2``."""
        _, output, count, block = self._linears(layer_index, kind)
        cap = self._cap(count)
        if cap <= 0:
            return torch.zeros(1)
        xtx = plan.stats.xtx
        selection = obs_select_units(output.weight, xtx, block, cap, self.options.obs_steps, self.options.dampening)
        weight = output.weight.detach().float()
        energy = float(((weight @ xtx.to(weight.device)) * weight).sum())
        norm = output_norm(self.layers[layer_index], kind)
        if norm is None:
            write_energy = energy / max(plan.stats.num_tokens, 1)
        else:
            ones = torch.ones(1, weight.shape[0], dtype=output.weight.dtype, device=weight.device)
            write_energy = float(norm(ones).float().square().sum())
        return error_curve(selection, cap) / max(energy, 1e-30) * write_energy

    def observe_layer(self, layer_index, inputs, outputs) -> None:
        if self.config.allocation == "adaptive" and self.options.importance == "obs":
            total = tokens = 0.0
            for hidden in inputs:
                hidden = hidden.float()
                total += float(hidden.square().sum())
                tokens += hidden.numel() / hidden.shape[-1]
            self.residual_energy[layer_index] = total / max(tokens, 1.0)

    def _kept_units(self, output: nn.Linear, plan: _LayerPlan, remove: int) -> torch.Tensor:
        if plan.scores is not None:
            return units_to_keep(plan.scores, remove)
        return obs_select_units(output.weight, plan.stats.xtx, plan.block, remove, self.options.obs_steps,
                                self.options.dampening).keep.cpu()

    def _refit(self, output: nn.Linear, stats: InputStatistics, columns: torch.Tensor):
        """Least-squares output weight (and bias, if the projection has one) on the kept ``columns``."""
        weight = output.weight.detach().float()
        xtx = stats.xtx.to(weight.device)
        if output.bias is None:
            return refit_output(weight, xtx, columns, self.options.dampening), None
        n = weight.shape[1]
        hessian = augment_with_ones(xtx, stats.sums.to(weight.device), stats.num_tokens)
        augmented = torch.cat([weight, output.bias.detach().float().unsqueeze(1)], 1)
        keep = torch.cat([columns.to(weight.device), torch.tensor([n], device=weight.device)])
        fitted = refit_output(augmented, hessian, keep, self.options.dampening)
        return fitted[:, :-1], fitted[:, -1]

    @torch.no_grad()
    def _fit(self, layer_index: int, kind: str, plan: _LayerPlan, remove: int) -> None:
        """Choose the units to keep and rewrite the output projection in place, still full size: the kept
        columns re-fitted (update), the removed ones zero, so the layer already computes what the shrunk layer
        will (the input projections' removed rows only feed those zero columns). :meth:`finalize` cuts."""
        if remove == 0:
            return
        _, output, _, _ = self._linears(layer_index, kind)
        kept = self._kept_units(output, plan, remove)
        columns = block_indices(kept, plan.block).to(output.weight.device)
        weight = output.weight.detach()
        new_weight, new_bias = self._refit(output, plan.stats, columns) if self.options.update == "lstsq" else (
            weight[:, columns], None)
        if plan.stats is not None and plan.stats.xtx is not None:
            self.errors[kind][layer_index] = relative_output_error(weight, new_weight, columns, plan.stats.xtx)
        if plan.mean is not None:  # update='bias': fold the removed columns' mean contribution into the bias
            removed = torch.ones(output.in_features, dtype=torch.bool, device=weight.device)
            removed[columns] = False
            add_zero_bias(output)
            output.bias += (weight.float()[:, removed] @ plan.mean.to(weight.device)[removed]).to(output.bias)
        if new_bias is not None:
            output.bias.copy_(new_bias.to(output.bias))
        fitted = torch.zeros_like(weight)
        fitted[:, columns] = new_weight.to(weight)
        weight.copy_(fitted)
        self.kept[kind][layer_index] = kept

    def _cut(self, layer_index: int, kind: str, kept: torch.Tensor) -> None:
        """Physically drop the units :meth:`_fit` removed (input rows, output columns, head counts)."""
        layer = self.layers[layer_index]
        if kind == "mlp":
            keep_mlp_neurons(layer, self.spec, kept)
        else:
            num_q, num_kv, _ = attention_geometry(layer, self.spec)
            keep_attention_heads(layer, self.spec, *head_indices(kept, num_q, num_kv))

    def prune_layer(self, layer_index, targets, stats):
        adaptive = self.config.allocation == "adaptive"
        for kind in self.kinds:  # the sub-block schedule calls once per sub-block: its output projection only
            if self._stats_name(layer_index, kind) not in targets:
                continue
            plan = self._plan(layer_index, kind, stats)
            if adaptive:
                if self.options.importance == "obs":
                    plan.curve = self._error_curve(layer_index, kind, plan)
                if plan.stats is not None:  # kept until finalize: on the CPU
                    plan.stats = plan.stats.to("cpu")
                self.pending[kind].append(plan)
            else:
                self._fit(layer_index, kind, plan, self.removals[kind][layer_index])
        return LayerUpdate()

    def _adaptive_removals(self, kind: str, plans: list[_LayerPlan]) -> list[int]:
        if self.options.importance != "obs":
            return adaptive_removals([p.scores for p in plans], self.config.sparsity, self.options.min_layer_keep)
        units = [self._linears(i, kind)[2] for i in range(len(plans))]
        budget = num_to_prune(sum(units), self.config.sparsity)
        allowed = sum(len(p.curve) - 1 for p in plans)
        if budget > allowed:
            logger.warning("min_layer_keep=%s allows removing only %d of %d units requested",
                           self.options.min_layer_keep, allowed, budget)
        curves = [p.curve / max(self.residual_energy.get(i, 1.0), 1e-30) for i, p in enumerate(plans)]
        return allocate_by_error(curves, budget)

    def finalize(self, model: nn.Module) -> dict:
        for kind, plans in self.pending.items():
            if plans:
                for index, (plan, remove) in enumerate(zip(plans, self._adaptive_removals(kind, plans))):
                    self._fit(index, kind, plan, remove)
                    plan.stats = None
        for kind, kept in self.kept.items():
            for index, units in kept.items():
                self._cut(index, kind, units)
        for kind in self.switch_on:
            turn_on_biases(self.layers, self.spec, self.model_config, kind)
        shapes = [layer_shape(layer, self.spec) for layer in self.layers]
        details = {"layer_shapes": shapes, "removed_units": removed_units(self.shapes_before, shapes, self.kinds)}
        if any(e is not None for errors in self.errors.values() for e in errors):
            details["relative_output_error"] = {kind: [None if e is None else round(e, 6) for e in errors]
                                                for kind, errors in self.errors.items()}
        return details
