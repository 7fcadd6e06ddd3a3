"""Efficiency measurements: FLOPs and bytes follow the real layer shapes; timings are sane."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_config, tiny_model
from pruning_hf import PruningConfig, prune
from pruning_hf.evaluation.efficiency import checkpoint_bytes, flops_per_token, measure_efficiency, parameter_counts

pytestmark = pytest.mark.usefixtures("one_thread")


def _narrow_llama(intermediate: int, heads: int = 4):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.intermediate_size = intermediate
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = heads, 2, 8
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def test_flops_follow_the_linear_shapes():
    model = tiny_model("llama")  # hidden 32, MLP 64, 4 heads x 8 (q 32), 2 KV heads (k, v 16), vocab 260, 2 layers
    per_layer = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 3 * 32 * 64
    flops = flops_per_token(model, seq_len=127)
    assert flops["linear"] == 2 * (2 * per_layer + 32 * 260)
    assert flops["attention"] == 2 * 4 * 32 * 64  # 2 layers x 4 x query width x mean context (127 + 1) / 2
    assert flops["sparse_skippable"] == 0 and flops["total"] == flops["linear"] + flops["attention"]


def test_a_structurally_smaller_model_reports_fewer_flops_and_bytes():
    big, small = _narrow_llama(64), _narrow_llama(32, heads=2)
    report = {name: measure_efficiency(m, prefill_seq_len=16, decode_batches=(1, 2), prompt_len=4, new_tokens=4,
                                       warmup=1, repeats=2)
              for name, m in (("big", big), ("small", small))}
    for key in ("linear", "attention", "total"):
        assert report["small"]["flops_per_token"][key] < report["big"]["flops_per_token"][key]
    assert report["small"]["checkpoint_bytes"] < report["big"]["checkpoint_bytes"]
    sizes = {name: parameter_counts(m) for name, m in (("big", big), ("small", small))}
    assert sizes["small"]["bytes"] < sizes["big"]["bytes"] and sizes["small"]["total"] < sizes["big"]["total"]
    for result in report.values():
        numbers = [result["prefill"]["median_seconds"], result["prefill"]["tokens_per_second"],
                   result["memory"]["peak_bytes"], result["checkpoint_bytes"]]
        numbers += [d["tokens_per_second"] for d in result["decode"].values()]
        assert all(math.isfinite(n) and n > 0 for n in numbers)
        assert set(result["decode"]) == {"1", "2"} and result["device"] == "cpu"


def test_sparsity_shows_in_nonzero_counts_and_skippable_flops(tokenizer):
    model = tiny_model("llama")
    dense = parameter_counts(model)
    size = checkpoint_bytes(model)
    report = prune(model, PruningConfig(method="magnitude", sparsity=0.5), tokenizer, progress=False)
    pruned = parameter_counts(model)
    assert pruned["total"] == dense["total"]
    assert dense["nonzero"] - pruned["nonzero"] == report.pruned_weights
    assert flops_per_token(model, 64)["sparse_skippable"] == 2 * report.pruned_weights
    assert checkpoint_bytes(model) == size  # a dense checkpoint stores zeros as zeros
