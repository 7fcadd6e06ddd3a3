"""The dense pre-pass of a non-uniform layer allocation (OWL, global).

The still-dense layers run once in order on the calibration batches; each layer is summarised by the
allocation code (:func:`~pruning_hf.sparsity.allocation.layer_summary`, from its weights and input
norms), then ``config.sparsity`` is spread over the layers. Memory stays one layer's weights.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.architectures import weight_matrix
from ..models.devices import onloaded
from ..sparsity.allocation import allocate, layer_summary
from .capture import CapturedInputs, run_layer
from .hooks import collect_input_statistics

__all__ = ["allocation_prepass"]


@torch.no_grad()
def allocation_prepass(config, layers: nn.ModuleList, per_layer: list[dict[str, nn.Module]], captured: CapturedInputs,
                       progress: bool) -> dict[str, Any]:
    """``{kind, layer_sparsity, outlier_ratio (OWL), seconds}``; ``captured`` ends as it started (layer 0's inputs)."""
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
                weights = [weight_matrix(module).detach() for module in targets.values()]
                summaries.append(layer_summary(config.allocation, weights, [stats[n].column_norms for n in targets],
                                               config.owl_m))
                sizes.append(sum(weight.numel() for weight in weights))
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
