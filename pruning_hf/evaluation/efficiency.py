"""Efficiency of a model as it is in memory: speed, memory, size and FLOPs, all measured in-process.

Timings come from interleaved rounds (:mod:`.rounds`): a warm-up run (decode runs generate 2 tokens
in it), then ``repeats`` rounds in
which every workload of every model measured together runs once (CUDA is synchronised around each
run), so a busy machine's slow spells hit all of them alike. Each timing keeps its per-round values
(``rounds_seconds``) and their spread; ratios between models pair the rounds:

* prefill: one forward pass over ``(prefill_batch, prefill_seq_len)`` tokens;
* decode: greedy generation of ``new_tokens`` tokens after a ``prompt_len``-token prompt at each
  batch size, one run per round; decode time is from the first new token (which ends the prompt's
  prefill; a ``generate`` streamer notes it) to the last, so the prefill is excluded without a second
  run: ``tokens_per_second = batch * (new_tokens - 1) / median decode time``.

Memory is the model's own, never the process's running maximum: ``peak_bytes`` = its weights
(parameters and buffers) + the peak resident memory its warm-up runs added over the memory before
them (Linux: the kernel's high-water mark is reset and free heap memory returned first; CUDA: peak
allocated over allocated). ``process_peak_rss_bytes`` is the process's peak, for reference only.

Size: :func:`parameter_counts` (total, non-zero, bytes in memory; every evaluation reports them),
:func:`checkpoint_bytes` = the safetensors files ``save_pretrained`` writes, known without writing
(zeros are stored as zeros in a dense checkpoint).

FLOPs per token (multiply-add = 2 FLOPs), from the actual Linear shapes (so structurally shrunk
layers count less): ``linear`` = 2 x weights of every Linear incl. the LM head; ``attention`` =
4 x query width x mean causal context ``(seq_len + 1) / 2`` per layer (scores and weighted sum);
``sparse_skippable`` = 2 x zero weights, what an ideal sparse kernel could skip.
"""

from __future__ import annotations

import ctypes
import gc
import json
import statistics
import struct
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..models.architectures import UnsupportedModelError, decoder_layers, get_architecture, linear_modules
from ..models.devices import execution_device, onloaded
from ..utils.memory import reset_gpu_peak, reset_rss_peak, resident_bytes, rss_peak_bytes
from .generation import WORKLOAD_PROMPT_LEN, greedy_generate, synthetic_prompts
from . import rounds as _rounds
from .rounds import run_rounds, spread

__all__ = ["parameter_counts", "flops_per_token", "checkpoint_bytes", "SpeedProbe", "measure_efficiencies",
           "measure_efficiency"]


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


_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                       torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


def _saved_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors ``save_pretrained`` writes: the state dict without tied copies (transformers drops those)."""
    tensors = dict(model.state_dict())
    for target in (getattr(model, "all_tied_weights_keys", None) or {}):
        tensors.pop(target, None)
    return tensors


def _header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {name: (info["dtype"], tuple(info["shape"])) for name, info in header.items() if name != "__metadata__"}


def _loaded_files(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[Path] | None:
    """The safetensors files of the folder ``model`` was loaded from, if they still hold exactly its tensors."""
    name = str(getattr(model, "name_or_path", "") or getattr(model.config, "name_or_path", "") or "")
    files = sorted(Path(name).glob("*.safetensors")) if name and Path(name).is_dir() else []
    if not files:
        return None
    try:
        stored: dict[str, tuple[str, tuple[int, ...]]] = {}
        for path in files:
            stored.update(_header(path))
    except (OSError, ValueError, struct.error):
        return None
    current = {name: (_SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)), tuple(t.shape)) for name, t in tensors.items()}
    return files if stored == current else None


def checkpoint_bytes(model: nn.Module) -> int:
    """Bytes of the safetensors files ``model.save_pretrained`` writes, without writing anything.

    A model loaded from a folder whose files still hold its tensors (names, shapes, dtypes; e.g.
    unpruned, or pruned with masks: zeros are stored) counts those files; otherwise (pruned to other
    shapes, built in memory, loaded from a compressed or pickle checkpoint) the bytes are computed
    from the tensors as safetensors lays them out (8-byte length, JSON header padded to 8 bytes,
    data), exact for a single-file checkpoint.
    """
    tensors = _saved_tensors(model)
    files = _loaded_files(model, tensors)
    if files is not None:
        return sum(path.stat().st_size for path in files)
    ordered = sorted(tensors.items(), key=lambda item: (-item[1].element_size(), item[0]))  # safetensors' order
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tensor in ordered:
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES.get(tensor.dtype, str(tensor.dtype)), "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    length = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + length + (-length % 8) + offset


def _synced(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``fn`` followed by a CUDA synchronisation, so its time includes the queued GPU work."""
    def run() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def _release_free_memory() -> None:
    """Collect garbage and hand free heap pages back to the system (glibc), so RSS growth is this run's."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def own_memory(model: nn.Module, run: Callable[[], object]) -> dict[str, Any]:
    """Run ``run`` and return the model's own peak memory (see the module docstring)."""
    device = execution_device(model.get_input_embeddings())
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())
                  if t.device.type != "meta")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = int(torch.cuda.memory_allocated(device))
        reset_gpu_peak(device)
    else:
        _release_free_memory()
        before = resident_bytes()
    reset = reset_rss_peak()
    run()
    if device.type == "cuda":
        increase = int(torch.cuda.max_memory_allocated(device)) - before
    else:
        increase = rss_peak_bytes() - before if reset and before is not None else None
    return {"peak_bytes": weights + max(increase, 0) if increase is not None else None, "weights_bytes": weights,
            "run_peak_increase_bytes": max(increase, 0) if increase is not None else None,
            "process_peak_rss_bytes": rss_peak_bytes(), "rss_peak_reset": reset,
            "peak_gpu_bytes": weights + max(increase, 0) if device.type == "cuda" else None}


class _FirstToken:
    """A ``generate`` streamer that notes the time the first new token arrives (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.puts, self.seen = 0, None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.seen = _rounds._clock()

    def end(self) -> None:
        pass


class SpeedProbe:
    """The speed workloads of :func:`measure_efficiencies` and what they measure, for :func:`~.rounds.run_rounds`.

    ``workloads`` builds a model's ``prefill`` and ``decode/B`` runs (and records its size and FLOPs the
    first time), ``warmup`` runs them once under :func:`own_memory`, ``results`` turns the rounds' times
    (and the decode times the runs note themselves) into the schema of :mod:`pruning_hf.evaluation.report`.
    """

    def __init__(self, *, prefill_batch: int = 1, prefill_seq_len: int = 512, decode_batches=(1, 8),
                 prompt_len: int = WORKLOAD_PROMPT_LEN, new_tokens: int = 8, warmup: int = 1, repeats: int = 5,
                 flops_seq_len: int | None = None, disk: bool = True) -> None:
        if new_tokens < 2:
            raise ValueError(f"new_tokens must be >= 2 to separate decode from prefill, got {new_tokens}")
        self.prefill_batch, self.prefill_seq_len, self.decode_batches = prefill_batch, prefill_seq_len, decode_batches
        self.prompt_len, self.new_tokens, self.repeats, self.disk = prompt_len, new_tokens, repeats, disk
        self.warmups = warmup
        self.flops_seq_len = flops_seq_len or prefill_seq_len
        self.info: dict[str, dict] = {}
        self.decode: dict[str, dict[str, list[float]]] = {}  # name -> key -> decode seconds of each timed run
        self._warming = False

    def workloads(self, name: str, model: nn.Module) -> dict[str, Callable[[], None]]:
        model.eval()
        device = execution_device(model.get_input_embeddings())
        if name not in self.info:
            self.info[name] = {"device": str(device), "threads": torch.get_num_threads(), "warmup": self.warmups,
                               "repeats": self.repeats, "checkpoint_bytes": checkpoint_bytes(model) if self.disk else None,
                               "flops_per_token": flops_per_token(model, self.flops_seq_len)}
        prefill_ids = synthetic_prompts(model, self.prefill_batch, self.prefill_seq_len).to(device)
        runs: dict[str, Callable[[], object]] = {"prefill": torch.no_grad()(lambda: model(input_ids=prefill_ids))}
        for batch in self.decode_batches:
            runs[f"decode/{batch}"] = partial(self._decode, name, f"decode/{batch}", model,
                                              synthetic_prompts(model, batch, self.prompt_len))
        return {key: _synced(fn, device) for key, fn in runs.items()}

    def _decode(self, name: str, key: str, model: nn.Module, prompts: torch.Tensor) -> None:
        """One generation run; notes its decode time (first new token to the last) unless warming up (then 2 tokens:
        enough to warm the prefill and the cached decode step)."""
        first = _FirstToken()
        greedy_generate(model, prompts, 2 if self._warming else self.new_tokens, fixed_length=True, streamer=first)
        if not self._warming:
            self.decode.setdefault(name, {}).setdefault(key, []).append(_rounds._clock() - first.seen)

    def warmup(self, name: str, model: nn.Module, own: Mapping[str, Callable[[], object]]) -> None:
        self._warming = True
        try:
            memory = own_memory(model, lambda: [fn() for _ in range(self.warmups) for fn in own.values()])
        finally:
            self._warming = False
        self.info[name].setdefault("memory", memory)  # a reloaded model: its first load's reading

    def results(self, times: Mapping[str, Mapping[str, list[float]]], timing: Mapping[str, dict]) -> dict[str, dict]:
        results = {}
        for name, own in times.items():
            result = {**self.info[name], "timing": dict(timing.get(name, {}))}
            prefill = own["prefill"]
            seconds = statistics.median(prefill)
            result["prefill"] = {"batch": self.prefill_batch, "seq_len": self.prefill_seq_len, "median_seconds": seconds,
                                 **{f"{k}_seconds": v for k, v in spread(prefill).items() if k != "median"},
                                 "rounds_seconds": prefill, "tokens_per_second": self.prefill_batch *
                                 self.prefill_seq_len / seconds}
            result["decode"] = {}
            for batch in self.decode_batches:
                full, decode = own[f"decode/{batch}"], self.decode[name][f"decode/{batch}"]
                result["decode"][str(batch)] = {
                    "batch": batch, "prompt_len": self.prompt_len, "new_tokens": self.new_tokens,
                    "median_seconds": statistics.median(full), "decode_seconds": statistics.median(decode),
                    "rounds_decode_seconds": decode,
                    "tokens_per_second": batch * (self.new_tokens - 1) / max(statistics.median(decode), 1e-9)}
            results[name] = result
        return results


def measure_efficiencies(models: Mapping[str, Any], *, progress: bool = False, timing: Mapping[str, dict] | None = None,
                         **settings) -> dict[str, dict]:
    """Efficiency of each model (schema: :mod:`pruning_hf.evaluation.report`), timed in interleaved rounds.

    ``models``: name -> model, or :class:`~.rounds.Reload` for a model loaded afresh each round.
    ``settings``: :class:`SpeedProbe` keywords. Each held model first runs its workloads once under
    :func:`own_memory` (one model at a time, so each peak is its own); then ``repeats`` rounds time every
    workload of every model. ``timing`` is stored as each result's ``timing`` (how the models were held).
    """
    probe = SpeedProbe(**settings)
    times = run_rounds(models, probe.workloads, probe.repeats, warmup=probe.warmup, progress=progress,
                       label="speed")
    return probe.results(times, {name: {"mode": "interleaved" if len(models) > 1 else "alone",
                                        **(timing or {}).get(name, {})} for name in models})


def measure_efficiency(model: nn.Module, **settings) -> dict:
    """Efficiency of one model (see :func:`measure_efficiencies` for the settings)."""
    return measure_efficiencies({"model": model}, **settings)["model"]
