"""Quality metrics (`evaluate` modules shipped in the package) against independent computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from pruning_hf.data.text import consecutive_windows, load_texts, tokenize_texts
from pruning_hf.evaluation import load_metric
from pruning_hf.evaluation.loglikelihood import continuation_scores, encode_pair

pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def _direct_perplexity(model, windows) -> float:
    """exp(token-weighted mean loss) from model(x, labels=x), one window at a time."""
    total, count = 0.0, 0
    for window in windows:
        loss = model(input_ids=window[None], labels=window[None]).loss.item()
        total += loss * (window.numel() - 1)
        count += window.numel() - 1
    return math.exp(total / count)


@pytest.mark.parametrize("keep_partial", [False, True])
def test_perplexity_module_matches_model_loss(tokenizer, text_file, keep_partial):
    model = tiny_model("llama")
    texts = load_texts(str(text_file))[:1]
    texts = [texts[0][:3000]]  # ~3000 byte tokens: 46 full windows of 64 and a partial one
    windows = consecutive_windows(tokenize_texts(texts, tokenizer), 64, keep_partial=keep_partial)
    assert (windows[-1].numel() < 64) == keep_partial
    result = load_metric("perplexity").compute(texts=texts, model=model, tokenizer=tokenizer, seq_len=64,
                                               batch_size=5, keep_partial=keep_partial)
    assert result["windows"] == len(windows)
    assert result["tokens"] == sum(w.numel() - 1 for w in windows)
    assert result["perplexity"] == pytest.approx(_direct_perplexity(model, windows), rel=1e-5)


@torch.no_grad()
def _naive_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens) from one unpadded forward pass of context + continuation."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tokenizer(context + continuation, add_special_tokens=False)["input_ids"]])
    logprobs = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logprobs[pos - 1, ids[0, pos]].item() for pos in range(len(context_ids), ids.shape[1]))


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_multiple_choice_matches_an_independent_loglikelihood_loop(tokenizer, family):
    model = tiny_model(family, seed=3)
    contexts = [["Question: what is water?\nAnswer:"] * 3,
                ["The cat sat on", "The dog sat on"],            # Winogrande style: contexts differ
                ["Colors:"] * 4]
    choices = [["a liquid", "a rock that is very heavy", "gas"],
               ["the mat today", "the mat today"],
               ["red", "green and blue", "x", "a long list of colours"]]
    labels = [0, 1, 2]
    naive = [[_naive_logprob(model, tokenizer, c, " " + o) for c, o in zip(cs, os)] for cs, os in zip(contexts, choices)]
    requests = [encode_pair(tokenizer, c, " " + o) for cs, os in zip(contexts, choices) for c, o in zip(cs, os)]
    batched = continuation_scores(model, requests, batch_size=3)  # padding + logits_to_keep across lengths
    assert [s for s, _ in batched] == pytest.approx([v for row in naive for v in row], abs=1e-4)

    expected_acc = sum(max(range(len(r)), key=r.__getitem__) == y for r, y in zip(naive, labels)) / 3
    norm = [[v / len(o) for v, o in zip(r, os)] for r, os in zip(naive, choices)]
    expected_norm = sum(max(range(len(r)), key=r.__getitem__) == y for r, y in zip(norm, labels)) / 3
    result = load_metric("multiple_choice").compute(contexts=contexts, choices=choices, labels=labels, model=model,
                                                    tokenizer=tokenizer, batch_size=2)
    assert result == {"acc": pytest.approx(expected_acc), "acc_norm": pytest.approx(expected_norm), "examples": 3}


@torch.no_grad()
def _greedy_text(model, tokenizer, prefix: str, tokens: int) -> str:
    ids = torch.tensor([tokenizer(prefix, add_special_tokens=False)["input_ids"]])
    for _ in range(tokens):
        ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokenizer.decode(ids[0, -tokens:])


def _spaced_letters(model, tokenizer):
    """Configure a tiny model to write ' a b c ...': a space after any other token, then one lowercase
    letter (its own choice among the 26); every other logit gets -1e4."""
    letters = torch.tensor(tokenizer.convert_tokens_to_ids(list("abcdefghijklmnopqrstuvwxyz")))
    space = tokenizer.convert_tokens_to_ids("Ġ")  # the byte-level symbol of " "

    def hook(module, args, kwargs, output):
        after_space = (kwargs["input_ids"] == space)[..., None]
        letter_bias = torch.full((model.config.vocab_size,), -1e4)
        letter_bias[letters] = 0.0
        space_bias = torch.full((model.config.vocab_size,), -1e4)
        space_bias[space] = 0.0
        output.logits += torch.where(after_space, letter_bias, space_bias)[..., -output.logits.shape[1]:, :]
    model.register_forward_hook(hook, with_kwargs=True)
    return model


def test_multiple_choice_picks_the_answers_the_model_prefers(tokenizer):
    """Right answers are the model's own greedy next letter: accuracy must be exactly 1."""
    model = _spaced_letters(tiny_model("llama", seed=1), tokenizer)
    contexts, choices, labels = [], [], []
    for i, prompt in enumerate(["Water is", "The sky is", "Cats like", "Numbers:", "def f(x):", "Hello"]):
        best = _greedy_text(model, tokenizer, prompt, 2)[1]
        others = [c for c in "qzjxkv" if c != best][:3]
        options = others[:]
        options.insert(i % 4, best)
        contexts.append([prompt] * 4)
        choices.append(options)
        labels.append(i % 4)
    result = load_metric("multiple_choice").compute(contexts=contexts, choices=choices, labels=labels,
                                                    model=model, tokenizer=tokenizer)
    assert result["acc"] == 1.0 and result["acc_norm"] == 1.0


def test_last_word_accuracy_and_perplexity(tokenizer):
    model = _spaced_letters(tiny_model("llama", seed=2), tokenizer)
    contexts = ["It was a dark and stormy", "She opened the door and saw the", "The answer is"]
    greedy = [_greedy_text(model, tokenizer, c, 2)[1] for c in contexts]  # " " then the model's letter
    metric = load_metric("last_word")
    right = metric.compute(contexts=contexts, targets=greedy, model=model, tokenizer=tokenizer)
    assert right["acc"] == 1.0 and right["examples"] == 3
    wrong = metric.compute(contexts=contexts, targets=["q" if g != "q" else "z" for g in greedy],
                           model=model, tokenizer=tokenizer)
    assert wrong["acc"] == 0.0
    naive = [_naive_logprob(model, tokenizer, c, " " + g) for c, g in zip(contexts, greedy)]
    assert right["perplexity"] == pytest.approx(math.exp(-sum(naive) / 3), rel=1e-4)


@pytest.mark.slow
def test_real_model_through_the_shipped_metrics(smollm2_path):
    """SmolLM2-135M on real prose and the hand-written science questions: far better than chance."""
    from pathlib import Path

    from pruning_hf import evaluate_model
    from pruning_hf.hf.loading import load_model, load_tokenizer

    science = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "science_mc.jsonl"
    model, tokenizer = load_model(smollm2_path), load_tokenizer(smollm2_path)
    report = evaluate_model(model, tokenizer, text="embedded@test", seq_len=512, max_windows=4,
                            tasks=[f"science={science}"], samples=False, progress=False, name="smollm2")
    entry = report["smollm2"]
    assert 8 < entry["perplexity"]["perplexity"] < 20  # DESIGN.md: ~12 on the embedded prose
    assert entry["tasks"]["science"]["examples"] == 40
    assert entry["tasks"]["science"]["acc"] >= 0.5  # 4 choices: chance is 0.25
