"""The sequential pruning engine: calibration capture, statistics hooks, the per-layer loop, the report.

``prune_model(model, config, windows)`` is the whole pipeline on a loaded model (see :mod:`.loop`);
:func:`pruning_hf.prune` wraps it for Hugging Face models (config bookkeeping, save / push methods).
"""

from .loop import prune_model
from .report import LayerRecord, NonFiniteError, PruningReport
from .targets import check_targets, select_targets

__all__ = ["prune_model", "PruningReport", "LayerRecord", "NonFiniteError", "select_targets", "check_targets"]
