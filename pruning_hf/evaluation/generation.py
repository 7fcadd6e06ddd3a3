"""Greedy generation: readable samples for a fixed prompt set, and fixed-length token workloads.

Samples let a person see what pruning did to the text (the same prompts for every model, generated
together in one left-padded batch); fixed-length generation (end-of-sequence suppressed) is the
workload of the decode-speed and energy measurements, so every model generates exactly the same
number of tokens.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..models.devices import execution_device

#: prompt tokens of the decode-speed and generation-energy workloads (short: their prefill is not what they measure)
WORKLOAD_PROMPT_LEN = 8

__all__ = ["WORKLOAD_PROMPT_LEN", "DEFAULT_PROMPTS", "greedy_generate", "greedy_samples", "synthetic_prompts"]

DEFAULT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "To sort a list of numbers in Python, you can",
    "Pruning a neural network means",
    "Once upon a time, in a small village,",
    "The three primary colors are",
)


def _pad_id(model, tokenizer=None) -> int:
    for source in (tokenizer, model.generation_config, model.config):
        for key in ("pad_token_id", "eos_token_id"):
            value = getattr(source, key, None) if source is not None else None
            value = value[0] if isinstance(value, (list, tuple)) and value else value
            if isinstance(value, int):
                return value
    return 0


class _StepBar:
    """A ``generate`` streamer that advances a progress bar by one per generated token step."""

    def __init__(self, bar) -> None:
        self.bar, self.prompt_seen = bar, False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.bar.update(1)
        self.prompt_seen = True

    def end(self) -> None:
        self.bar.close()


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, fixed_length: bool = False,
                    attention_mask: torch.Tensor | None = None, tokenizer=None, streamer=None) -> torch.Tensor:
    """Greedy ``generate``; with ``fixed_length`` end-of-sequence is suppressed (exactly ``max_new_tokens``).

    Returns the ``(batch, new tokens)`` generated ids.
    """
    device = execution_device(model.get_input_embeddings())
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask.to(device), do_sample=False,
                         max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens if fixed_length else None,
                         pad_token_id=_pad_id(model, tokenizer), num_beams=1, streamer=streamer)
    return out[:, input_ids.shape[1]:]


def synthetic_prompts(model, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """``(batch, length)`` seeded random token ids (for speed and energy workloads, where content is irrelevant)."""
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator)


def greedy_samples(model, tokenizer, prompts: Sequence[str] = DEFAULT_PROMPTS, max_new_tokens: int = 32,
                   progress: bool | str = False) -> list[dict]:
    """``[{"prompt", "completion", "new_tokens"}]``: greedy continuations of all prompts in one batch (left-padded,
    masked); ``progress``: a bar over the token steps (a string labels it)."""
    encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    longest, pad = max(len(ids) for ids in encoded), _pad_id(model, tokenizer)
    input_ids = torch.tensor([[pad] * (longest - len(ids)) + ids for ids in encoded])
    mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in encoded])
    bar = tqdm(total=max_new_tokens, desc=progress if isinstance(progress, str) else "greedy samples", unit="token",
               disable=not progress, leave=False)
    new = greedy_generate(model, input_ids, max_new_tokens, attention_mask=mask, tokenizer=tokenizer,
                          streamer=_StepBar(bar))
    bar.close()
    stops: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        stops.update(value if isinstance(value, (list, tuple)) else [] if value is None else [value])
    samples = []
    for prompt, row in zip(prompts, new.tolist()):
        length = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))  # generate stops at EOS
        samples.append({"prompt": prompt, "completion": tokenizer.decode(row[:length], skip_special_tokens=True),
                        "new_tokens": length})
    return samples
