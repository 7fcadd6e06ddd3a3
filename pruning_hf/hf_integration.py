"""pruning_hf as a transformers "quantization" method, so stock ``from_pretrained`` reloads what it saves.

``import pruning_hf`` registers :class:`PruningHfConfig` and :class:`PruningHfQuantizer` under the
``quant_method`` ``"pruning_hf"`` with ``transformers.quantizers``. One quant_method carries
independent optional *features*, each a keyword of :class:`PruningHfConfig` that is ``None`` when
unused. This module implements ``compression``: a checkpoint written by
``save_pretrained(dir, compress=True)`` stores pruned weights as values + bitmask or N:M indices
(:mod:`pruning_hf.compression`) and records in ``config.json``::

    "quantization_config": {"quant_method": "pruning_hf",
                            "compression": {"format": "pruning_hf.sparse-v1", "nm": [2, 4], ...}}

While loading, a weight conversion of the quantizer turns every ``*.weight`` with its
``*.weight_bitmask`` / ``*.weight_nm_index`` companion back into the dense weight, in the model's
dtype, on the device the weight goes to (disk offload included). The loaded model is a plain dense
float model, bit-identical to the one saved; its config no longer claims compression, so saving it
again writes a dense checkpoint unless ``compress=True`` is asked again.

Without pruning_hf, transformers warns ``Unknown quantization type, got pruning_hf``, skips the
quantizer and then stops with a size-mismatch error (the compressed tensors do not have the
weights' shapes): it never runs a model with silently re-initialised weights.

To add a feature: a keyword and its check in ``PruningHfConfig.__init__``, its name in
``FEATURES``, and its handling in the quantizer. A checkpoint using a feature this version does not
know fails to load with an error asking to upgrade pruning_hf.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from .compression import BITMASK_SUFFIX, FORMAT, NM_INDEX_SUFFIX, decompress_weight

__all__ = ["QUANT_METHOD", "PruningHfConfig", "PruningHfQuantizer", "set_saved_feature"]

QUANT_METHOD = "pruning_hf"


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
        compression: how pruned weights are stored (:func:`pruning_hf.compression.compress_checkpoint`
            writes it): ``{"format": ..., "nm": [n, m] or None, "compressed_weights": count}``.
    """

    FEATURES = ("compression",)

    def __init__(self, compression: dict | None = None, **kwargs: Any) -> None:
        from . import __version__

        kwargs.pop("quant_method", None)
        if kwargs:
            raise ValueError(f"this checkpoint uses pruning_hf feature(s) {sorted(kwargs)} that pruning_hf "
                             f"{__version__} does not know (known: {list(self.FEATURES)}); upgrade pruning_hf")
        self.quant_method = QUANT_METHOD
        self.compression = _check_compression(compression)

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, feature) is None for feature in self.FEATURES)


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

        The config object stays when other features remain, so that re-saving keeps them.
        """
        config = self.quantization_config
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


def check_quantization_config(config) -> None:
    """Raise ValueError when ``config`` carries another method's quantization_config (pruning_hf cannot add its own)."""
    current = getattr(config, "quantization_config", None)
    method = current.get("quant_method") if isinstance(current, dict) else getattr(current, "quant_method", None)
    if current is not None and method != QUANT_METHOD:
        raise ValueError(f"the model carries a {method!r} quantization_config; pruning_hf cannot add its own "
                         "(compressing a quantized model is not supported: save it with compress=False)")


def set_saved_feature(folder: str | os.PathLike, feature: str, value: Any) -> None:
    """Set one feature of the ``pruning_hf`` quantization_config in a saved ``config.json``."""
    path = Path(folder) / "config.json"
    data = json.loads(path.read_text())
    current = data.get("quantization_config") or {"quant_method": QUANT_METHOD}
    if current.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"{path} carries a {current.get('quant_method')!r} quantization_config; "
                         "pruning_hf cannot add its own")
    checked = PruningHfConfig(**{**current, feature: value})
    data["quantization_config"] = {"quant_method": QUANT_METHOD, **{
        name: getattr(checked, name) for name in checked.FEATURES if getattr(checked, name) is not None}}
    if checked.is_empty:
        del data["quantization_config"]
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
