"""Measuring pruned models: quality, efficiency, energy, and dense-vs-pruned reports.

Quality metrics are `evaluate` modules shipped in ``metrics/`` and loaded by path
(:func:`load_metric`), so no Hub access is needed; they delegate to :mod:`.perplexity` and
:mod:`.loglikelihood`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .perplexity import perplexity, text_perplexity

__all__ = ["perplexity", "text_perplexity", "load_metric", "METRICS"]

METRICS_DIR = Path(__file__).parent / "metrics"
METRICS = ("perplexity", "multiple_choice", "last_word")


@lru_cache(maxsize=None)
def load_metric(name: str):
    """The shipped `evaluate` module ``name`` (one of :data:`METRICS`), loaded by path, in memory."""
    import evaluate

    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; shipped metrics: {', '.join(METRICS)}")
    return evaluate.load(str(METRICS_DIR / name / f"{name}.py"), keep_in_memory=True)
