"""Loading models with clear errors, and the one preflight every entry point runs before any weights load.

:func:`preflight` is the "validate, resolve the name, read the config, tokenizer, calibration windows,
evaluation data" pipeline of ``prune``, ``eval``, ``iterative``, ``sweep``, ``run`` and
``AutoPrunedModel.from_pretrained``: everything that can fail in seconds fails before a model of
gigabytes is loaded. :meth:`Preflight.load_model` then loads the weights.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import CalibrationConfig, PruningConfig
from ..data.text import calibration_windows, load_texts
from ..engine.capture import check_activation_storage
from ..engine.resume import check_resumable
from ..evaluation.session import EvaluationData, prepare_evaluation
from ..evaluation.settings import EvaluationConfig
from ..models.architectures import context_length, supported_model_types
from ..models.embedded import EMBEDDED_MODELS, EMBEDDED_PREFIX, is_embedded, resolve_model_path
from ..utils.network import hub_unreachable
from ..utils.storage import check_output_dir

__all__ = ["ModelLoadError", "Preflight", "preflight", "resolve_name", "model_config", "load_model", "load_tokenizer",
           "coerce_config"]

logger = logging.getLogger(__name__)

#: from_pretrained keywords that also apply to reading a config or a tokenizer
_SHARED_KWARGS = ("revision", "token", "trust_remote_code", "cache_dir", "local_files_only", "subfolder")


class ModelLoadError(ValueError):
    """A model name / folder cannot be loaded as a causal LM; the message says why and what to do."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _shared(hf_kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = {key: value for key, value in hf_kwargs.items() if key in _SHARED_KWARGS}
    kwargs.setdefault("trust_remote_code", False)
    return kwargs


def resolve_name(name_or_path: str | os.PathLike) -> str:
    """``embedded:NAME`` -> cached folder; local folders are checked; other strings are Hub ids."""
    name = str(name_or_path)
    if is_embedded(name):
        return resolve_model_path(name)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model path {name!r} is a file; give the checkpoint folder (with config.json)")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model folder {name!r} has no config.json; is it a transformers checkpoint?")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model folder {name!r} does not exist")
    _check_hub_model(name)
    return name


def _check_hub_model(name: str) -> None:
    """A Hub id must be downloadable or in the local Hugging Face cache: without network (or with
    HF_HUB_OFFLINE) fail in seconds, naming the model, the reason and what works offline."""
    reason = hub_unreachable()
    if reason is None:
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # not a valid repo id: transformers words that error
        cached = False
    if cached:
        if "HF_HUB_OFFLINE" not in reason:
            logger.warning("the Hub is unreachable (%s): %r loads from the local cache after huggingface_hub's "
                           "retries; set HF_HUB_OFFLINE=1 to skip them", reason, name)
        return
    embedded = ", ".join(EMBEDDED_PREFIX + key for key in EMBEDDED_MODELS)
    raise ModelLoadError(f"cannot load model {name!r}: it is not a local folder, it cannot be downloaded ({reason}) "
                         f"and it is not in the local Hugging Face cache. Offline, give a local checkpoint folder "
                         f"(with config.json) or an embedded model ({embedded})")


def model_config(name: str, hf_kwargs: dict[str, Any] | None = None):
    """The config of a resolved model name, read without weights (same revision / token as the load);
    ModelLoadError unless it is a decoder-only causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(name, **_shared(hf_kwargs or {}))
    except Exception as err:  # OSError, ValueError, HTTP errors ...
        raise ModelLoadError(f"cannot load a model config from {name!r}: {_first_line(err)}. "
                             "Give a local checkpoint folder, an 'embedded:...' model, or a Hub id "
                             "(Hub ids need network access)") from None
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(f"{name!r} has model_type={model_type!r}, which is not a decoder-only causal LM; "
                             f"pruning_hf supports: {', '.join(supported_model_types())}")
    return config


def load_model(name_or_path: str | os.PathLike, **hf_kwargs: Any):
    """``AutoModelForCausalLM.from_pretrained`` with safe defaults and clear errors.

    Defaults: ``trust_remote_code=False``, ``use_safetensors=True`` (pickle checkpoints can run code
    when loaded; they are refused).
    """
    from transformers import AutoModelForCausalLM

    name = resolve_name(name_or_path)
    hf_kwargs.setdefault("trust_remote_code", False)
    hf_kwargs.setdefault("use_safetensors", True)
    model_config(name, hf_kwargs)
    try:
        return AutoModelForCausalLM.from_pretrained(name, **hf_kwargs)
    except (OSError, EnvironmentError) as err:
        message = _first_line(err)
        if "safetensors" in message.lower() or "pytorch_model.bin" in message:
            message = ("no safetensors weights found; pruning_hf refuses pickle checkpoints (.bin/.pt can run "
                       "code when loaded). Convert them once in a trusted environment with "
                       "`model.save_pretrained(dir, safe_serialization=True)`")
        raise ModelLoadError(f"cannot load model {name!r}: {message}") from None
    except Exception as err:
        if type(err).__module__.startswith(("safetensors", "json")) or "safetensors" in _first_line(err).lower():
            raise ModelLoadError(f"cannot load model {name!r}: checkpoint is corrupted or truncated "
                                 f"({_first_line(err)})") from None
        raise


def load_tokenizer(name_or_path: str | os.PathLike, **hf_kwargs: Any):
    from transformers import AutoTokenizer

    name = resolve_name(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(name, **_shared(hf_kwargs))
    except Exception as err:
        raise ModelLoadError(f"cannot load the tokenizer of {name!r}: {_first_line(err)}") from None


def coerce_config(pruning: PruningConfig | dict | str | os.PathLike) -> PruningConfig:
    """A PruningConfig from itself, a dict or a YAML path / text."""
    if isinstance(pruning, PruningConfig):
        return pruning
    if isinstance(pruning, dict):
        return PruningConfig.from_dict(pruning)
    if isinstance(pruning, (str, os.PathLike)):
        return PruningConfig.from_yaml(pruning)
    raise ValueError(f"pruning must be a PruningConfig, a dict or a YAML path, got {type(pruning).__name__}")


@dataclass
class Preflight:
    """What an entry point knows before loading weights (see :func:`preflight`)."""

    name: str                   # resolved: a local folder, an embedded model's cached folder, or a Hub id
    hf_kwargs: dict[str, Any]
    config: Any                 # the model's transformers config
    tokenizer: Any
    windows: Any = None         # (num_samples, seq_len) calibration windows, or None
    evaluation: EvaluationData | None = None

    def load_model(self):
        return load_model(self.name, **self.hf_kwargs)


def preflight(model: str | os.PathLike, *, hf_kwargs: dict[str, Any] | None = None,
              pruning: PruningConfig | None = None, calibration: CalibrationConfig | None = None,
              evaluation: EvaluationConfig | None = None, texts: tuple[str, ...] = (), tokenizer=None,
              output: str | os.PathLike | None = None, activation_storage: str | None = None,
              resume_dir: str | os.PathLike | None = None, iterative: bool = False) -> Preflight:
    """Check everything an entry point needs before the weights load, cheapest first.

    Order: the output folder, pruning options (activation storage, resume folder, whether ``iterative``
    steps can use the method), every text source
    (calibration, evaluation, ``texts``) readable, the model name and config (a causal LM), the
    tokenizer, calibration windows (``pruning``'s when it needs them, else ``calibration``'s; ``seq_len``
    capped at the model's context), the evaluation text, tasks and ``seq_len``.
    """
    hf_kwargs = dict(hf_kwargs or {})
    if output is not None:
        check_output_dir(Path(output).absolute())
    if activation_storage is not None:
        check_activation_storage(activation_storage)
    if resume_dir is not None and pruning is not None:
        check_resumable(pruning, resume_dir)
    if iterative and pruning is not None:
        pruning.check_iterative()
    if pruning is not None:
        calibration = pruning.calibration if pruning.needs_calibration else None
    sources = [(calibration.source, calibration.text_column)] if calibration is not None else []
    if evaluation is not None:
        sources.append((evaluation.text, evaluation.text_column))
    for source, column in [*sources, *((text, "text") for text in texts)]:
        load_texts(source, column)  # unreadable or empty text fails before the tokenizer and the config
    name = resolve_name(model)
    config = model_config(name, hf_kwargs)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name, **hf_kwargs)
    windows = calibration_windows(calibration, tokenizer, context_length(config)) if calibration is not None else None
    data = prepare_evaluation(evaluation, tokenizer, config) if evaluation is not None else None
    return Preflight(name, hf_kwargs, config, tokenizer, windows, data)
