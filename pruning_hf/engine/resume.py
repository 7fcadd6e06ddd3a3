"""Resumable pruning runs: a checkpoint after every completed decoder layer (opt-in, ``resume_dir=``).

After layer ``k`` the engine writes into the folder, each file atomically
(:func:`~pruning_hf.utils.storage.atomic_file`) and the manifest last:

* ``layer_K.safetensors``: the pruned weights of layer ``k``'s target Linears;
* ``hidden_K.safetensors``: the calibration hidden states after layer ``k`` (layer ``k+1``'s inputs; with
  dense targets also the dense model's, ``dense.B``);
* ``manifest.json``: how many layers are done, their report records, the layer allocation (OWL /
  global) and fingerprints of the config, the model and the calibration windows.

A rerun with the same folder writes the finished layers' weights back, restores the hidden states
and continues with the next layer, so its result is bit-identical to an uninterrupted run. A folder
written for another config, model or calibration data is refused. Methods that change shapes
(structured, depth) cannot resume: they keep cross-layer state until the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.architectures import weight_matrix
from ..models.devices import write_weight
from ..utils.storage import atomic_file
from .report import LayerRecord

__all__ = ["ResumeError", "LayerCheckpoints", "check_resumable"]

MANIFEST = "manifest.json"
FORMAT = 1


class ResumeError(ValueError):
    """A resume folder cannot be used for this run (another run's folder, or a method that cannot resume)."""


def check_resumable(config, resume_dir: str | os.PathLike) -> Path:
    """Validate ``resume_dir`` for ``config`` before any work; returns it as a Path."""
    folder = Path(resume_dir)
    if not config.method_class.resumable:
        raise ResumeError(f"resuming works for methods that only rewrite weights layer by layer (magnitude, wanda, "
                          f"sparsegpt ...); method {config.method!r} changes layer shapes until its last step. Run it "
                          "without resume")
    if folder.exists() and not folder.is_dir():
        raise ResumeError(f"resume folder {str(folder)!r} is a file; give a folder path")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MANIFEST).is_file():
        raise ResumeError(f"resume folder {str(folder)!r} is not empty and holds no {MANIFEST}; "
                          "give a new or empty folder")
    return folder


def _digest(*parts: Any) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return hasher.hexdigest()[:16]


class LayerCheckpoints:
    """The resume folder of one pruning run (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, config, model: nn.Module, windows: torch.Tensor | None) -> None:
        self.folder = check_resumable(config, folder)
        self.fingerprint = {
            "config": _digest(config.to_dict()),
            "model": _digest(getattr(model, "name_or_path", ""), model.config.to_dict(),
                             sum(p.numel() for p in model.parameters())),
            "calibration": _digest(windows.cpu().numpy().tobytes() if windows is not None else b"none"),
        }
        self.manifest: dict[str, Any] = {"format": FORMAT, "fingerprint": self.fingerprint, "completed": 0,
                                         "layers": [], "allocation": None}
        path = self.folder / MANIFEST
        if path.is_file():
            stored = json.loads(path.read_text())
            differ = [key for key, value in self.fingerprint.items() if stored.get("fingerprint", {}).get(key) != value]
            if differ or stored.get("format") != FORMAT:
                raise ResumeError(
                    f"resume folder {str(self.folder)!r} holds a run with another {', '.join(differ) or 'format'} "
                    "(its finished layers would not match this run); give a new folder, or delete it to start over")
            self.manifest = stored

    @property
    def completed(self) -> int:
        """Decoder layers already pruned and saved."""
        return self.manifest["completed"]

    def restore(self, per_layer: list[dict[str, nn.Module]], captured, report) -> int:
        """Write the saved weights of the finished layers back, restore the hidden states and report
        records; return the index of the first layer still to prune."""
        from safetensors.torch import load_file

        for index in range(self.completed):
            weights = load_file(self.folder / f"layer_{index}.safetensors")
            for name, module in per_layer[index].items():
                write_weight(module, weights[name])
        if captured is not None and self.completed:
            hidden = load_file(self.folder / f"hidden_{self.completed - 1}.safetensors")
            batches = range(len(captured.hidden))
            captured.advance([captured.store(hidden[str(b)]) for b in batches],
                             [captured.store(hidden[f"dense.{b}"]) for b in batches] if captured.dense else None)
        report.layers = [LayerRecord(**record) for record in self.manifest["layers"]]
        report.allocation = self.manifest["allocation"] or report.allocation
        return self.completed

    def save(self, index: int, targets: dict[str, nn.Module], captured, records: list, allocation) -> None:
        """Record layer ``index`` as finished (call with the layer on its device, after ``captured.advance``);
        ``records``: the report's layer records up to this one."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        weights = {name: weight_matrix(module).detach().cpu().contiguous() for name, module in targets.items()}
        with atomic_file(self.folder / f"layer_{index}.safetensors") as tmp:
            save_file(weights, tmp)
        if captured is not None:
            streams = {"": captured.hidden, "dense.": captured.dense or []}
            hidden = {f"{prefix}{b}": captured.load(item, torch.device("cpu")).contiguous()
                      for prefix, items in streams.items() for b, item in enumerate(items)}
            with atomic_file(self.folder / f"hidden_{index}.safetensors") as tmp:
                save_file(hidden, tmp)
        self.manifest.update(completed=index + 1, allocation=allocation,
                             layers=[dataclasses.asdict(record) for record in records])
        with atomic_file(self.folder / MANIFEST) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=1))
        (self.folder / f"hidden_{index - 1}.safetensors").unlink(missing_ok=True)  # superseded

    def clear(self) -> None:
        """The run finished: delete the files this class wrote (the folder itself if then empty)."""
        for path in self.folder.glob("*"):  # also temporary files left by a killed run (".layer_3.safetensors.x")
            if path.name.lstrip(".").startswith((MANIFEST, "layer_", "hidden_")):
                path.unlink()
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()
