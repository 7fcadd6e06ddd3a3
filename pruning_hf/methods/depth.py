"""Depth pruning: drop whole decoder layers, optionally replacing a removed block by a folded linear map.

Which layers (``selection``), all measured in one pass over the unpruned model on calibration tokens ``t``:

* ``influence`` (ShortGPT, Men et al. 2024): block influence of each layer ``BI_l = 1 - mean_t cos(h_l[t],
  h_{l+1}[t])``; the ``num_layers`` layers with the lowest influence go (not necessarily contiguous);
* ``block`` (ReplaceMe / the angular-distance block search): the contiguous block ``s .. s+k-1`` whose
  output ``h_{s+k}`` is closest to its input ``h_s``, ``d_s = 1 - mean_t cos(h_s[t], h_{s+k}[t])``;
* ``fitted`` (with ``update="linear"``): the contiguous block whose linear replacement (below) leaves the
  smallest error in the residual stream, ``sum_t ||new write - R||^2 / sum_t ||h_{s+k}||^2``: every
  candidate block gets its map fitted.

Update (``update``):

* ``none``: the layers are cut;
* ``linear`` (ReplaceMe, Shopkhoev et al. 2025, training-free): the last kept layer before the block,
  ``s - 1``, is made to reproduce what the block added to the residual stream. Its MLP writes ``M`` to the
  residual; a map ``T = argmin ||M T - (M + h_{s+k} - h_s)||^2`` (closed-form least squares on accumulated
  ``M^T M`` and ``M^T R``, ridge ``map_dampening`` towards the identity) is folded into that MLP's output
  projection, ``W' = T^T W`` (and ``b' = b T``), so the result is a stock architecture and checkpoint.
  Where the MLP output passes a norm before the residual (Gemma2/3, OLMo2: ``post_feedforward_layernorm``,
  ``M = g * z / rms(z)``), the map acts on the projection's output ``z`` and is fitted to the direction the
  norm can reproduce, ``z T ~ rms(z) * n(R / g)`` (``n(v) = v / rms(v)``), and the norm's gain is refitted:
  the norm fixes the magnitude of what that layer writes, so there the fold only approximates the block.

``num_hidden_layers``, per-layer config lists (Gemma3's ``layer_types``) and every remaining layer's
``layer_idx`` (its KV-cache slot) are updated. For a contiguous block the pass keeps, for the ``k``
candidate blocks in flight, their input ``h_s`` and (for ``linear``) layer ``s-1``'s MLP output: about
``2 k`` calibration activations of ``(tokens, hidden)`` in memory (3 k behind a post-norm), plus the
fitted ``hidden x hidden`` map of the best block so far. The fold is offload-aware (the weights map gets it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..models.architectures import decoder_layers, get_architecture
from ..models.devices import onloaded, write_parameter, write_weight
from ..models.shrink import drop_layers, mlp_linears, output_norm
from ..sparsity.reconstruction import linear_replacement, normalised_target
from ..utils.checks import check_choice, check_int, check_number
from .base import LayerUpdate, PruningMethod

__all__ = ["DepthOptions", "DepthPruner", "block_influence"]

SELECTIONS = ("block", "fitted", "influence")
UPDATES = ("auto", "linear", "none")


@dataclass
class DepthOptions:
    num_layers: int | None = field(default=None, metadata={"help": (
        "Depth pruning: how many decoder layers to remove.")})
    selection: str = field(default="block", metadata={"help": (
        "Which layers go: 'block' (the contiguous block whose output is closest, by cosine, to its input; "
        "ReplaceMe), 'fitted' (the contiguous block whose linear replacement leaves the smallest error in the "
        "residual stream; needs the linear update) or 'influence' (the layers with the lowest block influence "
        "1-cos(in, out), each on its own; ShortGPT).")})
    update: str = field(default="auto", metadata={"help": (
        "'linear' (fit on calibration activations a linear map that makes the layer before the removed block "
        "reproduce what the block added, folded into its MLP output projection: still a stock model; needs a "
        "contiguous block and pre-norm layers with a known MLP), 'none' (cut only) or 'auto' (linear where it "
        "applies, else none). Default block + auto: the best measured (benchmarks/structured_quality.py).")})
    map_dampening: float = field(default=0.001, metadata={"help": (
        "update='linear': ridge towards the identity map, as a fraction of the mean diagonal of M^T M.")})

    def __post_init__(self) -> None:
        if self.num_layers is not None:
            check_int("num_layers", self.num_layers, 1)
        check_choice("selection", self.selection, SELECTIONS)
        check_choice("update", self.update, UPDATES)
        check_number("map_dampening", self.map_dampening, 0.0, 10.0, high_inclusive=True)
        if self.update == "linear" and self.selection == "influence":
            raise ValueError("update='linear' replaces one contiguous block of layers; use selection='block' or "
                             "'fitted' (or update='none' with selection='influence')")
        if self.selection == "fitted" and self.update == "none":
            raise ValueError("selection='fitted' ranks blocks by the error left after the linear replacement; it needs "
                             "update='linear'")


def block_influence(cosine_sums: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
    """``(layers,)`` ``1 - mean cosine similarity`` between each layer's input and output."""
    return 1.0 - cosine_sums / token_counts.clamp_min(1)


@dataclass
class _Candidate:
    """A block ``start .. start+k-1`` whose end has not been reached yet (or the best one so far)."""

    start: int
    inputs: list[torch.Tensor]  # h_start per batch
    source: list[torch.Tensor] | None  # what the fold maps, per batch: M (or z before a post-norm) of start-1
    writes: list[torch.Tensor] | None  # M of start-1 per batch (its residual write)
    cosine_sum: float = 0.0
    tokens: int = 0
    transform: torch.Tensor | None = None  # (d, d) the fitted map T (update='linear')
    fit_error: float = float("nan")  # error left after the fit, relative to the stream's energy
    gain: torch.Tensor | None = None  # (d,) refitted post-norm gain, where the MLP output is normalised


@torch.no_grad()
def _gain(norm: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """``(d,)`` the norm's per-channel scale ``g`` in ``g * v / rms(v)``, read off as ``norm(1)``."""
    return norm(torch.ones(1, like.shape[-1], dtype=like.dtype, device=like.device)).float().reshape(-1)


class DepthPruner(PruningMethod):
    """Remove whole decoder layers (needs calibration data); optionally fold a linear replacement in."""

    name = "depth"
    Options = DepthOptions
    changes_shapes = True
    example = {"num_layers": 1}

    @classmethod
    def validate_config(cls, config) -> None:
        if config.options.num_layers is None:
            raise ValueError("method 'depth' needs num_layers (how many decoder layers to remove), e.g. num_layers=4")
        for name in ("sparsity", "scope", "targets"):
            if getattr(config, name) is not None:
                raise ValueError(f"{name}={getattr(config, name)!r} does not apply to method 'depth'; "
                                 "it removes num_layers whole decoder layers")
        if config.pattern_spec.is_nm or config.ignore:
            raise ValueError("pattern and ignore do not apply to method 'depth'; it removes whole decoder layers")

    @classmethod
    def needs_calibration(cls, config) -> bool:
        return True

    @classmethod
    def describe(cls, config) -> str:
        options = config.options
        count = options.num_layers
        how = {"influence": "block influence", "block": "closest block", "fitted": "best-fitted block"}[options.selection]
        return f"depth ({count} decoder layer{'s' if count != 1 else ''}, {how}, update {options.update})"

    def setup(self, model: nn.Module) -> None:
        self.spec = get_architecture(model)
        self.layers = decoder_layers(model, self.spec)
        count, k = len(self.layers), self.options.num_layers
        if k >= count:
            raise ValueError(f"num_layers={k} must be smaller than the model's {count} "
                             "decoder layers (at least one layer stays)")
        update, why_not = self.options.update, self._fold_unavailable(model)
        self.linear = update == "linear" or (update == "auto" and self.options.selection != "influence"
                                             and why_not is None)
        if why_not is not None and (update == "linear" or self.options.selection == "fitted"):
            raise ValueError(f"depth {'update=linear' if update == 'linear' else 'selection=fitted'} {why_not}")
        self.cosine_sums = torch.zeros(count, dtype=torch.float64)
        self.token_counts = torch.zeros(count, dtype=torch.float64)
        self.block_distance = torch.full((count - k + 1,), float("nan"), dtype=torch.float64)
        self.fit_error = torch.full((count - k + 1,), float("nan"), dtype=torch.float64)
        self.pending: list[_Candidate] = []
        self.best: _Candidate | None = None
        self.previous: tuple[list, list] | None = None  # (source, writes) of the last layer seen
        self._captured: dict[str, list[torch.Tensor]] = {}
        self._handles: list = []

    def _fold_unavailable(self, model: nn.Module) -> str | None:
        """Why a linear map cannot be folded into this model's layers (None: it can)."""
        if self.spec.mlp is None or self.spec.family in ("gpt2", "generic"):
            return (f"folds a map into an MLP output projection; not available for model_type="
                    f"{model.config.model_type!r} (use update='none', selection='block' or 'influence')")
        if getattr(model.config, "do_layer_norm_before", True) is False:
            return ("needs pre-norm layers (this OPT applies LayerNorm after the residual add); use update='none' "
                    "with selection='block' or 'influence'")
        return None

    # --- capture of the MLP's residual write (linear update only) ----------------------------------
    def prune_layer(self, layer_index, targets, stats):
        if self.linear:
            layer = self.layers[layer_index]
            self._captured = {"source": [], "writes": []}
            norm = output_norm(layer, "mlp")

            def keep(key):
                return lambda module, args, out: self._captured[key].append(out.detach().reshape(-1, out.shape[-1]))

            self._handles = [mlp_linears(layer, self.spec)[1].register_forward_hook(keep("source"))]
            if norm is not None:
                self._handles.append(norm.register_forward_hook(keep("writes")))
        return LayerUpdate()

    def _release_hooks(self) -> tuple[list, list]:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        source, writes = self._captured.get("source", []), self._captured.get("writes", [])
        self._captured = {}
        return source, writes or source

    def observe_layer(self, layer_index, inputs, outputs) -> None:
        source, writes = self._release_hooks() if self._handles else ([], [])
        keep_inputs = self.options.selection != "influence"
        inputs, outputs = list(inputs), list(outputs)  # (file-stored batches are read once here)
        for hidden_in, hidden_out in zip(inputs, outputs):
            cosine = F.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)
            self.cosine_sums[layer_index] += cosine.sum().item()
            self.token_counts[layer_index] += cosine.numel()
        if not keep_inputs:
            return
        k = self.options.num_layers
        if (not self.linear or layer_index >= 1) and layer_index + k <= len(self.layers):
            candidate = _Candidate(layer_index, inputs, None, None)  # a block starting here
            if self.linear:
                candidate.source, candidate.writes = self.previous
            self.pending.append(candidate)
        if self.linear:
            n = len(inputs)  # the hooks saw every run of this layer: keep the last one
            storage = inputs[0].device
            moved = [u.to(storage) for u in source[-n:]]
            self.previous = (moved, moved if writes is source else [m.to(storage) for m in writes[-n:]])
        for candidate in [c for c in self.pending if c.start + k == layer_index + 1]:
            self._complete(candidate, outputs)
            self.pending.remove(candidate)

    def _score(self, candidate: _Candidate) -> float:
        """What ``selection`` minimises: the cosine distance, or (``fitted``) the error left after the fit."""
        if self.options.selection == "fitted":
            return candidate.fit_error
        return 1.0 - candidate.cosine_sum / max(candidate.tokens, 1)

    def _complete(self, candidate: _Candidate, outputs: list[torch.Tensor]) -> None:
        for hidden_in, hidden_out in zip(candidate.inputs, outputs):
            cosine = F.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)
            candidate.cosine_sum += cosine.sum().item()
            candidate.tokens += cosine.numel()
        self.block_distance[candidate.start] = 1.0 - candidate.cosine_sum / max(candidate.tokens, 1)
        if self.options.selection == "block" and self.best is not None and \
                self._score(candidate) >= self._score(self.best):
            return  # by distance alone: only the best block so far needs its map fitted
        if self.linear:
            self._fit(candidate, outputs)
            self.fit_error[candidate.start] = candidate.fit_error
        candidate.inputs = candidate.source = candidate.writes = None  # only the results are kept
        if self.best is None or self._score(candidate) < self._score(self.best):
            self.best = candidate

    @torch.no_grad()
    def _fit(self, candidate: _Candidate, outputs: list[torch.Tensor]) -> None:
        """The map ``T`` (and the post-norm gain) for a candidate block, and the error it leaves: ``sum_t ||new
        write - R||^2`` relative to the energy ``sum_t ||h_{s+k}||^2`` of the residual stream after the block."""
        norm = output_norm(self.layers[candidate.start - 1], "mlp")
        gain = None if norm is None else _gain(norm, candidate.source[0])
        gram = cross = 0
        target_energy = stream_energy = 0.0
        for u, residual, h_out in self._residuals(candidate, outputs):
            target = residual if gain is None else normalised_target(u, residual, gain)
            gram = gram + (u.t() @ u).double()  # fp32 products per batch, fp64 sums over batches
            cross = cross + (u.t() @ target).double()
            target_energy += float(residual.double().square().sum())
            stream_energy += float(h_out.double().square().sum())
        candidate.transform = linear_replacement(gram, cross, self.options.map_dampening)
        if norm is None:
            t = candidate.transform.double().to(gram.device)
            error = target_energy - 2 * float((t * cross).sum()) + float(((gram @ t) * t).sum())
        else:
            candidate.gain, error = self._fit_gain(norm, gain, candidate, outputs)
        candidate.fit_error = max(error, 0.0) / max(stream_energy, 1e-30)

    @staticmethod
    def _residuals(candidate: _Candidate, outputs: list[torch.Tensor]):
        """Per batch ``(u, R, h_out)``: what the fold maps (fp32, ``(tokens, d)``), what the folded layer should
        write, ``R = M + h_{s+k} - h_s``, and the stream after the block."""
        for u, m, h_in, h_out in zip(candidate.source, candidate.writes, candidate.inputs, outputs):
            yield u.float(), m.float() + (h_out.float() - h_in.float()).reshape(m.shape).to(m.device), h_out

    @torch.no_grad()
    def _fit_gain(self, norm: nn.Module, gain: torch.Tensor, candidate: _Candidate,
                  outputs) -> tuple[torch.Tensor, float]:
        """``(d,)`` per-channel gain of the post-norm after the fold: least squares of the block's residual
        write on the folded layer's normalised output, ``g'_c = g_c sum_t R_tc y_tc / sum_t y_tc^2``; and the
        squared error ``sum_t ||y_t g' / g - R_t||^2`` it leaves."""
        transform = candidate.transform
        num = den = energy = 0
        for u, residual, _ in self._residuals(candidate, outputs):
            y = norm((u @ transform.to(u.device)).to(candidate.source[0].dtype)).float()
            num = num + (residual * y).sum(0).double()
            den = den + y.square().sum(0).double()
            energy = energy + residual.square().sum(0).double()
        scale = num / den.clamp_min(1e-30)
        error = float((scale.square() * den - 2 * scale * num + energy).sum())
        return (gain.double().to(num.device) * scale).float(), error

    def finalize(self, model: nn.Module) -> dict:
        self._release_hooks()
        influence = block_influence(self.cosine_sums, self.token_counts)
        count, k = len(influence), self.options.num_layers
        details = {"block_influence": [round(v, 6) for v in influence.tolist()],
                   "update": "linear" if self.linear else "none"}  # what update='auto' became
        if self.options.selection == "influence":
            removed = sorted(influence.argsort()[:k].tolist())
        else:
            start = self.best.start
            removed = list(range(start, start + k))
            details["block_distance"] = [None if v != v else round(v, 6) for v in self.block_distance.tolist()]
            if self.linear:
                details["fit_error"] = [None if v != v else round(v, 6) for v in self.fit_error.tolist()]
                details["linear_map_layer"] = start - 1
                self._fold(self.layers[start - 1], self.best.transform, self.best.gain)
        self.best, self.pending, self.previous = None, [], None
        drop_layers(model, self.spec, [i for i in range(count) if i not in removed])
        details["removed_layers"] = removed
        return details

    @torch.no_grad()
    def _fold(self, layer: nn.Module, transform: torch.Tensor, gain: torch.Tensor | None) -> None:
        """``m -> m T`` folded into the MLP output projection: ``W' = T^T W``, ``b' = b T`` (offload-aware);
        with a post-norm, its gain becomes ``gain``."""
        output = mlp_linears(layer, self.spec)[1]
        norm = output_norm(layer, "mlp")
        with onloaded([output] + ([norm] if norm is not None else [])):
            if gain is not None:
                self._set_gain(norm, gain)
            t = transform.to(output.weight.device)
            write_weight(output, t.t() @ output.weight.float())
            if output.bias is not None:
                write_parameter(output, "bias", output.bias.float() @ t)

    @staticmethod
    def _set_gain(norm: nn.Module, gain: torch.Tensor) -> None:
        """Give an RMSNorm the per-channel gain ``gain`` (``norm(1) = gain``), for ``g = w`` and ``g = 1 + w`` alike."""
        weight = norm.weight
        target = gain.to(weight.device)
        write_parameter(norm, "weight", weight.float() + target - _gain(norm, weight.float()))
        if (_gain(norm, weight.float()) - target).abs().max() > 1e-3 * target.abs().max():
            raise RuntimeError(f"{type(norm).__name__}'s gain is not an offset of its weight; cannot refit it")
