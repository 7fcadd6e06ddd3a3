"""Efficiency of a model as it is in memory: speed, memory, size and FLOPs, all measured in-process.

Timings use a warm-up run and the median of ``repeats`` rounds (CUDA is synchronised around each
run); each round runs every workload once, of every model measured together, so a busy machine's
slow spells hit all of them alike and their ratios stay fair:

* prefill: one forward pass over ``(prefill_batch, prefill_seq_len)`` tokens;
* decode: greedy generation of ``new_tokens`` tokens after a ``prompt_len``-token prompt at each
  batch size; decode time is ``t(new_tokens) - t(1 token)``, so the prompt's prefill is excluded:
  ``tokens_per_second = batch * (new_tokens - 1) / decode time``.

Memory: ``peak_rss_bytes`` is the process's peak resident memory during the model's warm-up runs
(Linux: the high-water mark is reset first; elsewhere it is the peak since process start, and says so);
it includes every model the process holds, so compare the models' weight bytes instead.
``peak_gpu_bytes`` is ``torch.cuda.max_memory_allocated`` during the runs.

Size: :func:`parameter_counts` (total, non-zero, bytes in memory; every evaluation reports them),
``checkpoint_bytes`` = the safetensors files ``save_pretrained`` writes (zeros are stored as zeros in
a dense checkpoint).

FLOPs per token (multiply-add = 2 FLOPs), from the actual Linear shapes (so structurally shrunk
layers count less): ``linear`` = 2 x weights of every Linear incl. the LM head; ``attention`` =
4 x query width x mean causal context ``(seq_len + 1) / 2`` per layer (scores and weighted sum);
``sparse_skippable`` = 2 x zero weights, what an ideal sparse kernel could skip.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, Hashable, Iterator, Mapping

import torch
from torch import nn

from ..models.architectures import UnsupportedModelError, decoder_layers, get_architecture, linear_modules
from ..models.devices import execution_device, onloaded
from ..utils.memory import reset_gpu_peak, reset_rss_peak, rss_peak_bytes
from .generation import greedy_generate, synthetic_prompts

__all__ = ["parameter_counts", "flops_per_token", "checkpoint_bytes", "interleaved_medians", "peak_memory",
           "measure_efficiency", "measure_efficiencies"]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"total", "nonzero", "bytes"}`` over unique parameters (tied weights once; offloaded ones onloaded)."""
    total = nonzero = size = 0
    unique = {name for name, _ in model.named_parameters()}  # tied weights appear once
    for module_name, module in model.named_modules():
        local = [n for n, _ in module.named_parameters(recurse=False)
                 if (f"{module_name}.{n}" if module_name else n) in unique]
        if not local:
            continue
        with onloaded([module]):
            for name in local:
                param = getattr(module, name)
                total += param.numel()
                size += param.numel() * param.element_size()
                if param.device.type != "meta":
                    nonzero += int(torch.count_nonzero(param))
    return {"total": total, "nonzero": nonzero, "bytes": size}


def _query_width(layer: nn.Module, spec, hidden_size: int) -> int:
    if spec.attention is not None:
        prefix = f"{spec.attention.path}." if spec.attention.path else ""
        query = layer.get_submodule(prefix + spec.attention.q)
        return query.out_features if isinstance(query, nn.Linear) else query.weight.shape[-1]
    return hidden_size


def flops_per_token(model: nn.Module, seq_len: int) -> dict[str, float]:
    """FLOPs to process one token in a ``seq_len`` window (see module docstring)."""
    linear = zeros = 0
    for module in linear_modules(model).values():
        with onloaded([module]):
            linear += 2 * module.weight.numel()
            if module.weight.device.type != "meta":
                zeros += 2 * int((module.weight == 0).sum())
    hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd", 0)
    try:
        spec = get_architecture(model)
        widths = [_query_width(layer, spec, hidden) for layer in decoder_layers(model, spec)]
    except (UnsupportedModelError, AttributeError):
        widths = [hidden] * int(getattr(model.config, "num_hidden_layers", 0) or 0)
    attention = 4 * sum(widths) * (seq_len + 1) / 2
    return {"linear": float(linear), "attention": float(attention), "total": float(linear + attention),
            "sparse_skippable": float(zeros), "seq_len": seq_len}


def checkpoint_bytes(model) -> int:
    """Bytes of the safetensors files ``model.save_pretrained`` writes (saved to a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="pruning_hf_size_") as tmp:
        target = Path(tmp) / "checkpoint"
        model.save_pretrained(target)
        return sum(p.stat().st_size for p in target.rglob("*.safetensors"))


def _synced(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``fn`` followed by a CUDA synchronisation, so its time includes the queued GPU work."""
    def run() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def interleaved_medians(workloads: Mapping[Hashable, Callable[[], object]], repeats: int = 5) -> dict[Hashable, float]:
    """Median wall time of each workload over ``repeats`` rounds; every round runs each workload once.

    Alternating the workloads spreads a busy machine's slow spells over all of them, so their ratios
    stay fair. Warm the workloads up before calling; GPU workloads must synchronise at their end.
    """
    times: dict[Hashable, list[float]] = {key: [] for key in workloads}
    for _ in range(repeats):
        for key, fn in workloads.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Yield a dict filled on exit with ``peak_rss_bytes``, ``rss_peak_reset`` and ``peak_gpu_bytes``."""
    result: dict = {"rss_peak_reset": reset_rss_peak(), "peak_gpu_bytes": None}
    if device.type == "cuda":
        reset_gpu_peak(device)
    try:
        yield result
    finally:
        result["peak_rss_bytes"] = rss_peak_bytes()
        if device.type == "cuda":
            result["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(device))


def _speed_workloads(model, prefill_batch: int, prefill_seq_len: int, decode_batches, prompt_len: int,
                     new_tokens: int) -> dict[str, Callable[[], object]]:
    """``prefill``, and ``decode/B/full`` (``new_tokens``) and ``decode/B/first`` (1 token) per batch size B."""
    device = execution_device(model.get_input_embeddings())
    prefill_ids = synthetic_prompts(model, prefill_batch, prefill_seq_len).to(device)
    workloads: dict[str, Callable[[], object]] = {"prefill": torch.no_grad()(lambda: model(input_ids=prefill_ids))}
    for batch in decode_batches:
        prompts = synthetic_prompts(model, batch, prompt_len)
        workloads[f"decode/{batch}/full"] = partial(greedy_generate, model, prompts, new_tokens, fixed_length=True)
        workloads[f"decode/{batch}/first"] = partial(greedy_generate, model, prompts, 1, fixed_length=True)
    return {key: _synced(fn, device) for key, fn in workloads.items()}


def measure_efficiencies(models: Mapping[str, nn.Module], *, prefill_batch: int = 1, prefill_seq_len: int = 512,
                         decode_batches=(1, 8), prompt_len: int = 32, new_tokens: int = 32, warmup: int = 1,
                         repeats: int = 5, flops_seq_len: int | None = None, disk: bool = True) -> dict[str, dict]:
    """Efficiency of each model (schema: :mod:`pruning_hf.evaluation.report`), timed side by side.

    Each model first runs its workloads ``warmup`` times under :func:`peak_memory` (one model at a
    time, so each peak is its own); then ``repeats`` rounds time every workload of every model.
    """
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 to separate decode from prefill, got {new_tokens}")
    workloads, results = {}, {}
    for name, model in models.items():
        model.eval()
        device = execution_device(model.get_input_embeddings())
        own = _speed_workloads(model, prefill_batch, prefill_seq_len, decode_batches, prompt_len, new_tokens)
        with peak_memory(device) as memory:
            for _ in range(warmup):
                for fn in own.values():
                    fn()
        workloads.update({(name, key): fn for key, fn in own.items()})
        results[name] = {
            "device": str(device), "threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats,
            "checkpoint_bytes": checkpoint_bytes(model) if disk else None,
            "flops_per_token": flops_per_token(model, flops_seq_len or prefill_seq_len), "memory": memory,
            "timed_with": [other for other in models if other != name],
        }
    medians = interleaved_medians(workloads, repeats)
    for name, result in results.items():
        seconds = medians[(name, "prefill")]
        result["prefill"] = {"batch": prefill_batch, "seq_len": prefill_seq_len, "median_seconds": seconds,
                             "tokens_per_second": prefill_batch * prefill_seq_len / seconds}
        result["decode"] = {}
        for batch in decode_batches:
            full, first = medians[(name, f"decode/{batch}/full")], medians[(name, f"decode/{batch}/first")]
            decode = max(full - first, 1e-9)
            result["decode"][str(batch)] = {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
                                            "median_seconds": full, "decode_seconds": decode,
                                            "tokens_per_second": batch * (new_tokens - 1) / decode}
    return results


def measure_efficiency(model: nn.Module, **settings) -> dict:
    """Efficiency of one model (see :func:`measure_efficiencies` for the settings)."""
    return measure_efficiencies({"model": model}, **settings)["model"]
