"""Structured width pruning (neurons, heads / KV groups) and depth pruning on tiny OPT / Llama / Gemma3 models."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from conftest import byte_tokenizer, tiny_config, tiny_model

from pruning_hf import PruningConfig, prune
from pruning_hf.models.architectures import decoder_layers, get_architecture
from pruning_hf.engine import select_targets
from pruning_hf.methods.structured import adaptive_removals, head_units, units_to_keep
from pruning_hf.sparsity.allocation import apportion, increasing_fractions
from pruning_hf.models.shrink import attention_linears, check_kv_grouping, mlp_linears

FAMILIES = ("opt", "llama", "gemma3")
CALIBRATION = {"source": "embedded", "num_samples": 4, "seq_len": 32, "batch_size": 4}
IDS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))


def structured(**kwargs) -> PruningConfig:
    kwargs.setdefault("importance", "magnitude")
    kwargs.setdefault("update", "none")  # exact cuts: tests compare kept weights with the dense ones
    return PruningConfig(method="structured", calibration=CALIBRATION, **kwargs)


@functools.cache
def calibration_tokens() -> torch.Tensor:
    """The calibration windows of CALIBRATION, tokenized once per session (the byte tokenizer is slow)."""
    from pruning_hf.data.text import calibration_windows

    return calibration_windows(PruningConfig(method="wanda", sparsity=0.5, calibration=CALIBRATION).calibration,
                               byte_tokenizer())


def pruned(family: str, config: PruningConfig, layers: int = 2, model=None):
    model = model if model is not None else tiny_model(family, layers=layers)
    windows = calibration_tokens() if config.needs_calibration else None
    report = prune(model, config, byte_tokenizer(), progress=False, windows=windows)
    return model, report


def mqa_gemma(layers: int = 2):
    """Gemma3 with one K/V head per layer (multi-query attention, like Gemma-3-270M)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config("gemma3", layers=layers)
    config.num_key_value_heads = 1
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def kept_columns(original: torch.Tensor, pruned_weight: torch.Tensor) -> list[int]:
    """Which columns of ``original`` (out, in) survive in ``pruned_weight``, found by exact equality."""
    return [next(j for j in range(original.shape[1]) if torch.equal(original[:, j], pruned_weight[:, i]))
            for i in range(pruned_weight.shape[1])]


# --- shapes and parameter counts -------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_mlp_neurons_removed_uniformly(family):
    model, report = pruned(family, structured(target="mlp", sparsity=0.25))
    spec = get_architecture(model)
    for layer in decoder_layers(model):
        inputs, output = mlp_linears(layer, spec)
        assert [w.weight.shape for w in inputs] == [torch.Size([48, 32])] * len(inputs)
        assert output.weight.shape == (32, 48)
    assert getattr(model.config, spec.mlp.size_key) == 48
    per_layer = 16 * 32 * (len(spec.mlp.inputs) + 1) + (16 if family == "opt" else 0)  # OPT: fc1 bias
    assert report.parameters_before - report.parameters_after == 2 * per_layer
    assert sum(p.numel() for p in model.parameters()) == report.parameters_after


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_removed_as_whole_kv_groups(family):
    model, report = pruned(family, structured(target="heads", sparsity=0.5))
    spec = get_architecture(model)
    for layer in decoder_layers(model):
        q, k, v, o = attention_linears(layer, spec)
        head_dim = 8
        if family == "opt":  # 4 heads = 4 groups -> 2 heads
            assert (q.out_features, k.out_features, o.in_features) == (2 * head_dim, 2 * head_dim, 2 * head_dim)
        else:  # 4 query heads in 2 KV groups -> 1 group of 2 query heads
            assert (q.out_features, k.out_features, v.out_features, o.in_features) == (16, 8, 8, 16)
    bias = 1 if family == "opt" else 0
    per_layer = 16 * 32 * 4 + bias * (16 * 3) if family == "opt" else (16 + 8 + 8 + 16) * 32
    assert report.parameters_before - report.parameters_after == 2 * per_layer


def test_single_kv_group_prunes_query_heads_and_keeps_kv():
    model, _ = pruned("gemma3", structured(target="heads", sparsity=0.25), model=mqa_gemma())
    for layer in decoder_layers(model):
        q, k, v, o = attention_linears(layer, get_architecture(model))
        assert (q.out_features, k.out_features, v.out_features, o.in_features) == (24, 8, 8, 24)
        assert layer.self_attn.num_key_value_groups == 3


def test_both_and_depth_param_counts():
    model, report = pruned("llama", structured(target="both", sparsity=0.5))
    assert report.details["layer_shapes"] == [{"intermediate_size": 32, "num_attention_heads": 2,
                                               "num_key_value_heads": 1}] * 2
    model, report = pruned("llama", PruningConfig(method="depth", num_layers=2, calibration=CALIBRATION), layers=3)
    assert len(model.model.layers) == 1 and model.config.num_hidden_layers == 1
    one_layer = sum(p.numel() for p in tiny_model("llama", layers=1).model.layers[0].parameters())
    assert report.parameters_before - report.parameters_after == 2 * one_layer
    assert len(report.details["removed_layers"]) == 2


# --- correctness of what is removed ---------------------------------------------------------------
@pytest.mark.parametrize("family,target,make", [
    ("opt", "mlp", None), ("llama", "mlp", None), ("gemma3", "mlp", None),
    ("opt", "heads", None), ("llama", "heads", None), ("gemma3", "heads", mqa_gemma),
])
def test_removing_units_equals_zeroing_their_output_columns(family, target, make):
    """The shrunk model computes exactly what the dense one does with the removed units' outputs zeroed."""
    dense = make() if make else tiny_model(family)
    model, _ = pruned(family, structured(target=target, sparsity=0.5), model=copy.deepcopy(dense))
    spec = get_architecture(dense)
    reference = copy.deepcopy(dense)
    for ref_layer, layer in zip(decoder_layers(reference), decoder_layers(model)):
        pick = (lambda l: mlp_linears(l, spec)[1]) if target == "mlp" else (lambda l: attention_linears(l, spec)[3])
        ref_out, new_out = pick(ref_layer), pick(layer)
        keep = kept_columns(ref_out.weight, new_out.weight)
        removed = sorted(set(range(ref_out.in_features)) - set(keep))
        assert len(removed) == ref_out.in_features // 2
        with torch.no_grad():
            ref_out.weight[:, removed] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, rtol=1e-5, atol=1e-5)


def test_gqa_never_splits_a_kv_group():
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 8, 4, 4
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_config(config).eval()
    spec = get_architecture(dense)
    for sparsity in (0.25, 0.5, 0.75):
        model, _ = pruned("llama", structured(target="heads", sparsity=sparsity, importance="random"),
                          model=copy.deepcopy(dense))
        for dense_layer, layer in zip(decoder_layers(dense), decoder_layers(model)):
            dq, dk, _, _ = attention_linears(dense_layer, spec)
            q, k, _, _ = attention_linears(layer, spec)
            groups = [kept_columns(dk.weight.t(), k.weight.t()[:, g * 4:(g + 1) * 4])[0] // 4
                      for g in range(k.out_features // 4)]
            heads = [c // 4 for c in kept_columns(dq.weight.t(), q.weight.t())[::4]]
            assert heads == [2 * g + i for g in groups for i in range(2)]  # both query heads of each kept group
            assert len(groups) == 4 - round(4 * sparsity)
    with pytest.raises(ValueError, match="split a key/value group"):
        check_kv_grouping(torch.tensor([0, 1]), torch.tensor([1]), num_q=4, num_kv=2)  # heads of group 0, K/V of 1
    with pytest.raises(ValueError, match="at least one head"):
        check_kv_grouping(torch.tensor([], dtype=torch.long), torch.tensor([0]), num_q=4, num_kv=2)


@pytest.mark.parametrize("config", [
    structured(target="mlp", sparsity=0.0), structured(target="heads", sparsity=0.0),
    structured(target="both", sparsity=0.0, importance="activation", allocation="adaptive"),
])
def test_zero_sparsity_changes_nothing(config):
    dense = tiny_model("llama")
    model, report = pruned("llama", config, model=copy.deepcopy(dense))
    ignored = {"pruning_config": None, "pruned_from": None}  # provenance written by every prune
    assert model.config.to_dict() | ignored == dense.config.to_dict() | ignored
    assert not hasattr(model.config, "quantization_config")
    for (name, a), (_, b) in zip(dense.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    assert report.parameters_after == report.parameters_before and report.sparsity == 0


def test_depth_updates_config_and_layer_indices_and_generates():
    model, report = pruned("gemma3", PruningConfig(method="depth", num_layers=2, selection="influence",
                                                   calibration=CALIBRATION), layers=4)  # update auto: none here
    assert report.details["update"] == "none"
    kept = [i for i in range(4) if i not in report.details["removed_layers"]]
    original_types = tiny_config("gemma3", layers=4).layer_types
    assert model.config.layer_types == [original_types[i] for i in kept]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert [layer.self_attn.layer_type for layer in model.model.layers] == model.config.layer_types
    influence = report.details["block_influence"]
    assert max(influence[i] for i in report.details["removed_layers"]) <= min(influence[i] for i in kept)
    out = model.generate(IDS[:1], max_new_tokens=6, do_sample=False)
    with torch.no_grad():  # cached generation == recomputing the whole sequence
        full = model(out[:, :-1]).logits[0, -1].argmax()
    assert out.shape == (1, 22) and out[0, -1] == full


# --- importance, allocation, compensation ---------------------------------------------------------
def test_adaptive_removals_respects_floors_and_budget():
    scores = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 1.0, 1.0, 1.0]), torch.arange(8.0)]
    removals = adaptive_removals(scores, fraction=0.5, min_keep=0.25)
    assert sum(removals) == 8 and all(r <= len(s) - 1 for r, s in zip(removals, scores))
    assert removals == [2, 3, 3]  # layer 1's three equal units sit below its mean (z = -0.5 each)
    assert adaptive_removals(scores, fraction=0.9, min_keep=0.5) == [2, 2, 4]  # floors cap the budget
    assert adaptive_removals([torch.tensor([5.0])], 0.9, 0.0) == [0]  # a single unit always stays
    assert units_to_keep(torch.tensor([3.0, 1.0, 2.0, 0.5]), 2).tolist() == [0, 2]
    assert head_units(9, 3, 64) == (3, 192) and head_units(4, 1, 256) == (4, 256)


def test_adaptive_allocation_gives_per_layer_widths():
    model, report = pruned("llama", structured(target="both", sparsity=0.5, importance="random",
                                               allocation="adaptive", min_layer_keep=0.25), layers=4)
    widths = [shape["intermediate_size"] for shape in report.details["layer_shapes"]]
    assert sum(64 - w for w in widths) == 128 and min(widths) >= 16 and len(set(widths)) > 1
    assert model.config.quantization_config.layer_shapes  # non-uniform: stored for the loader


def test_increasing_fractions_grow_with_depth_around_the_target():
    fractions = increasing_fractions(0.3, 30, 0.5)
    assert sum(fractions) / 30 == pytest.approx(0.3)
    assert all(a < b for a, b in zip(fractions, fractions[1:]))
    assert fractions[0] == pytest.approx(0.3 * (1 - 0.5 * sum(math.log1p(i) for i in range(30)) / 30 / math.log(30)))
    assert increasing_fractions(0.3, 4, 0.0) == [0.3] * 4 and increasing_fractions(0.4, 1, 0.5) == [0.4]
    assert max(increasing_fractions(0.95, 8, 1.0)) <= 0.99  # clipped


def test_apportion_shares_a_total_by_weight_within_caps():
    assert apportion(30, [0.63, 1.0, 1.37], [2, 2, 2]) == [2, 2, 2]  # capped: the total cannot be reached
    assert apportion(3, [0.63, 1.0, 1.37], [2, 2, 2]) == [1, 1, 1]
    assert apportion(7, [2.0, 3.0, 5.0], [9, 9, 9]) == [1, 2, 4]  # floors of 1.4 / 2.1 / 3.5, then the largest remainder
    assert sum(apportion(18, [0.2, 0.3, 0.5, 0.9], [5, 5, 5, 5])) == 18


def test_increasing_allocation_removes_more_from_deeper_layers():
    model, report = pruned("llama", structured(target="mlp", sparsity=0.5, importance="random",
                                               allocation="increasing", spread=1.0), layers=4)
    removed = [64 - shape["intermediate_size"] for shape in report.details["layer_shapes"]]
    assert removed == apportion(128, [64 * f for f in increasing_fractions(0.5, 4, 1.0)], [63] * 4)
    assert removed == sorted(removed) and removed[0] < removed[-1] and sum(removed) == 4 * 32  # as many as uniform
    assert model.config.quantization_config.layer_shapes  # per-layer widths: stored for the loader
    with pytest.raises(ValueError, match=r"spread.*1.5"):
        structured(target="mlp", sparsity=0.5, allocation="increasing", spread=1.5)


@pytest.mark.parametrize("target,names", [("mlp", {"mlp.down_proj"}), ("heads", {"self_attn.o_proj"}),
                                          ("both", {"mlp.down_proj", "self_attn.o_proj"})])
def test_the_engine_hands_structured_pruning_its_output_projections(target, names):
    """Their inputs choose and re-fit the units; the input projections are cut with them after the loop."""
    model = tiny_model("llama", layers=2)
    per_layer, head = select_targets(model, structured(target=target, sparsity=0.5))
    assert [set(layer) for layer in per_layer] == [{f"model.layers.{i}.{n}" for n in names} for i in range(2)]
    assert not head


def test_fluctuation_compensation_keeps_the_mean_mlp_output():
    """FLAP's bias compensation: the pruned MLP's mean output over calibration tokens equals the dense one."""
    from pruning_hf.data.text import calibration_windows

    tokenizer = byte_tokenizer()
    for family in ("opt", "llama"):
        dense = tiny_model(family, layers=1)
        config = structured(target="mlp", sparsity=0.5, importance="fluctuation", update="bias")
        windows = calibration_windows(config.calibration, tokenizer)
        model = copy.deepcopy(dense)
        prune(model, config, tokenizer, progress=False, windows=windows)

        def mean_mlp_output(m):
            spec = get_architecture(m)
            output = mlp_linears(decoder_layers(m)[0], spec)[1]
            seen = []
            handle = output.register_forward_hook(lambda mod, args, out: seen.append(out.reshape(-1, out.shape[-1])))
            with torch.no_grad():
                m(windows)
            handle.remove()
            return torch.cat(seen).mean(0)

        torch.testing.assert_close(mean_mlp_output(model), mean_mlp_output(dense), rtol=1e-4, atol=1e-5)
        if family == "llama":  # no output bias in the stock model: mlp_bias switched on, zero biases elsewhere
            assert model.config.mlp_bias is True
            assert all(m.bias is not None for m in mlp_linears(model.model.layers[0], get_architecture(model))[0])


def test_structured_keeps_dtype():
    model = tiny_model("llama").to(torch.bfloat16)
    pruned("llama", structured(target="both", sparsity=0.5), model=model)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(method="structured"), "sparsity is required"),
    (dict(method="structured", sparsity=0.3, target="ffn"), "target='ffn' is not allowed"),
    (dict(method="structured", sparsity=0.3, importance="taylor"), "importance='taylor'"),
    (dict(method="structured", pattern="2:4"), "does not apply to structured"),
    (dict(method="structured", sparsity=0.3, targets=["q_proj"]), "choose what to remove with target="),
    (dict(method="depth"), "needs num_layers"),
    (dict(method="depth", num_layers=0), "num_layers must be an integer >= 1"),
    (dict(method="depth", num_layers=2, sparsity=0.5), "sparsity=0.5 does not apply"),
    (dict(method="magnitude", sparsity=0.5, num_layers=2), "is an option of: depth"),
])
def test_bad_configs_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruningConfig(**kwargs)


def test_errors_found_before_calibration():
    with pytest.raises(ValueError, match="must be smaller than the model's 2 decoder layers"):
        pruned("llama", PruningConfig(method="depth", num_layers=2, calibration=CALIBRATION))
    with pytest.raises(ValueError, match="not available for model_type='gpt2'"):
        pruned("gpt2", structured(target="mlp", sparsity=0.3))


def test_cli_structured_and_depth(make_checkpoint, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from pruning_hf.cli import main

    source = make_checkpoint("llama")
    common = ["--calibration", "embedded", "--num-samples", "4", "--seq-len", "32", "--no-progress"]
    assert main(["prune", str(source), "--method", "structured", "--target", "heads", "--sparsity", "0.5",
                 "--importance", "activation", "--output", str(tmp_path / "heads"), *common]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "heads").config.num_attention_heads == 2
    assert main(["prune", str(source), "--method", "depth", "--num-layers", "1",
                 "--output", str(tmp_path / "depth"), *common]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "depth").config.num_hidden_layers == 1
    assert main(["prune", str(source), "--method", "depth", "--num-layers", "5", "--output", str(tmp_path / "x"),
                 *common]) == 2
    assert "num_layers=5 must be smaller" in capsys.readouterr().err
