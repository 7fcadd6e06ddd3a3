"""Text sources -> token windows for calibration and evaluation.

Sources (one string, the same everywhere: API, CLI, recipes):

* ``embedded`` / ``embedded@train`` / ``embedded@test``: the English prose of the Python documentation
  that ships with CPython (``pydoc_data.topics``, ~465k characters), cut into chunks of 20
  paragraphs; every 5th chunk is held out as ``@test`` (~87k characters, ~20k tokens).
* a local ``.txt`` file, a ``.jsonl`` file (one JSON object per line, text in ``text_column``), or a
  folder of such files (read in sorted order);
* a Hub dataset ``ID[:CONFIG][@SPLIT]`` loaded with ``datasets`` (default split ``train``), plus the
  aliases ``c4`` (first English shard of ``allenai/c4``, as in the Wanda/SparseGPT papers) and
  ``wikitext2`` (``wikitext:wikitext-2-raw-v1``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..utils.network import hub_unreachable

__all__ = ["DataSourceError", "load_texts", "tokenize_texts", "sample_windows", "consecutive_windows",
           "calibration_windows", "parse_hub_source"]

EMBEDDED = "embedded"
_CHUNK_PARAGRAPHS = 20
_HELD_OUT_EVERY = 5
_ALIASES = {
    "c4": ("allenai/c4", None, {"train": "en/c4-train.00000-of-01024.json.gz"}),
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", None),
}


class DataSourceError(ValueError):
    """A text source cannot be read or gives too little text."""


@dataclass(frozen=True)
class HubSource:
    path: str
    name: str | None
    split: str
    data_files: dict | None = None


def parse_hub_source(source: str) -> HubSource:
    """``ID[:CONFIG][@SPLIT]`` -> HubSource (aliases ``c4`` and ``wikitext2`` expanded)."""
    rest, _, split = source.partition("@")
    path, _, name = rest.partition(":")
    if path in _ALIASES:
        alias_path, alias_name, data_files = _ALIASES[path]
        return HubSource(alias_path, name or alias_name, split or "train", data_files)
    if not path or " " in path:
        raise DataSourceError(f"text source {source!r} is not a file, a folder, 'embedded' or a Hub dataset id")
    return HubSource(path, name or None, split or "train")


def _embedded_texts(split: str) -> list[str]:
    from pydoc_data.topics import topics

    if split not in ("train", "test"):
        raise DataSourceError(f"the embedded corpus has splits 'train' and 'test', not {split!r}")
    text = "\n\n".join(topics[key] for key in sorted(topics))
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    chunks = ["\n\n".join(paragraphs[i: i + _CHUNK_PARAGRAPHS]) for i in range(0, len(paragraphs), _CHUNK_PARAGRAPHS)]
    held_out = split == "test"
    return [c for i, c in enumerate(chunks) if (i % _HELD_OUT_EVERY == _HELD_OUT_EVERY - 1) == held_out]


def _read_file(path: Path, text_column: str) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataSourceError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if "\x00" in raw:
        raise DataSourceError(f"{path} looks binary (contains NUL bytes); give a text file")
    if path.suffix != ".jsonl":
        return [raw]
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataSourceError(f"{path}:{number} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or text_column not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataSourceError(f"{path}:{number} has no text column {text_column!r} (found: {keys}); "
                                  "set text_column / --text-column")
        value = record[text_column]
        if not isinstance(value, str):
            raise DataSourceError(f"{path}:{number}: text column {text_column!r} holds {_json_kind(value)}, not a "
                                  "string; give each line's text as a JSON string")
        texts.append(value)
    return texts


def _json_kind(value) -> str:
    """How a JSON value reads in an error message: null, true/false, a number, a list, an object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    kinds = {list: "a list", dict: "an object", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def _load_hub(source: str, text_column: str) -> list[str]:
    hub = parse_hub_source(source)
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:  # offline, datasets answers at once (from its cache, or an error)
        reason = hub_unreachable()
        if reason is not None:  # else datasets retries for half a minute before the same conclusion
            raise DataSourceError(
                f"could not load Hub dataset {source!r} (path={hub.path!r}): {reason}. Without network access, "
                "pass a local .txt/.jsonl file or folder, or 'embedded'; a dataset already in the datasets cache "
                "loads with HF_DATASETS_OFFLINE=1")
    try:
        dataset = datasets.load_dataset(hub.path, hub.name, split=hub.split, data_files=hub.data_files)
    except Exception as err:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ...)
        raise DataSourceError(
            f"could not load Hub dataset {source!r} (path={hub.path!r}, config={hub.name!r}, split={hub.split!r}): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Without network access, "
            "pass a local .txt/.jsonl file or folder, or 'embedded'") from None
    if text_column not in dataset.column_names:
        raise DataSourceError(f"Hub dataset {source!r} has no column {text_column!r} "
                              f"(columns: {dataset.column_names}); set text_column / --text-column")
    return [t for t in dataset[text_column] if t]


def load_texts(source: str, text_column: str = "text") -> list[str]:
    """Read the documents of a text source (see module docstring). Raises DataSourceError."""
    if not isinstance(source, str) or not source.strip():
        raise DataSourceError(f"text source must be a non-empty string, got {source!r}")
    if source == EMBEDDED or source.startswith(EMBEDDED + "@"):
        texts = _embedded_texts(source.partition("@")[2] or "train")
    else:
        path = Path(source).expanduser()
        if path.is_file():
            texts = _read_file(path, text_column)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
            if not files:
                raise DataSourceError(f"folder {source!r} holds no .txt or .jsonl files")
            texts = [text for file in files for text in _read_file(file, text_column)]
        elif source.startswith((".", "/", "~")) or path.suffix in (".txt", ".jsonl", ".json"):
            raise DataSourceError(f"text file or folder {source!r} does not exist")
        else:
            texts = _load_hub(source, text_column)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataSourceError(f"text source {source!r} contains no text")
    return texts


def tokenize_texts(texts: Sequence[str], tokenizer, max_chars: int | None = None, seed: int = 0) -> torch.Tensor:
    """Join documents with blank lines and tokenize (no special tokens) -> 1-D LongTensor.

    With ``max_chars``, a large corpus is first cut to a seeded random subset of whole documents
    holding about that many characters (so a 350 MB C4 shard is not tokenized for 128 windows).
    """
    if max_chars is not None and sum(len(t) for t in texts) > max_chars:
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
        chosen, size = [], 0
        for index in order:
            chosen.append(texts[index])
            size += len(texts[index])
            if size >= max_chars:
                break
        texts = chosen
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(tokens: torch.Tensor, num_samples: int, seq_len: int, seed: int, source: str = "text") -> torch.Tensor:
    """``(num_samples, seq_len)`` windows starting at seeded random offsets of ``tokens``."""
    if tokens.numel() < seq_len:
        raise DataSourceError(
            f"{source!r} has {tokens.numel()} tokens, fewer than one window of seq_len={seq_len}; "
            "use more text or a smaller seq_len")
    distinct = tokens.numel() - seq_len + 1
    if num_samples > distinct:  # beyond this windows only repeat; checked before the windows are allocated
        raise DataSourceError(
            f"num_samples={num_samples} windows asked for, but {source!r} has {tokens.numel():,} tokens, so "
            f"{distinct:,} distinct windows of seq_len={seq_len}; use num_samples <= {distinct} or more text")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (num_samples,), generator=generator)
    return torch.stack([tokens[s: s + seq_len] for s in starts.tolist()])


def consecutive_windows(tokens: torch.Tensor, seq_len: int, max_windows: int | None = None,
                        keep_partial: bool = False) -> list[torch.Tensor]:
    """Non-overlapping windows from the start of ``tokens``; the last partial one only if asked."""
    windows = [tokens[s: s + seq_len] for s in range(0, tokens.numel(), seq_len)]
    if windows and windows[-1].numel() < seq_len and not keep_partial:
        windows.pop()
    return windows[:max_windows] if max_windows is not None else windows


def calibration_windows(calibration, tokenizer, max_seq_len: int | None = None) -> torch.Tensor:
    """Token windows ``(num_samples, seq_len)`` for a CalibrationConfig; seq_len capped at ``max_seq_len``."""
    seq_len = min(calibration.seq_len, max_seq_len) if max_seq_len else calibration.seq_len
    texts = load_texts(calibration.source, calibration.text_column)
    budget = max(calibration.num_samples * seq_len * 8, 2_000_000)  # ~4 chars per token, 2x margin
    tokens = tokenize_texts(texts, tokenizer, max_chars=budget, seed=calibration.seed)
    return sample_windows(tokens, calibration.num_samples, seq_len, calibration.seed, calibration.source)
