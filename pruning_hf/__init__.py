"""pruning_hf: prune Hugging Face causal LMs without retraining, and measure what you traded."""

__version__ = "0.1.0"

from .config import CalibrationConfig, PruningConfig  # noqa: E402
from .engine import PruningReport  # noqa: E402
from .iterative import IterativeResult, iterative_prune  # noqa: E402
from .methods import available_methods  # noqa: E402
from .modeling import AutoPrunedModel, prune  # noqa: E402

__all__ = ["AutoPrunedModel", "PruningConfig", "CalibrationConfig", "PruningReport", "prune",
           "available_methods", "iterative_prune", "IterativeResult", "__version__"]
