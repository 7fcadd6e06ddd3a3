"""Beyond SparseGPT and Wanda: OWL / global layer allocation, refinement, block patterns, iterative pruning."""

from __future__ import annotations

import copy
import math
import mmap
import time

import pytest
import torch

from conftest import tiny_model
from pruning_hf import PruningConfig, iterative_prune
from pruning_hf.sparsity.allocation import global_sparsities, outlier_ratio, owl_sparsities, score_histogram
from pruning_hf.data.text import load_texts, sample_windows, tokenize_texts
from pruning_hf.cli import main
from pruning_hf.engine import prune_model, select_targets
from pruning_hf.sparsity.masks import block_mask, block_scores, check_nm, parse_pattern
from pruning_hf.models.architectures import weight_matrix
from pruning_hf.methods.sparsegpt import sparsegpt_prune
from pruning_hf.sparsity.scores import wanda_scores
from pruning_hf.sparsity.refinement import reconstruction_error, refine_weight
from pruning_hf.engine.hooks import collect_input_statistics

CAL = {"num_samples": 8, "seq_len": 64, "batch_size": 4}


@pytest.fixture(scope="module")
def prose_tokens(tokenizer) -> torch.Tensor:
    """Real English prose (Python docs) as byte tokens."""
    return tokenize_texts(load_texts("embedded")[:40], tokenizer)


@pytest.fixture(scope="module")
def windows(prose_tokens) -> torch.Tensor:
    return sample_windows(prose_tokens, CAL["num_samples"], CAL["seq_len"], seed=0)


def _layer_weights(model, config) -> list[dict[str, torch.Tensor]]:
    per_layer, _ = select_targets(model, config)
    return [{name: weight_matrix(module).detach().clone() for name, module in layer.items()} for layer in per_layer]


# --- OWL and global allocation ------------------------------------------------------------------

@pytest.mark.parametrize("target,lam", [(0.5, 0.08), (0.7, 0.2), (0.05, 0.08), (0.95, 0.08)])
def test_owl_sparsities_average_to_target_within_bounds_and_order(target, lam):
    generator = torch.Generator().manual_seed(1)
    ratios = (torch.rand(12, generator=generator) * 0.1).tolist()
    sizes = [1000] * 6 + [3000] * 6
    sparsities = owl_sparsities(ratios, sizes, target, lam)
    mean = sum(s * n for s, n in zip(sparsities, sizes)) / sum(sizes)
    assert mean == pytest.approx(target, abs=1e-12)
    spread = min(lam, target, 0.99 - target)
    assert all(target - spread - 1e-12 <= s <= target + spread + 1e-12 for s in sparsities)
    assert max(abs(s - target) for s in sparsities) == pytest.approx(spread)  # the full lambda is used
    order = sorted(range(12), key=lambda i: ratios[i])
    assert all(sparsities[a] > sparsities[b] for a, b in zip(order, order[1:]))  # more outliers -> less pruned


def test_owl_equal_ratios_stay_uniform():
    assert owl_sparsities([0.02] * 4, [10] * 4, 0.6, 0.08) == [0.6] * 4


def test_outlier_ratio_counts_scores_above_m_times_mean():
    scores = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 21.0])]
    # mean = 30 / 10 = 3; above 5 * 3 = 15: only 21
    assert outlier_ratio(scores, 5.0) == pytest.approx(0.1)
    assert outlier_ratio(scores, 0.2) == pytest.approx(1.0)


def test_global_sparsities_match_one_exact_threshold():
    generator = torch.Generator().manual_seed(0)
    layers = [torch.rand(4000, generator=generator) * scale for scale in (0.5, 1.0, 2.0, 4.0)]
    sparsities = global_sparsities([score_histogram([s]) for s in layers], 0.5)
    total = torch.cat(layers)
    threshold = total.kthvalue(total.numel() // 2).values
    exact = [float((s <= threshold).float().mean()) for s in layers]
    assert sum(sparsities) / 4 == pytest.approx(0.5, abs=1e-9)
    assert sparsities == pytest.approx(exact, abs=0.01)  # histogram bins are 1/128 octave wide
    assert sparsities == sorted(sparsities, reverse=True)  # smaller scores -> pruned more


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_owl_in_the_engine_uses_dense_outlier_ratios(method, windows):
    model = tiny_model("llama", seed=3, layers=4)
    config = PruningConfig(method=method, sparsity=0.6, allocation="owl", owl_lambda=0.1, owl_m=3.0, calibration=CAL)
    per_layer, _ = select_targets(model, config)
    targets = {name: module for layer in per_layer for name, module in layer.items()}
    with collect_input_statistics(targets, hessian=False) as stats:  # dense model, full forward passes
        with torch.no_grad():
            model(input_ids=windows, use_cache=False)
    expected = [outlier_ratio([wanda_scores(weight_matrix(m).detach(), stats[n].column_norms)
                               for n, m in layer.items()], 3.0) for layer in per_layer]

    report = prune_model(model, config, windows=windows, progress=False)
    allocation = report.allocation
    assert allocation["kind"] == "owl"
    assert allocation["outlier_ratio"] == pytest.approx(expected, rel=1e-4)
    layer_sparsity = allocation["layer_sparsity"]
    assert sum(layer_sparsity) / 4 == pytest.approx(0.6)
    assert all(0.5 - 1e-9 <= s <= 0.7 + 1e-9 for s in layer_sparsity)
    order = sorted(range(4), key=lambda i: expected[i])
    assert all(layer_sparsity[a] > layer_sparsity[b] for a, b in zip(order, order[1:]))
    for record, target in zip(report.layers, layer_sparsity):  # each layer pruned to its own target
        pruned = sum(info["sparsity"] * info["numel"] for info in record.linears.values())
        assert pruned / sum(info["numel"] for info in record.linears.values()) == pytest.approx(target, abs=0.02)
    assert report.sparsity == pytest.approx(0.6, abs=0.01)


def test_global_allocation_in_the_engine(windows):
    model = tiny_model("opt", seed=1, layers=4)
    report = prune_model(model, PruningConfig(method="wanda", sparsity=0.5, allocation="global", scope="layer",
                                              calibration=CAL), windows=windows, progress=False)
    layer_sparsity = report.allocation["layer_sparsity"]
    assert sum(layer_sparsity) / 4 == pytest.approx(0.5, abs=1e-9)
    assert len(set(round(s, 3) for s in layer_sparsity)) > 1
    assert report.sparsity == pytest.approx(0.5, abs=0.01)


# --- refinement ---------------------------------------------------------------------------------

def _correlated_inputs(tokens: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=generator) / math.sqrt(width)
    return torch.randn(tokens, width, generator=generator) @ mixing + torch.randn(width, generator=generator)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
@pytest.mark.parametrize("start", ["wanda", "sparsegpt"])
def test_refine_weight_never_increases_any_rows_error_and_keeps_the_pattern(pattern, start):
    spec = parse_pattern(pattern)
    inputs = _correlated_inputs(3000, 64, seed=7)
    hessian = inputs.T @ inputs / inputs.shape[0]
    dense = torch.randn(48, 64, generator=torch.Generator().manual_seed(8))
    if start == "wanda":
        from pruning_hf.sparsity.masks import mask_from_scores
        pruned = dense * mask_from_scores(wanda_scores(dense, hessian.diagonal().sqrt()), 0.5, spec, per_row=True)
    else:
        pruned = sparsegpt_prune(dense.clone(), hessian, 0.5, spec, block_size=16)
    result = refine_weight(dense, pruned, hessian, spec, rounds=20)
    before = ((inputs @ (dense - pruned).T) ** 2).mean(0)  # per output row, on the calibration inputs
    after = ((inputs @ (dense - result.weight).T) ** 2).mean(0)
    assert (after <= before * (1 + 1e-5) + 1e-6).all()
    assert after.sum() < 0.97 * before.sum()  # and it does improve
    assert result.error_after == pytest.approx(float(after.sum()), rel=1e-3)
    assert result.swaps > 0
    assert torch.equal((result.weight != 0).sum(1), (pruned != 0).sum(1))  # per-row counts unchanged
    if spec.is_nm:
        assert check_nm(result.weight, spec.n, spec.m)


def test_reconstruction_error_matches_outputs():
    inputs = _correlated_inputs(500, 16, seed=1)
    dense, pruned = torch.randn(8, 16), torch.randn(8, 16)
    direct = ((inputs @ (dense - pruned).T) ** 2).mean(0)
    assert torch.allclose(reconstruction_error(dense, pruned, inputs.T @ inputs / 500), direct, rtol=1e-4)


@pytest.mark.parametrize("method,pattern", [("wanda", "unstructured"), ("sparsegpt", "unstructured"),
                                            ("sparsegpt", "2:4"), ("magnitude", "unstructured")])
def test_refinement_in_the_engine_never_increases_layer_error(method, pattern, windows):
    sparsity = None if pattern == "2:4" else 0.6
    plain = tiny_model("llama", seed=5)
    refined = tiny_model("llama", seed=5)
    dense = _layer_weights(plain, PruningConfig(method=method, sparsity=sparsity, pattern=pattern))
    base = PruningConfig(method=method, sparsity=sparsity, pattern=pattern, calibration=CAL)
    per_layer, _ = select_targets(plain, base)
    with collect_input_statistics(per_layer[0], hessian=True) as stats:  # layer 0 inputs do not depend on pruning
        with torch.no_grad():
            plain(input_ids=windows, use_cache=False)
    prune_model(plain, base, windows=windows, progress=False)
    config = PruningConfig(method=method, sparsity=sparsity, pattern=pattern, refine=True, refine_iterations=8,
                           calibration=CAL)
    report = prune_model(refined, config, windows=windows, progress=False)
    plain_weights, refined_weights = _layer_weights(plain, base), _layer_weights(refined, base)
    for name, weight in dense[0].items():
        hessian = stats[name].hessian
        before = reconstruction_error(weight, plain_weights[0][name], hessian).sum()
        after = reconstruction_error(weight, refined_weights[0][name], hessian).sum()
        assert after <= before * (1 + 1e-5), name
        zeros = (plain_weights[0][name] == 0).float().mean()
        assert (refined_weights[0][name] == 0).float().mean() == pytest.approx(zeros)
    for record in report.layers:
        assert record.refine_seconds > 0
        for name, info in record.linears.items():
            assert info["error_after"] <= info["error_before"] * (1 + 1e-6), name
    assert sum(info["error_after"] for r in report.layers for info in r.linears.values()) < \
        sum(info["error_before"] for r in report.layers for info in r.linears.values())
    assert report.sparsity == pytest.approx(0.5 if pattern == "2:4" else 0.6, abs=0.01)


# --- block patterns -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,rows,cols", [("block:4x4", 4, 4), ("4x4", 4, 4), ("2X8", 2, 8), ("block: 1 x 8", 1, 8)])
def test_parse_block_pattern(text, rows, cols):
    pattern = parse_pattern(text)
    assert pattern.is_block and (pattern.rows, pattern.cols) == (rows, cols)
    assert str(pattern) == f"block:{rows}x{cols}"
    assert parse_pattern(str(pattern)) == pattern


@pytest.mark.parametrize("text", ["0x4", "4x0", "1x1", "4x", "block:4", "4x4x4"])
def test_parse_block_pattern_rejects(text):
    with pytest.raises(ValueError, match="pattern"):
        parse_pattern(text)


@pytest.mark.parametrize("per_row", [False, True])
def test_block_mask_prunes_whole_blocks_exactly(per_row):
    scores = torch.rand(16, 24, generator=torch.Generator().manual_seed(0))
    keep = block_mask(scores, 0.4, 4, 8, per_row=per_row)
    tiles = keep.reshape(4, 4, 3, 8).permute(0, 2, 1, 3).reshape(4, 3, 32)
    assert ((tiles.all(-1)) | (~tiles.any(-1))).all()  # each block all kept or all pruned
    pruned_tiles = (~tiles.any(-1))
    if per_row:
        assert (pruned_tiles.sum(1) == round(0.4 * 3)).all()
    else:
        assert int(pruned_tiles.sum()) == round(0.4 * 12)
    # the pruned blocks are the lowest-scored ones: of the whole tensor, or of each strip of block rows
    sums = block_scores(scores, 4, 8)
    strips = [(sums[i], pruned_tiles[i]) for i in range(sums.shape[0])] if per_row else [(sums, pruned_tiles)]
    for strip, pruned in strips:
        assert strip[pruned].max() <= strip[~pruned].min()


@pytest.mark.parametrize("method,scope", [("magnitude", "layer"), ("magnitude", "global"), ("wanda", "layer"),
                                          ("wanda", "row"), ("sparsegpt", None)])
@pytest.mark.parametrize("pattern,rows,cols", [("block:4x4", 4, 4), ("block:2x8", 2, 8)])
def test_block_pattern_in_the_engine(method, scope, pattern, rows, cols, windows):
    model = tiny_model("llama", seed=2)
    config = PruningConfig(method=method, sparsity=0.5, pattern=pattern, scope=scope, calibration=CAL)
    report = prune_model(model, config, windows=windows, progress=False)
    total_blocks = pruned_blocks = 0
    for layer in _layer_weights(model, config):
        for name, weight in layer.items():
            out_features, in_features = weight.shape
            tiles = (weight != 0).reshape(out_features // rows, rows, in_features // cols, cols).permute(0, 2, 1, 3)
            tiles = tiles.reshape(out_features // rows, in_features // cols, rows * cols)
            assert ((tiles.all(-1)) | (~tiles.any(-1))).all(), name  # every block fully zero or fully kept
            zero = int((~tiles.any(-1)).sum())
            if scope != "global":
                strips = out_features // rows if scope == "row" else 1
                assert zero == strips * round(0.5 * tiles.shape[0] * tiles.shape[1] / strips), name  # exact
            total_blocks += tiles.shape[0] * tiles.shape[1]
            pruned_blocks += zero
    assert pruned_blocks / total_blocks == pytest.approx(0.5, abs=0.01)
    assert report.sparsity == pytest.approx(pruned_blocks / total_blocks)


def test_block_pattern_shape_mismatch_is_rejected_before_calibration():
    model = tiny_model("llama")
    config = PruningConfig(method="wanda", sparsity=0.5, pattern="block:3x4", calibration=CAL)
    with pytest.raises(ValueError, match=r"block:3x4.*q_proj.*shape"):
        prune_model(model, config, windows=None, progress=False)  # fails before asking for windows


def test_owl_with_blocks(windows):
    model = tiny_model("llama", seed=4, layers=4)
    report = prune_model(model, PruningConfig(method="wanda", sparsity=0.5, pattern="block:4x4", allocation="owl",
                                              scope="layer", calibration=CAL), windows=windows, progress=False)
    assert sum(report.allocation["layer_sparsity"]) / 4 == pytest.approx(0.5)
    assert report.sparsity == pytest.approx(0.5, abs=0.02)


# --- iterative pruning --------------------------------------------------------------------------

TRAINED_TARGETS = ["*proj", "lm_head"]  # the LM head too: a tiny model leans on it most


@pytest.fixture(scope="module")
def trained_sparse_model(prose_tokens):
    """A tiny Llama trained on prose with 60% of every targeted weight held at exactly zero.

    Magnitude pruning up to 60% then removes only those zeros (perplexity unchanged); any step
    beyond prunes trained weights (perplexity rises). The budget is therefore met up to 60%.
    """
    torch.manual_seed(0)
    model = tiny_model("llama", seed=0).train()
    per_layer, head = select_targets(model, PruningConfig(method="magnitude", sparsity=0.6, targets=TRAINED_TARGETS))
    masks = {}
    for module in [m for layer in per_layer for m in layer.values()] + list(head.values()):
        keep = torch.zeros(module.weight.numel(), dtype=torch.bool)
        keep[torch.randperm(keep.numel())[: keep.numel() - round(0.6 * keep.numel())]] = True
        masks[module] = keep.view_as(module.weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = sample_windows(prose_tokens[: prose_tokens.numel() // 2], 256, 64, seed=1)
    for batch in train.split(16):
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for module, keep in masks.items():
                module.weight.mul_(keep)
    return model.eval()


def test_iterative_stops_at_the_last_step_within_budget(trained_sparse_model, prose_tokens):
    model = copy.deepcopy(trained_sparse_model)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    validation = sample_windows(prose_tokens[prose_tokens.numel() // 2:], 8, 64, seed=2)
    config = PruningConfig(method="magnitude", sparsity=0.9, targets=TRAINED_TARGETS)
    result = iterative_prune(model, config, validation, steps=[0.2, 0.4, 0.6, 0.8, 0.9], max_increase=0.05,
                             progress=False)
    assert [step.sparsity for step in result.steps] == [0.2, 0.4, 0.6, 0.8]  # stopped at the first failure
    assert [step.accepted for step in result.steps] == [True, True, True, False]
    assert result.steps[2].perplexity == pytest.approx(result.dense_perplexity, rel=1e-5)
    assert result.steps[3].increase > 0.05
    assert result.sparsity == 0.6 and result.perplexity == result.steps[2].perplexity
    assert result.report.sparsity == pytest.approx(0.6, abs=1e-3)
    for key, value in model.state_dict().items():  # the 0.8 step was undone: back to the 0.6 model
        assert torch.equal(value, original[key]), key
    assert model.pruning_config.sparsity == 0.6
    assert model.config.pruning_config["sparsity"] == 0.6


def test_iterative_keeps_the_dense_model_when_no_step_fits(trained_sparse_model, tokenizer):
    model = copy.deepcopy(trained_sparse_model)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    result = iterative_prune(model, PruningConfig(method="magnitude", sparsity=0.8, targets=TRAINED_TARGETS),
                             "embedded@test",
                             tokenizer=tokenizer, step=0.8, max_increase=0.0,
                             validation_seq_len=64, validation_windows=4, progress=False)
    assert [step.accepted for step in result.steps] == [False]
    assert result.sparsity == 0.0 and result.report is None
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert model.pruning_config is None


def test_sparsity_steps():
    from pruning_hf.workflows.iterative import sparsity_steps

    assert sparsity_steps(0.5, 0.1) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert sparsity_steps(0.55, 0.2) == [0.2, 0.4, 0.55]


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=[0.5, 0.4]), "increase strictly"),
    (dict(steps=[0.5, 1.0]), r"steps\[1\]"),
    (dict(steps=[]), "at least one"),
    (dict(max_increase=-0.1), "max_increase"),
    (dict(step=0.0), "step"),
])
def test_iterative_rejects_bad_arguments(kwargs, match):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=match):
        iterative_prune(model, PruningConfig(method="magnitude", sparsity=0.5), torch.zeros(2, 8, dtype=torch.long),
                        progress=False, **kwargs)


def test_iterative_rejects_nm_patterns():
    with pytest.raises(ValueError, match="fixes the sparsity"):
        iterative_prune(tiny_model("llama"), PruningConfig(method="magnitude", pattern="2:4"),
                        torch.zeros(2, 8, dtype=torch.long), progress=False)


# --- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(allocation="outlier"), r"allocation='outlier'.*uniform, owl, global"),
    (dict(allocation="owl", owl_lambda=0.6), "owl_lambda"),
    (dict(allocation="owl", owl_m=0), "owl_m"),
    (dict(allocation="owl", owl_m="5"), "owl_m"),
    (dict(owl_lambda=0.1), "only apply with allocation='owl'"),
    (dict(allocation="global", owl_m=3.0), "only apply with allocation='owl'"),
    (dict(refine="yes"), "refine must be true or false"),
    (dict(refine=True, refine_iterations=0), "refine_iterations"),
    (dict(refine_iterations=8), "only applies with refine=True"),
    (dict(allocation="owl", pattern="2:4", sparsity=None), r"allocation='owl'.*'2:4'"),
    (dict(allocation="global", scope="global", method="magnitude"), "scope='global'"),
    (dict(refine=True, pattern="block:4x4"), "block:4x4"),
    (dict(pattern="block:4x8", options={"block_size": 100}, method="sparsegpt"), "block_size=100"),
])
def test_config_rejects_bad_beyond_fields(kwargs, match):
    values = dict(method="wanda", sparsity=0.5) | kwargs
    with pytest.raises(ValueError, match=match):
        PruningConfig(**values)


def test_config_round_trip_and_describe():
    config = PruningConfig(method="sparsegpt", sparsity=0.6, allocation="owl", owl_lambda=0.1, refine=True,
                           refine_iterations=16)
    assert PruningConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert PruningConfig.from_yaml(config.to_yaml()).to_dict() == config.to_dict()
    assert config.describe() == "sparsegpt 60% unstructured +owl +refine"
    assert config.needs_calibration
    assert PruningConfig(method="magnitude", sparsity=0.5, allocation="owl").needs_calibration
    assert not PruningConfig(method="magnitude", sparsity=0.5).needs_calibration
    assert PruningConfig(method="wanda", sparsity=0.5, pattern="4x4").pattern == "block:4x4"


def test_cli_rejects_bad_allocation(capsys):
    code = main(["prune", "embedded:smollm2-135m", "--method", "wanda", "--sparsity", "0.5", "--allocation", "owl2",
                 "--output", "/tmp/never-written"])
    assert code == 2
    assert "allocation='owl2'" in capsys.readouterr().err


def test_cli_iterative_saves_the_kept_model(make_checkpoint, tmp_path, text_file, capsys):
    folder = make_checkpoint("llama")
    output = tmp_path / "kept"
    code = main(["iterative", str(folder), "--method", "wanda", "--sparsity", "0.4", "--step", "0.2",
                 "--max-ppl-increase", "10", "--calibration", str(text_file), "--num-samples", "4", "--seq-len", "32",
                 "--validation", str(text_file), "--validation-seq-len", "32", "--validation-windows", "4",
                 "--output", str(output), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| 20% |" in printed and "| 40% |" in printed and "kept sparsity 40%" in printed
    from pruning_hf import AutoPrunedModel

    reloaded = AutoPrunedModel.from_pretrained(output)
    assert reloaded.pruning_config.sparsity == 0.4


def test_cli_iterative_rejects_bad_steps(capsys):
    code = main(["iterative", "embedded:smollm2-135m", "--method", "wanda", "--steps", "0.3,x",
                 "--output", "/tmp/nope"])
    assert code == 2
    assert "--steps" in capsys.readouterr().err


# --- time and memory in the report --------------------------------------------------------------

def test_peak_memory_sees_a_large_temporary():
    from pruning_hf.utils.memory import PeakMemory

    with PeakMemory("cpu", interval=0.001) as peak:
        block = mmap.mmap(-1, 64 * 2**20)  # 64 MiB of fresh pages (a heap may reuse resident memory it holds)
        for offset in range(0, len(block), 4096):
            block[offset] = 1  # touched: now resident
        time.sleep(0.2)
        block.close()
    assert peak.extra_bytes is not None and peak.extra_bytes >= 32 * 2**20


@pytest.mark.parametrize("schedule", ["layer", "sublayer"])
def test_report_records_time_and_memory_per_layer(windows, schedule):
    """Statistics bytes: the whole layer's at once (q/k/v, o_proj, gate/up, down_proj) in the layer schedule; in
    the sub-block schedule only one input's at a time, the largest being down_proj's (64 x 64 + 64 floats)."""
    model = tiny_model("llama", seed=1)
    report = prune_model(model, PruningConfig(method="sparsegpt", sparsity=0.5, calibration=CAL, schedule=schedule),
                         windows=windows, progress=False)
    restored = type(report).from_dict(report.to_dict())
    held = (4 * (32 * 32 + 32) * 2 + 4 * (64 * 64 + 64) + 4 * (32 * 32 + 32) if schedule == "layer"
            else 4 * (64 * 64 + 64))
    for record in (report.layers[0], restored.layers[0]):
        assert record.method_seconds > 0 and record.refine_seconds == 0
        assert record.statistics_bytes == held
        assert record.extra_memory_bytes is not None


def test_block_pattern_needs_a_sparsity():
    with pytest.raises(ValueError, match=r"sparsity is required for pattern='block:4x4'"):
        PruningConfig(method="wanda", pattern="4x4")


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "structured", "sparsity": 0.3, "allocation": "owl"},
     r"allocation='owl' is not available with method 'structured'; choose one of: uniform, increasing, adaptive"),
    ({"method": "wanda", "sparsity": 0.5, "allocation": "adaptive"},
     r"allocation='adaptive' is not available with method 'wanda'; choose one of: uniform, owl, global"),
    ({"method": "depth", "num_layers": 1, "refine": True}, r"method 'depth' removes whole units"),
])
def test_allocation_and_refine_are_checked_against_the_method(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruningConfig(**kwargs)
