"""Data-parallel evaluation with accelerate: every process takes a contiguous share of the work.

    accelerate launch --num_processes 4 -m pruning_hf.cli.distributed MODEL \\
        --text embedded@test --seq-len 2048 [--json result.json]

Each process loads the model on its own device (``PartialState().device``: one GPU each; on a
machine without CUDA, CPU processes that talk over gloo: ``accelerate launch --multi_gpu
--num_processes 2`` starts them there too), :func:`map_in_order` hands it its share with ``split_between_processes`` and
gathers every process's results back in the original order. Perplexity is summed per batch in that
order, so N processes give bit-identical totals to one process with the same batches. Without
``accelerate launch`` everything runs in the current process.

Other evaluations parallelise the same way: ``map_in_order(score_one_example, examples)``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..data.text import consecutive_windows, load_texts, tokenize_texts
from .perplexity import window_nll

__all__ = ["map_in_order", "distributed_window_nll", "distributed_perplexity"]


def map_in_order(function: Callable[[Any], Any], items: Sequence, state=None) -> list:
    """``[function(item) for item in items]`` computed by all processes of the current launch.

    Items are split into contiguous shares (``PartialState.split_between_processes``); every process
    returns the full list of results, in the order of ``items``. Results must be picklable.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = state or PartialState()
    with state.split_between_processes(list(items)) as share:
        results = [function(item) for item in share]
    return gather_object(results) if state.num_processes > 1 else results


def distributed_window_nll(model, windows: Sequence[torch.Tensor], batch_size: int = 4,
                           state=None) -> tuple[float, int]:
    """:func:`~pruning_hf.evaluation.perplexity.window_nll` with batches split between processes.

    Returns ``(sum of NLL, predicted tokens)`` over all windows, the same on every process.
    """
    batches = [windows[i: i + batch_size] for i in range(0, len(windows), batch_size)]
    per_batch = map_in_order(lambda batch: window_nll(model, batch, batch_size), batches, state)
    return sum(nll for nll, _ in per_batch), sum(count for _, count in per_batch)


def distributed_perplexity(model, tokens: torch.Tensor, seq_len: int, max_windows: int | None = None,
                           batch_size: int = 4, keep_partial: bool = False, state=None) -> dict:
    """Perplexity of ``model`` on 1-D ``tokens`` in non-overlapping windows, data-parallel.

    Same windows and result keys as :func:`~pruning_hf.evaluation.perplexity.perplexity`, plus
    ``processes``.
    """
    from accelerate import PartialState

    state = state or PartialState()
    windows = consecutive_windows(tokens, seq_len, max_windows, keep_partial)
    if not windows:
        raise ValueError(f"text has {tokens.numel()} tokens, fewer than one window of seq_len={seq_len}")
    nll, count = distributed_window_nll(model, windows, batch_size, state)
    return {"perplexity": float(torch.tensor(nll / count).exp()), "nll": nll / count,
            "tokens": count, "windows": len(windows), "seq_len": seq_len, "processes": state.num_processes}
