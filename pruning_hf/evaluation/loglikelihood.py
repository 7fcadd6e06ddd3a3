"""Log-likelihood of continuations: multiple-choice accuracy and last-word (LAMBADA) accuracy.

Conventions follow lm-evaluation-harness, so numbers are comparable with its zero-shot results:

* the scored continuation is ``" " + choice`` after the context (trailing whitespace of the
  context moves into the continuation); context and continuation are tokenized together and the
  continuation tokens are those after the context's own tokens;
* ``acc``: the choice with the highest summed log-probability is right; ``acc_norm``: the same with
  each sum divided by the choice's length in characters;
* last-word accuracy: the greedy prediction reproduces every token of ``" " + last word``;
  ``perplexity`` is ``exp(-mean log p(last word))`` over examples;
* no special tokens are added; an empty context is replaced by the BOS (else EOS) token; inputs
  longer than the model's context keep their last tokens.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models.architectures import context_length
from ..models.devices import execution_device

__all__ = ["encode_pair", "continuation_scores", "multiple_choice_accuracy", "last_word_accuracy",
           "split_last_word", "DELIMITER"]

DELIMITER = " "


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context ids, continuation ids)``, tokenized jointly so merges across the border count once."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    context_ids = _encode(tokenizer, stripped)
    whole = _encode(tokenizer, stripped + continuation)
    if whole[:len(context_ids)] == context_ids and len(whole) > len(context_ids):
        continuation_ids = whole[len(context_ids):]
    else:  # the tokenizer merged across the border: encode the continuation on its own
        continuation_ids = _encode(tokenizer, continuation)
    if not context_ids:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise ValueError("an empty context needs a tokenizer with a BOS or EOS token")
        context_ids = [prefix]
    return context_ids, continuation_ids


@torch.no_grad()
def continuation_scores(model, requests: Sequence[tuple[list[int], list[int]]], batch_size: int = 8,
                        progress: bool = False) -> list[tuple[float, bool]]:
    """``(sum of log p(continuation | context), greedy decoding reproduces it)`` for each request.

    Requests are ``(context ids, continuation ids)``; they are batched longest first, padded on the
    right, and only the logits of the continuation positions are kept.
    """
    model.eval()
    device = execution_device(model.get_input_embeddings())
    max_len = context_length(model.config)
    keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
    inputs, spans = [], []
    for context, continuation in requests:
        if not continuation:
            raise ValueError("a continuation tokenized to zero tokens; check the task's choices")
        ids = (list(context) + list(continuation))[:-1]
        if max_len is not None:
            ids = ids[-max_len:]
        inputs.append(ids)
        spans.append(torch.tensor(continuation[-len(ids):], dtype=torch.long))
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(inputs)
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    label = progress if isinstance(progress, str) else "log-likelihood"
    for batch in tqdm(batches, desc=label, unit="batch", disable=not progress, leave=False):
        longest = len(inputs[batch[0]])
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        mask = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, index in enumerate(batch):
            ids[row, :len(inputs[index])] = torch.tensor(inputs[index])
            mask[row, :len(inputs[index])] = 1
        first = min(len(inputs[i]) - len(spans[i]) for i in batch)  # earliest position scored
        kwargs = {"logits_to_keep": longest - first} if keep_arg else {}
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **kwargs).logits
        offset = longest - logits.shape[1]
        for row, index in enumerate(batch):
            target = spans[index].to(logits.device)
            end = len(inputs[index]) - offset
            logprobs = F.log_softmax(logits[row, end - len(target): end].float(), dim=-1)
            total = logprobs.gather(-1, target[:, None]).sum().item()
            results[index] = (total, bool((logprobs.argmax(-1) == target).all()))
    return results


def multiple_choice_accuracy(model, tokenizer, contexts: Sequence[Sequence[str]], choices: Sequence[Sequence[str]],
                             labels: Sequence[int], batch_size: int = 8, progress: bool = False) -> dict:
    """``acc`` and ``acc_norm`` over examples; example ``i`` scores ``contexts[i][j] + " " + choices[i][j]``.

    Standard tasks repeat one context for every choice; Winogrande-style tasks vary the context
    and keep one continuation.
    """
    if not (len(contexts) == len(choices) == len(labels)):
        raise ValueError(f"contexts, choices and labels differ in length: {len(contexts)}, {len(choices)}, {len(labels)}")
    requests = []
    for example, (ctxs, options, label) in enumerate(zip(contexts, choices, labels)):
        if len(ctxs) != len(options) or len(options) < 2:
            raise ValueError(f"example {example}: needs >= 2 choices and one context per choice, "
                             f"got {len(options)} choices and {len(ctxs)} contexts")
        if not 0 <= int(label) < len(options):
            raise ValueError(f"example {example}: label {label} is not an index into its {len(options)} choices")
        for ctx, option in zip(ctxs, options):
            requests.append(encode_pair(tokenizer, ctx, DELIMITER + option))
    scores = continuation_scores(model, requests, batch_size, progress)
    correct = correct_norm = 0
    position = 0
    for options, label in zip(choices, labels):
        sums = [scores[position + j][0] for j in range(len(options))]
        position += len(options)
        normalised = [s / max(len(option), 1) for s, option in zip(sums, options)]
        correct += int(max(range(len(sums)), key=sums.__getitem__) == int(label))
        correct_norm += int(max(range(len(normalised)), key=normalised.__getitem__) == int(label))
    count = len(labels)
    return {"acc": correct / max(count, 1), "acc_norm": correct_norm / max(count, 1), "examples": count}


def split_last_word(text: str) -> tuple[str, str]:
    """``"a b c"`` -> ``("a b", "c")`` (split on the last space, as LAMBADA is scored)."""
    context, _, word = text.rstrip().rpartition(" ")
    if not context or not word:
        raise ValueError(f"cannot split a last word off {text[:60]!r}: it needs at least two space-separated words")
    return context, word


def last_word_accuracy(model, tokenizer, contexts: Sequence[str], targets: Sequence[str], batch_size: int = 8,
                       progress: bool = False) -> dict:
    """``acc`` (greedy decoding reproduces ``" " + target``) and ``perplexity`` of the targets."""
    if len(contexts) != len(targets):
        raise ValueError(f"contexts and targets differ in length: {len(contexts)} vs {len(targets)}")
    requests = [encode_pair(tokenizer, ctx, DELIMITER + target) for ctx, target in zip(contexts, targets)]
    scores = continuation_scores(model, requests, batch_size, progress)
    count = len(scores)
    mean_logprob = sum(s for s, _ in scores) / max(count, 1)
    return {"acc": sum(greedy for _, greedy in scores) / max(count, 1), "perplexity": float(torch.tensor(-mean_logprob).exp()),
            "examples": count}
