"""pruning_hf as a transformers "quantization" method, so stock ``from_pretrained`` reloads what it saves.

Structured pruning with the same widths in every layer writes a stock config (smaller
``intermediate_size`` / ``ffn_dim``, fewer heads with an explicit ``head_dim``) that plain transformers
loads. Widths that differ per layer (adaptive allocation), or that a family's config cannot state
(OPT derives ``head_dim`` from the head count; Gemma3 refuses a head count that does not divide
``hidden_size``), are written into ``config.json`` as::

    "quantization_config": {"quant_method": "pruning_hf",
                            "layer_shapes": {"3": {"intermediate_size": 1228, "num_attention_heads": 6, ...}}}

listing, per layer index, only the fields that differ from the config. ``import pruning_hf`` registers
:class:`PruningHfConfig` and :class:`PruningHfQuantizer` with ``transformers.quantizers``; a stock
``AutoModelForCausalLM.from_pretrained(folder)`` then resizes those layers of the empty model before
the weights load, so the reloaded model is bit-identical. Without pruning_hf, transformers skips the
unknown ``quant_method`` with a warning, finds checkpoint tensors whose shapes differ from the
config's, and raises (``ignore_mismatched_sizes=False`` is its default): it never re-initialises
weights silently. A loaded model is a plain float model (``.float()``, ``.to(dtype)``, training all
work); it keeps the config object so that saving it again keeps the shapes.

Extension point: one ``quant_method`` ("pruning_hf") carries independent optional *features*, each a
keyword of :class:`PruningHfConfig` that is ``None`` when unused (today ``layer_shapes``; compressed
sparse weights will add ``compression``). To add one: add the keyword and its check to
``PruningHfConfig.__init__`` and its name to ``FEATURES``, and handle it in the quantizer's
``_process_model_before_weight_loading`` (change the empty model) or ``_process_model_after_weight_loading``
/ weight conversions (change loaded tensors). A checkpoint that uses a feature this version does not
know fails to load with an error asking to upgrade pruning_hf.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from .architectures import decoder_layers, get_architecture
from .shrink import layer_shape, resize_layer

__all__ = ["QUANT_METHOD", "PruningHfConfig", "PruningHfQuantizer", "store_layer_shapes", "apply_layer_shapes"]

QUANT_METHOD = "pruning_hf"


def _check_layer_shapes(layer_shapes: Any) -> dict[str, dict[str, int]] | None:
    if not layer_shapes:
        return None
    if not isinstance(layer_shapes, dict):
        raise ValueError(f"layer_shapes must map layer indices to shape dicts, got {type(layer_shapes).__name__}")
    checked = {}
    for index, shape in layer_shapes.items():
        if not str(index).isdigit() or not isinstance(shape, dict) or not shape or not all(
                isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in shape.values()):
            raise ValueError(f"layer_shapes[{index!r}] = {shape!r} is not a dict of positive widths for a layer index")
        checked[str(int(index))] = dict(shape)
    return checked


class PruningHfConfig(QuantizationConfigMixin):
    """What pruning_hf must do when a checkpoint loads; each feature is optional (``None``: unused).

    Args:
        layer_shapes: ``{layer index: {field: width}}`` for layers whose widths differ from the config
            (fields: ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``).
    """

    FEATURES = ("layer_shapes",)

    def __init__(self, layer_shapes: dict | None = None, **kwargs: Any) -> None:
        from . import __version__

        kwargs.pop("quant_method", None)
        if kwargs:
            raise ValueError(f"this checkpoint uses pruning_hf feature(s) {sorted(kwargs)} that pruning_hf "
                             f"{__version__} does not know (known: {list(self.FEATURES)}); upgrade pruning_hf")
        self.quant_method = QUANT_METHOD
        self.layer_shapes = _check_layer_shapes(layer_shapes)

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, feature) is None for feature in self.FEATURES)


class PruningHfQuantizer(HfQuantizer):
    """Applies a :class:`PruningHfConfig` while ``from_pretrained`` builds the model."""

    requires_calibration = False

    def _process_model_before_weight_loading(self, model, **kwargs):
        if self.quantization_config.layer_shapes:
            apply_layer_shapes(model, self.quantization_config.layer_shapes)
        return model

    def postprocess_model(self, model, **kwargs):
        """The weights are plain floats: do not mark the model quantized, but keep the config for re-saving."""
        config = self.quantization_config
        self.remove_quantization_config(model)
        model.config.quantization_config = config
        return model

    def is_serializable(self):
        return True

    @property
    def is_trainable(self):
        return True


def _register() -> None:
    """Register once (re-importing the module, e.g. with importlib.reload, must not fail)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(PruningHfConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(PruningHfQuantizer)


_register()


def apply_layer_shapes(model: nn.Module, layer_shapes: dict[str, dict[str, int]]) -> None:
    """Resize the listed decoder layers of ``model`` (normally still on the meta device)."""
    layers = decoder_layers(model)
    spec = get_architecture(model)
    for index, shape in layer_shapes.items():
        if int(index) >= len(layers):
            raise ValueError(f"layer_shapes names layer {index}, but the model has {len(layers)} decoder layers")
        resize_layer(layers[int(index)], spec, shape)


def _uniform_updates(spec, shapes: list[dict[str, int]], head_dim: int | None) -> list[dict[str, int]]:
    """Stock-config updates (one dict for the MLP, one for attention) for widths every layer shares."""
    updates = []
    if spec.mlp is not None:
        widths = {shape["intermediate_size"] for shape in shapes}
        if len(widths) == 1:
            updates.append({spec.mlp.size_key: widths.pop()})
    attention = spec.attention
    if attention is not None and attention.head_dim_key and attention.kv_heads_key:
        heads = {(shape["num_attention_heads"], shape["num_key_value_heads"]) for shape in shapes}
        if len(heads) == 1:
            num_q, num_kv = heads.pop()
            updates.append({"num_attention_heads": num_q, attention.kv_heads_key: num_kv,
                            attention.head_dim_key: head_dim})
    return updates


def _config_value(spec, config, key: str) -> int:
    if key == "intermediate_size":
        return getattr(config, spec.mlp.size_key)
    if key == "num_key_value_heads":
        # MHA families (OPT) have no such field: one K/V head per query head
        return getattr(config, spec.attention.kv_heads_key) if spec.attention.kv_heads_key else config.num_attention_heads
    return getattr(config, key)


def store_layer_shapes(model: nn.Module) -> dict[str, dict[str, int]] | None:
    """Make ``model.config`` describe the model's current layer widths; return the per-layer exceptions.

    Widths shared by all layers go into the stock config when the family can state them and the
    config class accepts them (its own validation). Layers that still differ from the config are listed
    in ``config.quantization_config.layer_shapes`` (a :class:`PruningHfConfig`).
    """
    spec = get_architecture(model)
    config = model.config
    layers = decoder_layers(model, spec)
    shapes = [layer_shape(layer, spec) for layer in layers]
    head_dim = layers[0].get_submodule(spec.attention.path).head_dim if spec.attention and len(layers) else None
    for update in _uniform_updates(spec, shapes, head_dim) if shapes else []:
        if all(getattr(config, key, None) == value for key, value in update.items()):
            continue
        trial = copy.deepcopy(config)
        for key, value in update.items():
            setattr(trial, key, value)
        try:
            trial.validate()
        except Exception:  # the config class refuses these widths (e.g. heads must divide hidden_size)
            continue
        for key, value in update.items():
            setattr(config, key, value)
    exceptions = {}
    for index, shape in enumerate(shapes):
        differing = {key: value for key, value in shape.items() if value != _config_value(spec, config, key)}
        if differing:
            exceptions[str(index)] = differing
    _set_feature(config, "layer_shapes", exceptions or None)
    return exceptions or None


def _set_feature(config, feature: str, value: Any) -> None:
    """Set one PruningHfConfig feature on a model config, creating or dropping the quantization_config."""
    current = getattr(config, "quantization_config", None)
    if isinstance(current, dict) and current.get("quant_method") == QUANT_METHOD:
        current = PruningHfConfig(**current)
    if current is not None and not isinstance(current, PruningHfConfig):
        method = current.get("quant_method") if isinstance(current, dict) else getattr(current, "quant_method", "?")
        raise ValueError(f"the model carries a {method!r} quantization_config; pruning_hf cannot add its own "
                         "(structured pruning of quantized models is not supported: load it unquantized)")
    if current is None:
        if value is None:
            return
        current = PruningHfConfig()
    setattr(current, feature, _check_layer_shapes(value) if feature == "layer_shapes" else value)
    if current.is_empty:
        if hasattr(config, "quantization_config"):
            del config.quantization_config
    else:
        config.quantization_config = current
