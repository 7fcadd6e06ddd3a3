"""Checkpoint folders of pruned models: the atomic ``save_pretrained``, compressed weights, and reading
back what a saved folder holds besides the weights (reports, evaluation, recipe, sweep files).

A save writes everything into a temporary sibling folder and swaps it in with one rename
(:func:`~pruning_hf.utils.storage.atomic_directory`): a failed or killed save never damages an
earlier checkpoint at the same path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..engine.report import PruningReport
from ..evaluation.report import EvaluationReport
from ..models.devices import retie_offloaded_embeddings
from ..sparsity.compression import FORMAT, compress_weight
from ..utils.storage import atomic_directory
from .cards import write_model_card
from .files import ATTACHMENTS, EVALUATION_FILE, PRUNING_REPORT_FILE
from .quantizer import check_quantization_config, set_saved_feature

__all__ = ["save_checkpoint", "compress_checkpoint", "read_pruning_report", "read_pruning_energy", "read_evaluation",
           "read_attachments"]

OFFLOADED_SHARD_SIZE = "1GB"  # shard size when saving an offloaded model (transformers' default is 50GB)


def save_checkpoint(model, save_directory: str | os.PathLike, compress: bool = False, **kwargs: Any) -> None:
    """Atomic ``save_pretrained`` of a pruned model: weights + config + tokenizer + reports + card, all or nothing.

    ``compress=True`` stores each pruned weight as its non-zero values + a bitmask, or for N:M
    patterns its kept values + packed in-group positions (:mod:`pruning_hf.sparsity.compression`):
    about 0.56x the dense bytes at 50% sparsity. Loading it needs ``import pruning_hf`` before
    ``AutoModelForCausalLM.from_pretrained``; the default dense checkpoint loads anywhere.
    """
    if {"cpu", "disk"} & set((getattr(model, "hf_device_map", None) or {}).values()):
        kwargs.setdefault("max_shard_size", OFFLOADED_SHARD_SIZE)  # transformers gathers one shard in RAM
        retie_offloaded_embeddings(model)  # forward passes through offloaded modules untie lm_head
    if compress:
        check_quantization_config(model.config)  # before anything is written
    with atomic_directory(save_directory) as tmp:
        type(model).save_pretrained(model, tmp, **kwargs)
        if compress:
            pattern = model.pruning_config.pattern_spec if getattr(model, "pruning_config", None) else None
            nm = (pattern.n, pattern.m) if pattern is not None and pattern.is_nm else None
            set_saved_feature(tmp, "compression", compress_checkpoint(tmp, nm))
        if getattr(model, "tokenizer", None) is not None:
            model.tokenizer.save_pretrained(tmp)
        if getattr(model, "pruning_report", None) is not None:
            energy = getattr(model, "pruning_energy", None)  # kWh, CO2e and source of the run, or why missing
            report = {**model.pruning_report.to_dict(), **({"energy": energy} if energy else {})}
            (tmp / PRUNING_REPORT_FILE).write_text(json.dumps(report, indent=2))
        for name, content in (getattr(model, "attachments", None) or {}).items():  # recipe, sweep files, plots
            (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        if getattr(model, "evaluation_report", None) is not None:
            (tmp / EVALUATION_FILE).write_text(model.evaluation_report.to_json())
        write_model_card(tmp, location=str(save_directory))


def _pruning_report_json(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / PRUNING_REPORT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_pruning_report(folder: str | os.PathLike) -> PruningReport | None:
    data = _pruning_report_json(folder)
    return PruningReport.from_dict({k: v for k, v in data.items() if k != "energy"}) if data is not None else None


def read_pruning_energy(folder: str | os.PathLike) -> dict | None:
    """The pruning run's energy saved in ``pruning_report.json`` (``None`` when it was not tracked)."""
    return (_pruning_report_json(folder) or {}).get("energy")


def read_evaluation(folder: str | os.PathLike) -> EvaluationReport | None:
    path = Path(folder) / EVALUATION_FILE
    return EvaluationReport.load(path) if path.is_file() else None


def read_attachments(folder: str | os.PathLike) -> dict[str, bytes]:
    """The recipe and sweep files of a saved checkpoint, to carry into the next save."""
    return {file: (Path(folder) / file).read_bytes() for file in ATTACHMENTS if (Path(folder) / file).is_file()}


def compress_checkpoint(folder: str | os.PathLike, nm: tuple[int, int] | None = None) -> dict:
    """Rewrite the safetensors shards of a saved checkpoint with compressed pruned weights, in place.

    Every 2-D floating ``*.weight`` tensor that is smaller compressed is replaced (see
    :func:`compress_weight`); the shard index, if any, is updated. Call it inside
    :func:`~pruning_hf.utils.storage.atomic_directory` so a failure leaves no half-written checkpoint.

    Returns the ``compression`` entry for the quantization config: format, ``nm`` and counts.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = Path(folder)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    shards = sorted(set(index["weight_map"].values())) if index else ["model.safetensors"]
    compressed, total_bytes = 0, 0
    for shard in shards:
        path = folder / shard
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(path, framework="pt") as reader:
            metadata = reader.metadata()
            for name in reader.keys():
                tensor = reader.get_tensor(name)
                parts = compress_weight(tensor, nm) if name.endswith(".weight") else None
                compressed += parts is not None
                for suffix, part in (parts or {"": tensor}).items():
                    tensors[name + suffix] = part.contiguous()
                    total_bytes += part.numel() * part.element_size()
                    if index is not None:
                        index["weight_map"][name + suffix] = shard
        save_file(tensors, path.with_suffix(".tmp"), metadata=metadata)
        os.replace(path.with_suffix(".tmp"), path)  # readers of the old file keep their mapping
        del tensors
    if index is not None:
        index["metadata"]["total_size"] = total_bytes
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return {"format": FORMAT, "nm": list(nm) if nm else None, "compressed_weights": compressed}
