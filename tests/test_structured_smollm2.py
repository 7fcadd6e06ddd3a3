"""Structured pruning on real weights: SmolLM2-135M (embedded, offline), small calibration and eval budgets."""

from __future__ import annotations

import copy

import pytest

from pruning_hf import PruningConfig, prune
from pruning_hf.data.text import calibration_windows
from pruning_hf.evaluation import text_perplexity
from pruning_hf.hf.loading import load_model, load_tokenizer

pytestmark = pytest.mark.slow
CALIBRATION = {"source": "embedded", "num_samples": 16, "seq_len": 256, "batch_size": 8}


def test_activation_aware_neurons_beat_random_neurons(smollm2_path):
    """20% of every layer's FFN neurons: Wanda-style activation scores must keep a better model than chance."""
    tokenizer = load_tokenizer(smollm2_path)
    dense = load_model(smollm2_path)
    perplexities = {}
    for importance in ("random", "activation"):
        config = PruningConfig(method="structured", target="mlp", sparsity=0.2, importance=importance,
                               update="none", calibration=CALIBRATION)  # the scores alone, no re-fit
        model = copy.deepcopy(dense)
        windows = calibration_windows(config.calibration, tokenizer) if config.needs_calibration else None
        report = prune(model, config, tokenizer, progress=False, windows=windows)
        assert model.model.layers[0].mlp.down_proj.in_features == 1536 - 307
        assert report.parameters_removed == pytest.approx(30 * 3 * 307 * 576 / report.parameters_before)
        perplexities[importance] = text_perplexity(model, tokenizer, "embedded@test", seq_len=256,
                                                   max_windows=8)["perplexity"]
        del model
    assert perplexities["activation"] < 0.5 * perplexities["random"], perplexities
