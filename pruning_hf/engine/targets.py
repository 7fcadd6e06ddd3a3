"""Which Linear modules a config prunes: per decoder layer, plus ``lm_head`` when a pattern names it."""

from __future__ import annotations

import fnmatch

from torch import nn

from ..models.architectures import decoder_layers, get_architecture, linear_modules, weight_matrix

__all__ = ["select_targets", "check_targets", "targeted_numel"]


def _matches(name: str, pattern: str) -> bool:
    """fnmatch ``pattern`` against the full name or any dotted suffix of it.

    So 'q_proj', 'mlp.*', 'self_attn.?_proj' and 'model.layers.1[0-9].*' all work.
    """
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[i:]), pattern) for i in range(len(parts)))


def select_targets(model: nn.Module, config) -> tuple[list[dict[str, nn.Module]], dict[str, nn.Module]]:
    """Target Linears per decoder layer, plus ``lm_head`` when a ``targets`` pattern names it.

    Returns ``(per_layer, head)`` with qualified module names. Raises ValueError for patterns that
    match nothing (typos cost seconds, not a silent no-op run). A method that names its own Linears
    (:meth:`~pruning_hf.methods.base.PruningMethod.layer_targets`) gets those.
    """
    spec = get_architecture(model)
    layers = decoder_layers(model, spec)
    per_layer = [linear_modules(layer, f"{spec.layers_path}.{i}.") for i, layer in enumerate(layers)]
    own = config.method_class.layer_targets(config, model)
    if own is not None:
        per_layer = [{name: module for name, module in layer.items()
                      if name[len(f"{spec.layers_path}.{i}."):] in own} for i, layer in enumerate(per_layer)]
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


def targeted_numel(model: nn.Module, config) -> int:
    """Weights of the Linears ``config`` targets in the model as it is now."""
    per_layer, head = select_targets(model, config)
    return sum(module.weight.numel() for layer in [*per_layer, head] for module in layer.values())
