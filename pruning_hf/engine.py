"""Sequential layer-by-layer pruning driver.

1. Capture what every decoder layer is called with (layer 0's hidden states for each calibration
   batch, and each layer's other arguments: masks, rotary embeddings ...), by swapping the layers
   for light recorders and running the base model once per batch.
2. For each layer: run it on its inputs with hooks collecting the statistics the method needs,
   let the method prune it, write the weights back (offload-aware), then run it again so its
   *pruned* outputs become the next layer's inputs (the method may look at both).
3. Let the method finish on the whole model (structured methods shrink layers or drop them here).

Each decoder layer is brought to its compute device once (:func:`~pruning_hf.devices.onloaded`) for
its three steps, so a model dispatched by accelerate with most weights offloaded to CPU RAM or disk
is pruned with peak memory of one layer + its statistics + the stored activations (kept on CPU, or
on disk with ``activation_storage="disk"``), not the whole model. The engine knows nothing of a
method's maths; methods know nothing of models, devices or data.

A non-uniform ``allocation`` (OWL, global) adds a dense pre-pass between 1 and 2: the layers run
once in order on the dense model, and each layer's Wanda scores are summarised to set its sparsity
(:mod:`pruning_hf.allocation`). ``refine`` adds a post-step after each method call
(:mod:`pruning_hf.refinement`).
"""

from __future__ import annotations

import fnmatch
import os
import resource
import shutil
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .allocation import PREPASS_ALLOCATIONS, allocate, summarize_layer
from .architectures import decoder_layers, get_architecture, linear_modules
from .devices import execution_device, onloaded, write_weight
from .methods.base import PruningMethod, weight_matrix
from .methods.wanda import wanda_scores
from .refinement import refine_layer
from .resources import PeakMemory
from .resume import LayerCheckpoints, check_resumable
from .statistics import collect_input_statistics

__all__ = ["prune_model", "select_targets", "check_targets", "PruningReport", "NonFiniteError", "CapturedInputs",
           "check_activation_storage", "capture_layer_inputs", "run_layer"]


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
    parameters_before: int = 0
    parameters_after: int = 0
    details: dict[str, Any] = field(default_factory=dict)  # method-specific, e.g. removed layers
    #: non-uniform allocation: {kind, layer_sparsity, outlier_ratio (OWL), seconds (dense pre-pass)}
    allocation: dict[str, Any] | None = None

    @property
    def sparsity(self) -> float:
        """Achieved sparsity over all targeted weights."""
        return self.pruned_weights / max(self.targeted_weights, 1)

    @property
    def parameters_removed(self) -> float:
        """Fraction of all model parameters physically removed (structured pruning; 0 for masks)."""
        return 1.0 - self.parameters_after / max(self.parameters_before, 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sparsity"] = self.sparsity
        data["parameters_removed"] = self.parameters_removed
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningReport":
        data = {k: v for k, v in data.items() if k not in ("sparsity", "parameters_removed")}
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


def check_targets(model: nn.Module, config) -> tuple[list[dict[str, nn.Module]], dict[str, nn.Module]]:
    """:func:`select_targets`, and check every target's shape fits ``config.pattern`` (cheap; run it
    before calibration so an unsupported model or a typo fails in seconds)."""
    per_layer, head = select_targets(model, config)
    for name, module in {n: m for layer in [*per_layer, head] for n, m in layer.items()}.items():
        config.pattern_spec.check_shape(name, tuple(weight_matrix(module).shape))
    return per_layer, head


def check_activation_storage(storage: torch.device | str) -> torch.device:
    """The device holding activations for ``activation_storage`` (``"disk"`` stages them on CPU)."""
    try:
        return torch.device("cpu" if str(storage) == "disk" else storage)
    except (RuntimeError, TypeError):
        raise ValueError(f"activation_storage={storage!r} is neither 'disk' nor a torch device "
                         "('cpu', 'cuda:0' ...)") from None


class CapturedInputs:
    """Inputs of the decoder layers for every calibration batch.

    ``hidden[b]`` is the current layer's input for batch ``b``: a ``(batch, seq, hidden)`` tensor on
    the ``storage`` device, or with ``storage="disk"`` the path of a safetensors file holding it (read
    back one batch at a time). ``calls[layer][b]`` holds that layer's other ``(args, kwargs)``.
    """

    def __init__(self, num_layers: int, storage: torch.device | str = "cpu") -> None:
        self.on_disk = str(storage) == "disk"
        self.storage = check_activation_storage(storage)
        self.hidden: list[torch.Tensor | str] = []
        self.calls: list[list[tuple[tuple, dict]]] = [[] for _ in range(num_layers)]
        self._folder = tempfile.mkdtemp(prefix="pruning_hf_activations_") if self.on_disk else None
        if self._folder:
            weakref.finalize(self, shutil.rmtree, self._folder, True)
        self._files = 0

    def store(self, hidden: torch.Tensor) -> torch.Tensor | str:
        """Keep one batch of hidden states on the storage device or in a new file."""
        hidden = hidden.detach().to(self.storage)
        if not self.on_disk:
            return hidden
        from safetensors.torch import save_file

        path = os.path.join(self._folder, f"{self._files}.safetensors")
        self._files += 1
        save_file({"hidden": hidden.contiguous()}, path)
        return path

    def load(self, item: torch.Tensor | str, device: torch.device) -> torch.Tensor:
        if isinstance(item, str):
            from safetensors.torch import load_file

            item = load_file(item)["hidden"]
        return item.to(device)

    def advance(self, outputs: list[torch.Tensor | str]) -> None:
        """The outputs of the current layer become the next layer's inputs (old files are deleted)."""
        for item in self.hidden:
            if isinstance(item, str):
                os.remove(item)
        self.hidden = outputs


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
            self._captured.hidden.append(self._captured.store(hidden_states))
        self._captured.calls[self.index].append((args, kwargs))
        return hidden_states


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList, windows: torch.Tensor, batch_size: int,
                         storage: torch.device | str = "cpu") -> CapturedInputs:
    """Run the base model on ``windows`` ``(num, seq)`` with recorders in place of ``layers``.

    ``storage``: a device for the hidden states, or ``"disk"`` (temporary files).
    """
    captured = CapturedInputs(len(layers), storage)
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
        out = layer(captured.load(hidden, device), *send_to_device(args, device), **send_to_device(kwargs, device))
        out = out[0] if isinstance(out, (tuple, list)) else out
        if keep_outputs:
            if not torch.isfinite(out).all():
                raise NonFiniteError(f"decoder layer {index} produced NaN/Inf activations; {_finiteness(layer)}")
            outputs.append(captured.store(out))
    return outputs


def _finiteness(layer: nn.Module) -> str:
    """Which parameters of ``layer`` hold NaN/Inf, for an error message."""
    bad = [name for name, param in layer.named_parameters() if not torch.isfinite(param).all()]
    if bad:
        return f"non-finite parameters in it: {', '.join(bad)}"
    return "its parameters are finite, so its inputs or the dtype's range overflowed (try float32 or bfloat16)"


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
                dense = "already held NaN/Inf before pruning" if not torch.isfinite(weight_matrix(targets[name])).all() \
                    else "was finite before pruning"
                raise NonFiniteError(f"layer {index}, {name}: pruning produced NaN/Inf weights (the weight {dense})")
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
        with onloaded([layer]), collect_input_statistics(targets, hessian=False) as stats:
            outputs = run_layer(layer, captured, index, keep_outputs=True)
            if targets:
                scores = [wanda_scores(weight_matrix(module).detach().float(), stats[name].column_norms)
                          for name, module in targets.items()]
                summaries.append(summarize_layer(config.allocation, scores, config.owl_m))
                sizes.append(sum(score.numel() for score in scores))
                indices.append(index)
        if captured.hidden is layer_inputs:  # keep layer 0's inputs for the pruning pass
            captured.hidden = outputs
        else:
            captured.advance(outputs)
    if captured.hidden is not layer_inputs:
        captured.advance(layer_inputs)
    sparsity = dict(zip(indices, allocate(config.allocation, summaries, sizes, config.sparsity, config.owl_lambda)))
    ratios = dict(zip(indices, summaries)) if config.allocation == "owl" else None
    return {"kind": config.allocation, "layer_sparsity": [sparsity.get(i) for i in range(len(layers))],
            "outlier_ratio": [ratios.get(i) for i in range(len(layers))] if ratios else None,
            "seconds": time.perf_counter() - start}


def _targeted_numel(model: nn.Module, config) -> int:
    """Weights of the Linears ``config`` targets in the model as it is now."""
    per_layer, head = select_targets(model, config)
    return sum(module.weight.numel() for layer in [*per_layer, head] for module in layer.values())


def _peak_memory(report: PruningReport) -> None:
    report.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    if torch.cuda.is_available():
        report.peak_gpu_bytes = int(torch.cuda.max_memory_allocated())


@torch.no_grad()
def prune_model(model: nn.Module, config, windows: torch.Tensor | None = None, progress: bool = True,
                activation_storage: torch.device | str = "cpu",
                resume_dir: str | os.PathLike | None = None) -> PruningReport:
    """Prune ``model`` in place according to ``config``.

    Args:
        model: a ``*ForCausalLM`` model, possibly dispatched by accelerate (device map / offload).
        config: a :class:`~pruning_hf.PruningConfig`.
        windows: ``(num_samples, seq_len)`` calibration token ids; required when the method uses
            calibration statistics (see :func:`pruning_hf.calibration.calibration_windows`).
        progress: show a progress bar over layers.
        activation_storage: where calibration activations wait between layers: a device (default
            CPU), or ``"disk"`` (temporary files, one batch in memory at a time).
        resume_dir: a folder for a checkpoint after every decoder layer (:mod:`pruning_hf.resume`);
            rerunning with the same folder continues after the last finished layer, with a result
            bit-identical to an uninterrupted run. The folder's files are deleted when the run ends.
    Returns:
        A :class:`PruningReport`.
    """
    started = time.perf_counter()
    check_activation_storage(activation_storage)  # validate before any work
    if resume_dir is not None:
        check_resumable(config, resume_dir)
    model.eval()
    spec = get_architecture(model)
    layers = decoder_layers(model, spec)
    per_layer, head = check_targets(model, config)
    method = config.method_class(config)
    method.setup(model)
    report = PruningReport(config=config.to_dict(), model_type=getattr(model.config, "model_type", "?"),
                           parameters_before=sum(p.numel() for p in model.parameters()))
    all_targets = {name: module for layer in per_layer for name, module in layer.items()} | head
    needs_data = config.needs_calibration
    if needs_data and windows is None:
        raise ValueError(f"{config.describe()!r} needs calibration windows; pass windows=")
    targeted = _targeted_numel(model, config)
    if type(method).prepare is not PruningMethod.prepare:  # a look at every weight (global threshold)
        with onloaded(all_targets.values()):
            method.prepare(all_targets)

    captured = None
    if needs_data:
        report.calibration_tokens = windows.numel()
        capture_start = time.perf_counter()
        captured = capture_layer_inputs(model, layers, windows, config.calibration.batch_size, activation_storage)
        report.capture_seconds = time.perf_counter() - capture_start
    checkpoints = LayerCheckpoints(resume_dir, config, model, windows) if resume_dir is not None else None
    start = checkpoints.restore(per_layer, captured, report) if checkpoints else 0
    if config.allocation in PREPASS_ALLOCATIONS:
        report.allocation = report.allocation or _allocate(config, layers, per_layer, captured, progress)
        method.layer_sparsity = report.allocation["layer_sparsity"]
    hessian = method.statistics == "hessian" or config.refine
    bar = tqdm(list(enumerate(layers))[start:], desc=f"pruning ({config.describe()})", unit="layer",
               disable=not progress, initial=start, total=len(layers))
    for index, layer in bar:
        layer_start = time.perf_counter()
        record = LayerRecord(index=index, seconds=0.0)
        targets = per_layer[index]
        stats = {}
        with PeakMemory(execution_device(layer)) as peak, onloaded([layer]):  # one layer on its device at a time
            if needs_data and (method.statistics or config.refine) and targets:
                with collect_input_statistics(targets, hessian) as stats:
                    run_layer(layer, captured, index, keep_outputs=False)
            if targets:
                _prune_targets(method, index, targets, stats, record, progress)
            del stats
            if needs_data:
                outputs = run_layer(layer, captured, index, keep_outputs=True)
                method.observe_layer(index, captured.hidden, outputs)
                captured.advance(outputs)
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
        (head_name, head_module), = head.items()
        stats = {}
        if needs_data:
            stats = {head_name: _head_statistics(model, head_module, windows, config.calibration.batch_size, hessian)}
        _prune_targets(method, len(layers), head, stats, record, progress)
        record.seconds = time.perf_counter() - head_start
        report.layers.append(record)
    report.details = method.finalize(model)
    for record in report.layers:
        for info in record.linears.values():
            report.pruned_weights += round(info["sparsity"] * info["numel"])
    report.targeted_weights = targeted
    report.pruned_weights += targeted - _targeted_numel(model, config)  # physically removed (structured)
    report.parameters_after = sum(p.numel() for p in model.parameters())
    report.total_seconds = time.perf_counter() - started
    _peak_memory(report)
    if checkpoints:
        checkpoints.clear()
    return report
