"""Pruning methods on tiny random models of every family, and on single Linear layers."""

import pytest
import torch

from conftest import FAMILIES, tiny_model
from pruning_hf import PruningConfig
from pruning_hf.engine import prune_model, select_targets
from pruning_hf.sparsity.masks import check_nm, parse_pattern
from pruning_hf.models.architectures import weight_matrix
from pruning_hf.methods.sparsegpt import sparsegpt_prune
from pruning_hf.sparsity.hessian import inverse_hessian_factor
from pruning_hf.sparsity.scores import wanda_scores
from pruning_hf.sparsity.statistics import InputStatistics

CASES = [
    ("magnitude", dict(sparsity=0.5)),
    ("magnitude", dict(sparsity=0.3, scope="row")),
    ("wanda", dict(sparsity=0.5)),
    ("wanda", dict(sparsity=0.4, scope="layer")),
    ("sparsegpt", dict(sparsity=0.5)),
    ("magnitude", dict(pattern="2:4")),
    ("wanda", dict(pattern="2:4")),
    ("sparsegpt", dict(pattern="2:4")),
    ("sparsegpt", dict(pattern="4:8")),
]


def windows(num=6, seq=24, seed=0):
    return torch.randint(0, 256, (num, seq), generator=torch.Generator().manual_seed(seed))


def targeted(model, config):
    per_layer, head = select_targets(model, config)
    return {name: module for layer in per_layer for name, module in layer.items()} | head


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method,kwargs", CASES, ids=[f"{m}-{'-'.join(map(str, k.values()))}" for m, k in CASES])
def test_every_targeted_linear_gets_exact_sparsity_and_pattern(family, method, kwargs):
    model = tiny_model(family)
    config = PruningConfig(method=method, calibration={"batch_size": 4}, **kwargs)
    report = prune_model(model, config, windows=windows(), progress=False)
    pattern = parse_pattern(config.pattern)
    for name, module in targeted(model, config).items():
        weight = weight_matrix(module)
        assert torch.isfinite(weight).all(), name
        if pattern.is_nm:
            assert check_nm(weight, pattern.n, pattern.m), name
        rows = weight.shape[0] if config.scope == "row" else 1
        expected_zeros = round(weight.numel() // rows * config.sparsity) * rows
        assert int((weight == 0).sum()) == expected_zeros, name
    assert report.sparsity == pytest.approx(config.sparsity, abs=0.01)
    assert len(report.layers) == model.config.num_hidden_layers
    assert all(record.seconds >= 0 for record in report.layers) and report.total_seconds > 0


def _scaled_llama():
    model = tiny_model("llama")
    with torch.no_grad():  # one Linear much larger in magnitude than the rest
        model.model.layers[0].mlp.down_proj.weight.mul_(10)
    return model


def _pruned_and_kept_magnitudes(scope):
    dense, model = _scaled_llama(), _scaled_llama()
    config = PruningConfig(method="magnitude", sparsity=0.5, scope=scope)
    prune_model(model, config, progress=False)
    originals = dict(dense.named_modules())
    pruned, kept, sparsity = [], [], {}
    for name, module in targeted(model, config).items():
        original = originals[name].weight.detach().abs()
        mask = module.weight != 0
        pruned.append(original[~mask])
        kept.append(original[mask])
        sparsity[name] = (~mask).float().mean().item()
    return torch.cat(pruned), torch.cat(kept), sparsity


def test_global_scope_shares_one_threshold_unlike_layer_scope():
    pruned, kept, sparsity = _pruned_and_kept_magnitudes("global")
    assert pruned.max() <= kept.min()  # one threshold over all targeted weights
    assert pruned.numel() == round(0.5 * (pruned.numel() + kept.numel()))
    assert sparsity["model.layers.0.mlp.down_proj"] < 0.1  # its large weights survive
    pruned, kept, sparsity = _pruned_and_kept_magnitudes("layer")
    assert pruned.max() > kept.min()  # per-Linear thresholds differ
    assert all(value == pytest.approx(0.5) for value in sparsity.values())


def correlated_inputs(tokens=512, features=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=gen)
    scales = torch.logspace(-1, 1, features)
    return (torch.randn(tokens, features, generator=gen) @ mixing) * scales


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_reconstructs_output_better_than_wanda_and_magnitude(pattern):
    x = correlated_inputs()
    weight = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    stats = InputStatistics(64, hessian=True, device=torch.device("cpu"))
    stats.update(x)
    spec = parse_pattern(pattern)
    from pruning_hf.sparsity.masks import mask_from_scores

    def error(pruned):
        return torch.linalg.norm(x @ weight.t() - x @ pruned.t()).item()

    magnitude = weight * mask_from_scores(weight.abs(), 0.5, spec)
    wanda = weight * mask_from_scores(wanda_scores(weight, stats.column_norms), 0.5, spec, per_row=True)
    sparsegpt = sparsegpt_prune(weight.clone(), stats.hessian, 0.5, spec)
    assert (sparsegpt == 0).float().mean().item() == pytest.approx(0.5)
    assert error(sparsegpt) < error(wanda) < error(magnitude)


@pytest.mark.parametrize("features", [7, 256, 600, 1100])
def test_blocked_gram_update_equals_x_transpose_x_over_batches_and_reads(features):
    generator = torch.Generator().manual_seed(features)
    batches = [torch.randn(3, 50, features, generator=generator, dtype=torch.float64).float() for _ in range(3)]
    stats = InputStatistics(features, hessian=True, device=torch.device("cpu"))
    stats.update(batches[0])
    early = stats.xtx.clone()  # a read between batches must not spoil the later sums
    for batch in batches[1:]:
        stats.update(batch)
    x = torch.cat([b.reshape(-1, features) for b in batches]).double()
    expected = x.t() @ x
    torch.testing.assert_close(early.double(), batches[0].reshape(-1, features).double().t()
                               @ batches[0].reshape(-1, features).double(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(stats.xtx.double(), expected, rtol=1e-5, atol=1e-3)
    assert torch.equal(stats.xtx, stats.xtx.t())  # exactly symmetric, as the Cholesky solvers expect
    torch.testing.assert_close(stats.to("cpu").hessian.double(), expected / x.shape[0], rtol=1e-5, atol=1e-5)


def test_sparsegpt_survives_rank_deficient_and_constant_inputs():
    x = torch.ones(100, 32)  # constant inputs: X^T X has rank 1
    x[:, 5] = 0  # a dead input column
    stats = InputStatistics(32, hessian=True, device=torch.device("cpu"))
    stats.update(x)
    weight = torch.randn(16, 32)
    pruned = sparsegpt_prune(weight.clone(), stats.hessian, 0.5, parse_pattern("unstructured"), dampening=1e-8)
    assert torch.isfinite(pruned).all()
    assert (pruned[:, 5] == 0).all()


def test_inverse_hessian_factor_raises_more_dampening_on_failure():
    hessian = -torch.eye(4)  # negative definite: needs dampening > 1 x mean diagonal... mean is negative
    hessian = torch.diag(torch.tensor([1.0, 1.0, 1.0, -2.5]))  # mean diag 0.125; PD only once damping > 2.5
    factor, used = inverse_hessian_factor(hessian, 0.01, retries=6)
    assert used > 0.01 and torch.isfinite(factor).all()
    from pruning_hf.sparsity.hessian import HessianError

    with pytest.raises(HessianError, match="not positive definite"):
        inverse_hessian_factor(hessian, 0.01, retries=1)


@pytest.mark.parametrize("method,kwargs", [("wanda", dict(sparsity=0.5)), ("sparsegpt", dict(pattern="2:4"))])
def test_same_inputs_give_identical_weights(method, kwargs):
    results = []
    for _ in range(2):
        model = tiny_model("llama")
        prune_model(model, PruningConfig(method=method, **kwargs), windows=windows(), progress=False)
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def _input_norms(model, calib, suffixes):
    """Column norms of the inputs of the Linears named ``*suffixes`` when running ``model`` on ``calib``."""
    norms: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            norms[name] = norms.get(name, 0) + x.square().sum(0)
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if n.endswith(suffixes)]
    with torch.no_grad():
        for batch in calib.split(2):
            model(batch)
    for handle in handles:
        handle.remove()
    return {name: value.sqrt() for name, value in norms.items()}


def test_wanda_is_sequential_masks_come_from_inputs_of_the_pruned_layers_below():
    """Layer k's q/k/v masks must use inputs produced by the *pruned* layers < k.

    (Like the Wanda reference, all statistics of one layer come from the layer before it is pruned, so
    gate/up/down and o_proj see that layer's dense attention; q/k/v see only layers below.)"""
    from pruning_hf.sparsity.masks import topk_mask

    dense = tiny_model("llama", layers=3)
    model = tiny_model("llama", layers=3)
    calib = windows(num=4, seq=32)
    prune_model(model, PruningConfig(method="wanda", sparsity=0.5, calibration={"batch_size": 2}),
                windows=calib, progress=False)
    first_linears = ("q_proj", "k_proj", "v_proj")
    sequential_norms = _input_norms(model, calib, first_linears)
    dense_norms = _input_norms(dense, calib, first_linears)
    dense_modules = dict(dense.named_modules())
    differs_from_one_shot = False
    for name, module in model.named_modules():
        if name.endswith(first_linears):
            original = dense_modules[name].weight.detach()
            kept = module.weight.detach() != 0
            expected = topk_mask(wanda_scores(original, sequential_norms[name]), 0.5, dim=-1)
            assert torch.equal(kept, expected), name
            one_shot = topk_mask(wanda_scores(original, dense_norms[name]), 0.5, dim=-1)
            differs_from_one_shot |= not torch.equal(kept, one_shot)
    assert differs_from_one_shot  # the check above can tell sequential from one-shot statistics


def test_targets_and_ignore_select_modules_and_reject_typos():
    model = tiny_model("llama")
    config = PruningConfig(method="magnitude", sparsity=0.5, targets=["mlp.*", "q_proj"], ignore=["down_proj"])
    names = {n.split("layers.")[1] for n in targeted(model, config)}
    assert names == {"0.mlp.gate_proj", "0.mlp.up_proj", "0.self_attn.q_proj",
                     "1.mlp.gate_proj", "1.mlp.up_proj", "1.self_attn.q_proj"}
    with pytest.raises(ValueError, match=r"targets pattern 'qproj' matches no Linear layer.*q_proj"):
        select_targets(model, PruningConfig(method="magnitude", sparsity=0.5, targets=["qproj"]))
    with pytest.raises(ValueError, match="leave no Linear layer"):
        select_targets(model, PruningConfig(method="magnitude", sparsity=0.5, targets=["q_proj"], ignore=["q_proj"]))


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_lm_head_is_pruned_only_when_asked(method):
    model = tiny_model("opt")
    default = PruningConfig(method=method, sparsity=0.5)
    assert "lm_head" not in targeted(model, default)
    config = PruningConfig(method=method, sparsity=0.5, targets=["lm_head", "fc1"])
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    report = prune_model(model, config, windows=windows(), progress=False)
    assert (model.lm_head.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert report.layers[-1].index == model.config.num_hidden_layers and "lm_head" in report.layers[-1].linears
    assert (model.model.decoder.layers[0].self_attn.q_proj.weight != 0).all()
