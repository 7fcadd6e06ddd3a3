"""AutoPrunedModel: load (and prune) a causal LM the way ``AutoModelForCausalLM`` does.

The returned object is a plain ``transformers`` ``PreTrainedModel`` (``generate()`` works) with four
extra attributes: ``pruning_config``, ``pruning_report``, ``evaluation_report`` (dense vs pruned, when
asked with ``evaluate=``) and ``tokenizer``. Its ``save_pretrained`` writes a dense safetensors
checkpoint + tokenizer + ``pruning_report.json`` + ``evaluation_report.json`` + model card atomically
(:mod:`.checkpoint`); the PruningConfig is stored in ``config.json`` under ``pruning_config``, which
stock loaders ignore.
"""

from __future__ import annotations

import os
from typing import Any

from ..config import PruningConfig
from ..evaluation.session import evaluate_model
from ..evaluation.settings import EvaluationConfig
from .loading import coerce_config, preflight
from .pruning import load_pretrained, prune, prune_and_compare

__all__ = ["AutoPrunedModel"]


class AutoPrunedModel:
    """Load a causal LM, pruning it on the way when a PruningConfig is given.

    Example::

        cfg = PruningConfig(method="wanda", sparsity=0.5)
        model = AutoPrunedModel.from_pretrained("facebook/opt-125m", pruning=cfg, device_map="auto")
        model.save_pretrained("opt-125m-wanda-50")
        AutoPrunedModel.from_pretrained("opt-125m-wanda-50").pruning_config  # no pruning again
    """

    def __init__(self, *args, **kwargs) -> None:
        raise TypeError("use AutoPrunedModel.from_pretrained(...)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        pruning: PruningConfig | dict | str | None = None, *, tokenizer=None,
                        progress: bool = True, evaluate: bool | dict | Any = False, activation_storage: str = "cpu",
                        energy: bool = True, country_iso_code: str | None = None, **hf_kwargs: Any):
        """Load ``pretrained_model_name_or_path`` (Hub id, local folder, or ``embedded:NAME``).

        Args:
            pruning: PruningConfig (or dict / YAML path). ``None`` loads as is: a pruned checkpoint
                keeps its recorded ``pruning_config`` and is not pruned again.
            tokenizer: tokenizer to use instead of the checkpoint's own.
            progress: progress bar over layers while pruning.
            evaluate: ``True`` or evaluation settings (a dict of ``EvaluationConfig`` fields, or an
                ``EvaluationConfig``; see :mod:`pruning_hf.evaluation.settings`). With ``pruning``: measure
                the model dense, prune it (energy tracked), measure it again on the same data, and
                attach the comparison as ``model.evaluation_report``; without: measure the model as
                loaded. ``True`` and dicts include efficiency and energy unless they turn them off.
            activation_storage: where calibration activations wait between layers ("cpu", a
                device, or "disk").
            energy / country_iso_code: track the pruning run's energy and CO2e (on by default; the
                country defaults to the evaluation's, else codecarbon's default), see
                :func:`~pruning_hf.hf.pruning.prune`.
            **hf_kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (``device_map``,
                ``dtype``, ``max_memory``, ``offload_folder``, ``revision``, ``token`` ...). A model
                bigger than memory: ``device_map="auto", max_memory={"cpu": "8GiB"},
                offload_folder="offload"``; the engine then holds one decoder layer at a time.
        """
        config = coerce_config(pruning) if pruning is not None else None
        settings = EvaluationConfig.full(evaluate) if evaluate is not False and evaluate is not None else None
        ready = preflight(pretrained_model_name_or_path, hf_kwargs=hf_kwargs, pruning=config, evaluation=settings,
                          tokenizer=tokenizer, activation_storage=activation_storage)
        if config is None:
            model = load_pretrained(ready.name, ready.tokenizer, **hf_kwargs)
            if ready.evaluation is not None:
                model.evaluation_report = evaluate_model(model, ready.tokenizer, ready.evaluation,
                                                         name=str(pretrained_model_name_or_path))
            return model
        model = ready.load_model()
        prune_options = {"activation_storage": activation_storage, "windows": ready.windows, "energy": energy}
        if country_iso_code is not None or ready.evaluation is None:
            prune_options["country_iso_code"] = country_iso_code
        if ready.evaluation is not None:
            prune_and_compare(model, ready.tokenizer, config, ready.evaluation, progress=progress,
                              prune_options=prune_options)
        else:
            prune(model, config, ready.tokenizer, progress=progress, **prune_options)
        return model
