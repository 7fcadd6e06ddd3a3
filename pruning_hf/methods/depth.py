"""Depth pruning (ShortGPT, Men et al. 2024): drop the decoder layers that change their input least.

Block influence of layer ``l`` on calibration tokens ``t``: ``BI_l = 1 - mean_t cos(h_in[t], h_out[t])``,
measured in one pass over the unpruned model. The ``num_layers`` layers with the lowest influence are
removed; ``num_hidden_layers``, per-layer config lists (Gemma3's ``layer_types``) and every remaining
layer's ``layer_idx`` (its KV-cache slot) are updated, so the result is a stock checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..models.architectures import decoder_layers, get_architecture
from ..models.shrink import drop_layers
from ..utils.checks import check_int
from .base import LayerUpdate, PruningMethod

__all__ = ["DepthOptions", "DepthPruner", "block_influence"]


@dataclass
class DepthOptions:
    num_layers: int | None = field(default=None, metadata={"help": (
        "Depth pruning: how many decoder layers to remove (lowest block influence first).")})

    def __post_init__(self) -> None:
        if self.num_layers is not None:
            check_int("num_layers", self.num_layers, 1)


def block_influence(cosine_sums: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
    """``(layers,)`` ``1 - mean cosine similarity`` between each layer's input and output."""
    return 1.0 - cosine_sums / token_counts.clamp_min(1)


class DepthPruner(PruningMethod):
    """Remove whole decoder layers ranked by block influence (needs calibration data)."""

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
        count = config.options.num_layers
        return f"depth ({count} decoder layer{'s' if count != 1 else ''}, block influence)"

    def setup(self, model: nn.Module) -> None:
        self.spec = get_architecture(model)
        count = len(decoder_layers(model, self.spec))
        if self.options.num_layers >= count:
            raise ValueError(f"num_layers={self.options.num_layers} must be smaller than the model's {count} "
                             "decoder layers (at least one layer stays)")
        self.cosine_sums = torch.zeros(count, dtype=torch.float64)
        self.token_counts = torch.zeros(count, dtype=torch.float64)

    def observe_layer(self, layer_index, inputs, outputs) -> None:
        for hidden_in, hidden_out in zip(inputs, outputs):
            cosine = F.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)
            self.cosine_sums[layer_index] += cosine.sum().item()
            self.token_counts[layer_index] += cosine.numel()

    def prune_layer(self, layer_index, targets, stats):
        return LayerUpdate()

    def finalize(self, model: nn.Module) -> dict:
        influence = block_influence(self.cosine_sums, self.token_counts)
        removed = sorted(influence.argsort()[: self.options.num_layers].tolist())
        drop_layers(model, self.spec, [i for i in range(len(influence)) if i not in removed])
        return {"removed_layers": removed, "block_influence": [round(v, 6) for v in influence.tolist()]}
