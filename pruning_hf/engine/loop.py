"""The sequential layer-by-layer pruning loop.

1. Capture what every decoder layer is called with (layer 0's hidden states for each calibration
   batch, and each layer's other arguments), by running the base model once with recorders in place
   of the layers (:mod:`.capture`).
2. For each layer: collect the statistics the method declares, let the method prune it, write the
   weights back (offload-aware), and keep its *pruned* outputs as the next layer's inputs (the method
   may look at both). :mod:`.schedule` says how: the whole layer twice (statistics from the dense
   layer, then the pruned outputs), or its attention then its MLP sub-block, every matmul once.
3. Let the method finish on the whole model (structured methods shrink layers or drop them here).

Each decoder layer is brought to its compute device once (:func:`~pruning_hf.models.devices.onloaded`)
for its steps, so a model dispatched by accelerate with most weights offloaded to CPU RAM or disk
is pruned with peak memory of one layer + its statistics + the stored activations, not the whole
model. A non-uniform ``allocation`` adds a dense pre-pass between 1 and 2 (:mod:`.prepass`). The loop
knows nothing of a method's maths: it asks the method what to collect and writes what it returns.
"""

from __future__ import annotations

import os
import time
from functools import partial

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.architectures import decoder_layers, get_architecture, weight_matrix
from ..models.devices import execution_device, onloaded, write_weight
from ..sparsity.allocation import PREPASS_ALLOCATIONS
from ..utils.checks import all_finite
from ..utils.memory import PeakMemory, gpu_high_water, rss_peak_bytes
from .capture import capture_layer_inputs, check_activation_storage, dense_stream_dtype, head_statistics
from .prepass import allocation_prepass
from .report import LayerRecord, NonFiniteError, PruningReport
from .resume import LayerCheckpoints, check_resumable
from .schedule import choose_layout, layer_pass, sublayer_pass
from .targets import check_targets, targeted_numel

__all__ = ["prune_model"]


@torch.no_grad()
def prune_model(model: nn.Module, config, windows: torch.Tensor | None = None, progress: bool = True,
                activation_storage: torch.device | str = "cpu",
                resume_dir: str | os.PathLike | None = None) -> PruningReport:
    """Prune ``model`` in place according to ``config``; returns a :class:`PruningReport`.

    Args:
        model: a ``*ForCausalLM`` model, possibly dispatched by accelerate (device map / offload).
        config: a :class:`~pruning_hf.PruningConfig`.
        windows: ``(num_samples, seq_len)`` calibration token ids; required when ``config.needs_calibration``.
        progress: show a progress bar over layers.
        activation_storage: where calibration activations wait between layers: a device (default
            CPU), or ``"disk"`` (temporary files, one batch in memory at a time).
        resume_dir: a folder for a checkpoint after every decoder layer (:mod:`.resume`); rerunning
            with it continues after the last finished layer, bit-identical to an uninterrupted run.
    """
    started = time.perf_counter()
    check_activation_storage(activation_storage)
    if resume_dir is not None:
        check_resumable(config, resume_dir)
    model.eval()
    layers = decoder_layers(model, get_architecture(model))
    per_layer, head = check_targets(model, config)
    method = config.method_class(config, progress)
    method.setup(model)
    if config.needs_calibration and windows is None:
        raise ValueError(f"{config.describe()!r} needs calibration windows; pass windows=")
    report = PruningReport(config=config.to_dict(), model_type=getattr(model.config, "model_type", "?"),
                           parameters_before=sum(p.numel() for p in model.parameters()))
    targeted = targeted_numel(model, config)
    if method.inspects_all_weights:  # e.g. one global threshold over every target
        all_targets = {name: module for layer in [*per_layer, head] for name, module in layer.items()}
        with onloaded(all_targets.values()):
            method.prepare(all_targets)
    statistics = method.input_statistics()
    layout = choose_layout(model, config, method, per_layer)  # None: each layer runs whole
    report.schedule = "sublayer" if layout is not None else "layer"
    captured = None
    if config.needs_calibration:
        report.calibration_tokens = windows.numel()
        captured = capture_layer_inputs(model, layers, windows, config.calibration.batch_size, activation_storage)
        if statistics is not None and statistics.cross:  # dense targets: the dense model's stream travels beside
            captured.carry_dense(dense_stream_dtype(config.dense_precision, layers[0]))
            report.dense_dtype = str(captured.dense_dtype or next(layers[0].parameters()).dtype).removeprefix("torch.")
        report.capture_seconds = time.perf_counter() - started
    checkpoints = LayerCheckpoints(resume_dir, config, model, windows) if resume_dir is not None else None
    first = checkpoints.restore(per_layer, captured, report) if checkpoints else 0
    if config.allocation in PREPASS_ALLOCATIONS:
        report.allocation = report.allocation or allocation_prepass(config, layers, per_layer, captured, progress)
        method.layer_sparsity = report.allocation["layer_sparsity"]

    bar = tqdm(list(enumerate(layers))[first:], desc=f"pruning ({config.describe()})", unit="layer",
               disable=not progress, initial=first, total=len(layers))
    for index, layer in bar:
        layer_start = time.perf_counter()
        record = LayerRecord(index=index, seconds=0.0)
        targets = per_layer[index]
        prune = partial(_prune_targets, method, index, record=record)  # (targets, stats): prune and write back
        with PeakMemory(execution_device(layer)) as peak, onloaded([layer]):  # one layer on its device at a time
            if captured is None:
                if targets:
                    prune(targets, {})
            else:
                if layout is not None:
                    outputs, dense = sublayer_pass(layer, layout, captured, index, targets, statistics, prune)
                else:
                    outputs, dense = layer_pass(layer, captured, index, targets, statistics, prune)
                method.observe_layer(index, captured.tensors(captured.hidden), captured.tensors(outputs))
                captured.advance(outputs, dense)
            if checkpoints:
                record.seconds = time.perf_counter() - layer_start
                checkpoints.save(index, targets, captured, [*report.layers, record], report.allocation)
        record.extra_memory_bytes = peak.extra_bytes
        record.seconds = time.perf_counter() - layer_start
        report.layers.append(record)
        bar.set_postfix(seconds=f"{record.seconds:.1f}")
    captured = None
    if head:
        record = LayerRecord(index=len(layers), seconds=0.0)
        head_start = time.perf_counter()
        stats = {}
        if config.needs_calibration and statistics is not None:
            (head_name, head_module), = head.items()
            stats = {head_name: head_statistics(model, head_module, windows, config.calibration.batch_size,
                                                statistics.hessian)}
        _prune_targets(method, len(layers), head, stats, record)
        record.seconds = time.perf_counter() - head_start
        report.layers.append(record)

    report.details = method.finalize(model)
    report.targeted_weights = targeted
    report.pruned_weights = sum(round(info["sparsity"] * info["numel"]) for record in report.layers
                                for info in record.linears.values())
    report.pruned_weights += targeted - targeted_numel(model, config)  # physically removed (structured)
    report.parameters_after = sum(p.numel() for p in model.parameters())
    report.total_seconds = time.perf_counter() - started
    report.peak_rss_bytes = rss_peak_bytes()
    report.peak_gpu_bytes = gpu_high_water() if torch.cuda.is_available() else None
    if checkpoints:
        checkpoints.clear()
    return report


def _prune_targets(method, index: int, targets: dict[str, nn.Module], stats: dict, record: LayerRecord) -> None:
    """Let the method prune ``targets``, check and write back what it returns, and fill ``record`` (called
    once per layer, or once per group of Linears of a sub-block)."""
    with onloaded(targets.values()):
        start = time.perf_counter()
        update = method.prune_layer(index, targets, stats)
        record.method_seconds += time.perf_counter() - start - update.refine_seconds
        record.refine_seconds += update.refine_seconds
        for name, weight in update.weights.items():
            if not all_finite(weight):
                before = ("already held NaN/Inf before pruning" if not all_finite(weight_matrix(targets[name]))
                          else "was finite before pruning")
                raise NonFiniteError(f"layer {index}, {name}: pruning produced NaN/Inf weights (the weight {before})")
            write_weight(targets[name], weight)
            record.linears[name] = {"sparsity": int((weight == 0).sum()) / weight.numel(), "numel": weight.numel(),
                                    **update.linears.get(name, {})}
    held = sum(s.nbytes for s in {id(s): s for s in stats.values()}.values())
    record.statistics_bytes = max(record.statistics_bytes, held)
