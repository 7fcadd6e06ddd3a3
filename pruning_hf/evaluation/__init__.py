"""Measuring models, never pruning or loading them: quality, efficiency, energy, and the report.

* :class:`EvaluationConfig` (:mod:`.settings`): the one settings class of every evaluation;
* :class:`EvaluationSession` / :func:`evaluate_model` (:mod:`.session`): measure in-memory models on
  identical data;
* :class:`EvaluationReport` (:mod:`.report`): the one result schema (JSON, markdown, flat metrics).

Quality metrics are `evaluate` modules shipped in ``metrics/`` and loaded by path
(:func:`load_metric`), so no Hub access is needed.
"""

from .energy import EnergyTracker
from .modules import load_metric
from .perplexity import perplexity, text_perplexity
from .report import EvaluationReport
from .session import EvaluationData, EvaluationSession, evaluate_model, prepare_evaluation
from .settings import EvaluationConfig

__all__ = ["EvaluationConfig", "EvaluationReport", "EvaluationSession", "EvaluationData", "evaluate_model",
           "prepare_evaluation", "EnergyTracker", "perplexity", "text_perplexity", "load_metric"]
