"""ADMM pruning (method="admm") and targets from the dense model (dense_targets, sparsegpt and admm):
the solver on one Linear against SparseGPT, the pattern, convergence, determinism, the dense-target
cross statistic on a two-layer toy and through the engine, the method on tiny models, and real SmolLM2."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import tiny_model
from pruning_hf import PruningConfig
from pruning_hf.engine import prune_model, select_targets
from pruning_hf.methods.sparsegpt import sparsegpt_prune
from pruning_hf.models.architectures import weight_matrix
from pruning_hf.sparsity.admm import admm_prune, cubic_sparsity
from pruning_hf.sparsity.hessian import HessianError, dense_target_weight
from pruning_hf.sparsity.masks import check_nm, parse_pattern
from pruning_hf.sparsity.refinement import reconstruction_error


def correlated_inputs(tokens=1024, features=128, seed=0):
    """Inputs with correlated features of very different scales, as in real LLM activations."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=gen)
    scales = torch.logspace(-1, 1, features)
    return (torch.randn(tokens, features, generator=gen) @ mixing) * scales


def layer(seed=0, out=96, features=128):
    x = correlated_inputs(features=features, seed=seed)
    weight = torch.randn(out, features, generator=torch.Generator().manual_seed(100 + seed))
    return x, weight, x.t() @ x / x.shape[0]


def error(dense, pruned, hessian) -> float:
    return float(reconstruction_error(dense, pruned, hessian).sum())


SETTINGS = [("unstructured", 0.5), ("2:4", None), ("unstructured", 0.7)]
IDS = ["50%", "2:4", "70%"]


# --- the solver -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pattern,sparsity", SETTINGS, ids=IDS)
def test_admm_error_is_below_sparsegpt_and_support_obeys_the_pattern(pattern, sparsity, seed):
    _, weight, hessian = layer(seed)
    spec = parse_pattern(pattern)
    result = admm_prune(weight, hessian, sparsity, spec, dampening=0.01)  # SparseGPT's dampening
    reference = sparsegpt_prune(weight.clone(), hessian, sparsity or 0.5, spec, dampening=0.01)
    assert error(weight, result.weight, hessian) < 0.8 * error(weight, reference, hessian)
    assert result.objective == pytest.approx(error(weight, result.weight, hessian), rel=1e-3)
    assert int((result.weight == 0).sum()) == round(weight.numel() * (sparsity or 0.5))  # exactly, per matrix
    if spec.is_nm:
        assert check_nm(result.weight, 2, 4)
    assert torch.isfinite(result.weight).all()


def test_stacked_matrices_per_row_and_block_patterns_are_exact():
    _, weight, hessian = layer()
    stacked = admm_prune(weight, hessian, 0.6, parse_pattern("unstructured"), row_groups=[64, 32])
    for part in stacked.weight.split([64, 32]):  # each stacked Linear gets its own exact count
        assert int((part == 0).sum()) == round(part.numel() * 0.6)
    rows = admm_prune(weight, hessian, 0.25, parse_pattern("unstructured"), per_row=True)
    assert ((rows.weight == 0).sum(1) == 32).all()
    blocks = admm_prune(weight, hessian, 0.5, parse_pattern("block:4x4"))
    tiles = (blocks.weight != 0).reshape(24, 4, 32, 4).sum(dim=(1, 3))
    assert set(tiles.unique().tolist()) <= {0, 16} and int((tiles == 0).sum()) == 24 * 32 // 2
    nm = admm_prune(weight, hessian, None, parse_pattern("4:8"), row_groups=[64, 32])
    assert check_nm(nm.weight, 4, 8) and int((nm.weight == 0).sum()) == weight.numel() // 2


@pytest.mark.parametrize("pattern,sparsity", SETTINGS, ids=IDS)
def test_admm_converges_error_non_increasing_over_the_final_iterations(pattern, sparsity):
    _, weight, hessian = layer(2)
    result = admm_prune(weight, hessian, sparsity, parse_pattern(pattern), iterations=40, track=True)
    history = result.history  # one value per iteration, then the re-fitted result
    assert len(history) == 41 and result.iterations == 40
    tail = history[-16:]
    assert all(later <= earlier * (1 + 1e-5) for earlier, later in zip(tail, tail[1:])), tail
    assert result.support_changes[-10:] == [0] * 10  # the mask has settled
    assert history[-1] < 0.9 * history[0]  # ... well below the start (the scaled-magnitude mask)


def test_gradual_mask_follows_the_cubic_schedule():
    assert [round(cubic_sparsity(t, 4, 0.8), 4) for t in range(1, 6)] == [0.4625, 0.7, 0.7875, 0.8, 0.8]
    _, weight, hessian = layer()
    result = admm_prune(weight, hessian, 0.7, parse_pattern("unstructured"), gradual_iterations=8)
    assert int((result.weight == 0).sum()) == round(weight.numel() * 0.7)
    early = admm_prune(weight, hessian, 0.7, parse_pattern("unstructured"), iterations=1, gradual_iterations=8)
    assert int((early.weight == 0).sum()) < weight.numel() * 0.7 * 0.5  # the first step prunes much less
    nm = admm_prune(weight, hessian, None, parse_pattern("2:4"), gradual_iterations=8)
    assert check_nm(nm.weight, 2, 4) and int((nm.weight == 0).sum()) == weight.numel() // 2


def test_admm_is_deterministic():
    _, weight, hessian = layer(3, out=256, features=640)  # large enough for the sampled thresholds
    runs = [admm_prune(weight, hessian, 0.5, parse_pattern(p), iterations=6).weight for p in ("unstructured", "2:4")
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[2], runs[3])


def test_rank_deficient_inputs_and_dead_columns_stay_finite():
    x = torch.ones(100, 32)  # constant inputs: X^T X has rank 1
    x[:, 5] = 0  # a dead input column
    weight = torch.randn(16, 32)
    for pattern in ("unstructured", "2:4"):
        result = admm_prune(weight, x.t() @ x, 0.5, parse_pattern(pattern), dampening=1e-8)
        assert torch.isfinite(result.weight).all()
        assert int((result.weight == 0).sum()) == weight.numel() // 2


def test_an_indefinite_hessian_gets_more_dampening_then_fails_clearly():
    hessian = torch.diag(torch.tensor([1.0, 1.0, 1.0, -2.5] * 4))  # PD only with a lot of dampening
    weight = torch.randn(8, 16)
    result = admm_prune(weight, hessian, 0.5, parse_pattern("unstructured"), dampening=0.01, retries=6)
    assert result.dampening > 0.01 and torch.isfinite(result.weight).all()
    with pytest.raises(HessianError, match="not usable"):
        admm_prune(weight, hessian, 0.5, parse_pattern("unstructured"), dampening=0.01, retries=1)
    with pytest.raises(ValueError, match="hessian"):
        admm_prune(weight, torch.eye(8), 0.5, parse_pattern("unstructured"))
    with pytest.raises(ValueError, match="row_groups"):
        admm_prune(weight, hessian, 0.5, parse_pattern("unstructured"), row_groups=[4, 5])


# --- targets from the dense model -----------------------------------------------------------------------

def test_dense_targets_bring_layer_2_closer_to_the_dense_model():
    """Two-layer toy: layer 1 is pruned, so layer 2 sees perturbed inputs. Fitting layer 2 to the dense
    model's outputs (cross statistic X^T X_d) beats fitting it to its own dense weight on the perturbed
    inputs, with ADMM and with SparseGPT."""
    u = correlated_inputs(tokens=2048, features=64, seed=4)
    first = torch.randn(128, 64, generator=torch.Generator().manual_seed(5))
    second = torch.randn(96, 128, generator=torch.Generator().manual_seed(6))
    x_dense = torch.relu(u @ first.t())
    first_pruned = admm_prune(first, u.t() @ u / len(u), 0.6, parse_pattern("unstructured")).weight
    x_pruned = torch.relu(u @ first_pruned.t())
    hessian = x_pruned.t() @ x_pruned / len(u)
    cross = x_pruned.t() @ x_dense / len(u)
    dense_out = x_dense @ second.t()

    def distance(pruned):
        return float((dense_out - x_pruned @ pruned.t()).square().sum() / len(u))

    fitted = dense_target_weight(second, hessian, cross @ second.t(), 0.01)
    # unpruned, W* is the least-squares fit of the dense outputs: far closer than W itself
    assert distance(fitted) < 0.8 * distance(second)
    for pattern, sparsity in SETTINGS:
        spec = parse_pattern(pattern)
        for name, solve in [("admm", lambda w: admm_prune(w, hessian, sparsity, spec, dampening=0.01).weight),
                            ("sparsegpt", lambda w: sparsegpt_prune(w.clone(), hessian, sparsity or 0.5, spec))]:
            own, dense_fit = solve(second), solve(fitted)
            # a good part of the error that the perturbed inputs alone cause is corrected
            assert distance(dense_fit) < distance(own) - 0.2 * distance(second), (name, pattern)
    # with the dense inputs equal to the pruned ones the target is the weight itself
    assert torch.allclose(dense_target_weight(second, hessian, hessian @ second.t(), 0.01), second, rtol=1e-3,
                          atol=1e-3)


def test_engine_collects_the_cross_statistic_and_uses_it(one_thread, monkeypatch):
    model = tiny_model("llama", layers=3)
    dense = tiny_model("llama", layers=3)
    seen: dict[int, dict] = {}
    method_class = PruningConfig(method="sparsegpt", sparsity=0.5).method_class
    original = method_class.prune_layer

    def spy(self, layer_index, targets, stats):  # called per sub-block group: collect the layer's statistics
        seen.setdefault(layer_index, {}).update(
            {name: (s.hessian @ targets[name].weight.t().float(), s.dense_products(targets[name].weight.float()))
             for name, s in stats.items()})
        return original(self, layer_index, targets, stats)

    monkeypatch.setattr(method_class, "prune_layer", spy)
    config = PruningConfig(method="sparsegpt", sparsity=0.5, dense_targets=True, calibration={"batch_size": 4})
    prune_model(model, config, windows=windows(), progress=False)
    monkeypatch.undo()
    assert sorted(seen) == [0, 1, 2]
    def gap(pair):  # H W^T against X^T X_dense W^T / n
        own, cross = pair
        return float((cross - own).norm() / own.norm())

    first = {name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1]: pair for name, pair in seen[0].items()}
    # layer 0: q/k/v read the same input in both models; o_proj reads the output of pruned q/k/v (sub-blocks)
    assert all(gap(first[f"self_attn.{n}"]) < 1e-5 for n in ("q_proj", "k_proj", "v_proj"))
    assert gap(first["self_attn.o_proj"]) > 1e-3
    assert all(gap(pair) > 1e-3 for pair in seen[2].values())  # later they differ (layers 0 and 1 are pruned)
    # the dense-target model's output is closer to the dense model's than the plain one's
    plain = tiny_model("llama", layers=3)
    prune_model(plain, PruningConfig(method="sparsegpt", sparsity=0.5, calibration={"batch_size": 4}),
                windows=windows(), progress=False)
    ids = windows()
    with torch.no_grad():
        target = dense(ids).logits
        gaps = [float((m(ids).logits - target).square().mean()) for m in (model, plain)]
    assert gaps[0] < gaps[1], gaps


# --- the method -----------------------------------------------------------------------------------------

CASES = [("opt", dict(sparsity=0.5)), ("gemma3", dict(sparsity=0.5)), ("gpt2", dict(sparsity=0.5)),
         ("opt", dict(pattern="2:4")), ("gemma3", dict(pattern="4:8")), ("llama", dict(sparsity=0.4, scope="row")),
         ("llama", dict(sparsity=0.6, allocation="owl", refine=True)), ("gpt2", dict(pattern="2:4", refine=True)),
         ("opt", dict(sparsity=0.5, pattern="block:4x4")), ("llama", dict(sparsity=0.5, gradual_iterations=5)),
         ("llama", dict(pattern="2:4", dense_targets=True, refine=True))]


def windows(num=6, seq=24, seed=0):
    return torch.randint(0, 256, (num, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family,kwargs", CASES,
                         ids=[f"{f}-{'-'.join(map(str, k.values()))}" for f, k in CASES])
def test_method_prunes_every_family_with_exact_pattern(family, kwargs, one_thread):
    model = tiny_model(family)
    config = PruningConfig(method="admm", calibration={"batch_size": 4}, **kwargs)
    report = prune_model(model, config, windows=windows(), progress=False)
    pattern = config.pattern_spec
    per_layer, _ = select_targets(model, config)
    for name, module in {n: m for layer in per_layer for n, m in layer.items()}.items():
        weight = weight_matrix(module)
        assert torch.isfinite(weight).all(), name
        if pattern.is_nm:
            assert check_nm(weight, pattern.n, pattern.m), name
        if config.allocation == "uniform":
            rows = weight.shape[0] if config.scope == "row" else 1
            assert int((weight == 0).sum()) == round(weight.numel() // rows * config.sparsity) * rows, name
    assert report.sparsity == pytest.approx(config.sparsity, abs=0.01)


def test_method_options_are_validated_and_described():
    config = PruningConfig(method="admm", sparsity=0.5, admm_iterations=8, rho=0.2)
    assert config.options.admm_iterations == 8 and config.scope == "layer"
    assert config.to_dict()["options"]["rho"] == 0.2
    with pytest.raises(ValueError, match="gradual_iterations"):
        PruningConfig(method="admm", sparsity=0.5, admm_iterations=4, gradual_iterations=5)
    with pytest.raises(ValueError, match="rho_growth"):
        PruningConfig(method="admm", sparsity=0.5, rho_growth=0.5)
    with pytest.raises(ValueError, match="block_size"):
        PruningConfig(method="admm", sparsity=0.5, block_size=64)  # a SparseGPT option
    with pytest.raises(ValueError, match="dense_targets"):
        PruningConfig(method="sparsegpt", sparsity=0.5, dense_targets="yes")
    with pytest.raises(ValueError, match="dense_targets"):
        PruningConfig(method="wanda", sparsity=0.5, dense_targets=True)  # no Hessian, no fit
    assert all(f.metadata.get("help") for f in dataclasses.fields(config.method_class.Options))


def test_method_gives_identical_weights_for_identical_inputs(one_thread):
    results = []
    for _ in range(2):
        model = tiny_model("llama")
        prune_model(model, PruningConfig(method="admm", pattern="2:4"), windows=windows(), progress=False)
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


# --- real weights ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_admm_2to4_beats_sparsegpt_2to4(smollm2_path, one_thread):
    from pruning_hf.data.text import load_texts, sample_windows, tokenize_texts
    from pruning_hf.evaluation.perplexity import perplexity
    from pruning_hf.hf.loading import load_model, load_tokenizer

    model = load_model(smollm2_path, dtype=torch.float32)
    tokenizer = load_tokenizer(smollm2_path)
    tokens = tokenize_texts(load_texts("embedded"), tokenizer)
    eval_tokens, calib_tokens = tokens[:8 * 128], tokens[8 * 128:]
    calib = sample_windows(calib_tokens, 8, 128, seed=0)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for method in ("sparsegpt", "admm"):
        model.load_state_dict(dense)
        # the first four decoder layers keep the test short (benchmarks/beyond.py prunes all 30)
        config = PruningConfig(method=method, pattern="2:4", targets=["model.layers.[0-3].*"],
                               calibration={"batch_size": 8})
        prune_model(model, config, windows=calib, progress=False)
        results[method] = perplexity(model, eval_tokens, 128, 8)["perplexity"]
    assert results["admm"] < results["sparsegpt"], results
