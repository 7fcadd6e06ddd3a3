"""pruning_hf: prune Hugging Face causal LMs without retraining, and measure what you traded.

The public API; the layers below it are described in the README's "Architecture" section.
"""

__version__ = "0.1.0"

from .config import CalibrationConfig, PruningConfig  # noqa: E402
from .engine import PruningReport  # noqa: E402
from .evaluation import EnergyTracker, EvaluationConfig, EvaluationReport, evaluate_model  # noqa: E402
from .hf import quantizer as _quantizer  # noqa: E402,F401  (registers the "pruning_hf" loader with transformers)
from .hf.auto import AutoPrunedModel  # noqa: E402
from .hf.kernels import enable_2to4_kernels  # noqa: E402
from .hf.pruning import prune, prune_and_compare  # noqa: E402
from .methods import available_methods  # noqa: E402
from .workflows.compare import compare_models  # noqa: E402
from .workflows.iterative import IterativeResult, iterative_prune  # noqa: E402
from .workflows.recipes import Recipe  # noqa: E402
from .workflows.sweep import sweep  # noqa: E402

__all__ = ["AutoPrunedModel", "PruningConfig", "CalibrationConfig", "PruningReport", "prune",
           "available_methods", "__version__", "Recipe", "sweep", "evaluate_model", "compare_models",
           "EvaluationConfig", "EvaluationReport", "EnergyTracker", "prune_and_compare",
           "enable_2to4_kernels", "iterative_prune", "IterativeResult"]
