"""Perplexity over non-overlapping token windows, token-weighted.

Each window of ``L`` tokens contributes ``L - 1`` next-token predictions (no context crosses window
borders). Perplexity is ``exp(sum of NLL / number of predicted tokens)`` over all windows; a last,
shorter window is included only when ``keep_partial=True``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.text import consecutive_windows, load_texts, tokenize_texts
from ..models.devices import execution_device

__all__ = ["window_nll", "perplexity", "text_perplexity"]


@torch.no_grad()
def window_nll(model, windows: Sequence[torch.Tensor], batch_size: int = 4, progress: bool = False) -> tuple[float, int]:
    """``(sum of next-token negative log-likelihoods, number of predicted tokens)`` over ``windows``."""
    model.eval()
    device = execution_device(model.get_input_embeddings())
    total_nll, total_tokens = 0.0, 0
    batches = [windows[i: i + batch_size] for i in range(0, len(windows), batch_size)]
    for batch in tqdm(batches, desc="perplexity", unit="batch", disable=not progress):
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


def perplexity(model, tokens: torch.Tensor, seq_len: int, max_windows: int | None = None, batch_size: int = 4,
               keep_partial: bool = False, progress: bool = False) -> dict:
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
