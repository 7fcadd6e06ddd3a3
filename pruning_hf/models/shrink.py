"""Physically remove structure from decoder layers: MLP neurons, attention heads / KV groups, whole layers.

Every function here keeps each weight's dtype and device, including ``meta``: the same code that
removes neurons from a loaded model also rebuilds a pruned checkpoint's per-layer shapes on the
empty model ``from_pretrained`` creates before the weights load (:mod:`pruning_hf.hf.quantizer`).
(``transformers.pytorch_utils.prune_linear_layer`` does the same selection but always returns a
float32 Linear, which would silently upcast a bf16 model.)

Shapes of a layer are described by a small dict with the stock config's names::

    {"intermediate_size": 1228, "num_attention_heads": 6, "num_key_value_heads": 2}
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .architectures import PER_LAYER_CONFIG_KEYS, ArchitectureSpec, decoder_layers, weight_matrix

__all__ = [
    "select_linear", "block_indices", "mlp_linears", "attention_linears", "attention_geometry", "keep_mlp_neurons",
    "keep_attention_heads", "check_kv_grouping", "layer_shape", "resize_layer", "add_zero_bias",
    "bias_switch_works", "turn_on_biases", "drop_layers", "head_units", "head_indices",
    "output_norm",
]


@torch.no_grad()
def select_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping outputs ``index`` (``dim=0``: weight rows and bias) or inputs (``dim=1``)."""
    index = index.to(linear.weight.device)
    weight = linear.weight.index_select(dim, index)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None, device="meta",
                    dtype=weight.dtype)
    new.weight = nn.Parameter(weight.clone(), requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        bias = linear.bias.index_select(0, index) if dim == 0 else linear.bias
        new.bias = nn.Parameter(bias.clone(), requires_grad=linear.bias.requires_grad)
    return new


def _replace(parent: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    setattr(parent, name, select_linear(getattr(parent, name), index, dim))


def mlp_linears(layer: nn.Module, spec: ArchitectureSpec) -> tuple[list[nn.Linear], nn.Linear]:
    """``(input projections, output projection)`` of a layer's MLP (fc1 / gate+up, and fc2 / down)."""
    mlp = layer.get_submodule(spec.mlp.path)
    return [getattr(mlp, name) for name in spec.mlp.inputs], getattr(mlp, spec.mlp.output)


def attention_linears(layer: nn.Module, spec: ArchitectureSpec) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """``(q, k, v, o)`` projections of a layer's attention."""
    attention = layer.get_submodule(spec.attention.path)
    names = (spec.attention.q, spec.attention.k, spec.attention.v, spec.attention.o)
    return tuple(getattr(attention, name) for name in names)


def attention_geometry(layer: nn.Module, spec: ArchitectureSpec) -> tuple[int, int, int]:
    """``(num query heads, num key/value heads, head_dim)`` read from the projection shapes."""
    head_dim = layer.get_submodule(spec.attention.path).head_dim
    q, k, _, _ = attention_linears(layer, spec)
    return q.out_features // head_dim, k.out_features // head_dim, head_dim


def block_indices(blocks: torch.Tensor, size: int) -> torch.Tensor:
    """Indices ``(len(blocks) * size,)`` of whole blocks of ``size`` consecutive rows or columns (heads)."""
    return (blocks.view(-1, 1) * size + torch.arange(size, device=blocks.device)).reshape(-1)


def output_norm(layer: nn.Module, kind: str) -> nn.Module | None:
    """The norm between the output projection of ``kind`` ("mlp" / "heads") and the residual stream (Gemma2/3 and
    OLMo2's sandwich norms), or None."""
    if kind == "mlp":
        return getattr(layer, "post_feedforward_layernorm", None)
    if hasattr(layer, "pre_feedforward_layernorm"):  # then post_attention_layernorm follows the attention
        return getattr(layer, "post_attention_layernorm", None)
    return None


def head_units(num_q: int, num_kv: int, head_dim: int) -> tuple[int, int]:
    """``(units, output-projection columns per unit)`` of a layer's attention: KV groups, or query heads when
    there is one group (multi-query attention: removing it would remove attention)."""
    if num_kv > 1:
        return num_kv, num_q // num_kv * head_dim
    return num_q, head_dim


def head_indices(kept: torch.Tensor, num_q: int, num_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and K/V heads to keep for kept units (see :func:`head_units`)."""
    if num_kv > 1:
        return block_indices(kept, num_q // num_kv), kept
    return kept, torch.zeros(1, dtype=torch.long)


def check_kv_grouping(q_heads: torch.Tensor, kv_heads: torch.Tensor, num_q: int, num_kv: int) -> None:
    """Raise ValueError unless keeping ``q_heads`` / ``kv_heads`` leaves every query head with its own K/V head.

    After pruning, query head ``i`` reads K/V head ``i // (len(q_heads) // len(kv_heads))``; that must
    be the (renumbered) K/V head it read before, so groups stay whole and equally sized.
    """
    group, kept = num_q // num_kv, len(q_heads)
    if len(kv_heads) == 0 or kept == 0 or kept % len(kv_heads):
        raise ValueError(f"cannot keep {kept} query heads with {len(kv_heads)} key/value heads: "
                         "a layer keeps at least one head, and the same number of query heads per K/V head")
    new_group = kept // len(kv_heads)
    position = {int(head): i for i, head in enumerate(kv_heads.tolist())}
    for i, head in enumerate(q_heads.tolist()):
        if position.get(head // group) != i // new_group:
            raise ValueError(f"keeping query heads {q_heads.tolist()} with K/V heads {kv_heads.tolist()} would "
                             f"split a key/value group (query head {head} reads K/V head {head // group})")


def _set_head_counts(attention: nn.Module, num_q: int, num_kv: int) -> None:
    """Update the head-count attributes attention modules read in ``forward`` (names differ by family)."""
    for name, value in (("num_heads", num_q), ("num_attention_heads", num_q), ("num_key_value_heads", num_kv),
                        ("num_key_value_groups", num_q // num_kv)):
        if hasattr(attention, name):
            setattr(attention, name, value)


def keep_attention_heads(layer: nn.Module, spec: ArchitectureSpec, q_heads: torch.Tensor,
                         kv_heads: torch.Tensor) -> None:
    """Keep query heads ``q_heads`` and K/V heads ``kv_heads`` (sorted index tensors) of a layer, in place.

    q rows, k/v rows and o columns of removed heads are dropped; ``head_dim`` stays.
    """
    num_q, num_kv, head_dim = attention_geometry(layer, spec)
    check_kv_grouping(q_heads, kv_heads, num_q, num_kv)
    attention = layer.get_submodule(spec.attention.path)
    a = spec.attention
    q_rows, kv_rows = block_indices(q_heads, head_dim), block_indices(kv_heads, head_dim)
    _replace(attention, a.q, q_rows, 0)
    _replace(attention, a.k, kv_rows, 0)
    _replace(attention, a.v, kv_rows, 0)
    _replace(attention, a.o, q_rows, 1)
    _set_head_counts(attention, len(q_heads), len(kv_heads))


def keep_mlp_neurons(layer: nn.Module, spec: ArchitectureSpec, neurons: torch.Tensor) -> None:
    """Keep intermediate neurons ``neurons`` (sorted index tensor): input rows and output columns, in place."""
    mlp = layer.get_submodule(spec.mlp.path)
    for name in spec.mlp.inputs:
        _replace(mlp, name, neurons, 0)
    _replace(mlp, spec.mlp.output, neurons, 1)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(neurons)


def layer_shape(layer: nn.Module, spec: ArchitectureSpec) -> dict[str, int]:
    """The widths of one decoder layer, named like the stock config fields."""
    shape = {}
    if spec.mlp is not None:
        shape["intermediate_size"] = weight_matrix(mlp_linears(layer, spec)[1]).shape[1]  # Conv1D: transposed
    if spec.attention is not None:
        num_q, num_kv, _ = attention_geometry(layer, spec)
        shape["num_attention_heads"], shape["num_key_value_heads"] = num_q, num_kv
    return shape


def removed_units(before: list[dict[str, int]], after: list[dict[str, int]],
                  kinds: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Units removed of each pruned kind (``"mlp"``, ``"heads"``), summed over the layers, from their
    :func:`layer_shape` before and after: ``{unit: {"removed": n, "total": n}}``, ``unit`` one of
    ``mlp_neurons``, ``kv_groups``, ``query_heads`` (a layer with a single K/V head loses query heads) or
    ``attention_heads`` (multi-head attention, where a KV group is one head)."""
    counts: dict[str, dict[str, int]] = {}
    for old, new in zip(before, after):
        for kind in kinds:
            if kind == "mlp":
                unit, key = "mlp_neurons", "intermediate_size"
            elif old["num_key_value_heads"] == 1:
                unit, key = "query_heads", "num_attention_heads"
            elif old["num_attention_heads"] > old["num_key_value_heads"]:
                unit, key = "kv_groups", "num_key_value_heads"
            else:
                unit, key = "attention_heads", "num_attention_heads"
            count = counts.setdefault(unit, {"removed": 0, "total": 0})
            count["removed"] += old[key] - new[key]
            count["total"] += old[key]
    return counts


def resize_layer(layer: nn.Module, spec: ArchitectureSpec, shape: dict[str, int]) -> None:
    """Give a layer the widths in ``shape`` (keeping the first neurons / whole leading KV groups).

    Used on the empty (meta) model before a checkpoint's weights load, so only the shapes matter.
    """
    current = layer_shape(layer, spec)
    unknown = sorted(set(shape) - set(current))
    if unknown:
        raise ValueError(f"layer shape keys {unknown} do not apply to this model; it has {sorted(current)}")
    # index tensors on the CPU: from_pretrained builds the model under a default "meta" device
    if "intermediate_size" in shape and shape["intermediate_size"] != current["intermediate_size"]:
        if shape["intermediate_size"] > current["intermediate_size"]:
            raise ValueError(f"cannot widen a layer's MLP from {current['intermediate_size']} to "
                             f"{shape['intermediate_size']} neurons")
        keep_mlp_neurons(layer, spec, torch.arange(shape["intermediate_size"], device="cpu"))
    num_q = shape.get("num_attention_heads", current.get("num_attention_heads"))
    num_kv = shape.get("num_key_value_heads", current.get("num_key_value_heads"))
    if (num_q, num_kv) != (current.get("num_attention_heads"), current.get("num_key_value_heads")):
        old_group = current["num_attention_heads"] // current["num_key_value_heads"]
        if num_kv > current["num_key_value_heads"] or num_q % num_kv or num_q // num_kv > old_group:
            raise ValueError(f"cannot shape a layer with {current['num_attention_heads']} query / "
                             f"{current['num_key_value_heads']} key-value heads to {num_q} / {num_kv}")
        q_heads = torch.tensor([g * old_group + i for g in range(num_kv) for i in range(num_q // num_kv)],
                               device="cpu")
        keep_attention_heads(layer, spec, q_heads, torch.arange(num_kv, device="cpu"))


@torch.no_grad()
def add_zero_bias(linear: nn.Linear) -> None:
    """Give a bias-free Linear a zero bias (same dtype and device), so a removed part's mean can be folded in."""
    if linear.bias is None:
        weight = linear.weight
        linear.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device),
                                   requires_grad=weight.requires_grad)


def bias_switch_works(layer: nn.Module, config, switch: str | None, linears: list[str]) -> bool:
    """Whether turning on config flag ``switch`` makes a fresh layer of this class build biases on ``linears``.

    Checked by building one layer on the meta device, so a flag the family ignores is never trusted.
    """
    if switch is None or not hasattr(config, switch):
        return False
    probe_config = copy.deepcopy(config)
    setattr(probe_config, switch, True)
    try:
        with torch.device("meta"):
            probe = type(layer)(probe_config, 0)
    except Exception:  # a layer class with another constructor: do not guess
        return False
    return all(probe.get_submodule(name).bias is not None for name in linears)


def turn_on_biases(layers: nn.ModuleList, spec: ArchitectureSpec, config, kind: str) -> None:
    """Give every projection of ``kind`` ("mlp" / "heads") a bias (zeros where none) and set the config switch
    that builds them (``mlp_bias`` / ``attention_bias``)."""
    for layer in layers:
        inputs, output = mlp_linears(layer, spec) if kind == "mlp" else (attention_linears(layer, spec), None)
        linears = [*inputs, output] if output is not None else list(inputs)
        for linear in linears:
            add_zero_bias(linear)
    setattr(config, spec.mlp.bias_switch if kind == "mlp" else spec.attention.bias_switch, True)


def drop_layers(model: nn.Module, spec: ArchitectureSpec, keep: list[int]) -> None:
    """Keep decoder layers ``keep`` (sorted indices); update the config and every layer index.

    ``num_hidden_layers`` and per-layer config lists (``layer_types`` ...) follow; each remaining
    layer's modules get their new ``layer_idx`` (the KV cache slot they use).
    """
    layers = decoder_layers(model, spec)
    count = len(layers)
    if not keep or sorted(set(keep)) != list(keep) or keep[0] < 0 or keep[-1] >= count:
        raise ValueError(f"layers to keep must be sorted distinct indices in [0, {count}), at least one; got {keep}")
    kept = nn.ModuleList([layers[i] for i in keep])
    parent_path, _, name = spec.layers_path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, kept)
    config = model.config
    for key in PER_LAYER_CONFIG_KEYS:
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)) and len(values) == count:
            setattr(config, key, [values[i] for i in keep])
    config.num_hidden_layers = len(keep)
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
