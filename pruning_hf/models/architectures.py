"""Per-family knowledge: where the decoder layers live and how their Linear layers are coupled.

Only what cannot be discovered generically lives here. Decoder layers of unknown decoder-only models
are found with optimum's block discovery (``model.layers``, ``model.decoder.layers``, ``transformer.h``
...); structured pruning additionally needs the attention / MLP layout of a known family.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "AttentionSpec", "MLPSpec", "ArchitectureSpec", "UnsupportedModelError", "FAMILIES",
    "get_architecture", "decoder_layers", "linear_modules", "is_linear", "weight_matrix", "supported_model_types",
    "context_length", "PER_LAYER_CONFIG_KEYS", "SubBlock", "SublayerLayout", "sublayer_layout",
]

logger = logging.getLogger(__name__)
_WARNED_GENERIC: set[str] = set()  # model types already warned about (get_architecture runs many times a run)


class UnsupportedModelError(ValueError):
    """The model is not a decoder-only causal LM that pruning_hf knows how to walk."""


@dataclass(frozen=True)
class AttentionSpec:
    """Attention projections, relative to a decoder layer (``path`` is the attention submodule).

    Query head ``h`` reads key/value head ``h // (num_heads // num_kv_heads)`` (the layout of
    transformers' ``repeat_kv``). The config keys say how a stock config states head counts:
    ``kv_heads_key=None`` means every query head has its own K/V head (MHA); ``head_dim_key=None``
    means the family derives ``head_dim = hidden_size / num_heads``, so fewer heads cannot be written
    in its stock config. ``bias_switch`` is a config flag that adds biases to all projections.
    """

    path: str
    q: str
    k: str
    v: str
    o: str
    kv_heads_key: str | None = "num_key_value_heads"
    head_dim_key: str | None = "head_dim"
    bias_switch: str | None = None


@dataclass(frozen=True)
class MLPSpec:
    """Feed-forward projections: ``inputs`` produce the intermediate neurons, ``output`` consumes them."""

    path: str
    inputs: tuple[str, ...]
    output: str
    size_key: str  # config attribute holding the intermediate width
    bias_switch: str | None = None  # config flag that adds biases to all MLP projections


@dataclass(frozen=True)
class ArchitectureSpec:
    family: str
    model_types: tuple[str, ...]
    layers_path: str
    attention: AttentionSpec | None = None
    mlp: MLPSpec | None = None


_LLAMA_ATTENTION = AttentionSpec("self_attn", "q_proj", "k_proj", "v_proj", "o_proj", bias_switch="attention_bias")
_GATED_MLP = MLPSpec("mlp", ("gate_proj", "up_proj"), "down_proj", "intermediate_size", bias_switch="mlp_bias")

#: config lists with one entry per decoder layer, filtered when layers are removed
PER_LAYER_CONFIG_KEYS = ("layer_types", "no_rope_layers")

FAMILIES: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec(
        "opt", ("opt",), "model.decoder.layers",
        AttentionSpec("self_attn", "q_proj", "k_proj", "v_proj", "out_proj", kv_heads_key=None, head_dim_key=None),
        MLPSpec("", ("fc1",), "fc2", "ffn_dim"),
    ),
    ArchitectureSpec(
        "llama", ("llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2"), "model.layers",
        _LLAMA_ATTENTION, _GATED_MLP,
    ),
    ArchitectureSpec("gemma3", ("gemma3_text", "gemma2", "gemma"), "model.layers", _LLAMA_ATTENTION,
                     MLPSpec("mlp", ("gate_proj", "up_proj"), "down_proj", "intermediate_size")),
    # GPT-2 fuses q/k/v into one Conv1D (c_attn): unstructured pruning only.
    ArchitectureSpec("gpt2", ("gpt2",), "transformer.h", None, MLPSpec("mlp", ("c_fc",), "c_proj", "n_inner")),
)


@dataclass(frozen=True)
class SubBlock:
    """One residual sub-block of a decoder layer (attention or MLP), module names relative to the layer.

    With ``h`` the sub-block's input (the residual stream), the layer computes
    ``after(h + post(output(core(pre(h)))))``: the ``inputs`` Linears read ``pre(h)`` (identity when
    ``pre`` is None) and ``core`` produces the ``output`` Linear's input. ``core=None`` means the decoder
    layer's own forward from ``h`` up to ``output`` (the attention core, with the layer's masks and
    rotary embeddings); a module name means that module called on ``pre(h)`` up to ``output``;
    ``activation`` names an attribute of the layer when the family writes its MLP inline
    (``activation(inputs[0](pre(h)))``, OPT). ``post`` / ``after``: norms before / after the residual add.
    """

    inputs: tuple[str, ...]
    output: str
    pre: str | None = None
    post: str | None = None
    after: str | None = None
    core: str | None = None
    activation: str | None = None


@dataclass(frozen=True)
class SublayerLayout:
    """How a decoder layer splits into its attention sub-block, then its MLP sub-block."""

    attention: SubBlock
    mlp: SubBlock

    @property
    def linears(self) -> tuple[str, ...]:
        return tuple(name for block in (self.attention, self.mlp) for name in (*block.inputs, block.output))


_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
_LLAMA_LAYOUT = SublayerLayout(SubBlock(_QKV, "self_attn.o_proj", pre="input_layernorm"),
                               SubBlock(_GATE_UP, "mlp.down_proj", pre="post_attention_layernorm", core="mlp"))
#: model_type -> layout (OPT's depends on its config: see :func:`sublayer_layout`)
_LAYOUTS = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma"), _LLAMA_LAYOUT),
    **dict.fromkeys(("gemma2", "gemma3_text"), SublayerLayout(  # extra norms on both sub-block outputs
        SubBlock(_QKV, "self_attn.o_proj", pre="input_layernorm", post="post_attention_layernorm"),
        SubBlock(_GATE_UP, "mlp.down_proj", pre="pre_feedforward_layernorm", post="post_feedforward_layernorm",
                 core="mlp"))),
    "olmo2": SublayerLayout(SubBlock(_QKV, "self_attn.o_proj", post="post_attention_layernorm"),
                            SubBlock(_GATE_UP, "mlp.down_proj", post="post_feedforward_layernorm", core="mlp")),
    "gpt2": SublayerLayout(SubBlock(("attn.c_attn",), "attn.c_proj", pre="ln_1"),
                           SubBlock(("mlp.c_fc",), "mlp.c_proj", pre="ln_2", core="mlp")),
}


def sublayer_layout(model: nn.Module) -> SublayerLayout | None:
    """The sub-block layout of ``model``'s decoder layers, or None where it is not known (or the layers
    do not have the modules it names): such models run each layer whole."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type == "opt":  # do_layer_norm_before=False (OPT-350m): the norms follow the residual adds
        before = getattr(config, "do_layer_norm_before", True)
        norm = (lambda name: {"pre": name}) if before else (lambda name: {"after": name})
        layout = SublayerLayout(
            SubBlock(_QKV, "self_attn.out_proj", **norm("self_attn_layer_norm")),
            SubBlock(("fc1",), "fc2", activation="activation_fn", **norm("final_layer_norm")))
    elif model_type == "gpt2" and getattr(config, "add_cross_attention", False):
        return None
    else:
        layout = _LAYOUTS.get(model_type)
    layers = decoder_layers(model) if layout is not None else None
    if not layers:
        return None
    block_modules = [n for b in (layout.attention, layout.mlp) for n in (b.pre, b.post, b.after, b.core, b.activation)
                     if n]
    for layer in layers:
        if any(_resolve(layer, name) is None for name in (*layout.linears, *block_modules)):
            return None
    return layout


def supported_model_types() -> list[str]:
    return sorted(t for spec in FAMILIES for t in spec.model_types)


def _resolve(model: nn.Module, path: str) -> nn.Module | None:
    module = model
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def get_architecture(model: nn.Module) -> ArchitectureSpec:
    """The family spec of ``model``; a generic spec for other decoder-only models; else an error."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    supported = ", ".join(supported_model_types())
    if config is None or getattr(config, "is_encoder_decoder", False) or not hasattr(model, "get_output_embeddings") \
            or model.get_output_embeddings() is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} (model_type={model_type!r}) is not a decoder-only causal language model; "
            f"pruning_hf prunes *ForCausalLM models, known families: {supported}")
    for spec in FAMILIES:
        if model_type in spec.model_types and isinstance(_resolve(model, spec.layers_path), nn.ModuleList):
            return spec
    from optimum.gptq.utils import get_block_name_with_pattern

    try:
        path = get_block_name_with_pattern(model)
    except ValueError:
        path = None
    if path is None or not isinstance(_resolve(model, path), nn.ModuleList):
        raise UnsupportedModelError(
            f"cannot find the decoder layers of {type(model).__name__} (model_type={model_type!r}); "
            f"supported model types: {supported}")
    if model_type not in _WARNED_GENERIC:  # once per model type and process, not at every look-up
        _WARNED_GENERIC.add(model_type)
        logger.warning("model_type=%r is not a known family; using generic decoder-layer discovery (%s). "
                       "Unstructured, N:M and depth pruning work; structured pruning needs a known family.",
                       model_type, path)
    return ArchitectureSpec("generic", (model_type,), path)


def decoder_layers(model: nn.Module, spec: ArchitectureSpec | None = None) -> nn.ModuleList:
    spec = spec or get_architecture(model)
    return _resolve(model, spec.layers_path)


def is_linear(module: nn.Module) -> bool:
    """nn.Linear, or transformers' Conv1D (GPT-2), which is a Linear with a transposed weight."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_modules(module: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """``{qualified name: module}`` of every Linear-like submodule of ``module``."""
    return {f"{prefix}{name}": sub for name, sub in module.named_modules() if name and is_linear(sub)}


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as an ``(out_features, in_features)`` view (GPT-2's Conv1D stores it transposed)."""
    weight = module.weight
    return weight if isinstance(module, nn.Linear) else weight.t()


def context_length(config) -> int | None:
    """Longest sequence the model's positions allow (``None`` if the config does not say)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
