"""pruning_hf: prune Hugging Face causal LMs without retraining, and measure what you traded."""

__version__ = "0.1.0"

from . import hf_integration  # noqa: E402,F401  (registers the "pruning_hf" loader with transformers)
from .config import CalibrationConfig, PruningConfig  # noqa: E402
from .engine import PruningReport  # noqa: E402
from .evaluation.energy import EnergyTracker  # noqa: E402
from .evaluation.report import (  # noqa: E402
    EvaluationConfig, EvaluationReport, compare_models, evaluate_model, prune_and_compare)
from .kernels import enable_2to4_kernels  # noqa: E402
from .iterative import IterativeResult, iterative_prune  # noqa: E402
from .methods import available_methods  # noqa: E402
from .modeling import AutoPrunedModel, prune  # noqa: E402
from .recipes import Recipe  # noqa: E402
from .sweep import sweep  # noqa: E402

__all__ = ["AutoPrunedModel", "PruningConfig", "CalibrationConfig", "PruningReport", "prune",
           "available_methods", "__version__", "Recipe", "sweep", "evaluate_model", "compare_models",
           "EvaluationConfig", "EvaluationReport", "EnergyTracker", "prune_and_compare",
           "enable_2to4_kernels", "iterative_prune", "IterativeResult"]
