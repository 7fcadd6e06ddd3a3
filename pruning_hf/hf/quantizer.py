"""pruning_hf as a transformers "quantization" method, so stock ``from_pretrained`` reloads what it saves.

``import pruning_hf`` registers :class:`PruningHfConfig` and :class:`PruningHfQuantizer` under the
``quant_method`` ``"pruning_hf"`` with ``transformers.quantizers``. One quant_method carries independent
optional *features*, each a keyword of :class:`PruningHfConfig` that is ``None`` when unused::

    "quantization_config": {"quant_method": "pruning_hf",
                            "layer_shapes": {"3": {"intermediate_size": 1228, "num_attention_heads": 6}},
                            "compression": {"format": "pruning_hf.sparse-v1", "nm": [2, 4], ...}}

``layer_shapes`` (structured pruning): per layer index, the widths that differ from the config. Widths
shared by every layer go into the stock config instead (smaller ``intermediate_size`` / ``ffn_dim``, fewer
heads with an explicit ``head_dim``), which plain transformers loads; only widths that differ per layer
(adaptive allocation) or that a family's config cannot state (OPT derives ``head_dim`` from the head
count; Gemma3 refuses a head count that does not divide ``hidden_size``) need this feature. The quantizer
resizes those layers of the empty model before the weights load, so the reloaded model is bit-identical,
and keeps the feature in the config so that saving the model again keeps the shapes.

``compression`` (``save_pretrained(dir, compress=True)``): pruned weights are stored as values + bitmask
or N:M indices (:mod:`pruning_hf.sparsity.compression`). A weight conversion of the quantizer turns every
``*.weight`` with its ``*.weight_bitmask`` / ``*.weight_nm_index`` companion back into the dense weight,
in the model's dtype, on the device the weight goes to (disk offload included). The loaded model is a
plain dense float model; its config no longer claims compression, so saving it again writes dense
weights unless ``compress=True`` is asked again.

Without pruning_hf, transformers warns ``Unknown quantization type, got pruning_hf``, skips the quantizer
and then stops with a size-mismatch error (checkpoint tensors differ from the config's shapes): it never
runs a model with silently re-initialised weights.

Extension point: to add a feature, add its keyword and check to ``PruningHfConfig.__init__`` and its name
to ``FEATURES``, and handle it in the quantizer (``_process_model_before_weight_loading`` changes the empty
model; load operations change loaded tensors). A checkpoint using a feature this version does not know
fails to load with an error asking to upgrade pruning_hf.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from torch import nn
from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..models.architectures import decoder_layers, get_architecture
from ..models.shrink import layer_shape, resize_layer
from ..sparsity.compression import BITMASK_SUFFIX, FORMAT, NM_INDEX_SUFFIX, decompress_weight

__all__ = ["QUANT_METHOD", "PruningHfConfig", "PruningHfQuantizer", "store_layer_shapes", "apply_layer_shapes",
           "set_saved_feature"]

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


def _check_compression(compression: Any) -> dict | None:
    if not compression:
        return None
    if not isinstance(compression, dict) or compression.get("format") != FORMAT:
        raise ValueError(f"compression={compression!r} is not a pruning_hf compression record "
                         f"(expected format {FORMAT!r}); upgrade pruning_hf if the checkpoint is newer")
    nm = compression.get("nm")
    if nm is not None and not (isinstance(nm, (list, tuple)) and len(nm) == 2 and 1 <= nm[0] < nm[1] <= 256):
        raise ValueError(f"compression['nm'] must be [n, m] with 1 <= n < m <= 256, got {nm!r}")
    return dict(compression)


class PruningHfConfig(QuantizationConfigMixin):
    """What pruning_hf must do when a checkpoint loads; each feature is optional (``None``: unused).

    Args:
        layer_shapes: ``{layer index: {field: width}}`` for layers whose widths differ from the config
            (fields: ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``).
        compression: how pruned weights are stored (:func:`pruning_hf.compression.compress_checkpoint`
            writes it): ``{"format": ..., "nm": [n, m] or None, "compressed_weights": count}``.
    """

    FEATURES = ("layer_shapes", "compression")

    def __init__(self, layer_shapes: dict | None = None, compression: dict | None = None, **kwargs: Any) -> None:
        kwargs.pop("quant_method", None)
        if kwargs:
            raise ValueError(f"this checkpoint uses pruning_hf feature(s) {sorted(kwargs)} that this pruning_hf "
                             f"version does not know (known: {list(self.FEATURES)}); upgrade pruning_hf")
        self.quant_method = QUANT_METHOD
        self.layer_shapes = _check_layer_shapes(layer_shapes)
        self.compression = _check_compression(compression)

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, feature) is None for feature in self.FEATURES)

    def to_dict(self) -> dict[str, Any]:
        """``quant_method`` and the features in use (unused ones are left out of config.json)."""
        return {"quant_method": QUANT_METHOD, **{
            name: copy.deepcopy(getattr(self, name)) for name in self.FEATURES if getattr(self, name) is not None}}


class SparseDecompress(ConversionOps):
    """Weight conversion: a compressed pruned weight (values + bitmask / N:M indices) -> the dense weight."""

    def __init__(self, hf_quantizer: "PruningHfQuantizer") -> None:
        self.hf_quantizer = hf_quantizer  # marks the op as a load op: tensors arrive in their stored dtype

    def convert(self, input_dict, source_patterns, target_patterns, full_layer_name=None, model=None, **kwargs):
        target = model.get_parameter(full_layer_name)  # still on the meta device: shape and dtype
        stored = {pattern.removeprefix("weight"): value[0] if isinstance(value, list) else value
                  for pattern, value in input_dict.items()}
        nm = self.hf_quantizer.quantization_config.compression.get("nm")
        dense = decompress_weight(stored, target.shape, tuple(nm) if nm else None)
        return {full_layer_name: dense.to(target.dtype)}


class PruningHfQuantizer(HfQuantizer):
    """Applies a :class:`PruningHfConfig` while ``from_pretrained`` builds the model."""

    requires_calibration = False

    def _process_model_before_weight_loading(self, model, **kwargs):
        if self.quantization_config.layer_shapes:
            apply_layer_shapes(model, self.quantization_config.layer_shapes)
        return model

    @property
    def serialized_names(self) -> dict[str, list[str]]:
        """Checkpoint names that make up one ``weight`` (transformers collects them for the conversion)."""
        if not self.quantization_config.compression:
            return {}
        return {"weight": ["weight", "weight" + BITMASK_SUFFIX, "weight" + NM_INDEX_SUFFIX]}

    def get_load_operations(self) -> dict:
        return {"deserialize": SparseDecompress} if self.quantization_config.compression else {}

    def postprocess_model(self, model, **kwargs):
        """The weights are plain dense floats now: do not mark the model quantized or compressed.

        The config object stays while other features remain (layer shapes), so re-saving keeps them.
        """
        config = copy.deepcopy(self.quantization_config)
        self.remove_quantization_config(model)
        config.compression = None
        if not config.is_empty:
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


def check_quantization_config(config, why: str = "compressing a quantized model is not supported: "
                                                           "save it with compress=False") -> None:
    """Raise ValueError when ``config`` carries another method's quantization_config (pruning_hf cannot add its own)."""
    current = getattr(config, "quantization_config", None)
    method = current.get("quant_method") if isinstance(current, dict) else getattr(current, "quant_method", None)
    if current is not None and method != QUANT_METHOD:
        raise ValueError(f"the model carries a {method!r} quantization_config; pruning_hf cannot add its own "
                         f"({why})")


def set_saved_feature(folder: str | os.PathLike, feature: str, value: Any) -> None:
    """Set one feature of the ``pruning_hf`` quantization_config in a saved ``config.json``."""
    path = Path(folder) / "config.json"
    data = json.loads(path.read_text())
    current = data.get("quantization_config") or {"quant_method": QUANT_METHOD}
    if current.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"{path} carries a {current.get('quant_method')!r} quantization_config; "
                         "pruning_hf cannot add its own")
    checked = PruningHfConfig(**{**current, feature: value})
    data["quantization_config"] = checked.to_dict()
    if checked.is_empty:
        del data["quantization_config"]
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


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
    check_quantization_config(config, "structured pruning of quantized models is not supported: load it unquantized")
    current = getattr(config, "quantization_config", None)
    if current is None and value is None:
        return
    features = current if isinstance(current, dict) else current.to_dict() if current is not None else {}
    updated = PruningHfConfig(**{**features, feature: value})
    if updated.is_empty:
        if hasattr(config, "quantization_config"):
            del config.quantization_config
    else:
        config.quantization_config = updated
