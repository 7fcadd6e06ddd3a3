"""The quality metrics shipped as `evaluate` modules (``metrics/``), loaded by path: no Hub access needed.

They delegate to :mod:`.perplexity` and :mod:`.loglikelihood`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

__all__ = ["load_metric", "metric_info", "METRIC_MODULES"]

METRICS_DIR = Path(__file__).parent / "metrics"
METRIC_MODULES = ("perplexity", "multiple_choice", "last_word")


@lru_cache(maxsize=None)
def load_metric(name: str):
    """The shipped `evaluate` module ``name`` (one of :data:`METRIC_MODULES`), loaded by path, in memory."""
    import evaluate

    if name not in METRIC_MODULES:
        raise ValueError(f"unknown metric {name!r}; shipped metrics: {', '.join(METRIC_MODULES)}")
    return evaluate.load(str(METRICS_DIR / name / f"{name}.py"), keep_in_memory=True)


def metric_info(description: str, inputs: str, features: dict):
    """The ``evaluate.MetricInfo`` of a shipped metric: its docs and the ``datasets`` features it takes."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(description=description, citation="", inputs_description=inputs,
                               features=datasets.Features(features))
