"""What a pruning run did, per decoder layer and in total: :class:`PruningReport` (``pruning_report.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["NonFiniteError", "LayerRecord", "PruningReport"]

#: how :meth:`PruningReport.summary` names the units of ``details["removed_units"]`` (structured pruning)
UNIT_WORDS = {"mlp_neurons": "MLP neurons", "kv_groups": "KV groups", "query_heads": "query heads",
              "attention_heads": "attention heads"}


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
    schedule: str = "layer"  # how the layers met the calibration data: "layer" (whole, twice) or "sublayer"
    dense_dtype: str | None = None  # dense targets: the dtype the dense stream's matmuls ran in
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

    def summary(self) -> str:
        """One line saying what went: decoder layers (depth), units per kind (structured: MLP neurons, KV
        groups / heads) with the parameters removed, or the share of targeted weights set to zero."""
        removed = self.parameters_before - self.parameters_after
        parameters = f"{removed:,} of {self.parameters_before:,} parameters ({self.parameters_removed:.2%}) removed"
        layers = self.details.get("removed_layers")
        if layers is not None:
            before = len(self.details.get("block_influence") or []) or len(layers)
            which = f"layer{'s' if len(layers) != 1 else ''} {', '.join(str(i) for i in layers)}"
            return f"removed {len(layers)} of {before} decoder layers ({which}); {parameters}"
        units = self.details.get("removed_units")
        if units:
            kinds = " and ".join(f"{u['removed']} of {u['total']} {UNIT_WORDS.get(unit, unit)} "
                                 f"({u['removed'] / max(u['total'], 1):.1%})" for unit, u in units.items())
            return f"removed {kinds}; {parameters}"
        return f"{self.sparsity:.2%} of {self.targeted_weights:,} targeted weights set to zero"

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
