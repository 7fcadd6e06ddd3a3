"""Compare several models, loaded or by name, on identical data: one report, ratios against the first."""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Mapping

from ..evaluation.report import EvaluationReport
from ..evaluation.session import EvaluationData, EvaluationSession, check_seq_len, prepared
from ..evaluation.settings import EvaluationConfig
from ..hf.loading import preflight
from ..hf.pruning import load_pretrained

__all__ = ["compare_models"]


def compare_models(models: Mapping[str, Any], tokenizer=None, config: EvaluationConfig | Mapping | EvaluationData | None = None,
                   *, load_kwargs: Mapping[str, Any] | None = None, **settings: Any) -> EvaluationReport:
    """Measure several models on identical data; the first is the baseline of every ratio.

    ``models`` maps a display name to a loaded model or to a model name / folder (loaded one at a
    time for its quality). Their speed and energy are then measured in interleaved rounds: the models
    stay in memory when they fit (checked, and reported under ``efficiency.timing``), else the ones
    that do not fit are loaded again for each round (weaker; the report says so). ``tokenizer``
    defaults to the first model's. Everything is validated (text, tasks, context lengths, country)
    before the first model is evaluated.
    """
    if not models:
        raise ValueError("compare_models needs at least one model")
    load_kwargs = dict(load_kwargs or {})
    named = {name: value for name, value in models.items() if isinstance(value, (str, os.PathLike))}
    first = next(iter(models.values()))
    if tokenizer is None and not isinstance(first, (str, os.PathLike)):
        tokenizer = getattr(first, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("pass tokenizer=...: the first model carries none")
    ready = {}
    for name, value in named.items():  # every name, config and text is checked before the first model loads
        ready[name] = preflight(value, hf_kwargs=load_kwargs, tokenizer=tokenizer)
        tokenizer = ready[name].tokenizer
    data = prepared(config, tokenizer, settings)
    for name, value in models.items():
        check_seq_len(ready[name].config if name in ready else value.config, data.config.seq_len, name)
    with EvaluationSession(data) as session:
        for name, value in models.items():
            if name in ready:
                load = partial(load_pretrained, ready[name].name, tokenizer, **load_kwargs)
                session.add(name, load(), tokenizer, reload=load)
            else:
                session.add(name, value, tokenizer)
    return session.report()
