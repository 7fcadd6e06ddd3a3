"""Saving and reloading structurally pruned models: stock configs, per-layer shapes via the registered loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import byte_tokenizer, tiny_model
from test_structured import CALIBRATION, IDS, mqa_gemma, pruned, structured
from transformers import AutoModelForCausalLM

from pruning_hf import AutoPrunedModel, PruningConfig
from pruning_hf.hf.quantizer import QUANT_METHOD, PruningHfConfig, apply_layer_shapes


def save_and_reload(model, folder: Path):
    model.save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder)


def assert_same_model(reloaded, model):
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, model(IDS).logits)
    generated = model.generate(IDS[:1], max_new_tokens=5, do_sample=False)
    assert torch.equal(reloaded.generate(IDS[:1], max_new_tokens=5, do_sample=False), generated)


def config_json(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("family", ["opt", "llama", "gemma3"])
def test_uniform_pruning_writes_a_stock_config(family, tmp_path):
    kind = "both" if family != "opt" else "mlp"  # OPT cannot state fewer heads in its config (see below)
    model, _ = pruned(family, structured(target=kind, sparsity=0.5, importance="activation"))
    reloaded = save_and_reload(model, tmp_path / "pruned")
    saved = config_json(tmp_path / "pruned")
    assert "quantization_config" not in saved
    assert saved["ffn_dim" if family == "opt" else "intermediate_size"] == 32
    if family != "opt":
        assert (saved["num_attention_heads"], saved["num_key_value_heads"], saved["head_dim"]) == (2, 1, 8)
    assert_same_model(reloaded, model)


@pytest.mark.parametrize("family,make,target", [
    ("opt", None, "heads"),  # uniform, but OPT derives head_dim from the head count
    ("llama", None, "both"),  # adaptive: widths differ per layer
    ("gemma3", mqa_gemma, "both"),  # 3 query heads do not divide hidden_size: Gemma3Config refuses them
])
def test_per_layer_shapes_reload_bit_identical_through_the_registered_loader(family, make, target, tmp_path):
    allocation = "adaptive" if family == "llama" else "uniform"
    sparsity = 0.25 if family == "gemma3" else 0.5
    model, _ = pruned(family, structured(target=target, sparsity=sparsity, importance="random", allocation=allocation),
                      model=make() if make else None, layers=4)
    reloaded = save_and_reload(model, tmp_path / "pruned")
    quantization = config_json(tmp_path / "pruned")["quantization_config"]
    assert quantization["quant_method"] == QUANT_METHOD and quantization["layer_shapes"]
    assert_same_model(reloaded, model)
    assert not getattr(reloaded, "is_quantized", False)
    again = save_and_reload(reloaded, tmp_path / "again")  # a reloaded model saves its shapes again
    assert_same_model(again, model)
    assert reloaded.to(torch.bfloat16).dtype == torch.bfloat16  # a plain float model, not a "quantized" one


def test_depth_after_adaptive_width_renumbers_layer_shapes(tmp_path):
    model, _ = pruned("llama", structured(target="mlp", sparsity=0.5, importance="random", allocation="adaptive"),
                      layers=4)
    widths = [layer.mlp.down_proj.in_features for layer in model.model.layers]
    _, report = pruned("llama", PruningConfig(method="depth", num_layers=1, calibration=CALIBRATION), model=model)
    kept = [w for i, w in enumerate(widths) if i not in report.details["removed_layers"]]
    shapes = model.config.quantization_config.layer_shapes
    assert [shapes.get(str(i), {}).get("intermediate_size", model.config.intermediate_size) for i in range(3)] == kept
    assert_same_model(save_and_reload(model, tmp_path / "pruned"), model)


def test_auto_pruned_model_round_trip(tmp_path):
    source = tmp_path / "dense"
    tiny_model("gemma3").save_pretrained(source)
    byte_tokenizer().save_pretrained(source)
    config = structured(target="both", sparsity=0.5, importance="activation", allocation="adaptive",
                        min_layer_keep=0.2)
    model = AutoPrunedModel.from_pretrained(source, pruning=config, progress=False)
    model.save_pretrained(tmp_path / "pruned")
    assert (tmp_path / "pruned" / "pruning_report.json").is_file()
    reloaded = AutoPrunedModel.from_pretrained(tmp_path / "pruned")
    assert reloaded.pruning_config.to_dict() == config.to_dict()
    assert reloaded.pruning_report.parameters_removed == pytest.approx(model.pruning_report.parameters_removed)
    assert_same_model(reloaded, model)


def test_unknown_feature_asks_for_an_upgrade():
    with pytest.raises(ValueError, match="does not know .* upgrade pruning_hf"):
        PruningHfConfig(layer_shapes=None, sparse_format={"kind": "future"})
    with pytest.raises(ValueError, match="positive widths"):
        PruningHfConfig(layer_shapes={"0": {"intermediate_size": 0}})


@pytest.mark.parametrize("shapes,match", [
    ({"5": {"intermediate_size": 8}}, "the model has 2 decoder layers"),
    ({"0": {"intermediate_size": 80}}, "cannot widen"),
    ({"0": {"num_attention_heads": 3}}, "cannot shape a layer with 4 query / 2 key-value heads to 3 / 2"),
    ({"0": {"ffn_dim": 8}}, "do not apply to this model"),
])
def test_inconsistent_layer_shapes_are_refused(shapes, match):
    with pytest.raises(ValueError, match=match):
        apply_layer_shapes(tiny_model("llama"), shapes)


def test_without_pruning_hf_stock_loads_and_per_layer_shapes_fail_loudly(tmp_path):
    """In a fresh interpreter that never imports pruning_hf: the stock checkpoint loads as saved, and the
    per-layer-shapes checkpoint raises instead of re-initialising the mismatched weights."""
    stock, _ = pruned("llama", structured(target="mlp", sparsity=0.5))
    stock.save_pretrained(tmp_path / "stock")
    with torch.no_grad():
        torch.save(stock(IDS).logits, tmp_path / "logits.pt")
    torch.save(IDS, tmp_path / "ids.pt")
    custom, _ = pruned("llama", structured(target="mlp", sparsity=0.5, importance="random", allocation="adaptive"),
                       layers=4)
    custom.save_pretrained(tmp_path / "custom")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        folder = {str(tmp_path)!r}
        model = AutoModelForCausalLM.from_pretrained(folder + "/stock")
        with torch.no_grad():
            assert torch.equal(model(torch.load(folder + "/ids.pt")).logits, torch.load(folder + "/logits.pt"))
        try:
            AutoModelForCausalLM.from_pretrained(folder + "/custom")
        except Exception as err:
            print("REFUSED", type(err).__name__)
        else:
            print("LOADED")
        assert "pruning_hf" not in sys.modules
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "REFUSED RuntimeError" in result.stdout
    assert "size mismatch" in result.stderr.lower() or "MISMATCH" in result.stderr


def test_per_layer_shapes_and_compression_together(tmp_path):
    """A structurally shrunk model, then pruned 50% and saved compressed: both features in one config."""
    model, _ = pruned("llama", structured(target="both", sparsity=0.5, importance="random", allocation="adaptive"),
                      layers=4)
    from pruning_hf import prune

    prune(model, PruningConfig(method="magnitude", sparsity=0.5), progress=False)
    model.save_pretrained(tmp_path / "both", compress=True)
    saved = config_json(tmp_path / "both")["quantization_config"]
    assert saved["quant_method"] == QUANT_METHOD and set(saved) == {"quant_method", "layer_shapes", "compression"}
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "both")
    assert_same_model(reloaded, model)
    assert reloaded.config.quantization_config.to_dict().keys() == {"quant_method", "layer_shapes"}
    reloaded.save_pretrained(tmp_path / "again")  # the shapes survive, the compression is not claimed
    assert set(config_json(tmp_path / "again")["quantization_config"]) == {"quant_method", "layer_shapes"}
    assert_same_model(AutoModelForCausalLM.from_pretrained(tmp_path / "again"), model)
