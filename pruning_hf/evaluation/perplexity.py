"""Perplexity over non-overlapping token windows, token-weighted.

Each window of ``L`` tokens contributes ``L - 1`` next-token predictions (no context crosses window
borders). Perplexity is ``exp(sum of NLL / number of predicted tokens)`` over all windows; a last,
shorter window is included only when ``keep_partial=True``. ``batch_size=None`` sizes the batches to
the machine (:func:`auto_batch_size`). ``progress`` may be a label for the bar (e.g. the model's name).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.text import consecutive_windows, load_texts, tokenize_texts
from ..models.devices import execution_device
from ..utils.memory import available_bytes

__all__ = ["window_nll", "perplexity", "text_perplexity", "auto_batch_size"]

#: most windows per forward pass: CPU matmuls gain little beyond this, GPUs gain up to the larger cap
_MAX_BATCH = {"cpu": 8, "cuda": 32}


def auto_batch_size(model, seq_len: int, windows: int) -> int:
    """Windows per forward pass that fit in a quarter of the device's free memory (logits, hidden states and
    attention scores of one window, twice over for safety), at most ``_MAX_BATCH`` and ``windows``."""
    config = model.config
    device = execution_device(model.get_input_embeddings())
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 1024)
    width = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None) or 4 * hidden
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 16)
    element = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 4
    per_window = 2 * seq_len * (4 * config.vocab_size + element * (8 * hidden + 3 * width + heads * seq_len))
    free = available_bytes(device)
    fitting = max(1, free // 4 // per_window) if free is not None else 4
    return int(max(1, min(_MAX_BATCH.get(device.type, 8), windows, fitting)))


@torch.no_grad()
def window_nll(model, windows: Sequence[torch.Tensor], batch_size: int | None = 4,
               progress: bool | str = False) -> tuple[float, int]:
    """``(sum of next-token negative log-likelihoods, number of predicted tokens)`` over ``windows``."""
    model.eval()
    device = execution_device(model.get_input_embeddings())
    total_nll, total_tokens = 0.0, 0
    batch_size = batch_size or auto_batch_size(model, max(w.numel() for w in windows), len(windows))
    batches = [windows[i: i + batch_size] for i in range(0, len(windows), batch_size)]
    label = progress if isinstance(progress, str) else "perplexity"
    for batch in tqdm(batches, desc=label, unit="batch", disable=not progress, leave=False):
        by_length: dict[int, list[torch.Tensor]] = {}
        for window in batch:
            by_length.setdefault(window.numel(), []).append(window)
        for length, same in by_length.items():
            if length < 2:
                continue
            ids = torch.stack(same).to(device)
            logits = model(input_ids=ids, use_cache=False).logits
            for row in range(ids.shape[0]):  # one row at a time: fp32 logits of a big vocab are large
                total_nll += F.cross_entropy(logits[row, :-1].float(), ids[row, 1:].to(logits.device),
                                             reduction="sum").item()
            total_tokens += ids.shape[0] * (length - 1)
    return total_nll, total_tokens


def perplexity(model, tokens: torch.Tensor, seq_len: int, max_windows: int | None = None, batch_size: int | None = 4,
               keep_partial: bool = False, progress: bool | str = False) -> dict:
    """Perplexity of ``model`` on 1-D ``tokens`` cut into non-overlapping ``seq_len`` windows."""
    windows = consecutive_windows(tokens, seq_len, max_windows, keep_partial)
    if not windows:
        raise ValueError(f"text has {tokens.numel()} tokens, fewer than one window of seq_len={seq_len}")
    nll, count = window_nll(model, windows, batch_size, progress)
    return {"perplexity": float(torch.tensor(nll / count).exp()), "nll": nll / count, "tokens": count,
            "windows": len(windows), "seq_len": seq_len}


def text_perplexity(model, tokenizer, source: str, seq_len: int, max_windows: int | None = None,
                    text_column: str = "text", **kwargs) -> dict:
    """Perplexity on a text source (see :mod:`pruning_hf.calibration`) tokenized with ``tokenizer``."""
    tokens = tokenize_texts(load_texts(source, text_column), tokenizer)
    result = perplexity(model, tokens, seq_len, max_windows, **kwargs)
    result["source"] = source
    return result
