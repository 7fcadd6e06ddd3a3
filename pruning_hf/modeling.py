"""AutoPrunedModel: load (and prune) a causal LM the way ``AutoModelForCausalLM`` does.

The returned object is a plain ``transformers`` ``PreTrainedModel`` (``generate()`` works) with four
extra attributes: ``pruning_config``, ``pruning_report``, ``evaluation_report`` (dense vs pruned, when
asked with ``evaluate=``) and ``tokenizer``. Its ``save_pretrained`` writes a dense safetensors
checkpoint + tokenizer + ``pruning_report.json`` + ``evaluation_report.json`` atomically; the
PruningConfig is stored in ``config.json`` under ``pruning_config``, which stock loaders ignore.
"""

from __future__ import annotations

import json
import logging
import os
import types
from pathlib import Path
from typing import Any

from .config import PruningConfig
from .embedded import is_embedded, public_model_name, resolve_model_path

__all__ = ["AutoPrunedModel", "ModelLoadError", "load_model", "load_tokenizer", "prune", "stored_pruning_config"]

logger = logging.getLogger(__name__)
REPORT_FILE = "pruning_report.json"
OFFLOADED_SHARD_SIZE = "1GB"  # shard size when saving an offloaded model (transformers' default is 50GB)
_TOKENIZER_KWARGS = ("revision", "token", "trust_remote_code", "cache_dir", "local_files_only")


class ModelLoadError(ValueError):
    """A model name / folder cannot be loaded as a causal LM; the message says why and what to do."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
    return name


def _check_config(name: str, hf_kwargs: dict[str, Any]) -> None:
    """Fail fast (before loading weights) on non-causal-LM architectures."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from .architectures import supported_model_types

    config_kwargs = {k: v for k, v in hf_kwargs.items() if k in _TOKENIZER_KWARGS}
    try:
        config = AutoConfig.from_pretrained(name, **config_kwargs)
    except Exception as err:  # OSError, ValueError, HTTP errors ...
        raise ModelLoadError(f"cannot load a model config from {name!r}: {_first_line(err)}. "
                             "Give a local checkpoint folder, an 'embedded:...' model, or a Hub id "
                             "(Hub ids need network access)") from None
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(f"{name!r} has model_type={model_type!r}, which is not a decoder-only causal LM; "
                             f"pruning_hf supports: {', '.join(supported_model_types())}")


def load_model(name_or_path: str | os.PathLike, **hf_kwargs: Any):
    """``AutoModelForCausalLM.from_pretrained`` with safe defaults and clear errors.

    Defaults: ``trust_remote_code=False``, ``use_safetensors=True`` (pickle checkpoints can run code
    when loaded; they are refused).
    """
    from transformers import AutoModelForCausalLM

    name = resolve_name(name_or_path)
    hf_kwargs.setdefault("trust_remote_code", False)
    hf_kwargs.setdefault("use_safetensors", True)
    _check_config(name, hf_kwargs)
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


def windows_before_loading(config: PruningConfig | None, tokenizer, name: str, hf_kwargs: dict[str, Any]):
    """Calibration windows for ``config`` built before the model's weights load (``None`` when the
    method needs none), so unreadable or too little text fails in seconds, not after a big load."""
    if config is None or not config.needs_calibration:
        return None
    from .calibration import calibration_windows
    from .evaluation.report import model_config

    max_len = getattr(model_config(name, hf_kwargs), "max_position_embeddings", None)
    return calibration_windows(config.calibration, tokenizer, max_len)


def load_tokenizer(name_or_path: str | os.PathLike, **hf_kwargs: Any):
    from transformers import AutoTokenizer

    name = resolve_name(name_or_path)
    kwargs = {k: v for k, v in hf_kwargs.items() if k in _TOKENIZER_KWARGS}
    kwargs.setdefault("trust_remote_code", False)
    try:
        return AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as err:
        raise ModelLoadError(f"cannot load the tokenizer of {name!r}: {_first_line(err)}") from None


def stored_pruning_config(model) -> PruningConfig | None:
    """The PruningConfig recorded in a model's config (``None`` for a dense model)."""
    data = getattr(model.config, "pruning_config", None)
    return PruningConfig.from_dict(data) if data else None


def _coerce_config(pruning: PruningConfig | dict | str | os.PathLike) -> PruningConfig:
    if isinstance(pruning, PruningConfig):
        return pruning
    if isinstance(pruning, dict):
        return PruningConfig.from_dict(pruning)
    if isinstance(pruning, (str, os.PathLike)):
        return PruningConfig.from_yaml(pruning)
    raise ValueError(f"pruning must be a PruningConfig, a dict or a YAML path, got {type(pruning).__name__}")


def _save_pruned(self, save_directory: str | os.PathLike, compress: bool = False, **kwargs: Any) -> None:
    """Atomic ``save_pretrained``: weights + config + tokenizer + pruning report, all or nothing.

    ``compress=True`` stores each pruned weight as its non-zero values + a bitmask, or for N:M
    patterns its kept values + packed in-group positions (:mod:`pruning_hf.compression`): about 0.56x
    the dense bytes at 50% sparsity. Loading it needs ``import pruning_hf`` before
    ``AutoModelForCausalLM.from_pretrained``; the default dense checkpoint loads anywhere.
    """
    from .storage import atomic_directory

    if {"cpu", "disk"} & set((getattr(self, "hf_device_map", None) or {}).values()):
        kwargs.setdefault("max_shard_size", OFFLOADED_SHARD_SIZE)  # transformers gathers one shard in RAM
    if compress:
        from .hf_integration import check_quantization_config

        check_quantization_config(self.config)  # before anything is written
    with atomic_directory(save_directory) as tmp:
        type(self).save_pretrained(self, tmp, **kwargs)
        if compress:
            _compress_saved(self, tmp)
        if getattr(self, "tokenizer", None) is not None:
            self.tokenizer.save_pretrained(tmp)
        if getattr(self, "pruning_report", None) is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(self.pruning_report.to_dict(), indent=2))
        for name, content in (getattr(self, "attachments", None) or {}).items():  # recipe, evaluation, plots
            (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        if getattr(self, "evaluation_report", None) is not None:
            from .evaluation.report import REPORT_FILE as EVALUATION_FILE

            (tmp / EVALUATION_FILE).write_text(self.evaluation_report.to_json())
        from .cards import write_model_card

        write_model_card(tmp, location=str(save_directory))


def _compress_saved(model, folder) -> None:
    """Rewrite a just-saved checkpoint with compressed pruned weights and record it in config.json."""
    from .compression import compress_checkpoint
    from .hf_integration import set_saved_feature

    pattern = model.pruning_config.pattern_spec if getattr(model, "pruning_config", None) else None
    record = compress_checkpoint(folder, (pattern.n, pattern.m) if pattern is not None and pattern.is_nm else None)
    set_saved_feature(folder, "compression", record)


def _attach(model, config: PruningConfig | None, report, tokenizer, evaluation=None):
    model.pruning_config = config
    model.pruning_report = report
    model.evaluation_report = evaluation  # a (re-)pruned model's old evaluation no longer applies
    model.tokenizer = tokenizer
    model.save_pretrained = types.MethodType(_save_pruned, model)
    from .hub import push_model

    model.push_to_hub = types.MethodType(push_model, model)
    return model


def _read_report(name: str):
    from .engine import PruningReport

    path = Path(name) / REPORT_FILE
    return PruningReport.from_dict(json.loads(path.read_text())) if path.is_file() else None


def _read_attachments(name: str) -> dict[str, bytes]:
    """The recipe, measurements and sweep files of a saved checkpoint, to carry into the next save."""
    from .cards import ATTACHMENTS

    return {file: (Path(name) / file).read_bytes() for file in ATTACHMENTS if (Path(name) / file).is_file()}


def _read_evaluation(name: str):
    from .evaluation.report import REPORT_FILE as EVALUATION_FILE, EvaluationReport

    path = Path(name) / EVALUATION_FILE
    return EvaluationReport.load(path) if path.is_file() else None


def prune(model, config: PruningConfig | dict | str, tokenizer=None, progress: bool = True, windows=None,
          activation_storage: str = "cpu", resume_dir: str | os.PathLike | None = None):
    """Prune an already-loaded causal LM in place; returns the :class:`~pruning_hf.engine.PruningReport`.

    Calibration windows are built from ``config.calibration`` with ``tokenizer`` unless given.
    The model's config records the PruningConfig, so a saved checkpoint says how it was made.
    ``activation_storage``: where calibration activations wait between layers ("cpu", a device, or
    "disk" for models whose activations do not fit in RAM either). ``resume_dir``: a folder for a
    checkpoint after every decoder layer; rerun with it to continue an interrupted run
    (:mod:`pruning_hf.resume`).
    """
    from .calibration import calibration_windows
    from .engine import check_targets, prune_model
    from .resume import check_resumable

    config = _coerce_config(config)
    check_targets(model, config)  # an unsupported model or a typo in targets fails before calibration
    if resume_dir is not None:
        check_resumable(config, resume_dir)
    if windows is None and config.needs_calibration:
        if tokenizer is None:
            raise ValueError(f"method {config.method!r} needs calibration data: pass tokenizer= (or windows=)")
        max_len = getattr(model.config, "max_position_embeddings", None)
        windows = calibration_windows(config.calibration, tokenizer, max_len)
    report = prune_model(model, config, windows=windows, progress=progress, activation_storage=activation_storage,
                         resume_dir=resume_dir)
    from . import __version__

    model.config.pruning_config = {**config.to_dict(), "pruning_hf_version": __version__}
    if not getattr(model.config, "pruned_from", None):  # a card's base_model; kept when pruned again
        model.config.pruned_from = public_model_name(model.name_or_path)
    _attach(model, config, report, tokenizer if tokenizer is not None else getattr(model, "tokenizer", None))
    model.attachments = {}  # an earlier recipe's or sweep's files describe the earlier pruning
    return report


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
                        **hf_kwargs: Any):
        """Load ``pretrained_model_name_or_path`` (Hub id, local folder, or ``embedded:NAME``).

        Args:
            pruning: PruningConfig (or dict / YAML path). ``None`` loads as is: a pruned checkpoint
                keeps its recorded ``pruning_config`` and is not pruned again.
            tokenizer: tokenizer to use instead of the checkpoint's own.
            progress: progress bar over layers while pruning.
            evaluate: ``True`` or evaluation settings (a dict of ``EvaluationConfig`` fields, or an
                ``EvaluationConfig``; see :mod:`pruning_hf.evaluation.report`). With ``pruning``: measure
                the model dense, prune it (energy tracked), measure it again on the same data, and
                attach the comparison as ``model.evaluation_report``; without: measure the model as
                loaded. ``True`` and dicts include efficiency and energy unless they turn them off.
            activation_storage: where calibration activations wait between layers ("cpu", a
                device, or "disk").
            **hf_kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (``device_map``,
                ``dtype``, ``max_memory``, ``offload_folder``, ``revision``, ``token`` ...). A model
                bigger than memory: ``device_map="auto", max_memory={"cpu": "8GiB"},
                offload_folder="offload"``; the engine then holds one decoder layer at a time.
        """
        from .calibration import load_texts

        config = _coerce_config(pruning) if pruning is not None else None
        if config is not None and config.needs_calibration:
            load_texts(config.calibration.source, config.calibration.text_column)  # fail before the big load
        name = resolve_name(pretrained_model_name_or_path)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name, **hf_kwargs)
        windows = windows_before_loading(config, tokenizer, name, hf_kwargs)
        data = None
        if evaluate is not False and evaluate is not None:
            from .evaluation.report import EvaluationConfig, model_config, prepare_evaluation

            settings = EvaluationConfig.full(evaluate)
            data = prepare_evaluation(settings, tokenizer, model_config(name, hf_kwargs))  # fail before the big load
        model = load_model(name, **hf_kwargs)
        if config is None:
            _attach(model, stored_pruning_config(model), _read_report(name), tokenizer, _read_evaluation(name))
            model.attachments = _read_attachments(name)
            if data is not None:
                from .evaluation.report import evaluate_model

                model.evaluation_report = evaluate_model(model, tokenizer, data, name=str(pretrained_model_name_or_path))
            return model
        if data is not None:
            from .evaluation.report import prune_and_compare

            prune_and_compare(model, tokenizer, config, data, progress=progress,
                              prune_options={"activation_storage": activation_storage, "windows": windows})
        else:
            prune(model, config, tokenizer, progress=progress, windows=windows, activation_storage=activation_storage)
        return model
