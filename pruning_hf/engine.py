"""Sequential layer-by-layer pruning driver.

1. Capture what every decoder layer is called with (layer 0's hidden states for each calibration
   batch, and each layer's other arguments: masks, rotary embeddings ...), by swapping the layers
   for light recorders and running the base model once per batch.
2. For each layer: run it on its inputs with hooks collecting the statistics the method needs,
   let the method prune it, write the weights back (offload-aware), then run it again so its
   *pruned* outputs become the next layer's inputs.

A non-uniform ``allocation`` (OWL, global) adds a dense pre-pass between 1 and 2: the layers run
once in order on the dense model, and each layer's Wanda scores are summarised to set its sparsity
(:mod:`pruning_hf.allocation`). ``refine`` adds a post-step after each method call
(:mod:`pruning_hf.refinement`).

Peak memory is the model plus one layer's statistics plus the stored activations. The engine knows
nothing of a method's maths; methods know nothing of models, devices or data.
"""

from __future__ import annotations

import fnmatch
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .allocation import allocate, summarize_layer
from .architectures import decoder_layers, get_architecture, linear_modules
from .devices import execution_device, onloaded, write_weight
from .methods.base import weight_matrix
from .methods.wanda import wanda_scores
from .refinement import refine_layer
from .resources import PeakMemory
from .statistics import collect_input_statistics

__all__ = ["prune_model", "select_targets", "PruningReport", "NonFiniteError", "CapturedInputs",
           "capture_layer_inputs", "run_layer"]


class NonFiniteError(RuntimeError):
    """A pruned layer produced NaN or Inf weights or activations."""


@dataclass
class LayerRecord:
    """One decoder layer (or the LM head): wall time, where it went, and extra memory."""

    index: int
    seconds: float
    #: name -> {sparsity, numel}, plus {error_before, error_after, swaps} when refined
    linears: dict[str, dict[str, float]] = field(default_factory=dict)
    method_seconds: float = 0.0   # inside the method (scores, masks, weight updates)
    refine_seconds: float = 0.0   # inside the refinement post-step
    statistics_bytes: int = 0     # input statistics held for this layer (norms, X^T X)
    extra_memory_bytes: int | None = None  # peak above the layer's start (GPU exact, CPU sampled RSS)


@dataclass
class PruningReport:
    """What a pruning run did: per-Linear achieved sparsity, time per layer, totals, peak memory."""

    config: dict[str, Any]
    model_type: str
    layers: list[LayerRecord] = field(default_factory=list)
    calibration_tokens: int = 0
    capture_seconds: float = 0.0
    total_seconds: float = 0.0
    peak_rss_bytes: int = 0
    peak_gpu_bytes: int | None = None
    targeted_weights: int = 0
    pruned_weights: int = 0
    #: non-uniform allocation: {kind, layer_sparsity, outlier_ratio (OWL), seconds (dense pre-pass)}
    allocation: dict[str, Any] | None = None

    @property
    def sparsity(self) -> float:
        """Achieved sparsity over all targeted weights."""
        return self.pruned_weights / max(self.targeted_weights, 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sparsity"] = self.sparsity
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningReport":
        data = {k: v for k, v in data.items() if k != "sparsity"}
        data["layers"] = [LayerRecord(**layer) for layer in data.get("layers", [])]
        return cls(**data)


def _matches(name: str, pattern: str) -> bool:
    """fnmatch ``pattern`` against the full name or any dotted suffix of it.

    So 'q_proj', 'mlp.*', 'self_attn.?_proj' and 'model.layers.1[0-9].*' all work.
    """
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[i:]), pattern) for i in range(len(parts)))


def select_targets(model: nn.Module, config) -> tuple[list[dict[str, nn.Module]], dict[str, nn.Module]]:
    """Target Linears per decoder layer, plus ``lm_head`` when a ``targets`` pattern names it.

    Returns ``(per_layer, head)`` with qualified module names. Raises ValueError for patterns that
    match nothing (typos cost seconds, not a silent no-op run).
    """
    spec = get_architecture(model)
    layers = decoder_layers(model, spec)
    per_layer = [linear_modules(layer, f"{spec.layers_path}.{i}.") for i, layer in enumerate(layers)]
    head_module = model.get_output_embeddings()
    head_name = next(name for name, module in model.named_modules() if module is head_module)
    candidates = [name for layer in per_layer for name in layer] + [head_name]
    leaves = sorted({name.rsplit(".", 1)[-1] for name in candidates})

    def chosen(patterns: list[str], what: str) -> set[str]:
        names = set()
        for pattern in patterns:
            hits = {name for name in candidates if _matches(name, pattern)}
            if not hits:
                raise ValueError(f"{what} pattern {pattern!r} matches no Linear layer of this model; "
                                 f"Linear names: {', '.join(leaves)}")
            names |= hits
        return names

    selected = chosen(config.targets, "targets") if config.targets else set(candidates) - {head_name}
    selected -= chosen(config.ignore, "ignore")
    if not selected:
        raise ValueError("targets/ignore leave no Linear layer to prune")
    per_layer = [{n: m for n, m in layer.items() if n in selected} for layer in per_layer]
    head = {head_name: head_module} if head_name in selected else {}
    return per_layer, head


@dataclass
class CapturedInputs:
    """Inputs of the decoder layers for every calibration batch.

    ``hidden[b]`` is the current layer's input for batch ``b`` (``(batch, seq, hidden)`` on
    ``storage``); ``calls[layer][b]`` holds that layer's other ``(args, kwargs)``.
    """

    hidden: list[torch.Tensor]
    calls: list[list[tuple[tuple, dict]]]
    storage: torch.device


class _InputRecorder(nn.Module):
    """Stands in for a decoder layer during capture: records its call and returns the input unchanged."""

    def __init__(self, layer: nn.Module, index: int, captured: CapturedInputs) -> None:
        object.__setattr__(self, "_wrapped", layer)  # not a submodule: keep it out of named_modules()
        super().__init__()
        object.__setattr__(self, "_captured", captured)
        self.index = index

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._wrapped, name)  # model code may read attributes such as attention_type

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == 0:
            self._captured.hidden.append(hidden_states.detach().to(self._captured.storage))
        self._captured.calls[self.index].append((args, kwargs))
        return hidden_states


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList, windows: torch.Tensor, batch_size: int,
                         storage: torch.device | str = "cpu") -> CapturedInputs:
    """Run the base model on ``windows`` ``(num, seq)`` with recorders in place of ``layers``."""
    captured = CapturedInputs([], [[] for _ in layers], torch.device(storage))
    originals = list(layers)
    device = execution_device(model.get_input_embeddings())
    try:
        for index, layer in enumerate(originals):
            layers[index] = _InputRecorder(layer, index, captured)
        for batch in windows.split(batch_size):
            model.base_model(input_ids=batch.to(device), use_cache=False)
    finally:
        for index, layer in enumerate(originals):
            layers[index] = layer
    return captured


@torch.no_grad()
def run_layer(layer: nn.Module, captured: CapturedInputs, index: int, keep_outputs: bool) -> list[torch.Tensor]:
    """Run decoder layer ``index`` on every captured batch; return its outputs (on storage) if asked."""
    from accelerate.utils import send_to_device

    device = execution_device(layer)
    outputs = []
    for hidden, (args, kwargs) in zip(captured.hidden, captured.calls[index]):
        out = layer(hidden.to(device), *send_to_device(args, device), **send_to_device(kwargs, device))
        out = out[0] if isinstance(out, (tuple, list)) else out
        if keep_outputs:
            if not torch.isfinite(out).all():
                raise NonFiniteError(f"decoder layer {index} produced NaN/Inf activations after pruning")
            outputs.append(out.to(captured.storage))
    return outputs


class _StopForward(Exception):
    pass


@torch.no_grad()
def _head_statistics(model: nn.Module, head: nn.Module, windows: torch.Tensor, batch_size: int, hessian: bool):
    """Input statistics of the LM head from full forward passes, stopped just before the head."""
    def stop(module, args):
        raise _StopForward

    device = execution_device(model.get_input_embeddings())
    with collect_input_statistics({"head": head}, hessian) as stats:
        handle = head.register_forward_pre_hook(stop)
        try:
            for batch in windows.split(batch_size):
                try:
                    model(input_ids=batch.to(device), use_cache=False)
                except _StopForward:
                    pass
        finally:
            handle.remove()
    return stats["head"]


def _prune_targets(method, index: int, targets: dict[str, nn.Module], stats, record: LayerRecord,
                   progress: bool = False) -> None:
    """Let the method prune ``targets`` (then refine, if configured) and write the result back; record
    achieved sparsity, time and refinement errors."""
    config = method.config
    with onloaded(targets.values()):
        dense = {n: weight_matrix(m).detach().float().clone() for n, m in targets.items()} if config.refine else {}
        start = time.perf_counter()
        new_weights = method.prune_layer(index, targets, stats)
        record.method_seconds = time.perf_counter() - start
        refined = {}
        if config.refine:
            new_weights, refined = refine_layer(dense, new_weights, stats, config.pattern_spec,
                                                config.refine_iterations, progress)
            record.refine_seconds = time.perf_counter() - start - record.method_seconds
        for name, weight in new_weights.items():
            if not torch.isfinite(weight).all():
                raise NonFiniteError(f"pruning produced NaN/Inf weights in {name}")
            write_weight(targets[name], weight)
            zeros = int((weight == 0).sum())
            record.linears[name] = {"sparsity": zeros / weight.numel(), "numel": weight.numel(),
                                    **refined.get(name, {})}
    record.statistics_bytes = sum(s.nbytes for s in {id(s): s for s in stats.values()}.values())


@torch.no_grad()
def _allocate(config, layers: nn.ModuleList, per_layer: list[dict[str, nn.Module]], captured: CapturedInputs,
              progress: bool) -> dict[str, Any]:
    """Dense pre-pass for a non-uniform allocation: run the still-dense layers in order, summarise each
    layer's Wanda scores ``|W| * ||X||`` on its dense inputs, then spread ``config.sparsity`` over them."""
    start = time.perf_counter()
    layer_inputs = captured.hidden
    summaries, sizes, indices = [], [], []
    bar = tqdm(list(enumerate(layers)), desc=f"dense pass ({config.allocation})", unit="layer",
               disable=not progress, leave=False)
    for index, layer in bar:
        targets = per_layer[index]
        with collect_input_statistics(targets, hessian=False) as stats:
            captured.hidden = run_layer(layer, captured, index, keep_outputs=True)
        if targets:
            with onloaded(targets.values()):
                scores = [wanda_scores(weight_matrix(module).detach().float(), stats[name].column_norms)
                          for name, module in targets.items()]
            summaries.append(summarize_layer(config.allocation, scores, config.owl_m))
            sizes.append(sum(score.numel() for score in scores))
            indices.append(index)
    captured.hidden = layer_inputs
    sparsity = dict(zip(indices, allocate(config.allocation, summaries, sizes, config.sparsity, config.owl_lambda)))
    ratios = dict(zip(indices, summaries)) if config.allocation == "owl" else None
    return {"kind": config.allocation, "layer_sparsity": [sparsity.get(i) for i in range(len(layers))],
            "outlier_ratio": [ratios.get(i) for i in range(len(layers))] if ratios else None,
            "seconds": time.perf_counter() - start}


def _peak_memory(report: PruningReport) -> None:
    report.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    if torch.cuda.is_available():
        report.peak_gpu_bytes = int(torch.cuda.max_memory_allocated())


@torch.no_grad()
def prune_model(model: nn.Module, config, windows: torch.Tensor | None = None, progress: bool = True,
                activation_storage: torch.device | str = "cpu") -> PruningReport:
    """Prune ``model`` in place according to ``config``.

    Args:
        model: a ``*ForCausalLM`` model, possibly dispatched by accelerate (device map / offload).
        config: a :class:`~pruning_hf.PruningConfig`.
        windows: ``(num_samples, seq_len)`` calibration token ids; required when the method uses
            calibration statistics (see :func:`pruning_hf.calibration.calibration_windows`).
        progress: show a progress bar over layers.
        activation_storage: device holding the calibration activations between layers.
    Returns:
        A :class:`PruningReport`.
    """
    started = time.perf_counter()
    model.eval()
    spec = get_architecture(model)
    layers = decoder_layers(model, spec)
    per_layer, head = select_targets(model, config)
    method = config.method_class(config)
    report = PruningReport(config=config.to_dict(), model_type=getattr(model.config, "model_type", "?"))
    all_targets = {name: module for layer in per_layer for name, module in layer.items()} | head
    for name, module in all_targets.items():
        config.pattern_spec.check_shape(name, tuple(weight_matrix(module).shape))
    needs_data = config.needs_calibration
    if needs_data and windows is None:
        raise ValueError(f"{config.describe()!r} needs calibration windows; pass windows=")
    with onloaded(all_targets.values()):
        method.prepare(all_targets)

    captured = None
    if needs_data:
        report.calibration_tokens = windows.numel()
        capture_start = time.perf_counter()
        captured = capture_layer_inputs(model, layers, windows, config.calibration.batch_size, activation_storage)
        report.capture_seconds = time.perf_counter() - capture_start
    if config.allocation != "uniform":
        report.allocation = _allocate(config, layers, per_layer, captured, progress)
        method.layer_sparsity = report.allocation["layer_sparsity"]
    hessian = method.statistics == "hessian" or config.refine
    bar = tqdm(list(enumerate(layers)), desc=f"pruning ({config.describe()})", unit="layer", disable=not progress)
    for index, layer in bar:
        layer_start = time.perf_counter()
        record = LayerRecord(index=index, seconds=0.0)
        targets = per_layer[index]
        stats = {}
        with PeakMemory(execution_device(layer)) as peak:
            if needs_data and targets:
                with collect_input_statistics(targets, hessian) as stats:
                    run_layer(layer, captured, index, keep_outputs=False)
            if targets:
                _prune_targets(method, index, targets, stats, record, progress)
            del stats
            if needs_data:
                captured.hidden = run_layer(layer, captured, index, keep_outputs=True)
        record.extra_memory_bytes = peak.extra_bytes
        record.seconds = time.perf_counter() - layer_start
        report.layers.append(record)
        bar.set_postfix(seconds=f"{record.seconds:.1f}")
    captured = None
    if head:
        record = LayerRecord(index=len(layers), seconds=0.0)
        head_start = time.perf_counter()
        (head_name, head_module), = head.items()
        stats = {}
        if needs_data:
            stats = {head_name: _head_statistics(model, head_module, windows, config.calibration.batch_size, hessian)}
        _prune_targets(method, len(layers), head, stats, record, progress)
        record.seconds = time.perf_counter() - head_start
        report.layers.append(record)
    for record in report.layers:
        for info in record.linears.values():
            report.targeted_weights += info["numel"]
            report.pruned_weights += round(info["sparsity"] * info["numel"])
    report.total_seconds = time.perf_counter() - started
    _peak_memory(report)
    return report
