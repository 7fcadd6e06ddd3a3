"""Structured pruning that keeps its quality: least-squares re-fit, OBS selection, error-based allocation,
and depth's folded linear replacement, on tiny random models and (small budgets) on real SmolLM2-135M."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, tiny_model
from test_structured import CALIBRATION, IDS, calibration_tokens, kept_columns, pruned
from transformers import AutoModelForCausalLM

from pruning_hf import PruningConfig
from pruning_hf.models.architectures import decoder_layers, get_architecture
from pruning_hf.models.shrink import attention_linears, mlp_linears

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def structured(**kwargs) -> PruningConfig:
    return PruningConfig(method="structured", calibration=CALIBRATION, **kwargs)


def depth(**kwargs) -> PruningConfig:
    return PruningConfig(method="depth", calibration=CALIBRATION, **kwargs)


def mlp_output_error(model, dense, windows) -> float:
    """Squared error of layer 0's MLP output vs the dense model's, on the calibration windows."""
    def outputs(m):
        seen = []
        output = mlp_linears(decoder_layers(m)[0], get_architecture(m))[1]
        handle = output.register_forward_hook(lambda mod, args, out: seen.append(out))
        with torch.no_grad():
            m(windows)
        handle.remove()
        return torch.cat(seen)

    return float((outputs(model) - outputs(dense)).square().sum())


# --- width ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma3", "opt"])
def test_lstsq_update_lowers_the_output_error_of_the_same_cut(family):
    dense = tiny_model(family, layers=1)
    errors = {}
    for update in ("none", "lstsq"):
        model, report = pruned(family, structured(target="mlp", sparsity=0.5, importance="activation", update=update),
                               model=copy.deepcopy(dense))
        errors[update] = mlp_output_error(model, dense, calibration_tokens())
        kept = mlp_linears(decoder_layers(model)[0], get_architecture(model))[0][0]
        errors.setdefault("kept", []).append(kept_columns(
            mlp_linears(decoder_layers(dense)[0], get_architecture(dense))[0][0].weight.t(), kept.weight.t()))
    assert errors["kept"][0] == errors["kept"][1]  # same units removed: only the update differs
    assert errors["lstsq"] < 0.8 * errors["none"], errors
    assert 0 < report.details["relative_output_error"]["mlp"][0] < 1


def test_lstsq_fits_the_bias_where_the_projection_has_one():
    """OPT's fc2 has a bias: fitted together with the weight, the mean output on calibration tokens is kept."""
    dense = tiny_model("opt", layers=1)
    model, _ = pruned("opt", structured(target="mlp", sparsity=0.5, importance="activation", update="lstsq",
                                        dampening=1e-7), model=copy.deepcopy(dense))
    windows = calibration_tokens()

    def mean_output(m):
        seen = []
        handle = m.model.decoder.layers[0].fc2.register_forward_hook(
            lambda mod, args, out: seen.append(out.reshape(-1, out.shape[-1])))
        with torch.no_grad():
            m(windows)
        handle.remove()
        return torch.cat(seen).mean(0)

    torch.testing.assert_close(mean_output(model), mean_output(dense), rtol=1e-3, atol=1e-4)
    assert not torch.equal(model.model.decoder.layers[0].fc2.bias, dense.model.decoder.layers[0].fc2.bias)


def test_obs_heads_keep_kv_groups_whole_and_reload(tmp_path):
    config = tiny_config("llama", layers=2)
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 8, 4, 4
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_config(config).eval()
    model, report = pruned("llama", structured(target="both", sparsity=0.5, importance="obs", update="lstsq"),
                           model=copy.deepcopy(dense))
    spec = get_architecture(dense)
    for dense_layer, layer in zip(decoder_layers(dense), decoder_layers(model)):
        dq, dk, _, _ = attention_linears(dense_layer, spec)
        q, k, _, o = attention_linears(layer, spec)
        groups = [kept_columns(dk.weight.t(), k.weight.t()[:, g * 4:(g + 1) * 4])[0] // 4 for g in range(2)]
        heads = [c // 4 for c in kept_columns(dq.weight.t(), q.weight.t())[::4]]
        assert heads == [2 * g + i for g in groups for i in range(2)]  # both query heads of each kept group
        assert o.in_features == 16
    assert report.details["relative_output_error"]["heads"][0] > 0
    model.save_pretrained(tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, model(IDS).logits)
    generated = model.generate(IDS[:1], max_new_tokens=5, do_sample=False)
    assert torch.equal(reloaded.generate(IDS[:1], max_new_tokens=5, do_sample=False), generated)


def test_adaptive_obs_allocates_by_reconstruction_error():
    model, report = pruned("llama", structured(target="mlp", sparsity=0.5, importance="obs", update="lstsq",
                                               allocation="adaptive", min_layer_keep=0.25), layers=4)
    widths = [shape["intermediate_size"] for shape in report.details["layer_shapes"]]
    assert sum(64 - w for w in widths) == 128 and min(widths) >= 16
    assert all(e is not None for e in report.details["relative_output_error"]["mlp"])
    with torch.no_grad():
        assert torch.isfinite(model(IDS).logits).all()


def test_defaults_are_the_reconstructing_configuration():
    """The best measured configurations (benchmarks/structured_quality.py) are the defaults."""
    width = structured(sparsity=0.3)
    assert (width.options.update, width.options.importance) == ("lstsq", "obs") and width.needs_calibration
    layers = depth(num_layers=2).options
    assert (layers.selection, layers.update) == ("block", "auto")


@pytest.mark.parametrize("family,update", [("llama", "linear"), ("gpt2", "none")])
def test_depth_auto_update_folds_where_the_family_allows_it(family, update):
    """Default depth: the linear fold on pre-norm families with a known MLP, a plain cut elsewhere (GPT-2)."""
    model, report = pruned(family, depth(num_layers=1), layers=3)
    assert report.details["update"] == update and len(report.details["removed_layers"]) == 1
    assert ("linear_map_layer" in report.details) == (update == "linear")
    if family == "gpt2":
        with pytest.raises(ValueError, match="not available for model_type='gpt2'"):
            pruned(family, depth(num_layers=1, update="linear"), layers=3)


def test_bad_reconstruction_options_are_rejected():
    with pytest.raises(ValueError, match="update='linear' replaces one contiguous block"):
        depth(num_layers=2, selection="influence", update="linear")
    with pytest.raises(ValueError, match="update='fit' is not allowed"):
        structured(sparsity=0.3, update="fit")


# --- depth ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_depth_linear_folds_into_a_stock_checkpoint(family, tmp_path):
    """The folded model has a stock config, loads with plain transformers in a fresh process (same logits)."""
    dense = tiny_model(family, layers=4)
    model, report = pruned(family, depth(num_layers=2, selection="block", update="linear"), model=copy.deepcopy(dense))
    start = report.details["removed_layers"][0]
    assert report.details["removed_layers"] == [start, start + 1] and start >= 1
    assert report.details["linear_map_layer"] == start - 1
    spec = get_architecture(dense)
    folded = mlp_linears(decoder_layers(model)[start - 1], spec)[1].weight
    assert not torch.equal(folded, mlp_linears(decoder_layers(dense)[start - 1], spec)[1].weight)
    model.save_pretrained(tmp_path / "pruned")
    assert "quantization_config" not in json.loads((tmp_path / "pruned" / "config.json").read_text())
    with torch.no_grad():
        torch.save(model(IDS).logits, tmp_path / "expected.pt")
    script = ("import sys, torch; from transformers import AutoModelForCausalLM; "
              "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval(); ids = torch.load(sys.argv[2]); "
              "e = torch.load(sys.argv[3]); print(torch.equal(m(ids).logits, e), m.config.num_hidden_layers)")
    torch.save(IDS, tmp_path / "ids.pt")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")  # plain transformers: pruning_hf is not imported
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "pruned"), str(tmp_path / "ids.pt"),
                          str(tmp_path / "expected.pt")], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.stdout.split() == ["True", "2"], out.stderr[-2000:]
    generated = model.generate(IDS[:1], max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 21)


def test_depth_block_selection_picks_the_closest_block():
    model, report = pruned("llama", depth(num_layers=2, selection="block", update="none"), layers=5)
    distance = report.details["block_distance"]
    start = report.details["removed_layers"][0]
    assert distance[start] == min(d for d in distance if d is not None)
    assert report.details["removed_layers"] == [start, start + 1]


def test_depth_fitted_selection_picks_the_block_its_map_replaces_best():
    model, report = pruned("llama", depth(num_layers=2, selection="fitted", update="linear"), layers=5)
    errors = report.details["fit_error"]
    start = report.details["removed_layers"][0]
    assert start >= 1 and errors[start] == min(e for e in errors if e is not None)
    assert sum(e is not None for e in errors) == 3  # every block that has a layer before it: starts 1, 2, 3
    with pytest.raises(ValueError, match="selection='fitted' ranks blocks"):
        depth(num_layers=2, selection="fitted", update="none")
    with pytest.raises(ValueError, match="update='linear' replaces one contiguous block"):
        depth(num_layers=2, selection="influence", update="linear")


def test_depth_linear_offloaded_equals_in_memory(tmp_path):
    from pruning_hf.models.devices import onloaded
    from pruning_hf.engine import prune_model

    folder = tmp_path / "llama"
    tiny_model("llama", layers=4).save_pretrained(folder)
    cfg = PruningConfig(method="depth", num_layers=2, selection="block", update="linear", calibration={"batch_size": 2})
    windows = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    reference = AutoModelForCausalLM.from_pretrained(folder)
    prune_model(reference, cfg, windows=windows, progress=False)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    offloaded = AutoModelForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": int(size * 0.5)},
                                                     offload_folder=folder / "offload")
    assert "disk" in offloaded.hf_device_map.values()
    prune_model(offloaded, cfg, windows=windows, progress=False, activation_storage="disk")
    with onloaded([offloaded]):
        got = {name: tensor.detach().clone() for name, tensor in offloaded.state_dict().items()}
    expected = reference.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(offloaded(windows[:2]).logits, reference(windows[:2]).logits, rtol=1e-4, atol=1e-5)


# --- real weights (small budgets) -----------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    from pruning_hf.data.text import calibration_windows, load_texts, tokenize_texts
    from pruning_hf.hf.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(smollm2_path)
    calibration = {"source": "embedded", "num_samples": 8, "seq_len": 256, "batch_size": 8}
    windows = calibration_windows(PruningConfig(method="depth", num_layers=1, calibration=calibration).calibration,
                                  tokenizer)
    eval_tokens = tokenize_texts(load_texts("embedded@test"), tokenizer)
    return load_model(smollm2_path), windows, eval_tokens, calibration


@pytest.mark.slow
def test_smollm2_depth_linear_beats_cutting_the_same_block(smollm2):
    """Depth 6 of 30 layers, the same (closest) block either way: the folded linear map lowers perplexity.
    (Width re-fits need more calibration tokens than the output projection has inputs, 1536 here: see
    benchmarks/structured_quality.py for them on real weights.)"""
    from pruning_hf.engine import prune_model
    from pruning_hf.evaluation import perplexity

    dense, windows, eval_tokens, calibration = smollm2
    results, removed = {}, {}
    for update in ("none", "linear"):
        config = PruningConfig(method="depth", num_layers=6, selection="block", update=update, calibration=calibration)
        model = copy.deepcopy(dense)
        report = prune_model(model, config, windows=windows, progress=False)
        results[update] = perplexity(model, eval_tokens, 256, 4)["perplexity"]
        removed[update] = report.details["removed_layers"]
        del model
    assert removed["linear"] == removed["none"] and len(removed["none"]) == 6
    assert results["linear"] < 0.95 * results["none"], results
