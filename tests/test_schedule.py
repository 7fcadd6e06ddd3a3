"""The sub-block schedule (``PruningConfig.schedule``) and dense targets (``PruningConfig.dense_targets``).

The sub-block schedule must compute exactly the pruned model's forward (its stored outputs are the next
layer's inputs), give each output Linear the statistics of the inputs it really sees (q/k/v already pruned),
and leave the Linears that read the layer input as the layer schedule prunes them. Dense targets must bring
a pruned layer's output closer to the dense model's.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_model
from test_families import GENERIC, STRUCTURED, family_config
from transformers import AutoModelForCausalLM, Olmo2Config

from pruning_hf import PruningConfig
from pruning_hf.data.text import calibration_windows
from pruning_hf.engine import prune_model
from pruning_hf.methods.wanda import WandaPruner
from pruning_hf.sparsity.statistics import InputStatistics

LAYERS = 3


@pytest.fixture
def windows(tokenizer, text_file):
    calibration = PruningConfig(method="wanda", sparsity=0.5, calibration={"source": str(text_file), "num_samples": 4,
                                                             "seq_len": 32, "batch_size": 2}).calibration
    return calibration_windows(calibration, tokenizer)


def _config(windows, **values) -> PruningConfig:
    return PruningConfig(calibration={"num_samples": windows.shape[0], "seq_len": windows.shape[1], "batch_size": 2},
                         **values)


def _family_model(family: str):
    torch.manual_seed(0)
    config = (Olmo2Config(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                          vocab_size=260, num_hidden_layers=LAYERS, max_position_embeddings=256)
              if family == "olmo2" else family_config(family))
    return AutoModelForCausalLM.from_config(config).eval()


STRUCTURED_BOTH = {"method": "structured", "target": "both", "sparsity": 0.5}


@pytest.mark.parametrize("family,method", [*((f, {"method": "wanda", "sparsity": 0.5}) for f in
                                             [*STRUCTURED, "gpt2", "olmo2"]),
                                           *((f, STRUCTURED_BOTH) for f in STRUCTURED)])
def test_sublayer_outputs_are_the_pruned_models_forward(family, method, windows, monkeypatch, one_thread):
    """Each layer's outputs kept by the sub-block schedule equal a plain forward of the pruned model (for
    structured pruning: of the model as finally shrunk, so units set to zero in the loop behave as cut)."""
    kept: dict[int, torch.Tensor] = {}
    config = _config(windows, schedule="sublayer", **method)
    monkeypatch.setattr(config.method_class, "observe_layer",
                        lambda self, index, inputs, outputs: kept.__setitem__(index, torch.cat(list(outputs))))
    model = _family_model(family)
    before = sum(p.numel() for p in model.parameters())
    report = prune_model(model, config, windows=windows, progress=False)
    assert report.schedule == "sublayer"
    if method["method"] == "structured":
        assert report.parameters_after < before
    with torch.no_grad():
        hidden = model(windows, output_hidden_states=True).hidden_states
    assert len(kept) == model.config.num_hidden_layers
    for index in range(len(kept) - 1):  # the last entry of hidden_states has the final norm applied
        torch.testing.assert_close(kept[index], hidden[index + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", GENERIC)
def test_families_without_a_layout_run_each_layer_whole(family, windows, one_thread):
    config = _config(windows, method="wanda", sparsity=0.5)
    assert prune_model(_family_model(family), config, windows=windows, progress=False).schedule == "layer"
    with pytest.raises(ValueError, match=r"schedule='sublayer' cannot run: the layout of model_type="):
        prune_model(_family_model(family), _config(windows, method="wanda", sparsity=0.5, schedule="sublayer"),
                    windows=windows, progress=False)


def test_output_linear_statistics_come_from_the_pruned_inputs(windows, one_thread):
    """o_proj of layer 0 is pruned with the norms of its input computed with q/k/v already pruned (a reference
    computed by hand), and q/k/v (which read the layer input) come out as the layer schedule prunes them."""
    dense = tiny_model("llama", layers=LAYERS)
    sublayer, whole = copy.deepcopy(dense), copy.deepcopy(dense)
    config = _config(windows, method="wanda", sparsity=0.5, schedule="sublayer")
    prune_model(sublayer, config, windows=windows, progress=False)
    prune_model(whole, _config(windows, method="wanda", sparsity=0.5, schedule="layer"), windows=windows,
                progress=False)
    attention = "model.layers.0.self_attn"
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(sublayer.get_submodule(f"{attention}.{name}").weight,
                           whole.get_submodule(f"{attention}.{name}").weight)

    def o_proj_mask(model) -> torch.Tensor:
        o_proj = model.get_submodule(f"{attention}.o_proj")
        stats = InputStatistics(o_proj.in_features, hessian=False, device=torch.device("cpu"))
        handle = o_proj.register_forward_pre_hook(lambda _, args: stats.update(args[0]))
        with torch.no_grad():
            for batch in windows.split(2):
                model(batch)
        handle.remove()
        pruner = WandaPruner(config)
        return pruner.prune_weight("o_proj", dense.get_submodule(f"{attention}.o_proj").weight.detach().clone(),
                                   stats, 0.5) != 0

    reference = copy.deepcopy(dense)  # dense but for layer 0's q/k/v, pruned as the schedule pruned them
    for name in ("q_proj", "k_proj", "v_proj"):
        reference.get_submodule(f"{attention}.{name}").weight.data.copy_(
            sublayer.get_submodule(f"{attention}.{name}").weight)
    expected = o_proj_mask(reference)
    assert torch.equal(sublayer.get_submodule(f"{attention}.o_proj").weight != 0, expected)
    assert not torch.equal(o_proj_mask(dense), expected)  # the dense layer's statistics would choose otherwise
    assert torch.equal(whole.get_submodule(f"{attention}.o_proj").weight != 0, o_proj_mask(dense))


def test_auto_schedule_and_its_fallbacks(windows, one_thread):
    """auto: sub-blocks for weight pruners with statistics and for structured pruning (each sub-block's units
    come from its output projection's inputs), the whole layer for magnitude and depth (nothing to collect)."""
    ran = {}
    for method in ({"method": "wanda"}, {"method": "sparsegpt"}, {"method": "magnitude"},
                   {"method": "structured", "target": "mlp", "sparsity": 0.25}, {"method": "depth", "num_layers": 1}):
        values = method if method["method"] == "depth" else {"sparsity": 0.5, **method}
        report = prune_model(tiny_model("llama", layers=2), _config(windows, **values), windows=windows,
                             progress=False)
        ran[method["method"]] = report.schedule
    assert ran == {"wanda": "sublayer", "sparsegpt": "sublayer", "magnitude": "layer", "structured": "sublayer",
                   "depth": "layer"}


@pytest.mark.parametrize("family", ["llama", "opt", "gemma3"])
def test_structured_mlp_is_the_same_in_both_schedules(family, windows, one_thread):
    """With only MLP neurons removed, each MLP sees the same inputs in either schedule (attention is not
    pruned), so the shrunk model is the same; the sub-block schedule just runs every matmul once."""
    dense = _family_model(family)
    models = {}
    for schedule in ("sublayer", "layer"):
        models[schedule] = copy.deepcopy(dense)
        config = _config(windows, method="structured", target="mlp", sparsity=0.5, schedule=schedule)
        assert prune_model(models[schedule], config, windows=windows, progress=False).schedule == schedule
    sublayer, whole = (m.state_dict() for m in models.values())
    assert sublayer.keys() == whole.keys()
    for name in sublayer:
        assert sublayer[name].shape == whole[name].shape, name
        torch.testing.assert_close(sublayer[name], whole[name], rtol=1e-4, atol=1e-5)
    assert sublayer["model.layers.0.mlp.down_proj.weight" if family != "opt" else
                    "model.decoder.layers.0.fc2.weight"].shape[1] < dense.state_dict()[
        "model.layers.0.mlp.down_proj.weight" if family != "opt" else "model.decoder.layers.0.fc2.weight"].shape[1]


def test_schedule_errors_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"schedule.*'sideways'.*auto.*sublayer.*layer"):
        PruningConfig(method="wanda", sparsity=0.5, schedule="sideways")
    with pytest.raises(ValueError, match=r"schedule='sublayer'.*'depth'.*schedule='layer'"):
        PruningConfig(method="depth", num_layers=1, schedule="sublayer")
    with pytest.raises(ValueError, match=r"dense_targets=True.*'wanda'.*sparsegpt"):
        PruningConfig(method="wanda", sparsity=0.5, dense_targets=True)
    with pytest.raises(ValueError, match=r"dense_targets must be true or false, got 'yes'"):
        PruningConfig(method="sparsegpt", sparsity=0.5, dense_targets="yes")


@pytest.mark.parametrize("precision", ["model", "bfloat16"])
@pytest.mark.parametrize("schedule", ["sublayer", "layer"])
def test_dense_targets_bring_the_last_layer_closer_to_the_dense_model(schedule, precision, windows, one_thread):
    """Two-layer toy: layer 1 is pruned first; with dense targets layer 2's output is fitted to the dense
    model's (on the dense input), and ends closer to it than when fitted to its own pruned input; also when
    the dense stream runs in bf16 (its o_proj then reads bf16 inputs, the pruned stream's stay fp32)."""
    dense = tiny_model("llama", layers=2)
    with torch.no_grad():
        target = dense(windows, output_hidden_states=True).hidden_states[-1]
    errors = {}
    for dense_targets in (False, True):
        model = copy.deepcopy(dense)
        seen = set()
        model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(lambda _, args: seen.add(args[0].dtype))
        extra = {"dense_precision": precision} if dense_targets else {}
        report = prune_model(model, _config(windows, method="sparsegpt", sparsity=0.7, schedule=schedule,
                                            dense_targets=dense_targets, **extra), windows=windows, progress=False)
        if dense_targets:
            assert report.dense_dtype == {"model": "float32", "bfloat16": "bfloat16"}[precision]
            assert seen == ({torch.float32, torch.bfloat16} if precision == "bfloat16" else {torch.float32}), seen
        with torch.no_grad():
            errors[dense_targets] = (model(windows, output_hidden_states=True).hidden_states[-1] - target).norm().item()
    assert errors[True] < errors[False], errors


def test_dense_precision_auto_means_bf16_only_for_a_float32_model_where_bf16_is_native(monkeypatch):
    import pruning_hf.engine.capture as capture

    layer = tiny_model("llama", layers=1).model.layers[0]
    for native in (False, True):
        monkeypatch.setattr(capture, "native_bfloat16", lambda device, native=native: native)
        assert capture.dense_stream_dtype("auto", layer) == (torch.bfloat16 if native else None)
        assert capture.dense_stream_dtype("bfloat16", layer) == torch.bfloat16
        assert capture.dense_stream_dtype("model", layer) is None
        assert capture.dense_stream_dtype("auto", copy.deepcopy(layer).to(torch.bfloat16)) is None


def test_dense_precision_errors_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"dense_precision='fp8' is not allowed; choose one of: auto, bfloat16, model"):
        PruningConfig(method="admm", sparsity=0.5, dense_targets=True, dense_precision="fp8")
    with pytest.raises(ValueError, match=r"dense_precision='bfloat16' only applies with dense_targets=True"):
        PruningConfig(method="admm", sparsity=0.5, dense_precision="bfloat16")


def test_dense_target_weight_is_the_weight_itself_without_earlier_pruning():
    """With identical pruned and dense inputs the dense target W* is W (the usual problem is unchanged)."""
    from pruning_hf.sparsity.hessian import dense_target_weight

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=generator)
    weight = torch.randn(8, 16, generator=generator)
    h = x.t() @ x / len(x)
    torch.testing.assert_close(dense_target_weight(weight, h, h @ weight.t(), 0.01), weight, rtol=1e-4, atol=1e-4)


def test_the_output_cross_term_fits_the_same_dense_target_with_fewer_flops():
    """X^T Y_dense (in x out, for a Linear with out < in) gives the same C W^T and W* as X^T X_dense W^T."""
    from pruning_hf.sparsity.hessian import dense_target_weight

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 24, generator=generator)
    by_inputs = InputStatistics(24, True, torch.device("cpu"), cross=True)
    by_outputs = InputStatistics(24, True, torch.device("cpu"), cross=True, cross_outputs=8)
    for _ in range(3):
        x = torch.randn(2, 40, 24, generator=generator)
        x_dense = x + 0.3 * torch.randn(2, 40, 24, generator=generator)
        by_inputs.update(x, x_dense)
        by_outputs.update(x, x_dense @ weight.t())
    assert by_outputs.xtd is None and by_outputs.nbytes < by_inputs.nbytes
    torch.testing.assert_close(by_outputs.dense_products(weight), by_inputs.dense_products(weight))
    fitted = [dense_target_weight(weight, s.hessian, s.dense_products(weight), 0.01) for s in (by_inputs, by_outputs)]
    torch.testing.assert_close(fitted[1], fitted[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="collected for 8 outputs, not 9"):
        by_outputs.dense_products(torch.randn(9, 24))


@pytest.mark.parametrize("family", ["llama", "opt"])  # opt: fc2 has a bias, taken off the dense outputs
def test_sublayer_dense_targets_of_down_proj_use_its_outputs_and_agree(family, windows, monkeypatch, one_thread):
    """In the sub-block schedule the MLP's output Linear (out < in) is paired with its dense outputs; the dense
    targets W* it gets equal the ones of the X^T X_dense route (layer 0: the same inputs in both runs)."""
    import pruning_hf.engine.schedule as schedule
    import pruning_hf.methods.base as base

    output_name = {"llama": "mlp.down_proj", "opt": "fc2"}[family]
    runs = []
    for route in ("outputs", "inputs"):
        fitted, original = {}, base.dense_target_weights

        def spy(weights, stats, dampening):
            targets = original(weights, stats, dampening)
            for name, target in targets.items():
                if name.endswith(output_name) and ".0." in name:
                    fitted[name] = (target.clone(), stats[name].xty is not None)
            return targets

        monkeypatch.setattr(base, "dense_target_weights", spy)
        if route == "inputs":
            monkeypatch.setattr(schedule, "pairs_dense_outputs", lambda linear: False)
        prune_model(tiny_model(family, layers=2), _config(windows, method="sparsegpt", sparsity=0.5,
                                                          schedule="sublayer", dense_targets=True,
                                                          dense_precision="model"),  # exact: fp32 on both routes
                    windows=windows, progress=False)
        monkeypatch.undo()
        runs.append(fitted)
    (name, (by_outputs, used_outputs)), = runs[0].items()
    by_inputs, used_inputs = runs[1][name]
    assert used_outputs and not used_inputs
    torch.testing.assert_close(by_outputs, by_inputs, rtol=1e-4, atol=1e-5)


def test_dense_targets_warn_when_calibration_is_too_small_for_them(windows, one_thread):
    """128 calibration tokens for 64 input features (down_proj) over-fit the dense targets: a warning says so."""
    config = _config(windows, method="sparsegpt", sparsity=0.5, dense_targets=True)
    with pytest.warns(RuntimeWarning, match=r"from 128 calibration tokens for 64 input features.*over-fit"):
        prune_model(tiny_model("llama", layers=1), config, windows=windows, progress=False)
