"""Real weights, real text: the method ranking the papers report must hold on SmolLM2-135M."""

import pytest
import torch

from pruning_hf import PruningConfig, prune
from pruning_hf.data.text import load_texts, tokenize_texts
from pruning_hf.evaluation import perplexity
from pruning_hf.hf.loading import load_model, load_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    model = load_model(smollm2_path)
    tokenizer = load_tokenizer(smollm2_path)
    dense_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    eval_tokens = tokenize_texts(load_texts("embedded@test"), tokenizer)
    return model, tokenizer, dense_state, eval_tokens


def test_sparsegpt_beats_wanda_beats_magnitude_at_50_percent(smollm2):
    model, tokenizer, dense_state, eval_tokens = smollm2

    def ppl():
        return perplexity(model, eval_tokens, seq_len=256, max_windows=8)["perplexity"]

    dense = ppl()
    results = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model.load_state_dict(dense_state)
        config = PruningConfig(method=method, sparsity=0.5,
                               calibration={"source": "embedded", "num_samples": 16, "seq_len": 256, "seed": 0})
        report = prune(model, config, tokenizer, progress=False)
        assert report.sparsity == pytest.approx(0.5, abs=1e-3)
        results[method] = ppl()
    model.load_state_dict(dense_state)
    assert 5 < dense < 40, dense  # sanity: the real model on real prose
    assert results["sparsegpt"] < results["wanda"] < results["magnitude"], results
    assert results["sparsegpt"] < 1.6 * dense, (results, dense)
    assert torch.isfinite(torch.tensor(list(results.values()))).all()
