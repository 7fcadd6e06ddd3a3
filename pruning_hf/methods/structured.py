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
* ``random``: seeded by ``calibration.seed`` (the baseline every criterion must beat);
* ``obs`` (ZipLM / SlimGPT): grouped OBS on the inverse Hessian of the output projection's inputs: units
  are removed in up to ``obs_steps`` steps, each step those whose removal costs least *after* the optimal
  update of the kept columns, with the weight and inverse Hessian updated between steps.

Update of what is kept (``update``), after the units are chosen (maths in :mod:`~pruning_hf.sparsity.reconstruction`):

* ``none``: cut only;
* ``bias`` (FLAP): the removed units' mean contribution ``W_out[:, removed] E[X_removed]`` is folded
  into the output projection's bias (where a family can store one, see ``fluctuation``);
* ``lstsq``: the output projection is re-fitted on the kept columns by least squares on calibration
  inputs, ``W' = W Hd[:, K] Hd[K, K]^-1`` (``Hd = X^T X + λI``, SparseGPT's dampening), so the layer's
  output stays as close as possible to the unpruned one; works for every family (no bias needed), and
  where the output projection has a bias (OPT) the mean term is fitted too.

Allocation. ``uniform``: every layer loses ``round(sparsity * units)``, layer by layer, each scored on
the outputs of the already-pruned layers before it. ``adaptive``: scores of all layers (on the unpruned
model) are standardised per layer and ranked globally, as FLAP does; with ``importance="obs"`` each layer's
error-vs-removed curve (the error it adds to the residual stream after the OBS update, relative to the
stream's energy) is measured instead and the cheapest removals over all layers are taken. Each layer keeps
at least ``min_layer_keep`` of its units; the statistics (``X^T X`` for lstsq / obs) wait on the CPU until
every layer is shrunk after the loop. ``sparsity``: the fraction of units removed of each targeted kind.
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
from ..sparsity.reconstruction import (allocate_by_error, augment_with_ones, error_curve, obs_select_units,
                                       refit_output, relative_output_error)
from ..sparsity.statistics import InputStatistics, StatisticsSpec
from ..sparsity.units import adaptive_removals, column_energy, unit_importance, units_to_keep
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
    obs_steps: int = field(default=32, metadata={"help": (
        "importance='obs': units are removed in at most this many steps, the weight and inverse Hessian "
        "updated between steps (more steps: closer to one-at-a-time greedy OBS, slower).")})
    min_layer_keep: float = field(default=0.1, metadata={"help": (
        "With allocation='adaptive': every layer keeps at least this fraction of its neurons / head units "
        "(and one).")})

    def __post_init__(self) -> None:
        check_choice("target", self.target, TARGETS)
        check_choice("importance", self.importance, IMPORTANCES)
        check_choice("update", self.update, UPDATES)
        check_number("dampening", self.dampening, 0.0, 10.0, high_inclusive=True)
        check_int("obs_steps", self.obs_steps, 1)
        check_number("min_layer_keep", self.min_layer_keep, 0.0, 1.0, high_inclusive=True)


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
    #: "uniform": same fraction removed from every layer; "adaptive": global ranking of standardised
    #: scores (with importance='obs': of reconstruction errors), widths differ per layer (each keeps at
    #: least ``min_layer_keep``)
    allocations = ("uniform", "adaptive")

    changes_shapes = True

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
    def describe(cls, config) -> str:
        options = config.options
        return (f"structured {config.sparsity:.0%} {options.target} ({options.importance}, update {options.update}, "
                f"{config.allocation})")

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
        self.errors = {kind: [None] * len(self.layers) for kind in self.kinds}
        if self.options.update == "bias":
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

    def _post_norm(self, layer: nn.Module, kind: str) -> nn.Module | None:
        """The norm between this kind's output projection and the residual stream (Gemma2/3's sandwich norms)."""
        if kind == "mlp":
            return getattr(layer, "post_feedforward_layernorm", None)
        if hasattr(layer, "pre_feedforward_layernorm"):  # then post_attention_layernorm follows the attention
            return getattr(layer, "post_attention_layernorm", None)
        return None

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
        norm = self._post_norm(self.layers[layer_index], kind)
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
    def _shrink(self, layer_index: int, kind: str, plan: _LayerPlan, remove: int) -> None:
        if remove == 0:
            return
        layer = self.layers[layer_index]
        _, output, _, _ = self._linears(layer_index, kind)
        kept = self._kept_units(output, plan, remove)
        columns = block_indices(kept, plan.block).to(output.weight.device)
        new_weight = new_bias = correction = None
        if self.options.update == "lstsq":
            new_weight, new_bias = self._refit(output, plan.stats, columns)
        if plan.mean is not None:  # update='bias': fold the removed columns' mean contribution into the bias
            weight = output.weight.detach().float()
            removed = torch.ones(output.in_features, dtype=torch.bool, device=weight.device)
            removed[columns] = False
            correction = weight[:, removed] @ plan.mean.to(weight.device)[removed]
        if plan.stats is not None and plan.stats.xtx is not None:
            after = new_weight if new_weight is not None else output.weight.detach()[:, columns]
            self.errors[kind][layer_index] = relative_output_error(output.weight.detach(), after, columns,
                                                                   plan.stats.xtx)
        if kind == "mlp":
            keep_mlp_neurons(layer, self.spec, kept)
        else:
            num_q, num_kv, _ = attention_geometry(layer, self.spec)
            keep_attention_heads(layer, self.spec, *_head_indices(kept, num_q, num_kv))
        output = self._linears(layer_index, kind)[1]
        if new_weight is not None:
            output.weight.copy_(new_weight.to(output.weight))
        if new_bias is not None:
            output.bias.copy_(new_bias.to(output.bias))
        if correction is not None:
            add_zero_bias(output)
            output.bias += correction.to(output.bias)

    def prune_layer(self, layer_index, targets, stats):
        adaptive = self.config.allocation == "adaptive"
        for kind in self.kinds:
            plan = self._plan(layer_index, kind, stats)
            if adaptive:
                if self.options.importance == "obs":
                    plan.curve = self._error_curve(layer_index, kind, plan)
                if plan.stats is not None:  # kept until finalize: on the CPU
                    plan.stats = plan.stats.to("cpu")
                self.pending[kind].append(plan)
            else:
                units = self._linears(layer_index, kind)[2]
                self._shrink(layer_index, kind, plan, min(num_to_prune(units, self.config.sparsity), units - 1))
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
                    self._shrink(index, kind, plan, remove)
                    plan.stats = None
        for kind in self.switch_on:
            self._turn_on_biases(kind)
        shapes = [layer_shape(layer, self.spec) for layer in self.layers]
        details = {"layer_shapes": shapes, "removed_units": removed_units(self.shapes_before, shapes, self.kinds)}
        if any(e is not None for errors in self.errors.values() for e in errors):
            details["relative_output_error"] = {kind: [None if e is None else round(e, 6) for e in errors]
                                                for kind, errors in self.errors.items()}
        return details

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
